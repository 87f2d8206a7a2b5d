//! The filter in an Istio mesh: `EnvoyFilter`s that insert
//! `envoy.filters.http.wasm` before the router of the ingress gateway (or of
//! the inference workload's sidecar), loading the module by URL with a
//! `sha256` pin as Kuadrant attaches its wasm-shim, and add the clusters the
//! filter calls; or a `WasmPlugin` instead.
//!
//! One source: the wasm filter's settings (`name`, `root_id`, `vm_id`,
//! runtime, `failure_policy: FAIL_CLOSED`, `allow_on_headers_stop_iteration`) are read
//! from `envoy/gateway.template.yaml`, the bootstrap every local run and
//! test uses, and the filter configuration is the same JSON the local
//! Envoy gets, with only `control_plane` added (the cluster and token of the
//! mesh's control plane). Only the code source differs: a URL instead of a
//! local file. What is rendered has passed the filter's own configuration
//! parser.
//!
//! Cluster names: the filter's configuration names Envoy clusters, and the
//! filter accepts only `[A-Za-z0-9._:-]` there, so Istio's own
//! `outbound|8090||maas-control-plane.maas.svc.cluster.local` cannot be
//! used; the clusters are added under the short names of the local
//! bootstrap ([`CONTROL_PLANE_CLUSTER`], [`LIMITADOR_CLUSTER`]) and speak
//! Istio mutual TLS with the workload's certificate, so they work with
//! `STRICT` peer authentication.

use serde_json::{json, Map, Value};

use maas_filter::auth::credential::Secret;
use maas_filter::config::{Config, ConfigError};

use crate::manifest::ManifestError;

mod clusters;
pub mod inference_pool;
pub mod providers;
mod version;

use clusters::url_host;
pub use clusters::{clusters, clusters_envoy_filter};
pub use inference_pool::{
    EndpointPicker, EndpointPickerError, EppAccessError, EppIdentity, EppMetricsAccess,
    EppPodLabels, EppPodLabelsError, EppServiceAccount, EppServiceAccountError,
    InferencePoolSettings,
};
pub use version::{check_istio_version, IstioVersion, ISTIO_FLOOR};

/// The cluster the filter's `control_plane.cluster` names (as locally).
pub const CONTROL_PLANE_CLUSTER: &str = "maas-control-plane";
/// The cluster for the limiter's gRPC (h2) service, for the filter's global
/// limits (the local bootstrap's name for it).
pub const LIMITADOR_CLUSTER: &str = "limitador";
/// The cluster Envoy fetches the module through.
pub const WASM_SOURCE_CLUSTER: &str = "maas-wasm-source";
/// The HTTP filter's name in the mesh's chain. Not the template's generic
/// `envoy.filters.http.wasm`: Kuadrant's wasm-shim may sit in the same
/// chain, and disabling ours on `/maas-api/` must not disable it too.
pub const HTTP_FILTER_NAME: &str = "maas-gateway";
/// Istio applies EnvoyFilters by ascending priority, and each insertion
/// "before the router" lands after the previous one: applied first, the
/// filter runs before Kuadrant's wasm-shim (priority 0), which then sees
/// the identity headers the filter set.
pub const FILTER_PRIORITY: i64 = -10;
/// Name of the `HTTPRoute` that serves `/maas-api/`; Istio names its only
/// rule's route `<namespace>.<name>.0`.
pub const API_ROUTE: &str = "maas-api";
/// Name of the `HTTPRoute` that serves the models (and the target of the
/// Kuadrant policies, which must not count `/maas-api/`).
pub const MODELS_ROUTE: &str = "maas-models";

/// The rules one HTTPRoute may have: Gateway API v1's `spec.rules` takes
/// 1 to 16.
pub const MAX_ROUTE_RULES: usize = 16;
/// The sidecar placement's name for it. Kuadrant's policies trust the
/// `x-maas-*` headers the filter sets before them at the gateway; in the
/// sidecar placement no filter runs there, so those headers would be the
/// client's. Under another name the policies find no route to attach to
/// (Kuadrant reports it in their status) instead of trusting them.
pub const SIDECAR_MODELS_ROUTE: &str = "maas-models-sidecar";
/// The Secret (in `namespace`) whose `api-key` the inference server
/// demands of its callers (`istio/base/inference-server.yaml`) and the
/// filter presents (`model_server_api_key`): a request that reaches the
/// server without passing the filter, in either placement, is refused.
pub const MODEL_SERVER_KEY_SECRET: &str = "maas-inference-server-key";
/// The header the filter routes completions by, after reading the body.
pub const MODEL_HEADER: &str = "x-maas-model";

