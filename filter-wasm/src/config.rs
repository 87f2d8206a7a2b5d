//! The filter's configuration: deserialised once per VM at `on_configure`,
//! validated completely, and turned into the indexed form the request path
//! uses. A configuration error names the field (`subscriptions.free.limits.
//! tokens[1]`) and the reason, and makes Envoy refuse the plugin: a gateway
//! that starts with a half-understood policy is worse than one that does not
//! start.
//!
//! Shape (JSON):
//! ```json
//! {
//!   "max_body_bytes": 1048576,
//!   "default_max_tokens": 4096,
//!   "prompt_bytes_per_token": 1,
//!   "models": ["smollm2-135m-instruct"],
//!   "subscriptions": {
//!     "free": {
//!       "models": ["smollm2-135m-instruct"],
//!       "limits": { "requests": ["10/min"], "tokens": ["20000/min", "1000000/day"] },
//!       "key_limits": { "requests": ["5/min"] },
//!       "key_limits_per": "key",
//!       "max_keys_per_owner": 10,
//!       "max_tokens": { "cap": 512, "mode": "clamp" }
//!     },
//!     "internal": { "models": ["smollm2-135m-instruct"], "limits": "unlimited" }
//!   },
//!   "keys": [
//!     { "id": "alice-1", "owner": "alice@example.com", "subscription": "free",
//!       "sha256": "<hex of SHA-256 of the key>", "expires_at": "2027-01-01T00:00:00Z",
//!       "revoked": false }
//!   ]
//! }
//! ```

use crate::global_limits::{FailureMode, GlobalRate, Limiter};
use crate::keys::{ApiKey, KeyDigest, KeyStore};
use crate::limits::{LimitGroup, Rate};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::rc::Rc;

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_max_tokens() -> u64 {
    4096
}

