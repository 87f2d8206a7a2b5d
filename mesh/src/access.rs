//! Who may call what in the mesh: one table of grants per placement, from
//! which the `PeerAuthentication`, the `AuthorizationPolicy` of every
//! workload, the Kubernetes `NetworkPolicy` with the same intent (for
//! clusters without Istio's security) and the trust table of
//! `istio/README.md` are all rendered, so the three cannot disagree.
//!
//! Nothing reaches a workload except its real callers: the inference
//! server answers completions with no key, the limiter's counters and
//! Redis decide every global limit, and the control plane's sync API hands
//! out key hashes. Each is reachable only from the workload whose filter
//! (or limiter) uses it.

use serde_json::{json, Value};

use crate::istio::inference_pool::{METRICS_METHOD, METRICS_PATH};
use crate::istio::{EppIdentity, MeshSettings, Placement};

/// The key sync's paths on the control plane (`control_plane.cluster`):
/// for the filter only, never for a client through the gateway's
/// `/maas-api/` route.
pub const SYNC_PATHS: [&str; 2] = ["/maas-api/v1/sync", "/maas-api/v1/sync/*"];

/// The sidecar's metrics ports (Istio's merged metrics, Envoy's own
/// Prometheus endpoint), which Prometheus scrapes. Istio does not route
/// them through the inbound chain, so no AuthorizationPolicy applies; a
/// NetworkPolicy that isolates a pod would drop them unless it opens them.
pub const METRICS_PORTS: [u16; 2] = [15020, 15090];

/// A workload of the mesh: its Service, service account and pod label
/// `app.kubernetes.io/name` share one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub port: u16,
}

/// Who calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The pods of the Gateway API gateway Istio deploys (service account
    /// `<gateway>-istio`, pods labelled with the gateway's name).
    Gateway,
    /// One of our workloads, by name.
    Workload(String),
    /// Any workload of the mesh with a mesh identity: only where the
    /// workload's own sidecar runs the filter, which authenticates every
    /// request itself.
    AnyMeshPeer,
    /// The Inference Extension's endpoint picker, as the flags name it (its
    /// chart decides its service account, namespace and pod labels).
    EndpointPicker(EppIdentity),
}

/// One line of the table: `callers` may call `workload` on its port, with
/// `methods` only and on `paths` only when given, and never on
/// `except_paths`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub workload: Workload,
    pub callers: Vec<Caller>,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub except_paths: Option<Vec<String>>,
    pub why: &'static str,
}

fn workload(name: &str, port: u16) -> Workload {
    Workload {
        name: name.to_string(),
        port,
    }
}

/// A grant of the whole port.
fn grant(workload: Workload, callers: Vec<Caller>, why: &'static str) -> Grant {
    Grant {
        workload,
        callers,
        methods: None,
        paths: None,
        except_paths: None,
        why,
    }
}

/// The grants of a placement. The filter's host (the proxy that runs it)
/// is the gateway, or the inference server's sidecar.
///
/// With an inference pool whose endpoint picker is granted its metrics
/// ([`MeshSettings::epp_metrics_grant`]), the picker may `GET /metrics` on
/// the inference server's port and nothing else; in the sidecar placement,
/// where the filter lets that request past without a key, every other mesh
/// workload loses `/metrics`. The gateway keeps its grant: it routes only
/// `/v1/` there.
pub fn grants(placement: Placement, settings: &MeshSettings) -> Vec<Grant> {
    let filter_host = match placement {
        Placement::Gateway => Caller::Gateway,
        Placement::Sidecar => Caller::Workload(settings.inference_app.clone()),
    };
    let inference = workload(&settings.inference_app, settings.inference_port);
    let control_plane = workload(&settings.control_plane, settings.control_plane_port);
    let epp = settings.epp_metrics_grant();
    let mut grants = vec![match placement {
        Placement::Gateway => grant(
            inference.clone(),
            vec![Caller::Gateway],
            "past the gateway a completion has no key, no limit and no accounting",
        ),
        Placement::Sidecar => Grant {
            except_paths: epp.map(|_| vec![METRICS_PATH.to_string()]),
            ..grant(
                inference.clone(),
                vec![Caller::AnyMeshPeer],
                "the filter runs in this pod's own sidecar and authenticates every caller; the server itself refuses what did not pass the filter (its key)",
            )
        },
    }];
    if let Some(identity) = epp {
        grants.push(Grant {
            methods: Some(vec![METRICS_METHOD.to_string()]),
            paths: Some(vec![METRICS_PATH.to_string()]),
            ..grant(
                inference,
                vec![Caller::EndpointPicker(identity.clone())],
                "the Inference Extension's endpoint picker reads the model-server metrics it picks replicas by",
            )
        });
    }
    grants.push(grant(
        control_plane.clone(),
        vec![Caller::Gateway],
        "its user API only through the gateway's /maas-api/ route (the gateway refuses the sync paths from clients)",
    ));
    if placement == Placement::Sidecar {
        grants.push(Grant {
            paths: Some(SYNC_PATHS.iter().map(|p| p.to_string()).collect()),
            ..grant(
                control_plane,
                vec![filter_host.clone()],
                "the filter's key sync",
            )
        });
    }
    grants.push(grant(
        workload(&settings.limiter, settings.limiter_port),
        vec![filter_host],
        "the filter's global limits (Reserve/Commit)",
    ));
    grants.push(grant(
        workload(&settings.redis, settings.redis_port),
        vec![Caller::Workload(settings.limiter.clone())],
        "the limiter's counters (and a password)",
    ));
    grants
}

