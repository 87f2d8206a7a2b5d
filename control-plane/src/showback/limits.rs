//! Spend against limits: for each request and token limit of a
//! subscription, the window the gateway is counting now and how much of it
//! the sampled usage says is used.
//!
//! The windows are the filter's own (fixed, aligned to the Unix epoch: see
//! `maas_filter::limits::Rate`), read from the subscription by the filter's
//! own parser, so this view and the gateway agree on when a window starts.
//! It is a measurement, not the gateway's counter: usage arrives one
//! sampling interval late, buckets are a minute long (a window shorter than
//! a minute shows its whole current minute), and a local limit is enforced
//! per gateway replica while this sums all of them.

use maas_filter::limits::Rate;
use maas_filter::subscription::Quantity;
use serde_json::{json, Value};

use super::sampler::bucket_start;
use super::Usage;
use crate::subscription::SubscriptionSpec;

/// One limit's current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitWindow {
    pub quantity: Quantity,
    pub rate: Rate,
    /// Unix seconds; `end` is exclusive.
    pub start: i64,
    pub end: i64,
    /// The first usage bucket counted: the one holding `start`.
    pub measured_from: i64,
}

/// The current windows of `spec`'s subscription-wide limits at `now`, in
/// the configuration's order (requests, then tokens). A subscription the
/// filter's parser refuses (it cannot have been stored) has none.
pub fn windows(spec: &SubscriptionSpec, now: i64) -> Vec<LimitWindow> {
    let Ok(sub) = maas_filter::config::validate_served(&spec.name, &spec.gateway) else {
        return Vec::new();
    };
    let now_secs = u64::try_from(now).unwrap_or(0);
    sub.limits
        .group
        .rates
        .iter()
        .zip(&sub.limits.quantities)
        .map(|(rate, quantity)| {
            let start = rate.window_start(now_secs);
            let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            LimitWindow {
                quantity: *quantity,
                rate: *rate,
                start: to_i64(start),
                end: to_i64(rate.window_end(start)),
                measured_from: bucket_start(to_i64(start)),
            }
        })
        .collect()
}

impl LimitWindow {
    /// What `usage` (since [`Self::measured_from`]) used of this limit:
    /// requests, or prompt plus completion tokens, as the filter charges.
    pub fn used(&self, usage: &Usage) -> u64 {
        self.quantity.of(
            usage.requests,
            usage.prompt_tokens + usage.completion_tokens,
        )
    }

    /// As the API serves it.
    pub fn json(&self, subscription: &str, usage: &Usage) -> Value {
        let used = self.used(usage);
        json!({
            "subscription": subscription,
            "quantity": self.quantity.as_str(),
            "limit": self.rate.to_string(),
            "amount": self.rate.amount,
            "window_secs": self.rate.window_secs,
            "window_start": self.start,
            "window_end": self.end,
            "used": used,
            "remaining": self.rate.amount.saturating_sub(used),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limits: Value) -> SubscriptionSpec {
        SubscriptionSpec::from_json(
            json!({"name": "s", "models": ["m"], "limits": limits})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn windows_are_the_filters_fixed_windows_measured_from_their_bucket() {
        // 2024-10-04 13:37:25 UTC.
        let now = 1_728_049_045;
        let w = windows(
            &spec(json!({"requests": ["60/min", "100/10s"], "tokens": ["1000/day", "50/6h"]})),
            now,
        );
        let got: Vec<(Quantity, i64, i64, i64)> = w
            .iter()
            .map(|w| (w.quantity, w.start, w.end, w.measured_from))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Quantity::Requests,
                    1_728_049_020,
                    1_728_049_080,
                    1_728_049_020
                ),
                // Shorter than a bucket: its whole minute is counted.
                (
                    Quantity::Requests,
                    1_728_049_040,
                    1_728_049_050,
                    1_728_049_020
                ),
                (
                    Quantity::Tokens,
                    1_728_000_000,
                    1_728_086_400,
                    1_728_000_000
                ),
                (
                    Quantity::Tokens,
                    1_728_043_200,
                    1_728_064_800,
                    1_728_043_200
                ),
            ]
        );
        assert!(windows(&spec(json!("unlimited")), now).is_empty());
    }

    #[test]
    fn usage_counts_as_the_filter_charges_it() {
        let w = windows(
            &spec(json!({"requests": ["5/min"], "tokens": ["100/min"]})),
            120,
        );
        let usage = Usage {
            requests: 7,
            prompt_tokens: 30,
            completion_tokens: 12,
        };
        assert_eq!(w[0].used(&usage), 7);
        assert_eq!(w[0].json("s", &usage)["remaining"], 0, "over the limit");
        assert_eq!(w[1].used(&usage), 42);
        let j = w[1].json("s", &usage);
        assert_eq!(
            (j["limit"].as_str(), j["remaining"].as_u64()),
            (Some("100/min"), Some(58))
        );
    }
}
