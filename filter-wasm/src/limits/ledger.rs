//! The ledger: reserve a request's worst case against every limit at admission, settle
//! each hold to the real usage when the response ends, and read a limit's state for
//! response headers. Every write is a CAS read-modify-write of one counter.

use super::counter::WindowCount;
use super::rate::Rate;
use super::store::{CounterStore, StoreError};

/// How many CAS writes one counter update may lose to concurrent writers before the
/// ledger gives up with [`StoreError::Contended`]. Envoy's shared data is one lock shared
/// by a handful of workers, so a few retries are normal and dozens mean something is
/// wrong; the bound keeps a request from spinning.
pub const MAX_CAS_ATTEMPTS: u32 = 64;

/// One enforced counter, e.g. "tokens per minute for subscription free".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Shared-data key of the counter; distinct limits must use distinct keys.
    pub counter_key: String,
    pub rate: Rate,
}

/// An amount reserved in one window of one counter. It is not `Clone`, and `settle`
/// consumes it, so each hold is settled at most once; only `reserve` makes one.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an unsettled hold stays charged in full until its window ends"]
pub struct Hold {
    counter_key: String,
    window_start: u64,
    window_secs: u64,
    amount: u64,
    /// The window as this reservation left it, for response headers without
    /// another read of the counter.
    state: LimitState,
}

impl Hold {
    pub fn counter_key(&self) -> &str {
        &self.counter_key
    }

    /// Start (Unix seconds) of the window the amount was reserved in.
    pub fn window_start(&self) -> u64 {
        self.window_start
    }

    /// End (exclusive, Unix seconds) of that window; settling at or after it is a no-op.
    pub fn window_end(&self) -> u64 {
        self.window_start.saturating_add(self.window_secs.max(1))
    }

    /// Whether the hold's window is over at `now_secs` (by elapsed time, which cannot
    /// overflow the way `window_end` saturates).
    pub fn window_has_ended(&self, now_secs: u64) -> bool {
        now_secs.saturating_sub(self.window_start) >= self.window_secs.max(1)
    }

    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// The limit's window right after this reservation was taken (other
    /// requests may have moved it since).
    pub fn state(&self) -> LimitState {
        self.state
    }
}

/// Why `reserve` refused: the wanted limit at `index` had `remaining` of `limit` left in
/// its window, less than the `requested` amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub index: usize,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_secs: u64,
    pub requested: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error(
        "limit #{} refused {} (remaining {} of {}, resets in {} s)",
        .0.index, .0.requested, .0.remaining, .0.limit, .0.reset_after_secs
    )]
    Denied(Denial),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A limit's window as response headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub limit: u64,
    /// What is left in the current window, 0 when it is used up or overdrawn.
    pub remaining: u64,
    pub reset_after_secs: u64,
}

/// Create the counter at `key` if it is absent; returns whether it did. The filter calls
/// this for every configured counter at configuration time, before traffic, so that
/// `reserve`/`settle` always find the counter and can use CAS.
///
/// Shared data has no create-if-absent, so this is a read then an unconditional write:
/// if another worker creates the counter *and charges it* between the two, that charge is
/// lost. Before traffic nothing charges, so the race cannot lose anything there.
pub fn ensure_counter(store: &dyn CounterStore, key: &str) -> Result<bool, StoreError> {
    if store.get(key)?.is_some() {
        return Ok(false);
    }
    // Window 0 is over for any real clock, so the first reservation starts a fresh window.
    store.set(key, &WindowCount::empty(0).encode(), None)?;
    Ok(true)
}

/// Reserve `amount` in the current window of each wanted limit, all or nothing.
///
/// A reservation fits when `used + amount <= rate.amount`. At the first one that does not
/// fit, the holds already taken are released and `Denied` names that limit; on a store
/// error they are released too. Holds come back in the order of `wants`.
pub fn reserve(
    store: &dyn CounterStore,
    now_secs: u64,
    wants: &[(&Limit, u64)],
) -> Result<Vec<Hold>, ReserveError> {
    let mut holds = Vec::with_capacity(wants.len());
    for (index, &(limit, amount)) in wants.iter().enumerate() {
        match reserve_one(store, now_secs, index, limit, amount) {
            Ok((window_start, state)) => holds.push(Hold {
                counter_key: limit.counter_key.clone(),
                window_start,
                window_secs: limit.rate.window_secs,
                amount,
                state,
            }),
            Err(err) => {
                release(store, now_secs, holds);
                return Err(err);
            }
        }
    }
    Ok(holds)
}