fn default_prompt_bytes_per_token() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Request bodies above this many bytes get 413.
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    /// Completion budget injected (and reserved) when a request names none and
    /// its subscription sets no cap, so every admitted request has a bound.
    #[serde(default = "default_max_tokens")]
    default_max_tokens: u64,
    /// Prompt tokens are reserved as `ceil(body bytes / this)`. 1 is a true
    /// upper bound for byte-level BPE tokenizers (every token covers at least
    /// one byte, and the JSON framing outweighs chat-template tokens), so no
    /// prompt can overshoot a token limit. Larger values reserve less but may.
    /// A response without usage is charged by the same bound (`estimate`).
    #[serde(default = "default_prompt_bytes_per_token")]
    prompt_bytes_per_token: u64,
    models: Vec<String>,
    subscriptions: BTreeMap<String, RawSubscription>,
    #[serde(default)]
    keys: Vec<RawKey>,
    /// Where managed keys and subscriptions come from (see `key_sync`).
    #[serde(default)]
    control_plane: Option<RawControlPlane>,
    /// Identities verified by Envoy's `jwt_authn` filter (placed before
    /// this one), mapped to subscriptions by their groups.
    #[serde(default)]
    oidc: Option<Oidc>,
    /// The rate limiter service that keeps `global` limits (see
    /// `global_limits`).
    #[serde(default)]
    limiter: Option<RawLimiter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimiter {
    cluster: String,
    #[serde(default = "default_limiter_domain")]
    domain: String,
    /// Kuadrant's wasm-shim default: a limiter slower than this is down.
    #[serde(default = "default_limiter_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    failure_mode: FailureMode,
    #[serde(default = "default_true")]
    reservations: bool,
    #[serde(default = "default_reservation_ttl_ms")]
    reservation_ttl_ms: u64,
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

/// Long enough for nearly every generation; one that runs longer is still
/// counted exactly (a late commit counts as a report), only without its
/// hold for the rest of its run.
fn default_reservation_ttl_ms() -> u64 {
    120_000
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
struct RawControlPlane {
    /// The Envoy cluster that reaches the control plane.
    cluster: String,
    /// `:authority` of the calls (the control plane does not look at it, a
    /// mesh's routing may).
    #[serde(default)]
    authority: Option<String>,
    /// The control plane's gateway token (its `gateway-token` file).
    token: String,
    /// How often the gateway asks for changes. A revoked key stops working
    /// within about this long (plus one round trip).
    #[serde(default = "default_sync_interval_ms")]
    sync_interval_ms: u64,
    /// Deadline of one sync or lookup call.
    #[serde(default = "default_call_timeout_ms")]
    timeout_ms: u64,
    /// Keys per sync answer: a full sync of many keys comes in pages, so no
    /// single callback parses (and holds in wasm memory) all of them.
    #[serde(default = "default_sync_page_keys")]
    sync_page_keys: u64,
    /// Lookups of never-seen key ids, for all workers together: a client
    /// sending random ids cannot turn the gateway into a load generator
    /// against the control plane.
    #[serde(default = "default_lookups_per_second")]
    lookups_per_second: u64,
    /// How long "no such key" from a lookup is remembered.
    #[serde(default = "default_negative_cache_ms")]
    negative_cache_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    models: Vec<String>,
    /// Shared by all keys of the subscription. Required: say `"unlimited"`
    /// explicitly rather than forget a limit.
    limits: RawLimits,
    /// Applied to each key of the subscription separately, or to each
    /// owner's keys together (`key_limits_per`).
    #[serde(default)]
    key_limits: Option<RawLimits>,
    #[serde(default)]
    key_limits_per: KeyLimitsPer,
    /// The most live (neither revoked nor expired) keys one owner may hold
    /// in this subscription. The control plane enforces it when it mints;
    /// the gateway only validates it, so the two agree on what is valid.
    #[serde(default = "default_max_keys_per_owner")]
    max_keys_per_owner: u64,
    #[serde(default)]
    max_tokens: Option<MaxTokensPolicy>,
    /// OIDC groups whose members use this subscription with a bearer token
    /// instead of a key (see `oidc`).
    #[serde(default)]
    groups: Vec<String>,
}

/// Enough for a person's laptop, CI, a few services and a rotation (old
/// and new key live together); few enough that per-key limits times keys
/// stays near the per-key limits. With `key_limits_per: "owner"` the count
/// no longer multiplies limits and only bounds key sprawl.
pub const DEFAULT_MAX_KEYS_PER_OWNER: u64 = 10;

/// A cap above this is a typo, or a wish for no cap, which per-owner
/// limits express better.
pub const MAX_KEYS_PER_OWNER_LIMIT: u64 = 1000;

fn default_max_keys_per_owner() -> u64 {
    DEFAULT_MAX_KEYS_PER_OWNER
}

/// Whom a subscription's `key_limits` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyLimitsPer {
    /// Each key has its own counters (`maas/key/<id>`; limiter descriptor
    /// `key: <id>`): an owner with N keys gets N times the limits, up to
    /// `max_keys_per_owner`.
    #[default]
    Key,
    /// All keys of one owner share the owner's counters, the ones the
    /// owner's OIDC token counts against too (`maas/user/<subscription>/<owner>`;
    /// descriptor `key: user:<owner>`): more keys buy no more.
    Owner,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLimits {
    Keyword(String),
    Rates(RawRates),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRates {
    #[serde(default)]
    requests: Vec<RawRate>,
    #[serde(default)]
    tokens: Vec<RawRate>,
}

/// `"20000/min"` (kept in this Envoy's shared data) or
/// `{"rate": "20000/min", "mode": "global"}` (kept by the limiter service).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRate {
    Local(String),
    Spec(RawRateSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateSpec {
    rate: String,
    #[serde(default)]
    mode: LimitMode,
    #[serde(default)]
    failure_mode: Option<FailureMode>,
}

/// Where a limit's counter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LimitMode {
    /// Shared data: exact across one Envoy's workers.
    #[default]
    Local,
    /// The limiter service: shared by every gateway that uses it.
    Global,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    owner: String,
    subscription: String,
    sha256: String,
    #[serde(default)]
    expires_at: Option<RawExpiry>,
    #[serde(default)]
    revoked: bool,
    /// Overrides the subscription's `key_limits` for this key.
    #[serde(default)]
    limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawExpiry {
    UnixSeconds(u64),
    Rfc3339(String),
}

/// What to do with a request whose `max_tokens` exceeds the subscription's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxTokensPolicy {
    pub cap: u64,
    #[serde(default)]
    pub mode: CapMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CapMode {
    /// Lower `max_tokens` to the cap and let the request through.
    #[default]
    Clamp,
    /// Refuse the request with 400.
    Reject,
}

/// What a limit counts. OpenAI reports it as the error `type` of a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantity {
    Requests,
    Tokens,
}

impl Quantity {
    pub fn as_str(self) -> &'static str {
        match self {
            Quantity::Requests => "requests",
            Quantity::Tokens => "tokens",
        }
    }

    /// This quantity's share of a request that is `requests` requests and `tokens` tokens.
    pub fn of(self, requests: u64, tokens: u64) -> u64 {
        match self {
            Quantity::Requests => requests,
            Quantity::Tokens => tokens,
        }
    }
}

/// The configured limits of one scope (a subscription or a key), kept in one
/// shared-data counter with one window per rate.
#[derive(Debug, Clone)]
pub struct ScopeLimits {
    /// Rates in configuration order: requests, then tokens.
    pub group: LimitGroup,
    /// What each rate of `group` counts, index for index.
    pub quantities: Vec<Quantity>,
    /// For messages: "subscription free" or "key alice-1".
    pub scope: String,
    /// Limits kept by the limiter service instead of `group`.
    pub global: Vec<GlobalRate>,
}

impl ScopeLimits {
    /// "unlimited": nothing to reserve.
    pub fn unlimited(counter_key: &str, scope: &str) -> Self {
        ScopeLimits {
            group: LimitGroup {
                counter_key: counter_key.to_string(),
                rates: Vec::new(),
            },
            quantities: Vec::new(),
            scope: scope.to_string(),
            global: Vec::new(),
        }
    }

    /// No local limits (global ones may remain: see [`Self::global`]).
    pub fn is_empty(&self) -> bool {
        self.quantities.is_empty()
    }

    /// The global limits counting `quantity`.
    pub fn global_of(&self, quantity: Quantity) -> impl Iterator<Item = &GlobalRate> {
        self.global.iter().filter(move |g| g.quantity == quantity)
    }

    pub fn len(&self) -> usize {
        self.quantities.len()
    }

    /// The amount to reserve or charge per rate, given one request's quantities.
    pub fn amounts(&self, requests: u64, tokens: u64) -> Vec<u64> {
        let amount = |q: &Quantity| q.of(requests, tokens);
        self.quantities.iter().map(amount).collect()
    }
}

#[derive(Debug)]
pub struct Subscription {
    /// Shared with the metrics that carry it as a label.
    pub name: Rc<str>,
    /// Sorted, so `/v1/models` lists them in a stable order.
    pub models: Vec<String>,
    pub limits: ScopeLimits,
    /// The limits each key (or owner, see `key_limits_per`) of the
    /// subscription gets on its own, as a template:
    /// [`Subscription::holder_limits`] gives a request its counter.
    pub key_limits: Option<ScopeLimits>,
    pub key_limits_per: KeyLimitsPer,
    pub max_tokens: Option<MaxTokensPolicy>,
    /// OIDC groups that use this subscription (sorted).
    pub groups: Vec<String>,
}

/// Counter prefix of a `key_limits` template; replaced by the key's own.
const KEY_TEMPLATE_PREFIX: &str = "maas/key/-";

/// Whose `key_limits` a request counts against.
enum Holder<'a> {
    Key(&'a str),
    User(&'a str),
}

impl Subscription {
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .binary_search_by(|m| m.as_str().cmp(model))
            .is_ok()
    }

    /// The `key_limits` a request counts against: those of key `key_id`,
    /// or, for a token holder (`key_id` `None`) and for any key under
    /// `key_limits_per: "owner"`, those of user `user` (the key's owner).
    pub fn holder_limits(&self, key_id: Option<&str>, user: &str) -> ScopeLimits {
        match self.holder(key_id, user) {
            Holder::Key(id) => self.key_limits_for(id),
            Holder::User(user) => self.user_limits_for(user),
        }
    }

    /// The limiter descriptor's `key` entry for the same holder as
    /// [`Subscription::holder_limits`]: the key id, or `user:<name>` (key
    /// ids never contain ':').
    pub fn holder_descriptor(&self, key_id: Option<&str>, user: &str) -> String {
        match self.holder(key_id, user) {
            Holder::Key(id) => id.to_string(),
            Holder::User(user) => format!("user:{user}"),
        }
    }

    /// The one place that decides who a request's own limits count, so the
    /// local counter and the limiter's descriptor cannot disagree.
    fn holder<'a>(&self, key_id: Option<&'a str>, user: &'a str) -> Holder<'a> {
        match (key_id, self.key_limits_per) {
            (Some(id), KeyLimitsPer::Key) => Holder::Key(id),
            _ => Holder::User(user),
        }
    }

    /// The per-key limits of key `id` under this subscription.
    pub fn key_limits_for(&self, id: &str) -> ScopeLimits {
        self.own_limits(&format!("maas/key/{id}"), &format!("key {id}"))
    }

    /// The same per-key limits for a token-authenticated user: each user
    /// counts like one key.
    pub fn user_limits_for(&self, user: &str) -> ScopeLimits {
        // Per subscription: a user of two subscriptions gets each one's
        // per-key budget, as a key would.
        self.own_limits(
            &format!("maas/user/{}/{user}", self.name),
            &format!("user {user}"),
        )
    }

    fn own_limits(&self, prefix: &str, scope: &str) -> ScopeLimits {
        match &self.key_limits {
            None => ScopeLimits::unlimited(prefix, scope),
            Some(t) => {
                let layout = t
                    .group
                    .counter_key
                    .strip_prefix(KEY_TEMPLATE_PREFIX)
                    .unwrap_or_default();
                let mut limits = t.clone();
                limits.group.counter_key = format!("{prefix}{layout}");
                limits.scope = scope.to_string();
                limits
            }
        }
    }
}

/// The control plane the filter syncs managed keys and subscriptions from.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub cluster: String,
    pub authority: String,
    pub token: String,
    pub sync_interval_ms: u64,
    pub timeout_ms: u64,
    pub sync_page_keys: u64,
    pub lookups_per_second: u64,
    pub negative_cache_ms: u64,
}

#[derive(Debug)]
pub struct Config {
    pub max_body_bytes: usize,
    pub default_max_tokens: u64,
    pub prompt_bytes_per_token: u64,
    /// Every model the gateway routes, sorted.
    pub models: Vec<String>,
    /// Configured here; the control plane may add and override them.
    pub subscriptions: Vec<Rc<Subscription>>,
    pub keys: KeyStore,
    pub control_plane: Option<ControlPlane>,
    pub oidc: Option<Oidc>,
    pub limiter: Option<Limiter>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid filter configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Names that end up in headers, metric names and shared-data keys.
fn check_name(field: &str, value: &str, extra: &[char]) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > 128 {
        return Err(err(field, "must be 1 to 128 characters"));
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c) || extra.contains(c)))
    {
        Some(c) => Err(err(
            field,
            format!("character {c:?} is not allowed (use letters, digits, '-', '_', '.')"),
        )),
        None => Ok(()),
    }
}

