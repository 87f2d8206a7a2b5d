//! Kuadrant policies that carry the same limits as the filter's
//! subscriptions, for platform teams that want Kuadrant (Limitador) to own
//! them: a `TokenRateLimitPolicy` for token limits and a `RateLimitPolicy`
//! for request limits, both attached to the models' `HTTPRoute`. Not to the
//! Gateway: the filter is off on `/maas-api/`, so client-sent `x-maas-*`
//! headers survive there, and a policy on the whole Gateway would let an
//! anonymous client spend the shared counters (or a victim's per-key one).
//!
//! Kuadrant >= v1.5.0 ([`KUADRANT_FLOOR`]): up to v1.4 Kuadrant attaches its
//! wasm-shim through a WasmPlugin, which Istio places ahead of every
//! EnvoyFilter patch "before the router"; the shim then runs before the
//! filter, finds none of the identity headers, and the policies count
//! nothing. From v1.5.0 both are EnvoyFilter patches before the router,
//! and ours, applied first (`istio::FILTER_PRIORITY`), runs first.
//!
//! Every limit selects its requests by the identity the filter publishes
//! (the `x-maas-*` headers, which it strips from clients first), so the
//! filter must run before Kuadrant's wasm-shim in the chain (see
//! `istio::FILTER_PRIORITY`). A subscription's limits count per
//! subscription; its `key_limits` per key (`x-maas-key-id`) or, for OIDC
//! callers, per user (`x-maas-user`), as the filter counts them; a key with
//! its own `limits` gets its own entry and is left out of the template.
//!
//! Windows become Kuadrant durations (`^([0-9]{1,5}(h|m|s|ms)){1,4}$`, the
//! CRD's pattern: no `d`, so a day is `24h`).

use std::collections::BTreeSet;
use std::rc::Rc;

use maas_filter::config::{synced_subscription, Config, ConfigError};
use maas_filter::limits::Rate;
use maas_filter::subscription::{Quantity, ScopeLimits, Subscription};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::identity;

/// The oldest Kuadrant whose wasm-shim runs after the filter (see the
/// module documentation).
pub const KUADRANT_FLOOR: &str = "v1.5.0";

/// The largest `limit` a Kubernetes integer field holds.
pub const MAX_LIMIT: u64 = i64::MAX as u64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the control plane's answer is not JSON: {0}")]
    NotJson(String),
    #[error("the control plane's answer has no `data` list of subscriptions")]
    NoSubscriptionList,
    #[error("{scope}: {amount}/{window_secs}s is above Kubernetes' integer range ({MAX_LIMIT})")]
    LimitTooLarge {
        scope: String,
        amount: u64,
        window_secs: u64,
    },
    #[error("{scope}: a window of {window_secs} s has no Kuadrant duration")]
    Window { scope: String, window_secs: u64 },
}

/// One rate as Kuadrant writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KuadrantRate {
    pub limit: u64,
    pub window: String,
}

/// `secs` as a Kuadrant duration (`24h`, `1m`, `10s`, `1h30m`), or `None`
/// for 0 or a window whose hours need more than five digits.
pub fn kuadrant_window(secs: u64) -> Option<String> {
    if secs == 0 {
        return None;
    }
    let (hours, minutes, seconds) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if hours > 99_999 {
        return None;
    }
    let mut out = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    Some(out)
}

fn kuadrant_rate(scope: &str, rate: &Rate) -> Result<KuadrantRate, PolicyError> {
    if rate.amount > MAX_LIMIT {
        return Err(PolicyError::LimitTooLarge {
            scope: scope.to_string(),
            amount: rate.amount,
            window_secs: rate.window_secs,
        });
    }
    let window = kuadrant_window(rate.window_secs).ok_or_else(|| PolicyError::Window {
        scope: scope.to_string(),
        window_secs: rate.window_secs,
    })?;
    Ok(KuadrantRate {
        limit: rate.amount,
        window,
    })
}

/// A key whose configuration gives it limits of its own.
#[derive(Debug)]
pub struct KeyOverride {
    pub id: String,
    pub subscription: String,
    pub limits: ScopeLimits,
}

/// The limits to translate, from either source.
#[derive(Debug)]
pub struct LimitSource {
    pub subscriptions: Vec<Rc<Subscription>>,
    pub key_overrides: Vec<KeyOverride>,
}