/// Charge `amount` to the current window of `limit` (the `index`-th wanted one) and
/// return that window's start and state after the charge.
fn reserve_one(
    store: &dyn CounterStore,
    now_secs: u64,
    index: usize,
    limit: &Limit,
    amount: u64,
) -> Result<(u64, LimitState), ReserveError> {
    let rate = limit.rate;
    let now_window = rate.window_start(now_secs);
    let outcome = update_counter(store, &limit.counter_key, |stored| {
        let count = WindowCount::current(stored, now_window);
        match count.used.checked_add(amount) {
            Some(used) if used <= rate.amount => {
                let state = LimitState {
                    limit: rate.amount,
                    remaining: rate.amount - used,
                    reset_after_secs: rate.reset_after(count.window_start, now_secs),
                };
                let charged = Ok((count.window_start, state));
                if Some(count) == stored && amount == 0 {
                    // Nothing changes; a zero reservation on an over or missing window still
                    // writes, so that the counter is on the hold's window when it settles.
                    Update::Keep(charged)
                } else {
                    let next = WindowCount {
                        window_start: count.window_start,
                        used,
                    };
                    Update::Write(next, charged)
                }
            }
            _ => Update::Keep(Err(Denial {
                index,
                limit: rate.amount,
                remaining: rate.amount.saturating_sub(count.used),
                reset_after_secs: rate.reset_after(count.window_start, now_secs),
                requested: amount,
            })),
        }
    })?;
    outcome.map_err(ReserveError::Denied)
}

/// Roll back holds of a refused reservation. A failure here leaves the counter charged
/// for more than was used until the window ends: it can refuse too early, never admit
/// too much, and the caller already has the error that matters.
fn release(store: &dyn CounterStore, now_secs: u64, holds: Vec<Hold>) {
    for hold in holds {
        let _ = settle(store, now_secs, hold, 0);
    }
}

/// Replace the held amount with the `actual` usage in the hold's window.
///
/// `actual` above the hold happens only when the upstream ignored `max_tokens`; the counter
/// then records the truth even past the limit, and the window refuses until it ends. When
/// the hold's window has ended (by the clock or because the counter already moved on to
/// a later window) the usage belongs to a window nobody enforces any more: no-op.
pub fn settle(
    store: &dyn CounterStore,
    now_secs: u64,
    hold: Hold,
    actual: u64,
) -> Result<(), StoreError> {
    if actual == hold.amount || hold.window_has_ended(now_secs) {
        return Ok(());
    }
    update_counter(store, &hold.counter_key, |stored| {
        let used = match stored {
            Some(count) if count.window_start == hold.window_start => count.used,
            Some(count) if count.window_start > hold.window_start => return Update::Keep(()),
            // Missing, unreadable, or an earlier window (only if someone else rewrote the
            // counter): our window starts from nothing but this hold's usage.
            _ => 0,
        };
        let next = WindowCount {
            window_start: hold.window_start,
            used: used.saturating_sub(hold.amount).saturating_add(actual),
        };
        Update::Write(next, ())
    })
}

/// The current window of `limit`, for `X-RateLimit-*`-style headers. Read only: a
/// missing or unreadable counter reads as an empty window.
pub fn state(
    store: &dyn CounterStore,
    now_secs: u64,
    limit: &Limit,
) -> Result<LimitState, StoreError> {
    let rate = limit.rate;
    let stored = store
        .get(&limit.counter_key)?
        .and_then(|(bytes, _)| WindowCount::decode(&bytes));
    let count = WindowCount::current(stored, rate.window_start(now_secs));
    Ok(LimitState {
        limit: rate.amount,
        remaining: rate.amount.saturating_sub(count.used),
        reset_after_secs: rate.reset_after(count.window_start, now_secs),
    })
}