/// The checked-in rendering (`istio/gateway/`, `istio/sidecar/`, `istio/wasmplugin/`) uses
/// these: a module URL and checksum no proxy will accept, and a token no
/// control plane has, so an unrendered checkout fails closed instead of
/// running with guessable values. `render-istio` replaces all three.
pub mod placeholder {
    pub const WASM_URL: &str = "https://wasm.example.com/maas/v0.1.0/maas_filter.wasm";
    pub const WASM_SHA256: &str =
        "0000000000000000000000000000000000000000000000000000000000000000";
    pub const GATEWAY_TOKEN: &str = "maas-gateway-REPLACE-ME";
    pub const MODEL_SERVER_KEY: &str = "maas-model-server-REPLACE-ME";
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("envoy bootstrap template: {0}")]
    Template(String),
    #[error("filter configuration: not a JSON object ({0})")]
    ConfigShape(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--wasm-sha256 {0:?}: expected the 64 hex characters of the module's SHA-256")]
    Sha256(String),
    #[error("--wasm-url {url:?}: {reason}")]
    WasmUrl { url: String, reason: &'static str },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("--istio-version {0:?}: expected major.minor, e.g. 1.28")]
    IstioVersion(String),
    #[error(
        "Istio {0} is older than {ISTIO_FLOOR}: its istiod drops the filter's \
         allow_on_headers_stop_iteration from the EnvoyFilter (only a webhook warning), \
         and every completion stalls"
    )]
    IstioTooOld(IstioVersion),
    #[error("the filter's failure_policy {0:?} is not FAIL_CLOSED or FAIL_RELOAD")]
    FailurePolicy(String),
    #[error(
        "{MODELS_ROUTE} has one rule per local model, and a Gateway API HTTPRoute takes \
         1 to {MAX_ROUTE_RULES} rules (the API server refuses others); the filter \
         configuration has {0} local models (serve more from another Gateway)"
    )]
    RouteRules(usize),
    #[error(
        "--inference-pool: the filter configuration has no local model for an InferencePool \
         to serve (its models are all external)"
    )]
    PoolWithoutModels,
    #[error(
        "the filter's failure_policy is FAIL_OPEN: a proxy whose module failed to load or \
         crashed would pass every request on unauthenticated and unmetered (and on the \
         gateway a client's own x-maas-model would route it); the mesh renders \
         FAIL_CLOSED or FAIL_RELOAD only"
    )]
    FailOpen,
}

/// Where the module is published.
#[derive(Debug, Clone)]
pub struct WasmModule {
    /// An `http://` or `https://` URL that answers the module itself (Envoy
    /// does not follow redirects).
    pub url: String,
    /// Hex SHA-256 of the module; Envoy refuses other bytes.
    pub sha256: String,
    /// The CA bundle, on the proxy, that an `https://` source's certificate
    /// must chain to: the checksum guards the module, the certificate
    /// guards against a source that answers for another host.
    pub ca_file: String,
    /// For the WasmPlugin alone: the module as an OCI artifact
    /// (`oci://…@sha256:…`, from `make images`), which Istio's agent pulls.
    pub oci: Option<String>,
}

/// The system trust store in Istio's proxy images.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Everything a rendering depends on besides the two files it reads.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub namespace: String,
    /// The Gateway API `Gateway`; Istio labels its pods with
    /// `gateway.networking.k8s.io/gateway-name: <name>`.
    pub gateway: String,
    /// `app.kubernetes.io/name` of the inference server's pods.
    pub inference_app: String,
    /// Service (and service account) of the control plane, and its port.
    pub control_plane: String,
    pub control_plane_port: u16,
    /// Service (and service account) of the limiter (`maas-limiter`, which
    /// implements the Reserve/Commit the filter's token limits need), and
    /// its gRPC port.
    pub limiter: String,
    pub limiter_port: u16,
    /// The inference server's port (its Service shares `inference_app`).
    pub inference_port: u16,
    /// Service (and pod label) of the limiter's Redis, and its port.
    pub redis: String,
    pub redis_port: u16,
    /// The mesh's trust domain, for the SPIFFE ids the clusters verify.
    pub trust_domain: String,
    /// Where Prometheus runs: the NetworkPolicies let it scrape the
    /// proxies' metrics ports of every workload.
    pub monitoring_namespace: String,
    /// The control plane's gateway token (its `gateway-token`).
    pub gateway_token: Secret,
    /// The key the filter presents to the inference server, which
    /// `istio/base` has it demand (`--api-key-file`, from the Secret
    /// [`MODEL_SERVER_KEY_SECRET`]).
    pub model_server_key: Secret,
    pub wasm: WasmModule,
    /// Keep the `keys` of the local configuration (its demo keys, one
    /// unlimited, whose plaintext is in the README) in the mesh's copy.
    /// Off by default: the mesh's keys come from the control plane.
    pub keep_config_keys: bool,
    /// The Istio release it is for, checked against [`ISTIO_FLOOR`] when
    /// given.
    pub istio_version: Option<IstioVersion>,
    /// Balance the models' route over the inference server's replicas
    /// with GIE's endpoint picker (an `InferencePool`) instead of the
    /// Service, and grant that picker `GET /metrics` on the inference
    /// server unless withheld. Off by default.
    pub inference_pool: Option<InferencePoolSettings>,
}