impl LimitSource {
    /// From the filter's configuration JSON (`envoy/filter-config.json`),
    /// parsed and validated by the filter's own parser.
    pub fn from_filter_config(json: &[u8]) -> Result<LimitSource, PolicyError> {
        let config = Config::from_json(json)?;
        let key_overrides = config
            .keys
            .iter()
            .filter_map(|key| {
                let sub = config.subscriptions.get(key.subscription)?;
                let inherited = sub.key_limits_for(&key.id);
                let same = same_rates(&key.limits, &inherited);
                (!same).then(|| KeyOverride {
                    id: key.id.clone(),
                    subscription: sub.name.to_string(),
                    limits: (*key.limits).clone(),
                })
            })
            .collect();
        Ok(LimitSource {
            subscriptions: config.subscriptions.clone(),
            key_overrides,
        })
    }

    /// From the control plane's `GET /maas-api/v1/subscriptions` answer
    /// (`{"object": "list", "data": [...]}`), each checked by the filter's
    /// parser for synced subscriptions.
    pub fn from_control_plane(json: &[u8]) -> Result<LimitSource, PolicyError> {
        let answer: Value =
            serde_json::from_slice(json).map_err(|e| PolicyError::NotJson(e.to_string()))?;
        let list = answer
            .get("data")
            .and_then(Value::as_array)
            .ok_or(PolicyError::NoSubscriptionList)?;
        let mut subscriptions = Vec::with_capacity(list.len());
        for item in list {
            // The API adds bookkeeping (cost_center, timestamps) the gateway's
            // shape does not have; keep what the filter would be sent.
            let mut spec = Map::new();
            if let Some(fields) = item.as_object() {
                for (k, v) in fields {
                    if matches!(
                        k.as_str(),
                        "name" | "models" | "limits" | "key_limits" | "max_tokens" | "groups"
                    ) {
                        spec.insert(k.clone(), v.clone());
                    }
                }
            }
            // Every model the subscription names counts as routed: the
            // policies are about limits, not about which gateway serves what.
            let models: Vec<String> = item
                .get("models")
                .and_then(Value::as_array)
                .map(|m| {
                    m.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            subscriptions.push(Rc::new(synced_subscription(&Value::Object(spec), &models)?));
        }
        Ok(LimitSource {
            subscriptions,
            key_overrides: Vec::new(),
        })
    }
}

fn same_rates(a: &ScopeLimits, b: &ScopeLimits) -> bool {
    a.quantities == b.quantities && a.group.rates == b.group.rates && a.global == b.global
}

/// Where the policies attach.
#[derive(Debug, Clone)]
pub struct PolicyTarget {
    /// The `HTTPRoute` of the models (`istio::MODELS_ROUTE`).
    pub route: String,
    pub namespace: String,
}

/// CEL for `request.headers['<name>']`.
fn header(name: &str) -> String {
    format!("request.headers['{name}']")
}

/// CEL: the request has the header. Every predicate that reads a header,
/// and every limit whose counter does, checks this first: indexing a
/// missing key is an evaluation error in CEL, and Kuadrant's wasm-shim
/// merges a policy's limits into one rate-limit action whose error fails
/// the whole action open (its default failure mode is `allow`), so one
/// unguarded read would skip every limit of the policy for that request.
/// The shim evaluates `&&` left to right and stops at `false`.
fn has_header(name: &str) -> String {
    format!("'{name}' in request.headers")
}

/// CEL: the header is present and equals `value`.
fn header_is(name: &str, value: &str) -> String {
    format!(
        "{} && {} == {}",
        has_header(name),
        header(name),
        cel_string(value)
    )
}

/// A CEL string literal. Names the filter accepts never need escaping; this
/// keeps a future looser name from breaking out of the literal.
fn cel_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn predicate(text: String) -> Value {
    json!({ "predicate": text })
}

/// One Kuadrant limit entry, or `None` when the scope has no rate of this
/// quantity.
fn limit(
    scope: &str,
    limits: &ScopeLimits,
    quantity: Quantity,
    when: Vec<Value>,
    counter: &str,
) -> Result<Option<Value>, PolicyError> {
    // Kuadrant's counters are shared by every gateway either way, so local
    // and global rates of the filter both become rates here.
    let rates = limits
        .quantities
        .iter()
        .zip(&limits.group.rates)
        .filter(|(q, _)| **q == quantity)
        .map(|(_, rate)| rate)
        .chain(limits.global_of(quantity).map(|g| &g.rate))
        .map(|rate| kuadrant_rate(scope, rate))
        .collect::<Result<Vec<_>, _>>()?;
    if rates.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({
        "rates": rates,
        "when": when,
        "counters": [{ "expression": counter }],
    })))
}

