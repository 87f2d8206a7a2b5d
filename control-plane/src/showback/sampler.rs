//! Reads each gateway's counters at a fixed interval and stores the usage
//! since the previous reading, together with that reading (in one
//! transaction), so whoever samples next counts on from exactly there.
//!
//! Invariant: one replica samples at a time, the one holding the store's
//! [`SamplerLease`]; the others ask for it each interval and take over when
//! its holder dies. A replica that takes the lease (after a restart, a
//! takeover, the database back after an outage) starts from the stored
//! readings, so the usage made while nobody sampled is counted, once. A
//! gateway with no stored reading counts everything it has on its first
//! reading if it started after the sampler did (nobody else can have
//! counted it), and only sets its baseline otherwise.
//!
//! A reading is Envoy's whole `/stats/prometheus`, with its
//! `envoy_server_uptime`; anything else (an agent answering for a proxy it
//! could not read, a page cut short) is no reading: counted against, it
//! would make the next real one look like usage from zero.

use std::collections::HashMap;
use std::io::Read as _;
use std::time::{Duration, Instant};

use super::counters::{delta, restarted, Snapshot, UsageKey, UPTIME_SLACK_SECS};
use super::gateways::Gateways;
use crate::store::{BaselineUpdate, GatewayCounters, SamplerLease, Store, UsageRow};

/// Buckets are one minute: fine enough for a day's chart, coarse enough
/// that a month is ~43,000 rows per subscription and model at most.
pub const BUCKET_SECS: i64 = 60;

pub struct Sampler {
    /// When sampling started, on the clock readings are taken by.
    started: i64,
    /// Each gateway's baseline. Every one is stored too: loaded, or
    /// committed only once its reading was written (see [`Self::update`]).
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
    /// Its stored reading is replaced, not updated: the gateway restarted
    /// since, or has none.
    replace: bool,
    /// The series whose usage was counted.
    moved: Vec<UsageKey>,
}

impl Sampler {
    /// A sampler starting at `now` with no stored readings.
    pub fn new(now: i64) -> Self {
        Self::resume(now, 0, Vec::new())
    }

    /// A sampler starting at `now` (seconds on the monotonic clock readings
    /// are taken by) from the stored readings; `wall` is the Unix time now,
    /// which places each stored reading on that clock by its age.
    pub fn resume(now: i64, wall: i64, stored: Vec<GatewayCounters>) -> Self {
        let last = stored
            .into_iter()
            .map(|g| {
                let age = wall.saturating_sub(g.read_at).max(0);
                let snapshot = Snapshot {
                    at: now.saturating_sub(age),
                    uptime: Some(g.uptime),
                    counters: g.counters,
                };
                (g.gateway, snapshot)
            })
            .collect();
        Self { started: now, last }
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
        let known = self.last.get(gateway);
        let previous = match known {
            Some(previous) => Some(previous),
            None if started_since => Some(&Snapshot::default()),
            None => None,
        };
        let counted = previous
            .map(|previous| delta(previous, &snapshot))
            .unwrap_or_default();
        let replace = known.is_none_or(|k| restarted(k, &snapshot));
        let moved = counted.keys().cloned().collect();
        let rows = counted
            .into_iter()
            .map(|(series, usage)| UsageRow {
                subscription: series.subscription,
                model: series.model,
                key: series.key,
                usage,
            })
            .collect();
        Ok((
            rows,
            Reading {
                gateway: gateway.to_string(),
                snapshot,
                replace,
                moved,
            },
        ))
    }

    /// What storing `reading` (taken at Unix time `wall`) changes in its
    /// gateway's stored reading; `None` when nothing needs storing (no
    /// usage counted, and the stored reading still holds).
    pub fn update(&self, reading: &Reading, wall: i64) -> Option<BaselineUpdate> {
        if reading.moved.is_empty() && !reading.replace {
            return None;
        }
        let counters = if reading.replace {
            reading.snapshot.counters.clone().into_iter().collect()
        } else {
            reading
                .moved
                .iter()
                .filter_map(|k| Some((k.clone(), *reading.snapshot.counters.get(k)?)))
                .collect()
        };
        Some(BaselineUpdate {
            gateway: reading.gateway.clone(),
            read_at: wall,
            uptime: reading.snapshot.uptime.unwrap_or_default(),
            replace: reading.replace,
            counters,
        })
    }

