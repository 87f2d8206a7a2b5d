//! Scale-out of the inference server behind the Gateway API Inference
//! Extension (GIE): an `InferencePool` over the inference server's pods,
//! whose endpoint picker (EPP) chooses the replica of each request from the
//! model-server metrics the server exports (`vllm:num_requests_waiting`,
//! `vllm:num_requests_running`).
//!
//! Opt-in (`render-istio --inference-pool EPP_SERVICE[:PORT]`): without it
//! nothing here is rendered and `maas-models` keeps the Service as its
//! backend. The EPP itself (Deployment, RBAC, Service) comes from the GIE
//! project's chart; the pool only names its Service.
//!
//! The EPP scrapes every replica's `GET /metrics`, which the access
//! policies otherwise refuse it. Its identity depends on how its chart was
//! installed, so it is given, never guessed: `--epp-service-account
//! NAMESPACE/NAME` (the Istio principal) and `--epp-pod-labels
//! KEY=VALUE,...` (the NetworkPolicy peer, in that namespace). With a pool
//! both are required, unless `--no-epp-metrics-grant` says the operator
//! grants the EPP itself ([`InferencePoolSettings::from_flags`]); the grant
//! is `GET /metrics` on the serving port and nothing else
//! ([`crate::access::grants`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

use super::{metadata, MeshSettings, HTTP_FILTER_NAME};

/// The API group of `InferencePool` (GIE's `v1`).
pub const INFERENCE_POOL_GROUP: &str = "inference.networking.k8s.io";
/// The EPP's ext_proc port in GIE's chart.
pub const DEFAULT_EPP_PORT: u16 = 9002;
/// Where the EPP reads the model-server metrics (the model-server
/// protocol's `vllm:num_requests_waiting`, `vllm:num_requests_running`,
/// `vllm:kv_cache_usage_perc`): the serving port's `/metrics`.
pub const METRICS_PATH: &str = "/metrics";
/// The only method the EPP is granted there.
pub const METRICS_METHOD: &str = "GET";
/// The route, in the inference pods' sidecars (the sidecar placement), that
/// lets the EPP's `GET /metrics` past the filter, which would ask it for a
/// key.
pub const METRICS_ROUTE: &str = "maas-epp-metrics";

/// The flags, as errors name them.
pub const POOL_FLAG: &str = "--inference-pool";
pub const SERVICE_ACCOUNT_FLAG: &str = "--epp-service-account";
pub const POD_LABELS_FLAG: &str = "--epp-pod-labels";
pub const NO_GRANT_FLAG: &str = "--no-epp-metrics-grant";

/// The endpoint picker's Service, as `--inference-pool` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPicker {
    /// A Service in the mesh namespace (a DNS-1035 label).
    pub service: String,
    /// Its ext_proc port, [`DEFAULT_EPP_PORT`] unless given.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointPickerError {
    #[error(
        "--inference-pool {0:?}: the EPP Service name must be 1 to 63 lowercase letters, \
         digits or '-', starting with a letter and ending with a letter or digit"
    )]
    Service(String),
    #[error("--inference-pool {0:?}: the EPP port must be a number from 1 to 65535")]
    Port(String),
}

impl FromStr for EndpointPicker {
    type Err = EndpointPickerError;

    /// `NAME` or `NAME:PORT`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (service, port) = match value.split_once(':') {
            Some((service, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| EndpointPickerError::Port(value.to_string()))?;
                (service, port)
            }
            None => (value, DEFAULT_EPP_PORT),
        };
        if !is_dns_1035_label(service) {
            return Err(EndpointPickerError::Service(value.to_string()));
        }
        Ok(EndpointPicker {
            service: service.to_string(),
            port,
        })
    }
}

impl fmt::Display for EndpointPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.port)
    }
}

/// What Kubernetes accepts as a Service name (a DNS-1035 label).
fn is_dns_1035_label(name: &str) -> bool {
    is_dns_1123_label(name) && name.as_bytes()[0].is_ascii_lowercase()
}