/// The names `istio/base` uses, and the placeholders of the checked-in
/// rendering.
impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            namespace: "maas".into(),
            gateway: "maas-gateway".into(),
            inference_app: "maas-inference-server".into(),
            inference_port: 8000,
            control_plane: "maas-control-plane".into(),
            control_plane_port: 8090,
            limiter: "maas-limiter".into(),
            limiter_port: 8081,
            redis: "redis".into(),
            redis_port: 6379,
            trust_domain: "cluster.local".into(),
            monitoring_namespace: "istio-system".into(),
            gateway_token: placeholder::GATEWAY_TOKEN.into(),
            model_server_key: placeholder::MODEL_SERVER_KEY.into(),
            wasm: WasmModule {
                url: placeholder::WASM_URL.into(),
                sha256: placeholder::WASM_SHA256.into(),
                ca_file: SYSTEM_CA_FILE.into(),
                oci: None,
            },
            keep_config_keys: false,
            istio_version: None,
            inference_pool: None,
        }
    }
}

impl MeshSettings {
    fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc.cluster.local", self.namespace)
    }

    /// The endpoint picker the inference server's policies let `GET
    /// /metrics`: only with an inference pool, and only unless withheld.
    pub fn epp_metrics_grant(&self) -> Option<&EppIdentity> {
        self.inference_pool
            .as_ref()
            .and_then(InferencePoolSettings::metrics_grant)
    }
}

/// Where the filter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The ingress gateway: north-south traffic, before it enters the mesh.
    Gateway,
    /// The inference pods' sidecars: every caller, in the mesh or not, passes
    /// the filter once. Not with [`Placement::Gateway`] at the same time:
    /// the gateway's filter removes the credential the sidecar's would ask for.
    Sidecar,
}

impl Placement {
    pub fn label(self) -> &'static str {
        match self {
            Placement::Gateway => "gateway",
            Placement::Sidecar => "sidecar",
        }
    }

    fn selector(self, settings: &MeshSettings) -> Value {
        match self {
            Placement::Gateway => {
                json!({ "gateway.networking.k8s.io/gateway-name": settings.gateway })
            }
            Placement::Sidecar => json!({ "app.kubernetes.io/name": settings.inference_app }),
        }
    }

    /// Where an EnvoyFilter of this placement applies. Istio documents
    /// `targetRefs` for Gateway API gateways (it follows the Gateway, not
    /// labels its controller happens to set); sidecars are selected by
    /// their pods' labels.
    fn attach(self, settings: &MeshSettings) -> (&'static str, Value) {
        match self {
            Placement::Gateway => ("targetRefs", gateway_target(settings)),
            Placement::Sidecar => (
                "workloadSelector",
                json!({ "labels": self.selector(settings) }),
            ),
        }
    }

    fn listener_context(self) -> &'static str {
        match self {
            Placement::Gateway => "GATEWAY",
            Placement::Sidecar => "SIDECAR_INBOUND",
        }
    }

    /// Clusters a sidecar calls out through are outbound ones.
    fn cluster_context(self) -> &'static str {
        match self {
            Placement::Gateway => "GATEWAY",
            Placement::Sidecar => "SIDECAR_OUTBOUND",
        }
    }
}

/// What the mesh takes from the local bootstrap template.
#[derive(Debug, Clone)]
pub struct TemplateSettings {
    /// The wasm filter's `config`.
    pub wasm: Value,
    /// The HTTP connection manager's path handling, which the filter's
    /// exact path checks rely on.
    pub path_handling: Map<String, Value>,
    /// The listener's buffer limit, above the filter's body cap so an
    /// oversized body gets the filter's 413, not Envoy's.
    pub buffer_limit: Option<Value>,
}

/// HCM fields mirrored into the mesh.
const PATH_HANDLING: [&str; 3] = [
    "normalize_path",
    "merge_slashes",
    "path_with_escaped_slashes_action",
];

