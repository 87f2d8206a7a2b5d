//! How long a minted key lives: the `expires_in` its caller asks for, within
//! the operator's optional maximum (`serve --max-key-lifetime`).
//!
//! Why a maximum: the control plane sees a subscription's `groups` change,
//! and revokes the keys minted through a group it dropped, but it never sees
//! a user leave a group at the identity provider. A key outlives the group
//! membership that let it be minted. With a maximum, no key minted here works
//! longer than that after its creation, which bounds access after an
//! IdP-side removal. Without one (the default) a key minted without
//! `expires_in` never expires, as before.
//!
//! Invariant: with a maximum `M`, every key minted gets an expiry at most `M`
//! after its creation; a caller asking for more is refused, not silently
//! given less (a script that asks for 90 days learns at once that it gets
//! no such key).

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::time::parse_duration_secs;

/// The longest lifetime anyone may ask for, and the largest maximum.
pub const LONGEST_SECS: i64 = 366 * 86_400;

/// A key lifetime in seconds, 1 s to [`LONGEST_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyLifetime(i64);

/// Why a lifetime was refused; the caller prefixes the field or flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifetimeError {
    #[error("{0} is not a lifetime between 1 s and 366 d (seconds, or e.g. \"30d\", \"12h\")")]
    Invalid(String),
    #[error("{asked} is longer than the longest key lifetime this control plane allows ({max})")]
    OverMaximum {
        asked: KeyLifetime,
        max: KeyLifetime,
    },
}

impl KeyLifetime {
    pub fn secs(self) -> i64 {
        self.0
    }

    fn from_secs(secs: Option<i64>, shown: impl fmt::Display) -> Result<Self, LifetimeError> {
        match secs {
            Some(s) if (1..=LONGEST_SECS).contains(&s) => Ok(Self(s)),
            _ => Err(LifetimeError::Invalid(shown.to_string())),
        }
    }

    /// `expires_in` as a request spells it: seconds as a number, or a string
    /// with an optional unit (`s`, `m`, `h`, `d`).
    pub fn from_json(v: &Value) -> Result<Self, LifetimeError> {
        let secs = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => parse_duration_secs(s),
            _ => None,
        };
        Self::from_secs(secs, v)
    }
}

impl FromStr for KeyLifetime {
    type Err = LifetimeError;

    /// As the command line and the environment spell it: `30d`, `12h`, `3600`.
    fn from_str(text: &str) -> Result<Self, LifetimeError> {
        Self::from_secs(parse_duration_secs(text), format!("{text:?}"))
    }
}

impl fmt::Display for KeyLifetime {
    /// In the largest unit that divides it: `30d`, `90m`, `61s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (count, unit) = [(86_400, "d"), (3600, "h"), (60, "m")]
            .into_iter()
            .find(|(size, _)| self.0 % size == 0)
            .map_or((self.0, "s"), |(size, unit)| (self.0 / size, unit));
        write!(f, "{count}{unit}")
    }
}

/// When a key minted at `created_at` expires (`None`: never): after the
/// lifetime `asked`, or without one after `max`; asking for more than `max`
/// is refused.
pub fn expiry(
    asked: Option<KeyLifetime>,
    max: Option<KeyLifetime>,
    created_at: i64,
) -> Result<Option<i64>, LifetimeError> {
    let lifetime = match (asked, max) {
        (Some(asked), Some(max)) if asked > max => {
            return Err(LifetimeError::OverMaximum { asked, max })
        }
        (Some(l), _) | (None, Some(l)) => Some(l),
        (None, None) => None,
    };
    Ok(lifetime.map(|l| created_at.saturating_add(l.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn days(n: i64) -> KeyLifetime {
        KeyLifetime(n * 86_400)
    }

    #[test]
    fn lifetimes_are_read_from_requests_and_flags_within_bounds() {
        for (v, want) in [
            (json!(3600), Some(3600)),
            (json!("30d"), Some(30 * 86_400)),
            (json!("12h"), Some(12 * 3600)),
            (json!("366d"), Some(LONGEST_SECS)),
            (json!("367d"), None),
            (json!(0), None),
            (json!("-5d"), None),
            (json!("10y"), None),
            (json!(1.5), None),
            (json!(true), None),
        ] {
            assert_eq!(
                KeyLifetime::from_json(&v).ok().map(KeyLifetime::secs),
                want,
                "{v}"
            );
        }
        assert_eq!("30d".parse::<KeyLifetime>(), Ok(days(30)));
        assert_eq!(
            "0s".parse::<KeyLifetime>(),
            Err(LifetimeError::Invalid("\"0s\"".into()))
        );
        assert!("".parse::<KeyLifetime>().is_err());
    }

    #[test]
    fn lifetimes_print_in_their_largest_whole_unit() {
        for (secs, shown) in [(2_592_000, "30d"), (5400, "90m"), (7200, "2h"), (61, "61s")] {
            assert_eq!(KeyLifetime(secs).to_string(), shown);
        }
    }

    #[test]
    fn the_maximum_fills_in_a_missing_lifetime_and_refuses_a_longer_one() {
        let at = 1_000;
        for (asked, max, want) in [
            // No maximum: as before, a key without a lifetime never expires.
            (None, None, Ok(None)),
            (Some(days(200)), None, Ok(Some(at + 200 * 86_400))),
            (None, Some(days(30)), Ok(Some(at + 30 * 86_400))),
            (Some(days(7)), Some(days(30)), Ok(Some(at + 7 * 86_400))),
            (Some(days(30)), Some(days(30)), Ok(Some(at + 30 * 86_400))),
            (
                Some(days(31)),
                Some(days(30)),
                Err(LifetimeError::OverMaximum {
                    asked: days(31),
                    max: days(30),
                }),
            ),
        ] {
            assert_eq!(expiry(asked, max, at), want, "{asked:?} within {max:?}");
        }
    }
}