/// What Kubernetes accepts as a namespace name (a DNS-1123 label).
fn is_dns_1123_label(name: &str) -> bool {
    is_bounded_name(name, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
    })
}

/// 1 to 63 bytes, each `allowed`, beginning and ending with a letter or
/// digit: the shape every Kubernetes name and label part shares.
fn is_bounded_name(name: &str, allowed: impl Fn(u8) -> bool) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes.iter().all(|&b| allowed(b))
}

/// What Kubernetes accepts as a service account name, or a label key's
/// prefix (a DNS-1123 subdomain).
fn is_dns_1123_subdomain(name: &str) -> bool {
    (1..=253).contains(&name.len()) && name.split('.').all(is_dns_1123_label)
}

/// A label key's name part, or a non-empty label value: at most 63 ASCII
/// letters, digits, `-`, `_` or `.`, beginning and ending with a letter or
/// digit.
fn is_label_name(name: &str) -> bool {
    is_bounded_name(name, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
    })
}

/// A label key: `[PREFIX/]NAME`, the prefix a DNS-1123 subdomain.
fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_1123_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// A label value: empty, or as a key's name part.
fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

/// The EPP's Kubernetes service account, as `--epp-service-account` names
/// it: the Istio principal `<trust domain>/ns/NAMESPACE/sa/NAME`, and the
/// namespace its pods run in (a pod runs as a service account of its own
/// namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EppServiceAccount {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EppServiceAccountError {
    #[error(
        "--epp-service-account {0:?}: expected NAMESPACE/NAME, the namespace of the endpoint \
         picker's pods and the service account they run as"
    )]
    Shape(String),
    #[error(
        "--epp-service-account {0:?}: the namespace must be 1 to 63 lowercase letters, digits \
         or '-', starting and ending with a letter or digit"
    )]
    Namespace(String),
    #[error(
        "--epp-service-account {0:?}: the service account name must be 1 to 253 lowercase \
         letters, digits, '-' or '.', each '.'-separated part starting and ending with a \
         letter or digit"
    )]
    Name(String),
}

impl FromStr for EppServiceAccount {
    type Err = EppServiceAccountError;

    /// `NAMESPACE/NAME`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = value
            .split_once('/')
            .ok_or_else(|| EppServiceAccountError::Shape(value.to_string()))?;
        if !is_dns_1123_label(namespace) {
            return Err(EppServiceAccountError::Namespace(value.to_string()));
        }
        // A second '/' lands here: no service account name has one.
        if !is_dns_1123_subdomain(name) {
            return Err(EppServiceAccountError::Name(value.to_string()));
        }
        Ok(EppServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for EppServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl EppServiceAccount {
    /// The SPIFFE path Istio's `principals` match, in `trust_domain`.
    pub fn principal(&self, trust_domain: &str) -> String {
        format!("{trust_domain}/ns/{}/sa/{}", self.namespace, self.name)
    }
}

/// Labels that every EPP pod carries, as `--epp-pod-labels` names them:
/// the NetworkPolicy's `podSelector.matchLabels` (all must match). In key
/// order, so the rendering does not depend on the flag's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EppPodLabels(BTreeMap<String, String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EppPodLabelsError {
    #[error(
        "--epp-pod-labels {value:?}: {item:?} is not KEY=VALUE (expected \
         KEY=VALUE[,KEY=VALUE...], at least one label)"
    )]
    Pair { value: String, item: String },
    #[error(
        "--epp-pod-labels {value:?}: {key:?} is not a label key: an optional DNS subdomain \
         and '/', then 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a \
         letter or digit"
    )]
    Key { value: String, key: String },
    #[error(
        "--epp-pod-labels {value:?}: {label:?} is not a label value for {key:?}: up to 63 \
         letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    )]
    Value {
        value: String,
        key: String,
        label: String,
    },
    #[error("--epp-pod-labels {value:?}: {key:?} is given twice")]
    Duplicate { value: String, key: String },
}