    /// Makes `reading` the baseline, once its usage and [`Self::update`]
    /// are stored.
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
                Ok(Some(mut lease)) => match lease.baselines().await {
                    Ok(stored) => {
                        tracing::info!(
                            stored = stored.len(),
                            "sampling the gateways' usage from their stored readings \
                             (this replica holds the lease)"
                        );
                        let now = seconds_since(clock);
                        Some((lease, Sampler::resume(now, crate::time::unix_now(), stored)))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the stored readings");
                        None
                    }
                },
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
        let wall = crate::time::unix_now();
        let Some(update) = sampler.update(&reading, wall) else {
            sampler.commit(reading);
            continue;
        };
        match lease.add_usage(bucket_start(wall), &rows, &update).await {
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

    /// What the store keeps after `update`s, as a next holder loads it.
    fn stored_after(updates: &[BaselineUpdate]) -> Vec<GatewayCounters> {
        let mut out: Vec<GatewayCounters> = Vec::new();
        for u in updates {
            let i = out.iter().position(|g| g.gateway == u.gateway);
            let g = match i {
                Some(i) => &mut out[i],
                None => {
                    out.push(GatewayCounters::default());
                    out.last_mut().unwrap()
                }
            };
            if u.replace {
                g.counters.clear();
            }
            g.gateway = u.gateway.clone();
            g.read_at = u.read_at;
            g.uptime = u.uptime;
            g.counters.extend(u.counters.iter().cloned());
        }
        out
    }

    /// Observes, stores and commits (reading at `now` on both clocks).
    fn step_stored(
        s: &mut Sampler,
        updates: &mut Vec<BaselineUpdate>,
        text: &str,
        now: i64,
    ) -> Vec<(String, u64)> {
        let (rows, reading) = s.observe("gw", text, now).unwrap();
        updates.extend(s.update(&reading, now));
        s.commit(reading);
        rows.into_iter()
            .map(|r| (r.model, r.usage.prompt_tokens))
            .collect()
    }

    #[test]
    fn the_next_holder_counts_on_from_the_stored_reading() {
        let mut s = Sampler::new(1000);
        let mut updates = Vec::new();
        // A first reading is stored whole, though it counts nothing.
        step_stored(&mut s, &mut updates, &text(5000, Some(100), Some(7)), 1010);
        assert_eq!(updates.len(), 1);
        assert!(updates[0].replace);
        assert_eq!(updates[0].counters.len(), 2);
        // Nothing moved: nothing to store.
        step_stored(&mut s, &mut updates, &text(5010, Some(100), Some(7)), 1020);
        assert_eq!(updates.len(), 1);
        // Only the series that moved.
        assert_eq!(
            step_stored(&mut s, &mut updates, &text(5020, Some(130), Some(7)), 1030),
            counted("m", 30)
        );
        assert_eq!((updates.len(), updates[1].replace), (2, false));
        assert_eq!(updates[1].counters.len(), 1);

        // The holder dies; 40 more are used; another takes over 60 s later
        // (its own clocks: monotonic 7, wall 1090).
        let stored = stored_after(&updates);
        let mut next = Sampler::resume(7, 1090, stored.clone());
        assert_eq!(
            step_stored(&mut next, &mut updates, &text(5080, Some(170), Some(7)), 8),
            counted("m", 40),
            "the usage made while nobody sampled"
        );
        // A gateway that restarted while nobody sampled: all it has is new.
        let after_restart = Sampler::resume(7, 1090, stored);
        let (rows, reading) = after_restart
            .observe("gw", &text(20, Some(4), None), 8)
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].usage.prompt_tokens, 4);
        let update = after_restart.update(&reading, 1091).unwrap();
        assert!(update.replace, "the old process's series are dropped");
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
