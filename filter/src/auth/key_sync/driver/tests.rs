//! The sync loop through a fake root host: which calls it makes, what each
//! answer leaves in shared data, and when it asks again.

use super::*;
use crate::auth::credential::BearerCredential;
use crate::auth::key_sync::{lookup, read_state, Lookup};
use crate::auth::keys::encode_hex;
use crate::limits::{CounterStore, MemoryStore};
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

#[derive(Default)]
struct FakeRoot {
    store: MemoryStore,
    /// Paths the driver asked the control plane for, in order.
    calls: RefCell<Vec<String>>,
    /// Whether a call can be made (the cluster exists).
    unreachable: Cell<bool>,
    next_token: Cell<u32>,
    /// How often the policy was asked to be rebuilt.
    applied: Cell<u32>,
    metrics: RefCell<HashMap<String, u64>>,
    gauges: RefCell<HashMap<String, u64>>,
    warnings: RefCell<Vec<String>>,
}

impl SyncHost for FakeRoot {
    fn store(&self) -> &dyn CounterStore {
        &self.store
    }

    fn call_control_plane(&self, path: &str) -> Result<u32, String> {
        if self.unreachable.get() {
            return Err("BadArgument".to_string());
        }
        self.calls.borrow_mut().push(path.to_string());
        self.next_token.set(self.next_token.get() + 1);
        Ok(self.next_token.get())
    }

    fn sync_applied(&self) {
        self.applied.set(self.applied.get() + 1);
    }

    fn add_metric(&self, metric: Metric, value: u64) {
        *self
            .metrics
            .borrow_mut()
            .entry(metric.name(&[]))
            .or_default() += value;
    }

    fn set_gauge(&self, metric: Metric, value: u64) {
        self.gauges.borrow_mut().insert(metric.name(&[]), value);
    }

    fn warn(&self, message: &str) {
        self.warnings.borrow_mut().push(message.to_string());
    }
}

