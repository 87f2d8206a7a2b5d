//! The ledger: reservations and settlements under concurrency and corrupted
//! counters, never over a limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use proptest::prelude::*;

use super::*;
use crate::limits::memory::MemoryStore;
use crate::limits::store::Cas;

const MIN: u64 = 60;
const DAY: u64 = 86_400;
/// 2024-03-11T00:00:00Z.
const MIDNIGHT: u64 = 1_710_115_200;

fn rate(amount: u64, window_secs: u64) -> Rate {
    Rate {
        amount,
        window_secs,
    }
}

/// A group of one rate: its counter is a single 16-byte window.
fn limit(key: &str, amount: u64, window_secs: u64) -> LimitGroup {
    group(key, &[rate(amount, window_secs)])
}

fn group(key: &str, rates: &[Rate]) -> LimitGroup {
    LimitGroup {
        counter_key: key.to_owned(),
        rates: rates.to_vec(),
    }
}

fn put(store: &dyn CounterStore, key: &str, window_start: u64, used: u64) {
    let count = WindowCount { window_start, used };
    store.set(key, &count.encode(), None).unwrap();
}

/// The raw counter of a group of one rate: `(window_start, used)`, `None` if missing
/// or unreadable.
fn stored(store: &dyn CounterStore, key: &str) -> Option<(u64, u64)> {
    let (bytes, _) = store.get(key).unwrap()?;
    WindowCount::decode(&bytes).map(|count| (count.window_start, count.used))
}

/// The raw counter of a group of `rates` rates.
fn stored_group(store: &dyn CounterStore, key: &str, rates: usize) -> Option<Vec<(u64, u64)>> {
    let (bytes, _) = store.get(key).unwrap()?;
    let counts = decode_group(&bytes, rates)?;
    Some(counts.iter().map(|c| (c.window_start, c.used)).collect())
}

fn cas_of(store: &dyn CounterStore, key: &str) -> Cas {
    store.get(key).unwrap().unwrap().1
}

