//! External model providers in the mesh: what an Istio ingress gateway
//! needs to send the filter's external models to OpenAI, Azure OpenAI or
//! Anthropic with the gateway's credential, the counterpart of testkit's
//! local `ProviderSpec` rendering.
//!
//! Per provider: a `ServiceEntry` (`MESH_EXTERNAL`, `resolution: DNS`) whose
//! plain-HTTP port the gateway routes to and which targets the provider's
//! TLS port, a `DestinationRule` that originates TLS there (`SIMPLE`, the
//! host as SNI and as the only accepted SAN, the system roots or a CA from a
//! Secret), a rule per external model in the `maas-providers` `HTTPRoute`
//! (matched on `x-maas-model`, `Host` rewritten, identity and credential
//! headers removed, a `Hostname` backend), and a `CLUSTER` patch in one
//! `EnvoyFilter` that gives the provider's cluster two upstream HTTP
//! filters: the filter's backend role ([`backend`]), which makes each
//! attempt that provider's own, then Envoy's credential injector. Models
//! with fallbacks get a patch of their route ([`failover`]).
//!
//! Invariants:
//! - No credential value is ever an input, so none can be in the output: the
//!   providers file names a Kubernetes Secret and key, the gateway pod mounts
//!   that Secret as a file, and the injector reads the file through a
//!   file-based SDS resource (in the `maas-provider-sds` ConfigMap) that holds
//!   only the file's path. Istio's own SDS (`kubernetes://…`) serves TLS
//!   certificates and CA bundles only, never a generic secret, so it cannot
//!   carry an API key (istio/istio#45409, whose PR was closed unmerged).
//! - The providers the filter configuration names and the providers file
//!   describes are the same set, and every external model gets a route.
//! - Every provider connection is TLS verified for the provider's host.
//!
//! Istio's `MERGE` of a cluster replaces its whole
//! `typed_extension_protocol_options` entry rather than merging into it
//! (istio/istio#53685), so the patch states everything the cluster's HTTP
//! options hold: the HTTP version besides the upstream filters. A
//! `connectionPool.http` setting in a `DestinationRule` for these hosts
//! would be overwritten; none is rendered. Only the gateway placement
//! routes external models: the route and the patch are the gateway's.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Value};

use maas_filter::config::{Config, ConfigError};
use maas_filter::providers::credential_sds;

use super::{
    gateway_target, metadata, template_settings, MeshSettings, RenderError, MAX_ROUTE_RULES,
    MODEL_HEADER, SYSTEM_CA_FILE,
};

mod backend;
mod failover;

pub use backend::BACKEND_FILTER_NAME;
pub use failover::{ATTEMPT_HEADER, FAILOVER_ENVOY_FILTER, RETRY_ON};

/// The `HTTPRoute` of the external models (beside `maas-models`).
pub const PROVIDERS_ROUTE: &str = "maas-providers";
/// The `EnvoyFilter` adding the backend role and the credential injector to
/// the providers' clusters.
pub const INJECTOR_ENVOY_FILTER: &str = "maas-provider-credentials";
/// The ConfigMap of the SDS files, mounted at [`SDS_DIR`].
pub const SDS_CONFIG_MAP: &str = "maas-provider-sds";
/// The ConfigMap the Gateway's `infrastructure.parametersRef` names: Istio
/// merges its `deployment` into the gateway's Deployment (the mounts).
pub const GATEWAY_PARAMETERS: &str = "maas-gateway-providers";
/// Where the gateway's proxy finds the SDS files.
pub const SDS_DIR: &str = "/etc/maas/provider-sds";
/// Under which each provider's Secret is mounted, one directory each.
pub const SECRET_DIR: &str = "/etc/maas/providers";
/// The file name of the credential inside its provider's directory.
const CREDENTIAL_FILE: &str = "credential";
/// The plain-HTTP port of each `ServiceEntry`, which the route sends to and
/// the `DestinationRule` turns into TLS to the provider's port (Istio's TLS
/// origination pattern; a plain port 443 would claim sidecars' 443).
pub const ORIGINATION_PORT: u16 = 80;
/// Removed before a request leaves for a third party: the filter's identity
/// headers and any credential a client sent (the injector overwrites the
/// provider's own header; this removes the others). As testkit's local routes.
pub const REMOVED_HEADERS: [&str; 7] = [
    "x-maas-user",
    "x-maas-key-id",
    "x-maas-subscription",
    "x-maas-model",
    "authorization",
    "x-api-key",
    "api-key",
];

