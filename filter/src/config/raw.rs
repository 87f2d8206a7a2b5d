//! The configuration as written: serde types that mirror the JSON one to
//! one, with `deny_unknown_fields` everywhere an object is read, so a
//! misspelt field is an error rather than a silently ignored limit.
//! Defaults live next to the field they default. Nothing here is checked
//! beyond its JSON type: `super::validate` turns a `RawConfig` into the
//! [`super::Config`] the filter uses (as Kuadrant's wasm-shim turns its
//! `PluginConfiguration` into a `FilterConfig`).
//!
//! [`RawSubscription`] is also the control plane's schema of a subscription,
//! so it (and what it holds) is public and serialisable.

use crate::auth::credential::Secret;
use crate::openai::request::BudgetField;
use crate::providers::ProviderKind;
use crate::subscription::{CapMode, FailureMode, KeyLimitsPer, DEFAULT_MAX_KEYS_PER_OWNER};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_max_tokens() -> u64 {
    4096
}

fn default_prompt_bytes_per_token() -> u64 {
    1
}

/// The most one image costs among the models a gateway commonly fronts:
/// OpenAI's patch-based models cap an image at 1,536 patches, times 1.62
/// (gpt-4.1-mini, gpt-5-mini) or 2.46 (gpt-4.1-nano, gpt-5-nano): 3,779;
/// tile-based gpt-4o at most 85 + 8 × 170 = 1,445; Claude about 1,600.
/// Not gpt-4o-mini, whose image tokens are inflated (2,833 + 5,667 per
/// tile, up to 36,836): set its `external_models[].media_part_tokens`.
pub(super) const DEFAULT_MEDIA_PART_TOKENS: u64 = 4096;

fn default_media_part_tokens() -> u64 {
    DEFAULT_MEDIA_PART_TOKENS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Request bodies above this many bytes get 413.
    #[serde(default = "default_max_body_bytes")]
    pub(super) max_body_bytes: usize,
    /// Completion budget injected (and reserved) when a request names none and
    /// its subscription sets no cap, so every admitted request has a bound.
    #[serde(default = "default_max_tokens")]
    pub(super) default_max_tokens: u64,
    /// Prompt tokens are reserved as `ceil(body bytes / this)`. 1 is a true
    /// upper bound for byte-level BPE tokenizers (every token covers at least
    /// one byte, and the JSON framing outweighs chat-template tokens), so no
    /// prompt can overshoot a token limit. Larger values reserve less but may.
    /// A response without usage is charged by the same bound (`estimate`).
    #[serde(default = "default_prompt_bytes_per_token")]
    pub(super) prompt_bytes_per_token: u64,
    /// Prompt tokens reserved per media part of a chat request (an image by
    /// URL or inline, a file by id; see `openai::request::media`), whose
    /// bytes in the body do not bound its tokens. Also charged by an
    /// estimate, with the rest of the prompt's bound.
    #[serde(default = "default_media_part_tokens")]
    pub(super) media_part_tokens: u64,
    /// Models served by the gateway's own model servers, by id.
    #[serde(default)]
    pub(super) models: Vec<String>,
    /// The key the gateway's own model servers demand (the inference
    /// server's `--api-key-file`), sent to them as a bearer token.
    #[serde(default)]
    pub(super) model_server_api_key: Option<Secret>,
    /// External providers the gateway routes to (`external_models`). Their
    /// addresses and credentials are Envoy's: never in this document.
    #[serde(default)]
    pub(super) providers: Vec<RawProvider>,
    /// Public model ids served by an external provider.
    #[serde(default)]
    pub(super) external_models: Vec<RawExternalModel>,
    /// Per model id (local or external): providers to try, in order, when
    /// the model's own backend fails before answering.
    #[serde(default)]
    pub(super) fallbacks: BTreeMap<String, Vec<RawBackend>>,
    pub(super) subscriptions: BTreeMap<String, RawSubscription>,
    #[serde(default)]
    pub(super) keys: Vec<RawKey>,
    /// Where managed keys and subscriptions come from (see `key_sync`).
    #[serde(default)]
    pub(super) control_plane: Option<RawControlPlane>,
    /// Identities verified by Envoy's `jwt_authn` filter (placed before
    /// this one), mapped to subscriptions by their groups.
    #[serde(default)]
    pub(super) oidc: Option<Oidc>,
    /// The rate limiter service that keeps `global` limits (see
    /// `global_limits`).
    #[serde(default)]
    pub(super) limiter: Option<RawLimiter>,
    /// Per model id, the timeout of the route Envoy sends it by, where the
    /// bootstrap sets one (`render-gateway` fills it in): the deadline a
    /// global hold puts on a request only ever shortens it.
    #[serde(default)]
    pub(super) route_timeouts_ms: BTreeMap<String, u64>,
}

