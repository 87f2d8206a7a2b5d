//! External model providers: models served by someone else's API (OpenAI,
//! Azure OpenAI, …) over TLS, reached through the same `x-maas-model`
//! routing as local models, after the same filter (keys, limits, usage).
//!
//! Invariants of what is rendered here:
//! - The provider's credential is never in the bootstrap. Envoy's own
//!   credential injector fetches it through SDS from a file
//!   ([`write_credential_sds`] writes that SDS resource, which only names the
//!   secret file), so the key is not in the bootstrap, the filter's
//!   configuration or our logs; the secret file is its only home.
//! - The injector is an upstream filter of the provider's cluster: it runs
//!   after the wasm filter has finished with the request, so the filter (and
//!   anything it logs or forwards) never sees a provider key; and it runs with
//!   `overwrite: true`, so a value a client sent in that header is replaced,
//!   never passed on.
//! - Every provider connection is TLS, verified against `ca_file` (or the
//!   system trust store), with the provider's host name as SNI, as the only
//!   DNS SAN accepted and as the `Host` the provider sees.
//! - The identity headers the filter adds for our own model servers
//!   (`x-maas-user`, …) and any credential a client sent in the usual
//!   headers are removed before a request leaves for a third party.

use std::collections::{BTreeMap, HashSet};

use maas_filter::backend::envoy::FILTER_NAME;
use maas_filter::providers::credential_sds;
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{
    path_literal, route_match, route_timeouts_inline, safe_name, string_literal, RenderError,
    CLUSTER_INDENT, ROUTE_INDENT, ROUTE_TIMEOUT,
};

/// A model API run by someone else, reached over TLS with our credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSpec {
    /// Names the cluster, `provider_<name reduced to [a-z0-9_-]>`, and so its stats.
    pub name: String,
    /// Where to connect: a host name (Envoy resolves it, `STRICT_DNS`) or an IP literal.
    pub address: String,
    pub port: u16,
    /// The provider's host name: the TLS SNI, the DNS SAN its certificate must
    /// carry, and the `Host`/`:authority` it is sent.
    pub host: String,
    /// PEM bundle of the CAs that may sign the provider's certificate; `None`:
    /// the system trust store ([`SYSTEM_TRUST_STORE`]).
    pub ca_file: Option<PathBuf>,
    pub credential: CredentialSpec,
    /// The public model ids routed to this provider (as clients name them).
    pub models: Vec<String>,
    /// HTTP/2 to the provider; HTTP/1.1 otherwise.
    pub http2: bool,
    /// How long a request to this provider may take, its whole answer
    /// included (Envoy's route timeout; past it the client gets an
    /// OpenAI-shaped 504). `None`: the gateway's (600 s, for long streams).
    /// A model with fallbacks keeps the gateway's for its attempts together.
    pub timeout: Option<std::time::Duration>,
}

impl ProviderSpec {
    /// The timeout of its models' routes: its own, else the gateway's.
    pub(super) fn route_timeout(&self) -> std::time::Duration {
        self.timeout.unwrap_or(ROUTE_TIMEOUT)
    }
}

/// How the provider expects our key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSpec {
    /// The request header the provider reads (`authorization`, `api-key`, `x-api-key`).
    pub header: String,
    /// Written before the secret in the header (`"Bearer "` for
    /// `authorization`); not secret, so it may live in the bootstrap.
    pub value_prefix: Option<String>,
    /// The file holding the secret itself (Envoy drops a trailing newline).
    pub secret_file: PathBuf,
}

/// Debian's and Alpine's bundle of the system's trusted CAs.
pub const SYSTEM_TRUST_STORE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Removed from requests to a provider, before the credential is injected:
/// the filter's identity headers (who our caller is, is no third party's
/// business; `x-maas-model` has done its job once the route is chosen), and
/// the usual credential headers, so the only credential a provider gets
/// through us is ours (`overwrite` covers the provider's own header, this
/// the others).
const REMOVED_HEADERS: &str = "[x-maas-user, x-maas-key-id, x-maas-subscription, x-maas-model, \
                               authorization, x-api-key, api-key]";

/// `provider_<name reduced to [a-z0-9_-]>`; unlike local models' clusters
/// there is no index, so names that reduce alike are refused
/// ([`RenderError::DuplicateProvider`]) rather than told apart.
pub fn cluster_name(provider: &str) -> String {
    format!("provider_{}", safe_name(provider))
}

/// The SDS resource's name; the cluster name keeps it unique.
fn secret_name(provider: &str) -> String {
    format!("{}_credential", cluster_name(provider))
}

/// Where [`write_credential_sds`] puts `provider`'s SDS file under `dir`,
/// and so where the bootstrap tells Envoy to read it.
pub fn credential_sds_path(dir: &Path, provider: &ProviderSpec) -> PathBuf {
    dir.join(format!("{}.sds.yaml", secret_name(&provider.name)))
}

