//! `Rate`: an amount allowed per fixed window, written `10/min`, `100/10s`, `1000000/day`.
//!
//! Grammar: `<amount>/<multiplier?><unit>` with no whitespace, where `amount` ≥ 1 and
//! `multiplier` ≥ 1 are decimal integers and `unit` is one of `s|sec|second|seconds`,
//! `m|min|minute|minutes`, `h|hour|hours`, `d|day|days`. The window is between 1 s and
//! 31 days. `Display` writes the canonical form (`s`, `min`, `h`, `day`, the largest unit
//! that divides the window), which parses back to the same `Rate`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest window a rate may have: 31 days, so a monthly quota is not mistaken for
/// something the filter's fixed windows can enforce precisely.
pub const MAX_WINDOW_SECS: u64 = 31 * DAY;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Units accepted by the parser and the number of seconds each stands for.
const UNITS: &[(&str, u64)] = &[
    ("s", 1),
    ("sec", 1),
    ("second", 1),
    ("seconds", 1),
    ("m", MINUTE),
    ("min", MINUTE),
    ("minute", MINUTE),
    ("minutes", MINUTE),
    ("h", HOUR),
    ("hour", HOUR),
    ("hours", HOUR),
    ("d", DAY),
    ("day", DAY),
    ("days", DAY),
];

/// Units `Display` writes, largest first.
const CANONICAL_UNITS: &[(&str, u64)] = &[("day", DAY), ("h", HOUR), ("min", MINUTE), ("s", 1)];

/// At most `amount` per fixed window of `window_secs` seconds aligned to the Unix epoch.
///
/// A `Rate` obtained from `FromStr`/`Deserialize` always has `amount ≥ 1` and
/// `1 ≤ window_secs ≤ MAX_WINDOW_SECS`. The fields are public for construction in tests
/// and configuration code; the window arithmetic below stays panic-free for any values
/// (a zero window is treated as 1 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub amount: u64,
    pub window_secs: u64,
}

impl Rate {
    /// Start (Unix seconds) of the window that contains `now_secs`.
    pub fn window_start(&self, now_secs: u64) -> u64 {
        let window = self.window_secs.max(1);
        now_secs - now_secs % window
    }

    /// End (exclusive, Unix seconds) of the window that starts at `window_start`.
    pub fn window_end(&self, window_start: u64) -> u64 {
        window_start.saturating_add(self.window_secs.max(1))
    }

    /// Seconds from `now_secs` until the window starting at `window_start` ends (0 if it
    /// has). Computed from the elapsed time rather than the end, which may not fit in u64.
    pub fn reset_after(&self, window_start: u64, now_secs: u64) -> u64 {
        let window = self.window_secs.max(1);
        match now_secs.checked_sub(window_start) {
            Some(elapsed) => window.saturating_sub(elapsed),
            // The window has not begun yet (another worker's clock is ahead of ours).
            None => window_start.abs_diff(now_secs).saturating_add(window),
        }
    }
}

/// Why a rate string was rejected; `input` is the whole string as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate `{input}`: {reason}")]
pub struct RateError {
    pub input: String,
    pub reason: RateErrorReason,
}

/// The part of a rate string that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateErrorReason {
    #[error("it is empty; expected `<amount>/<window>`, e.g. `10/min`")]
    Empty,
    #[error("it contains whitespace")]
    Whitespace,
    #[error("there is no `/` between the amount and the window; expected e.g. `10/min`")]
    MissingSlash,
    #[error("the amount before `/` is missing")]
    MissingAmount,
    #[error("the amount `{0}` is not a whole number")]
    AmountNotInteger(String),
    #[error("the amount must be at least 1")]
    AmountZero,
    #[error("the amount `{0}` is larger than {max}", max = u64::MAX)]
    AmountTooLarge(String),
    #[error("the window after `/` is missing")]
    MissingWindow,
    #[error("the window `{0}` has no unit; expected s, min, h or day")]
    MissingUnit(String),
    #[error(
        "unknown window unit `{0}`; expected s|sec|second(s), m|min|minute(s), h|hour(s) or d|day(s)"
    )]
    UnknownUnit(String),
    #[error("the window multiplier must be at least 1")]
    MultiplierZero,
    #[error("the window `{0}` is longer than 31 days")]
    WindowTooLong(String),
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse(input).map_err(|reason| RateError {
            input: input.to_owned(),
            reason,
        })
    }
}