fn principal(caller: &Caller, settings: &MeshSettings) -> String {
    let sa = |name: &str| {
        format!(
            "{}/ns/{}/sa/{name}",
            settings.trust_domain, settings.namespace
        )
    };
    match caller {
        Caller::Gateway => sa(&gateway_service_account(&settings.gateway)),
        Caller::Workload(name) => sa(name),
        Caller::AnyMeshPeer => "*".to_string(),
        Caller::EndpointPicker(identity) => {
            identity.service_account.principal(&settings.trust_domain)
        }
    }
}

/// Istio's gateway deployment controller names the Deployment and the
/// service account of a Gateway `<gateway>-<gatewayClassName>`.
pub fn gateway_service_account(gateway: &str) -> String {
    format!("{gateway}-istio")
}

/// The pod labels of a caller, for a NetworkPolicy peer.
fn pod_peer(caller: &Caller, settings: &MeshSettings) -> Value {
    match caller {
        Caller::Gateway => json!({ "podSelector": { "matchLabels": {
            "gateway.networking.k8s.io/gateway-name": settings.gateway } } }),
        Caller::Workload(name) => {
            json!({ "podSelector": { "matchLabels": { "app.kubernetes.io/name": name } } })
        }
        // Any pod of any namespace: the filter in the pod decides.
        Caller::AnyMeshPeer => json!({ "namespaceSelector": {} }),
        // One peer, so both selectors must match: the picker's pods, in
        // its namespace (not every namespace's pods with these labels).
        Caller::EndpointPicker(identity) => json!({
            "namespaceSelector": { "matchLabels": {
                "kubernetes.io/metadata.name": identity.service_account.namespace } },
            "podSelector": { "matchLabels": identity.pod_labels.match_labels() },
        }),
    }
}

fn metadata(name: &str, settings: &MeshSettings) -> Value {
    json!({
        "name": name,
        "namespace": settings.namespace,
        "labels": { "app.kubernetes.io/part-of": "maas", "app.kubernetes.io/managed-by": "maas-mesh" },
    })
}

/// The grants of each workload, in table order.
fn by_workload(grants: &[Grant]) -> Vec<(&Workload, Vec<&Grant>)> {
    let mut out: Vec<(&Workload, Vec<&Grant>)> = Vec::new();
    for grant in grants {
        match out.iter_mut().find(|(w, _)| **w == grant.workload) {
            Some((_, list)) => list.push(grant),
            None => out.push((&grant.workload, vec![grant])),
        }
    }
    out
}

/// The namespace's mutual TLS, `STRICT`: a workload answers only callers
/// with a mesh certificate, so the principals below are proven.
pub fn peer_authentication(settings: &MeshSettings) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": metadata("default", settings),
        "spec": { "mtls": { "mode": "STRICT" } },
    })
}