/// The limits of every scope for one quantity, by Kuadrant limit name.
fn limits_for(source: &LimitSource, quantity: Quantity) -> Result<Map<String, Value>, PolicyError> {
    let suffix = quantity.as_str();
    let sub_header = header(identity::SUBSCRIPTION_HEADER);
    let key_header = header(identity::KEY_ID_HEADER);
    let user_header = header(identity::USER_HEADER);
    let has_key = has_header(identity::KEY_ID_HEADER);
    let mut out = Map::new();
    for sub in &source.subscriptions {
        let name = &*sub.name;
        let of_sub = predicate(header_is(identity::SUBSCRIPTION_HEADER, name));
        if let Some(l) = limit(
            &format!("subscription {name}"),
            &sub.limits,
            quantity,
            vec![of_sub.clone()],
            &sub_header,
        )? {
            out.insert(format!("{name}-{suffix}"), l);
        }
        let Some(template) = &sub.key_limits else {
            continue;
        };
        let own: BTreeSet<&str> = source
            .key_overrides
            .iter()
            .filter(|k| k.subscription == name)
            .map(|k| k.id.as_str())
            .collect();
        let mut per_key = vec![of_sub.clone(), predicate(has_key.clone())];
        per_key.extend(own.iter().map(|id| {
            predicate(format!(
                "!({has_key}) || {key_header} != {}",
                cel_string(id)
            ))
        }));
        let scope = format!("subscription {name} key_limits");
        if let Some(l) = limit(&scope, template, quantity, per_key, &key_header)? {
            out.insert(format!("{name}-per-key-{suffix}"), l);
        }
        // Token callers (OIDC) have no key: the filter counts them per user.
        let per_user = vec![
            of_sub,
            predicate(format!("!({has_key})")),
            predicate(has_header(identity::USER_HEADER)),
        ];
        if let Some(l) = limit(&scope, template, quantity, per_user, &user_header)? {
            out.insert(format!("{name}-per-user-{suffix}"), l);
        }
    }
    for key in &source.key_overrides {
        let when = vec![predicate(header_is(identity::KEY_ID_HEADER, &key.id))];
        if let Some(l) = limit(
            &format!("key {}", key.id),
            &key.limits,
            quantity,
            when,
            &key_header,
        )? {
            out.insert(format!("key-{}-{suffix}", key.id), l);
        }
    }
    Ok(out)
}

