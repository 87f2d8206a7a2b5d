//! Raw configuration → validated configuration, once, at load: every
//! check the filter makes of its configuration is here, and each error
//! names the field (`subscriptions.free.limits.tokens[1]`) and the reason.
//! The request path never re-checks what was validated here.
//!
//! The same checks judge a subscription the control plane syncs
//! ([`synced_subscription`]) and one an administrator gives the control
//! plane ([`validate_served`]), so the two cannot disagree on what is valid.

use super::raw::{
    LimitMode, RawBackend, RawConfig, RawControlPlane, RawExpiry, RawExternalModel, RawKey,
    RawLimiter, RawLimits, RawProvider, RawRate, RawSubscription, DEFAULT_SERVICE_TIERS,
};
use super::validated::{err, Config, ConfigError, ExternalModel};
use crate::auth::control_plane::ControlPlane;
use crate::auth::credential::{BearerCredential, Secret};
use crate::auth::keys::{ApiKey, KeyDigest, KeyStore};
use crate::limits::global_limits::Limiter;
use crate::limits::Rate;
use crate::providers::ProviderKind;
use crate::subscription::{
    GlobalRate, MaxTokensPolicy, Quantity, ScopeLimits, Subscription, KEY_TEMPLATE_PREFIX,
    MAX_KEYS_PER_OWNER_LIMIT,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::rc::Rc;

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        if raw.max_body_bytes == 0 {
            return Err(err("max_body_bytes", "must be at least 1"));
        }
        if raw.default_max_tokens == 0 {
            return Err(err("default_max_tokens", "must be at least 1"));
        }
        if raw.prompt_bytes_per_token == 0 {
            return Err(err("prompt_bytes_per_token", "must be at least 1"));
        }
        check_media_part_tokens("media_part_tokens", raw.media_part_tokens)?;
        let mut models = routed_models(&raw.models)?;
        let providers = providers(&raw.providers)?;
        let rules = BackendRules {
            providers,
            media_part_tokens: raw.media_part_tokens,
        };
        let external = external_models(&rules, &raw.external_models, &mut models)?;
        let fallbacks = fallbacks(&rules, &raw.fallbacks, &models, &external)?;
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
            keys.push(api_key(&field, k, &subscriptions)?);
        }
        let keys = KeyStore::new(keys).map_err(|dup| {
            err(
                format!("keys[{dup}].sha256"),
                "the same key hash appears twice",
            )
        })?;

        let model_server_api_key = raw
            .model_server_api_key
            .map(model_server_api_key)
            .transpose()?;
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

        for (model, ms) in &raw.route_timeouts_ms {
            let field = format!("route_timeouts_ms.{model}");
            if !models.contains(model) {
                return Err(err(field, "not a model of `models` or `external_models`"));
            }
            if !(1..=86_400_000).contains(ms) {
                return Err(err(field, "must be between 1 and 86400000 (a day)"));
            }
        }
        Ok(Config {
            oidc: raw.oidc,
            control_plane,
            limiter,
            route_timeouts_ms: raw.route_timeouts_ms,
            max_body_bytes: raw.max_body_bytes,
            default_max_tokens: raw.default_max_tokens,
            prompt_bytes_per_token: raw.prompt_bytes_per_token,
            media_part_tokens: raw.media_part_tokens,
            models: models.into_iter().collect(),
            model_server_api_key,
            external,
            fallbacks,
            subscriptions,
            keys,
        })
    }
}

/// The shortest model server key: the inference server's `--api-key-file`
/// refuses shorter ones, so a configuration the server would refuse is
/// refused here too, at load.
const MIN_MODEL_SERVER_KEY_LEN: usize = 16;

fn model_server_api_key(key: Secret) -> Result<BearerCredential, ConfigError> {
    let field = "model_server_api_key";
    let value = key.expose();
    if value.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(err(
            field,
            "must be printable ASCII without spaces (it is sent in a header)",
        ));
    }
    if value.len() < MIN_MODEL_SERVER_KEY_LEN {
        return Err(err(
            field,
            format!(
                "must be at least {MIN_MODEL_SERVER_KEY_LEN} characters, got {}",
                value.len()
            ),
        ));
    }
    Ok(BearerCredential::new(&key))
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

