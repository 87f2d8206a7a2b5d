//! Subscriptions: which models a team may call and at what rates.
//!
//! A subscription is accepted only if the gateway filter's own configuration
//! parser accepts it, so what the control plane stores is always what the
//! gateway can enforce, with the filter's error messages (which name the
//! field) for what it cannot.

use maas_filter::config::DEFAULT_MAX_KEYS_PER_OWNER;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// As written by an administrator (`subscription apply -f FILE`, the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    pub name: String,
    pub models: Vec<String>,
    pub limits: LimitsSpec,
    /// Applied to each key of the subscription separately, or to each
    /// owner's keys together (`key_limits_per`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_limits: Option<LimitsSpec>,
    /// `"key"` (default) or `"owner"`: see the filter's `KeyLimitsPer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_limits_per: Option<String>,
    /// The most live keys one owner may hold here; default
    /// [`DEFAULT_MAX_KEYS_PER_OWNER`] (why: at the constant). Enforced when
    /// a key is minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys_per_owner: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<MaxTokensSpec>,
    /// For showback: who pays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_center: Option<String>,
    /// OIDC groups whose members may mint keys for it (administrators always
    /// may). Empty: administrators only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// `"unlimited"`, or rates such as `{"requests": ["10/min"], "tokens": ["20000/min"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LimitsSpec {
    Keyword(String),
    Rates(RatesSpec),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatesSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxTokensSpec {
    pub cap: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// Why a subscription was refused; `field` is a path into the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn error(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

const MAX_NAME: usize = 63;
const MAX_MODEL: usize = 128;
const MAX_COST_CENTER: usize = 128;

/// Subscription names appear in metric labels, counter keys and URLs: a
/// small, unambiguous alphabet.
fn check_name(field: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(error(
            field,
            format!("{name:?} is not a valid name (1–{MAX_NAME} of a-z, 0-9, '-', '_', starting with a letter or digit)"),
        ))
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), SpecError> {
    if value.is_empty()
        || value.len() > max
        || value.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(error(
            field,
            format!("{value:?} must be 1–{max} bytes without spaces or control characters"),
        ));
    }
    Ok(())
}