impl Config {
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            // serde's message names the unknown or mistyped field.
            err("(document)", e.to_string())
        })?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        if raw.max_body_bytes == 0 {
            return Err(err("max_body_bytes", "must be at least 1"));
        }
        if raw.default_max_tokens == 0 {
            return Err(err("default_max_tokens", "must be at least 1"));
        }
        if raw.prompt_bytes_per_token == 0 {
            return Err(err("prompt_bytes_per_token", "must be at least 1"));
        }
        let mut models = BTreeSet::new();
        for (i, m) in raw.models.iter().enumerate() {
            // Model ids like "org/model:tag" are common; ';' and '=' would break
            // the metric tag encoding and stay out.
            check_name(&format!("models[{i}]"), m, &['/', ':'])?;
            if !models.insert(m.clone()) {
                return Err(err(
                    format!("models[{i}]"),
                    format!("duplicate model {m:?}"),
                ));
            }
        }
        if models.is_empty() {
            return Err(err("models", "at least one model is required"));
        }

        let mut subscriptions = Vec::with_capacity(raw.subscriptions.len());
        for (name, sub) in &raw.subscriptions {
            let field = format!("subscriptions.{name}");
            subscriptions.push(Rc::new(build_subscription(
                &field,
                name,
                sub,
                &models,
                UnknownModels::Refuse,
            )?));
        }

        let mut keys = Vec::with_capacity(raw.keys.len());
        let mut ids = HashSet::new();
        for (i, k) in raw.keys.iter().enumerate() {
            let field = format!("keys[{i}]");
            check_name(&format!("{field}.id"), &k.id, &[])?;
            if !ids.insert(k.id.as_str()) {
                return Err(err(
                    format!("{field}.id"),
                    format!("duplicate key id {:?}", k.id),
                ));
            }
            if k.owner.is_empty()
                || k.owner.len() > 256
                || k.owner.chars().any(|c| c.is_control() || !c.is_ascii())
            {
                return Err(err(
                    format!("{field}.owner"),
                    "must be 1 to 256 printable ASCII characters (it is sent as a header)",
                ));
            }
            let sub_index = subscriptions
                .iter()
                .position(|s| *s.name == *k.subscription)
                .ok_or_else(|| {
                    err(
                        format!("{field}.subscription"),
                        format!("unknown subscription {:?}", k.subscription),
                    )
                })?;
            let digest = KeyDigest::from_hex(&k.sha256).ok_or_else(|| {
                err(
                    format!("{field}.sha256"),
                    "must be 64 hex characters (SHA-256 of the key)",
                )
            })?;
            let expires_at = match &k.expires_at {
                None => None,
                Some(RawExpiry::UnixSeconds(s)) => Some(*s),
                Some(RawExpiry::Rfc3339(s)) => Some(parse_rfc3339_utc(s).ok_or_else(|| {
                    err(
                        format!("{field}.expires_at"),
                        "must be Unix seconds or an RFC 3339 UTC time like 2027-01-01T00:00:00Z",
                    )
                })?),
            };
            let limits = match (&k.limits, subscriptions.get(sub_index)) {
                (Some(own), _) => {
                    let own = limit_rules(
                        &format!("{field}.limits"),
                        own,
                        &format!("maas/key/{}", k.id),
                        &format!("key {}", k.id),
                    )?;
                    // The limiter's limits are per subscription (one
                    // counter per key): a single key's override has no
                    // limit there to count against, and under global
                    // key_limits the limiter would still count the key
                    // against them.
                    if !own.global.is_empty() {
                        return Err(err(
                            format!("{field}.limits"),
                            "a key's own limits are local; give the subscription global key_limits instead",
                        ));
                    }
                    let sub_global = subscriptions
                        .get(sub_index)
                        .and_then(|s| s.key_limits.as_ref())
                        .is_some_and(|k| !k.global.is_empty());
                    if sub_global {
                        return Err(err(
                            format!("{field}.limits"),
                            "the subscription's key_limits are global, and the limiter applies them to every key: a key cannot override them",
                        ));
                    }
                    own
                }
                (None, Some(sub)) => sub.holder_limits(Some(&k.id), &k.owner),
                (None, None) => {
                    ScopeLimits::unlimited(&format!("maas/key/{}", k.id), &format!("key {}", k.id))
                }
            };
            keys.push(ApiKey {
                id: k.id.clone(),
                owner: k.owner.clone(),
                subscription: sub_index,
                digest,
                expires_at,
                revoked: k.revoked,
                limits: Rc::new(limits),
            });
        }
        let keys = KeyStore::new(keys).map_err(|dup| {
            err(
                format!("keys[{dup}].sha256"),
                "the same key hash appears twice",
            )
        })?;

        let control_plane = raw.control_plane.map(|c| control_plane(&c)).transpose()?;
        let limiter = raw.limiter.as_ref().map(limiter).transpose()?;
        if limiter.is_none() {
            if let Some(s) = subscriptions.iter().find(|s| has_global(s)) {
                return Err(err(
                    format!("subscriptions.{}", s.name),
                    "has global limits but no `limiter` is configured",
                ));
            }
        }

        if let Some(o) = &raw.oidc {
            for (field, value) in [
                ("oidc.metadata_namespace", &o.metadata_namespace),
                ("oidc.payload_key", &o.payload_key),
                ("oidc.user_claim", &o.user_claim),
                ("oidc.groups_claim", &o.groups_claim),
            ] {
                check_name(field, value, &[])?;
            }
        }

        Ok(Config {
            oidc: raw.oidc,
            control_plane,
            limiter,
            max_body_bytes: raw.max_body_bytes,
            default_max_tokens: raw.default_max_tokens,
            prompt_bytes_per_token: raw.prompt_bytes_per_token,
            models: models.into_iter().collect(),
            subscriptions,
            keys,
        })
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

