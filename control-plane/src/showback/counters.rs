//! The gateway filter's usage counters as Envoy exposes them
//! (`/stats/prometheus`), and the usage between two readings.
//!
//! A series is a subscription, a model and the caller's key id (the `key`
//! label; none for token holders, and none on counters a filter older than
//! that label wrote, which therefore read as usage without a key).
//!
//! Envoy's counters are cumulative per process, so after a gateway restart
//! a reading's whole value is new usage. A restart shows as a counter lower
//! than before, or, when the new process has already climbed past the old
//! values, as an uptime (`envoy_server_uptime`) lower than the previous one
//! or shorter than the time since the previous reading.

use std::collections::BTreeMap;

use maas_prometheus_text::Sample;

/// How far `envoy_server_uptime` may trail the time since Envoy started:
/// Envoy refreshes it at each stats flush (every 5 s by default), and it and
/// the sampler's clock are whole seconds. Only an uptime shorter than the
/// time since the previous reading by more than this proves a restart.
pub const UPTIME_SLACK_SECS: u64 = 10;

/// One reading of one gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// When it was read: seconds on the sampler's monotonic clock (a wall
    /// clock stepped forward would pass for a gateway's restart).
    pub at: i64,
    /// Envoy's uptime then, when it exposes one.
    pub uptime: Option<u64>,
    pub counters: BTreeMap<UsageKey, Usage>,
}

impl Snapshot {
    /// The counters and uptime in an exposition text read at `at`.
    pub fn read(text: &str, at: i64) -> Self {
        // Parsed once: a large gateway's statistics are many megabytes.
        let samples = maas_prometheus_text::parse(text);
        Self {
            at,
            uptime: uptime_of(&samples),
            counters: counters_of(&samples),
        }
    }

    /// The baseline after `current`, read after `self`: `current`'s
    /// counters, and those of `self` that `current` lacks unless the
    /// gateway restarted in between. A series missing from one reading (a
    /// partial answer, a counter Envoy dropped) comes back to a baseline
    /// that still knows it, so its whole history is not counted again.
    pub fn followed_by(self, current: Snapshot) -> Snapshot {
        if restarted(&self, &current) {
            return current;
        }
        let mut counters = self.counters;
        counters.extend(current.counters);
        Snapshot {
            counters,
            ..current
        }
    }
}

/// Usage of one subscription on one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Admitted requests (every outcome the filter charged).
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.requests = self.requests.saturating_add(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
    }
}

/// One series of the filter's usage counters: a subscription's use of a
/// model through one key (`key` empty: a token holder, who has none).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    pub subscription: String,
    pub model: String,
    pub key: String,
}

/// Outcomes of `maas_requests_total` that were admitted and charged; refusals
/// (`rate_limited`, `rejected`, `limiter_error`) cost nothing.
const CHARGED: &[&str] = &["ok", "upstream_error", "incomplete"];

/// Reads the per-(subscription, model, key) counters out of an exposition text.
pub fn read(text: &str) -> BTreeMap<UsageKey, Usage> {
    counters_of(&maas_prometheus_text::parse(text))
}