impl FakeRoot {
    fn syncs(&self, result: &'static str) -> u64 {
        let name = Metric::KeySyncs { result }.name(&[]);
        self.metrics.borrow().get(&name).copied().unwrap_or(0)
    }

    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

const INTERVAL_MS: u64 = 250;

fn control_plane() -> ControlPlane {
    ControlPlane {
        cluster: "maas-control-plane".into(),
        authority: "maas-control-plane".into(),
        token: BearerCredential::new(&"gw-token".into()),
        sync_interval_ms: INTERVAL_MS,
        timeout_ms: 2000,
        sync_page_keys: 2,
        lookups_per_second: 20,
        negative_cache_ms: 1000,
    }
}

fn key(id: &str, version: u64) -> serde_json::Value {
    json!({
        "id": id, "owner": "erin", "subscription": "team-a",
        "salt": encode_hex(&[7; 16]), "sha256": "ab".repeat(32),
        "version": version
    })
}

fn ok(body: serde_json::Value) -> Option<SyncAnswer> {
    Some(SyncAnswer {
        status: 200,
        body: body.to_string().into_bytes(),
        store_id: None,
    })
}

fn not_modified(store_id: Option<&str>) -> Option<SyncAnswer> {
    Some(SyncAnswer {
        status: 304,
        body: Vec::new(),
        store_id: store_id.map(str::to_string),
    })
}

fn found(host: &FakeRoot, id: &str) -> bool {
    matches!(lookup(&host.store, id, 0, 0), Ok(Lookup::Found(_)))
}

#[test]
fn a_page_is_applied_and_the_next_call_waits_an_interval() {
    let (host, cp, mut sync) = (FakeRoot::default(), control_plane(), KeySync::default());
    sync.on_tick(&host, &cp, 1_000);
    assert_eq!(host.calls(), ["/maas-api/v1/sync?since=0&limit=2"]);
    assert!(sync.expects(1) && !sync.expects(2));
    // No second call while one is in flight, whatever the lease says.
    sync.on_tick(&host, &cp, 5_000);
    assert_eq!(host.calls().len(), 1);

    let page = json!({"version": 7, "full": true, "keys": [key("abcdefgh2345", 7)]});
    sync.on_response(&host, &cp, ok(page), 1_010);
    assert!(found(&host, "abcdefgh2345"), "the key is in shared data");
    let state = read_state(&host.store).unwrap();
    assert_eq!((state.version, state.last_ok_ms), (7, 1_010));
    assert_eq!(host.syncs("changed"), 1);
    assert_eq!(host.applied.get(), 1, "the policy is rebuilt");
    assert!(!sync.expects(1), "the answer ends the call");

    sync.on_tick(&host, &cp, 1_010 + INTERVAL_MS - 1);
    assert_eq!(host.calls().len(), 1, "not before the interval");
    sync.on_tick(&host, &cp, 1_010 + INTERVAL_MS);
    assert_eq!(
        host.calls().last().map(String::as_str),
        Some("/maas-api/v1/sync?since=7&limit=2"),
        "the next call asks from the version applied"
    );
}

#[test]
fn the_next_call_carries_the_mark_of_the_version_applied() {
    let (host, cp, mut sync) = (FakeRoot::default(), control_plane(), KeySync::default());
    sync.on_tick(&host, &cp, 1_000);
    let page = json!({"version": 7, "mark": "00c0ffee00d1ce07", "full": true, "keys": [key("abcdefgh2345", 7)]});
    sync.on_response(&host, &cp, ok(page), 1_010);
    sync.on_tick(&host, &cp, 1_010 + INTERVAL_MS);
    assert_eq!(
        host.calls().last().map(String::as_str),
        Some("/maas-api/v1/sync?since=7&limit=2&mark=00c0ffee00d1ce07"),
    );
    // A malformed mark is a failed sync: nothing applied.
    let bad = json!({"version": 9, "mark": "not-a-mark", "keys": []});
    sync.on_response(&host, &cp, ok(bad), 1_020);
    assert_eq!(host.syncs("failed"), 1);
    assert_eq!(read_state(&host.store).unwrap().version, 7);
}

#[test]
fn pages_are_fetched_back_to_back_until_the_last() {
    let (host, cp, mut sync) = (FakeRoot::default(), control_plane(), KeySync::default());
    sync.on_tick(&host, &cp, 1_000);
    let first = json!({"version": 3, "full": true, "more": true,
                       "keys": [key("aaaaaaaaaaaa", 2), key("bbbbbbbbbbbb", 3)]});
    sync.on_response(&host, &cp, ok(first), 1_005);
    assert_eq!(
        host.calls(),
        [
            "/maas-api/v1/sync?since=0&limit=2",
            "/maas-api/v1/sync?since=3&limit=2"
        ],
        "the second page is asked for in the same callback"
    );
    assert!(sync.expects(2));
    assert!(found(&host, "aaaaaaaaaaaa") && found(&host, "bbbbbbbbbbbb"));

    let last = json!({"version": 4, "full": true, "keys": [key("cccccccccccc", 4)]});
    sync.on_response(&host, &cp, ok(last), 1_010);
    assert_eq!(host.calls().len(), 2, "the last page ends the run");
    assert_eq!(host.syncs("changed"), 2);
    let state = read_state(&host.store).unwrap();
    assert_eq!(
        (state.version, state.resync_epoch),
        (4, 0),
        "resync complete"
    );
    assert!(found(&host, "aaaaaaaaaaaa") && found(&host, "cccccccccccc"));
}

#[test]
fn not_modified_confirms_and_another_database_restarts_at_once() {
    let (host, cp, mut sync) = (FakeRoot::default(), control_plane(), KeySync::default());
    sync.on_tick(&host, &cp, 1_000);
    let page = json!({"store": "db-1", "version": 5, "full": true, "keys": []});
    sync.on_response(&host, &cp, ok(page), 1_000);

    sync.on_tick(&host, &cp, 1_000 + INTERVAL_MS);
    sync.on_response(&host, &cp, not_modified(Some("db-1")), 9_000);
    assert_eq!(host.syncs("not_modified"), 1);
    let state = read_state(&host.store).unwrap();
    assert_eq!(
        (state.version, state.last_ok_ms),
        (5, 9_000),
        "alive, same version"
    );
    assert_eq!(host.calls().len(), 2, "the next call waits an interval");

    // The control plane's database was replaced: ask everything again, now.
    sync.on_tick(&host, &cp, 9_000 + INTERVAL_MS);
    sync.on_response(&host, &cp, not_modified(Some("db-2")), 9_300);
    assert_eq!(host.syncs("other_store"), 1);
    assert_eq!(
        host.calls().last().map(String::as_str),
        Some("/maas-api/v1/sync?since=0&limit=2")
    );
    assert_eq!(host.calls().len(), 4);
}

#[test]
fn failures_are_counted_logged_once_and_retried_an_interval_later() {
    let (host, cp, mut sync) = (FakeRoot::default(), control_plane(), KeySync::default());
    host.unreachable.set(true);
    sync.on_tick(&host, &cp, 10_000);
    assert_eq!(host.syncs("failed"), 1);
    assert_eq!(
        host.warnings.borrow().as_slice(),
        ["maas-gateway: key sync: cannot call the control plane: BadArgument"]
    );
    // The lease moved an interval on: no retry at every tick.
    sync.on_tick(&host, &cp, 10_000 + INTERVAL_MS - 1);
    assert_eq!(host.syncs("failed"), 1);
    sync.on_tick(&host, &cp, 10_000 + INTERVAL_MS);
    assert_eq!(host.syncs("failed"), 2);
    assert_eq!(
        host.warnings.borrow().len(),
        1,
        "one line per second at most"
    );

    // A call made, answered badly: counted, not applied, retried later.
    host.unreachable.set(false);
    let at = 10_000 + 2 * INTERVAL_MS;
    for (answer, n) in [
        (None, 3),
        (
            Some(SyncAnswer {
                status: 503,
                body: Vec::new(),
                store_id: None,
            }),
            4,
        ),
        (ok(json!({"keys": "not a list"})), 5),
    ] {
        let now = at + (n - 3) * INTERVAL_MS;
        sync.on_tick(&host, &cp, now);
        assert!(sync.expects(host.next_token.get()));
        sync.on_response(&host, &cp, answer, now);
        assert_eq!(host.syncs("failed"), n);
        assert_eq!(
            read_state(&host.store).unwrap().last_ok_ms,
            0,
            "never answered"
        );
        sync.on_tick(&host, &cp, now + INTERVAL_MS - 1);
        assert!(
            !sync.expects(host.next_token.get()),
            "no retry before the interval"
        );
    }
    assert_eq!(host.calls().len(), 3);
    // A second after the first line, the next failure is logged again.
    let warnings = host.warnings.borrow();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[1].contains("the sync response is not the expected JSON"),
        "{warnings:?}"
    );
}

#[test]
fn the_age_gauge_counts_from_the_last_answer_or_the_start() {
    let (host, cp, mut sync) = (FakeRoot::default(), control_plane(), KeySync::default());
    let gauge = || {
        let name = Metric::KeySyncAgeSeconds.name(&[]);
        host.gauges.borrow().get(&name).copied()
    };
    sync.record_age(&host, 1_000, 31_000);
    assert_eq!(gauge(), Some(30), "never answered: since the VM started");
    sync.on_tick(&host, &cp, 40_000);
    sync.on_response(&host, &cp, not_modified(None), 40_000);
    sync.record_age(&host, 1_000, 45_500);
    assert_eq!(gauge(), Some(5));
}
