//! The filter in an Istio mesh: `EnvoyFilter`s that insert
//! `envoy.filters.http.wasm` before the router of the ingress gateway (or of
//! the inference workload's sidecar), loading the module by URL with a
//! `sha256` pin as Kuadrant attaches its wasm-shim, and add the clusters the
//! filter calls; or a `WasmPlugin` instead.
//!
//! One source: the wasm filter's settings (`name`, `root_id`, `vm_id`,
//! runtime, `fail_open: false`, `allow_on_headers_stop_iteration`) are read
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

use maas_filter::config::{Config, ConfigError};

use crate::manifest::ManifestError;

/// The cluster the filter's `control_plane.cluster` names (as locally).
pub const CONTROL_PLANE_CLUSTER: &str = "maas-control-plane";
/// The cluster for Limitador's gRPC (h2) service, for the filter's global
/// limits.
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

/// The checked-in rendering (`istio/gateway/`, `istio/sidecar/`, `istio/wasmplugin/`) uses
/// these: a module URL and checksum no proxy will accept, and a token no
/// control plane has, so an unrendered checkout fails closed instead of
/// running with guessable values. `render-istio` replaces all three.
pub mod placeholder {
    pub const WASM_URL: &str = "https://wasm.example.com/maas/v0.1.0/maas_filter.wasm";
    pub const WASM_SHA256: &str =
        "0000000000000000000000000000000000000000000000000000000000000000";
    pub const GATEWAY_TOKEN: &str = "maas-gateway-REPLACE-ME";
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
}

/// Where the module is published.
#[derive(Debug, Clone)]
pub struct WasmModule {
    /// An `http://` or `https://` URL that answers the module itself (Envoy
    /// does not follow redirects).
    pub url: String,
    /// Hex SHA-256 of the module; Envoy refuses other bytes.
    pub sha256: String,
}

/// Where the URL points, for the cluster that fetches it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UrlHost {
    tls: bool,
    host: String,
    port: u16,
}

fn url_host(url: &str) -> Result<UrlHost, RenderError> {
    let bad = |reason| RenderError::WasmUrl {
        url: url.to_string(),
        reason,
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad(
            "credentials in the URL would be in every proxy's configuration",
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse().map_err(|_| bad("the port is not a number"))?,
        ),
        None => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() || !rest[authority.len()..].starts_with('/') {
        return Err(bad("expected scheme://host[:port]/path"));
    }
    Ok(UrlHost {
        tls,
        host: host.to_string(),
        port,
    })
}

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
    /// Service (and service account) of Limitador, and its gRPC port.
    pub limitador: String,
    pub limitador_port: u16,
    /// The mesh's trust domain, for the SPIFFE ids the clusters verify.
    pub trust_domain: String,
    /// The control plane's gateway token (its `gateway-token`).
    pub gateway_token: String,
    pub wasm: WasmModule,
}

impl MeshSettings {
    fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc.cluster.local", self.namespace)
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
    fn label(self) -> &'static str {
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
    control_plane.insert("token".into(), json!(settings.gateway_token));
    map.insert("control_plane".into(), Value::Object(control_plane));
    // Global limits call the Limitador the EnvoyFilter adds a cluster for.
    if let Some(limiter) = map.get_mut("limiter").and_then(Value::as_object_mut) {
        limiter.insert("cluster".into(), json!(LIMITADOR_CLUSTER));
    }
    Config::from_json(config.to_string().as_bytes())?;
    Ok(config)
}

/// Limitador's limits for the configuration's global limits, as the
/// ConfigMap its Deployment mounts: rendered by the filter's own
/// `limitador_limits`, so the limits match the descriptors it sends.
fn limitador_limits_config_map(filter_config: &Value) -> Result<Value, RenderError> {
    let config = Config::from_json(filter_config.to_string().as_bytes())?;
    let domain = config
        .limiter
        .as_ref()
        .map_or("maas", |l| l.domain.as_str());
    let limits = maas_filter::global_limits::limitador_limits(
        domain,
        config.subscriptions.iter().map(|s| &**s),
    );
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "limitador-limits" },
        "data": { "limits.yaml": limits },
    }))
}

