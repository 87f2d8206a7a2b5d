//! The key sync as the root context runs it: every VM ticks, the one that
//! takes the lease asks the control plane for what changed since the version
//! last applied, applies the answer to shared data, and schedules the next
//! call.
//!
//! Invariants:
//! - At most one sync call per VM is in flight, and at most one per gateway
//!   per interval: a VM calls only after moving the shared lease forward,
//!   which it holds past its call's deadline.
//! - Every answer reschedules: the next page at once (`more`, or an answer
//!   from another database, which restarts a full resync), anything else —
//!   a failure included — one interval later, so a control plane that is
//!   down is asked once per interval, not once per tick.
//! - A failure is counted every time and logged at most once per interval
//!   (and at least a second apart).

use super::{apply, confirm, read_state, schedule_next, try_acquire_lease, Applied};
use crate::auth::control_plane::ControlPlane;
use crate::auth::managed_keys::parse_sync;
use crate::host::SyncHost;
use crate::metrics::Metric;

/// The control plane's answer to a sync call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAnswer {
    pub status: u32,
    pub body: Vec<u8>,
    /// Its `x-maas-store` header: the database the answer comes from.
    pub store_id: Option<String>,
}

/// One VM's side of the key sync.
#[derive(Debug, Default)]
pub struct KeySync {
    /// The token of this VM's sync call in flight.
    in_flight: Option<u32>,
    /// When this VM last logged a sync failure.
    last_warning_ms: u64,
}

impl KeySync {
    /// At each tick: calls the control plane if no call is in flight, a
    /// sync is due and this VM takes the lease.
    pub fn on_tick(&mut self, host: &dyn SyncHost, cp: &ControlPlane, now_ms: u64) {
        if self.in_flight.is_none() {
            self.start(host, cp, now_ms);
        }
    }

    /// Whether the call answered with `token` is this VM's sync call.
    pub fn expects(&self, token: u32) -> bool {
        self.in_flight == Some(token)
    }

    /// Forgets the call in flight without an answer to act on (the
    /// configuration that made it is gone), so the next tick may call again.
    pub fn abandon(&mut self) {
        self.in_flight = None;
    }

    /// The answer to the call in flight (`None`: the call failed without
    /// one: timeout, reset, a body over Envoy's buffer limit).
    pub fn on_response(
        &mut self,
        host: &dyn SyncHost,
        cp: &ControlPlane,
        answer: Option<SyncAnswer>,
        now_ms: u64,
    ) {
        self.in_flight = None;
        let store = host.store();
        let mut more = false;
        let result = match answer {
            Some(SyncAnswer {
                status: 200, body, ..
            }) => match parse_sync(&body) {
                Ok(delta) => {
                    more = delta.more;
                    apply(store, &delta, now_ms)
                        .map(|applied| outcome(applied, "changed", &mut more))
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            Some(SyncAnswer {
                status: 304,
                store_id,
                ..
            }) => confirm(store, now_ms, store_id.as_deref())
                .map(|applied| outcome(applied, "not_modified", &mut more))
                .map_err(|e| e.to_string()),
            Some(SyncAnswer { status, .. }) => Err(format!("control plane answered {status}")),
            None => Err("no answer from the control plane".to_string()),
        };
        match result {
            Ok(r) => host.add_metric(Metric::KeySyncs { result: r }, 1),
            Err(e) => {
                more = false;
                host.add_metric(Metric::KeySyncs { result: "failed" }, 1);
                self.warn(host, now_ms, cp.sync_interval_ms, &e);
            }
        }
        host.sync_applied();
        if more {
            // The next page at once: this VM still holds the lease.
            let _ = schedule_next(store, now_ms);
            self.start(host, cp, now_ms);
        } else {
            let _ = schedule_next(store, now_ms.saturating_add(cp.sync_interval_ms));
        }
    }

    /// Seconds since the control plane last answered; since `configured_ms`
    /// (this VM's start) while it never has.
    pub fn record_age(&self, host: &dyn SyncHost, configured_ms: u64, now_ms: u64) {
        let state = read_state(host.store()).unwrap_or_default();
        let age = state
            .age_secs(now_ms)
            .unwrap_or_else(|| now_ms.saturating_sub(configured_ms) / 1000);
        host.set_gauge(Metric::KeySyncAgeSeconds, age);
    }

    fn start(&mut self, host: &dyn SyncHost, cp: &ControlPlane, now_ms: u64) {
        let store = host.store();
        // Held past the call's deadline, so a VM that dies mid-call only
        // delays the next sync by that much.
        let hold = cp.timeout_ms.saturating_add(cp.sync_interval_ms);
        if !try_acquire_lease(store, now_ms, hold) {
            return;
        }
        let state = read_state(store).unwrap_or_default();
        let mut path = format!(
            "/maas-api/v1/sync?since={}&limit={}",
            state.version, cp.sync_page_keys
        );
        if state.mark != 0 {
            path.push_str(&format!("&mark={:016x}", state.mark));
        }
        match host.call_control_plane(&path) {
            Ok(token) => self.in_flight = Some(token),
            Err(e) => {
                host.add_metric(Metric::KeySyncs { result: "failed" }, 1);
                self.warn(
                    host,
                    now_ms,
                    cp.sync_interval_ms,
                    &format!("cannot call the control plane: {e}"),
                );
                let _ = schedule_next(store, now_ms.saturating_add(cp.sync_interval_ms));
            }
        }
    }

    fn warn(&mut self, host: &dyn SyncHost, now_ms: u64, interval_ms: u64, message: &str) {
        if now_ms.saturating_sub(self.last_warning_ms) >= interval_ms.max(1000) {
            self.last_warning_ms = now_ms;
            host.warn(&format!("maas-gateway: key sync: {message}"));
        }
    }
}

/// The metric label of a sync answer's result; an answer from another
/// database makes the next call (a full resync) go at once.
fn outcome(applied: Applied, synced: &'static str, more: &mut bool) -> &'static str {
    match applied {
        Applied::Synced(_) => synced,
        Applied::OtherStore => {
            *more = true;
            "other_store"
        }
    }
}

#[cfg(test)]
mod tests;