/// An external provider as the filter needs to know it: how its API
/// differs from OpenAI's on the wire.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) name: String,
    pub(super) kind: ProviderKind,
    /// Azure OpenAI's `api-version` query parameter (required there).
    #[serde(default)]
    pub(super) api_version: Option<String>,
    /// The field a completion's cap is added under when a request names
    /// neither budget field; default by kind
    /// ([`ProviderKind::default_budget_field`]). OpenAI itself, an
    /// `openai-compatible` provider, wants `max_completion_tokens`.
    #[serde(default)]
    pub(super) max_tokens_field: Option<BudgetField>,
    /// Completions one request may ask of this provider (`n`, `best_of`,
    /// llama.cpp's `n_cmpl`, times the prompts of an array): a request for
    /// more gets a 400. For a server whose reported usage covers fewer
    /// outputs than it makes (llama-server counts only the first), so that
    /// no request is charged less than it used. Default: no limit.
    #[serde(default)]
    pub(super) max_outputs: Option<u64>,
    /// The `service_tier` values a request may name for this provider
    /// (default [`DEFAULT_SERVICE_TIERS`]): a tier is the operator's bill
    /// (OpenAI's `priority` costs about twice the same tokens), so a
    /// client may choose only among those the operator allows.
    #[serde(default)]
    pub(super) service_tiers: Option<Vec<String>>,
}

/// The tiers a client may name by default: the provider's default
/// (`auto` is the account's own setting) and the cheaper `flex`.
pub(super) const DEFAULT_SERVICE_TIERS: [&str; 3] = ["auto", "default", "flex"];

/// A public model id mapped to a provider's model (for Azure OpenAI, its
/// deployment name).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExternalModel {
    pub(super) id: String,
    pub(super) provider: String,
    pub(super) model: String,
    /// The top-level `media_part_tokens` for this backend of the model.
    #[serde(default)]
    pub(super) media_part_tokens: Option<u64>,
}

/// One fallback backend: a provider and its name for the model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) provider: String,
    pub(super) model: String,
    /// The top-level `media_part_tokens` for this backend of the model.
    #[serde(default)]
    pub(super) media_part_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimiter {
    pub(super) cluster: String,
    #[serde(default = "default_limiter_domain")]
    pub(super) domain: String,
    /// Kuadrant's wasm-shim default: a limiter slower than this is down.
    #[serde(default = "default_limiter_timeout_ms")]
    pub(super) timeout_ms: u64,
    #[serde(default)]
    pub(super) failure_mode: FailureMode,
    #[serde(default = "default_true")]
    pub(super) reservations: bool,
    #[serde(default = "default_reservation_ttl_ms")]
    pub(super) reservation_ttl_ms: u64,
}

fn default_limiter_domain() -> String {
    "maas".to_string()
}

fn default_limiter_timeout_ms() -> u64 {
    20
}

fn default_true() -> bool {
    true
}

/// Under a global token limit the longest a request may run (the filter
/// sets its timeout to the hold's end, see `gateway::global`): the local
/// stack's route timeout, and the limiter's default `--max-hold-secs`.
fn default_reservation_ttl_ms() -> u64 {
    600_000
}

fn default_metadata_namespace() -> String {
    "envoy.filters.http.jwt_authn".to_string()
}

fn default_payload_key() -> String {
    "jwt_payload".to_string()
}

fn default_user_claim() -> String {
    "sub".to_string()
}

fn default_groups_claim() -> String {
    "groups".to_string()
}

/// Where the verified token's claims are and which of them matter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    /// The dynamic-metadata namespace `jwt_authn` writes to.
    #[serde(default = "default_metadata_namespace")]
    pub metadata_namespace: String,
    /// `jwt_authn`'s `payload_in_metadata`.
    #[serde(default = "default_payload_key")]
    pub payload_key: String,
    /// The claim naming the user (audit records, `x-maas-user`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim listing the user's groups (a list or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_sync_interval_ms() -> u64 {
    250
}

fn default_call_timeout_ms() -> u64 {
    2000
}

fn default_sync_page_keys() -> u64 {
    2000
}

fn default_lookups_per_second() -> u64 {
    20
}

