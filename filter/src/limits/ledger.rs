//! The ledger: reserve a request's worst case against every limit group at admission,
//! settle each hold to the real usage when the response ends, and read a group's state
//! for response headers. Every write is a CAS read-modify-write of one group counter,
//! which holds one window per rate, so one scope costs one read and one write however
//! many rates it has.

use super::counter::{decode_group, encode_group, WindowCount};
use super::rate::Rate;
use super::store::{Cas, CounterStore, StoreError};

/// How many CAS writes one counter update may lose to concurrent writers before the
/// ledger gives up with [`StoreError::Contended`]. Envoy's shared data is one lock shared
/// by a handful of workers, so a few retries are normal and dozens mean something is
/// wrong; the bound keeps a request from spinning.
pub const MAX_CAS_ATTEMPTS: u32 = 64;

/// The cas a counter is created with. Shared data has no create-if-absent,
/// but proxy-wasm-cpp-host's `SharedData::set` (src/shared_data.cc) creates
/// an absent key whatever the cas, and refuses a write to an existing key
/// whose cas is neither 0 nor the key's current one. So a creation with a
/// non-zero cas lands only while the key is still absent: when another
/// worker created the counter since our read, its cas is a fresh one from
/// the host's counter (shared by all keys, from 1, skipping 0), and our write
/// fails with `CasMismatch` and is retried from the read. No non-zero cas is
/// impossible, so `u32::MAX`: the fresh cas equals it only at the one write
/// in 2^32 - 1 just before the host's counter wraps.
const CREATE_CAS: Cas = u32::MAX;

/// The enforced rates of one scope, e.g. "subscription free: 10 requests/min, 20000
/// tokens/min, 1000000 tokens/day", kept together in one shared-data counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitGroup {
    /// Shared-data key of the counter; distinct groups must use distinct keys.
    pub counter_key: String,
    /// One window per rate in the counter, in this order. Changing the list (by a
    /// configuration reload) changes the meaning of the stored windows: a different
    /// length reads as empty windows; the same length with other rates is read as is.
    pub rates: Vec<Rate>,
}

/// What one hold reserved in one rate's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldWindow {
    /// Start (Unix seconds) of the window the amount was reserved in.
    pub window_start: u64,
    pub window_secs: u64,
    pub amount: u64,
    /// The window right after this reservation was taken (other requests may have moved
    /// it since), for response headers without another read of the counter.
    pub state: LimitState,
}

impl HeldWindow {
    /// End (exclusive, Unix seconds) of the window; settling at or after it is a no-op.
    pub fn window_end(&self) -> u64 {
        self.window_start.saturating_add(self.window_secs.max(1))
    }

    /// Whether the window is over at `now_secs` (by elapsed time, which cannot overflow
    /// the way `window_end` saturates).
    pub fn window_has_ended(&self, now_secs: u64) -> bool {
        now_secs.saturating_sub(self.window_start) >= self.window_secs.max(1)
    }
}

/// The amounts reserved in one group counter, one [`HeldWindow`] per rate of the group.
/// It is not `Clone`, and `settle` consumes it, so each hold is settled at most once;
/// only `reserve` makes one.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an unsettled hold stays charged in full until its windows end"]
pub struct Hold {
    counter_key: String,
    windows: Vec<HeldWindow>,
}

impl Hold {
    pub fn counter_key(&self) -> &str {
        &self.counter_key
    }

    /// Per rate of the group, in its order.
    pub fn windows(&self) -> &[HeldWindow] {
        &self.windows
    }
}