impl SubscriptionSpec {
    /// Parses and validates a JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        let spec: Self =
            serde_json::from_slice(bytes).map_err(|e| error("(document)", e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("name", &self.name)?;
        if self.models.is_empty() {
            return Err(error("models", "at least one model is required"));
        }
        for (i, m) in self.models.iter().enumerate() {
            check_text(&format!("models[{i}]"), m, MAX_MODEL)?;
            if self.models[..i].contains(m) {
                return Err(error(
                    format!("models[{i}]"),
                    format!("{m:?} is listed twice"),
                ));
            }
        }
        if let Some(cc) = &self.cost_center {
            if cc.is_empty() || cc.len() > MAX_COST_CENTER || cc.chars().any(char::is_control) {
                return Err(error(
                    "cost_center",
                    format!("must be 1–{MAX_COST_CENTER} bytes without control characters"),
                ));
            }
        }
        for (i, g) in self.groups.iter().enumerate() {
            check_text(&format!("groups[{i}]"), g, MAX_MODEL)?;
        }
        // The rest (rates, caps) is the filter's to judge.
        let filter_view = self.filter_json();
        let config = json!({
            "models": self.models,
            "subscriptions": { &self.name: filter_view },
        });
        maas_filter::config::Config::from_json(config.to_string().as_bytes()).map_err(|e| {
            let prefix = format!("subscriptions.{}.", self.name);
            match e.field.strip_prefix(&prefix) {
                Some(field) => error(field, e.reason),
                None => error(e.field, e.reason),
            }
        })?;
        Ok(())
    }

    /// The subscription as the filter's configuration spells it.
    pub fn filter_json(&self) -> serde_json::Value {
        let mut v = json!({
            "models": self.models,
            "limits": self.limits,
        });
        if let Some(k) = &self.key_limits {
            v["key_limits"] = json!(k);
        }
        if let Some(per) = &self.key_limits_per {
            v["key_limits_per"] = json!(per);
        }
        // Not the gateway's to enforce, but its parser is the one judge of
        // what is valid.
        if let Some(max) = self.max_keys_per_owner {
            v["max_keys_per_owner"] = json!(max);
        }
        if let Some(m) = &self.max_tokens {
            v["max_tokens"] = json!(m);
        }
        // The gateway maps token holders to subscriptions by the same
        // groups that may mint keys here.
        if !self.groups.is_empty() {
            v["groups"] = json!(self.groups);
        }
        v
    }

    /// How many live keys one owner may hold in this subscription.
    pub fn max_keys_per_owner(&self) -> u64 {
        self.max_keys_per_owner
            .unwrap_or(DEFAULT_MAX_KEYS_PER_OWNER)
    }

    /// Whether a member of `groups` may mint keys for this subscription.
    pub fn admits_any(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| self.groups.contains(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(body: serde_json::Value) -> Result<SubscriptionSpec, SpecError> {
        SubscriptionSpec::from_json(body.to_string().as_bytes())
    }

    #[test]
    fn a_full_subscription_is_accepted_and_round_trips() {
        let s = spec(json!({
            "name": "team-a",
            "models": ["smollm2-135m-instruct"],
            "limits": {"requests": ["10/min"], "tokens": ["20000/min", "1000000/day"]},
            "key_limits": {"requests": ["5/10s"]},
            "key_limits_per": "owner",
            "max_keys_per_owner": 3,
            "max_tokens": {"cap": 512, "mode": "reject"},
            "cost_center": "CC-1234 Research",
            "groups": ["ml-team"],
        }))
        .unwrap();
        let again = spec(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(again, s);
        assert_eq!(s.max_keys_per_owner(), 3);
        assert_eq!(s.filter_json()["key_limits_per"], "owner");
        assert!(s.admits_any(&["other".into(), "ml-team".into()]));
        assert!(!s.admits_any(&["other".into()]));
        let internal =
            spec(json!({"name": "internal", "models": ["m"], "limits": "unlimited"})).unwrap();
        assert_eq!(internal.max_keys_per_owner(), DEFAULT_MAX_KEYS_PER_OWNER);
    }

    #[test]
    fn bad_subscriptions_name_the_field() {
        for (body, field, needle) in [
            (
                json!({"name": "Team A", "models": ["m"], "limits": "unlimited"}),
                "name",
                "not a valid name",
            ),
            (
                json!({"name": "x'; DROP TABLE api_keys; --", "models": ["m"], "limits": "unlimited"}),
                "name",
                "not a valid name",
            ),
            (
                json!({"name": "a", "models": [], "limits": "unlimited"}),
                "models",
                "at least one",
            ),
            (
                json!({"name": "a", "models": ["m", "m"], "limits": "unlimited"}),
                "models[1]",
                "twice",
            ),
            (
                json!({"name": "a", "models": ["a b"], "limits": "unlimited"}),
                "models[0]",
                "without spaces",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": {"tokens": ["-5/min"]}}),
                "limits.tokens[0]",
                "-5/min",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": {"tokens": ["5/fortnight"]}}),
                "limits.tokens[0]",
                "fortnight",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": "lots"}),
                "limits",
                "lots",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": "unlimited", "max_tokens": {"cap": 0}}),
                "max_tokens",
                "",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": "unlimited", "color": "red"}),
                "(document)",
                "color",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": "unlimited", "max_keys_per_owner": 0}),
                "max_keys_per_owner",
                "between 1 and 1000",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": "unlimited", "max_keys_per_owner": 100000}),
                "max_keys_per_owner",
                "between 1 and 1000",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": "unlimited", "key_limits_per": "team"}),
                "(document)",
                "expected `key` or `owner`",
            ),
        ] {
            let e = spec(body.clone()).unwrap_err();
            assert!(e.field.starts_with(field), "{body}: {e}");
            assert!(e.to_string().contains(needle), "{body}: {e}");
        }
    }
}