/// Reads [`TemplateSettings`] from the local bootstrap template. Its
/// `{{PLACEHOLDERS}}` are not YAML: whole-line ones (generated blocks) are
/// dropped and inline ones quoted before parsing.
pub fn template_settings(template: &str) -> Result<TemplateSettings, RenderError> {
    let mut yaml = String::with_capacity(template.len());
    for line in template.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("{{") && trimmed.ends_with("}}") {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start..].find("}}") else {
                break;
            };
            yaml.push_str(&rest[..start]);
            yaml.push('\'');
            yaml.push_str(&rest[start..start + len + 2]);
            yaml.push('\'');
            rest = &rest[start + len + 2..];
        }
        yaml.push_str(rest);
        yaml.push('\n');
    }
    let bootstrap: Value =
        serde_yaml_ng::from_str(&yaml).map_err(|e| RenderError::Template(e.to_string()))?;
    let mut found = Vec::new();
    collect_typed(&bootstrap, WASM_TYPE, &mut found);
    let wasm = match found.as_slice() {
        [filter] => filter
            .get("config")
            .cloned()
            .ok_or_else(|| RenderError::Template("the wasm filter has no config".into()))?,
        [] => {
            return Err(RenderError::Template(
                "no envoy.filters.http.wasm filter".into(),
            ))
        }
        _ => return Err(RenderError::Template("more than one wasm filter".into())),
    };
    // Checked here, once, for every rendering that copies these settings
    // (the EnvoyFilters, the WasmPlugin, the backend role).
    fail_strategy(&wasm)?;
    let mut hcms = Vec::new();
    collect_typed(&bootstrap, HCM_TYPE, &mut hcms);
    let path_handling = hcms
        .first()
        .map(|hcm| {
            PATH_HANDLING
                .iter()
                .filter_map(|k| Some((k.to_string(), hcm.get(*k)?.clone())))
                .collect()
        })
        .unwrap_or_default();
    let buffer_limit = bootstrap
        .pointer("/static_resources/listeners/0/per_connection_buffer_limit_bytes")
        .cloned();
    Ok(TemplateSettings {
        wasm,
        path_handling,
        buffer_limit,
    })
}

const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Every object whose `@type` is `type_url`, in document order.
fn collect_typed<'a>(value: &'a Value, type_url: &str, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str) == Some(type_url) {
                out.push(value);
            }
            map.values().for_each(|v| collect_typed(v, type_url, out));
        }
        Value::Array(list) => list.iter().for_each(|v| collect_typed(v, type_url, out)),
        _ => {}
    }
}

/// The filter configuration for the mesh: `local` (the JSON the local
/// Envoy uses) with `control_plane` pointed at the mesh's control plane,
/// accepted by the filter's own parser.
pub fn mesh_filter_config(local: &[u8], settings: &MeshSettings) -> Result<Value, RenderError> {
    let mut config: Value =
        serde_json::from_slice(local).map_err(|e| RenderError::ConfigShape(e.to_string()))?;
    let map = config
        .as_object_mut()
        .ok_or_else(|| RenderError::ConfigShape("a JSON object is expected".into()))?;
    let mut control_plane = map
        .remove("control_plane")
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    control_plane.insert("cluster".into(), json!(CONTROL_PLANE_CLUSTER));
    control_plane.insert(
        "authority".into(),
        json!(settings.service_host(&settings.control_plane)),
    );
    control_plane.insert("token".into(), json!(settings.gateway_token.expose()));
    map.insert("control_plane".into(), Value::Object(control_plane));
    map.insert(
        "model_server_api_key".into(),
        json!(settings.model_server_key.expose()),
    );
    if !settings.keep_config_keys {
        map.remove("keys");
    }
    // Global limits call the Limitador the EnvoyFilter adds a cluster for.
    if let Some(limiter) = map.get_mut("limiter").and_then(Value::as_object_mut) {
        limiter.insert("cluster".into(), json!(LIMITADOR_CLUSTER));
    }
    Config::from_json(config.to_string().as_bytes())?;
    Ok(config)
}

/// The limiter's limits (Limitador's limits-file format) for the
/// configuration's global limits, as the ConfigMap its Deployment mounts: rendered by the filter's own
/// `limitador_limits`, so the limits match the descriptors it sends.
fn limiter_limits_config_map(config: &Config) -> Value {
    let domain = config
        .limiter
        .as_ref()
        .map_or("maas", |l| l.domain.as_str());
    let limits = maas_filter::limits::global_limits::limitador_limits(
        domain,
        config.subscriptions.iter().map(|s| &**s),
    );
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "maas-limiter-limits" },
        "data": { "limits.yaml": limits },
    })
}

fn check_sha256(sha: &str) -> Result<(), RenderError> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(RenderError::Sha256(sha.to_string()))
    }
}

/// `value` with every object's keys in sorted order, so the embedded JSON
/// text is the same whether or not serde_json keeps insertion order (its
/// `preserve_order` feature, which any crate in a build can switch on: the
/// inference server's grammar engine does).
fn sorted_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

/// The template's wasm `config` with the mesh's configuration and the
/// module fetched by URL.
fn wasm_config(template: &Value, filter_config: &Value, wasm: &WasmModule) -> Value {
    let mut config = template.clone();
    config["configuration"] = json!({
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": sorted_keys(filter_config).to_string(),
    });
    config["vm_config"]["code"] = json!({
        "remote": {
            "http_uri": { "uri": wasm.url, "cluster": WASM_SOURCE_CLUSTER, "timeout": "30s" },
            "sha256": wasm.sha256.to_ascii_lowercase(),
            // A proxy that starts while the URL is briefly unreachable keeps
            // trying instead of running without the module (fail closed).
            "retry_policy": { "num_retries": 10 },
        }
    });
    config
}

fn metadata(name: &str, settings: &MeshSettings) -> Value {
    json!({
        "name": name,
        "namespace": settings.namespace,
        "labels": { "app.kubernetes.io/part-of": "maas", "app.kubernetes.io/managed-by": "maas-mesh" },
    })
}