/// One `ALLOW` policy per workload: Istio then denies every request that
/// no rule allows.
pub fn authorization_policies(grants: &[Grant], settings: &MeshSettings) -> Vec<Value> {
    by_workload(grants)
        .into_iter()
        .map(|(workload, grants)| {
            let rules: Vec<Value> = grants
                .iter()
                .map(|grant| {
                    let mut to = json!({ "ports": [workload.port.to_string()] });
                    if let Some(methods) = &grant.methods {
                        to["methods"] = json!(methods);
                    }
                    if let Some(paths) = &grant.paths {
                        to["paths"] = json!(paths);
                    }
                    if let Some(paths) = &grant.except_paths {
                        to["notPaths"] = json!(paths);
                    }
                    json!({
                        "from": [{ "source": { "principals": grant
                            .callers
                            .iter()
                            .map(|c| principal(c, settings))
                            .collect::<Vec<_>>() } }],
                        "to": [{ "operation": to }],
                    })
                })
                .collect();
            json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": metadata(&workload.name, settings),
                "spec": {
                    "selector": { "matchLabels": { "app.kubernetes.io/name": workload.name } },
                    "action": "ALLOW",
                    "rules": rules,
                },
            })
        })
        .collect()
}

/// The gateway refuses the sync API to clients: its route to the control
/// plane carries all of `/maas-api/`, and the control plane cannot tell the
/// gateway's own key sync from a request it forwards.
pub fn gateway_denies_sync(settings: &MeshSettings) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata("maas-gateway-no-sync", settings),
        "spec": {
            "targetRefs": [{
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": settings.gateway,
            }],
            "action": "DENY",
            "rules": [{ "to": [{ "operation": { "paths": SYNC_PATHS } }] }],
        },
    })
}

/// The same intent for clusters without Istio's security: one policy per
/// workload, ingress from its callers' pods to its port. A NetworkPolicy
/// sees no method or path: a grant limited to some is its whole port here.
pub fn network_policies(grants: &[Grant], settings: &MeshSettings) -> Vec<Value> {
    by_workload(grants)
        .into_iter()
        .map(|(workload, grants)| {
            let mut from: Vec<Value> = Vec::new();
            for caller in grants.iter().flat_map(|g| &g.callers) {
                let peer = pod_peer(caller, settings);
                if !from.contains(&peer) {
                    from.push(peer);
                }
            }
            json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": metadata(&workload.name, settings),
                "spec": {
                    "podSelector": { "matchLabels": { "app.kubernetes.io/name": workload.name } },
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {
                            "from": from,
                            "ports": [{ "protocol": "TCP", "port": workload.port }],
                        },
                        {
                            "from": [{ "namespaceSelector": { "matchLabels": {
                                "kubernetes.io/metadata.name": settings.monitoring_namespace,
                            } } }],
                            "ports": METRICS_PORTS
                                .iter()
                                .map(|port| json!({ "protocol": "TCP", "port": port }))
                                .collect::<Vec<_>>(),
                        },
                    ],
                },
            })
        })
        .collect()
}

/// Every access resource of a placement.
pub fn access_manifests(placement: Placement, settings: &MeshSettings) -> Vec<Value> {
    let grants = grants(placement, settings);
    let mut docs = vec![peer_authentication(settings), gateway_denies_sync(settings)];
    docs.extend(authorization_policies(&grants, settings));
    docs.extend(network_policies(&grants, settings));
    docs
}

fn describe(caller: &Caller, settings: &MeshSettings) -> String {
    match caller {
        Caller::Gateway => format!(
            "the gateway (`{}`)",
            gateway_service_account(&settings.gateway)
        ),
        Caller::Workload(name) => format!("`{name}`"),
        Caller::AnyMeshPeer => "any mesh workload".to_string(),
        Caller::EndpointPicker(identity) => format!(
            "the endpoint picker (`{}`, pods `{}`)",
            identity.service_account, identity.pod_labels
        ),
    }
}

/// ", `GET` on `/metrics` only", ", not on `/metrics`": a grant's limits,
/// for the trust table.
fn describe_scope(grant: &Grant) -> String {
    let list = |items: &[String]| items.join("`, `");
    let mut out = match (&grant.methods, &grant.paths) {
        (None, None) => String::new(),
        (None, Some(paths)) => format!(", on `{}` only", list(paths)),
        (Some(methods), None) => format!(", `{}` only", list(methods)),
        (Some(methods), Some(paths)) => {
            format!(", `{}` on `{}` only", list(methods), list(paths))
        }
    };
    if let Some(paths) = &grant.except_paths {
        out.push_str(&format!(", not on `{}`", list(paths)));
    }
    out
}