/// What a subscription naming a model the gateway does not route gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnknownModels {
    /// In the configuration: a typo, refused.
    Refuse,
    /// From the control plane, which serves many gateways: not routed here,
    /// left out.
    Skip,
}

fn build_subscription(
    field: &str,
    name: &str,
    sub: &RawSubscription,
    models: &BTreeSet<String>,
    unknown: UnknownModels,
) -> Result<Subscription, ConfigError> {
    check_name(field, name, &[])?;
    let mut sub_models = Vec::with_capacity(sub.models.len());
    for (i, m) in sub.models.iter().enumerate() {
        if models.contains(m) {
            sub_models.push(m.clone());
        } else if unknown == UnknownModels::Refuse {
            return Err(err(
                format!("{field}.models[{i}]"),
                format!("model {m:?} is not in the top-level `models` list"),
            ));
        }
    }
    sub_models.sort();
    sub_models.dedup();
    if let Some(policy) = &sub.max_tokens {
        if policy.cap == 0 {
            return Err(err(format!("{field}.max_tokens.cap"), "must be at least 1"));
        }
    }
    if !(1..=MAX_KEYS_PER_OWNER_LIMIT).contains(&sub.max_keys_per_owner) {
        return Err(err(
            format!("{field}.max_keys_per_owner"),
            format!("must be between 1 and {MAX_KEYS_PER_OWNER_LIMIT}"),
        ));
    }
    let scope = format!("subscription {name}");
    let limits = limit_rules(
        &format!("{field}.limits"),
        &sub.limits,
        &format!("maas/sub/{name}"),
        &scope,
    )?;
    // Validated once, here, so a bad template is reported at the
    // subscription rather than at every key.
    let key_limits = sub
        .key_limits
        .as_ref()
        .map(|t| {
            limit_rules(
                &format!("{field}.key_limits"),
                t,
                KEY_TEMPLATE_PREFIX,
                "key",
            )
        })
        .transpose()?
        .filter(|l| !l.is_empty() || !l.global.is_empty());
    let mut groups = sub.groups.clone();
    for (i, g) in groups.iter().enumerate() {
        if g.is_empty() || g.len() > 256 || g.chars().any(char::is_control) {
            return Err(err(
                format!("{field}.groups[{i}]"),
                "must be 1 to 256 characters without control characters",
            ));
        }
    }
    groups.sort();
    groups.dedup();
    Ok(Subscription {
        name: Rc::from(name),
        models: sub_models,
        limits,
        key_limits,
        key_limits_per: sub.key_limits_per,
        max_tokens: sub.max_tokens,
        groups,
    })
}