/// `typed_per_filter_config` that turns the filter off on the `/maas-api/`
/// route: the control plane authenticates its own callers (as locally).
fn disable_on_api_route(filter_names: &[String], settings: &MeshSettings) -> Value {
    let per_filter: Map<String, Value> = filter_names
        .iter()
        .map(|name| {
            (
                name.clone(),
                json!({
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "disabled": true,
                    "is_optional": true,
                }),
            )
        })
        .collect();
    json!({
        "applyTo": "HTTP_ROUTE",
        "match": {
            "context": "GATEWAY",
            "routeConfiguration": {
                "vhost": { "route": { "name": format!("{}.{API_ROUTE}.0", settings.namespace) } }
            }
        },
        "patch": {
            "operation": "MERGE",
            "value": { "typed_per_filter_config": per_filter }
        }
    })
}

/// The listener settings the filter relies on, as the local bootstrap has
/// them: the connection manager's path normalisation (the filter's exact
/// path checks, and the gateway's DENY of the sync paths, see a path as the
/// router will) and the buffer limit above the filter's body cap.
fn listener_patches(placement: Placement, template: &TemplateSettings) -> Vec<Value> {
    let mut patches = Vec::new();
    if !template.path_handling.is_empty() {
        let mut hcm = template.path_handling.clone();
        hcm.insert("@type".into(), json!(HCM_TYPE));
        patches.push(json!({
            "applyTo": "NETWORK_FILTER",
            "match": {
                "context": placement.listener_context(),
                "listener": { "filterChain": { "filter": {
                    "name": "envoy.filters.network.http_connection_manager"
                } } }
            },
            "patch": { "operation": "MERGE", "value": { "typed_config": hcm } },
        }));
    }
    if let Some(limit) = &template.buffer_limit {
        patches.push(json!({
            "applyTo": "LISTENER",
            "match": { "context": placement.listener_context() },
            "patch": { "operation": "MERGE", "value": { "per_connection_buffer_limit_bytes": limit } },
        }));
    }
    patches
}

/// The `EnvoyFilter` inserting the wasm filter before the router.
pub fn filter_envoy_filter(
    placement: Placement,
    settings: &MeshSettings,
    template: &TemplateSettings,
    wasm_config: &Value,
) -> Value {
    let mut patches = vec![json!({
        "applyTo": "HTTP_FILTER",
        "match": {
            "context": placement.listener_context(),
            "listener": {
                "filterChain": {
                    "filter": {
                        "name": "envoy.filters.network.http_connection_manager",
                        "subFilter": { "name": filter_goes_before(placement, settings) },
                    }
                }
            }
        },
        "patch": {
            "operation": "INSERT_BEFORE",
            "value": {
                "name": HTTP_FILTER_NAME,
                "typed_config": { "@type": WASM_TYPE, "config": wasm_config },
            }
        }
    })];
    patches.extend(listener_patches(placement, template));
    if placement == Placement::Gateway {
        patches.push(disable_on_api_route(
            &[HTTP_FILTER_NAME.to_string()],
            settings,
        ));
    }
    // In the inference pods' sidecars the filter would ask the endpoint
    // picker's metrics scrape for a key.
    if placement == Placement::Sidecar && settings.epp_metrics_grant().is_some() {
        patches.push(inference_pool::metrics_route_patch(settings));
    }
    let name = format!("maas-filter-{}", placement.label());
    envoy_filter(&name, placement, settings, Some(FILTER_PRIORITY), patches)
}

fn envoy_filter(
    name: &str,
    placement: Placement,
    settings: &MeshSettings,
    priority: Option<i64>,
    patches: Vec<Value>,
) -> Value {
    let (key, target) = placement.attach(settings);
    let mut spec = json!({ key: target, "configPatches": patches });
    if let Some(priority) = priority {
        spec["priority"] = json!(priority);
    }
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata(name, settings),
        "spec": spec,
    })
}

/// The `WasmPlugin` alternative on the gateway. Istio's WasmPlugin has no
/// `allow_on_headers_stop_iteration`, which the filter needs to read a
/// completion request's body before the headers go upstream: see
/// istio/wasmplugin/README.md before using it.
pub fn wasm_plugin(
    settings: &MeshSettings,
    template: &Value,
    filter_config: &Value,
) -> Result<Value, RenderError> {
    let root_id = template
        .get("root_id")
        .cloned()
        .unwrap_or(json!(HTTP_FILTER_NAME));
    // An OCI artifact (`make images`) is pinned by its manifest digest in
    // the reference, which is what Istio compares `sha256` with.
    let (plugin_url, plugin_sha256) = match &settings.wasm.oci {
        Some(reference) => {
            let digest = reference
                .strip_prefix("oci://")
                .and_then(|r| r.split_once("@sha256:"))
                .map(|(_, digest)| digest)
                .filter(|d| check_sha256(d).is_ok())
                .ok_or_else(|| RenderError::WasmUrl {
                    url: reference.clone(),
                    reason: "expected oci://REGISTRY/REPOSITORY@sha256:<64 hex>",
                })?;
            (reference.clone(), digest.to_string())
        }
        None => (
            settings.wasm.url.clone(),
            settings.wasm.sha256.to_ascii_lowercase(),
        ),
    };
    Ok(json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata(HTTP_FILTER_NAME, settings),
        "spec": {
            "targetRefs": gateway_target(settings),
            "type": "HTTP",
            "url": plugin_url,
            "sha256": plugin_sha256,
            // After Istio's authentication (jwt_authn, whose claims the
            // filter reads), before its authorization and Kuadrant (STATS).
            "phase": "AUTHZ",
            "failStrategy": fail_strategy(template)?,
            "pluginName": root_id,
            "pluginConfig": filter_config,
        }
    }))
}

