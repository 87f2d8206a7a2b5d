//! The per-limit statuses of an RLS answer. Limitador's limits are CEL over
//! all the descriptors at once, so a status stands for one matching counter
//! (most restrictive first: least remaining), not for one descriptor as in
//! Envoy's reference service; Envoy only reads them for its optional
//! `x-ratelimit-*` headers, which take the smallest remaining either way.

use limitador::counter::Counter;
use maas_ratelimit_proto::{Code, DescriptorStatus, Duration, RateLimit, RateLimitUnit};

/// Statuses of `counters` after a check of `delta` hits. `limited` says the
/// check refused: then a counter is OVER_LIMIT when `delta` more does not fit
/// in it (its `remaining` is what it had before). When allowed, every one is
/// OK and `remaining` is what it has now.
pub fn descriptor_statuses(
    counters: &[Counter],
    limited: bool,
    delta: u64,
) -> Vec<DescriptorStatus> {
    let mut statuses: Vec<(u64, DescriptorStatus)> = counters
        .iter()
        .map(|counter| {
            let remaining = counter.remaining().unwrap_or(counter.max_value());
            let code = if limited && remaining < delta {
                Code::OverLimit
            } else {
                Code::Ok
            };
            let status = DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    requests_per_unit: saturate(counter.max_value()),
                    unit: RateLimitUnit::for_window(counter.window().as_secs()) as i32,
                    name: counter.limit().name().unwrap_or_default().to_string(),
                }),
                limit_remaining: saturate(remaining),
                duration_until_reset: counter.expires_in().map(Duration::from),
            };
            (remaining, status)
        })
        .collect();
    statuses.sort_by_key(|(remaining, _)| *remaining);
    statuses.into_iter().map(|(_, status)| status).collect()
}

/// RLS carries limits as 32-bit counts; a larger one reads as the largest.
fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use limitador::limit::{Context, Limit};

    fn counter(name: &str, max_value: u64, seconds: u64, remaining: u64) -> Counter {
        let mut limit = Limit::new("ns", max_value, seconds, vec![], Vec::new());
        limit.set_name(name.into());
        let mut counter = Counter::new(limit, &Context::default()).unwrap().unwrap();
        counter.set_remaining(remaining);
        counter.set_expires_in(std::time::Duration::from_secs(7));
        counter
    }

    #[test]
    fn most_restrictive_first_with_limit_and_reset() {
        let counters = [counter("roomy", 100, 3600, 90), counter("tight", 10, 60, 2)];
        let statuses = descriptor_statuses(&counters, false, 1);
        let names: Vec<_> = statuses
            .iter()
            .map(|s| s.current_limit.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(names, ["tight", "roomy"]);
        let tight = &statuses[0];
        assert_eq!(tight.code(), Code::Ok);
        assert_eq!(tight.limit_remaining, 2);
        let limit = tight.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit()),
            (10, RateLimitUnit::Minute)
        );
        assert_eq!(tight.duration_until_reset.unwrap().seconds, 7);
        assert_eq!(
            statuses[1].current_limit.as_ref().unwrap().unit(),
            RateLimitUnit::Hour
        );
    }

    #[test]
    fn only_counters_the_hits_do_not_fit_are_over_limit() {
        let counters = [counter("a", 10, 60, 3), counter("b", 10, 60, 5)];
        let codes: Vec<_> = descriptor_statuses(&counters, true, 4)
            .iter()
            .map(DescriptorStatus::code)
            .collect();
        assert_eq!(codes, [Code::OverLimit, Code::Ok]);
        // Allowed: nothing is over, whatever remains.
        let codes: Vec<_> = descriptor_statuses(&counters, false, 4)
            .iter()
            .map(DescriptorStatus::code)
            .collect();
        assert_eq!(codes, [Code::Ok, Code::Ok]);
    }

    #[test]
    fn large_limits_saturate() {
        let statuses = descriptor_statuses(
            &[counter("big", u64::from(u32::MAX) + 5, 1, u64::MAX)],
            false,
            1,
        );
        assert_eq!(statuses[0].limit_remaining, u32::MAX);
        assert_eq!(
            statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            u32::MAX
        );
    }
}
