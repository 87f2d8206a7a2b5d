//! Renders `envoy/gateway.template.yaml` into a bootstrap Envoy can load.
//!
//! The template is the single source of the gateway's Envoy configuration:
//! `make run`, the integration tests and the benchmarks all go through
//! [`render_gateway`], so what runs is what is tested.
//!
//! Invariants of the output: every `{{NAME}}` outside comment lines is
//! replaced or rendering fails naming it; strings (paths, the filter
//! configuration, model names) are written as JSON string literals, which are
//! valid YAML double-quoted scalars, so no value can break the YAML structure;
//! each local model gets one route and one cluster, each external provider
//! ([`provider`]) one cluster and one route per model it serves, and every
//! cluster name is unique and made of `[a-z0-9_-]` only; a model id is routed
//! to exactly one place (listed twice, or both local and a provider's, is a
//! [`RenderError`]).

mod failover;
mod provider;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use maas_filter::backend::BackendConfig;
use maas_filter::config::Config;
use serde_json::Value;

pub use provider::{
    credential_sds_path, write_credential_sds, CredentialSpec, ProviderSpec, SYSTEM_TRUST_STORE,
};

/// Everything the template leaves open.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// Listener port; 0 lets the kernel pick (tests read it back from the admin API).
    pub listen_port: u16,
    /// Admin port; 0 as above.
    pub admin_port: u16,
    pub wasm_path: PathBuf,
    /// The filter's configuration, handed to it as a JSON string.
    pub filter_config: Value,
    pub access_log_path: PathBuf,
    /// Model name as the filter writes it into `x-maas-model`, and its upstream.
    pub models: Vec<(String, SocketAddr)>,
    /// Models served by external providers over TLS, with our credential.
    pub providers: Vec<ProviderSpec>,
    /// Where [`write_credential_sds`] wrote the providers' credential SDS
    /// files, which the bootstrap points Envoy at; needed only with providers.
    pub credential_sds_dir: Option<PathBuf>,
    /// The control plane (`None`: the discard port; see the template).
    pub control_plane: Option<SocketAddr>,
    /// The rate limiter for global limits (cluster `limitador`).
    pub limiter: Option<SocketAddr>,
    /// Verify OIDC bearer tokens on model traffic.
    pub oidc: Option<OidcSpec>,
}

/// An OIDC issuer whose tokens Envoy's `jwt_authn` verifies.
#[derive(Debug, Clone)]
pub struct OidcSpec {
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must carry: a token the issuer minted for another
    /// application is not accepted here.
    pub audience: String,
    /// The issuer's JWKS document (JSON text).
    pub jwks: String,
}

/// Where `/maas-api/*` goes when there is no control plane: nothing listens
/// on the discard port, so it answers 503.
const NO_CONTROL_PLANE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9,
));

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("placeholder {{{{{name}}}}} on template line {line} has no value")]
    Unfilled { name: String, line: usize },
    #[error("{placeholder} {path:?} is not valid UTF-8")]
    NonUtf8Path {
        placeholder: &'static str,
        path: PathBuf,
    },
    #[error("model {0:?} is listed twice; its second route could never match")]
    DuplicateModel(String),
    #[error("a model name is empty")]
    EmptyModelName,
    #[error("model {model:?} is both a local model and provider {provider:?}'s")]
    ModelClash { model: String, provider: String },
    #[error("provider {provider:?} would share cluster {cluster} with another provider")]
    DuplicateProvider { provider: String, cluster: String },
    #[error("provider {provider:?}: {field} is empty")]
    InvalidProvider {
        provider: String,
        field: &'static str,
    },
    #[error("providers need a directory for their credential SDS files (credential_sds_dir)")]
    NoCredentialSdsDir,
    #[error("the filter configuration, read for the providers' backend roles: {0}")]
    FilterConfig(String),
    #[error("model {model:?}: fallback provider {provider:?} has no ProviderSpec")]
    UnknownFallback { model: String, provider: String },
    #[error("model {0:?} has fallbacks but is neither a local model nor a ProviderSpec's")]
    UnroutedChain(String),
}

/// What the providers' clusters and the failover routes take from the
/// filter's own configuration, so Envoy's side cannot disagree with it.
struct Backends {
    /// Each provider's backend document, by provider name.
    documents: BTreeMap<String, Value>,
    chains: Vec<failover::Chain>,
}

