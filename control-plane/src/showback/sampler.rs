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

use std::collections::HashMap;
use std::time::Duration;

use super::counters::{delta, Snapshot};
use super::gateways::Gateways;
use crate::store::{SamplerLease, Store, UsageRow};

/// Buckets are one minute: fine enough for a day's chart, coarse enough
/// that a month is ~43,000 rows per subscription and model at most.
pub const BUCKET_SECS: i64 = 60;

pub struct Sampler {
    /// Unix seconds when sampling started.
    started: i64,
    last: HashMap<String, Snapshot>,
}

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
    /// usage is stored: a failed write is counted next time.
    pub fn observe(&self, gateway: &str, exposition: &str, now: i64) -> (Vec<UsageRow>, Reading) {
        let snapshot = Snapshot::read(exposition, now);
        let started_since = |uptime: u64| now.saturating_sub(self.started) >= uptime as i64;
        let previous = match self.last.get(gateway) {
            Some(previous) => Some(previous.clone()),
            None if snapshot.uptime.is_some_and(started_since) => Some(Snapshot::default()),
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
        (
            rows,
            Reading {
                gateway: gateway.to_string(),
                snapshot,
            },
        )
    }

    pub fn commit(&mut self, reading: Reading) {
        self.last.insert(reading.gateway, reading.snapshot);
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
        .timeout(Duration::from_secs(5))
        .build();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading: Option<(SamplerLease, Sampler)> = None;
    loop {
        tick.tick().await;
        if leading.is_none() {
            leading = match store.try_sampler_lease().await {
                Ok(Some(lease)) => {
                    tracing::info!("sampling the gateways' usage (this replica holds the lease)");
                    Some((lease, Sampler::new(crate::time::unix_now())))
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
        if !sample(&agent, &gateways, lease, sampler).await {
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
) -> bool {
    for gateway in gateways.iter() {
        let text = match fetch(agent, gateway).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(gateway, error = %e, "cannot read the gateway's counters");
                continue;
            }
        };
        let now = crate::time::unix_now();
        let (rows, reading) = sampler.observe(gateway, &text, now);
        if rows.is_empty() {
            sampler.commit(reading);
            continue;
        }
        match lease.add_usage(bucket_start(now), &rows).await {
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

/// A gateway's `/stats/prometheus` text.
async fn fetch(agent: &ureq::Agent, gateway: &str) -> Result<String, String> {
    let url = format!("{gateway}/stats/prometheus");
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || {
        agent
            .get(&url)
            .call()
            .map_err(|e| e.to_string())
            .and_then(|r| r.into_string().map_err(|e| e.to_string()))
    })
    .await
    .map_err(|e| format!("sampler task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reading_is_a_baseline_then_differences_count() {
        let mut s = Sampler::new(1000);
        // The gateways have been up longer than the sampler.
        let at = |n: u64| {
            format!(
                "envoy_server_uptime 5000\nmaas_prompt_tokens_total{{subscription=\"a\",model=\"m\"}} {n}\n"
            )
        };
        let step = |s: &mut Sampler, gw: &str, n: u64, commit: bool| {
            let (rows, reading) = s.observe(gw, &at(n), 1010);
            if commit {
                s.commit(reading);
            }
            rows.first().map_or(0, |r| r.usage.prompt_tokens)
        };
        assert_eq!(
            step(&mut s, "gw1", 100, true),
            0,
            "the first reading is a baseline"
        );
        assert_eq!(step(&mut s, "gw1", 130, true), 30);
        // A reading whose usage could not be stored is not the baseline:
        // its usage comes with the next one.
        assert_eq!(step(&mut s, "gw1", 150, false), 20);
        assert_eq!(step(&mut s, "gw1", 170, true), 40);
        // Each gateway has its own baseline.
        assert_eq!(step(&mut s, "gw2", 500, true), 0);
        assert_eq!(step(&mut s, "gw2", 501, true), 1);
    }

    #[test]
    fn a_gateway_started_after_the_sampler_counts_from_zero() {
        let s = Sampler::new(1000);
        let text =
            "envoy_server_uptime 8\nmaas_prompt_tokens_total{subscription=\"a\",model=\"m\"} 42\n";
        let (rows, _) = s.observe("gw", text, 1010);
        assert_eq!(rows.first().map(|r| r.usage.prompt_tokens), Some(42));
        // Without an uptime it cannot tell: a baseline, as before.
        let (rows, _) = s.observe(
            "gw",
            "maas_prompt_tokens_total{subscription=\"a\",model=\"m\"} 42\n",
            1010,
        );
        assert!(rows.is_empty());
    }
}