/// The top-level `models`: the ids the gateway routes, each once.
fn routed_models(raw: &[String]) -> Result<BTreeSet<String>, ConfigError> {
    let mut models = BTreeSet::new();
    for (i, m) in raw.iter().enumerate() {
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
    Ok(models)
}

/// `providers`: each named once and usable for its kind.
fn providers(providers: &[RawProvider]) -> Result<BTreeMap<&str, &RawProvider>, ConfigError> {
    let mut by_name = BTreeMap::new();
    for (i, p) in providers.iter().enumerate() {
        let field = format!("providers[{i}]");
        check_name(&format!("{field}.name"), &p.name, &[])?;
        match (p.kind, &p.api_version) {
            (ProviderKind::AzureOpenAi, None) => {
                return Err(err(
                    format!("{field}.api_version"),
                    "required for kind azure-openai (e.g. \"2024-10-21\")",
                ))
            }
            (ProviderKind::AzureOpenAi, Some(v)) => {
                check_name(&format!("{field}.api_version"), v, &[])?
            }
            (_, Some(_)) => {
                return Err(err(
                    format!("{field}.api_version"),
                    "only kind azure-openai takes an api_version",
                ))
            }
            (ProviderKind::Anthropic | ProviderKind::OpenAiCompatible, None) => {}
        }
        if p.kind == ProviderKind::Anthropic && p.max_tokens_field.is_some() {
            // The translation writes Anthropic's own `max_tokens`.
            return Err(err(
                format!("{field}.max_tokens_field"),
                "kind anthropic takes no max_tokens_field",
            ));
        }
        if let Some(tiers) = &p.service_tiers {
            if p.kind == ProviderKind::Anthropic {
                return Err(err(
                    format!("{field}.service_tiers"),
                    "kind anthropic takes no service_tiers (its translation sends none)",
                ));
            }
            for (j, tier) in tiers.iter().enumerate() {
                check_name(&format!("{field}.service_tiers[{j}]"), tier, &[])?;
            }
        }
        if let Some(max) = p.max_outputs {
            if !(1..=MAX_OUTPUTS).contains(&max) {
                return Err(err(
                    format!("{field}.max_outputs"),
                    format!("must be between 1 and {MAX_OUTPUTS}, got {max}"),
                ));
            }
        }
        if by_name.insert(p.name.as_str(), p).is_some() {
            return Err(err(
                format!("{field}.name"),
                format!("duplicate provider {:?}", p.name),
            ));
        }
    }
    Ok(by_name)
}

/// The largest `max_outputs` a provider may set: more outputs per request
/// than any server runs at once is no limit.
const MAX_OUTPUTS: u64 = 1024;

/// The most one media part may cost in prompt tokens: a bound on a typo
/// (a per-part amount above this is no model's) and on the products it
/// enters.
const MAX_MEDIA_PART_TOKENS: u64 = 1_000_000;

/// `media_part_tokens` at `field`. 0 is allowed, for a backend that refuses
/// media parts (its refusal is charged nothing).
fn check_media_part_tokens(field: &str, tokens: u64) -> Result<(), ConfigError> {
    if tokens > MAX_MEDIA_PART_TOKENS {
        return Err(err(
            field,
            format!(
                "must be at most {MAX_MEDIA_PART_TOKENS} (prompt tokens one image or file may cost), got {tokens}"
            ),
        ));
    }
    Ok(())
}

/// What a backend entry is checked against and inherits from.
struct BackendRules<'a> {
    providers: BTreeMap<&'a str, &'a RawProvider>,
    /// The top-level `media_part_tokens`.
    media_part_tokens: u64,
}

/// A backend at `field` (`.provider`, `.model`, `.media_part_tokens`): a
/// configured provider and a model name it can take (an Azure deployment
/// name is a path segment).
fn backend(
    rules: &BackendRules<'_>,
    field: &str,
    provider: &str,
    model: &str,
    media_part_tokens: Option<u64>,
) -> Result<ExternalModel, ConfigError> {
    let p = rules.providers.get(provider).ok_or_else(|| {
        err(
            format!("{field}.provider"),
            format!("no provider named {provider:?} in `providers`"),
        )
    })?;
    let extra: &[char] = match p.kind {
        ProviderKind::AzureOpenAi => &[],
        _ => &['/', ':'],
    };
    check_name(&format!("{field}.model"), model, extra)?;
    let media_part_tokens = media_part_tokens.unwrap_or(rules.media_part_tokens);
    check_media_part_tokens(&format!("{field}.media_part_tokens"), media_part_tokens)?;
    Ok(ExternalModel {
        provider: p.name.clone(),
        kind: p.kind,
        upstream_model: model.to_string(),
        api_version: p.api_version.clone(),
        budget_field: p
            .max_tokens_field
            .unwrap_or_else(|| p.kind.default_budget_field()),
        max_outputs: p.max_outputs,
        media_part_tokens,
        service_tiers: match (p.kind, &p.service_tiers) {
            (ProviderKind::Anthropic, _) => None,
            (_, Some(tiers)) => Some(tiers.iter().cloned().collect()),
            (_, None) => Some(
                DEFAULT_SERVICE_TIERS
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
            ),
        },
    })
}

/// `external_models`: each id new to `models` (to which it is added) and
/// mapped to a configured provider.
fn external_models(
    rules: &BackendRules<'_>,
    raw: &[RawExternalModel],
    models: &mut BTreeSet<String>,
) -> Result<BTreeMap<String, Rc<ExternalModel>>, ConfigError> {
    let mut external = BTreeMap::new();
    for (i, m) in raw.iter().enumerate() {
        let field = format!("external_models[{i}]");
        check_name(&format!("{field}.id"), &m.id, &['/', ':'])?;
        let backend = backend(rules, &field, &m.provider, &m.model, m.media_part_tokens)?;
        if !models.insert(m.id.clone()) {
            return Err(err(
                format!("{field}.id"),
                format!(
                    "model {:?} is already routed (listed twice, or also in `models`)",
                    m.id
                ),
            ));
        }
        external.insert(m.id.clone(), Rc::new(backend));
    }
    Ok(external)
}

