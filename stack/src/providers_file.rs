//! `render-gateway --providers FILE`: where each external provider of the
//! filter configuration is and where its key is kept, for an Envoy run
//! outside a mesh (the mesh's counterpart is `maas-mesh render-providers`).
//!
//! ```json
//! [
//!   { "name": "openai", "host": "api.openai.com", "secret_file": "/etc/maas/openai.key" },
//!   { "name": "vllm-far", "host": "vllm.internal", "address": "10.0.0.7", "port": 8443,
//!     "ca_file": "/etc/maas/internal-ca.pem", "http2": false, "timeout_secs": 120,
//!     "secret_file": "/etc/maas/vllm.key" }
//! ]
//! ```
//!
//! What the filter configuration already says is not said again: each
//! provider's kind (and so the header its key goes in) and the models it
//! serves come from it. The file must name exactly the providers the
//! filter's models use, so neither side can route somewhere the other does
//! not know.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use maas_filter::config::Config;
use maas_testkit::gateway::{CredentialSpec, ProviderSpec};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    /// The TLS name: SNI, the certificate's SAN, and the `Host` it is sent.
    host: String,
    /// Where to connect, when not `host` (an IP, or another name).
    #[serde(default)]
    address: Option<String>,
    #[serde(default = "https_port")]
    port: u16,
    /// PEM CAs for the provider's certificate; default: the system's.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// The file holding the key (only Envoy reads it, through SDS).
    secret_file: PathBuf,
    #[serde(default = "yes")]
    http2: bool,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

fn https_port() -> u16 {
    443
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProvidersFileError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("the filter configuration: {0}")]
    FilterConfig(String),
    #[error("{path}: provider {name:?} is listed twice")]
    Duplicate { path: String, name: String },
    #[error("{path}: provider {name:?} serves no model of the filter configuration (none of its `external_models` or `fallbacks` names it)")]
    Unused { path: String, name: String },
    #[error("{path}: no entry for provider {name:?}, which the filter configuration routes {models:?} to")]
    Missing {
        path: String,
        name: String,
        models: Vec<String>,
    },
    #[error("{path}: provider {name:?}: `timeout_secs` must be at least 1")]
    ZeroTimeout { path: String, name: String },
}

