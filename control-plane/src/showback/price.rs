//! Model prices, and what usage costs at them.
//!
//! A price is money per million prompt (input) and per million completion
//! (output) tokens, in one currency. Amounts are exact decimals with at most
//! six places, kept as integer millionths of the currency unit ([`Micros`]);
//! costs are kept in millionths of a micro ([`Cost`]: tokens × micros per
//! million), so adding up any number of rows is exact and only the final
//! figure is rounded, to six places. No float ever holds money.

use serde::Deserialize;
use serde_json::{json, Value};

use super::Usage;

/// An amount in millionths of a currency unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Micros(pub u64);

/// The largest price per million tokens accepted: far above any real one,
/// and small enough that no sum of costs can overflow.
const MAX_PRICE_MICROS: u64 = 1_000_000 * 1_000_000;

impl Micros {
    /// A plain decimal: digits, optionally a point and up to six more digits
    /// (no sign, no exponent, no spaces).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || text.ends_with('.') {
            return Err(format!("{text:?} is not a decimal amount such as \"0.15\""));
        }
        if fraction.len() > 6 {
            return Err(format!("{text:?} has more than 6 decimal places"));
        }
        let padded = format!("{fraction:0<6}");
        let micros = whole
            .parse::<u64>()
            .ok()
            .and_then(|w| w.checked_mul(1_000_000))
            .and_then(|w| padded.parse::<u64>().ok().and_then(|f| w.checked_add(f)))
            .filter(|m| *m <= MAX_PRICE_MICROS)
            .ok_or_else(|| format!("{text:?} is above the largest price, 1000000"))?;
        Ok(Micros(micros))
    }

    /// The shortest exact decimal: `0.15`, `3`, `0.000001`.
    pub fn decimal(self) -> String {
        let (whole, fraction) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if fraction == 0 {
            return whole.to_string();
        }
        let fraction = format!("{fraction:06}");
        format!("{whole}.{}", fraction.trim_end_matches('0'))
    }
}

/// Money in 10⁻¹² currency units: exact for any usage at any price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost(u128);

impl Cost {
    /// What `usage` costs at `price`.
    pub fn of(usage: &Usage, price: &Price) -> Self {
        let part =
            |tokens: u64, per_million: Micros| u128::from(tokens) * u128::from(per_million.0);
        Cost(
            part(usage.prompt_tokens, price.prompt)
                + part(usage.completion_tokens, price.completion),
        )
    }

    /// Rounded half up to six decimal places, always written with six:
    /// `0.001050`.
    pub fn decimal(self) -> String {
        let micros = (self.0 + 500_000) / 1_000_000;
        format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, other: Cost) -> Cost {
        Cost(self.0.saturating_add(other.0))
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        *self = *self + other;
    }
}

/// What one model costs per million tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub model: String,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    pub prompt: Micros,
    pub completion: Micros,
}

/// Why a price was refused; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PriceError {
    pub field: String,
    pub reason: String,
}

fn error(field: &str, reason: impl Into<String>) -> PriceError {
    PriceError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A JSON number or a string: `0.15` and `"0.15"` are the same price. A
/// number is read from its text, never through a float.
#[derive(Deserialize)]
#[serde(untagged)]
enum Amount {
    Text(String),
    Number(serde_json::Number),
}

impl Amount {
    fn micros(&self, field: &str) -> Result<Micros, PriceError> {
        let text = match self {
            Amount::Text(t) => t.clone(),
            Amount::Number(n) => n.to_string(),
        };
        Micros::parse(&text).map_err(|reason| error(field, reason))
    }
}

/// The body of `PUT /maas-api/v1/prices/{model}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    /// Optional; when present it must be the path's.
    #[serde(default)]
    model: Option<String>,
    currency: String,
    prompt_per_million: Amount,
    completion_per_million: Amount,
}