/// Writes, for each provider, the SDS file its cluster's credential injector
/// reads: a `Secret` whose generic secret is the provider's `secret_file`.
/// The SDS file holds a path, never the key, so a bootstrap, a config dump
/// or a log that shows it reveals nothing; and Envoy watches it, so pointing
/// it at a new secret file (written elsewhere, then moved over this one)
/// rotates a key without a new bootstrap. Returns the paths, in order.
pub fn write_credential_sds(dir: &Path, providers: &[ProviderSpec]) -> io::Result<Vec<PathBuf>> {
    providers
        .iter()
        .map(|provider| {
            let secret_file = provider.credential.secret_file.to_str().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "provider {:?}: secret file {:?} is not valid UTF-8",
                        provider.name, provider.credential.secret_file
                    ),
                )
            })?;
            let path = credential_sds_path(dir, provider);
            let sds = credential_sds(&secret_name(&provider.name), secret_file);
            std::fs::write(&path, sds)?;
            Ok(path)
        })
        .collect()
}

/// Checks what Envoy would accept but route wrongly: empty fields and
/// providers whose names reduce to the same cluster. Model ids are checked
/// with the local ones, by the caller.
pub(super) fn check(providers: &[ProviderSpec]) -> Result<(), RenderError> {
    let mut clusters = HashSet::new();
    for provider in providers {
        let empty = [
            ("name", provider.name.is_empty()),
            ("address", provider.address.is_empty()),
            ("host", provider.host.is_empty()),
            ("credential.header", provider.credential.header.is_empty()),
        ];
        if let Some((field, _)) = empty.iter().find(|(_, empty)| *empty) {
            return Err(RenderError::InvalidProvider {
                provider: provider.name.clone(),
                field,
            });
        }
        let cluster = cluster_name(&provider.name);
        if !clusters.insert(cluster.clone()) {
            return Err(RenderError::DuplicateProvider {
                provider: provider.name.clone(),
                cluster,
            });
        }
    }
    Ok(())
}

/// One route per provider model (but those in `chained`, which get a
/// failover route), in the shape of the local models' routes, plus the
/// `Host` rewrite (the endpoint's host name) and the removal of
/// [`REMOVED_HEADERS`].
pub(super) fn routes(providers: &[ProviderSpec], chained: &HashSet<&str>) -> Vec<String> {
    let indent = ROUTE_INDENT;
    let mut block = Vec::new();
    for provider in providers {
        for model in &provider.models {
            if chained.contains(model.as_str()) {
                continue;
            }
            block.push(route_match(model));
            block.push(format!(
                "{indent}  route: {{ cluster: {}, {}, auto_host_rewrite: true }}",
                cluster_name(&provider.name),
                route_timeouts_inline(provider.route_timeout()),
            ));
            block.push(format!(
                "{indent}  request_headers_to_remove: {REMOVED_HEADERS}"
            ));
        }
    }
    block
}

/// The backend role in a provider's cluster: the filter's module again,
/// configured with the provider's backend document, ahead of the
/// credential injector, so the key is set after the request is final.
fn backend_filter(wasm_path: &str, document: &serde_json::Value) -> String {
    format!(
        "- name: envoy.filters.http.wasm\n\
         \x20 typed_config:\n\
         \x20   \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n\
         \x20   config:\n\
         \x20     name: {FILTER_NAME}\n\
         \x20     root_id: {FILTER_NAME}\n\
         \x20     failure_policy: FAIL_CLOSED\n\
         \x20     allow_on_headers_stop_iteration: true\n\
         \x20     configuration:\n\
         \x20       \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
         \x20       value: {}\n\
         \x20     vm_config:\n\
         \x20       vm_id: {FILTER_NAME}\n\
         \x20       runtime: envoy.wasm.runtime.v8\n\
         \x20       code: {{ local: {{ filename: {wasm_path} }} }}\n",
        string_literal(&document.to_string()),
    )
}