/// What one read-modify-write attempt decided, given the stored count.
enum Update<T> {
    Write(WindowCount, T),
    Keep(T),
}

/// CAS loop over one counter: read, let `decide` compute the next count from the stored
/// one (`None` when missing or unreadable), write it conditionally, and retry from the
/// read when another writer got there first — at most `MAX_CAS_ATTEMPTS` times.
fn update_counter<T>(
    store: &dyn CounterStore,
    key: &str,
    mut decide: impl FnMut(Option<WindowCount>) -> Update<T>,
) -> Result<T, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (stored, cas) = match store.get(key)? {
            Some((bytes, cas)) => (WindowCount::decode(&bytes), Some(cas)),
            // The counter was never created (`ensure_counter` was skipped or lost). The
            // write below is then unconditional, since a conditional write to an absent
            // key cannot detect a concurrent create either: two workers creating the same
            // counter at once can lose one's charge. `ensure_counter` at configuration
            // time keeps this path off the request path.
            None => (None, None),
        };
        match decide(stored) {
            Update::Keep(outcome) => return Ok(outcome),
            Update::Write(next, outcome) => match store.set(key, &next.encode(), cas) {
                Ok(()) => return Ok(outcome),
                Err(StoreError::CasMismatch) => continue,
                Err(err) => return Err(err),
            },
        }
    }
    Err(StoreError::Contended {
        key: key.to_owned(),
        attempts: MAX_CAS_ATTEMPTS,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
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

    fn limit(key: &str, amount: u64, window_secs: u64) -> Limit {
        Limit {
            counter_key: key.to_owned(),
            rate: Rate {
                amount,
                window_secs,
            },
        }
    }

    fn put(store: &dyn CounterStore, key: &str, window_start: u64, used: u64) {
        let count = WindowCount { window_start, used };
        store.set(key, &count.encode(), None).unwrap();
    }

    /// The raw counter: `(window_start, used)`, `None` if missing or unreadable.
    fn stored(store: &dyn CounterStore, key: &str) -> Option<(u64, u64)> {
        let (bytes, _) = store.get(key).unwrap()?;
        WindowCount::decode(&bytes).map(|count| (count.window_start, count.used))
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
            let got = reserve(&store, 630, &[(&tpm, requested)]);
            let case = format!("limit {amount}, used {before}, requested {requested}");
            match want {
                Ok(after) => {
                    let holds = got.expect(&case);
                    let want_hold = Hold {
                        counter_key: "tpm".into(),
                        window_start: 600,
                        window_secs: MIN,
                        amount: requested,
                        state: LimitState {
                            limit: amount,
                            remaining: amount - after,
                            reset_after_secs: 30,
                        },
                    };
                    assert_eq!(holds, vec![want_hold], "{case}");
                    assert_eq!(stored(&store, "tpm"), Some((600, after)), "{case}");
                }
                Err(remaining) => {
                    let want_denial = Denial {
                        index: 0,
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

        let err = reserve(&store, 5, &[(&rpm, 1), (&tpm, 5), (&tpd, 5)]).unwrap_err();
        let want = Denial {
            index: 1,
            limit: 10,
            remaining: 2,
            reset_after_secs: 55,
            requested: 5,
        };
        assert_eq!(err, ReserveError::Denied(want));
        assert_eq!(
            err.to_string(),
            "limit #1 refused 5 (remaining 2 of 10, resets in 55 s)"
        );
        assert_eq!(stored(&store, "rpm"), Some((0, 3)), "first limit restored");
        assert_eq!(stored(&store, "tpm"), Some((0, 8)));
        assert_eq!(stored(&store, "tpd"), Some((0, 40)), "third never touched");

        // With room everywhere, all three are charged and the holds follow `wants`.
        let holds = reserve(&store, 5, &[(&rpm, 1), (&tpm, 2), (&tpd, 5)]).unwrap();
        let keys: Vec<_> = holds
            .iter()
            .map(|h| (h.counter_key(), h.amount()))
            .collect();
        assert_eq!(keys, [("rpm", 1), ("tpm", 2), ("tpd", 5)]);
        assert_eq!(stored(&store, "tpm"), Some((0, 10)));
        assert_eq!(reserve(&store, 5, &[]), Ok(vec![]));
    }

    #[test]
    fn a_new_window_starts_empty_and_old_holds_settle_to_nothing() {
        let store = MemoryStore::new();
        let tpm = limit("tpm", 10, MIN);
        let old = reserve(&store, 59, &[(&tpm, 10)]).unwrap();
        assert!(reserve(&store, 59, &[(&tpm, 1)]).is_err());

        let new = reserve(&store, 60, &[(&tpm, 4)]).unwrap();
        assert_eq!(new[0].window_start(), 60);
        assert_eq!(stored(&store, "tpm"), Some((60, 4)));

        // The old hold's usage belongs to the old window: no effect on the new one.
        for hold in old {
            settle(&store, 61, hold, 3).unwrap();
        }
        assert_eq!(stored(&store, "tpm"), Some((60, 4)));
    }

    #[test]
    fn settling_after_the_window_ended_is_a_no_op_even_if_nobody_rolled_it_over() {
        let store = MemoryStore::new();
        let tpm = limit("tpm", 10, MIN);
        let holds = reserve(&store, 0, &[(&tpm, 8)]).unwrap();
        let cas = cas_of(&store, "tpm");
        for hold in holds {
            settle(&store, MIN, hold, 1).unwrap();
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
                <[Hold; 1]>::try_from(reserve(&store, 1, &[(&tpm, held)]).unwrap()).unwrap();
            settle(&store, 2, hold, actual).unwrap();
            assert_eq!(
                stored(&store, "tpm"),
                Some((0, after)),
                "held {held} actual {actual}"
            );
            let remaining = 20u64.saturating_sub(after);
            assert_eq!(state(&store, 2, &tpm).unwrap().remaining, remaining);
        }
    }

    #[test]
    fn settling_the_held_amount_writes_nothing() {
        let store = MemoryStore::new();
        let tpm = limit("tpm", 20, MIN);
        let holds = reserve(&store, 1, &[(&tpm, 6)]).unwrap();
        let cas = cas_of(&store, "tpm");
        for hold in holds {
            settle(&store, 2, hold, 6).unwrap();
        }
        assert_eq!(cas_of(&store, "tpm"), cas);
    }

    #[test]
    fn a_zero_hold_on_an_ended_window_still_charges_its_actual() {
        let store = MemoryStore::new();
        let tpm = limit("tpm", 20, MIN);
        put(&store, "tpm", 0, 20);
        let holds = reserve(&store, MIN, &[(&tpm, 0)]).unwrap();
        assert_eq!(stored(&store, "tpm"), Some((MIN, 0)), "rolled over");
        for hold in holds {
            settle(&store, MIN + 1, hold, 7).unwrap();
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
            assert_eq!(before.reset_after_secs, want, "window {window} at {now}");
            let holds = reserve(&store, now, &[(&rpw, 5)]).unwrap();
            let refused = denial(reserve(&store, now, &[(&rpw, 1)]).unwrap_err());
            assert_eq!(refused.reset_after_secs, want, "window {window} at {now}");
            drop(holds);
        }
    }

    #[test]
    fn day_windows_reset_at_utc_midnight() {
        let store = MemoryStore::new();
        let tpd = limit("tpd", 1000, DAY);
        let evening = MIDNIGHT - 3600;
        let holds = reserve(&store, evening, &[(&tpd, 1000)]).unwrap();
        assert_eq!(holds[0].window_start(), MIDNIGHT - DAY);
        assert_eq!(holds[0].window_end(), MIDNIGHT);
        let refused = denial(reserve(&store, MIDNIGHT - 1, &[(&tpd, 1)]).unwrap_err());
        assert_eq!((refused.remaining, refused.reset_after_secs), (0, 1));

        let after = state(&store, MIDNIGHT, &tpd).unwrap();
        let want = LimitState {
            limit: 1000,
            remaining: 1000,
            reset_after_secs: DAY,
        };
        assert_eq!(after, want);
        let next = reserve(&store, MIDNIGHT, &[(&tpd, 1000)]).unwrap();
        assert_eq!(next[0].window_start(), MIDNIGHT);
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
        assert_eq!(state(&store, 15, &rpm), Ok(empty), "missing counter");
        assert_eq!(store.get("rpm"), Ok(None), "state does not create");

        put(&store, "rpm", 0, 4);
        assert_eq!(state(&store, 15, &rpm).unwrap().remaining, 6);
        put(&store, "rpm", 0, 14);
        assert_eq!(state(&store, 15, &rpm).unwrap().remaining, 0, "overdrawn");
        assert_eq!(
            state(&store, 75, &rpm).unwrap().remaining,
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
            assert_eq!(state(&store, 0, &rpm).unwrap().remaining, 10);
            let holds = reserve(&store, 0, &[(&rpm, 10)]).unwrap();
            assert_eq!(
                stored(&store, "rpm"),
                Some((0, 10)),
                "fixed by the CAS write"
            );

            // Corrupted while the hold is live: the settle writes the hold's actual.
            store.set("rpm", garbage, None).unwrap();
            for hold in holds {
                settle(&store, 1, hold, 3).unwrap();
            }
            assert_eq!(stored(&store, "rpm"), Some((0, 3)));
        }
    }

    #[test]
    fn ensure_counter_creates_only_missing_counters() {
        let store = MemoryStore::new();
        let rpm = limit("rpm", 10, MIN);
        assert_eq!(ensure_counter(&store, "rpm"), Ok(true));
        assert_eq!(stored(&store, "rpm"), Some((0, 0)));
        assert_eq!(state(&store, MIDNIGHT, &rpm).unwrap().remaining, 10);

        let holds = reserve(&store, MIDNIGHT, &[(&rpm, 4)]).unwrap();
        assert_eq!(ensure_counter(&store, "rpm"), Ok(false));
        assert_eq!(stored(&store, "rpm"), Some((MIDNIGHT, 4)), "left alone");
        drop(holds);
    }

    #[test]
    fn a_missing_counter_is_created_on_first_use() {
        let store = MemoryStore::new();
        let rpm = limit("rpm", 10, MIN);
        let holds = reserve(&store, 61, &[(&rpm, 2)]).unwrap();
        assert_eq!(stored(&store, "rpm"), Some((60, 2)));
        // Deleted under a live hold (not something Envoy does): settle recreates it.
        let fresh = MemoryStore::new();
        for hold in holds {
            settle(&fresh, 62, hold, 1).unwrap();
        }
        assert_eq!(stored(&fresh, "rpm"), Some((60, 1)));
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
            let err = reserve(&store, 0, &[(&rpm, 1), (&tpm, 1)]).unwrap_err();
            assert_eq!(
                err,
                ReserveError::Store(unavailable.clone()),
                "on_get {on_get}"
            );
            assert_eq!(stored(&store.inner, "rpm"), Some((0, 1)), "rolled back");

            let hold = Hold {
                counter_key: "tpm".into(),
                window_start: 0,
                window_secs: MIN,
                amount: 5,
                state: LimitState {
                    limit: 10,
                    remaining: 5,
                    reset_after_secs: 60,
                },
            };
            assert_eq!(settle(&store, 1, hold, 2), Err(unavailable.clone()));
            if on_get {
                assert_eq!(state(&store, 0, &tpm), Err(unavailable.clone()));
                assert_eq!(ensure_counter(&store, "tpm"), Err(unavailable.clone()));
            } else {
                assert_eq!(ensure_counter(&store, "tpm"), Err(unavailable.clone()));
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
        let store = ContendedStore::new(MAX_CAS_ATTEMPTS - 1);
        ensure_counter(&store, "rpm").unwrap();
        let holds = reserve(&store, 0, &[(&rpm, 3)]).unwrap();
        assert_eq!(stored(&store, "rpm"), Some((0, 3)));

        store
            .mismatches
            .store(MAX_CAS_ATTEMPTS - 1, Ordering::SeqCst);
        for hold in holds {
            settle(&store, 1, hold, 1).unwrap();
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
        let store = ContendedStore::new(MAX_CAS_ATTEMPTS);
        ensure_counter(&store, "rpm").unwrap();
        let err = reserve(&store, 0, &[(&rpm, 3)]).unwrap_err();
        assert_eq!(err, ReserveError::Store(contended.clone()));
        assert_eq!(
            err.to_string(),
            "shared data counter `rpm` still contended after 64 CAS attempts"
        );
        assert_eq!(stored(&store, "rpm"), Some((0, 0)));

        let holds = reserve(&store, 0, &[(&rpm, 3)]).unwrap();
        store.mismatches.store(u32::MAX, Ordering::SeqCst);
        for hold in holds {
            assert_eq!(settle(&store, 1, hold, 1), Err(contended.clone()));
        }
        assert_eq!(
            stored(&store, "rpm"),
            Some((0, 3)),
            "over-charged, never under"
        );
    }

    /// Records the highest `used` ever written to each counter.
    #[derive(Default)]
    struct PeakStore {
        inner: MemoryStore,
        peaks: Mutex<HashMap<String, u64>>,
    }

    impl CounterStore for PeakStore {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)?;
            let used = WindowCount::decode(value).map_or(0, |count| count.used);
            let mut peaks = self.peaks.lock().unwrap();
            let peak = peaks.entry(key.to_owned()).or_default();
            *peak = (*peak).max(used);
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

    /// `THREADS` workers each run `OPS_PER_THREAD` reserve+settle pairs against one
    /// request limit and two token limits, keeping some holds live across operations.
    fn hammer(store: &PeakStore, limits: &[Limit; 3]) -> Tally {
        let [rpm, tpm, tpd] = limits;
        let tallies: Vec<Tally> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    scope.spawn(move || {
                        let mut tally = Tally::default();
                        let mut live: Vec<(Vec<Hold>, u64)> = Vec::new();
                        for op in 0..OPS_PER_THREAD {
                            let worst = 1 + (thread * 7 + op * 13) % 40;
                            let wants = [(rpm, 1), (tpm, worst), (tpd, worst)];
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
                                    for (hold, used) in holds.into_iter().zip([1, actual, actual]) {
                                        settle(store, 31, hold, used).unwrap();
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

    #[test]
    fn concurrent_workers_lose_no_update() {
        let store = PeakStore::default();
        let limits = [
            limit("rpm", u64::MAX, MIN),
            limit("tpm", u64::MAX, MIN),
            limit("tpd", u64::MAX, DAY),
        ];
        for limit in &limits {
            ensure_counter(&store, &limit.counter_key).unwrap();
        }
        let total = hammer(&store, &limits);
        assert_eq!(total.admitted, THREADS * OPS_PER_THREAD);
        assert_eq!(stored(&store, "rpm"), Some((0, THREADS * OPS_PER_THREAD)));
        assert_eq!(stored(&store, "tpm"), Some((0, total.tokens)));
        assert_eq!(stored(&store, "tpd"), Some((0, total.tokens)));
    }

    #[test]
    fn concurrent_workers_never_overshoot_a_tight_limit() {
        let store = PeakStore::default();
        let limits = [
            limit("rpm", 3000, MIN),
            limit("tpm", 20_000, MIN),
            limit("tpd", 25_000, DAY),
        ];
        for limit in &limits {
            ensure_counter(&store, &limit.counter_key).unwrap();
        }
        let total = hammer(&store, &limits);
        assert!(
            total.denied > 0,
            "the limits must bite for this test to mean anything"
        );
        assert_eq!(total.admitted + total.denied, THREADS * OPS_PER_THREAD);
        assert_eq!(stored(&store, "rpm"), Some((0, total.admitted)));
        assert_eq!(stored(&store, "tpm"), Some((0, total.tokens)));
        assert_eq!(stored(&store, "tpd"), Some((0, total.tokens)));
        let peaks = store.peaks.lock().unwrap();
        for limit in &limits {
            let peak = peaks.get(&limit.counter_key).copied().unwrap_or(0);
            assert!(
                peak <= limit.rate.amount,
                "{}: peak {peak}",
                limit.counter_key
            );
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve { amounts: [u64; 2] },
        Settle { pick: usize, actuals: [u64; 2] },
        Wait { secs: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => prop::array::uniform2(0u64..40).prop_map(|amounts| Op::Reserve { amounts }),
            3 => (any::<usize>(), prop::array::uniform2(0u64..100))
                .prop_map(|(pick, actuals)| Op::Settle { pick, actuals }),
            1 => (0u64..25).prop_map(|secs| Op::Wait { secs }),
        ]
    }

    proptest! {
        /// The counter of each limit's current window equals the live holds plus the
        /// settled actuals charged to that window (the model), admission matches the
        /// model, and the counter never exceeds the limit unless an actual exceeded its
        /// hold in that window.
        #[test]
        fn counters_match_live_holds_plus_settled_actuals(
            start in 0u64..4_000_000_000,
            amounts in prop::array::uniform2(1u64..120),
            windows in prop::array::uniform2(prop::sample::select(vec![1u64, 10, 60, 3600])),
            overshoot in any::<bool>(),
            ops in prop::collection::vec(op(), 1..80),
        ) {
            let store = MemoryStore::new();
            let limits = [limit("a", amounts[0], windows[0]), limit("b", amounts[1], windows[1])];
            let mut now = start;
            // Per limit: window start -> used, and the window of the last overshoot.
            let mut model: [HashMap<u64, u64>; 2] = Default::default();
            let mut overshot: [Option<u64>; 2] = [None, None];
            let mut live: Vec<Vec<Hold>> = Vec::new();

            for op in ops {
                match op {
                    Op::Reserve { amounts } => {
                        let windows = limits.each_ref().map(|l| l.rate.window_start(now));
                        let refused = (0..2).find(|&i| {
                            let used = model[i].get(&windows[i]).copied().unwrap_or(0);
                            used + amounts[i] > limits[i].rate.amount
                        });
                        let wants = [(&limits[0], amounts[0]), (&limits[1], amounts[1])];
                        match (reserve(&store, now, &wants), refused) {
                            (Ok(holds), None) => {
                                for i in 0..2 {
                                    *model[i].entry(windows[i]).or_default() += amounts[i];
                                }
                                live.push(holds);
                            }
                            (Err(ReserveError::Denied(denial)), Some(index)) => {
                                prop_assert_eq!(denial.index, index);
                            }
                            (got, want) => prop_assert!(false, "got {:?}, model refuses {:?}", got, want),
                        }
                    }
                    Op::Settle { pick, actuals } => {
                        if live.is_empty() {
                            continue;
                        }
                        let holds = live.swap_remove(pick % live.len());
                        for (i, hold) in holds.into_iter().enumerate() {
                            let actual = if overshoot { actuals[i] } else { actuals[i] % (hold.amount() + 1) };
                            if !hold.window_has_ended(now) {
                                let used = model[i].entry(hold.window_start()).or_default();
                                *used = *used - hold.amount() + actual;
                                if actual > hold.amount() {
                                    overshot[i] = Some(hold.window_start());
                                }
                            }
                            settle(&store, now, hold, actual).unwrap();
                        }
                    }
                    Op::Wait { secs } => now += secs,
                }
                for (i, limit) in limits.iter().enumerate() {
                    let window = limit.rate.window_start(now);
                    let raw = store.get(&limit.counter_key).unwrap()
                        .and_then(|(bytes, _)| WindowCount::decode(&bytes));
                    let used = WindowCount::current(raw, window).used;
                    prop_assert_eq!(used, model[i].get(&window).copied().unwrap_or(0));
                    if overshot[i] != Some(window) {
                        prop_assert!(used <= limit.rate.amount);
                    }
                    let remaining = limit.rate.amount.saturating_sub(used);
                    prop_assert_eq!(state(&store, now, limit).unwrap().remaining, remaining);
                }
            }
        }
    }
}