impl FromStr for EppPodLabels {
    type Err = EppPodLabelsError;

    /// `KEY=VALUE[,KEY=VALUE...]`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut labels = BTreeMap::new();
        for item in value.split(',') {
            let (key, label) = item
                .split_once('=')
                .ok_or_else(|| EppPodLabelsError::Pair {
                    value: value.to_string(),
                    item: item.to_string(),
                })?;
            if !is_label_key(key) {
                return Err(EppPodLabelsError::Key {
                    value: value.to_string(),
                    key: key.to_string(),
                });
            }
            if !is_label_value(label) {
                return Err(EppPodLabelsError::Value {
                    value: value.to_string(),
                    key: key.to_string(),
                    label: label.to_string(),
                });
            }
            if labels.insert(key.to_string(), label.to_string()).is_some() {
                return Err(EppPodLabelsError::Duplicate {
                    value: value.to_string(),
                    key: key.to_string(),
                });
            }
        }
        Ok(EppPodLabels(labels))
    }
}

impl fmt::Display for EppPodLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

impl EppPodLabels {
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// As a `matchLabels`.
    pub fn match_labels(&self) -> Value {
        json!(self.0)
    }
}

/// Who the EPP is: its service account for Istio, its pods for Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EppIdentity {
    pub service_account: EppServiceAccount,
    pub pod_labels: EppPodLabels,
}

/// What the inference server's access policies grant the EPP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EppMetricsAccess {
    /// `GET /metrics` on the serving port, from this identity alone.
    Granted(EppIdentity),
    /// Nothing (`--no-epp-metrics-grant`): whoever installs the EPP admits
    /// it; until then its scrapes are refused.
    Withheld,
}

/// `--inference-pool` with what the EPP is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferencePoolSettings {
    pub picker: EndpointPicker,
    pub metrics: EppMetricsAccess,
}

/// The EPP flags together: each value is checked by its own parser, this
/// is what they mean only together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EppAccessError {
    #[error(
        "--inference-pool needs the endpoint picker's identity, for the inference server's \
         policies to let it GET /metrics: give --epp-service-account NAMESPACE/NAME and \
         --epp-pod-labels KEY=VALUE[,...] as its chart installed it (docs/mesh.md), or \
         --no-epp-metrics-grant to admit it with policies of your own"
    )]
    Missing,
    #[error(
        "{given} without {missing}: the Istio policy and the NetworkPolicy both guard the \
         inference server, and each needs its half of the endpoint picker's identity"
    )]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    #[error("{0} describes the endpoint picker of --inference-pool, which is not given")]
    WithoutPool(&'static str),
    #[error(
        "--no-epp-metrics-grant with {0}: either grant the endpoint picker GET /metrics or \
         leave it to your own policies, not both"
    )]
    Conflict(&'static str),
}

impl InferencePoolSettings {
    /// The pool the flags ask for (`None` without `--inference-pool`), or
    /// why they do not go together: with a pool, the EPP's identity is
    /// required, both halves of it, unless `no_grant` opts out; without
    /// one, none of the EPP flags.
    pub fn from_flags(
        pool: Option<EndpointPicker>,
        service_account: Option<EppServiceAccount>,
        pod_labels: Option<EppPodLabels>,
        no_grant: bool,
    ) -> Result<Option<Self>, EppAccessError> {
        let given = [
            (SERVICE_ACCOUNT_FLAG, service_account.is_some()),
            (POD_LABELS_FLAG, pod_labels.is_some()),
            (NO_GRANT_FLAG, no_grant),
        ];
        let Some(picker) = pool else {
            return match given.iter().find(|(_, given)| *given) {
                Some((flag, _)) => Err(EppAccessError::WithoutPool(flag)),
                None => Ok(None),
            };
        };
        let metrics = match (service_account, pod_labels, no_grant) {
            (None, None, true) => EppMetricsAccess::Withheld,
            (Some(_), _, true) => return Err(EppAccessError::Conflict(SERVICE_ACCOUNT_FLAG)),
            (None, Some(_), true) => return Err(EppAccessError::Conflict(POD_LABELS_FLAG)),
            (Some(service_account), Some(pod_labels), false) => {
                EppMetricsAccess::Granted(EppIdentity {
                    service_account,
                    pod_labels,
                })
            }
            (Some(_), None, false) => {
                return Err(EppAccessError::Incomplete {
                    given: SERVICE_ACCOUNT_FLAG,
                    missing: POD_LABELS_FLAG,
                })
            }
            (None, Some(_), false) => {
                return Err(EppAccessError::Incomplete {
                    given: POD_LABELS_FLAG,
                    missing: SERVICE_ACCOUNT_FLAG,
                })
            }
            (None, None, false) => return Err(EppAccessError::Missing),
        };
        Ok(Some(InferencePoolSettings { picker, metrics }))
    }