/// The providers' clusters, appended to `block` (the template's cluster
/// list). `documents`: each provider's backend document, by name (a
/// provider no model uses has none, and gets no backend role).
pub(super) fn clusters(
    providers: &[ProviderSpec],
    sds_dir: Option<&Path>,
    wasm_path: &str,
    documents: &BTreeMap<String, serde_json::Value>,
    block: &mut String,
) -> Result<(), RenderError> {
    if providers.is_empty() {
        return Ok(());
    }
    let sds_dir = sds_dir.ok_or(RenderError::NoCredentialSdsDir)?;
    for provider in providers {
        let name = cluster_name(&provider.name);
        // An IP literal needs no resolver; a name is re-resolved as the
        // provider moves, IPv4 first: a host that resolves AAAA records but
        // has no IPv6 route must not fail every connection.
        let discovery = match provider.address.parse::<IpAddr>() {
            Ok(_) => "type: STATIC",
            Err(_) => "type: STRICT_DNS\n  dns_lookup_family: V4_PREFERRED",
        };
        let ca_file = match &provider.ca_file {
            Some(path) => path_literal("provider ca_file", path)?,
            None => string_literal(SYSTEM_TRUST_STORE),
        };
        let protocol = if provider.http2 {
            "http2_protocol_options: {}"
        } else {
            "http_protocol_options: {}"
        };
        let prefix = provider
            .credential
            .value_prefix
            .as_deref()
            .map(|prefix| format!("header_value_prefix: {}\n", string_literal(prefix)))
            .unwrap_or_default();
        let sds_path = path_literal("provider SDS file", &credential_sds_path(sds_dir, provider))?;
        let host = string_literal(&provider.host);
        let backend = documents
            .get(&provider.name)
            .map(|doc| {
                backend_filter(wasm_path, doc)
                    .lines()
                    .map(|l| format!("      {l}\n"))
                    .collect::<String>()
            })
            .unwrap_or_default();
        let lines = format!(
            "- name: {name}\n\
             \x20 {discovery}\n\
             \x20 connect_timeout: 5s\n\
             \x20 load_assignment:\n\
             \x20   cluster_name: {name}\n\
             \x20   endpoints:\n\
             \x20   - lb_endpoints:\n\
             \x20     - endpoint:\n\
             \x20         hostname: {host}\n\
             \x20         address:\n\
             \x20           socket_address: {{ address: {address}, port_value: {port} }}\n\
             \x20 transport_socket:\n\
             \x20   name: envoy.transport_sockets.tls\n\
             \x20   typed_config:\n\
             \x20     \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n\
             \x20     sni: {host}\n\
             \x20     common_tls_context:\n\
             \x20       validation_context:\n\
             \x20         trusted_ca: {{ filename: {ca_file} }}\n\
             \x20         match_typed_subject_alt_names:\n\
             \x20         - san_type: DNS\n\
             \x20           matcher: {{ exact: {host} }}\n\
             \x20 typed_extension_protocol_options:\n\
             \x20   envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n\
             \x20     \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n\
             \x20     explicit_http_config:\n\
             \x20       {protocol}\n\
             \x20     # Upstream filters: they run once this cluster is chosen, after\n\
             \x20     # every listener filter, the wasm filter included.\n\
             \x20     http_filters:\n\
             {backend}\
             \x20     - name: envoy.filters.http.credential_injector\n\
             \x20       typed_config:\n\
             \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector\n\
             \x20         # Replace whatever a client sent in this header.\n\
             \x20         overwrite: true\n\
             \x20         credential:\n\
             \x20           name: envoy.http.injected_credentials.generic\n\
             \x20           typed_config:\n\
             \x20             \"@type\": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic\n\
             \x20             header: {header}\n\
             {prefix_line}\
             \x20             credential:\n\
             \x20               name: {secret}\n\
             \x20               sds_config:\n\
             \x20                 path_config_source: {{ path: {sds_path} }}\n\
             \x20     - name: envoy.filters.http.upstream_codec\n\
             \x20       typed_config:\n\
             \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec\n",
            address = string_literal(&provider.address),
            port = provider.port,
            header = string_literal(&provider.credential.header),
            prefix_line = if prefix.is_empty() {
                String::new()
            } else {
                format!("              {prefix}")
            },
            secret = string_literal(&secret_name(&provider.name)),
        );
        for line in lines.lines() {
            let _ = writeln!(block, "{CLUSTER_INDENT}{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn provider(name: &str, models: &[&str]) -> ProviderSpec {
        ProviderSpec {
            name: name.into(),
            address: "api.provider.test".into(),
            port: 443,
            host: "api.provider.test".into(),
            ca_file: None,
            credential: CredentialSpec {
                header: "api-key".into(),
                value_prefix: None,
                secret_file: "/run/secrets/sk-do-not-print".into(),
            },
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            http2: true,
            timeout: None,
        }
    }

    #[test]
    fn the_sds_file_names_the_secret_file_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("maas-sds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let openai = provider("OpenAI", &["gpt-4o"]);
        let paths = write_credential_sds(&dir, std::slice::from_ref(&openai)).expect("written");
        assert_eq!(paths, vec![credential_sds_path(&dir, &openai)]);
        assert_eq!(
            paths[0].file_name().and_then(|n| n.to_str()),
            Some("provider_openai_credential.sds.yaml")
        );
        let text = std::fs::read_to_string(&paths[0]).expect("read");
        assert_eq!(
            text,
            "resources:\n\
             - \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
               name: \"provider_openai_credential\"\n  \
               generic_secret:\n    \
                 secret: { filename: \"/run/secrets/sk-do-not-print\" }\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn empty_fields_and_clashing_cluster_names_are_refused() {
        let mut no_host = provider("p", &[]);
        no_host.host.clear();
        assert_eq!(
            check(&[no_host]),
            Err(RenderError::InvalidProvider {
                provider: "p".into(),
                field: "host"
            })
        );
        assert_eq!(
            check(&[provider("Open.AI", &[]), provider("open_ai", &[])]),
            Err(RenderError::DuplicateProvider {
                provider: "open_ai".into(),
                cluster: "provider_open_ai".into()
            })
        );
        assert_eq!(check(&[provider("a", &[]), provider("b", &[])]), Ok(()));
    }
}