/// The HTTP filter ours is inserted before. Istio puts the endpoint
/// picker's `ext_proc` filter (a Gateway whose routes lead to an
/// InferencePool) after the WasmPlugins and before the router, so "before
/// the router" would run ours after it: the picker would see each request
/// before the filter authenticates it, the client's credential included,
/// and before the filter has read the model from the body and set the
/// header `maas-models` routes on, so no route to the pool would have
/// matched yet. With a pool, on the gateway, ours goes before the picker.
/// (A WasmPlugin, phase AUTHZ, already runs before it.)
fn filter_goes_before(placement: Placement, settings: &MeshSettings) -> &'static str {
    match placement {
        Placement::Gateway if settings.inference_pool.is_some() => EXT_PROC_FILTER,
        Placement::Gateway | Placement::Sidecar => ROUTER_FILTER,
    }
}

const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// Istio's name for the endpoint picker's filter (Envoy's well-known name).
const EXT_PROC_FILTER: &str = "envoy.filters.http.ext_proc";

/// The Gateway API gateway, as `targetRefs`.
fn gateway_target(settings: &MeshSettings) -> Value {
    json!([{
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": settings.gateway,
    }])
}

/// The WasmPlugin's `failStrategy` for the template's `failure_policy`.
/// The template must not use the deprecated `fail_open`, which Envoy
/// ignores once `failure_policy` is set and may drop, nor fail open at all:
/// the filter is the gateway's authentication and its limits.
fn fail_strategy(template: &Value) -> Result<&'static str, RenderError> {
    if template.get("fail_open").is_some() {
        return Err(RenderError::Template(
            "the wasm filter sets the deprecated fail_open; use failure_policy".into(),
        ));
    }
    match template.get("failure_policy").and_then(Value::as_str) {
        Some("FAIL_CLOSED") | None => Ok("FAIL_CLOSE"),
        Some("FAIL_OPEN") => Err(RenderError::FailOpen),
        Some("FAIL_RELOAD") => Ok("FAIL_RELOAD"),
        Some(other) => Err(RenderError::FailurePolicy(other.to_string())),
    }
}

/// The names Istio gives a WasmPlugin's HTTP filter in the chain, which
/// the `/maas-api/` route must name to turn it off: Istio 1.26 to 1.29
/// name it `extensions.istio.io/wasmplugin/<ns>.<name>` (1.22 to 1.25
/// spelt it `extenstions.`, below the floor); from 1.30
/// WasmPlugins are translated to TrafficExtensions, named
/// `extensions.istio.io/trafficextension/<ns>.<name>~istio-translated-wasmplugin`.
/// Both are listed, each `is_optional`, so one rendering serves every
/// Istio from the floor on: Envoy ignores the one that names no filter.
pub fn wasm_plugin_filter_names(settings: &MeshSettings) -> [String; 2] {
    let plugin = format!("{}.{HTTP_FILTER_NAME}", settings.namespace);
    [
        format!("extensions.istio.io/wasmplugin/{plugin}"),
        format!("extensions.istio.io/trafficextension/{plugin}~istio-translated-wasmplugin"),
    ]
}

/// The `maas-models` HTTPRoute. On the gateway the filter reads the model
/// from the body and sets `x-maas-model`, one rule per model. With the
/// filter in the sidecars nothing at the ingress reads the body, so the
/// route sends every `/v1/` request to the inference server, whose sidecar
/// filter does the rest. With [`MeshSettings::inference_pool`] every rule's
/// backend is the `InferencePool` instead of the Service; the rules, and so
/// Istio's route names, stay the same.
pub fn models_route(placement: Placement, settings: &MeshSettings, models: &[String]) -> Value {
    let backend = inference_pool::models_backend(settings);
    let path = json!({ "type": "PathPrefix", "value": "/v1/" });
    let rules: Vec<Value> = match placement {
        Placement::Gateway => models
            .iter()
            .map(|model| {
                json!({
                    "matches": [{
                        "path": path,
                        "headers": [{ "name": MODEL_HEADER, "value": model }],
                    }],
                    "backendRefs": backend,
                })
            })
            .collect(),
        Placement::Sidecar => {
            vec![json!({ "matches": [{ "path": path }], "backendRefs": backend })]
        }
    };
    let name = match placement {
        Placement::Gateway => MODELS_ROUTE,
        Placement::Sidecar => SIDECAR_MODELS_ROUTE,
    };
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(name, settings),
        "spec": {
            "parentRefs": [{ "name": settings.gateway }],
            "rules": rules,
        },
    })
}