#[derive(Debug, thiserror::Error)]
pub enum ProvidersError {
    #[error("providers file: {0}")]
    Parse(String),
    #[error("filter configuration: not a JSON object ({0})")]
    ConfigShape(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("providers file: provider {provider:?}: `{field}` {reason}")]
    Invalid {
        provider: String,
        field: &'static str,
        reason: &'static str,
    },
    #[error("providers file: provider {0:?} is described twice")]
    Duplicate(String),
    #[error(
        "providers file: providers {first:?} and {second:?} both become {name:?} in \
         Kubernetes names; rename one"
    )]
    NameClash {
        first: String,
        second: String,
        name: String,
    },
    #[error(
        "the filter configuration's provider {provider:?} (serving {models:?}) has no entry \
         in the providers file: the mesh would not know its host or credential"
    )]
    MissingInMesh {
        provider: String,
        models: Vec<String>,
    },
    #[error(
        "the providers file describes {0:?}, which the filter configuration's `providers` \
         does not name: the filter would never route to it"
    )]
    NotInFilterConfig(String),
    #[error("the filter configuration has no `providers`: nothing to render")]
    NoProviders,
    #[error(
        "{PROVIDERS_ROUTE} has one rule per external model, and a Gateway API HTTPRoute \
         takes 1 to {MAX_ROUTE_RULES} rules (the API server refuses others); the filter \
         configuration routes {0} external models (more: serve them from another Gateway; \
         none: the providers file describes no provider the configuration routes a model to)"
    )]
    RouteRules(usize),
    #[error("cannot write the gateway's Deployment overlay: {0}")]
    Yaml(String),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(
        "the module is given only as the OCI artifact {0:?}: the backend role is an upstream \
         filter of each provider's cluster, whose code Envoy fetches itself, and only Istio's \
         agent (for a WasmPlugin) pulls OCI images; pass --wasm-url with an http(s) URL that \
         serves the same module and --wasm-sha256 with its SHA-256"
    )]
    OciModule(String),
    #[error(
        "fallbacks of model {0:?}: the model has no rule in maas-models or maas-providers to \
         patch"
    )]
    UnroutedFallbackModel(String),
}

/// The providers file: how the mesh reaches each provider the filter
/// configuration names. JSON or YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshProviders {
    pub providers: Vec<MeshProvider>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshProvider {
    /// The provider's `name` in the filter configuration.
    pub name: String,
    /// The provider's DNS name: the `ServiceEntry` host, the TLS SNI, the SAN
    /// its certificate must carry, and the `Host` it is sent.
    pub host: String,
    /// Its TLS port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// HTTP/2 to the provider; HTTP/1.1 otherwise.
    #[serde(default)]
    pub http2: bool,
    /// A Secret in the gateway's namespace with `ca.crt` (or `cacert`)
    /// holding the CAs that may sign the provider's certificate (the
    /// `DestinationRule`'s `credentialName`); none: the proxy's system roots.
    #[serde(default)]
    pub ca_secret: Option<String>,
    pub credential: CredentialRef,
}

fn default_port() -> u16 {
    443
}

/// How the provider expects the gateway's key, and where the key is. Never
/// the key itself: a `value` field is refused as unknown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRef {
    /// The request header the provider reads (`authorization`, `api-key`,
    /// `x-api-key`).
    pub header: String,
    /// Written before the key (`"Bearer "`); not secret.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The Kubernetes Secret (in the gateway's namespace) holding the key.
    pub secret: String,
    /// Its data key.
    #[serde(default = "default_secret_key")]
    pub key: String,
}

fn default_secret_key() -> String {
    "api-key".into()
}

impl MeshProviders {
    /// Parses a providers file (JSON is YAML too) and checks each entry.
    pub fn parse(bytes: &[u8]) -> Result<MeshProviders, ProvidersError> {
        let parsed: MeshProviders =
            serde_yaml_ng::from_slice(bytes).map_err(|e| ProvidersError::Parse(e.to_string()))?;
        let mut names = BTreeMap::new();
        for provider in &parsed.providers {
            provider.check()?;
            let k8s = k8s_name(&provider.name);
            if let Some(first) = names.insert(k8s.clone(), provider.name.clone()) {
                return Err(if first == provider.name {
                    ProvidersError::Duplicate(first)
                } else {
                    ProvidersError::NameClash {
                        first,
                        second: provider.name.clone(),
                        name: k8s,
                    }
                });
            }
        }
        Ok(parsed)
    }
}