    /// The EPP identity granted `GET /metrics`, if any.
    pub fn metrics_grant(&self) -> Option<&EppIdentity> {
        match &self.metrics {
            EppMetricsAccess::Granted(identity) => Some(identity),
            EppMetricsAccess::Withheld => None,
        }
    }
}

/// The pool over the inference server's pods: the Deployment's pod label
/// (`app.kubernetes.io/name`, as its Service selects), its port, and the
/// EPP. Named as the inference server, whose Service it stands in for.
pub fn inference_pool(settings: &MeshSettings, picker: &EndpointPicker) -> Value {
    json!({
        "apiVersion": format!("{INFERENCE_POOL_GROUP}/v1"),
        "kind": "InferencePool",
        "metadata": metadata(&settings.inference_app, settings),
        "spec": {
            "selector": {
                "matchLabels": { "app.kubernetes.io/name": settings.inference_app },
            },
            "targetPorts": [{ "number": settings.inference_port }],
            // Without the EPP no replica is picked: fail closed (the
            // CRD's default, stated).
            "endpointPickerRef": {
                "name": picker.service,
                "port": { "number": picker.port },
                "failureMode": "FailClose",
            },
        },
    })
}

/// The patch of the inference pods' sidecars (the sidecar placement, where
/// the filter runs in them) that lets the EPP's `GET /metrics` past the
/// filter: a route for exactly that, first in Istio's inbound virtual host
/// of the serving port (`inbound|http|<port>`), to the same inbound
/// cluster as Istio's default route (`inbound|<port>||`), with the filter
/// off. Who may send it is the `AuthorizationPolicy`'s business, which
/// Istio enforces before any route: only the EPP
/// ([`crate::access::grants`]).
pub fn metrics_route_patch(settings: &MeshSettings) -> Value {
    let port = settings.inference_port;
    json!({
        "applyTo": "HTTP_ROUTE",
        "match": {
            "context": "SIDECAR_INBOUND",
            "routeConfiguration": {
                "portNumber": port,
                "vhost": { "name": format!("inbound|http|{port}") },
            },
        },
        "patch": {
            "operation": "INSERT_FIRST",
            "value": {
                "name": METRICS_ROUTE,
                "match": {
                    "path": METRICS_PATH,
                    "headers": [{ "name": ":method", "string_match": { "exact": METRICS_METHOD } }],
                },
                "route": { "cluster": format!("inbound|{port}||"), "timeout": "0s" },
                "typed_per_filter_config": {
                    HTTP_FILTER_NAME: {
                        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                        "disabled": true,
                    },
                },
            },
        },
    })
}

