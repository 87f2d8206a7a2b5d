//! Reads each gateway's counters at a fixed interval and stores the usage
//! since the previous reading. The first reading of a gateway that started
//! after sampling did counts everything it has (nobody else can have counted
//! it); the first reading of one that was already running only sets its
//! baseline, so usage between the last reading before a control plane
//! restart and the first after is not counted (a gap of one interval).
//!
//! Invariant: one replica samples at a time, the one holding the store's
//! [`SamplerLease`]; the others ask for it each interval and take over when
//! its holder dies. A replica that takes over starts afresh (its first
//! readings are baselines, as after a restart), since it cannot know what
//! the previous holder counted.
//!
//! A reading is Envoy's whole `/stats/prometheus`, with its
//! `envoy_server_uptime`; anything else (an agent answering for a proxy it
//! could not read, a page cut short) is no reading: counted against, it
//! would make the next real one look like usage from zero.

use std::collections::HashMap;
use std::io::Read as _;
use std::time::{Duration, Instant};

use super::counters::{delta, Snapshot, UPTIME_SLACK_SECS};
use super::gateways::Gateways;
use crate::store::{SamplerLease, Store, UsageRow};

/// Buckets are one minute: fine enough for a day's chart, coarse enough
/// that a month is ~43,000 rows per subscription and model at most.
pub const BUCKET_SECS: i64 = 60;

pub struct Sampler {
    /// When sampling started, on the clock readings are taken by.
    started: i64,
    last: HashMap<String, Snapshot>,
}

/// The most a gateway's `/stats/prometheus` may be: its usage series grow
/// with every key and model used until Envoy restarts (ureq's own limit,
/// 10 MB, is reached at about ten thousand of them).
const MAX_EXPOSITION_BYTES: u64 = 256 << 20;

/// What is not a reading of Envoy's counters.
#[derive(Debug, thiserror::Error)]
#[error(
    "no envoy_server_uptime in the answer: not Envoy's /stats/prometheus (point --envoy-admin \
     at the proxy's admin or stats port, not an agent that merges other metrics)"
)]
pub struct NotEnvoy;

/// A gateway's counters at one reading, not yet the baseline.
pub struct Reading {
    gateway: String,
    snapshot: Snapshot,
}

impl Sampler {
    /// A sampler starting at `now` (Unix seconds).
    pub fn new(now: i64) -> Self {
        Self {
            started: now,
            last: HashMap::new(),
        }
    }

    /// Usage on `gateway` since its previous reading; on the first, all of
    /// it if the gateway started after this sampler, else none. The reading
    /// becomes the baseline only once [`Sampler::commit`]ted, after the
    /// usage is stored: a failed write is counted next time. `now` is on a
    /// monotonic clock, in seconds.
    pub fn observe(
        &self,
        gateway: &str,
        exposition: &str,
        now: i64,
    ) -> Result<(Vec<UsageRow>, Reading), NotEnvoy> {
        let snapshot = Snapshot::read(exposition, now);
        let uptime = snapshot.uptime.ok_or(NotEnvoy)?;
        // Envoy refreshes its uptime every few seconds, so it may read a
        // little short: only a gateway up for less than the sampler by more
        // than that surely started after it (else the previous holder of the
        // lease may have counted some of its usage).
        let started_since = now.saturating_sub(self.started)
            >= i64::try_from(uptime.saturating_add(UPTIME_SLACK_SECS)).unwrap_or(i64::MAX);
        let previous = match self.last.get(gateway) {
            Some(previous) => Some(previous.clone()),
            None if started_since => Some(Snapshot::default()),
            None => None,
        };
        let rows = match previous {
            Some(previous) => delta(&previous, &snapshot)
                .into_iter()
                .map(|(series, usage)| UsageRow {
                    subscription: series.subscription,
                    model: series.model,
                    key: series.key,
                    usage,
                })
                .collect(),
            None => Vec::new(),
        };
        Ok((
            rows,
            Reading {
                gateway: gateway.to_string(),
                snapshot,
            },
        ))
    }