impl MeshProvider {
    fn check(&self) -> Result<(), ProvidersError> {
        let invalid = |field, reason| ProvidersError::Invalid {
            provider: self.name.clone(),
            field,
            reason,
        };
        if self.name.is_empty() || k8s_name(&self.name).len() > 40 {
            return Err(invalid(
                "name",
                "must be 1 to 40 letters, digits, '-', '_', '.'",
            ));
        }
        let labels_ok = self.host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !labels_ok || !self.host.contains('.') || self.host.len() > 253 {
            return Err(invalid("host", "must be a DNS name such as api.openai.com"));
        }
        if self.host.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("host", "must be lower case"));
        }
        if self.port == 0 {
            return Err(invalid("port", "must be 1 to 65535"));
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !token(&self.credential.header) {
            return Err(invalid(
                "credential.header",
                "must be a lower-case header name (letters, digits, '-')",
            ));
        }
        if self.credential.header.starts_with("x-maas-") {
            return Err(invalid(
                "credential.header",
                "must not be one of the filter's x-maas-* headers",
            ));
        }
        if self
            .credential
            .prefix
            .as_deref()
            .is_some_and(|p| p.chars().any(|c| c.is_control()))
        {
            return Err(invalid(
                "credential.prefix",
                "must not hold control characters",
            ));
        }
        let dns_label =
            |s: &str| token(s) && s.len() <= 253 && !s.starts_with('-') && !s.ends_with('-');
        if !dns_label(&self.credential.secret) {
            return Err(invalid(
                "credential.secret",
                "must be a Kubernetes Secret name (lower case, digits, '-')",
            ));
        }
        let key_ok = !self.credential.key.is_empty()
            && self
                .credential
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !key_ok {
            return Err(invalid(
                "credential.key",
                "must be a Secret data key (letters, digits, '-', '_', '.')",
            ));
        }
        if self.ca_secret.as_deref().is_some_and(|s| !dns_label(s)) {
            return Err(invalid(
                "ca_secret",
                "must be a Kubernetes Secret name (lower case, digits, '-')",
            ));
        }
        Ok(())
    }

    /// `maas-provider-<name>`: its ServiceEntry, DestinationRule and volume.
    fn resource_name(&self) -> String {
        format!("maas-provider-{}", k8s_name(&self.name))
    }

    /// The SDS resource's name, as testkit names it locally.
    fn secret_name(&self) -> String {
        format!(
            "provider_{}_credential",
            k8s_name(&self.name).replace('-', "_")
        )
    }

    fn sds_file(&self) -> String {
        format!("{}.yaml", k8s_name(&self.name))
    }

    fn credential_path(&self) -> String {
        format!("{SECRET_DIR}/{}/{CREDENTIAL_FILE}", k8s_name(&self.name))
    }
}

/// A provider name as a Kubernetes name part: lower case, `-` for anything
/// else than letters and digits.
fn k8s_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The providers and external models of a filter configuration, read
/// after the filter's own parser has accepted it.
struct FilterProviders {
    /// Provider name → the external model ids it serves, in order.
    providers: BTreeMap<String, Vec<String>>,
    /// The configuration as the filter reads it.
    config: Config,
}