/// The providers of `path`, completed from the filter configuration
/// `filter_config` (checked by the filter's own parser).
pub fn read(
    path: &Path,
    filter_config: &serde_json::Value,
) -> Result<Vec<ProviderSpec>, ProvidersFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ProvidersFileError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let raw: Vec<RawProvider> =
        serde_json::from_str(&text).map_err(|e| ProvidersFileError::Invalid {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    let config = Config::from_json(filter_config.to_string().as_bytes())
        .map_err(|e| ProvidersFileError::FilterConfig(e.to_string()))?;

    // Every provider a model uses, with its kind and the ids it serves first.
    let mut used: BTreeMap<&str, (maas_filter::providers::ProviderKind, Vec<String>)> =
        BTreeMap::new();
    for (id, model) in &config.external {
        used.entry(model.provider.as_str())
            .or_insert((model.kind, Vec::new()))
            .1
            .push(id.clone());
    }
    for model in config.fallbacks.values().flatten() {
        used.entry(model.provider.as_str())
            .or_insert((model.kind, Vec::new()));
    }

    let mut seen = BTreeSet::new();
    let mut specs = Vec::with_capacity(raw.len());
    for p in raw {
        if !seen.insert(p.name.clone()) {
            return Err(ProvidersFileError::Duplicate {
                path: shown,
                name: p.name,
            });
        }
        let Some((kind, models)) = used.get(p.name.as_str()) else {
            return Err(ProvidersFileError::Unused {
                path: shown,
                name: p.name,
            });
        };
        if p.timeout_secs == Some(0) {
            return Err(ProvidersFileError::ZeroTimeout {
                path: shown,
                name: p.name,
            });
        }
        let (header, prefix) = kind.credential_header();
        specs.push(ProviderSpec {
            address: p.address.unwrap_or_else(|| p.host.clone()),
            name: p.name,
            port: p.port,
            host: p.host,
            ca_file: p.ca_file,
            credential: CredentialSpec {
                header: header.into(),
                value_prefix: prefix.map(str::to_owned),
                secret_file: p.secret_file,
            },
            models: models.clone(),
            http2: p.http2,
            timeout: p.timeout_secs.map(Duration::from_secs),
        });
    }
    if let Some((name, (_, models))) = used.iter().find(|(name, _)| !seen.contains(**name)) {
        return Err(ProvidersFileError::Missing {
            path: shown,
            name: (*name).to_string(),
            models: models.clone(),
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maas_testkit::envoy::ScratchDir;
    use serde_json::json;

    fn filter_config() -> serde_json::Value {
        json!({
            "providers": [
                {"name": "openai", "kind": "openai-compatible"},
                {"name": "anthropic", "kind": "anthropic"}
            ],
            "external_models": [{"id": "gpt-4o", "provider": "openai", "model": "gpt-4o"}],
            "fallbacks": {"gpt-4o": [{"provider": "anthropic", "model": "claude-sonnet-4-5"}]},
            "subscriptions": {}
        })
    }

    fn file(text: &str) -> (ScratchDir, PathBuf) {
        let dir = ScratchDir::create().unwrap();
        let path = dir.path().join("providers.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn providers_take_their_kind_and_models_from_the_filter_configuration() {
        let (_dir, path) = file(
            r#"[
              {"name": "openai", "host": "api.openai.com", "secret_file": "/k/openai"},
              {"name": "anthropic", "host": "api.anthropic.com", "address": "10.0.0.9",
               "port": 8443, "ca_file": "/ca.pem", "http2": false, "timeout_secs": 90,
               "secret_file": "/k/anthropic"}
            ]"#,
        );
        let specs = read(&path, &filter_config()).unwrap();
        let openai = &specs[0];
        assert_eq!(
            (openai.address.as_str(), openai.port, openai.http2),
            ("api.openai.com", 443, true)
        );
        assert_eq!(openai.models, ["gpt-4o"]);
        assert_eq!(openai.credential.header, "authorization");
        assert_eq!(openai.credential.value_prefix.as_deref(), Some("Bearer "));
        assert_eq!(openai.timeout, None);
        let anthropic = &specs[1];
        assert_eq!(anthropic.address, "10.0.0.9");
        assert!(anthropic.models.is_empty(), "a fallback only");
        assert_eq!(anthropic.credential.header, "x-api-key");
        assert_eq!(anthropic.timeout, Some(Duration::from_secs(90)));
        assert_eq!(anthropic.ca_file.as_deref(), Some(Path::new("/ca.pem")));
    }

    #[test]
    fn a_file_out_of_step_with_the_filter_configuration_is_refused() {
        let openai = r#"{"name": "openai", "host": "h", "secret_file": "/k"}"#;
        let anthropic = r#"{"name": "anthropic", "host": "h", "secret_file": "/k"}"#;
        let cases = [
            (format!("[{openai}]"), "no entry for provider \"anthropic\""),
            (
                format!(
                    r#"[{openai}, {anthropic}, {{"name": "x", "host": "h", "secret_file": "/k"}}]"#
                ),
                "provider \"x\" serves no model",
            ),
            (format!("[{openai}, {openai}, {anthropic}]"), "listed twice"),
            (
                r#"[{"name": "openai", "host": "h", "secret_file": "/k", "key": "sk-inline"}]"#
                    .to_string(),
                "unknown field `key`",
            ),
            (
                format!(
                    r#"[{anthropic}, {{"name": "openai", "host": "h", "secret_file": "/k", "timeout_secs": 0}}]"#
                ),
                "`timeout_secs` must be at least 1",
            ),
        ];
        for (text, expected) in cases {
            let (_dir, path) = file(&text);
            let e = read(&path, &filter_config()).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let missing = read(Path::new("/nonexistent/providers.json"), &filter_config());
        assert!(matches!(missing, Err(ProvidersFileError::Read { .. })));
    }
}