impl Backends {
    fn of(spec: &GatewaySpec) -> Result<Backends, RenderError> {
        let none = Backends {
            documents: BTreeMap::new(),
            chains: Vec::new(),
        };
        // Without providers nothing needs the filter's view (and tests of
        // refused configurations render those too).
        if spec.providers.is_empty() {
            return Ok(none);
        }
        let config = Config::from_json(spec.filter_config.to_string().as_bytes())
            .map_err(|e| RenderError::FilterConfig(e.to_string()))?;
        let documents = spec
            .providers
            .iter()
            .filter_map(|p| {
                BackendConfig::document_for(&config, &p.name).map(|doc| (p.name.clone(), doc))
            })
            .collect();
        let mut chains = Vec::new();
        for (model, fallbacks) in &config.fallbacks {
            let first = match spec.models.iter().position(|(m, _)| m == model) {
                Some(index) => cluster_name(model, index),
                None => spec
                    .providers
                    .iter()
                    .find(|p| p.models.contains(model))
                    .map(|p| provider::cluster_name(&p.name))
                    .ok_or_else(|| RenderError::UnroutedChain(model.clone()))?,
            };
            let mut clusters = vec![first];
            for fallback in fallbacks {
                if !spec.providers.iter().any(|p| p.name == fallback.provider) {
                    return Err(RenderError::UnknownFallback {
                        model: model.clone(),
                        provider: fallback.provider.clone(),
                    });
                }
                clusters.push(provider::cluster_name(&fallback.provider));
            }
            chains.push(failover::Chain {
                model: model.clone(),
                clusters,
            });
        }
        Ok(Backends { documents, chains })
    }
}

/// Indentation of the generated blocks, matching where the template places
/// them: route entries under `routes:`, clusters under `clusters:`.
const ROUTE_INDENT: &str = "              ";
const CLUSTER_INDENT: &str = "  ";

/// Streamed completions outlive Envoy's 15 s default route timeout (which
/// bounds the whole response, a stream's too).
const ROUTE_TIMEOUT: Duration = Duration::from_secs(600);