/// `fallbacks`: for a routed model, providers tried in order after its
/// own backend (local or `external_models`), each provider once per model.
/// Any kind may follow any other: each attempt is made its provider's own
/// by that provider's cluster (the backend role).
fn fallbacks(
    rules: &BackendRules<'_>,
    raw: &BTreeMap<String, Vec<RawBackend>>,
    models: &BTreeSet<String>,
    external: &BTreeMap<String, Rc<ExternalModel>>,
) -> Result<BTreeMap<String, Vec<Rc<ExternalModel>>>, ConfigError> {
    let mut out = BTreeMap::new();
    for (id, backends) in raw {
        let field = format!("fallbacks.{id}");
        if !models.contains(id) {
            return Err(err(
                field,
                "not a routed model (list it in `models` or `external_models`)",
            ));
        }
        if backends.is_empty() {
            return Err(err(field, "must list at least one backend"));
        }
        let mut seen: BTreeSet<&str> = external
            .get(id)
            .map(|p| p.provider.as_str())
            .into_iter()
            .collect();
        let mut chain = Vec::with_capacity(backends.len());
        for (i, b) in backends.iter().enumerate() {
            let field = format!("{field}[{i}]");
            let fallback = backend(rules, &field, &b.provider, &b.model, b.media_part_tokens)?;
            if !seen.insert(b.provider.as_str()) {
                return Err(err(
                    format!("{field}.provider"),
                    format!("provider {:?} is already in this model's chain", b.provider),
                ));
            }
            chain.push(Rc::new(fallback));
        }
        out.insert(id.clone(), chain);
    }
    Ok(out)
}

/// One configured key (`field`: `keys[i]`; its id already checked), with
/// the limits it counts against alone.
fn api_key(
    field: &str,
    k: &RawKey,
    subscriptions: &[Rc<Subscription>],
) -> Result<ApiKey, ConfigError> {
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
    Ok(ApiKey {
        id: k.id.clone(),
        owner: k.owner.clone(),
        subscription: sub_index,
        digest,
        expires_at,
        revoked: k.revoked,
        limits: Rc::new(limits),
        own_limits: k.limits.is_some(),
    })
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
    let max_tokens = match sub.max_tokens {
        Some(policy) if policy.cap == 0 => {
            return Err(err(format!("{field}.max_tokens.cap"), "must be at least 1"));
        }
        Some(policy) => Some(MaxTokensPolicy {
            cap: policy.cap,
            mode: policy.mode.unwrap_or_default(),
        }),
        None => None,
    };
    if !(1..=MAX_KEYS_PER_OWNER_LIMIT).contains(&sub.max_keys_per_owner()) {
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
        key_limits_per: sub.key_limits_per.unwrap_or_default(),
        max_tokens,
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
    refuse_global(&field, sub)
}

/// Whether the control plane may store and serve `raw` as subscription
/// `name`: what the configuration of a gateway routing exactly `raw`'s
/// models accepts, and nothing the sync would refuse. Fields are named as
/// in a configuration (`models[0]`, `subscriptions.<name>.limits`).
pub fn validate_served(name: &str, raw: &RawSubscription) -> Result<Subscription, ConfigError> {
    let models = routed_models(&raw.models)?;
    let field = format!("subscriptions.{name}");
    let sub = build_subscription(&field, name, raw, &models, UnknownModels::Refuse)?;
    refuse_global(&field, sub)
}

/// The limiter's limits file is rendered from the configuration; a global
/// limit arriving from the control plane would have no limit there.
fn refuse_global(field: &str, sub: Subscription) -> Result<Subscription, ConfigError> {
    if has_global(&sub) {
        return Err(err(
            field,
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
    let token = raw.token.expose();
    if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
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
        token: BearerCredential::new(&raw.token),
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
    // A hold must outlive the admission's two limiter calls (the Reserve,
    // then the request limit's ShouldRateLimit), each up to timeout_ms:
    // else it may lapse after the request hit was counted, which cannot be
    // given back.
    if raw.reservation_ttl_ms <= raw.timeout_ms.saturating_mul(2) {
        return Err(err(
            "limiter.reservation_ttl_ms",
            format!(
                "must be more than twice limiter.timeout_ms ({} ms): a hold must outlive the admission's two limiter calls",
                raw.timeout_ms.saturating_mul(2)
            ),
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
                RawRate::Spec(s) => (&s.rate, s.mode.unwrap_or_default(), s.failure_mode),
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
pub(super) fn parse_rfc3339_utc(s: &str) -> Option<u64> {
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
