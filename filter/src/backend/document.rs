//! The backend role's configuration: one provider and the models it serves
//! (public id → its name for it). Derived from the gateway's configuration
//! ([`BackendConfig::of`]), so the two roles cannot disagree on a mapping,
//! and validated again at load by the same rules.

use crate::config::{Config, ConfigError, ExternalModel};
use crate::openai::request::BudgetField;
use crate::providers::ProviderKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::rc::Rc;

/// The response header naming the provider that answered an attempt.
pub const BACKEND_HEADER: &str = "x-maas-backend";

/// The response header carrying the provider's own status where the client
/// is given another ([`crate::providers::upstream_failure`]), so that the
/// gateway role charges by what the provider did.
pub const PROVIDER_STATUS_HEADER: &str = "x-maas-provider-status";

/// What one provider's cluster needs to make a request its own.
#[derive(Debug)]
pub struct BackendConfig {
    pub provider: Rc<str>,
    /// By public model id.
    pub models: BTreeMap<String, Rc<ExternalModel>>,
}

/// The document, as `{"backend": {...}}`: the key tells a backend
/// configuration from a gateway one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    backend: RawBackend,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    provider: String,
    kind: ProviderKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    /// The provider's `max_tokens_field`, where it is not its kind's
    /// default: each attempt's budget goes out under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_tokens_field: Option<BudgetField>,
    /// Public model id → the provider's name for it.
    models: BTreeMap<String, String>,
}

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: format!("backend.{field}"),
        reason: reason.into(),
    }
}