    pub fn commit(&mut self, reading: Reading) {
        let baseline = match self.last.remove(&reading.gateway) {
            Some(previous) => previous.followed_by(reading.snapshot),
            None => reading.snapshot,
        };
        self.last.insert(reading.gateway, baseline);
    }
}

/// The start of the bucket that holds `t` (Unix seconds).
pub fn bucket_start(t: i64) -> i64 {
    t - t.rem_euclid(BUCKET_SECS)
}

/// Samples `gateways` every `interval`, forever, while this replica holds
/// the sampler lease; asks for it each interval while another does.
pub async fn run(store: Store, gateways: Gateways, interval: Duration) {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build();
    let clock = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading: Option<(SamplerLease, Sampler)> = None;
    loop {
        tick.tick().await;
        if leading.is_none() {
            leading = match store.try_sampler_lease().await {
                Ok(Some(lease)) => {
                    tracing::info!("sampling the gateways' usage (this replica holds the lease)");
                    Some((lease, Sampler::new(seconds_since(clock))))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask for the sampler lease");
                    None
                }
            };
        }
        let Some((lease, sampler)) = leading.as_mut() else {
            continue;
        };
        if !sample(&agent, &gateways, lease, sampler, clock).await {
            tracing::warn!(
                "the sampler lease's database session is gone; another replica may sample now"
            );
            leading = None;
        }
    }
}

/// One reading of every gateway, its usage written through `lease`. False
/// when the lease was lost (nothing more may be written with it).
async fn sample(
    agent: &ureq::Agent,
    gateways: &Gateways,
    lease: &mut SamplerLease,
    sampler: &mut Sampler,
    clock: Instant,
) -> bool {
    for gateway in gateways.iter() {
        let read = fetch(agent, gateway).await.and_then(|text| {
            sampler
                .observe(gateway, &text, seconds_since(clock))
                .map_err(|e| e.to_string())
        });
        let (rows, reading) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(gateway, error = %e, "cannot read the gateway's counters");
                continue;
            }
        };
        if rows.is_empty() {
            sampler.commit(reading);
            continue;
        }
        let bucket = bucket_start(crate::time::unix_now());
        match lease.add_usage(bucket, &rows).await {
            Ok(()) => sampler.commit(reading),
            Err(e) if lease.is_held().await => {
                tracing::warn!(error = %e, "cannot store usage; it is counted with the next reading")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot store usage");
                return false;
            }
        }
    }
    true
}

fn seconds_since(clock: Instant) -> i64 {
    i64::try_from(clock.elapsed().as_secs()).unwrap_or(i64::MAX)
}