impl FilterProviders {
    fn read(filter_config: &[u8]) -> Result<FilterProviders, ProvidersError> {
        let parsed = Config::from_json(filter_config)?;
        let value: Value = serde_json::from_slice(filter_config)
            .map_err(|e| ProvidersError::ConfigShape(e.to_string()))?;
        let mut providers: BTreeMap<String, Vec<String>> = value
            .get("providers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("name").and_then(Value::as_str))
            .map(|name| (name.to_string(), Vec::new()))
            .collect();
        for (id, model) in &parsed.external {
            providers
                .entry(model.provider.clone())
                .or_default()
                .push(id.clone());
        }
        Ok(FilterProviders {
            providers,
            config: parsed,
        })
    }
}

/// Everything the mesh needs for the providers of `filter_config`, as
/// described by `mesh`, in the gateway's namespace: refused unless both
/// name the same providers. `template`: the local bootstrap, whose wasm
/// filter settings the backend role takes (as the gateway role does).
pub fn render(
    template: &str,
    filter_config: &[u8],
    mesh: &MeshProviders,
    settings: &MeshSettings,
) -> Result<Vec<Value>, ProvidersError> {
    backend::check_module(&settings.wasm)?;
    let template = template_settings(template)?;
    let filter = FilterProviders::read(filter_config)?;
    if filter.providers.is_empty() {
        return Err(ProvidersError::NoProviders);
    }
    let described: BTreeSet<&str> = mesh.providers.iter().map(|p| p.name.as_str()).collect();
    if let Some((provider, models)) = filter
        .providers
        .iter()
        .find(|(name, _)| !described.contains(name.as_str()))
    {
        return Err(ProvidersError::MissingInMesh {
            provider: provider.clone(),
            models: models.clone(),
        });
    }
    if let Some(extra) = mesh
        .providers
        .iter()
        .find(|p| !filter.providers.contains_key(&p.name))
    {
        return Err(ProvidersError::NotInFilterConfig(extra.name.clone()));
    }
    let routed = routed_models(&filter, mesh);
    if !(1..=MAX_ROUTE_RULES).contains(&routed.len()) {
        return Err(ProvidersError::RouteRules(routed.len()));
    }
    let by_name: BTreeMap<&str, &MeshProvider> = mesh
        .providers
        .iter()
        .map(|p| (p.name.as_str(), p))
        .collect();
    let chains = failover::chains(&filter.config, &routed, &by_name, settings)?;
    let mut docs = Vec::new();
    for provider in &mesh.providers {
        docs.push(service_entry(provider, settings));
        docs.push(destination_rule(provider, settings));
    }
    docs.push(route(&routed, settings));
    docs.push(injector_envoy_filter(
        &filter.config,
        mesh,
        &template.wasm,
        settings,
    ));
    docs.extend(failover::failover_envoy_filter(&chains, settings));
    docs.push(sds_config_map(mesh, settings));
    docs.push(gateway_parameters(mesh, settings)?);
    Ok(docs)
}

/// Every external model with its provider, in the order of the
/// `maas-providers` rules (rule *i* is Istio's route `<ns>.maas-providers.<i>`).
fn routed_models<'a>(
    filter: &'a FilterProviders,
    mesh: &'a MeshProviders,
) -> Vec<(&'a str, &'a MeshProvider)> {
    mesh.providers
        .iter()
        .flat_map(|provider| {
            filter
                .providers
                .get(&provider.name)
                .into_iter()
                .flatten()
                .map(move |model| (model.as_str(), provider))
        })
        .collect()
}

/// The external host, visible only in the gateway's namespace.
fn service_entry(provider: &MeshProvider, settings: &MeshSettings) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": metadata(&provider.resource_name(), settings),
        "spec": {
            "hosts": [provider.host],
            "location": "MESH_EXTERNAL",
            "resolution": "DNS",
            "exportTo": ["."],
            "ports": [{
                "number": ORIGINATION_PORT,
                "name": if provider.http2 { "http2-origination" } else { "http-origination" },
                "protocol": if provider.http2 { "HTTP2" } else { "HTTP" },
                "targetPort": provider.port,
            }],
        }
    })
}

/// TLS origination to the provider: SNI and SAN are its host, the CA the
/// system's or the given Secret's.
fn destination_rule(provider: &MeshProvider, settings: &MeshSettings) -> Value {
    let mut tls = json!({
        "mode": "SIMPLE",
        "sni": provider.host,
        "subjectAltNames": [provider.host],
    });
    match &provider.ca_secret {
        Some(secret) => tls["credentialName"] = json!(secret),
        None => tls["caCertificates"] = json!(SYSTEM_CA_FILE),
    }
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": metadata(&provider.resource_name(), settings),
        "spec": {
            "host": provider.host,
            "exportTo": ["."],
            "trafficPolicy": {
                "portLevelSettings": [{
                    "port": { "number": ORIGINATION_PORT },
                    "tls": tls,
                }]
            }
        }
    })
}

