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

use crate::istio::{MeshSettings, Placement};

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
}

/// One line of the table: `callers` may call `workload` on its port, on
/// `paths` only when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub workload: Workload,
    pub callers: Vec<Caller>,
    pub paths: Option<Vec<String>>,
    pub why: &'static str,
}

fn workload(name: &str, port: u16) -> Workload {
    Workload {
        name: name.to_string(),
        port,
    }
}

/// The grants of a placement. The filter's host (the proxy that runs it)
/// is the gateway, or the inference server's sidecar.
pub fn grants(placement: Placement, settings: &MeshSettings) -> Vec<Grant> {
    let filter_host = match placement {
        Placement::Gateway => Caller::Gateway,
        Placement::Sidecar => Caller::Workload(settings.inference_app.clone()),
    };
    let inference = workload(&settings.inference_app, settings.inference_port);
    let control_plane = workload(&settings.control_plane, settings.control_plane_port);
    let mut grants = vec![match placement {
        Placement::Gateway => Grant {
            workload: inference,
            callers: vec![Caller::Gateway],
            paths: None,
            why: "past the gateway a completion has no key, no limit and no accounting",
        },
        Placement::Sidecar => Grant {
            workload: inference,
            callers: vec![Caller::AnyMeshPeer],
            paths: None,
            why: "the filter runs in this pod's own sidecar and authenticates every caller",
        },
    }];
    grants.push(Grant {
        workload: control_plane.clone(),
        callers: vec![Caller::Gateway],
        paths: None,
        why: "its user API only through the gateway's /maas-api/ route (the gateway refuses the sync paths from clients)",
    });
    if placement == Placement::Sidecar {
        grants.push(Grant {
            workload: control_plane,
            callers: vec![filter_host.clone()],
            paths: Some(SYNC_PATHS.iter().map(|p| p.to_string()).collect()),
            why: "the filter's key sync",
        });
    }
    grants.push(Grant {
        workload: workload(&settings.limiter, settings.limiter_port),
        callers: vec![filter_host],
        paths: None,
        why: "the filter's global limits (Reserve/Commit)",
    });
    grants.push(Grant {
        workload: workload(&settings.redis, settings.redis_port),
        callers: vec![Caller::Workload(settings.limiter.clone())],
        paths: None,
        why: "the limiter's counters (and a password)",
    });
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
                    if let Some(paths) = &grant.paths {
                        to["paths"] = json!(paths);
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
/// workload, ingress from its callers' pods to its port.
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
    }
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
            let paths = grant
                .paths
                .as_ref()
                .map(|p| format!(", on `{}` only", p.join("`, `")))
                .unwrap_or_default();
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
}
