//! OpenAI's rate-limit response headers (`x-ratelimit-limit-requests`,
//! `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-tokens`, …). Of several
//! limits of one kind, the headers report the one with the least room left,
//! which is the one a client must pace itself by.

use crate::limits::LimitState;
use crate::subscription::Quantity;

/// The tightest limit of each kind, as seen right after admission.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub requests: Option<LimitState>,
    pub tokens: Option<LimitState>,
}

impl RateLimitHeaders {
    pub fn observe(&mut self, quantity: Quantity, state: LimitState) {
        let slot = match quantity {
            Quantity::Requests => &mut self.requests,
            Quantity::Tokens => &mut self.tokens,
        };
        match slot {
            Some(current) if current.remaining <= state.remaining => {}
            _ => *slot = Some(state),
        }
    }

    /// Header name/value pairs, in a fixed order.
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(6);
        if let Some(r) = self.requests {
            out.push(("x-ratelimit-limit-requests", r.limit.to_string()));
            out.push(("x-ratelimit-remaining-requests", r.remaining.to_string()));
            out.push((
                "x-ratelimit-reset-requests",
                format_duration(r.reset_after_secs),
            ));
        }
        if let Some(t) = self.tokens {
            out.push(("x-ratelimit-limit-tokens", t.limit.to_string()));
            out.push(("x-ratelimit-remaining-tokens", t.remaining.to_string()));
            out.push((
                "x-ratelimit-reset-tokens",
                format_duration(t.reset_after_secs),
            ));
        }
        out
    }
}

/// OpenAI's duration style: `45s`, `6m0s`, `1h2m3s`.
pub fn format_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(limit: u64, remaining: u64, reset: u64) -> LimitState {
        LimitState {
            limit,
            remaining,
            reset_after_secs: reset,
        }
    }

    #[test]
    fn reports_the_tightest_limit_of_each_kind() {
        let mut h = RateLimitHeaders::default();
        h.observe(Quantity::Tokens, st(1_000_000, 900_000, 80_000));
        h.observe(Quantity::Tokens, st(20_000, 150, 42));
        h.observe(Quantity::Tokens, st(50_000, 40_000, 3000));
        h.observe(Quantity::Requests, st(10, 9, 59));
        assert_eq!(
            h.to_headers(),
            vec![
                ("x-ratelimit-limit-requests", "10".to_string()),
                ("x-ratelimit-remaining-requests", "9".to_string()),
                ("x-ratelimit-reset-requests", "59s".to_string()),
                ("x-ratelimit-limit-tokens", "20000".to_string()),
                ("x-ratelimit-remaining-tokens", "150".to_string()),
                ("x-ratelimit-reset-tokens", "42s".to_string()),
            ]
        );
    }

    #[test]
    fn no_limits_no_headers() {
        assert!(RateLimitHeaders::default().to_headers().is_empty());
    }

    #[test]
    fn durations() {
        for (s, want) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m0s"),
            (3723, "1h2m3s"),
            (86_400, "24h0m0s"),
        ] {
            assert_eq!(format_duration(s), want);
        }
    }
}