/// One rendered file, relative to the `istio/` directory.
#[derive(Debug)]
pub struct RenderedFile {
    pub path: String,
    pub docs: Vec<Value>,
}

/// Every generated manifest: the filter and its clusters for each
/// placement, and the WasmPlugin alternative.
pub fn render(
    template: &str,
    local_filter_config: &[u8],
    settings: &MeshSettings,
) -> Result<Vec<RenderedFile>, RenderError> {
    check_sha256(&settings.wasm.sha256)?;
    url_host(&settings.wasm.url)?;
    if let Some(version) = settings.istio_version {
        check_istio_version(version)?;
    }
    let template = template_settings(template)?;
    let filter_config = mesh_filter_config(local_filter_config, settings)?;
    let wasm = wasm_config(&template.wasm, &filter_config, &settings.wasm);
    // Parsed once more, as the filter will: the limits and the models'
    // route are rendered from what it reads.
    let parsed = Config::from_json(filter_config.to_string().as_bytes())?;
    // External models have their own route (`providers::render`).
    let models = &local_models(&parsed);
    if models.len() > MAX_ROUTE_RULES {
        return Err(RenderError::RouteRules(models.len()));
    }
    // A gateway of external models alone: no route to a model server, and
    // no model server whose sidecar would hold the filter.
    if models.is_empty() && settings.inference_pool.is_some() {
        return Err(RenderError::PoolWithoutModels);
    }
    let placements: &[(Placement, &str)] = if models.is_empty() {
        &[(Placement::Gateway, "gateway")]
    } else {
        &[
            (Placement::Gateway, "gateway"),
            (Placement::Sidecar, "sidecar"),
        ]
    };
    let mut files = Vec::new();
    for &(placement, dir) in placements {
        files.push(RenderedFile {
            path: format!("{dir}/envoyfilters.yaml"),
            docs: vec![
                filter_envoy_filter(placement, settings, &template, &wasm),
                clusters_envoy_filter(placement, settings)?,
            ],
        });
        files.extend(placement_files(dir, placement, settings, models));
    }
    // What the WasmPlugin cannot say: the listener settings, and the
    // filter off on /maas-api/.
    let mut plugin_patches = listener_patches(Placement::Gateway, &template);
    plugin_patches.push(disable_on_api_route(
        &wasm_plugin_filter_names(settings),
        settings,
    ));
    let route_patch = envoy_filter(
        "maas-plugin-gateway",
        Placement::Gateway,
        settings,
        Some(FILTER_PRIORITY),
        plugin_patches,
    );
    files.push(RenderedFile {
        path: "base/limiter-limits.yaml".into(),
        docs: vec![limiter_limits_config_map(&parsed)],
    });
    files.push(RenderedFile {
        path: "wasmplugin/wasmplugin.yaml".into(),
        docs: vec![
            wasm_plugin(settings, &template.wasm, &filter_config)?,
            route_patch,
            clusters_envoy_filter(Placement::Gateway, settings)?,
        ],
    });
    files.extend(placement_files(
        "wasmplugin",
        Placement::Gateway,
        settings,
        models,
    ));
    Ok(files)
}

/// The models the inference server serves: the configuration's models but
/// the external ones, in order. On the gateway, the `maas-models` rule of
/// each is its index here, so Istio names its route
/// `<namespace>.maas-models.<index>` (which `providers` patches for a
/// local model with fallbacks).
fn local_models(config: &Config) -> Vec<String> {
    config
        .models
        .iter()
        .filter(|m| config.served_locally(m))
        .cloned()
        .collect()
}

/// What each placement adds besides the filter: who may call what, and
/// the route to the models (with the pool it goes to, if any: each
/// placement is applied on its own, so each carries its pool).
fn placement_files(
    dir: &str,
    placement: Placement,
    settings: &MeshSettings,
    models: &[String],
) -> Vec<RenderedFile> {
    let mut files = vec![RenderedFile {
        path: format!("{dir}/access.yaml"),
        docs: crate::access::access_manifests(placement, settings),
    }];
    // No local model: no route to a model server (external models have
    // `render-providers`' route).
    if !models.is_empty() {
        let mut routes = Vec::new();
        if let Some(pool) = &settings.inference_pool {
            routes.push(inference_pool::inference_pool(settings, &pool.picker));
        }
        routes.push(models_route(placement, settings, models));
        files.push(RenderedFile {
            path: format!("{dir}/routes.yaml"),
            docs: routes,
        });
    }
    files
}