fn parse(input: &str) -> Result<Rate, RateErrorReason> {
    if input.is_empty() {
        return Err(RateErrorReason::Empty);
    }
    if input.chars().any(char::is_whitespace) {
        return Err(RateErrorReason::Whitespace);
    }
    let (amount, window) = input.split_once('/').ok_or(RateErrorReason::MissingSlash)?;
    let amount = parse_amount(amount)?;
    let window_secs = parse_window(window)?;
    Ok(Rate {
        amount,
        window_secs,
    })
}

fn parse_amount(text: &str) -> Result<u64, RateErrorReason> {
    if text.is_empty() {
        return Err(RateErrorReason::MissingAmount);
    }
    // `u64::from_str` would also accept a leading `+`; the grammar is digits only.
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RateErrorReason::AmountNotInteger(text.to_owned()));
    }
    match text.parse::<u64>() {
        Ok(0) => Err(RateErrorReason::AmountZero),
        Ok(amount) => Ok(amount),
        // All digits, so the only way to fail is being too large.
        Err(_) => Err(RateErrorReason::AmountTooLarge(text.to_owned())),
    }
}

fn parse_window(text: &str) -> Result<u64, RateErrorReason> {
    if text.is_empty() {
        return Err(RateErrorReason::MissingWindow);
    }
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(unit_at);
    if unit.is_empty() {
        return Err(RateErrorReason::MissingUnit(text.to_owned()));
    }
    let unit_secs = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, secs)| *secs)
        .ok_or_else(|| RateErrorReason::UnknownUnit(unit.to_owned()))?;
    let multiplier = if digits.is_empty() {
        1
    } else {
        match digits.parse::<u64>() {
            Ok(0) => return Err(RateErrorReason::MultiplierZero),
            Ok(multiplier) => multiplier,
            Err(_) => return Err(RateErrorReason::WindowTooLong(text.to_owned())),
        }
    };
    match multiplier.checked_mul(unit_secs) {
        Some(secs) if secs <= MAX_WINDOW_SECS => Ok(secs),
        _ => Err(RateErrorReason::WindowTooLong(text.to_owned())),
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `CANONICAL_UNITS` ends with seconds, which divide every window; the fallback only
        // covers a hand-built zero window.
        let (unit, unit_secs) = CANONICAL_UNITS
            .iter()
            .copied()
            .find(|(_, secs)| {
                self.window_secs != 0 && self.window_secs.checked_rem(*secs) == Some(0)
            })
            .unwrap_or(("s", 1));
        let multiplier = self.window_secs / unit_secs;
        if multiplier == 1 {
            write!(f, "{}/{unit}", self.amount)
        } else {
            write!(f, "{}/{multiplier}{unit}", self.amount)
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(amount: u64, window_secs: u64) -> Rate {
        Rate {
            amount,
            window_secs,
        }
    }

    #[test]
    fn accepts_every_documented_form() {
        let cases: &[(&str, Rate)] = &[
            ("10/min", rate(10, 60)),
            ("20000/min", rate(20_000, 60)),
            ("1000000/day", rate(1_000_000, DAY)),
            ("100/10s", rate(100, 10)),
            ("5000/2h", rate(5000, 2 * HOUR)),
            ("3/second", rate(3, 1)),
            ("1/s", rate(1, 1)),
            ("1/sec", rate(1, 1)),
            ("1/seconds", rate(1, 1)),
            ("1/30seconds", rate(1, 30)),
            ("1/m", rate(1, 60)),
            ("1/minute", rate(1, 60)),
            ("1/5minutes", rate(1, 300)),
            ("1/h", rate(1, HOUR)),
            ("1/hour", rate(1, HOUR)),
            ("1/24hours", rate(1, DAY)),
            ("1/d", rate(1, DAY)),
            ("1/7days", rate(1, 7 * DAY)),
            ("1/31d", rate(1, MAX_WINDOW_SECS)),
            ("1/2678400s", rate(1, MAX_WINDOW_SECS)),
            ("1/1s", rate(1, 1)),
            ("007/01min", rate(7, 60)),
            ("18446744073709551615/min", rate(u64::MAX, 60)),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Rate>(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn rejects_malformed_rates_naming_the_wrong_part() {
        use RateErrorReason::*;
        let cases: &[(&str, RateErrorReason, &str)] = &[
            ("", Empty, "invalid rate ``: it is empty; expected `<amount>/<window>`, e.g. `10/min`"),
            (" 10/min", Whitespace, "invalid rate ` 10/min`: it contains whitespace"),
            ("10 / min", Whitespace, "invalid rate `10 / min`: it contains whitespace"),
            ("10/min\n", Whitespace, "invalid rate `10/min\n`: it contains whitespace"),
            ("10min", MissingSlash, "invalid rate `10min`: there is no `/` between the amount and the window; expected e.g. `10/min`"),
            ("/min", MissingAmount, "invalid rate `/min`: the amount before `/` is missing"),
            ("ten/min", AmountNotInteger("ten".into()), "invalid rate `ten/min`: the amount `ten` is not a whole number"),
            ("-5/min", AmountNotInteger("-5".into()), "invalid rate `-5/min`: the amount `-5` is not a whole number"),
            ("+5/min", AmountNotInteger("+5".into()), "invalid rate `+5/min`: the amount `+5` is not a whole number"),
            ("1.5/min", AmountNotInteger("1.5".into()), "invalid rate `1.5/min`: the amount `1.5` is not a whole number"),
            ("0/min", AmountZero, "invalid rate `0/min`: the amount must be at least 1"),
            ("000/min", AmountZero, "invalid rate `000/min`: the amount must be at least 1"),
            ("18446744073709551616/min", AmountTooLarge("18446744073709551616".into()), "invalid rate `18446744073709551616/min`: the amount `18446744073709551616` is larger than 18446744073709551615"),
            ("10/", MissingWindow, "invalid rate `10/`: the window after `/` is missing"),
            ("10/60", MissingUnit("60".into()), "invalid rate `10/60`: the window `60` has no unit; expected s, min, h or day"),
            ("10/week", UnknownUnit("week".into()), "invalid rate `10/week`: unknown window unit `week`; expected s|sec|second(s), m|min|minute(s), h|hour(s) or d|day(s)"),
            ("10/MIN", UnknownUnit("MIN".into()), "invalid rate `10/MIN`: unknown window unit `MIN`; expected s|sec|second(s), m|min|minute(s), h|hour(s) or d|day(s)"),
            ("10/ms", UnknownUnit("ms".into()), "invalid rate `10/ms`: unknown window unit `ms`; expected s|sec|second(s), m|min|minute(s), h|hour(s) or d|day(s)"),
            ("10/min/s", UnknownUnit("min/s".into()), "invalid rate `10/min/s`: unknown window unit `min/s`; expected s|sec|second(s), m|min|minute(s), h|hour(s) or d|day(s)"),
            ("10/1.5h", UnknownUnit(".5h".into()), "invalid rate `10/1.5h`: unknown window unit `.5h`; expected s|sec|second(s), m|min|minute(s), h|hour(s) or d|day(s)"),
            ("10/0s", MultiplierZero, "invalid rate `10/0s`: the window multiplier must be at least 1"),
            ("10/32d", WindowTooLong("32d".into()), "invalid rate `10/32d`: the window `32d` is longer than 31 days"),
            ("10/2678401s", WindowTooLong("2678401s".into()), "invalid rate `10/2678401s`: the window `2678401s` is longer than 31 days"),
            ("10/745h", WindowTooLong("745h".into()), "invalid rate `10/745h`: the window `745h` is longer than 31 days"),
            // Multiplier × unit overflows u64, and a multiplier that does not fit u64 at all.
            ("10/213503982334601days", WindowTooLong("213503982334601days".into()), "invalid rate `10/213503982334601days`: the window `213503982334601days` is longer than 31 days"),
            ("10/99999999999999999999999s", WindowTooLong("99999999999999999999999s".into()), "invalid rate `10/99999999999999999999999s`: the window `99999999999999999999999s` is longer than 31 days"),
        ];
        for (input, reason, message) in cases {
            let err = input.parse::<Rate>().expect_err(input);
            assert_eq!(&err.reason, reason, "{input:?}");
            assert_eq!(err.input, *input);
            assert_eq!(err.to_string(), *message, "{input:?}");
        }
    }

    #[test]
    fn displays_the_canonical_form() {
        let cases: &[(Rate, &str)] = &[
            (rate(10, 60), "10/min"),
            (rate(1_000_000, DAY), "1000000/day"),
            (rate(100, 10), "100/10s"),
            (rate(5000, 2 * HOUR), "5000/2h"),
            (rate(3, 1), "3/s"),
            (rate(1, 90), "1/90s"),
            (rate(1, 120), "1/2min"),
            (rate(1, 7 * DAY), "1/7day"),
            (rate(1, 36 * HOUR), "1/36h"),
            (rate(1, 0), "1/0s"),
        ];
        for (rate, want) in cases {
            assert_eq!(rate.to_string(), *want);
        }
    }

    #[test]
    fn deserializes_from_and_serializes_to_the_string_form() {
        let parsed: Rate = serde_json::from_str(r#""5000/2h""#).unwrap();
        assert_eq!(parsed, rate(5000, 2 * HOUR));
        assert_eq!(serde_json::to_string(&parsed).unwrap(), r#""5000/2h""#);

        let err = serde_json::from_str::<Rate>(r#""0/min""#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid rate `0/min`: the amount must be at least 1"),
            "{err}"
        );
        assert!(serde_json::from_str::<Rate>("60").is_err());
    }

    #[test]
    fn window_arithmetic_is_epoch_aligned_and_total() {
        let per_min = rate(1, 60);
        assert_eq!(per_min.window_start(119), 60);
        assert_eq!(per_min.reset_after(60, 119), 1);
        assert_eq!(per_min.reset_after(60, 60), 60);
        assert_eq!(per_min.reset_after(60, 500), 0);
        // A hand-built zero window behaves like 1 s instead of dividing by zero.
        let zero = rate(1, 0);
        assert_eq!(zero.window_start(41), 41);
        assert_eq!(zero.reset_after(41, 41), 1);
        // A window that has not begun yet.
        assert_eq!(per_min.reset_after(120, 100), 80);
        // No overflow at the end of time (u64::MAX % 60 == 15).
        assert_eq!(per_min.window_end(u64::MAX - 3), u64::MAX);
        assert_eq!(per_min.window_start(u64::MAX), u64::MAX - 15);
        assert_eq!(per_min.reset_after(u64::MAX - 15, u64::MAX), 45);
    }

    proptest! {
        #[test]
        fn display_round_trips(amount in 1u64.., window_secs in 1..=MAX_WINDOW_SECS) {
            let rate = rate(amount, window_secs);
            prop_assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
        }

        #[test]
        fn parser_never_panics_and_accepts_only_valid_rates(input in "\\PC{0,24}|[0-9]{0,22}/[0-9]{0,22}[a-z]{0,8}") {
            if let Ok(rate) = input.parse::<Rate>() {
                prop_assert!(rate.amount >= 1);
                prop_assert!((1..=MAX_WINDOW_SECS).contains(&rate.window_secs));
            }
        }
    }
}
