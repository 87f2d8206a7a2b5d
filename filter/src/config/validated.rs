//! The validated configuration the filter runs on: built once per VM at
//! `on_configure` from the raw form ([`super::raw`]) by
//! [`super::validate`], and read-only afterwards (shared as `Rc<Config>`).
//!
//! Invariants: every name in it is safe in a header, a metric name and a
//! shared-data key; `models` and each subscription's `models` are sorted;
//! every key's `subscription` indexes `subscriptions`.

use super::raw::{Oidc, RawConfig};
use crate::auth::control_plane::ControlPlane;
use crate::auth::credential::BearerCredential;
use crate::auth::keys::KeyStore;
use crate::limits::global_limits::Limiter;
use crate::openai::endpoint::Endpoint;
use crate::openai::request::BudgetField;
use crate::providers::ProviderKind;
use crate::subscription::{ScopeLimits, Subscription};
use std::collections::BTreeMap;
use std::rc::Rc;

/// A public model id served by an external provider: what the request
/// path changes before it goes there (Envoy routes it by `x-maas-model`
/// to the provider's cluster, which holds the address, TLS and credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalModel {
    pub provider: String,
    pub kind: ProviderKind,
    /// The provider's name for the model (Azure: the deployment), written
    /// into the request body's `model`.
    pub upstream_model: String,
    /// Azure OpenAI's `api-version`.
    pub api_version: Option<String>,
    /// The budget field its chat completions read: where the gateway adds
    /// a completion's cap when the request names neither, and the name the
    /// backend role gives a budget under the other.
    pub budget_field: BudgetField,
    /// Completions one request may ask of it (its provider's
    /// `max_outputs`); `None`: no limit.
    pub max_outputs: Option<u64>,
    /// Prompt tokens one media part may cost here (its own setting, or the
    /// top-level `media_part_tokens`).
    pub media_part_tokens: u64,
    /// The `service_tier` values a request may name (its provider's
    /// `service_tiers`); `None`: any, as for Anthropic, whose translation
    /// sends none.
    pub service_tiers: Option<Rc<[String]>>,
}

impl ExternalModel {
    /// Whether a request naming `tier` may go here.
    pub fn takes_service_tier(&self, tier: &str) -> bool {
        self.service_tiers
            .as_ref()
            .is_none_or(|tiers| tiers.iter().any(|t| t == tier))
    }

    /// The upstream path for a request to `endpoint`, when the provider's
    /// differs from the gateway's.
    pub fn upstream_path(&self, endpoint: &Endpoint) -> Option<String> {
        let operation = match endpoint {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            // Azure serves the Responses API at another path, not per
            // deployment: refused for Azure backends
            // (`providers::AZURE_NO_RESPONSES`); every other provider's
            // path is the gateway's.
            Endpoint::Responses | Endpoint::ListModels | Endpoint::RetrieveModel(_) => return None,
        };
        match self.kind {
            ProviderKind::OpenAiCompatible | ProviderKind::Anthropic => None,
            ProviderKind::AzureOpenAi => Some(format!(
                "/openai/deployments/{}/{operation}?api-version={}",
                self.upstream_model,
                self.api_version.as_deref().unwrap_or_default()
            )),
        }
    }
}

#[derive(Debug)]
pub struct Config {
    pub max_body_bytes: usize,
    pub default_max_tokens: u64,
    pub prompt_bytes_per_token: u64,
    /// Prompt tokens reserved per media part where a backend sets none
    /// (a model's own servers always).
    pub media_part_tokens: u64,
    /// Every model the gateway routes (local and external), sorted.
    pub models: Vec<String>,
    /// Sent as `Authorization: Bearer …` to the gateway's own model
    /// servers, which refuse requests without it: a request that reaches
    /// one without passing this filter (a mesh patch that did not land, a
    /// caller that found the server's address) is refused there too. Never
    /// sent to an external provider.
    pub model_server_api_key: Option<BearerCredential>,
    /// The models of `models` that an external provider serves, by id.
    pub external: BTreeMap<String, Rc<ExternalModel>>,
    /// Per model id: the providers tried, in order, when its own backend
    /// fails before answering (Envoy's retries, each attempt made its
    /// provider's own by the backend role, [`crate::backend`]).
    pub fallbacks: BTreeMap<String, Vec<Rc<ExternalModel>>>,
    /// Configured here; the control plane may add and override them.
    pub subscriptions: Vec<Rc<Subscription>>,
    pub keys: KeyStore,
    pub control_plane: Option<ControlPlane>,
    pub oidc: Option<Oidc>,
    pub limiter: Option<Limiter>,
    /// Per model id, its route's timeout where the bootstrap sets one
    /// (milliseconds): see `gateway::global`'s deadline.
    pub route_timeouts_ms: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid filter configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

/// A [`ConfigError`] for `field`.
pub(super) fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Parses and validates a configuration document. A configuration error
    /// makes Envoy refuse the plugin: a gateway that starts with a
    /// half-understood policy is worse than one that does not start.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        // serde's message names the unknown or mistyped field.
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| err("(document)", e.to_string()))?;
        Config::try_from(raw)
    }

    /// The external backends of `model`, in the order they are tried: its
    /// provider (when it is not local), then its fallbacks.
    pub fn backends<'a>(&'a self, model: &str) -> impl Iterator<Item = &'a ExternalModel> {
        self.external
            .get(model)
            .into_iter()
            .chain(self.fallbacks.get(model).into_iter().flatten())
            .map(|m| &**m)
    }

    /// Whether the gateway's own model servers serve the routed `model`
    /// (no external provider does).
    pub fn served_locally(&self, model: &str) -> bool {
        !self.external.contains_key(model)
    }

    /// The bearer token for a request to `model`: the model server key
    /// when `model` is served by the gateway's own servers.
    pub fn model_server_bearer(&self, model: &str) -> Option<&str> {
        let key = self.model_server_api_key.as_ref()?;
        self.served_locally(model).then(|| key.header_value())
    }

    /// Prompt tokens reserved per media part of a request to `model`: the
    /// most any backend that may answer it can charge (its own, then each
    /// fallback), so a failover cannot overshoot either.
    pub fn media_part_tokens(&self, model: &str) -> u64 {
        let own_servers = self.served_locally(model).then_some(self.media_part_tokens);
        self.backends(model)
            .map(|b| b.media_part_tokens)
            .chain(own_servers)
            .max()
            .unwrap_or(self.media_part_tokens)
    }

    /// Every scope with limits (one counter each) the configuration enforces,
    /// for creating the counters before traffic arrives.
    pub fn all_limits(&self) -> impl Iterator<Item = &ScopeLimits> {
        self.subscriptions
            .iter()
            .map(|s| &s.limits)
            .chain(self.keys.iter().map(|k| &*k.limits))
            .filter(|l| !l.is_empty())
    }
}