/// The trust table of `istio/README.md`, both placements.
pub fn markdown_table(settings: &MeshSettings) -> String {
    let mut out = String::from(
        "| placement | workload (port) | who may call it | why |\n|---|---|---|---|\n",
    );
    for placement in [Placement::Gateway, Placement::Sidecar] {
        for grant in grants(placement, settings) {
            let callers: Vec<String> = grant
                .callers
                .iter()
                .map(|c| describe(c, settings))
                .collect();
            let paths = describe_scope(&grant);
            let placement = match placement {
                Placement::Gateway => "gateway, wasmplugin",
                Placement::Sidecar => "sidecar",
            };
            out.push_str(&format!(
                "| {placement} | `{}` ({}) | {}{paths} | {} |\n",
                grant.workload.name,
                grant.workload.port,
                callers.join(", "),
                grant.why,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::tests::settings;

    #[test]
    fn every_workload_has_callers_and_redis_only_the_limiter() {
        for placement in [Placement::Gateway, Placement::Sidecar] {
            let grants = grants(placement, &settings());
            let redis: Vec<&Grant> = grants
                .iter()
                .filter(|g| g.workload.name == "redis")
                .collect();
            assert_eq!(redis.len(), 1);
            assert_eq!(redis[0].callers, [Caller::Workload("maas-limiter".into())]);
            for grant in &grants {
                assert!(!grant.callers.is_empty(), "{grant:?}");
            }
        }
    }

    #[test]
    fn the_sidecar_placement_opens_the_inference_server_and_the_sync_path_only() {
        let s = settings();
        let policies = authorization_policies(&grants(Placement::Sidecar, &s), &s);
        let control_plane = policies
            .iter()
            .find(|p| p["metadata"]["name"] == "maas-control-plane")
            .unwrap();
        let rules = control_plane["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[1]["from"][0]["source"]["principals"],
            json!(["cluster.local/ns/maas/sa/maas-inference-server"])
        );
        assert_eq!(rules[1]["to"][0]["operation"]["paths"], json!(SYNC_PATHS));
        let gateway = authorization_policies(&grants(Placement::Gateway, &s), &s);
        assert_eq!(
            gateway[0]["spec"]["rules"][0]["from"][0]["source"]["principals"],
            json!(["cluster.local/ns/maas/sa/maas-gateway-istio"])
        );
    }

    #[test]
    fn network_policies_name_the_callers_pods() {
        let s = settings();
        let policies = network_policies(&grants(Placement::Gateway, &s), &s);
        let redis = policies
            .iter()
            .find(|p| p["metadata"]["name"] == "redis")
            .unwrap();
        assert_eq!(
            redis["spec"]["ingress"][0],
            json!({
                "from": [{ "podSelector": { "matchLabels": { "app.kubernetes.io/name": "maas-limiter" } } }],
                "ports": [{ "protocol": "TCP", "port": 6379 }],
            })
        );
        // Prometheus, from its namespace, reaches the metrics ports only.
        assert_eq!(
            redis["spec"]["ingress"][1]["from"],
            json!([{ "namespaceSelector": { "matchLabels": {
                "kubernetes.io/metadata.name": "istio-system" } } }])
        );
        assert_eq!(
            redis["spec"]["ingress"][1]["ports"],
            json!([{ "protocol": "TCP", "port": 15020 }, { "protocol": "TCP", "port": 15090 }])
        );
    }

    /// Settings with an inference pool whose picker is granted its metrics.
    fn with_epp() -> MeshSettings {
        let pool = crate::istio::InferencePoolSettings::from_flags(
            Some("maas-epp".parse().unwrap()),
            Some("gie/pool-epp".parse().unwrap()),
            Some("inferencepool=pool-epp".parse().unwrap()),
            false,
        )
        .unwrap();
        MeshSettings {
            inference_pool: pool,
            ..settings()
        }
    }

    fn policy<'a>(policies: &'a [Value], name: &str) -> &'a Value {
        policies
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .unwrap()
    }

    #[test]
    fn the_endpoint_picker_may_get_metrics_and_nothing_else() {
        let plain = settings();
        let s = with_epp();
        let epp = "cluster.local/ns/gie/sa/pool-epp";
        for placement in [Placement::Gateway, Placement::Sidecar] {
            let before = authorization_policies(&grants(placement, &plain), &plain);
            let after = authorization_policies(&grants(placement, &s), &s);
            let rules = policy(&after, "maas-inference-server")["spec"]["rules"]
                .as_array()
                .unwrap();
            // Exactly one rule names the picker, alone, for GET /metrics
            // on the serving port.
            let epp_rules: Vec<&Value> = rules
                .iter()
                .filter(|r| {
                    r["from"][0]["source"]["principals"]
                        .as_array()
                        .unwrap()
                        .contains(&json!(epp))
                })
                .collect();
            assert_eq!(
                epp_rules,
                [&json!({
                    "from": [{ "source": { "principals": [epp] } }],
                    "to": [{ "operation": {
                        "ports": ["8000"], "methods": ["GET"], "paths": ["/metrics"] } }],
                })],
                "{placement:?}"
            );
            let old_rules = policy(&before, "maas-inference-server")["spec"]["rules"]
                .as_array()
                .unwrap();
            assert_eq!(rules.len(), old_rules.len() + 1, "{placement:?}");
            match placement {
                // The gateway's rule is as it was (it routes only /v1/ here).
                Placement::Gateway => assert_eq!(rules[0], old_rules[0]),
                // Any other mesh workload: everything but /metrics, which
                // passes the sidecar's filter without a key.
                Placement::Sidecar => assert_eq!(
                    rules[0]["to"],
                    json!([{ "operation": { "ports": ["8000"], "notPaths": ["/metrics"] } }])
                ),
            }
            // No other workload admits the picker.
            for (old, new) in before.iter().zip(&after) {
                if new["metadata"]["name"] != "maas-inference-server" {
                    assert_eq!(old, new, "{placement:?}");
                }
            }
            assert_eq!(before.len(), after.len());

            let before = network_policies(&grants(placement, &plain), &plain);
            let after = network_policies(&grants(placement, &s), &s);
            let ingress = &policy(&after, "maas-inference-server")["spec"]["ingress"];
            let old_ingress = &policy(&before, "maas-inference-server")["spec"]["ingress"];
            // The picker's pods, in its namespace (one peer: both
            // selectors), on the serving port alone; Prometheus's rule as
            // it was.
            let mut from = old_ingress[0]["from"].as_array().unwrap().clone();
            from.push(json!({
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "gie" } },
                "podSelector": { "matchLabels": { "inferencepool": "pool-epp" } },
            }));
            assert_eq!(
                ingress[0],
                json!({ "from": from, "ports": [{ "protocol": "TCP", "port": 8000 }] })
            );
            assert_eq!(ingress[1], old_ingress[1]);
            assert_eq!(ingress.as_array().unwrap().len(), 2);
            for (old, new) in before.iter().zip(&after) {
                if new["metadata"]["name"] != "maas-inference-server" {
                    assert_eq!(old, new, "{placement:?}");
                }
            }
        }
    }

    #[test]
    fn a_withheld_grant_or_no_pool_changes_nothing() {
        let plain = settings();
        let withheld = MeshSettings {
            inference_pool: crate::istio::InferencePoolSettings::from_flags(
                Some("maas-epp".parse().unwrap()),
                None,
                None,
                true,
            )
            .unwrap(),
            ..settings()
        };
        for placement in [Placement::Gateway, Placement::Sidecar] {
            assert_eq!(
                access_manifests(placement, &withheld),
                access_manifests(placement, &plain)
            );
        }
        assert_eq!(markdown_table(&withheld), markdown_table(&plain));
    }

    #[test]
    fn the_trust_table_names_the_picker_and_its_limits() {
        let table = markdown_table(&with_epp());
        for row in [
            "| gateway, wasmplugin | `maas-inference-server` (8000) | the endpoint picker (`gie/pool-epp`, pods `inferencepool=pool-epp`), `GET` on `/metrics` only |",
            "| sidecar | `maas-inference-server` (8000) | any mesh workload, not on `/metrics` |",
            "| sidecar | `maas-inference-server` (8000) | the endpoint picker (`gie/pool-epp`, pods `inferencepool=pool-epp`), `GET` on `/metrics` only |",
        ] {
            assert!(table.contains(row), "{row}\n{table}");
        }
    }
}