/// A subscription as the control plane sends it: the configuration's shape
/// plus `name`. Models this gateway does not route are left out.
pub fn synced_subscription(
    value: &serde_json::Value,
    models: &[String],
) -> Result<Subscription, ConfigError> {
    let name = value
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| err("name", "a synced subscription needs a string `name`"))?
        .to_string();
    let mut spec = value.clone();
    if let Some(map) = spec.as_object_mut() {
        map.remove("name");
    }
    let field = format!("subscriptions.{name}");
    let raw: RawSubscription =
        serde_json::from_value(spec).map_err(|e| err(&field, e.to_string()))?;
    let models: BTreeSet<String> = models.iter().cloned().collect();
    let sub = build_subscription(&field, &name, &raw, &models, UnknownModels::Skip)?;
    // The limiter's limits file is rendered from the configuration; a
    // global limit arriving from the control plane would have no limit there.
    if has_global(&sub) {
        return Err(err(
            &field,
            "global limits are set in the gateway's configuration, not synced",
        ));
    }
    Ok(sub)
}

fn has_global(sub: &Subscription) -> bool {
    !sub.limits.global.is_empty()
        || sub
            .key_limits
            .as_ref()
            .is_some_and(|k| !k.global.is_empty())
}

fn control_plane(raw: &RawControlPlane) -> Result<ControlPlane, ConfigError> {
    check_name("control_plane.cluster", &raw.cluster, &[':'])?;
    if raw.token.trim().is_empty() || raw.token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(err(
            "control_plane.token",
            "must be the control plane's gateway token (printable ASCII, no spaces)",
        ));
    }
    let authority = raw.authority.clone().unwrap_or_else(|| raw.cluster.clone());
    check_name("control_plane.authority", &authority, &[':'])?;
    let range = |field: &str, value: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&value) {
            Ok(value)
        } else {
            Err(err(
                format!("control_plane.{field}"),
                format!("must be between {lo} and {hi}"),
            ))
        }
    };
    Ok(ControlPlane {
        cluster: raw.cluster.clone(),
        authority,
        token: raw.token.clone(),
        sync_interval_ms: range("sync_interval_ms", raw.sync_interval_ms, 50, 600_000)?,
        timeout_ms: range("timeout_ms", raw.timeout_ms, 10, 60_000)?,
        sync_page_keys: range("sync_page_keys", raw.sync_page_keys, 1, 50_000)?,
        lookups_per_second: range("lookups_per_second", raw.lookups_per_second, 0, 100_000)?,
        negative_cache_ms: range("negative_cache_ms", raw.negative_cache_ms, 0, 600_000)?,
    })
}