fn default_negative_cache_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControlPlane {
    /// The Envoy cluster that reaches the control plane.
    pub(super) cluster: String,
    /// `:authority` of the calls (the control plane does not look at it, a
    /// mesh's routing may).
    #[serde(default)]
    pub(super) authority: Option<String>,
    /// The control plane's gateway token (its `gateway-token` file).
    pub(super) token: Secret,
    /// How often the gateway asks for changes. A revoked key stops working
    /// within about this long (plus one round trip).
    #[serde(default = "default_sync_interval_ms")]
    pub(super) sync_interval_ms: u64,
    /// Deadline of one sync or lookup call.
    #[serde(default = "default_call_timeout_ms")]
    pub(super) timeout_ms: u64,
    /// Keys per sync answer: a full sync of many keys comes in pages, so no
    /// single callback parses (and holds in wasm memory) all of them.
    #[serde(default = "default_sync_page_keys")]
    pub(super) sync_page_keys: u64,
    /// Lookups of never-seen key ids, for all workers together: a client
    /// sending random ids cannot turn the gateway into a load generator
    /// against the control plane.
    #[serde(default = "default_lookups_per_second")]
    pub(super) lookups_per_second: u64,
    /// How long "no such key" from a lookup is remembered.
    #[serde(default = "default_negative_cache_ms")]
    pub(super) negative_cache_ms: u64,
}

/// A subscription as the configuration spells it, and as the control plane
/// stores and serves it (its `SubscriptionSpec` flattens this type and adds
/// only its own fields): one schema, so what an administrator writes is
/// what the gateway reads. Absent optional fields stay absent when written
/// back; their defaults are applied by validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubscription {
    pub models: Vec<String>,
    /// Shared by all keys of the subscription. Required: say `"unlimited"`
    /// explicitly rather than forget a limit.
    pub limits: RawLimits,
    /// Applied to each key of the subscription separately, or to each
    /// owner's keys together (`key_limits_per`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_limits: Option<RawLimits>,
    /// Default [`KeyLimitsPer::Key`].
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub key_limits_per: Option<KeyLimitsPer>,
    /// The most live (neither revoked nor expired) keys one owner may hold
    /// in this subscription. The control plane enforces it when it mints;
    /// the gateway only validates it, so the two agree on what is valid.
    /// Default [`DEFAULT_MAX_KEYS_PER_OWNER`]: see
    /// [`RawSubscription::max_keys_per_owner`].
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_keys_per_owner: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<RawMaxTokens>,
    /// OIDC groups whose members use this subscription with a bearer token
    /// instead of a key (see `oidc`); at the control plane, also those who
    /// may mint keys for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl RawSubscription {
    /// `max_keys_per_owner`, its default applied: the one place both the
    /// gateway's validation and the control plane's minting read it.
    pub fn max_keys_per_owner(&self) -> u64 {
        self.max_keys_per_owner
            .unwrap_or(DEFAULT_MAX_KEYS_PER_OWNER)
    }
}

/// `"unlimited"`, or rates such as `{"requests": ["10/min"], "tokens":
/// ["20000/min"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawLimits {
    Keyword(String),
    Rates(RawRates),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRates {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<RawRate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<RawRate>,
}

/// `"20000/min"` (kept in this Envoy's shared data) or
/// `{"rate": "20000/min", "mode": "global"}` (kept by the limiter service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawRate {
    Local(String),
    Spec(RawRateSpec),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateSpec {
    pub rate: String,
    /// Default [`LimitMode::Local`].
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<LimitMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

/// Where a limit's counter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitMode {
    /// Shared data: exact across one Envoy's workers.
    #[default]
    Local,
    /// The limiter service: shared by every gateway that uses it.
    Global,
}

/// `{"cap": 512, "mode": "clamp"}`; validation makes it a
/// [`crate::subscription::MaxTokensPolicy`].
// Named as the domain type it becomes, so serde's "expected struct …"
// reads as it always has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename = "MaxTokensPolicy")]
pub struct RawMaxTokens {
    pub cap: u64,
    /// Default [`CapMode::Clamp`].
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<CapMode>,
}

/// For an optional field whose absence means its default: an explicit
/// `null` is refused (with the field's type in the message), not taken for
/// the default, as when the field was not optional.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) subscription: String,
    pub(super) sha256: String,
    #[serde(default)]
    pub(super) expires_at: Option<RawExpiry>,
    #[serde(default)]
    pub(super) revoked: bool,
    /// Overrides the subscription's `key_limits` for this key.
    #[serde(default)]
    pub(super) limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawExpiry {
    UnixSeconds(u64),
    Rfc3339(String),
}