/// The `backendRefs` of the `maas-models` rules: the pool when there is
/// one (no port: the pool's `targetPorts` say it), else the Service.
pub fn models_backend(settings: &MeshSettings) -> Value {
    match &settings.inference_pool {
        Some(_) => json!([{
            "group": INFERENCE_POOL_GROUP,
            "kind": "InferencePool",
            "name": settings.inference_app,
        }]),
        None => json!([{ "name": settings.inference_app, "port": settings.inference_port }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_names_a_service_and_an_optional_port() {
        let picker = |s: &str| s.parse::<EndpointPicker>();
        assert_eq!(
            picker("maas-epp"),
            Ok(EndpointPicker {
                service: "maas-epp".into(),
                port: DEFAULT_EPP_PORT
            })
        );
        assert_eq!(
            picker("epp1:9010"),
            Ok(EndpointPicker {
                service: "epp1".into(),
                port: 9010
            })
        );
        for (bad, want) in [
            ("", EndpointPickerError::Service(String::new())),
            (":9002", EndpointPickerError::Service(":9002".into())),
            ("Maas-EPP", EndpointPickerError::Service("Maas-EPP".into())),
            ("1epp", EndpointPickerError::Service("1epp".into())),
            ("epp-", EndpointPickerError::Service("epp-".into())),
            ("epp.maas", EndpointPickerError::Service("epp.maas".into())),
            (
                &"e".repeat(64),
                EndpointPickerError::Service("e".repeat(64)),
            ),
            ("epp:", EndpointPickerError::Port("epp:".into())),
            ("epp:0", EndpointPickerError::Port("epp:0".into())),
            ("epp:65536", EndpointPickerError::Port("epp:65536".into())),
            ("epp:grpc", EndpointPickerError::Port("epp:grpc".into())),
            ("epp:9002:1", EndpointPickerError::Port("epp:9002:1".into())),
        ] {
            assert_eq!(picker(bad), Err(want), "{bad:?}");
        }
        let message = picker("epp:x").unwrap_err().to_string();
        assert_eq!(
            message,
            "--inference-pool \"epp:x\": the EPP port must be a number from 1 to 65535"
        );
    }

    #[test]
    fn the_pool_selects_the_inference_pods_on_their_port() {
        let settings = MeshSettings::default();
        let picker = EndpointPicker {
            service: "maas-epp".into(),
            port: 9002,
        };
        let pool = inference_pool(&settings, &picker);
        assert_eq!(pool["metadata"]["name"], "maas-inference-server");
        assert_eq!(pool["metadata"]["namespace"], "maas");
        assert_eq!(
            pool["spec"]["selector"]["matchLabels"],
            json!({ "app.kubernetes.io/name": "maas-inference-server" })
        );
        assert_eq!(pool["spec"]["targetPorts"], json!([{ "number": 8000 }]));
        assert_eq!(
            pool["spec"]["endpointPickerRef"],
            json!({ "name": "maas-epp", "port": { "number": 9002 }, "failureMode": "FailClose" })
        );
    }

    #[test]
    fn the_service_account_is_namespace_slash_name() {
        let account = |s: &str| s.parse::<EppServiceAccount>();
        let epp = account("maas/maas-epp").unwrap();
        assert_eq!(
            epp,
            EppServiceAccount {
                namespace: "maas".into(),
                name: "maas-epp".into()
            }
        );
        assert_eq!(epp.to_string(), "maas/maas-epp");
        assert_eq!(
            epp.principal("cluster.local"),
            "cluster.local/ns/maas/sa/maas-epp"
        );
        // Service account names are DNS subdomains; namespaces may start
        // with a digit.
        assert!(account("0team/epp.v1-2").is_ok());
        let part = "a".repeat(63);
        let long_name = format!("ns/{}", [part.as_str(); 4].join("."));
        assert_eq!(long_name.len(), 3 + 255);
        let at_limit = format!("ns/{}.{}", [part.as_str(); 3].join("."), "a".repeat(61));
        assert!(account(&at_limit).is_ok());
        use EppServiceAccountError as E;
        for (bad, want) in [
            ("maas-epp", E::Shape("maas-epp".into())),
            ("", E::Shape(String::new())),
            ("/maas-epp", E::Namespace("/maas-epp".into())),
            ("Maas/epp", E::Namespace("Maas/epp".into())),
            ("ma_as/epp", E::Namespace("ma_as/epp".into())),
            ("-maas/epp", E::Namespace("-maas/epp".into())),
            (
                &format!("{}/epp", "n".repeat(64)),
                E::Namespace(format!("{}/epp", "n".repeat(64))),
            ),
            ("maas/", E::Name("maas/".into())),
            ("maas/EPP", E::Name("maas/EPP".into())),
            ("maas/epp-", E::Name("maas/epp-".into())),
            ("maas/epp..x", E::Name("maas/epp..x".into())),
            ("maas/epp/x", E::Name("maas/epp/x".into())),
            ("maas/epp x", E::Name("maas/epp x".into())),
            (&long_name, E::Name(long_name.clone())),
        ] {
            assert_eq!(account(bad), Err(want), "{bad:?}");
        }
        assert_eq!(
            account("maas").unwrap_err().to_string(),
            "--epp-service-account \"maas\": expected NAMESPACE/NAME, the namespace of the \
             endpoint picker's pods and the service account they run as"
        );
        assert!(account("maas/EPP")
            .unwrap_err()
            .to_string()
            .starts_with("--epp-service-account \"maas/EPP\": the service account name must be"));
    }

    #[test]
    fn pod_labels_are_kubernetes_labels_each_once() {
        let labels = |s: &str| s.parse::<EppPodLabels>();
        let parsed = labels("inferencepool=maas-epp,app.kubernetes.io/name=epp_1.x").unwrap();
        // Key order, whatever the flag's order.
        assert_eq!(
            parsed.to_string(),
            "app.kubernetes.io/name=epp_1.x,inferencepool=maas-epp"
        );
        assert_eq!(
            parsed.match_labels(),
            json!({ "app.kubernetes.io/name": "epp_1.x", "inferencepool": "maas-epp" })
        );
        assert_eq!(
            labels("app.kubernetes.io/name=epp_1.x,inferencepool=maas-epp").unwrap(),
            parsed
        );
        // Kubernetes allows an empty value, and upper case outside the prefix.
        assert_eq!(
            labels("Tier=").unwrap().labels(),
            &BTreeMap::from([("Tier".to_string(), String::new())])
        );
        let pair = |value: &str, item: &str| EppPodLabelsError::Pair {
            value: value.into(),
            item: item.into(),
        };
        let key = |value: &str, key: &str| EppPodLabelsError::Key {
            value: value.into(),
            key: key.into(),
        };
        let label = |value: &str, k: &str, label: &str| EppPodLabelsError::Value {
            value: value.into(),
            key: k.into(),
            label: label.into(),
        };
        let long = "v".repeat(64);
        let long_value = format!("a={long}");
        for (bad, want) in [
            ("", pair("", "")),
            ("app", pair("app", "app")),
            ("a=b,", pair("a=b,", "")),
            ("a=b,,c=d", pair("a=b,,c=d", "")),
            ("a=b;c=d", label("a=b;c=d", "a", "b;c=d")),
            ("=epp", key("=epp", "")),
            (" a=b", key(" a=b", " a")),
            ("-a=b", key("-a=b", "-a")),
            ("a-=b", key("a-=b", "a-")),
            ("Example.com/a=b", key("Example.com/a=b", "Example.com/a")),
            ("/a=b", key("/a=b", "/a")),
            ("x/y/z=b", key("x/y/z=b", "x/y/z")),
            ("example.com/=b", key("example.com/=b", "example.com/")),
            ("a=-b", label("a=-b", "a", "-b")),
            ("a=b c", label("a=b c", "a", "b c")),
            ("a=b=c", label("a=b=c", "a", "b=c")),
            (&long_value, label(&long_value, "a", &long)),
            (
                "a=b,a=c",
                EppPodLabelsError::Duplicate {
                    value: "a=b,a=c".into(),
                    key: "a".into(),
                },
            ),
        ] {
            assert_eq!(labels(bad), Err(want), "{bad:?}");
        }
        assert_eq!(
            labels("a=b,a=c").unwrap_err().to_string(),
            "--epp-pod-labels \"a=b,a=c\": \"a\" is given twice"
        );
        assert!(labels("app")
            .unwrap_err()
            .to_string()
            .starts_with("--epp-pod-labels \"app\": \"app\" is not KEY=VALUE"));
    }

    #[test]
    fn a_pool_needs_the_pickers_identity_or_an_explicit_opt_out() {
        let picker: EndpointPicker = "maas-epp".parse().unwrap();
        let account: EppServiceAccount = "maas/maas-epp".parse().unwrap();
        let labels: EppPodLabels = "inferencepool=maas-epp".parse().unwrap();
        let flags = |pool: bool, sa: bool, pods: bool, no_grant: bool| {
            InferencePoolSettings::from_flags(
                pool.then(|| picker.clone()),
                sa.then(|| account.clone()),
                pods.then(|| labels.clone()),
                no_grant,
            )
        };
        assert_eq!(flags(false, false, false, false), Ok(None));
        let granted = flags(true, true, true, false).unwrap().unwrap();
        assert_eq!(granted.picker, picker);
        assert_eq!(
            granted.metrics_grant(),
            Some(&EppIdentity {
                service_account: account.clone(),
                pod_labels: labels.clone(),
            })
        );
        let withheld = flags(true, false, false, true).unwrap().unwrap();
        assert_eq!(withheld.metrics, EppMetricsAccess::Withheld);
        assert_eq!(withheld.metrics_grant(), None);

        use EppAccessError as E;
        for (pool, sa, pods, no_grant, want) in [
            (true, false, false, false, E::Missing),
            (
                true,
                true,
                false,
                false,
                E::Incomplete {
                    given: SERVICE_ACCOUNT_FLAG,
                    missing: POD_LABELS_FLAG,
                },
            ),
            (
                true,
                false,
                true,
                false,
                E::Incomplete {
                    given: POD_LABELS_FLAG,
                    missing: SERVICE_ACCOUNT_FLAG,
                },
            ),
            (true, true, true, true, E::Conflict(SERVICE_ACCOUNT_FLAG)),
            (true, true, false, true, E::Conflict(SERVICE_ACCOUNT_FLAG)),
            (true, false, true, true, E::Conflict(POD_LABELS_FLAG)),
            (
                false,
                true,
                true,
                false,
                E::WithoutPool(SERVICE_ACCOUNT_FLAG),
            ),
            (false, false, true, false, E::WithoutPool(POD_LABELS_FLAG)),
            (false, false, false, true, E::WithoutPool(NO_GRANT_FLAG)),
        ] {
            assert_eq!(
                flags(pool, sa, pods, no_grant),
                Err(want),
                "{pool} {sa} {pods} {no_grant}"
            );
        }
        // The refusal names both flags, and the way out.
        let missing = E::Missing.to_string();
        for flag in [
            POOL_FLAG,
            SERVICE_ACCOUNT_FLAG,
            POD_LABELS_FLAG,
            NO_GRANT_FLAG,
        ] {
            assert!(missing.contains(flag), "{missing}");
        }
        assert_eq!(
            E::WithoutPool(POD_LABELS_FLAG).to_string(),
            "--epp-pod-labels describes the endpoint picker of --inference-pool, which is not given"
        );
    }

    #[test]
    fn the_sidecars_let_only_get_metrics_past_the_filter() {
        let settings = MeshSettings::default();
        let patch = metrics_route_patch(&settings);
        assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND");
        assert_eq!(
            patch["match"]["routeConfiguration"],
            json!({ "portNumber": 8000, "vhost": { "name": "inbound|http|8000" } })
        );
        assert_eq!(patch["patch"]["operation"], "INSERT_FIRST");
        let route = &patch["patch"]["value"];
        assert_eq!(
            route["match"],
            json!({
                "path": "/metrics",
                "headers": [{ "name": ":method", "string_match": { "exact": "GET" } }],
            })
        );
        assert_eq!(route["route"]["cluster"], "inbound|8000||");
        assert_eq!(
            route["typed_per_filter_config"][HTTP_FILTER_NAME]["disabled"],
            true
        );
    }
}