/// One rule per external model, in the shape of `maas-models`' rules.
/// The `Host` rewrite is the first backend's; a model with fallbacks has
/// its route patched to take each attempt's ([`failover`]).
fn route(routed: &[(&str, &MeshProvider)], settings: &MeshSettings) -> Value {
    let rules: Vec<Value> = routed
        .iter()
        .map(|(model, provider)| {
            json!({
                "matches": [{
                    "path": { "type": "PathPrefix", "value": "/v1/" },
                    "headers": [{ "name": MODEL_HEADER, "value": model }],
                }],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": { "remove": REMOVED_HEADERS },
                    },
                    {
                        "type": "URLRewrite",
                        "urlRewrite": { "hostname": provider.host },
                    },
                ],
                "backendRefs": [{
                    "group": "networking.istio.io",
                    "kind": "Hostname",
                    "name": provider.host,
                    "port": ORIGINATION_PORT,
                }],
            })
        })
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(PROVIDERS_ROUTE, settings),
        "spec": {
            "parentRefs": [{ "name": settings.gateway }],
            "rules": rules,
        },
    })
}

/// The backend role then Envoy's credential injector as upstream filters of
/// each provider's cluster (`outbound|80||<host>`), the key read through
/// file SDS. `wasm`: the template's wasm filter `config`.
fn injector_envoy_filter(
    config: &Config,
    mesh: &MeshProviders,
    wasm: &Value,
    settings: &MeshSettings,
) -> Value {
    let patches: Vec<Value> = mesh
        .providers
        .iter()
        .map(|provider| {
            let mut generic = json!({
                "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                "header": provider.credential.header,
                "credential": {
                    "name": provider.secret_name(),
                    "sds_config": {
                        "path_config_source": {
                            "path": format!("{SDS_DIR}/{}", provider.sds_file()),
                            // A ConfigMap update is a rename of this directory's
                            // `..data`: Envoy reloads the SDS file on it.
                            "watched_directory": { "path": SDS_DIR },
                        },
                        "resource_api_version": "V3",
                    },
                },
            });
            if let Some(prefix) = &provider.credential.prefix {
                generic["header_value_prefix"] = json!(prefix);
            }
            let protocol = if provider.http2 {
                json!({ "http2_protocol_options": {} })
            } else {
                json!({ "http_protocol_options": {} })
            };
            let injector = json!({
                "name": "envoy.filters.http.credential_injector",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
                    // Replace whatever a client sent in this header.
                    "overwrite": true,
                    "credential": {
                        "name": "envoy.http.injected_credentials.generic",
                        "typed_config": generic,
                    },
                },
            });
            let codec = json!({
                "name": "envoy.filters.http.upstream_codec",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
                },
            });
            // Upstream filters run once the cluster is chosen, after the
            // gateway role; the backend role runs before the injector, so
            // neither role ever sees the key.
            let filters: Vec<Value> =
                backend::backend_filter(config, &provider.name, wasm, &settings.wasm)
                    .into_iter()
                    .chain([injector, codec])
                    .collect();
            json!({
                "applyTo": "CLUSTER",
                "match": {
                    "context": "GATEWAY",
                    "cluster": { "service": provider.host, "portNumber": ORIGINATION_PORT },
                },
                "patch": {
                    "operation": "MERGE",
                    "value": { "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": protocol,
                            "http_filters": filters,
                        }
                    } },
                },
            })
        })
        .collect();
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata(INJECTOR_ENVOY_FILTER, settings),
        "spec": { "targetRefs": gateway_target(settings), "configPatches": patches },
    })
}

/// The SDS files: each names its provider's credential file, nothing else.
fn sds_config_map(mesh: &MeshProviders, settings: &MeshSettings) -> Value {
    let data: serde_json::Map<String, Value> = mesh
        .providers
        .iter()
        .map(|provider| {
            let sds = credential_sds(&provider.secret_name(), &provider.credential_path());
            (provider.sds_file(), json!(sds))
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(SDS_CONFIG_MAP, settings),
        "data": data,
    })
}