/// A gateway's `/stats/prometheus` text.
async fn fetch(agent: &ureq::Agent, gateway: &str) -> Result<String, String> {
    let url = format!("{gateway}/stats/prometheus");
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || {
        let response = agent.get(&url).call().map_err(|e| e.to_string())?;
        let mut text = String::new();
        response
            .into_reader()
            .take(MAX_EXPOSITION_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        if text.len() as u64 > MAX_EXPOSITION_BYTES {
            return Err(format!(
                "its statistics are over {} MiB",
                MAX_EXPOSITION_BYTES >> 20
            ));
        }
        Ok(text)
    })
    .await
    .map_err(|e| format!("sampler task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exposition of an Envoy up `uptime` seconds with the given prompt
    /// tokens of subscription `a` on models `m` and `n` (none: absent).
    fn text(uptime: u64, m: Option<u64>, n: Option<u64>) -> String {
        let mut out = format!("envoy_server_uptime {uptime}\n");
        for (model, tokens) in [("m", m), ("n", n)] {
            if let Some(tokens) = tokens {
                out.push_str(&format!(
                    "maas_prompt_tokens_total{{subscription=\"a\",model=\"{model}\"}} {tokens}\n"
                ));
            }
        }
        out
    }

    /// Observes and commits: the prompt tokens counted per model.
    fn step(s: &mut Sampler, gw: &str, text: &str, now: i64) -> Vec<(String, u64)> {
        let (rows, reading) = s.observe(gw, text, now).unwrap();
        s.commit(reading);
        rows.into_iter()
            .map(|r| (r.model, r.usage.prompt_tokens))
            .collect()
    }

    fn counted(model: &str, tokens: u64) -> Vec<(String, u64)> {
        vec![(model.to_string(), tokens)]
    }

    #[test]
    fn the_first_reading_is_a_baseline_then_differences_count() {
        let mut s = Sampler::new(1000);
        // The gateways have been up longer than the sampler.
        let at = |n: u64| text(5000, Some(n), None);
        assert!(
            step(&mut s, "gw1", &at(100), 1010).is_empty(),
            "the first reading is a baseline"
        );
        assert_eq!(step(&mut s, "gw1", &at(130), 1020), counted("m", 30));
        // A reading whose usage could not be stored is not the baseline:
        // its usage comes with the next one.
        let (rows, _) = s.observe("gw1", &at(150), 1030).unwrap();
        assert_eq!(rows[0].usage.prompt_tokens, 20);
        assert_eq!(step(&mut s, "gw1", &at(170), 1040), counted("m", 40));
        // Each gateway has its own baseline.
        assert!(step(&mut s, "gw2", &at(500), 1050).is_empty());
        assert_eq!(step(&mut s, "gw2", &at(501), 1060), counted("m", 1));
    }

    #[test]
    fn a_gateway_started_after_the_sampler_counts_from_zero() {
        let s = Sampler::new(1000);
        let (rows, _) = s.observe("gw", &text(8, Some(42), None), 1030).unwrap();
        assert_eq!(rows.first().map(|r| r.usage.prompt_tokens), Some(42));
        // Up 25 s, 30 s after the sampler started: Envoy's uptime may lag,
        // so it may have started before, and been counted by another.
        let (rows, _) = s.observe("gw", &text(25, Some(42), None), 1030).unwrap();
        assert!(rows.is_empty());
    }

    #[test]
    fn an_answer_that_is_not_envoys_statistics_is_no_reading() {
        let mut s = Sampler::new(1000);
        assert!(step(&mut s, "gw", &text(5000, Some(100), None), 1010).is_empty());
        // An agent answering for a proxy it could not read: its own metrics.
        assert!(s.observe("gw", "agent_up 1\n", 1020).is_err());
        assert!(s
            .observe(
                "gw",
                "maas_prompt_tokens_total{subscription=\"a\",model=\"m\"} 5\n",
                1020
            )
            .is_err());
        // The next real reading counts from the last one, not from zero.
        assert_eq!(
            step(&mut s, "gw", &text(5030, Some(110), None), 1030),
            counted("m", 10)
        );
    }

    #[test]
    fn a_series_missing_from_one_reading_is_not_counted_again_when_it_returns() {
        let mut s = Sampler::new(1000);
        assert!(step(&mut s, "gw", &text(5000, Some(100), Some(7)), 1010).is_empty());
        assert_eq!(
            step(&mut s, "gw", &text(5010, Some(120), None), 1020),
            counted("m", 20)
        );
        assert_eq!(
            step(&mut s, "gw", &text(5020, Some(120), Some(9)), 1030),
            counted("n", 2),
            "n's 7 were counted before it went missing"
        );
    }

    #[test]
    fn a_series_that_starts_again_counts_alone_from_zero() {
        let mut s = Sampler::new(1000);
        step(&mut s, "gw", &text(5000, Some(100), Some(50)), 1010);
        // Same process (uptime), but n's counter was made anew.
        let mut got = step(&mut s, "gw", &text(5010, Some(130), Some(4)), 1020);
        got.sort();
        assert_eq!(got, [("m".to_string(), 30), ("n".to_string(), 4)]);
        // A restart (uptime): everything is new, a missing series forgotten.
        assert_eq!(
            step(&mut s, "gw", &text(5, Some(3), None), 1030),
            counted("m", 3)
        );
        assert_eq!(
            step(&mut s, "gw", &text(15, Some(3), Some(1)), 1040),
            counted("n", 1)
        );
    }
}