#[cfg(test)]
pub(crate) mod tests {
    use super::clusters::UrlHost;
    use super::*;

    pub(crate) fn settings() -> MeshSettings {
        MeshSettings::default()
    }

    #[test]
    fn the_settings_debug_output_keeps_the_secrets_out() {
        let s = MeshSettings {
            gateway_token: "gateway-secret-0123".into(),
            model_server_key: "model-server-secret-4567".into(),
            ..settings()
        };
        let shown = format!("{s:?}");
        assert!(shown.contains("maas-gateway"), "the rest is shown: {shown}");
        for secret in ["gateway-secret-0123", "model-server-secret-4567"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn module_urls_name_the_cluster_that_fetches_them() {
        let host = |url: &str| url_host(url).map_err(|e| e.to_string());
        assert_eq!(
            host("https://wasm.example.com/maas/v1/maas_filter.wasm"),
            Ok(UrlHost {
                tls: true,
                host: "wasm.example.com".into(),
                port: 443
            })
        );
        assert_eq!(
            host("http://files.maas.svc.cluster.local:8080/m.wasm"),
            Ok(UrlHost {
                tls: false,
                host: "files.maas.svc.cluster.local".into(),
                port: 8080
            })
        );
        for bad in [
            "ftp://x/m.wasm",
            "https://x",
            "https://u:p@x/m.wasm",
            "https://x:y/m",
            "https:///m",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn template_placeholders_do_not_hide_the_filter() {
        let template = "\
static_resources:
  listeners:
  - address: { port_value: {{LISTEN_PORT}} }
    filters:
{{OIDC_FILTER}}
    - typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        merge_slashes: true
    - typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
        config:
          root_id: r
          failure_policy: FAIL_CLOSED
          configuration: { value: {{FILTER_CONFIG}} }
";
        let settings = template_settings(template).unwrap();
        assert_eq!(settings.wasm["root_id"], "r");
        assert_eq!(settings.wasm["failure_policy"], "FAIL_CLOSED");
        assert_eq!(
            settings.path_handling.get("merge_slashes"),
            Some(&json!(true))
        );
        assert!(template_settings("a: 1").is_err());

        // A filter that fails open is refused, before anything is rendered.
        for (policy, refused) in [
            ("FAIL_OPEN", "failure_policy is FAIL_OPEN"),
            (
                "FAIL_SOMETIMES",
                "\"FAIL_SOMETIMES\" is not FAIL_CLOSED or FAIL_RELOAD",
            ),
        ] {
            let open = template.replace("FAIL_CLOSED", policy);
            let e = template_settings(&open).unwrap_err().to_string();
            assert!(e.contains(refused), "{policy}: {e}");
        }
        let reload = template.replace("FAIL_CLOSED", "FAIL_RELOAD");
        assert!(template_settings(&reload).is_ok());
    }

    #[test]
    fn with_a_pool_the_filter_runs_before_the_endpoint_picker() {
        let template = TemplateSettings {
            wasm: json!({}),
            path_handling: Map::new(),
            buffer_limit: None,
        };
        let before = |placement, settings: &MeshSettings| {
            let filter = filter_envoy_filter(placement, settings, &template, &json!({}));
            filter["spec"]["configPatches"][0]["match"]["listener"]["filterChain"]["filter"]
                ["subFilter"]["name"]
                .clone()
        };
        let plain = settings();
        let pooled = MeshSettings {
            inference_pool: Some(InferencePoolSettings {
                picker: "maas-epp".parse().unwrap(),
                metrics: EppMetricsAccess::Withheld,
            }),
            ..settings()
        };
        assert_eq!(before(Placement::Gateway, &plain), ROUTER_FILTER);
        assert_eq!(before(Placement::Gateway, &pooled), EXT_PROC_FILTER);
        // In the sidecars the picker (on the gateway) has run already.
        assert_eq!(before(Placement::Sidecar, &pooled), ROUTER_FILTER);
    }

    #[test]
    fn the_wasmplugin_pulls_an_oci_artifact_pinned_by_digest() {
        let mut s = settings();
        let digest = "ab".repeat(32);
        s.wasm.oci = Some(format!(
            "oci://registry.example.com/maas/maas-filter@sha256:{digest}"
        ));
        let plugin = wasm_plugin(&s, &json!({}), &json!({})).unwrap();
        assert_eq!(plugin["spec"]["url"], json!(s.wasm.oci));
        assert_eq!(plugin["spec"]["sha256"], json!(digest));
        s.wasm.oci = Some("oci://registry.example.com/maas/maas-filter:0.1.0".into());
        assert!(wasm_plugin(&s, &json!({}), &json!({})).is_err());
    }

    #[test]
    fn checksums_are_64_hex_characters() {
        assert!(check_sha256(&"ab".repeat(32)).is_ok());
        assert!(check_sha256("abc").is_err());
        assert!(check_sha256(&"zz".repeat(32)).is_err());
    }
}
