//! Subscriptions: which models a team may call and at what rates.
//!
//! A subscription is accepted only if the gateway filter's own configuration
//! parser accepts it, so what the control plane stores is always what the
//! gateway can enforce, with the filter's error messages (which name the
//! field) for what it cannot.

use maas_filter::config::raw::RawSubscription;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::strict_json::StrictValue;

/// As written by an administrator (`subscription apply -f FILE`, the API),
/// stored, and served: the gateway filter's own subscription schema
/// ([`RawSubscription`]: models, limits, key limits, caps, groups) under a
/// `name`, plus what only the control plane reads (`cost_center`). One
/// definition, so the two cannot drift apart.
///
/// Unknown fields are refused, naming the field: the fields of this struct
/// are taken out first and the rest must be exactly the filter's schema,
/// which denies unknown fields (serde's `deny_unknown_fields` does not work
/// through `flatten`, hence the hand-written `Deserialize`). Repeated keys
/// are refused at any depth, as a derived struct refuses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionSpec {
    pub name: String,
    /// What the gateway enforces. Its `groups` are also the OIDC groups
    /// whose members may mint keys here (administrators always may; empty:
    /// administrators only).
    #[serde(flatten)]
    pub gateway: RawSubscription,
    /// For showback: who pays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_center: Option<String>,
}

impl<'de> Deserialize<'de> for SubscriptionSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Value::Object(mut fields) = StrictValue::deserialize(deserializer)?.0 else {
            return Err(D::Error::custom("expected a subscription object"));
        };
        let name = match fields.remove("name") {
            Some(Value::String(name)) => name,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "name: expected a string, got {other}"
                )))
            }
            None => return Err(D::Error::missing_field("name")),
        };
        let cost_center = match fields.remove("cost_center") {
            None | Some(Value::Null) => None,
            Some(Value::String(cc)) => Some(cc),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "cost_center: expected a string, got {other}"
                )))
            }
        };
        let gateway =
            RawSubscription::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(SubscriptionSpec {
            name,
            gateway,
            cost_center,
        })
    }
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

/// A model name as subscriptions and prices spell it.
pub(crate) fn check_model_name(field: &str, model: &str) -> Result<(), SpecError> {
    check_text(field, model, MAX_MODEL)
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
        let models = &self.gateway.models;
        if models.is_empty() {
            return Err(error("models", "at least one model is required"));
        }
        for (i, m) in models.iter().enumerate() {
            check_model_name(&format!("models[{i}]"), m)?;
            if models[..i].contains(m) {
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
        for (i, g) in self.gateway.groups.iter().enumerate() {
            check_text(&format!("groups[{i}]"), g, MAX_MODEL)?;
        }
        // The rest (rates, caps) is the filter's to judge, by the rules its
        // configuration and its sync apply.
        maas_filter::config::validate_served(&self.name, &self.gateway).map_err(|e| {
            let prefix = format!("subscriptions.{}", self.name);
            match e.field.strip_prefix(&prefix) {
                Some("") => error("(document)", e.reason),
                Some(field) => error(field.trim_start_matches('.'), e.reason),
                None => error(e.field, e.reason),
            }
        })?;
        Ok(())
    }

    /// The subscription as the filter's configuration spells it: its own
    /// schema, without the control plane's fields.
    pub fn filter_json(&self) -> Value {
        json!(self.gateway)
    }

    /// How many live keys one owner may hold in this subscription.
    pub fn max_keys_per_owner(&self) -> u64 {
        self.gateway.max_keys_per_owner()
    }

    /// Whether a member of `groups` may mint keys for this subscription.
    pub fn admits_any(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| self.gateway.groups.contains(g))
    }

    /// Those of `groups` this subscription admits, sorted and each once:
    /// what a key minted by a member of `groups` is recorded as minted
    /// through (it is revoked when none of them is admitted any more).
    pub fn admitting(&self, groups: &[String]) -> Vec<String> {
        let mut via: Vec<String> = groups
            .iter()
            .filter(|g| self.gateway.groups.contains(g))
            .cloned()
            .collect();
        via.sort();
        via.dedup();
        via
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maas_filter::subscription::DEFAULT_MAX_KEYS_PER_OWNER;

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
        let token_groups = ["other", "ml-team", "ml-team"].map(String::from);
        assert_eq!(s.admitting(&token_groups), ["ml-team"]);
        assert!(s.admitting(&["other".into()]).is_empty());
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

    #[test]
    fn unknown_fields_are_refused_at_every_level_naming_them() {
        for (body, needle) in [
            (
                json!({"name": "a", "models": ["m"], "limits": "unlimited", "limit": "x"}),
                "unknown field `limit`",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": "unlimited",
                       "max_tokens": {"cap": 5, "mood": "clamp"}}),
                "unknown field `mood`",
            ),
            (
                json!({"models": ["m"], "limits": "unlimited"}),
                "missing field `name`",
            ),
            (
                json!({"name": "a", "models": ["m"], "limits": "unlimited", "cost_center": 7}),
                "cost_center: expected a string",
            ),
        ] {
            let e = spec(body.clone()).unwrap_err();
            assert_eq!(e.field, "(document)", "{body}: {e}");
            assert!(e.reason.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn repeated_keys_are_refused_as_a_derived_struct_refuses_them() {
        for body in [
            r#"{"name": "a", "models": ["m"], "limits": "unlimited", "name": "b"}"#,
            r#"{"name": "a", "models": ["m"], "limits": {"tokens": [], "tokens": ["1/s"]}}"#,
            r#"{"name": "a", "models": ["m"], "limits": "unlimited", "max_tokens": null, "max_tokens": {"cap": 1}}"#,
        ] {
            let e = SubscriptionSpec::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(e.field, "(document)", "{body}: {e}");
            assert!(e.reason.contains("duplicate field"), "{body}: {e}");
        }
    }

    #[test]
    fn an_explicit_null_is_not_taken_for_a_default() {
        for body in [
            json!({"name": "a", "models": ["m"], "limits": "unlimited", "key_limits_per": null}),
            json!({"name": "a", "models": ["m"], "limits": "unlimited", "max_keys_per_owner": null}),
            json!({"name": "a", "models": ["m"], "limits": "unlimited", "max_tokens": {"cap": 5, "mode": null}}),
        ] {
            let e = spec(body.clone()).unwrap_err();
            assert!(e.reason.contains("invalid type: null"), "{body}: {e}");
        }
    }

    #[test]
    fn the_stored_form_is_the_written_one_and_the_gateway_gets_its_own_fields() {
        let written = json!({
            "name": "team-a",
            "models": ["m"],
            "limits": {"tokens": ["20000/min"]},
            "max_tokens": {"cap": 512},
            "cost_center": "CC-1",
            "groups": ["ml-team"],
        });
        let s = spec(written.clone()).unwrap();
        // Absent optional fields stay absent: nothing is filled in on the way.
        assert_eq!(serde_json::to_value(&s).unwrap(), written);
        let mut gateway = written;
        if let Some(map) = gateway.as_object_mut() {
            map.remove("name");
            map.remove("cost_center");
        }
        assert_eq!(s.filter_json(), gateway);
    }

    #[test]
    fn global_limits_are_the_gateways_configuration_not_the_control_planes() {
        let e = spec(json!({"name": "a", "models": ["m"],
                            "limits": {"tokens": [{"rate": "5/min", "mode": "global"}]}}))
        .unwrap_err();
        assert!(e.reason.contains("not synced"), "{e}");
    }
}