/// Why `reserve` refused: rate `rate` of the wanted group at `group` had `remaining` of
/// `limit` left in its window, less than the `requested` amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub group: usize,
    pub rate: usize,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_secs: u64,
    pub requested: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error(
        "limit #{}.{} refused {} (remaining {} of {}, resets in {} s)",
        .0.group, .0.rate, .0.requested, .0.remaining, .0.limit, .0.reset_after_secs
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

/// Create the counter of `group` if it is absent; returns whether it did. The filter
/// calls this for every configured group at configuration time, so that
/// `reserve`/`settle` usually find the counter.
///
/// The write is conditional ([`CREATE_CAS`]): if another worker created the counter
/// (and perhaps charged it, as it can after a configuration reload) since the read, the
/// write fails and that counter is kept. A counter that exists with another length is
/// left alone: it reads as empty windows and the next CAS write gives it the right
/// length.
pub fn ensure_counter(store: &dyn CounterStore, group: &LimitGroup) -> Result<bool, StoreError> {
    if store.get(&group.counter_key)?.is_some() {
        return Ok(false);
    }
    // Window 0 is over for any real clock, so the first reservation starts fresh windows.
    let empty = vec![WindowCount::empty(0); group.rates.len()];
    match store.set(&group.counter_key, &encode_group(&empty), Some(CREATE_CAS)) {
        Ok(()) => Ok(true),
        Err(StoreError::CasMismatch) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Reserve, in each wanted group, `amounts[i]` in the current window of its rate `i`, all
/// or nothing. A missing amount (a slice shorter than the group's rates) is 0.
///
/// A reservation fits when `used + amount <= rate.amount` for every rate. At the first
/// group with a rate that does not fit, the holds already taken are released and `Denied`
/// names that group and its first refusing rate; on a store error they are released too.
/// Holds come back in the order of `wants`.
pub fn reserve(
    store: &dyn CounterStore,
    now_secs: u64,
    wants: &[(&LimitGroup, &[u64])],
) -> Result<Vec<Hold>, ReserveError> {
    let mut holds = Vec::with_capacity(wants.len());
    for (index, &(group, amounts)) in wants.iter().enumerate() {
        match reserve_group(store, now_secs, index, group, amounts) {
            Ok(windows) => holds.push(Hold {
                counter_key: group.counter_key.clone(),
                windows,
            }),
            Err(err) => {
                release(store, now_secs, holds);
                return Err(err);
            }
        }
    }
    Ok(holds)
}

/// Charge `amounts` to the current windows of `group` (the `index`-th wanted one) in one
/// CAS write and return what was held in each.
fn reserve_group(
    store: &dyn CounterStore,
    now_secs: u64,
    index: usize,
    group: &LimitGroup,
    amounts: &[u64],
) -> Result<Vec<HeldWindow>, ReserveError> {
    let rates = &group.rates;
    let outcome = update_counter(store, &group.counter_key, rates.len(), |stored| {
        let mut next = Vec::with_capacity(rates.len());
        let mut held = Vec::with_capacity(rates.len());
        for (i, rate) in rates.iter().enumerate() {
            let amount = amounts.get(i).copied().unwrap_or(0);
            let stored_count = stored.as_ref().and_then(|counts| counts.get(i).copied());
            let count = WindowCount::current(stored_count, rate.window_start(now_secs));
            let reset_after_secs = rate.reset_after(count.window_start, now_secs);
            match count.used.checked_add(amount) {
                Some(used) if used <= rate.amount => {
                    next.push(WindowCount {
                        window_start: count.window_start,
                        used,
                    });
                    held.push(HeldWindow {
                        window_start: count.window_start,
                        window_secs: rate.window_secs,
                        amount,
                        state: LimitState {
                            limit: rate.amount,
                            remaining: rate.amount - used,
                            reset_after_secs,
                        },
                    });
                }
                _ => {
                    return Update::Keep(Err(Denial {
                        group: index,
                        rate: i,
                        limit: rate.amount,
                        remaining: rate.amount.saturating_sub(count.used),
                        reset_after_secs,
                        requested: amount,
                    }))
                }
            }
        }
        if stored.as_deref() == Some(next.as_slice()) {
            // Nothing changes; a zero reservation on an over or missing window still
            // writes, so that the counter is on the hold's window when it settles.
            Update::Keep(Ok(held))
        } else {
            Update::Write(next, Ok(held))
        }
    })?;
    outcome.map_err(ReserveError::Denied)
}

/// Roll back holds of a refused reservation. A failure here leaves the counter charged
/// for more than was used until the window ends: it can refuse too early, never admit
/// too much, and the caller already has the error that matters.
fn release(store: &dyn CounterStore, now_secs: u64, holds: Vec<Hold>) {
    for hold in holds {
        let _ = settle(store, now_secs, hold, &[]);
    }
}

/// Replace each held amount with the `actual` usage (per rate, in the group's order; a
/// missing one is 0) in the hold's window of that rate, in one CAS write.
///
/// `actual` above the hold happens only when the upstream ignored `max_tokens`; the counter
/// then records the truth even past the limit, and the window refuses until it ends. When
/// a rate's held window has ended (by the clock or because the counter already moved on
/// to a later window) the usage belongs to a window nobody enforces any more: no-op for
/// that rate.
pub fn settle(
    store: &dyn CounterStore,
    now_secs: u64,
    hold: Hold,
    actual: &[u64],
) -> Result<(), StoreError> {
    let actual_of = |i: usize| actual.get(i).copied().unwrap_or(0);
    let pending = |i: usize, held: &HeldWindow| {
        actual_of(i) != held.amount && !held.window_has_ended(now_secs)
    };
    if !hold.windows.iter().enumerate().any(|(i, w)| pending(i, w)) {
        return Ok(());
    }
    let rates = hold.windows.len();
    update_counter(store, &hold.counter_key, rates, |stored| {
        let mut next = Vec::with_capacity(rates);
        let mut changed = false;
        for (i, held) in hold.windows.iter().enumerate() {
            let stored_count = stored.as_ref().and_then(|counts| counts.get(i).copied());
            // Window 0 is over for any real clock: an unreadable count stays empty.
            let kept = stored_count.unwrap_or(WindowCount::empty(0));
            if !pending(i, held) {
                next.push(kept);
                continue;
            }
            let used = match stored_count {
                Some(count) if count.window_start == held.window_start => count.used,
                Some(count) if count.window_start > held.window_start => {
                    next.push(kept);
                    continue;
                }
                // Missing, unreadable, or an earlier window (only if someone else rewrote
                // the counter): our window starts from nothing but this hold's usage.
                _ => 0,
            };
            next.push(WindowCount {
                window_start: held.window_start,
                used: used
                    .saturating_sub(held.amount)
                    .saturating_add(actual_of(i)),
            });
            changed = true;
        }
        if changed {
            Update::Write(next, ())
        } else {
            Update::Keep(())
        }
    })
}

/// The current window of each rate of `group`, in its order, for `X-RateLimit-*`-style
/// headers. Read only: a missing or unreadable counter reads as empty windows.
pub fn state(
    store: &dyn CounterStore,
    now_secs: u64,
    group: &LimitGroup,
) -> Result<Vec<LimitState>, StoreError> {
    let stored = store
        .get(&group.counter_key)?
        .and_then(|(bytes, _)| decode_group(&bytes, group.rates.len()));
    let states = group.rates.iter().enumerate().map(|(i, rate)| {
        let stored_count = stored.as_ref().and_then(|counts| counts.get(i).copied());
        let count = WindowCount::current(stored_count, rate.window_start(now_secs));
        LimitState {
            limit: rate.amount,
            remaining: rate.amount.saturating_sub(count.used),
            reset_after_secs: rate.reset_after(count.window_start, now_secs),
        }
    });
    Ok(states.collect())
}

/// What one read-modify-write attempt decided, given the stored counts.
enum Update<T> {
    Write(Vec<WindowCount>, T),
    Keep(T),
}

/// CAS loop over one group counter of `rates` windows: read, let `decide` compute the
/// next counts from the stored ones (`None` when missing or unreadable), write them
/// conditionally, and retry from the read when another writer got there first — at most
/// `MAX_CAS_ATTEMPTS` times.
fn update_counter<T>(
    store: &dyn CounterStore,
    key: &str,
    rates: usize,
    mut decide: impl FnMut(Option<Vec<WindowCount>>) -> Update<T>,
) -> Result<T, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (stored, cas) = match store.get(key)? {
            Some((bytes, cas)) => (decode_group(&bytes, rates), Some(cas)),
            // Not created yet (a managed key's or a token holder's counter, first seen
            // on the request path): created with `CREATE_CAS`, so that when another
            // worker creates it first, this write loses and is retried on its counter.
            None => (None, Some(CREATE_CAS)),
        };
        match decide(stored) {
            Update::Keep(outcome) => return Ok(outcome),
            Update::Write(next, outcome) => match store.set(key, &encode_group(&next), cas) {
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
mod tests;