/// The gateway Deployment's overlay (Istio merges a `parametersRef`
/// ConfigMap's `deployment` into what it generates): the SDS files and each
/// provider's Secret, mounted read-only into `istio-proxy`. The Secret's one
/// key becomes the file `credential`; kubelet replaces it by a rename, which
/// Envoy's SDS watches, so a rotated key is picked up without a restart.
fn gateway_parameters(
    mesh: &MeshProviders,
    settings: &MeshSettings,
) -> Result<Value, ProvidersError> {
    let mut volumes = vec![json!({
        "name": SDS_CONFIG_MAP,
        "configMap": { "name": SDS_CONFIG_MAP },
    })];
    let mut mounts = vec![json!({
        "name": SDS_CONFIG_MAP,
        "mountPath": SDS_DIR,
        "readOnly": true,
    })];
    for provider in &mesh.providers {
        volumes.push(json!({
            "name": provider.resource_name(),
            "secret": {
                "secretName": provider.credential.secret,
                "items": [{ "key": provider.credential.key, "path": CREDENTIAL_FILE }],
            },
        }));
        mounts.push(json!({
            "name": provider.resource_name(),
            "mountPath": format!("{SECRET_DIR}/{}", k8s_name(&provider.name)),
            "readOnly": true,
        }));
    }
    let overlay = json!({ "spec": { "template": { "spec": {
        "volumes": volumes,
        "containers": [{ "name": "istio-proxy", "volumeMounts": mounts }],
    } } } });
    let deployment = serde_yaml_ng::to_string(&sorted_keys(&overlay))
        .map_err(|e| ProvidersError::Yaml(e.to_string()))?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(GATEWAY_PARAMETERS, settings),
        "data": { "deployment": deployment },
    }))
}

/// `value` as YAML with every mapping's keys sorted. The overlay is text
/// inside a ConfigMap, so its key order is part of the rendering; a
/// `serde_json::Value` keeps insertion order when any crate of the build
/// turns on serde_json's `preserve_order` (feature unification does in a
/// workspace build) and sorted order otherwise, so the order is fixed here.
fn sorted_keys(value: &Value) -> serde_yaml_ng::Value {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            let mut mapping = serde_yaml_ng::Mapping::new();
            for key in keys {
                mapping.insert(key.as_str().into(), sorted_keys(&fields[key.as_str()]));
            }
            serde_yaml_ng::Value::Mapping(mapping)
        }
        Value::Array(items) => {
            serde_yaml_ng::Value::Sequence(items.iter().map(sorted_keys).collect())
        }
        Value::String(text) => text.as_str().into(),
        Value::Bool(flag) => (*flag).into(),
        Value::Number(number) => {
            serde_yaml_ng::to_value(number).unwrap_or(serde_yaml_ng::Value::Null)
        }
        Value::Null => serde_yaml_ng::Value::Null,
    }
}

/// The merge patch that makes the Gateway use [`GATEWAY_PARAMETERS`]
/// (`kubectl patch gateway … --type merge -p …`).
pub fn gateway_patch() -> Value {
    json!({ "spec": { "infrastructure": { "parametersRef": {
        "group": "", "kind": "ConfigMap", "name": GATEWAY_PARAMETERS,
    } } } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str) -> serde_json::Value {
        json!({
            "name": name, "host": "api.example.com",
            "credential": { "header": "authorization", "prefix": "Bearer ", "secret": "openai-key" }
        })
    }

    fn parse(providers: Vec<Value>) -> Result<MeshProviders, String> {
        MeshProviders::parse(json!({ "providers": providers }).to_string().as_bytes())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn providers_files_are_checked_field_by_field() {
        let ok = parse(vec![provider("openai")]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.providers[0].port, 443);
        assert_eq!(ok.providers[0].credential.key, "api-key");
        type Break = (&'static str, fn(&mut Value));
        let cases: [Break; 7] = [
            ("`host`", |p| p["host"] = json!("api.example.com/v1")),
            ("`host` must be lower case", |p| {
                p["host"] = json!("API.example.com")
            }),
            ("`port`", |p| p["port"] = json!(0)),
            ("`credential.header`", |p| {
                p["credential"]["header"] = json!("Api Key")
            }),
            ("`credential.secret`", |p| {
                p["credential"]["secret"] = json!("Openai_Key")
            }),
            ("`ca_secret`", |p| p["ca_secret"] = json!("")),
            ("unknown field `value`", |p| {
                p["credential"]["value"] = json!("sk-live-123")
            }),
        ];
        for (want, breakage) in cases {
            let mut p = provider("openai");
            breakage(&mut p);
            let err = parse(vec![p]).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
            assert!(
                !err.contains("sk-live-123"),
                "the error echoes a secret: {err}"
            );
        }
        let err = parse(vec![provider("openai"), provider("openai")]).unwrap_err();
        assert!(err.contains("\"openai\" is described twice"), "{err}");
        let err = parse(vec![provider("Open.AI"), provider("open_ai")]).unwrap_err();
        assert!(err.contains("both become \"open-ai\""), "{err}");
    }
}