fn check_sha256(sha: &str) -> Result<(), RenderError> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(RenderError::Sha256(sha.to_string()))
    }
}

/// The template's wasm `config` with the mesh's configuration and the
/// module fetched by URL.
fn wasm_config(template: &Value, filter_config: &Value, wasm: &WasmModule) -> Value {
    let mut config = template.clone();
    config["configuration"] = json!({
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": filter_config.to_string(),
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
fn disable_on_api_route(filter_name: &str, settings: &MeshSettings) -> Value {
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
            "value": {
                "typed_per_filter_config": {
                    filter_name: {
                        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                        "disabled": true,
                    }
                }
            }
        }
    })
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
                        "subFilter": { "name": "envoy.filters.http.router" },
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
    if placement == Placement::Gateway {
        patches.push(disable_on_api_route(HTTP_FILTER_NAME, settings));
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
    let mut spec = json!({
        "workloadSelector": { "labels": placement.selector(settings) },
        "configPatches": patches,
    });
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

/// Istio mutual TLS to a workload of the mesh, as Istio's own clusters do
/// it: the proxy's certificate and roots from its SDS (`sds-grpc`), the
/// peer verified by its service account's SPIFFE id.
fn istio_mtls(settings: &MeshSettings, service: &str, port: u16) -> Value {
    let sds = |name: &str| {
        json!({
            "name": name,
            "sds_config": {
                "api_config_source": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [{ "envoy_grpc": { "cluster_name": "sds-grpc" } }],
                },
                "resource_api_version": "V3",
            }
        })
    };
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": format!("outbound_.{port}_._.{}", settings.service_host(service)),
            "common_tls_context": {
                "alpn_protocols": ["istio-peer-exchange", "istio"],
                "tls_certificate_sds_secret_configs": [sds("default")],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{
                            "san_type": "URI",
                            "matcher": { "exact": format!(
                                "spiffe://{}/ns/{}/sa/{service}",
                                settings.trust_domain, settings.namespace
                            ) },
                        }]
                    },
                    "validation_context_sds_secret_config": sds("ROOTCA"),
                }
            }
        }
    })
}

fn dns_cluster(name: &str, host: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": host, "port_value": port }
            } } }] }],
        }
    })
}

/// The clusters the filter calls: the control plane (HTTP/1.1), Limitador
/// (gRPC over h2), and where the module is fetched from.
pub fn clusters(settings: &MeshSettings) -> Result<Vec<Value>, RenderError> {
    let mut control_plane = dns_cluster(
        CONTROL_PLANE_CLUSTER,
        &settings.service_host(&settings.control_plane),
        settings.control_plane_port,
    );
    control_plane["transport_socket"] = istio_mtls(
        settings,
        &settings.control_plane,
        settings.control_plane_port,
    );

    let mut limitador = dns_cluster(
        LIMITADOR_CLUSTER,
        &settings.service_host(&settings.limitador),
        settings.limitador_port,
    );
    limitador["transport_socket"] =
        istio_mtls(settings, &settings.limitador, settings.limitador_port);
    limitador["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} },
        }
    });

    let source = url_host(&settings.wasm.url)?;
    let mut wasm_source = dns_cluster(WASM_SOURCE_CLUSTER, &source.host, source.port);
    if source.tls {
        // No CA check is needed for integrity: Envoy refuses any bytes whose
        // SHA-256 is not the pinned one.
        wasm_source["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": source.host,
            }
        });
    }
    Ok(vec![control_plane, limitador, wasm_source])
}