fn limiter(raw: &RawLimiter) -> Result<Limiter, ConfigError> {
    check_name("limiter.cluster", &raw.cluster, &[':', '|'])?;
    check_name("limiter.domain", &raw.domain, &[])?;
    if !(1..=60_000).contains(&raw.timeout_ms) {
        return Err(err("limiter.timeout_ms", "must be between 1 and 60000"));
    }
    if !(1_000..=86_400_000).contains(&raw.reservation_ttl_ms) {
        return Err(err(
            "limiter.reservation_ttl_ms",
            "must be between 1000 and 86400000",
        ));
    }
    Ok(Limiter {
        cluster: raw.cluster.clone(),
        domain: raw.domain.clone(),
        timeout_ms: raw.timeout_ms,
        failure_mode: raw.failure_mode,
        reservations: raw.reservations,
        reservation_ttl_ms: raw.reservation_ttl_ms,
    })
}

fn limit_rules(
    field: &str,
    raw: &RawLimits,
    counter_prefix: &str,
    scope: &str,
) -> Result<ScopeLimits, ConfigError> {
    let rates = match raw {
        RawLimits::Keyword(k) if k == "unlimited" => {
            return Ok(ScopeLimits::unlimited(counter_prefix, scope))
        }
        RawLimits::Keyword(k) => {
            return Err(err(
                field,
                format!(
                "expected \"unlimited\" or {{\"requests\": [...], \"tokens\": [...]}}, got {k:?}"
            ),
            ))
        }
        RawLimits::Rates(r) => r,
    };
    let mut rules = ScopeLimits::unlimited(counter_prefix, scope);
    for (quantity, list) in [
        (Quantity::Requests, &rates.requests),
        (Quantity::Tokens, &rates.tokens),
    ] {
        let name = quantity.as_str();
        let mut windows = HashSet::new();
        for (i, raw_rate) in list.iter().enumerate() {
            let f = format!("{field}.{name}[{i}]");
            let (text, mode, failure_mode) = match raw_rate {
                RawRate::Local(text) => (text, LimitMode::Local, None),
                RawRate::Spec(s) => (&s.rate, s.mode, s.failure_mode),
            };
            let rate: Rate = text.parse().map_err(|e| err(&f, format!("{e}")))?;
            // A local and a global limit may share a window (a per-gateway
            // burst limit under a shared cap); two of one kind may not.
            if !windows.insert((mode, rate.window_secs)) {
                return Err(err(
                    f,
                    format!("a second {name} limit with the same window as {text:?}"),
                ));
            }
            match mode {
                LimitMode::Local if failure_mode.is_some() => {
                    return Err(err(
                        format!("{f}.failure_mode"),
                        "only a global limit has a failure mode",
                    ))
                }
                LimitMode::Local => {
                    rules.group.rates.push(rate);
                    rules.quantities.push(quantity);
                }
                LimitMode::Global => rules.global.push(GlobalRate {
                    quantity,
                    rate,
                    failure_mode,
                }),
            }
        }
    }
    if rules.is_empty() && rules.global.is_empty() {
        return Err(err(
            field,
            "no limits given; write \"unlimited\" if that is intended",
        ));
    }
    // The group's value holds one window per rate, in this order; naming the
    // layout in the key means a reloaded configuration that reorders or
    // changes the windows starts fresh counters instead of reading old
    // windows under the wrong rates. (Changing only an amount keeps them.)
    let layout: Vec<String> = rules
        .quantities
        .iter()
        .zip(&rules.group.rates)
        .map(|(q, r)| match q {
            Quantity::Requests => format!("r{}", r.window_secs),
            Quantity::Tokens => format!("t{}", r.window_secs),
        })
        .collect();
    rules.group.counter_key = format!("{counter_prefix}/{}", layout.join("."));
    Ok(rules)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (optionally with fractional seconds) → Unix seconds.
/// Only UTC: an offset would be one more thing to get wrong in a key expiry.
pub fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix('z'))?;
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let time = time.split('.').next()?;
    let num = |p: &str, len: usize| -> Option<u64> {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (y, mo, da) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    let mut t = time.split(':');
    let (h, mi, se) = (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if da == 0 || da > *month_days.get((mo - 1) as usize)? {
        return None;
    }
    let days_before_year: u64 = (1970..y)
        .map(|yy| {
            if (yy % 4 == 0 && yy % 100 != 0) || yy % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum();
    let days_before_month: u64 = month_days.iter().take((mo - 1) as usize).sum();
    let days = days_before_year + days_before_month + da - 1;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HASH: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn base() -> serde_json::Value {
        json!({
            "models": ["m1", "org/m2:q4"],
            "subscriptions": {
                "free": {
                    "models": ["m1"],
                    "limits": {"requests": ["10/min"], "tokens": ["20000/min", "1000000/day"]},
                    "key_limits": {"requests": ["5/min"]},
                    "max_tokens": {"cap": 512}
                },
                "gold": {"models": ["m1", "org/m2:q4"], "limits": "unlimited"}
            },
            "keys": [
                {"id": "k1", "owner": "alice", "subscription": "free", "sha256": HASH,
                 "expires_at": "2027-01-01T00:00:00Z"},
                {"id": "k2", "owner": "bob", "subscription": "gold",
                 "sha256": HASH.replace('2', "3"), "revoked": true}
            ]
        })
    }

    fn load(v: &serde_json::Value) -> Result<Config, ConfigError> {
        Config::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn loads_a_full_configuration() {
        let c = load(&base()).unwrap();
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.default_max_tokens, 4096);
        assert_eq!(c.models, vec!["m1", "org/m2:q4"]);
        let free = &c.subscriptions[0];
        assert_eq!(&*free.name, "free");
        assert_eq!(free.limits.len(), 3);
        assert_eq!(
            free.limits.group.counter_key,
            "maas/sub/free/r60.t60.t86400"
        );
        assert_eq!(free.limits.quantities[1], Quantity::Tokens);
        assert_eq!(free.limits.group.rates[1].window_secs, 60);
        assert_eq!(free.limits.group.rates[2].window_secs, 86_400);
        assert_eq!(free.max_tokens.unwrap().mode, CapMode::Clamp);
        assert!(c.subscriptions[1].limits.is_empty());
        let k1 = c.keys.iter().next().unwrap();
        assert_eq!(k1.expires_at, Some(1_798_761_600));
        assert_eq!(k1.limits.len(), 1, "inherits the subscription's key_limits");
        assert_eq!(k1.limits.group.counter_key, "maas/key/k1/r60");
        assert_eq!(k1.limits.quantities, [Quantity::Requests]);
        assert_eq!(c.all_limits().count(), 2, "one counter per limited scope");
        assert_eq!(c.all_limits().map(ScopeLimits::len).sum::<usize>(), 4);
    }

    #[test]
    fn errors_name_the_field() {
        type Mutation = fn(&mut serde_json::Value);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |v| v["subscriptions"]["free"]["limits"]["tokens"][1] = json!("5/fortnight"),
                "subscriptions.free.limits.tokens[1]",
            ),
            (
                |v| v["subscriptions"]["free"]["limits"] = json!("infinite"),
                "subscriptions.free.limits",
            ),
            (
                |v| v["subscriptions"]["free"]["limits"] = json!({}),
                "subscriptions.free.limits",
            ),
            (
                |v| v["subscriptions"]["free"]["limits"]["requests"] = json!(["1/min", "2/60s"]),
                "subscriptions.free.limits.requests[1]",
            ),
            (
                |v| v["subscriptions"]["free"]["models"] = json!(["nope"]),
                "subscriptions.free.models[0]",
            ),
            (
                |v| v["subscriptions"]["free"]["max_tokens"]["cap"] = json!(0),
                "subscriptions.free.max_tokens.cap",
            ),
            (|v| v["keys"][0]["sha256"] = json!("abc"), "keys[0].sha256"),
            (
                |v| v["keys"][0]["subscription"] = json!("silver"),
                "keys[0].subscription",
            ),
            (
                |v| v["keys"][0]["expires_at"] = json!("tomorrow"),
                "keys[0].expires_at",
            ),
            (|v| v["keys"][1]["id"] = json!("k1"), "keys[1].id"),
            (|v| v["keys"][1]["sha256"] = json!(HASH), "keys[1].sha256"),
            (
                |v| v["keys"][0]["owner"] = json!("a\r\nx-maas-user: root"),
                "keys[0].owner",
            ),
            (|v| v["keys"][0]["id"] = json!("k;1"), "keys[0].id"),
            (|v| v["models"] = json!(["a;b"]), "models[0]"),
            (|v| v["models"] = json!([]), "models"),
            (|v| v["max_body_bytes"] = json!(0), "max_body_bytes"),
            (
                |v| v["subscriptions"]["free"]["max_keys_per_owner"] = json!(0),
                "subscriptions.free.max_keys_per_owner",
            ),
            (
                |v| v["subscriptions"]["free"]["max_keys_per_owner"] = json!(1001),
                "subscriptions.free.max_keys_per_owner",
            ),
        ];
        for (mutate, field) in cases {
            let mut v = base();
            mutate(&mut v);
            let e = load(&v).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let mut v = base();
        v["subscriptions"]["free"]["limit"] = json!("unlimited");
        let e = load(&v).unwrap_err();
        assert!(e.reason.contains("limit"), "{e}");
        let e = Config::from_json(b"{not json").unwrap_err();
        assert_eq!(e.field, "(document)");
    }

    #[test]
    fn key_limits_count_per_key_or_per_owner() {
        let mut v = base();
        v["keys"][1] = json!({"id": "k3", "owner": "alice", "subscription": "free",
                               "sha256": HASH.replace('2', "3")});
        let keys = |c: &Config| -> Vec<String> {
            c.keys
                .iter()
                .map(|k| k.limits.group.counter_key.clone())
                .collect()
        };
        // Default: one counter per key, and the limiter counts each key.
        let c = load(&v).unwrap();
        let free = &c.subscriptions[0];
        assert_eq!(free.key_limits_per, KeyLimitsPer::Key);
        assert_eq!(keys(&c), ["maas/key/k1/r60", "maas/key/k3/r60"]);
        assert_eq!(free.holder_descriptor(Some("k1"), "alice"), "k1");
        assert_eq!(free.holder_descriptor(None, "alice"), "user:alice");
        // Per owner: alice's keys share her counter, the one her token uses.
        v["subscriptions"]["free"]["key_limits_per"] = json!("owner");
        let c = load(&v).unwrap();
        let free = &c.subscriptions[0];
        assert_eq!(
            keys(&c),
            ["maas/user/free/alice/r60", "maas/user/free/alice/r60"]
        );
        assert_eq!(
            free.holder_limits(None, "alice").group.counter_key,
            "maas/user/free/alice/r60"
        );
        assert_eq!(free.holder_descriptor(Some("k1"), "alice"), "user:alice");
        assert_eq!(free.holder_limits(Some("k1"), "alice").scope, "user alice");
        // Anything else is refused, naming the field.
        v["subscriptions"]["free"]["key_limits_per"] = json!("team");
        let e = load(&v).unwrap_err();
        assert!(e.reason.contains("team"), "{e}");
    }

    #[test]
    fn max_keys_per_owner_defaults_and_is_bounded() {
        let mut v = base();
        assert!(load(&v).is_ok(), "default {DEFAULT_MAX_KEYS_PER_OWNER}");
        for (cap, ok) in [(1, true), (MAX_KEYS_PER_OWNER_LIMIT, true), (0, false)] {
            v["subscriptions"]["free"]["max_keys_per_owner"] = json!(cap);
            assert_eq!(load(&v).is_ok(), ok, "{cap}");
        }
        v["subscriptions"]["free"]["max_keys_per_owner"] = json!(-1);
        assert!(load(&v).is_err());
    }

    #[test]
    fn key_limits_can_be_overridden_per_key() {
        let mut v = base();
        v["keys"][0]["limits"] = json!({"tokens": ["100/10s"]});
        let c = load(&v).unwrap();
        let k1 = c.keys.iter().next().unwrap();
        assert_eq!(k1.limits.len(), 1);
        assert_eq!(k1.limits.quantities, [Quantity::Tokens]);
        assert_eq!(k1.limits.group.rates[0].window_secs, 10);
        assert_eq!(k1.limits.group.counter_key, "maas/key/k1/t10");
    }

    #[test]
    fn counter_keys_name_the_window_layout() {
        // Reordering a scope's limits must not read old windows under the
        // wrong rates: the key changes with the layout, not with amounts.
        let key_of = |limits: serde_json::Value| {
            let mut v = base();
            v["subscriptions"]["free"]["limits"] = limits;
            load(&v).unwrap().subscriptions[0]
                .limits
                .group
                .counter_key
                .clone()
        };
        let a = key_of(json!({"tokens": ["100/min", "1000/day"]}));
        let b = key_of(json!({"tokens": ["1000/day", "100/min"]}));
        let c = key_of(json!({"tokens": ["500/min", "9000/day"]}));
        assert_ne!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn rfc3339_parsing() {
        for (s, want) in [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2000-02-29T12:00:00Z", Some(951_825_600)),
            ("2027-01-01T00:00:00.123Z", Some(1_798_761_600)),
            ("2001-02-29T00:00:00Z", None),
            ("2027-01-01T00:00:00+02:00", None),
            ("2027-1-01T00:00:00Z", None),
            ("2027-01-01", None),
            ("", None),
        ] {
            assert_eq!(parse_rfc3339_utc(s), want, "{s}");
        }
    }
}