/// A route's `timeout` and `idle_timeout` entries for `timeout`, the idle
/// timeout a second past it: Envoy's 5-minute default stream idle timeout
/// would cut a whole answer still being generated, or a stream that stays
/// silent (a long prefill, hidden reasoning), before the route's own
/// timeout; a second past it, the route's own 504 is what a slow answer
/// gets, and a client that stalls its body is still cut.
fn route_timeouts(timeout: Duration) -> [(&'static str, String); 2] {
    let envoy = |t: Duration| match t.subsec_millis() {
        0 => format!("{}s", t.as_secs()),
        ms => format!("{}.{ms:03}s", t.as_secs()),
    };
    [
        ("timeout", envoy(timeout)),
        (
            "idle_timeout",
            envoy(timeout.saturating_add(Duration::from_secs(1))),
        ),
    ]
}

/// [`route_timeouts`] as entries of a YAML flow mapping.
fn route_timeouts_inline(timeout: Duration) -> String {
    route_timeouts(timeout)
        .map(|(key, value)| format!("{key}: {value}"))
        .join(", ")
}

/// The longest `route_timeouts_ms` entry the filter takes.
const MAX_ROUTE_TIMEOUT_MS: u64 = 86_400_000;

/// Keeps cluster (and so stat) names readable when a model name is long.
const CLUSTER_NAME_MODEL_CHARS: usize = 48;

/// The filter configuration with `route_timeouts_ms`: each model's route
/// timeout in this bootstrap (a provider's own `timeout`, else the
/// gateway's, which a model with fallbacks always has), so the deadline a
/// global hold sets (which replaces the route's timeout) never lengthens
/// it. Only for models the configuration names; one it already gives keeps
/// the shorter; at most a day, as the filter takes (no hold is longer); a
/// configuration that is no object is left as it is.
fn with_route_timeouts(spec: &GatewaySpec, chains: &[failover::Chain]) -> Value {
    let chained: HashSet<&str> = chains.iter().map(|c| c.model.as_str()).collect();
    let mut config = spec.filter_config.clone();
    let named: HashSet<String> = config["models"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            config["external_models"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| &m["id"]),
        )
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect();
    let Some(object) = config.as_object_mut() else {
        return config;
    };
    let mut timeouts = object
        .get("route_timeouts_ms")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    // As the routes are rendered: a chained model's failover route has the
    // gateway's timeout, a provider's own route the provider's.
    let local = spec.models.iter().map(|(model, _)| (model, ROUTE_TIMEOUT));
    let chained = &chained;
    let external = spec.providers.iter().flat_map(|provider| {
        provider.models.iter().map(move |model| {
            let timeout = if chained.contains(model.as_str()) {
                ROUTE_TIMEOUT
            } else {
                provider.route_timeout()
            };
            (model, timeout)
        })
    });
    for (model, timeout) in local.chain(external) {
        if !named.contains(model) {
            continue;
        }
        let bootstrap = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .min(MAX_ROUTE_TIMEOUT_MS);
        let shorter = timeouts
            .get(model)
            .and_then(Value::as_u64)
            .map_or(bootstrap, |given| given.min(bootstrap));
        timeouts.insert(model.clone(), shorter.into());
    }
    if !timeouts.is_empty() {
        object.insert("route_timeouts_ms".into(), Value::Object(timeouts));
    }
    config
}

/// Fills `template` from `spec`. Lines whose first non-blank character is `#`
/// are comments and copied as they are, placeholders included.
pub fn render_gateway(template: &str, spec: &GatewaySpec) -> Result<String, RenderError> {
    check_model_ids(&spec.models, &spec.providers)?;
    let backends = Backends::of(spec)?;
    let wasm_path = path_literal("WASM_PATH", &spec.wasm_path)?;
    let control_plane = spec.control_plane.unwrap_or(NO_CONTROL_PLANE);
    let values = [
        ("LISTEN_PORT", spec.listen_port.to_string()),
        ("ADMIN_PORT", spec.admin_port.to_string()),
        ("WASM_PATH", wasm_path.clone()),
        // The filter reads a string: encode the configuration as JSON text,
        // then that text as a string literal.
        (
            "FILTER_CONFIG",
            string_literal(&with_route_timeouts(spec, &backends.chains).to_string()),
        ),
        (
            "ACCESS_LOG_PATH",
            path_literal("ACCESS_LOG_PATH", &spec.access_log_path)?,
        ),
        (
            "CONTROL_PLANE_ADDRESS",
            string_literal(&control_plane.ip().to_string()),
        ),
        ("CONTROL_PLANE_PORT", control_plane.port().to_string()),
        ("OIDC_FILTER", oidc_filter(spec.oidc.as_ref())),
        ("LIMITER_CLUSTER", limiter_cluster(spec.limiter)),
        (
            "MODEL_ROUTES",
            model_routes(&spec.models, &spec.providers, &backends.chains),
        ),
        (
            "MODEL_CLUSTERS",
            model_clusters(spec, &wasm_path, &backends.documents)?,
        ),
    ];
    let lookup = |name: &str| {
        values
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    };

    let mut out = String::with_capacity(template.len() + 1024);
    for (index, line) in template.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        // A line that is only a placeholder with nothing to put there
        // (OIDC_FILTER without an issuer) disappears rather than leave a gap.
        let whole = line.trim();
        if let Some(name) = whole.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
            if lookup(name) == Some("") {
                continue;
            }
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find("}}").map(|end| &after[..end]) {
                Some(name) if is_placeholder_name(name) => {
                    let value = lookup(name).ok_or_else(|| RenderError::Unfilled {
                        name: name.to_owned(),
                        line: index + 1,
                    })?;
                    out.push_str(value);
                    rest = &after[name.len() + 2..];
                }
                // Not a placeholder (`{{` in some literal): keep it.
                _ => {
                    out.push_str("{{");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// The cluster the filter's `limiter.cluster` names, speaking gRPC (HTTP/2)
/// to the limiter.
pub const LIMITER_CLUSTER: &str = "limitador";

fn limiter_cluster(limiter: Option<SocketAddr>) -> String {
    let Some(addr) = limiter else {
        return String::new();
    };
    format!(
        "  - name: {LIMITER_CLUSTER}\n    type: STATIC\n    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {{}}\n    load_assignment:\n      cluster_name: {LIMITER_CLUSTER}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n",
        string_literal(&addr.ip().to_string()),
        addr.port()
    )
}

fn is_placeholder_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

/// `text` as a JSON string literal: also a valid YAML double-quoted scalar.
pub(crate) fn string_literal(text: &str) -> String {
    Value::from(text).to_string()
}

fn path_literal(placeholder: &'static str, path: &Path) -> Result<String, RenderError> {
    path.to_str()
        .map(string_literal)
        .ok_or_else(|| RenderError::NonUtf8Path {
            placeholder,
            path: path.to_owned(),
        })
}

/// `name` lowercased, cut to [`CLUSTER_NAME_MODEL_CHARS`] and reduced to
/// `[a-z0-9_-]`, for cluster (and so stat) names.
fn safe_name(name: &str) -> String {
    name.chars()
        .take(CLUSTER_NAME_MODEL_CHARS)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '_',
        })
        .collect()
}

/// `model_<name reduced to [a-z0-9_-]>_<index>`: the index keeps names that
/// reduce alike (`A.b` and `a_b`) apart.
pub fn cluster_name(model: &str, index: usize) -> String {
    format!("model_{}_{index}", safe_name(model))
}

/// Every model id, local or a provider's, is routed to one place: a second
/// route for the same id could never match, so it is refused instead.
fn check_model_ids(
    models: &[(String, SocketAddr)],
    providers: &[ProviderSpec],
) -> Result<(), RenderError> {
    provider::check(providers)?;
    let mut local = HashSet::new();
    for (model, _) in models {
        if model.is_empty() {
            return Err(RenderError::EmptyModelName);
        }
        if !local.insert(model.as_str()) {
            return Err(RenderError::DuplicateModel(model.clone()));
        }
    }
    let mut external = HashSet::new();
    for provider in providers {
        for model in &provider.models {
            if model.is_empty() {
                return Err(RenderError::EmptyModelName);
            }
            if local.contains(model.as_str()) {
                return Err(RenderError::ModelClash {
                    model: model.clone(),
                    provider: provider.name.clone(),
                });
            }
            if !external.insert(model.as_str()) {
                return Err(RenderError::DuplicateModel(model.clone()));
            }
        }
    }
    Ok(())
}

/// A route entry's first line: requests the filter tagged with `model`.
fn route_match(model: &str) -> String {
    format!(
        "{ROUTE_INDENT}- match: {{ prefix: \"/\", headers: [{{ name: x-maas-model, string_match: {{ exact: {} }} }}] }}",
        string_literal(model)
    )
}

/// Local models' routes, then the providers', then the failover routes of
/// models with fallbacks (which replace their plain route); ids are
/// checked already.
fn model_routes(
    models: &[(String, SocketAddr)],
    providers: &[ProviderSpec],
    chains: &[failover::Chain],
) -> String {
    let chained: HashSet<&str> = chains.iter().map(|c| c.model.as_str()).collect();
    let mut block = Vec::with_capacity(models.len() * 2);
    for (index, (model, _)) in models.iter().enumerate() {
        if chained.contains(model.as_str()) {
            continue;
        }
        block.push(route_match(model));
        block.push(format!(
            "{ROUTE_INDENT}  route: {{ cluster: {}, {} }}",
            cluster_name(model, index),
            route_timeouts_inline(ROUTE_TIMEOUT)
        ));
    }
    block.extend(provider::routes(providers, &chained));
    block.extend(failover::routes(chains));
    block.join("\n")
}

/// Indentation of entries under `http_filters:`.
const FILTER_INDENT: &str = "          ";

/// Envoy's `jwt_authn` for `spec`, or nothing. Tokens are optional here on
/// purpose (`allow_missing_or_failed`): a request without a valid token is
/// not refused by Envoy but reaches the filter with no claims, where it
/// needs an API key like any other; so a forged token gets the filter's
/// OpenAI-shaped 401, and API keys in `Authorization: Bearer` keep working.
/// Tokens are read from that header only: Envoy's default also takes an
/// `access_token` query parameter, and cannot take it off the path again,
/// so the token would go on to the model's servers and providers.
fn oidc_filter(spec: Option<&OidcSpec>) -> String {
    let Some(spec) = spec else {
        return String::new();
    };
    let i = FILTER_INDENT;
    format!(
        "{i}- name: envoy.filters.http.jwt_authn\n\
         {i}  typed_config:\n\
         {i}    \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication\n\
         {i}    providers:\n\
         {i}      oidc:\n\
         {i}        issuer: {}\n\
         {i}        audiences: [ {} ]\n\
         {i}        local_jwks: {{ inline_string: {} }}\n\
         {i}        from_headers: [ {{ name: Authorization, value_prefix: \"Bearer \" }} ]\n\
         {i}        forward: false\n\
         {i}        payload_in_metadata: jwt_payload\n\
         {i}    rules:\n\
         {i}    - match: {{ prefix: \"/v1/\" }}\n\
         {i}      requires:\n\
         {i}        requires_any:\n\
         {i}          requirements:\n\
         {i}          - provider_name: oidc\n\
         {i}          - allow_missing_or_failed: {{}}",
        string_literal(&spec.issuer),
        string_literal(&spec.audience),
        string_literal(&spec.jwks),
    )
}

fn model_clusters(
    spec: &GatewaySpec,
    wasm_path: &str,
    documents: &BTreeMap<String, Value>,
) -> Result<String, RenderError> {
    // The template's control-plane cluster keeps `clusters:` a list.
    let mut block = String::new();
    for (index, (model, upstream)) in spec.models.iter().enumerate() {
        let name = cluster_name(model, index);
        let i = CLUSTER_INDENT;
        let _ = write!(
            block,
            "{i}- name: {name}\n\
             {i}  type: STATIC\n\
             {i}  connect_timeout: 2s\n\
             {i}  load_assignment:\n\
             {i}    cluster_name: {name}\n\
             {i}    endpoints:\n\
             {i}    - lb_endpoints:\n\
             {i}      - endpoint:\n\
             {i}          address:\n\
             {i}            socket_address: {{ address: {}, port_value: {} }}\n",
            string_literal(&upstream.ip().to_string()),
            upstream.port(),
        );
    }
    provider::clusters(
        &spec.providers,
        spec.credential_sds_dir.as_deref(),
        wasm_path,
        documents,
        &mut block,
    )?;
    // The template supplies the line break after the placeholder.
    block.truncate(block.trim_end().len());
    Ok(block)
}

/// The repository root: `MAAS_ROOT` if set, else the parent of this crate.
pub fn workspace_root() -> PathBuf {
    if let Some(root) = std::env::var_os("MAAS_ROOT") {
        return PathBuf::from(root);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// The path of the gateway bootstrap template.
pub fn gateway_template_path() -> PathBuf {
    workspace_root().join("envoy/gateway.template.yaml")
}

/// The text of `envoy/gateway.template.yaml`; panics if it cannot be read.
pub fn gateway_template() -> String {
    let path = gateway_template_path();
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read the gateway template {path:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(models: &[(&str, &str)]) -> GatewaySpec {
        GatewaySpec {
            control_plane: None,
            limiter: None,
            oidc: None,
            listen_port: 0,
            admin_port: 9901,
            wasm_path: "/tmp/with space/maas_filter.wasm".into(),
            filter_config: json!({ "keys": [{ "key": "sk-\"quoted\"", "note": "{{NOT_A_PLACEHOLDER}}" }] }),
            access_log_path: "/tmp/x/access.log".into(),
            models: models
                .iter()
                .map(|(name, addr)| ((*name).to_owned(), addr.parse().expect("test address")))
                .collect(),
            providers: Vec::new(),
            credential_sds_dir: None,
        }
    }

    fn code_lines(rendered: &str) -> impl Iterator<Item = &str> {
        rendered
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
    }

    #[test]
    fn fills_every_placeholder_of_the_shipped_template() {
        let rendered = render_gateway(
            &gateway_template(),
            &spec(&[("m1", "127.0.0.1:8001"), ("m2", "127.0.0.1:8002")]),
        )
        .expect("renders");
        // The only `{{` left is inside the filter configuration string.
        for line in code_lines(&rendered) {
            assert!(
                !line.contains("{{") || line.contains("NOT_A_PLACEHOLDER"),
                "unfilled: {line}"
            );
            assert!(!line.contains('\t'), "tab in YAML: {line:?}");
        }
        assert!(rendered.contains("port_value: 9901 }"));
        assert!(rendered.contains("filename: \"/tmp/with space/maas_filter.wasm\""));
        assert!(rendered.contains("path: \"/tmp/x/access.log\""));
        assert!(rendered.contains(
            "\n              - match: { prefix: \"/\", headers: [{ name: x-maas-model, string_match: { exact: \"m2\" } }] }\n                route: { cluster: model_m2_1, timeout: 600s, idle_timeout: 601s }\n"
        ));
        assert!(rendered
            .contains("\n  - name: model_m1_0\n    type: STATIC\n    connect_timeout: 2s\n"));
        // No control plane: its route and cluster lead to the discard port.
        assert!(rendered.contains("socket_address: { address: \"127.0.0.1\", port_value: 9 }"));
        assert!(
            !code_lines(&rendered).any(|l| l.contains("jwt_authn")),
            "no issuer, no token check"
        );
        assert!(rendered.contains("socket_address: { address: \"127.0.0.1\", port_value: 8002 }"));
        assert!(rendered.ends_with('\n'));
    }

    #[test]
    fn filter_config_round_trips_through_the_string_literal() {
        let spec = spec(&[]);
        assert_eq!(rendered_filter_config(&spec), spec.filter_config);
    }

    /// The filter configuration `spec` renders, read back from its string
    /// literal.
    fn rendered_filter_config(spec: &GatewaySpec) -> Value {
        let rendered = render_gateway("value: {{FILTER_CONFIG}}\n", spec).expect("renders");
        let literal = rendered
            .strip_prefix("value: ")
            .and_then(|rest| rest.strip_suffix('\n'))
            .expect("one line");
        let text: String = serde_json::from_str(literal).expect("a JSON string literal");
        serde_json::from_str(&text).expect("config JSON")
    }

    /// Each route's idle timeout is a second past its timeout, in Envoy's
    /// duration syntax, for any timeout a provider may give.
    #[test]
    fn a_routes_idle_timeout_is_a_second_past_its_timeout() {
        let pair = |t: Duration| route_timeouts(t).map(|(_, v)| v);
        assert_eq!(pair(ROUTE_TIMEOUT), ["600s", "601s"]);
        assert_eq!(pair(Duration::from_millis(90_500)), ["90.500s", "91.500s"]);
        let longest = pair(Duration::MAX);
        assert_eq!(longest[0], longest[1], "saturates, never panics");
        assert_eq!(
            route_timeouts_inline(ROUTE_TIMEOUT),
            "timeout: 600s, idle_timeout: 601s"
        );
    }

    /// The filter learns each route's timeout, so the hold deadline of a
    /// global limit never lengthens it; models it does not name are left
    /// out (it would refuse them).
    #[test]
    fn the_filter_config_carries_each_routes_timeout() {
        let mut spec = spec(&[("m1", "127.0.0.1:8001"), ("unlisted", "127.0.0.1:8002")]);
        spec.filter_config = json!({"models": ["m1"]});
        assert_eq!(
            rendered_filter_config(&spec)["route_timeouts_ms"],
            json!({"m1": 600_000})
        );
        // A provider's own timeout (at most a day), and one the
        // configuration already gives, the shorter kept.
        let mut slow = provider::tests::provider("slow", &["p1", "p2"]);
        slow.timeout = Some(std::time::Duration::from_secs(100_000));
        spec.providers = vec![slow];
        spec.credential_sds_dir = Some("/tmp/sds".into());
        spec.filter_config = json!({
            "models": ["m1"],
            "providers": [{"name": "slow", "kind": "openai-compatible"}],
            "external_models": [
                {"id": "p1", "provider": "slow", "model": "x"},
                {"id": "p2", "provider": "slow", "model": "y"}
            ],
            "route_timeouts_ms": {"m1": 5_000, "p2": 86_400_000},
            "subscriptions": {}
        });
        assert_eq!(
            rendered_filter_config(&spec)["route_timeouts_ms"],
            json!({"m1": 5_000, "p1": 86_400_000, "p2": 86_400_000})
        );
    }

    #[test]
    fn odd_model_names_get_safe_unique_clusters() {
        let rendered = render_gateway(
            "routes:\n{{MODEL_ROUTES}}\nclusters:\n{{MODEL_CLUSTERS}}\n",
            &spec(&[
                ("Meta/Llama 3.1:8B \"q\"\n", "[::1]:9000"),
                ("meta_llama", "127.0.0.1:1"),
            ]),
        )
        .expect("renders");
        assert!(rendered.contains("exact: \"Meta/Llama 3.1:8B \\\"q\\\"\\n\""));
        assert!(rendered.contains("cluster: model_meta_llama_3_1_8b__q___0,"));
        assert!(rendered.contains("cluster: model_meta_llama_1,"));
        assert!(rendered.contains("address: \"::1\", port_value: 9000"));
        for (index, model) in ["x", "A.b", "ünïcode", "..", &"long".repeat(40)]
            .iter()
            .enumerate()
        {
            let name = cluster_name(model, index);
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'_'
                    || b == b'-'),
                "{name}"
            );
            assert!(
                name.len() <= "model__".len() + CLUSTER_NAME_MODEL_CHARS + 2,
                "{name}"
            );
        }
    }

    #[test]
    fn no_models_render_no_model_clusters() {
        let rendered =
            render_gateway("  clusters:\n{{MODEL_CLUSTERS}}\n", &spec(&[])).expect("renders");
        assert_eq!(rendered, "  clusters:\n");
    }

    #[test]
    fn unknown_placeholders_are_named() {
        let error = render_gateway("a: 1\nb: {{LISTEN_PORT}} {{NOPE}}\n", &spec(&[]))
            .expect_err("unfilled");
        assert_eq!(
            error,
            RenderError::Unfilled {
                name: "NOPE".into(),
                line: 2
            }
        );
        assert_eq!(
            error.to_string(),
            "placeholder {{NOPE}} on template line 2 has no value"
        );
    }

    #[test]
    fn comments_and_non_placeholders_are_kept() {
        let template = "# see {{NAME}}\nx: '{{ not one }}' {{}}\n";
        assert_eq!(
            render_gateway(template, &spec(&[])).expect("renders"),
            template
        );
    }

    /// A spec whose filter configuration names the providers (each
    /// OpenAI-compatible) and their models (each id once, under its own
    /// name), as a valid one must for the backend roles to be rendered.
    fn with_providers(models: &[(&str, &str)], providers: Vec<ProviderSpec>) -> GatewaySpec {
        let mut seen = HashSet::new();
        let external: Vec<Value> = providers
            .iter()
            .flat_map(|p| p.models.iter().map(move |m| (p, m)))
            .filter(|(_, m)| !m.is_empty() && seen.insert(m.as_str()))
            .map(
                |(p, m)| serde_json::json!({"id": m, "provider": p.name, "model": "upstream-name"}),
            )
            .collect();
        let names: HashSet<&str> = providers.iter().map(|p| p.name.as_str()).collect();
        let filter_config = serde_json::json!({
            "models": models.iter().map(|(m, _)| m).collect::<Vec<_>>(),
            "providers": names.iter().map(|n| serde_json::json!({"name": n, "kind": "openai-compatible"})).collect::<Vec<_>>(),
            "external_models": external,
            "subscriptions": {},
        });
        GatewaySpec {
            providers,
            credential_sds_dir: Some("/run/maas sds".into()),
            filter_config,
            ..spec(models)
        }
    }

    #[test]
    fn a_provider_renders_its_routes_tls_cluster_and_credential_injector() {
        let mut openai = provider::tests::provider("OpenAI", &["gpt-4o", "o1"]);
        openai.credential.header = "authorization".into();
        openai.credential.value_prefix = Some("Bearer ".into());
        let mut azure = provider::tests::provider("azure", &["gpt-35"]);
        azure.address = "10.0.0.7".into();
        azure.host = "x.openai.azure.com".into();
        azure.ca_file = Some("/etc/maas/azure-ca.pem".into());
        azure.http2 = false;
        let rendered = render_gateway(
            &gateway_template(),
            &with_providers(&[("m1", "127.0.0.1:8001")], vec![openai, azure]),
        )
        .expect("renders");

        let route = |model: &str, cluster: &str| {
            format!(
                "\n              - match: {{ prefix: \"/\", headers: [{{ name: x-maas-model, string_match: {{ exact: \"{model}\" }} }}] }}\n                route: {{ cluster: {cluster}, timeout: 600s, idle_timeout: 601s, auto_host_rewrite: true }}\n                request_headers_to_remove: [x-maas-user, x-maas-key-id, x-maas-subscription, x-maas-model, authorization, x-api-key, api-key]\n"
            )
        };
        for (model, cluster) in [
            ("gpt-4o", "provider_openai"),
            ("o1", "provider_openai"),
            ("gpt-35", "provider_azure"),
        ] {
            assert!(
                rendered.contains(&route(model, cluster)),
                "{model}:\n{rendered}"
            );
        }
        // The local model keeps its route, before the providers'.
        assert!(
            rendered.contains("route: { cluster: model_m1_0, timeout: 600s, idle_timeout: 601s }")
        );

        let cluster = |name: &str| {
            let start = rendered
                .find(&format!("\n  - name: {name}\n"))
                .unwrap_or_else(|| panic!("no cluster {name}:\n{rendered}"));
            let rest = &rendered[start + 1..];
            let end = rest[1..]
                .find("\n  - name: ")
                .map_or(rest.len(), |end| end + 1);
            rest[..end].to_owned()
        };
        let openai = cluster("provider_openai");
        for expected in [
            "    type: STRICT_DNS\n    dns_lookup_family: V4_PREFERRED\n",
            "socket_address: { address: \"api.provider.test\", port_value: 443 }",
            "name: envoy.transport_sockets.tls",
            "sni: \"api.provider.test\"",
            "trusted_ca: { filename: \"/etc/ssl/certs/ca-certificates.crt\" }",
            "- san_type: DNS\n              matcher: { exact: \"api.provider.test\" }",
            "http2_protocol_options: {}",
            "overwrite: true",
            "name: envoy.http.injected_credentials.generic",
            "header: \"authorization\"\n                header_value_prefix: \"Bearer \"\n",
            "name: \"provider_openai_credential\"",
            "path_config_source: { path: \"/run/maas sds/provider_openai_credential.sds.yaml\" }",
            // The `Host` the route rewrites to.
            "hostname: \"api.provider.test\"",
            // The backend role, with this provider's document.
            "vm_id: maas-backend",
            "filename: \"/tmp/with space/maas_filter.wasm\"",
        ] {
            assert!(openai.contains(expected), "{expected}:\n{openai}");
        }
        // The backend role's document (compared as JSON: its key order
        // follows serde_json's features, which the workspace unifies).
        let document = openai
            .lines()
            .find_map(|l| l.trim().strip_prefix("value: "))
            .and_then(|literal| serde_json::from_str::<String>(literal).ok())
            .and_then(|text| serde_json::from_str::<Value>(&text).ok());
        assert_eq!(
            document,
            Some(
                serde_json::json!({"backend": {"provider": "OpenAI", "kind": "openai-compatible",
                "models": {"gpt-4o": "upstream-name", "o1": "upstream-name"}}})
            ),
            "{openai}"
        );
        // The backend role makes the request final, then the injector sets
        // the key, and the codec is last.
        let backend = openai.find("- name: envoy.filters.http.wasm");
        let injector = openai.find("- name: envoy.filters.http.credential_injector");
        let codec = openai.find("- name: envoy.filters.http.upstream_codec");
        assert!(
            backend.is_some() && backend < injector && injector < codec,
            "{openai}"
        );

        let azure = cluster("provider_azure");
        for expected in [
            "    type: STATIC\n",
            "socket_address: { address: \"10.0.0.7\", port_value: 443 }",
            "sni: \"x.openai.azure.com\"",
            "trusted_ca: { filename: \"/etc/maas/azure-ca.pem\" }",
            "matcher: { exact: \"x.openai.azure.com\" }",
            "http_protocol_options: {}",
            "header: \"api-key\"\n                credential:\n",
        ] {
            assert!(azure.contains(expected), "{expected}:\n{azure}");
        }
        // The renderer never reads the secret, nor names the secret file:
        // only the SDS file does.
        assert!(!rendered.contains("sk-do-not-print"));
        for line in code_lines(&rendered) {
            assert!(
                !line.contains("{{") || line.contains("NOT_A_PLACEHOLDER"),
                "unfilled: {line}"
            );
        }
    }

    #[test]
    fn a_model_id_is_routed_to_one_place_only() {
        let p = provider::tests::provider;
        let cases = [
            (
                with_providers(&[("m", "127.0.0.1:1")], vec![p("x", &["m"])]),
                RenderError::ModelClash {
                    model: "m".into(),
                    provider: "x".into(),
                },
            ),
            (
                with_providers(&[], vec![p("x", &["e"]), p("y", &["e"])]),
                RenderError::DuplicateModel("e".into()),
            ),
            (
                with_providers(&[], vec![p("x", &["e", "e"])]),
                RenderError::DuplicateModel("e".into()),
            ),
            (
                with_providers(&[], vec![p("x", &[""])]),
                RenderError::EmptyModelName,
            ),
            (
                with_providers(&[], vec![p("Open AI", &[]), p("open_ai", &[])]),
                RenderError::DuplicateProvider {
                    provider: "open_ai".into(),
                    cluster: "provider_open_ai".into(),
                },
            ),
            (
                GatewaySpec {
                    credential_sds_dir: None,
                    ..with_providers(&[], vec![p("x", &["e"])])
                },
                RenderError::NoCredentialSdsDir,
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(
                render_gateway(&gateway_template(), &spec).err(),
                Some(expected.clone()),
                "{expected}"
            );
        }
    }

    #[test]
    fn a_model_with_fallbacks_gets_one_route_that_picks_each_attempts_cluster() {
        let openai = provider::tests::provider("openai", &["gpt-4o"]);
        let anthropic = provider::tests::provider("anthropic", &[]);
        let mut spec = with_providers(&[("m1", "127.0.0.1:8001")], vec![openai, anthropic]);
        spec.filter_config["fallbacks"] = serde_json::json!({
            "m1": [{"provider": "openai", "model": "m1-remote"}],
            "gpt-4o": [{"provider": "anthropic", "model": "claude"}, ]
        });
        let rendered = render_gateway(&gateway_template(), &spec).expect("renders");
        let routes: Vec<&str> = rendered
            .split("\n              - match: ")
            .filter(|r| r.starts_with("{ prefix: \"/\", headers: [{ name: x-maas-model"))
            .collect();
        // One route per model id, the chained ones included.
        assert_eq!(routes.len(), 2, "{rendered}");
        let chain = |model: &str| {
            *routes
                .iter()
                .find(|r| r.contains(&format!("exact: \"{model}\"")))
                .unwrap_or_else(|| panic!("no route for {model}"))
        };
        let m1 = chain("m1");
        for expected in [
            "refresh_cluster_on_retry: true",
            "num_retries: 1",
            "retriable_status_codes: [429]",
            "header_name: x-envoy-attempt-count",
            "\"1\": { action: { name: \"provider_openai\"",
            "on_no_match: { action: { name: \"model_m1_0\"",
            "auto_host_rewrite: true",
        ] {
            assert!(m1.contains(expected), "{expected}:\n{m1}");
        }
        let gpt = chain("gpt-4o");
        assert!(
            gpt.contains("on_no_match: { action: { name: \"provider_openai\""),
            "{gpt}"
        );
        assert!(
            gpt.contains("\"1\": { action: { name: \"provider_anthropic\""),
            "{gpt}"
        );
        // The fallback provider's cluster has its backend role even though
        // no model is its own.
        assert!(
            rendered.contains(r#"\"provider\":\"anthropic\""#),
            "{rendered}"
        );

        spec.providers.pop();
        spec.filter_config["providers"] = serde_json::json!([
            {"name": "openai", "kind": "openai-compatible"},
            {"name": "anthropic", "kind": "anthropic"}
        ]);
        assert_eq!(
            render_gateway(&gateway_template(), &spec).err(),
            Some(RenderError::UnknownFallback {
                model: "gpt-4o".into(),
                provider: "anthropic".into()
            })
        );
        // The chained model's own backend must be routed too.
        spec.providers[0].models.clear();
        assert_eq!(
            render_gateway(&gateway_template(), &spec).err(),
            Some(RenderError::UnroutedChain("gpt-4o".into()))
        );
    }

    #[test]
    fn duplicate_and_empty_models_are_refused() {
        assert_eq!(
            render_gateway(
                "{{MODEL_ROUTES}}",
                &spec(&[("m", "127.0.0.1:1"), ("m", "127.0.0.1:2")])
            ),
            Err(RenderError::DuplicateModel("m".into()))
        );
        assert_eq!(
            render_gateway("{{MODEL_ROUTES}}", &spec(&[("", "127.0.0.1:1")])),
            Err(RenderError::EmptyModelName)
        );
    }
}