fn counters_of(samples: &[Sample]) -> BTreeMap<UsageKey, Usage> {
    let mut out: BTreeMap<UsageKey, Usage> = BTreeMap::new();
    for sample in samples {
        let (name, value) = (sample.name.as_str(), count(sample.value));
        let label = |key: &str| {
            sample
                .labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let Some(value) = value else {
            continue;
        };
        let field: fn(&mut Usage) -> &mut u64 = match name {
            "maas_requests_total" if label("outcome").is_some_and(|o| CHARGED.contains(&o)) => {
                |u| &mut u.requests
            }
            "maas_prompt_tokens_total" => |u| &mut u.prompt_tokens,
            "maas_completion_tokens_total" => |u| &mut u.completion_tokens,
            _ => continue,
        };
        let (Some(sub), Some(model)) = (label("subscription"), label("model")) else {
            continue;
        };
        let key = UsageKey {
            subscription: sub.to_string(),
            model: model.to_string(),
            key: label("key").unwrap_or_default().to_string(),
        };
        let entry = out.entry(key).or_default();
        *field(entry) += value;
    }
    out
}

/// Envoy's `envoy_server_uptime` (seconds since that Envoy started).
fn uptime_of(samples: &[Sample]) -> Option<u64> {
    samples
        .iter()
        .find(|s| s.name == "envoy_server_uptime")
        .and_then(|s| count(s.value))
}

/// A counter's value as the integer Envoy keeps; anything else is not one.
fn count(value: f64) -> Option<u64> {
    (value.is_finite() && value >= 0.0).then_some(value as u64)
}

/// Whether the gateway restarted between `previous` and `current` (then
/// every counter of `current` is new usage): its uptime went down, or is
/// shorter than the time between the readings. One process's counters
/// never go down either, but that is told per series (see [`delta`]).
pub fn restarted(previous: &Snapshot, current: &Snapshot) -> bool {
    match (previous.uptime, current.uptime) {
        (_, None) => false,
        // One process's uptime never goes down.
        (Some(before), Some(now)) if now < before => true,
        (_, Some(now)) => {
            let elapsed = u64::try_from(current.at.saturating_sub(previous.at)).unwrap_or(0);
            now.saturating_add(UPTIME_SLACK_SECS) < elapsed
        }
    }
}

/// Usage between two readings of one gateway, per key. A series lower
/// than before started again (its counter was dropped and made anew, or
/// the gateway restarted): all of it is new; the others count their
/// difference.
pub fn delta(previous: &Snapshot, current: &Snapshot) -> BTreeMap<UsageKey, Usage> {
    let restarted = restarted(previous, current);
    current
        .counters
        .iter()
        .map(|(k, now)| {
            let before = match previous.counters.get(k) {
                Some(before)
                    if !restarted
                        && now.requests >= before.requests
                        && now.prompt_tokens >= before.prompt_tokens
                        && now.completion_tokens >= before.completion_tokens =>
                {
                    *before
                }
                _ => Usage::default(),
            };
            let d = Usage {
                requests: now.requests - before.requests,
                prompt_tokens: now.prompt_tokens - before.prompt_tokens,
                completion_tokens: now.completion_tokens - before.completion_tokens,
            };
            (k.clone(), d)
        })
        .filter(|(_, d)| *d != Usage::default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE maas_requests_total counter
maas_requests_total{subscription="free",model="m1",outcome="ok"} 7
maas_requests_total{subscription="free",model="m1",outcome="incomplete"} 1
maas_requests_total{subscription="free",model="m1",outcome="rate_limited"} 50
maas_prompt_tokens_total{subscription="free",model="m1"} 300
maas_completion_tokens_total{subscription="free",model="m1"} 120
maas_total_tokens_total{subscription="free",model="m1"} 420
maas_prompt_tokens_total{subscription="team-a",model="m2"} 5
envoy_cluster_upstream_rq{envoy_cluster_name="x"} 9
"#;

    fn key(s: &str, m: &str) -> UsageKey {
        keyed(s, m, "")
    }

    fn keyed(s: &str, m: &str, k: &str) -> UsageKey {
        UsageKey {
            subscription: s.into(),
            model: m.into(),
            key: k.into(),
        }
    }

    #[test]
    fn reads_charged_requests_and_tokens_per_subscription_and_model() {
        let r = read(TEXT);
        assert_eq!(
            r[&key("free", "m1")],
            Usage {
                requests: 8,
                prompt_tokens: 300,
                completion_tokens: 120
            }
        );
        assert_eq!(
            r[&key("team-a", "m2")],
            Usage {
                requests: 0,
                prompt_tokens: 5,
                completion_tokens: 0
            }
        );
        assert_eq!(r.len(), 2);
    }

    /// A reading of `text` at `at` (Unix seconds).
    fn at(text: &str, at: i64) -> Snapshot {
        Snapshot::read(text, at)
    }

    #[test]
    fn deltas_count_new_usage_and_survive_a_gateway_restart() {
        let before = at(TEXT, 100);
        let after = at(
            &TEXT
                .replace("} 300", "} 350")
                .replace("outcome=\"ok\"} 7", "outcome=\"ok\"} 9"),
            115,
        );
        let d = delta(&before, &after);
        assert_eq!(
            d[&key("free", "m1")],
            Usage {
                requests: 2,
                prompt_tokens: 50,
                completion_tokens: 0
            }
        );
        assert!(
            !d.contains_key(&key("team-a", "m2")),
            "unchanged series are not usage"
        );
        // The gateway restarted: counters start again from zero.
        let restarted = at(
            "maas_prompt_tokens_total{subscription=\"free\",model=\"m1\"} 10\n",
            115,
        );
        assert_eq!(
            delta(&before, &restarted)[&key("free", "m1")].prompt_tokens,
            10
        );
    }

    /// A restarted gateway that has already passed its old values: only its
    /// uptime tells, and then its values are all new usage.
    #[test]
    fn an_uptime_that_cannot_span_the_interval_is_a_restart() {
        let reading = |uptime: u64, prompt: u64, t: i64| {
            at(
                &format!(
                    "envoy_server_uptime {uptime}\n\
                     maas_prompt_tokens_total{{subscription=\"free\",model=\"m1\"}} {prompt}\n"
                ),
                t,
            )
        };
        let prompt =
            |d: BTreeMap<UsageKey, Usage>| d.get(&key("free", "m1")).map_or(0, |u| u.prompt_tokens);
        let before = reading(3_600, 100, 1_000);
        // (uptime now, prompt tokens now, read at, restart?, usage)
        let cases = [
            // Up all along: the difference.
            (3_660, 160, 1_060, false, 60),
            // Uptime lower than before: a restart (counter above the old).
            (50, 160, 1_060, true, 160),
            // Envoy refreshes its uptime every few seconds: a lagging
            // uptime is no restart.
            (3_655, 160, 1_060, false, 60),
        ];
        for (uptime, tokens, t, restart, usage) in cases {
            let now = reading(uptime, tokens, t);
            assert_eq!(restarted(&before, &now), restart, "uptime {uptime}");
            assert_eq!(prompt(delta(&before, &now)), usage, "uptime {uptime}");
        }

        // A young gateway: its uptime before says little, the time since
        // the previous reading does.
        let young = reading(5, 20, 1_000);
        let cases = [
            // Up 65 s at 60 s later: the same process.
            (65, 80, 1_060, false, 60),
            // Up 20 s at 60 s later: it started after the previous reading,
            // so all 80 are new (the old baseline's 20 were counted).
            (20, 80, 1_060, true, 80),
            // Within the slack of the interval: not proven, the difference.
            (60 - UPTIME_SLACK_SECS, 80, 1_060, false, 60),
            // No uptime exposed: only counters going down tell.
            (u64::MAX, 80, 1_060, false, 60),
        ];
        for (uptime, tokens, t, restart, usage) in cases {
            let mut now = reading(uptime, tokens, t);
            if uptime == u64::MAX {
                now.uptime = None;
            }
            assert_eq!(restarted(&young, &now), restart, "uptime {uptime}");
            assert_eq!(prompt(delta(&young, &now)), usage, "uptime {uptime}");
        }
    }

    #[test]
    fn each_key_is_its_own_series() {
        let r = read(
            r#"maas_prompt_tokens_total{subscription="free",model="m1",key="k1"} 10
maas_prompt_tokens_total{subscription="free",model="m1",key="k2"} 20
maas_requests_total{subscription="free",model="m1",outcome="ok",key="k2"} 3
maas_prompt_tokens_total{subscription="free",model="m1"} 5
"#,
        );
        assert_eq!(r[&keyed("free", "m1", "k1")].prompt_tokens, 10);
        assert_eq!(
            r[&keyed("free", "m1", "k2")],
            Usage {
                requests: 3,
                prompt_tokens: 20,
                completion_tokens: 0
            }
        );
        assert_eq!(r[&key("free", "m1")].prompt_tokens, 5);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let r = read("maas_prompt_tokens_total{subscription=\"a\",model=\"b\" 1\nmaas_prompt_tokens_total{subscription=\"a\",model=\"b\"} NaN\nmaas_prompt_tokens_total 4\n");
        assert!(r.is_empty());
    }
}