fn denial(err: ReserveError) -> Denial {
    match err {
        ReserveError::Denied(denial) => denial,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn admits_up_to_the_limit_and_not_one_more() {
    // (limit, used before, requested, Ok(used after) | Err(remaining))
    let cases: &[(u64, u64, u64, Result<u64, u64>)] = &[
        (10, 0, 10, Ok(10)),
        (10, 0, 11, Err(10)),
        (10, 4, 6, Ok(10)),
        (10, 4, 7, Err(6)),
        (10, 10, 0, Ok(10)),
        (10, 10, 1, Err(0)),
        (10, 0, 0, Ok(0)),
        // Overdrawn by an upstream that ignored max_tokens: even 0 is refused.
        (10, 11, 0, Err(0)),
        (10, 0, u64::MAX, Err(10)),
        (u64::MAX, u64::MAX - 1, 1, Ok(u64::MAX)),
        (u64::MAX, u64::MAX - 1, 2, Err(1)),
        (u64::MAX, u64::MAX, u64::MAX, Err(0)),
        (0, 0, 1, Err(0)),
    ];
    for &(amount, before, requested, want) in cases {
        let store = MemoryStore::new();
        let tpm = limit("tpm", amount, MIN);
        put(&store, "tpm", 600, before);
        let got = reserve(&store, 630, &[(&tpm, &[requested][..])]);
        let case = format!("limit {amount}, used {before}, requested {requested}");
        match want {
            Ok(after) => {
                let holds = got.expect(&case);
                let want_hold = Hold {
                    counter_key: "tpm".into(),
                    windows: vec![HeldWindow {
                        window_start: 600,
                        window_secs: MIN,
                        amount: requested,
                        state: LimitState {
                            limit: amount,
                            remaining: amount - after,
                            reset_after_secs: 30,
                        },
                    }],
                };
                assert_eq!(holds, vec![want_hold], "{case}");
                assert_eq!(stored(&store, "tpm"), Some((600, after)), "{case}");
            }
            Err(remaining) => {
                let want_denial = Denial {
                    group: 0,
                    rate: 0,
                    limit: amount,
                    remaining,
                    reset_after_secs: 30,
                    requested,
                };
                assert_eq!(denial(got.expect_err(&case)), want_denial, "{case}");
                assert_eq!(stored(&store, "tpm"), Some((600, before)), "{case}");
            }
        }
    }
}

#[test]
fn a_refusal_rolls_back_the_holds_already_taken() {
    let store = MemoryStore::new();
    let rpm = limit("rpm", 100, MIN);
    let tpm = limit("tpm", 10, MIN);
    let tpd = limit("tpd", 1000, DAY);
    put(&store, "rpm", 0, 3);
    put(&store, "tpm", 0, 8);
    put(&store, "tpd", 0, 40);

    let err = reserve(
        &store,
        5,
        &[(&rpm, &[1][..]), (&tpm, &[5][..]), (&tpd, &[5][..])],
    )
    .unwrap_err();
    let want = Denial {
        group: 1,
        rate: 0,
        limit: 10,
        remaining: 2,
        reset_after_secs: 55,
        requested: 5,
    };
    assert_eq!(err, ReserveError::Denied(want));
    assert_eq!(
        err.to_string(),
        "limit #1.0 refused 5 (remaining 2 of 10, resets in 55 s)"
    );
    assert_eq!(stored(&store, "rpm"), Some((0, 3)), "first limit restored");
    assert_eq!(stored(&store, "tpm"), Some((0, 8)));
    assert_eq!(stored(&store, "tpd"), Some((0, 40)), "third never touched");

    // With room everywhere, all three are charged and the holds follow `wants`.
    let holds = reserve(
        &store,
        5,
        &[(&rpm, &[1][..]), (&tpm, &[2][..]), (&tpd, &[5][..])],
    )
    .unwrap();
    let keys: Vec<_> = holds
        .iter()
        .map(|h| (h.counter_key(), h.windows()[0].amount))
        .collect();
    assert_eq!(keys, [("rpm", 1), ("tpm", 2), ("tpd", 5)]);
    assert_eq!(stored(&store, "tpm"), Some((0, 10)));
    assert_eq!(reserve(&store, 5, &[]), Ok(vec![]));
}

#[test]
fn a_new_window_starts_empty_and_old_holds_settle_to_nothing() {
    let store = MemoryStore::new();
    let tpm = limit("tpm", 10, MIN);
    let old = reserve(&store, 59, &[(&tpm, &[10][..])]).unwrap();
    assert!(reserve(&store, 59, &[(&tpm, &[1][..])]).is_err());

    let new = reserve(&store, 60, &[(&tpm, &[4][..])]).unwrap();
    assert_eq!(new[0].windows()[0].window_start, 60);
    assert_eq!(stored(&store, "tpm"), Some((60, 4)));

    // The old hold's usage belongs to the old window: no effect on the new one.
    for hold in old {
        settle(&store, 61, hold, &[3]).unwrap();
    }
    assert_eq!(stored(&store, "tpm"), Some((60, 4)));
}

#[test]
fn settling_after_the_window_ended_is_a_no_op_even_if_nobody_rolled_it_over() {
    let store = MemoryStore::new();
    let tpm = limit("tpm", 10, MIN);
    let holds = reserve(&store, 0, &[(&tpm, &[8][..])]).unwrap();
    let cas = cas_of(&store, "tpm");
    for hold in holds {
        settle(&store, MIN, hold, &[1]).unwrap();
    }
    assert_eq!(cas_of(&store, "tpm"), cas, "nothing written");
    assert_eq!(stored(&store, "tpm"), Some((0, 8)));
}

#[test]
fn settling_moves_the_counter_to_the_actual_usage() {
    // (held, actual, used after settle by a limit of 20 with 5 used by others)
    let cases: &[(u64, u64, u64)] = &[
        (10, 3, 8),
        (10, 0, 5),
        (10, 10, 15),
        // The upstream ignored max_tokens: the counter tells the truth past the limit.
        (10, 25, 30),
        (10, u64::MAX, u64::MAX),
        (0, 7, 12),
    ];
    for &(held, actual, after) in cases {
        let store = MemoryStore::new();
        let tpm = limit("tpm", 20, MIN);
        put(&store, "tpm", 0, 5);
        let [hold] =
            <[Hold; 1]>::try_from(reserve(&store, 1, &[(&tpm, &[held][..])]).unwrap()).unwrap();
        settle(&store, 2, hold, &[actual]).unwrap();
        assert_eq!(
            stored(&store, "tpm"),
            Some((0, after)),
            "held {held} actual {actual}"
        );
        let remaining = 20u64.saturating_sub(after);
        assert_eq!(state(&store, 2, &tpm).unwrap()[0].remaining, remaining);
    }
}

#[test]
fn settling_the_held_amount_writes_nothing() {
    let store = MemoryStore::new();
    let tpm = limit("tpm", 20, MIN);
    let holds = reserve(&store, 1, &[(&tpm, &[6][..])]).unwrap();
    let cas = cas_of(&store, "tpm");
    for hold in holds {
        settle(&store, 2, hold, &[6]).unwrap();
    }
    assert_eq!(cas_of(&store, "tpm"), cas);
}

#[test]
fn a_zero_hold_on_an_ended_window_still_charges_its_actual() {
    let store = MemoryStore::new();
    let tpm = limit("tpm", 20, MIN);
    put(&store, "tpm", 0, 20);
    let holds = reserve(&store, MIN, &[(&tpm, &[0][..])]).unwrap();
    assert_eq!(stored(&store, "tpm"), Some((MIN, 0)), "rolled over");
    for hold in holds {
        settle(&store, MIN + 1, hold, &[7]).unwrap();
    }
    assert_eq!(stored(&store, "tpm"), Some((MIN, 7)));
}

#[test]
fn reset_after_counts_down_to_the_next_aligned_window() {
    // (window, now, reset_after)
    let cases: &[(u64, u64, u64)] = &[
        (MIN, 0, 60),
        (MIN, 1, 59),
        (MIN, 59, 1),
        (MIN, 60, 60),
        (MIN, 61, 59),
        (10, 1_000_003, 7),
        (1, 12_345, 1),
        (2 * 3600, 3600, 3600),
        (DAY, MIDNIGHT - 1, 1),
        (DAY, MIDNIGHT, DAY),
        (DAY, MIDNIGHT + 12 * 3600, 12 * 3600),
        (MIN, u64::MAX, 45),
    ];
    for &(window, now, want) in cases {
        let store = MemoryStore::new();
        let rpw = limit("rpw", 5, window);
        let before = state(&store, now, &rpw).unwrap();
        assert_eq!(before[0].reset_after_secs, want, "window {window} at {now}");
        let holds = reserve(&store, now, &[(&rpw, &[5][..])]).unwrap();
        let refused = denial(reserve(&store, now, &[(&rpw, &[1][..])]).unwrap_err());
        assert_eq!(refused.reset_after_secs, want, "window {window} at {now}");
        drop(holds);
    }
}

#[test]
fn day_windows_reset_at_utc_midnight() {
    let store = MemoryStore::new();
    let tpd = limit("tpd", 1000, DAY);
    let evening = MIDNIGHT - 3600;
    let holds = reserve(&store, evening, &[(&tpd, &[1000][..])]).unwrap();
    assert_eq!(holds[0].windows()[0].window_start, MIDNIGHT - DAY);
    assert_eq!(holds[0].windows()[0].window_end(), MIDNIGHT);
    let refused = denial(reserve(&store, MIDNIGHT - 1, &[(&tpd, &[1][..])]).unwrap_err());
    assert_eq!((refused.remaining, refused.reset_after_secs), (0, 1));

    let after = state(&store, MIDNIGHT, &tpd).unwrap();
    let want = LimitState {
        limit: 1000,
        remaining: 1000,
        reset_after_secs: DAY,
    };
    assert_eq!(after, [want]);
    let next = reserve(&store, MIDNIGHT, &[(&tpd, &[1000][..])]).unwrap();
    assert_eq!(next[0].windows()[0].window_start, MIDNIGHT);
    drop((holds, next));
}

#[test]
fn state_reads_the_current_window() {
    let store = MemoryStore::new();
    let rpm = limit("rpm", 10, MIN);
    let empty = LimitState {
        limit: 10,
        remaining: 10,
        reset_after_secs: 45,
    };
    assert_eq!(state(&store, 15, &rpm), Ok(vec![empty]), "missing counter");
    assert_eq!(store.get("rpm"), Ok(None), "state does not create");

    put(&store, "rpm", 0, 4);
    assert_eq!(state(&store, 15, &rpm).unwrap()[0].remaining, 6);
    put(&store, "rpm", 0, 14);
    assert_eq!(
        state(&store, 15, &rpm).unwrap()[0].remaining,
        0,
        "overdrawn"
    );
    assert_eq!(
        state(&store, 75, &rpm).unwrap()[0].remaining,
        10,
        "window over"
    );
}

#[test]
fn corrupted_counter_bytes_read_as_empty_and_are_rewritten() {
    for garbage in [&b""[..], b"garbage", &[0xff; 17]] {
        let store = MemoryStore::new();
        let rpm = limit("rpm", 10, MIN);
        store.set("rpm", garbage, None).unwrap();
        assert_eq!(state(&store, 0, &rpm).unwrap()[0].remaining, 10);
        let holds = reserve(&store, 0, &[(&rpm, &[10][..])]).unwrap();
        assert_eq!(
            stored(&store, "rpm"),
            Some((0, 10)),
            "fixed by the CAS write"
        );

        // Corrupted while the hold is live: the settle writes the hold's actual.
        store.set("rpm", garbage, None).unwrap();
        for hold in holds {
            settle(&store, 1, hold, &[3]).unwrap();
        }
        assert_eq!(stored(&store, "rpm"), Some((0, 3)));
    }
}

#[test]
fn ensure_counter_creates_only_missing_counters() {
    let store = MemoryStore::new();
    let rpm = limit("rpm", 10, MIN);
    assert_eq!(ensure_counter(&store, &rpm), Ok(true));
    assert_eq!(stored(&store, "rpm"), Some((0, 0)));
    assert_eq!(state(&store, MIDNIGHT, &rpm).unwrap()[0].remaining, 10);

    let holds = reserve(&store, MIDNIGHT, &[(&rpm, &[4][..])]).unwrap();
    assert_eq!(ensure_counter(&store, &rpm), Ok(false));
    assert_eq!(stored(&store, "rpm"), Some((MIDNIGHT, 4)), "left alone");
    drop(holds);
}

#[test]
fn a_missing_counter_is_created_on_first_use() {
    let store = MemoryStore::new();
    let rpm = limit("rpm", 10, MIN);
    let holds = reserve(&store, 61, &[(&rpm, &[2][..])]).unwrap();
    assert_eq!(stored(&store, "rpm"), Some((60, 2)));
    // Deleted under a live hold (not something Envoy does): settle recreates it.
    let fresh = MemoryStore::new();
    for hold in holds {
        settle(&fresh, 62, hold, &[1]).unwrap();
    }
    assert_eq!(stored(&fresh, "rpm"), Some((60, 1)));
}

/// Another worker creates the counter and charges it, once, between a
/// creator's read (the counter absent) and its write, as two Envoy workers
/// admitting the first requests of a new managed key can.
struct RacingStore {
    inner: MemoryStore,
    rival: Mutex<Option<(LimitGroup, u64)>>,
}

impl RacingStore {
    fn new(group: &LimitGroup, amount: u64) -> Self {
        Self {
            inner: MemoryStore::new(),
            rival: Mutex::new(Some((group.clone(), amount))),
        }
    }
}

impl CounterStore for RacingStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        if self.inner.get(key)?.is_none() {
            if let Some((group, amount)) = self.rival.lock().unwrap().take() {
                let held = reserve(&self.inner, 61, &[(&group, &[amount][..])]).unwrap();
                assert_eq!(held.len(), 1);
            }
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_counter_created_by_two_workers_at_once_keeps_both_charges() {
    let rpm = limit("rpm", 10, MIN);
    let store = RacingStore::new(&rpm, 3);
    let holds = reserve(&store, 61, &[(&rpm, &[2][..])]).unwrap();
    assert_eq!(stored(&store, "rpm"), Some((60, 5)), "neither charge lost");
    assert_eq!(holds[0].windows()[0].state.remaining, 5);

    // The same race against the creation at configuration time.
    let store = RacingStore::new(&rpm, 4);
    assert_eq!(ensure_counter(&store, &rpm), Ok(false));
    assert_eq!(stored(&store, "rpm"), Some((60, 4)), "left alone");
}

/// Counts host calls, the cost that grouping rates into one counter saves.
#[derive(Default)]
struct CountingStore {
    inner: MemoryStore,
    gets: AtomicU32,
    sets: AtomicU32,
}

impl CounterStore for CountingStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        self.sets.fetch_add(1, Ordering::SeqCst);
        self.inner.set(key, value, cas)
    }
}

impl CountingStore {
    /// `(gets, sets)` since the last call.
    fn take(&self) -> (u32, u32) {
        (
            self.gets.swap(0, Ordering::SeqCst),
            self.sets.swap(0, Ordering::SeqCst),
        )
    }
}

#[test]
fn a_group_costs_one_read_and_one_write_however_many_rates_it_has() {
    let store = CountingStore::default();
    let sub = group(
        "sub",
        &[rate(10, MIN), rate(20_000, MIN), rate(1_000_000, DAY)],
    );
    let key = group("key", &[rate(5, 10)]);
    ensure_counter(&store, &sub).unwrap();
    ensure_counter(&store, &key).unwrap();
    store.take();

    let holds = reserve(
        &store,
        MIDNIGHT + 5,
        &[(&sub, &[1, 900, 900]), (&key, &[1])],
    )
    .unwrap();
    assert_eq!(store.take(), (2, 2), "admission");
    assert_eq!(
        stored_group(&store.inner, "sub", 3),
        Some(vec![(MIDNIGHT, 1), (MIDNIGHT, 900), (MIDNIGHT, 900)])
    );
    let states: Vec<_> = holds[0]
        .windows()
        .iter()
        .map(|w| w.state.remaining)
        .collect();
    assert_eq!(states, [9, 19_100, 999_100]);

    let mut holds = holds.into_iter();
    settle(&store, MIDNIGHT + 6, holds.next().unwrap(), &[1, 300, 300]).unwrap();
    settle(&store, MIDNIGHT + 6, holds.next().unwrap(), &[1]).unwrap();
    assert_eq!(
        store.take(),
        (1, 1),
        "settlement; the key's request count is exact"
    );
    assert_eq!(
        stored_group(&store.inner, "sub", 3),
        Some(vec![(MIDNIGHT, 1), (MIDNIGHT, 300), (MIDNIGHT, 300)])
    );
    let remaining: Vec<_> = state(&store, MIDNIGHT + 6, &sub)
        .unwrap()
        .iter()
        .map(|s| s.remaining)
        .collect();
    assert_eq!(remaining, [9, 19_700, 999_700]);
}

#[test]
fn a_refusal_names_the_group_and_rate_and_leaves_the_group_untouched() {
    let store = MemoryStore::new();
    let sub = group("sub", &[rate(10, MIN), rate(100, MIN), rate(150, DAY)]);
    let key = group("key", &[rate(5, MIN)]);
    let first = reserve(&store, 0, &[(&sub, &[1, 60, 60]), (&key, &[1])]).unwrap();
    let before = stored_group(&store, "sub", 3);

    // The minute fits (60 + 40 <= 100), the day does not (60 + 100 > 150).
    let err = reserve(&store, 1, &[(&key, &[1]), (&sub, &[1, 40, 100])]).unwrap_err();
    let want = Denial {
        group: 1,
        rate: 2,
        limit: 150,
        remaining: 90,
        reset_after_secs: DAY - 1,
        requested: 100,
    };
    assert_eq!(denial(err), want);
    assert_eq!(stored_group(&store, "sub", 3), before, "nothing written");
    assert_eq!(
        stored(&store, "key"),
        Some((0, 1)),
        "the key's hold released"
    );
    drop(first);
}

#[test]
fn each_rate_of_a_group_rolls_over_on_its_own() {
    let store = MemoryStore::new();
    let sub = group("sub", &[rate(10, MIN), rate(1000, DAY)]);
    let old = reserve(&store, MIDNIGHT + 59, &[(&sub, &[10, 100])]).unwrap();
    assert!(reserve(&store, MIDNIGHT + 59, &[(&sub, &[1, 1])]).is_err());

    let new = reserve(&store, MIDNIGHT + 60, &[(&sub, &[1, 100])]).unwrap();
    assert_eq!(
        stored_group(&store, "sub", 2),
        Some(vec![(MIDNIGHT + 60, 1), (MIDNIGHT, 200)])
    );
    // The old hold's minute is over: only its day window is settled.
    for hold in old {
        settle(&store, MIDNIGHT + 61, hold, &[1, 30]).unwrap();
    }
    assert_eq!(
        stored_group(&store, "sub", 2),
        Some(vec![(MIDNIGHT + 60, 1), (MIDNIGHT, 130)])
    );
    drop(new);
}

#[test]
fn a_value_of_another_length_reads_as_empty_windows() {
    let store = MemoryStore::new();
    let sub = group("sub", &[rate(10, MIN), rate(1000, DAY)]);
    // E.g. written when the scope had one rate, before a configuration reload.
    put(&store, "sub", 0, 10);
    assert_eq!(ensure_counter(&store, &sub), Ok(false), "left alone");
    let remaining: Vec<_> = state(&store, 5, &sub)
        .unwrap()
        .iter()
        .map(|s| s.remaining)
        .collect();
    assert_eq!(remaining, [10, 1000]);
    let holds = reserve(&store, 5, &[(&sub, &[1, 7])]).unwrap();
    assert_eq!(stored_group(&store, "sub", 2), Some(vec![(0, 1), (0, 7)]));
    // A short amounts list reserves 0 for the missing rates, and settles them to 0.
    for hold in holds {
        settle(&store, 6, hold, &[1]).unwrap();
    }
    assert_eq!(stored_group(&store, "sub", 2), Some(vec![(0, 1), (0, 0)]));
    let short = reserve(&store, 6, &[(&sub, &[1])]).unwrap();
    assert_eq!(short[0].windows()[1].amount, 0);
    assert_eq!(stored_group(&store, "sub", 2), Some(vec![(0, 2), (0, 0)]));
}

/// Fails every call that touches `key` with `Unavailable`, on `get` or on `set`.
struct BrokenStore {
    inner: MemoryStore,
    key: &'static str,
    on_get: bool,
}

impl CounterStore for BrokenStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        if self.on_get && key == self.key {
            return Err(StoreError::Unavailable("host said no".into()));
        }
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        if !self.on_get && key == self.key {
            return Err(StoreError::Unavailable("host said no".into()));
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn store_errors_propagate_and_roll_back() {
    let unavailable = StoreError::Unavailable("host said no".into());
    for on_get in [true, false] {
        let store = BrokenStore {
            inner: MemoryStore::new(),
            key: "tpm",
            on_get,
        };
        let rpm = limit("rpm", 10, MIN);
        let tpm = limit("tpm", 10, MIN);
        put(&store.inner, "rpm", 0, 1);
        let err = reserve(&store, 0, &[(&rpm, &[1][..]), (&tpm, &[1][..])]).unwrap_err();
        assert_eq!(
            err,
            ReserveError::Store(unavailable.clone()),
            "on_get {on_get}"
        );
        assert_eq!(stored(&store.inner, "rpm"), Some((0, 1)), "rolled back");

        let hold = Hold {
            counter_key: "tpm".into(),
            windows: vec![HeldWindow {
                window_start: 0,
                window_secs: MIN,
                amount: 5,
                state: LimitState {
                    limit: 10,
                    remaining: 5,
                    reset_after_secs: 60,
                },
            }],
        };
        assert_eq!(settle(&store, 1, hold, &[2]), Err(unavailable.clone()));
        if on_get {
            assert_eq!(state(&store, 0, &tpm), Err(unavailable.clone()));
            assert_eq!(ensure_counter(&store, &tpm), Err(unavailable.clone()));
        } else {
            assert_eq!(ensure_counter(&store, &tpm), Err(unavailable.clone()));
        }
    }
}

/// Loses the first `mismatches` conditional writes to an imaginary concurrent writer.
struct ContendedStore {
    inner: MemoryStore,
    mismatches: AtomicU32,
}

impl ContendedStore {
    fn new(mismatches: u32) -> Self {
        Self {
            inner: MemoryStore::new(),
            mismatches: AtomicU32::new(mismatches),
        }
    }
}

impl CounterStore for ContendedStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        let lose = |left: u32| left.checked_sub(1);
        if cas.is_some()
            && self
                .mismatches
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, lose)
                .is_ok()
        {
            return Err(StoreError::CasMismatch);
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn cas_mismatches_are_retried_up_to_the_bound() {
    let rpm = limit("rpm", 10, MIN);
    let store = ContendedStore::new(0);
    ensure_counter(&store, &rpm).unwrap();
    store
        .mismatches
        .store(MAX_CAS_ATTEMPTS - 1, Ordering::SeqCst);
    let holds = reserve(&store, 0, &[(&rpm, &[3][..])]).unwrap();
    assert_eq!(stored(&store, "rpm"), Some((0, 3)));

    store
        .mismatches
        .store(MAX_CAS_ATTEMPTS - 1, Ordering::SeqCst);
    for hold in holds {
        settle(&store, 1, hold, &[1]).unwrap();
    }
    assert_eq!(stored(&store, "rpm"), Some((0, 1)));
    assert_eq!(store.mismatches.load(Ordering::SeqCst), 0);
}

#[test]
fn endless_contention_gives_up_with_an_error() {
    let contended = StoreError::Contended {
        key: "rpm".into(),
        attempts: MAX_CAS_ATTEMPTS,
    };
    let rpm = limit("rpm", 10, MIN);
    let store = ContendedStore::new(0);
    ensure_counter(&store, &rpm).unwrap();
    store.mismatches.store(MAX_CAS_ATTEMPTS, Ordering::SeqCst);
    let err = reserve(&store, 0, &[(&rpm, &[3][..])]).unwrap_err();
    assert_eq!(err, ReserveError::Store(contended.clone()));
    assert_eq!(
        err.to_string(),
        "shared data counter `rpm` still contended after 64 CAS attempts"
    );
    assert_eq!(stored(&store, "rpm"), Some((0, 0)));

    let holds = reserve(&store, 0, &[(&rpm, &[3][..])]).unwrap();
    store.mismatches.store(u32::MAX, Ordering::SeqCst);
    for hold in holds {
        assert_eq!(settle(&store, 1, hold, &[1]), Err(contended.clone()));
    }
    assert_eq!(
        stored(&store, "rpm"),
        Some((0, 3)),
        "over-charged, never under"
    );
}

/// Records the highest `used` ever written to each window of each counter.
struct PeakStore {
    inner: MemoryStore,
    rates: usize,
    peaks: Mutex<HashMap<(String, usize), u64>>,
}

impl PeakStore {
    fn new(rates: usize) -> Self {
        Self {
            inner: MemoryStore::new(),
            rates,
            peaks: Mutex::default(),
        }
    }
}

impl CounterStore for PeakStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)?;
        let counts = decode_group(value, self.rates).unwrap_or_default();
        let mut peaks = self.peaks.lock().unwrap();
        for (i, count) in counts.iter().enumerate() {
            let peak = peaks.entry((key.to_owned(), i)).or_default();
            *peak = (*peak).max(count.used);
        }
        Ok(())
    }
}