impl BackendConfig {
    /// Whether `bytes` is a backend document rather than a gateway one.
    pub fn is_backend_document(bytes: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Probe {
            backend: Option<serde::de::IgnoredAny>,
        }
        serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| p.backend.is_some())
    }

    /// The document for `provider`'s cluster under the gateway
    /// configuration `config`: every model it serves, first or as a
    /// fallback. `None`: no model uses the provider.
    pub fn document_for(config: &Config, provider: &str) -> Option<serde_json::Value> {
        let mut entries = config
            .external
            .iter()
            .chain(
                config
                    .fallbacks
                    .iter()
                    .flat_map(|(id, chain)| chain.iter().map(move |m| (id, m))),
            )
            .filter(|(_, m)| m.provider == provider)
            .peekable();
        let first = Rc::clone(entries.peek()?.1);
        let models = entries
            .map(|(id, m)| (id.clone(), m.upstream_model.clone()))
            .collect();
        let doc = Document {
            backend: RawBackend {
                provider: provider.to_string(),
                kind: first.kind,
                api_version: first.api_version.clone(),
                max_tokens_field: (first.budget_field != first.kind.default_budget_field())
                    .then_some(first.budget_field),
                models,
            },
        };
        serde_json::to_value(doc).ok()
    }

    /// Parses and validates a backend document.
    pub fn from_json(bytes: &[u8]) -> Result<BackendConfig, ConfigError> {
        let doc: Document =
            serde_json::from_slice(bytes).map_err(|e| err("(document)", e.to_string()))?;
        let raw = doc.backend;
        // The gateway configuration's own rules, on a configuration of one
        // provider serving these models.
        let gateway = serde_json::json!({
            "providers": [{
                "name": raw.provider,
                "kind": raw.kind,
                "api_version": raw.api_version,
                "max_tokens_field": raw.max_tokens_field,
            }],
            "external_models": raw.models.iter().map(|(id, model)| serde_json::json!({
                "id": id, "provider": raw.provider, "model": model,
            })).collect::<Vec<_>>(),
            "subscriptions": {},
        });
        if raw.models.is_empty() {
            return Err(err("models", "must map at least one model"));
        }
        let config =
            Config::from_json(gateway.to_string().as_bytes()).map_err(|e| ConfigError {
                field: format!("backend ({})", e.field),
                reason: e.reason,
            })?;
        Ok(BackendConfig {
            provider: raw.provider.into(),
            models: config.external,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway() -> Config {
        let doc = json!({
            "models": ["local-m"],
            "providers": [
                {"name": "azure-east", "kind": "azure-openai", "api_version": "2024-10-21"},
                {"name": "vllm", "kind": "openai-compatible"},
                {"name": "anthropic", "kind": "anthropic"}
            ],
            "external_models": [
                {"id": "gpt-4o", "provider": "azure-east", "model": "gpt-4o-prod"},
                {"id": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5"}
            ],
            "fallbacks": {
                "local-m": [{"provider": "vllm", "model": "org/local-m"}],
                "gpt-4o": [{"provider": "anthropic", "model": "claude-haiku-4-5"}]
            },
            "subscriptions": {}
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_providers_document_maps_every_model_it_serves_first_or_as_fallback() {
        let config = gateway();
        let doc = BackendConfig::document_for(&config, "anthropic").unwrap();
        assert_eq!(
            doc,
            json!({"backend": {"provider": "anthropic", "kind": "anthropic", "models": {
                "claude": "claude-sonnet-4-5", "gpt-4o": "claude-haiku-4-5"}}})
        );
        let bytes = doc.to_string();
        assert!(BackendConfig::is_backend_document(bytes.as_bytes()));
        let parsed = BackendConfig::from_json(bytes.as_bytes()).unwrap();
        assert_eq!(&*parsed.provider, "anthropic");
        assert_eq!(parsed.models["gpt-4o"].upstream_model, "claude-haiku-4-5");
        assert_eq!(parsed.models["gpt-4o"].kind, ProviderKind::Anthropic);

        let azure = BackendConfig::document_for(&config, "azure-east").unwrap();
        assert_eq!(azure["backend"]["api_version"], "2024-10-21");
        let vllm = BackendConfig::document_for(&config, "vllm").unwrap();
        assert_eq!(vllm["backend"]["models"], json!({"local-m": "org/local-m"}));
        assert!(vllm["backend"].get("max_tokens_field").is_none(), "{vllm}");
        assert!(BackendConfig::document_for(&config, "nobody").is_none());
    }

    #[test]
    fn a_providers_own_budget_field_reaches_its_backend_role() {
        let mut doc: serde_json::Value = json!({
            "providers": [{"name": "openai", "kind": "openai-compatible",
                           "max_tokens_field": "max_completion_tokens"}],
            "external_models": [{"id": "o3", "provider": "openai", "model": "o3"}],
            "subscriptions": {}
        });
        let config = Config::from_json(doc.to_string().as_bytes()).unwrap();
        let backend = BackendConfig::document_for(&config, "openai").unwrap();
        assert_eq!(
            backend["backend"]["max_tokens_field"],
            "max_completion_tokens"
        );
        let parsed = BackendConfig::from_json(backend.to_string().as_bytes()).unwrap();
        assert_eq!(
            parsed.models["o3"].budget_field,
            BudgetField::MaxCompletionTokens
        );
        // A kind's default is not written.
        doc["providers"][0]["max_tokens_field"] = json!("max_tokens");
        let config = Config::from_json(doc.to_string().as_bytes()).unwrap();
        let backend = BackendConfig::document_for(&config, "openai").unwrap();
        assert!(
            backend["backend"].get("max_tokens_field").is_none(),
            "{backend}"
        );
        assert!(BackendConfig::document_for(&config, "nobody").is_none());
    }

    #[test]
    fn a_gateway_document_is_not_a_backend_one() {
        assert!(!BackendConfig::is_backend_document(
            br#"{"models": [], "subscriptions": {}}"#
        ));
        assert!(!BackendConfig::is_backend_document(b"not json"));
    }

    #[test]
    fn invalid_backend_documents_name_the_field() {
        let cases = [
            (
                json!({"backend": {"provider": "a", "kind": "azure-openai", "models": {"m": "d"}}}),
                "api_version",
            ),
            (
                json!({"backend": {"provider": "a", "kind": "anthropic", "models": {}}}),
                "backend.models",
            ),
            (
                json!({"backend": {"provider": "a", "kind": "anthropic", "models": {"m": "x y"}}}),
                "model",
            ),
            (
                json!({"backend": {"provider": "a", "kind": "nope", "models": {"m": "x"}}}),
                "unknown variant",
            ),
        ];
        for (doc, needle) in cases {
            let e = BackendConfig::from_json(doc.to_string().as_bytes()).unwrap_err();
            assert!(e.to_string().contains(needle), "{doc}: {e}");
        }
    }
}