/// The `TokenRateLimitPolicy` (token limits) and `RateLimitPolicy` (request
/// limits) equivalent to `source`; a policy with no limit is left out
/// (the CRDs refuse an empty `limits`).
pub fn policies(source: &LimitSource, target: &PolicyTarget) -> Result<Vec<Value>, PolicyError> {
    let mut out = Vec::new();
    for (api_version, kind, name, quantity) in [
        (
            "kuadrant.io/v1alpha1",
            "TokenRateLimitPolicy",
            "maas-subscription-tokens",
            Quantity::Tokens,
        ),
        (
            "kuadrant.io/v1",
            "RateLimitPolicy",
            "maas-subscription-requests",
            Quantity::Requests,
        ),
    ] {
        let limits = limits_for(source, quantity)?;
        if limits.is_empty() {
            continue;
        }
        out.push(json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {
                "name": name,
                "namespace": target.namespace,
                "labels": { "app.kubernetes.io/part-of": "maas", "app.kubernetes.io/managed-by": "maas-mesh" },
            },
            "spec": {
                "targetRef": {
                    "group": "gateway.networking.k8s.io",
                    "kind": "HTTPRoute",
                    "name": target.route,
                },
                "limits": limits,
            },
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_use_the_crd_duration_format() {
        for (secs, want) in [
            (1, Some("1s")),
            (10, Some("10s")),
            (60, Some("1m")),
            (90, Some("1m30s")),
            (3600, Some("1h")),
            (5400, Some("1h30m")),
            (86_400, Some("24h")),
            (31 * 86_400, Some("744h")),
            (3661, Some("1h1m1s")),
            (0, None),
        ] {
            assert_eq!(kuadrant_window(secs).as_deref(), want, "{secs}");
        }
    }

    #[test]
    fn filter_rate_strings_map_to_kuadrant_rates() {
        for (text, limit, window) in [
            ("20000/min", 20_000, "1m"),
            ("1000000/day", 1_000_000, "24h"),
            ("5/10s", 5, "10s"),
            ("5000/2h", 5000, "2h"),
            ("10/minutes", 10, "1m"),
            ("7/3d", 7, "72h"),
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(
                kuadrant_rate("t", &rate).unwrap(),
                KuadrantRate {
                    limit,
                    window: window.to_string()
                },
                "{text}"
            );
        }
        let huge = Rate {
            amount: u64::MAX,
            window_secs: 60,
        };
        assert!(matches!(
            kuadrant_rate("t", &huge),
            Err(PolicyError::LimitTooLarge { .. })
        ));
    }

    fn demo() -> LimitSource {
        let config = serde_json::json!({
            "models": ["m1"],
            "subscriptions": {
                "free": {
                    "models": ["m1"],
                    "limits": {"requests": ["10/min"], "tokens": ["20000/min", "1000000/day"]},
                    "key_limits": {"requests": ["5/10s"]}
                },
                "internal": {"models": ["m1"], "limits": "unlimited"}
            },
            "keys": [
                {"id": "k1", "owner": "a", "subscription": "free", "sha256": "aa".repeat(32)},
                {"id": "k2", "owner": "b", "subscription": "free", "sha256": "bb".repeat(32),
                 "limits": {"tokens": ["100/h"]}}
            ]
        });
        LimitSource::from_filter_config(config.to_string().as_bytes()).unwrap()
    }

    fn target() -> PolicyTarget {
        PolicyTarget {
            route: "maas-models".into(),
            namespace: "maas".into(),
        }
    }

    #[test]
    fn subscriptions_become_one_limit_per_scope_and_quantity() {
        let docs = policies(&demo(), &target()).unwrap();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["TokenRateLimitPolicy", "RateLimitPolicy"]);

        let tokens = &docs[0]["spec"]["limits"];
        let names: Vec<&String> = tokens.as_object().unwrap().keys().collect();
        assert_eq!(
            names,
            ["free-tokens", "key-k2-tokens"],
            "unlimited `internal` has none"
        );
        assert_eq!(
            tokens["free-tokens"]["rates"],
            json!([{"limit": 20000, "window": "1m"}, {"limit": 1000000, "window": "24h"}])
        );
        assert_eq!(
            tokens["free-tokens"]["when"],
            json!([{"predicate": "'x-maas-subscription' in request.headers && request.headers['x-maas-subscription'] == 'free'"}])
        );
        assert_eq!(
            tokens["free-tokens"]["counters"],
            json!([{"expression": "request.headers['x-maas-subscription']"}])
        );
        assert_eq!(
            tokens["key-k2-tokens"]["rates"],
            json!([{"limit": 100, "window": "1h"}])
        );

        let requests = &docs[1]["spec"]["limits"];
        let per_key = &requests["free-per-key-requests"];
        assert_eq!(per_key["rates"], json!([{"limit": 5, "window": "10s"}]));
        assert_eq!(
            per_key["counters"],
            json!([{"expression": "request.headers['x-maas-key-id']"}])
        );
        // k2 has its own limits, so the template must not count it too.
        assert!(per_key["when"]
            .as_array()
            .unwrap()
            .contains(&json!({"predicate": "!('x-maas-key-id' in request.headers) || request.headers['x-maas-key-id'] != 'k2'"})));
        assert_eq!(
            requests["free-per-user-requests"]["counters"],
            json!([{"expression": "request.headers['x-maas-user']"}])
        );
        assert!(
            requests.get("key-k2-requests").is_none(),
            "k2 has no request limit of its own"
        );
    }

    #[test]
    fn control_plane_answers_are_read_with_their_bookkeeping_fields() {
        let answer = json!({"object": "list", "data": [
            {"name": "team-a", "models": ["m9"], "limits": {"tokens": ["500/min"]},
             "cost_center": "CC-7", "created_at": 1, "updated_at": 2, "groups": ["a"]}
        ]});
        let source = LimitSource::from_control_plane(answer.to_string().as_bytes()).unwrap();
        let docs = policies(&source, &target()).unwrap();
        assert_eq!(docs.len(), 1, "no request limits, no RateLimitPolicy");
        assert_eq!(
            docs[0]["spec"]["limits"]["team-a-tokens"]["rates"],
            json!([{"limit": 500, "window": "1m"}])
        );

        let bad = json!({"data": [{"name": "x", "models": ["m"], "limits": {"tokens": ["5/fortnight"]}}]});
        let err = LimitSource::from_control_plane(bad.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("fortnight"), "{err}");
        assert_eq!(
            LimitSource::from_control_plane(b"{}").unwrap_err(),
            PolicyError::NoSubscriptionList
        );
    }
}