const THREADS: u64 = 8;
const OPS_PER_THREAD: u64 = 500;

/// What one worker thread did: requests admitted and tokens charged.
#[derive(Default)]
struct Tally {
    admitted: u64,
    denied: u64,
    tokens: u64,
}

/// `THREADS` workers each run `OPS_PER_THREAD` reserve+settle pairs against two groups
/// of (requests, tokens per minute, tokens per day), a subscription and a key, keeping
/// some holds live across operations.
fn hammer(store: &PeakStore, groups: &[LimitGroup; 2]) -> Tally {
    let [sub, key] = groups;
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    let mut live: Vec<(Vec<Hold>, u64)> = Vec::new();
                    for op in 0..OPS_PER_THREAD {
                        let worst = 1 + (thread * 7 + op * 13) % 40;
                        let amounts = [1, worst, worst];
                        let wants = [(sub, &amounts[..]), (key, &amounts[..])];
                        match reserve(store, 30, &wants) {
                            Ok(holds) => live.push((holds, worst)),
                            Err(ReserveError::Denied(_)) => tally.denied += 1,
                            Err(err) => panic!("thread {thread} op {op}: {err}"),
                        }
                        // Settle the oldest once three are in flight.
                        if live.len() == 3 || op + 1 == OPS_PER_THREAD {
                            for (holds, worst) in live.drain(..) {
                                let actual = worst * (op % 4) / 3; // 0 ..= worst
                                tally.admitted += 1;
                                tally.tokens += actual;
                                for hold in holds {
                                    settle(store, 31, hold, &[1, actual, actual]).unwrap();
                                }
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    tallies.into_iter().fold(Tally::default(), |sum, t| Tally {
        admitted: sum.admitted + t.admitted,
        denied: sum.denied + t.denied,
        tokens: sum.tokens + t.tokens,
    })
}

fn groups(sub: [u64; 3], key: [u64; 3]) -> [LimitGroup; 2] {
    let rates = |[rpm, tpm, tpd]: [u64; 3]| [rate(rpm, MIN), rate(tpm, MIN), rate(tpd, DAY)];
    [group("sub", &rates(sub)), group("key", &rates(key))]
}

#[test]
fn concurrent_workers_lose_no_update() {
    let store = PeakStore::new(3);
    let groups = groups([u64::MAX; 3], [u64::MAX; 3]);
    for group in &groups {
        ensure_counter(&store, group).unwrap();
    }
    let total = hammer(&store, &groups);
    assert_eq!(total.admitted, THREADS * OPS_PER_THREAD);
    let want = vec![
        (0, THREADS * OPS_PER_THREAD),
        (0, total.tokens),
        (0, total.tokens),
    ];
    assert_eq!(stored_group(&store, "sub", 3), Some(want.clone()));
    assert_eq!(stored_group(&store, "key", 3), Some(want));
}

#[test]
fn concurrent_workers_never_overshoot_a_tight_limit() {
    let store = PeakStore::new(3);
    let groups = groups([3000, 20_000, u64::MAX], [u64::MAX, u64::MAX, 25_000]);
    for group in &groups {
        ensure_counter(&store, group).unwrap();
    }
    let total = hammer(&store, &groups);
    assert!(
        total.denied > 0,
        "the limits must bite for this test to mean anything"
    );
    assert_eq!(total.admitted + total.denied, THREADS * OPS_PER_THREAD);
    let want = vec![(0, total.admitted), (0, total.tokens), (0, total.tokens)];
    assert_eq!(stored_group(&store, "sub", 3), Some(want.clone()));
    assert_eq!(stored_group(&store, "key", 3), Some(want));
    let peaks = store.peaks.lock().unwrap();
    for group in &groups {
        for (i, rate) in group.rates.iter().enumerate() {
            let peak = peaks
                .get(&(group.counter_key.clone(), i))
                .copied()
                .unwrap_or(0);
            assert!(
                peak <= rate.amount,
                "{} rate {i}: peak {peak}",
                group.counter_key
            );
        }
    }
}

/// The limits of the property test, flattened: (group, rate index).
const FLAT: [(usize, usize); 3] = [(0, 0), (0, 1), (1, 0)];

#[derive(Debug, Clone)]
enum Op {
    Reserve { amounts: [u64; 3] },
    Settle { pick: usize, actuals: [u64; 3] },
    Wait { secs: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::array::uniform3(0u64..40).prop_map(|amounts| Op::Reserve { amounts }),
        3 => (any::<usize>(), prop::array::uniform3(0u64..100))
            .prop_map(|(pick, actuals)| Op::Settle { pick, actuals }),
        1 => (0u64..25).prop_map(|secs| Op::Wait { secs }),
    ]
}

proptest! {
    /// For a group of two rates and a group of one, the window of each rate in its
    /// current window equals the live holds plus the settled actuals charged to that
    /// window (the model), admission matches the model, and a window never exceeds
    /// its limit unless an actual exceeded its hold in that window.
    #[test]
    fn counters_match_live_holds_plus_settled_actuals(
        start in 0u64..4_000_000_000,
        amounts in prop::array::uniform3(1u64..120),
        windows in prop::array::uniform3(prop::sample::select(vec![1u64, 10, 60, 3600])),
        overshoot in any::<bool>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let store = MemoryStore::new();
        let rates: [Rate; 3] = std::array::from_fn(|k| rate(amounts[k], windows[k]));
        let groups = [group("a", &rates[..2]), group("b", &rates[2..])];
        let mut now = start;
        // Per flattened limit: window start -> used, and the window of the last overshoot.
        let mut model: [HashMap<u64, u64>; 3] = Default::default();
        let mut overshot: [Option<u64>; 3] = [None; 3];
        let mut live: Vec<Vec<Hold>> = Vec::new();

        for op in ops {
            match op {
                Op::Reserve { amounts } => {
                    let windows = rates.map(|r| r.window_start(now));
                    let refused = (0..3).find(|&k| {
                        let used = model[k].get(&windows[k]).copied().unwrap_or(0);
                        used + amounts[k] > rates[k].amount
                    });
                    let wants = [(&groups[0], &amounts[..2]), (&groups[1], &amounts[2..])];
                    match (reserve(&store, now, &wants), refused) {
                        (Ok(holds), None) => {
                            for k in 0..3 {
                                *model[k].entry(windows[k]).or_default() += amounts[k];
                            }
                            live.push(holds);
                        }
                        (Err(ReserveError::Denied(denial)), Some(k)) => {
                            prop_assert_eq!((denial.group, denial.rate), FLAT[k]);
                        }
                        (got, want) => prop_assert!(false, "got {:?}, model refuses {:?}", got, want),
                    }
                }
                Op::Settle { pick, actuals } => {
                    if live.is_empty() {
                        continue;
                    }
                    let holds = live.swap_remove(pick % live.len());
                    let mut actual = actuals;
                    for (k, &(g, i)) in FLAT.iter().enumerate() {
                        let held = holds[g].windows()[i];
                        if !overshoot {
                            actual[k] %= held.amount + 1;
                        }
                        if !held.window_has_ended(now) {
                            let used = model[k].entry(held.window_start).or_default();
                            *used = *used - held.amount + actual[k];
                            if actual[k] > held.amount {
                                overshot[k] = Some(held.window_start);
                            }
                        }
                    }
                    let mut holds = holds.into_iter();
                    let (a, b) = (holds.next().unwrap(), holds.next().unwrap());
                    settle(&store, now, a, &actual[..2]).unwrap();
                    settle(&store, now, b, &actual[2..]).unwrap();
                }
                Op::Wait { secs } => now += secs,
            }
            let states = [state(&store, now, &groups[0]).unwrap(), state(&store, now, &groups[1]).unwrap()];
            for (k, &(g, i)) in FLAT.iter().enumerate() {
                let rate = rates[k];
                let window = rate.window_start(now);
                let raw = store.get(&groups[g].counter_key).unwrap()
                    .and_then(|(bytes, _)| decode_group(&bytes, groups[g].rates.len()))
                    .map(|counts| counts[i]);
                let used = WindowCount::current(raw, window).used;
                prop_assert_eq!(used, model[k].get(&window).copied().unwrap_or(0));
                if overshot[k] != Some(window) {
                    prop_assert!(used <= rate.amount);
                }
                let remaining = rate.amount.saturating_sub(used);
                prop_assert_eq!(states[g][i].remaining, remaining);
            }
        }
    }
}
