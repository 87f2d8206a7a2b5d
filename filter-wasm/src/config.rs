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

use crate::keys::{ApiKey, KeyDigest, KeyStore};
use crate::limits::{LimitGroup, Rate};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};

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
    #[serde(default = "default_prompt_bytes_per_token")]
    prompt_bytes_per_token: u64,
    models: Vec<String>,
    subscriptions: BTreeMap<String, RawSubscription>,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    models: Vec<String>,
    /// Shared by all keys of the subscription. Required: say `"unlimited"`
    /// explicitly rather than forget a limit.
    limits: RawLimits,
    /// Applied to each key of the subscription separately.
    #[serde(default)]
    key_limits: Option<RawLimits>,
    #[serde(default)]
    max_tokens: Option<MaxTokensPolicy>,
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
    requests: Vec<String>,
    #[serde(default)]
    tokens: Vec<String>,
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
        }
    }

    pub fn is_empty(&self) -> bool {
        self.quantities.is_empty()
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
    pub name: String,
    /// Sorted, so `/v1/models` lists them in a stable order.
    pub models: Vec<String>,
    pub limits: ScopeLimits,
    pub max_tokens: Option<MaxTokensPolicy>,
}

impl Subscription {
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .binary_search_by(|m| m.as_str().cmp(model))
            .is_ok()
    }
}

#[derive(Debug)]
pub struct Config {
    pub max_body_bytes: usize,
    pub default_max_tokens: u64,
    pub prompt_bytes_per_token: u64,
    /// Every model the gateway routes, sorted.
    pub models: Vec<String>,
    pub subscriptions: Vec<Subscription>,
    pub keys: KeyStore,
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
        let mut key_limit_templates = Vec::with_capacity(raw.subscriptions.len());
        for (name, sub) in &raw.subscriptions {
            let field = format!("subscriptions.{name}");
            check_name(&field, name, &[])?;
            let mut sub_models = Vec::with_capacity(sub.models.len());
            for (i, m) in sub.models.iter().enumerate() {
                if !models.contains(m) {
                    return Err(err(
                        format!("{field}.models[{i}]"),
                        format!("model {m:?} is not in the top-level `models` list"),
                    ));
                }
                sub_models.push(m.clone());
            }
            sub_models.sort();
            sub_models.dedup();
            if let Some(policy) = &sub.max_tokens {
                if policy.cap == 0 {
                    return Err(err(format!("{field}.max_tokens.cap"), "must be at least 1"));
                }
            }
            let scope = format!("subscription {name}");
            let limits = limit_rules(
                &format!("{field}.limits"),
                &sub.limits,
                &format!("maas/sub/{name}"),
                &scope,
            )?;
            // Validate the per-key template once, here, so a bad one is
            // reported at the subscription rather than at every key.
            if let Some(tmpl) = &sub.key_limits {
                limit_rules(&format!("{field}.key_limits"), tmpl, "maas/key/-", "key")?;
            }
            key_limit_templates.push(sub.key_limits.as_ref());
            subscriptions.push(Subscription {
                name: name.clone(),
                models: sub_models,
                limits,
                max_tokens: sub.max_tokens,
            });
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
                .position(|s| s.name == k.subscription)
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
            let template = match &k.limits {
                Some(own) => Some((format!("{field}.limits"), own)),
                None => key_limit_templates
                    .get(sub_index)
                    .copied()
                    .flatten()
                    .map(|t| {
                        (
                            format!("{field}.limits (from its subscription's key_limits)"),
                            t,
                        )
                    }),
            };
            let limits = match template {
                Some((f, t)) => limit_rules(
                    &f,
                    t,
                    &format!("maas/key/{}", k.id),
                    &format!("key {}", k.id),
                )?,
                None => {
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
                limits,
            });
        }
        let keys = KeyStore::new(keys).map_err(|dup| {
            err(
                format!("keys[{dup}].sha256"),
                "the same key hash appears twice",
            )
        })?;

        Ok(Config {
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
            .chain(self.keys.iter().map(|k| &k.limits))
            .filter(|l| !l.is_empty())
    }
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
        for (i, text) in list.iter().enumerate() {
            let f = format!("{field}.{name}[{i}]");
            let rate: Rate = text.parse().map_err(|e| err(&f, format!("{e}")))?;
            if !windows.insert(rate.window_secs) {
                return Err(err(
                    f,
                    format!("a second {name} limit with the same window as {text:?}"),
                ));
            }
            rules.group.rates.push(rate);
            rules.quantities.push(quantity);
        }
    }
    if rules.is_empty() {
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
        assert_eq!(free.name, "free");
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