impl Price {
    /// Parses and validates the price of `model` from a JSON body.
    pub fn from_json(model: &str, body: &[u8]) -> Result<Self, PriceError> {
        crate::subscription::check_model_name("model", model)
            .map_err(|e| error(&e.field, e.reason))?;
        let raw: RawPrice =
            serde_json::from_slice(body).map_err(|e| error("(document)", e.to_string()))?;
        if let Some(named) = raw.model.as_deref().filter(|m| *m != model) {
            return Err(error(
                "model",
                format!("the body says {named:?}, the path {model:?}"),
            ));
        }
        if raw.currency.len() != 3 || !raw.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(error(
                "currency",
                format!(
                    "{:?} is not a three-letter ISO 4217 code such as \"USD\"",
                    raw.currency
                ),
            ));
        }
        Ok(Price {
            model: model.to_string(),
            currency: raw.currency,
            prompt: raw.prompt_per_million.micros("prompt_per_million")?,
            completion: raw
                .completion_per_million
                .micros("completion_per_million")?,
        })
    }

    /// As the API serves it: amounts as exact decimal strings.
    pub fn json(&self) -> Value {
        json!({
            "model": self.model,
            "currency": self.currency,
            "prompt_per_million": self.prompt.decimal(),
            "completion_per_million": self.completion.decimal(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_decimals_with_at_most_six_places() {
        for (text, micros) in [
            ("0.15", 150_000),
            ("3", 3_000_000),
            ("0.000001", 1),
            ("12.5", 12_500_000),
            ("1000000", MAX_PRICE_MICROS),
        ] {
            let m = Micros::parse(text).unwrap();
            assert_eq!(m, Micros(micros), "{text}");
            assert_eq!(
                Micros::parse(&m.decimal()).unwrap(),
                m,
                "{text} round trips"
            );
        }
        for (text, needle) in [
            ("", "not a decimal"),
            ("-1", "not a decimal"),
            ("1e-7", "not a decimal"),
            (".5", "not a decimal"),
            ("5.", "not a decimal"),
            (" 1", "not a decimal"),
            ("0.0000001", "more than 6"),
            ("1000000.000001", "largest price"),
            ("99999999999999999999", "largest price"),
        ] {
            let e = Micros::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn costs_add_up_exactly_and_round_once() {
        let price = Price {
            model: "m".into(),
            currency: "USD".into(),
            prompt: Micros::parse("0.15").unwrap(),
            completion: Micros::parse("0.6").unwrap(),
        };
        let usage = |p, c| Usage {
            requests: 1,
            prompt_tokens: p,
            completion_tokens: c,
        };
        // 7 prompt tokens at 0.15/M: 0.00000105, rounded to 0.000001.
        assert_eq!(Cost::of(&usage(7, 0), &price).decimal(), "0.000001");
        // A million rows of it are 1.05 exactly, not a million roundings.
        let mut total = Cost::default();
        for _ in 0..1_000_000 {
            total += Cost::of(&usage(7, 0), &price);
        }
        assert_eq!(total.decimal(), "1.050000");
        // 1M prompt + 2M completion tokens: 0.15 + 1.2.
        assert_eq!(
            Cost::of(&usage(1_000_000, 2_000_000), &price).decimal(),
            "1.350000"
        );
        // Half a micro rounds up.
        assert_eq!(Cost(500_000).decimal(), "0.000001");
        assert_eq!(Cost(499_999).decimal(), "0.000000");
        // The largest price on the largest counts does not overflow.
        let dear = Price {
            prompt: Micros(MAX_PRICE_MICROS),
            completion: Micros(MAX_PRICE_MICROS),
            ..price
        };
        let most = Cost::of(&usage(u64::MAX, u64::MAX), &dear);
        assert!(most > Cost::default());
    }

    #[test]
    fn prices_are_validated_naming_the_field() {
        let ok = Price::from_json(
            "m1",
            br#"{"currency": "EUR", "prompt_per_million": 0.15, "completion_per_million": "2"}"#,
        )
        .unwrap();
        assert_eq!(ok.prompt, Micros(150_000));
        assert_eq!(ok.completion, Micros(2_000_000));
        assert_eq!(ok.json()["prompt_per_million"], "0.15");
        for (model, body, field, needle) in [
            (
                "m1",
                r#"{"currency": "usd", "prompt_per_million": 1, "completion_per_million": 1}"#,
                "currency",
                "ISO 4217",
            ),
            (
                "m1",
                r#"{"currency": "USD", "prompt_per_million": -1, "completion_per_million": 1}"#,
                "prompt_per_million",
                "not a decimal",
            ),
            (
                "m1",
                r#"{"currency": "USD", "prompt_per_million": 1, "completion_per_million": 0.0000001}"#,
                "completion_per_million",
                "not a decimal",
            ),
            (
                "m1",
                r#"{"currency": "USD", "prompt_per_million": 1, "completion_per_million": "1.1234567"}"#,
                "completion_per_million",
                "more than 6",
            ),
            (
                "m1",
                r#"{"currency": "USD", "prompt_per_million": 1}"#,
                "(document)",
                "completion_per_million",
            ),
            (
                "m1",
                r#"{"currency": "USD", "prompt_per_million": 1, "completion_per_million": 1, "tier": 2}"#,
                "(document)",
                "unknown field `tier`",
            ),
            (
                "m1",
                r#"{"model": "m2", "currency": "USD", "prompt_per_million": 1, "completion_per_million": 1}"#,
                "model",
                "the path",
            ),
            (
                "a b",
                r#"{"currency": "USD", "prompt_per_million": 1, "completion_per_million": 1}"#,
                "model",
                "without spaces",
            ),
        ] {
            let e = Price::from_json(model, body.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
            assert!(e.reason.contains(needle), "{body}: {e}");
        }
    }
}