/// The `EnvoyFilter` adding [`clusters`] to the proxies of `placement`.
pub fn clusters_envoy_filter(
    placement: Placement,
    settings: &MeshSettings,
) -> Result<Value, RenderError> {
    let patches: Vec<Value> = clusters(settings)?
        .into_iter()
        .map(|cluster| {
            json!({
                "applyTo": "CLUSTER",
                "match": { "context": placement.cluster_context() },
                "patch": { "operation": "ADD", "value": cluster },
            })
        })
        .collect();
    let name = format!("maas-clusters-{}", placement.label());
    Ok(envoy_filter(&name, placement, settings, None, patches))
}

/// The `WasmPlugin` alternative on the gateway. Istio's WasmPlugin has no
/// `allow_on_headers_stop_iteration`, which the filter needs to read a
/// completion request's body before the headers go upstream: see
/// istio/wasmplugin/README.md before using it.
pub fn wasm_plugin(settings: &MeshSettings, template: &Value, filter_config: &Value) -> Value {
    let root_id = template
        .get("root_id")
        .cloned()
        .unwrap_or(json!(HTTP_FILTER_NAME));
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata(HTTP_FILTER_NAME, settings),
        "spec": {
            "targetRefs": [{
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": settings.gateway,
            }],
            "type": "HTTP",
            "url": settings.wasm.url,
            "sha256": settings.wasm.sha256.to_ascii_lowercase(),
            // After Istio's authentication (jwt_authn, whose claims the
            // filter reads), before its authorization and Kuadrant (STATS).
            "phase": "AUTHZ",
            "failStrategy": if template.get("fail_open").and_then(Value::as_bool) == Some(true) {
                "FAIL_OPEN"
            } else {
                "FAIL_CLOSE"
            },
            "pluginName": root_id,
            "pluginConfig": filter_config,
        }
    })
}

/// One rendered file, relative to the `istio/` directory.
#[derive(Debug)]
pub struct RenderedFile {
    pub path: &'static str,
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
    let template = template_settings(template)?;
    let filter_config = mesh_filter_config(local_filter_config, settings)?;
    let wasm = wasm_config(&template.wasm, &filter_config, &settings.wasm);
    let mut files = Vec::new();
    for (placement, path) in [
        (Placement::Gateway, "gateway/envoyfilters.yaml"),
        (Placement::Sidecar, "sidecar/envoyfilters.yaml"),
    ] {
        files.push(RenderedFile {
            path,
            docs: vec![
                filter_envoy_filter(placement, settings, &template, &wasm),
                clusters_envoy_filter(placement, settings)?,
            ],
        });
    }
    // The WasmPlugin's filter is named `<namespace>.<name>` by Istio.
    let plugin_filter = format!("{}.{HTTP_FILTER_NAME}", settings.namespace);
    let route_patch = envoy_filter(
        "maas-plugin-api-route",
        Placement::Gateway,
        settings,
        Some(FILTER_PRIORITY),
        vec![disable_on_api_route(&plugin_filter, settings)],
    );
    files.push(RenderedFile {
        path: "base/limitador-limits.yaml",
        docs: vec![limitador_limits_config_map(&filter_config)?],
    });
    files.push(RenderedFile {
        path: "wasmplugin/wasmplugin.yaml",
        docs: vec![
            wasm_plugin(settings, &template.wasm, &filter_config),
            route_patch,
            clusters_envoy_filter(Placement::Gateway, settings)?,
        ],
    });
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

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
          fail_open: false
          configuration: { value: {{FILTER_CONFIG}} }
";
        let settings = template_settings(template).unwrap();
        assert_eq!(settings.wasm["root_id"], "r");
        assert_eq!(settings.wasm["fail_open"], false);
        assert_eq!(
            settings.path_handling.get("merge_slashes"),
            Some(&json!(true))
        );
        assert!(template_settings("a: 1").is_err());
    }

    #[test]
    fn checksums_are_64_hex_characters() {
        assert!(check_sha256(&"ab".repeat(32)).is_ok());
        assert!(check_sha256("abc").is_err());
        assert!(check_sha256(&"zz".repeat(32)).is_err());
    }
}
