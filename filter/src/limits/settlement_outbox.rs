//! Settlements on their way to the rate limiter: the `Commit` (or `Report`)
//! of a finished request's real usage against its global token limits.
//!
//! A stream settles as it ends, and the limiter may be down just then (a
//! restart, Redis failing over). Sent once and forgotten, that usage would
//! never be counted, and later requests in the same window could pass the
//! limit by as much. So a settlement waits here, per VM, until the limiter
//! answers OK: the root context sends what is due at each tick (calls made
//! by the root outlive the stream and their answers come back to it), and a
//! failed attempt is tried again with exponential backoff.
//!
//! Invariants:
//! - A settlement leaves the outbox when the limiter answered OK, or when it
//!   is older than [`MAX_AGE_MS`] (then counted as given up, never
//!   silently). A commit whose hold expired still counts its amount (as a
//!   `Report`), so a late settlement is still right.
//! - At most [`CAPACITY`] settlements wait per VM; one more is refused, so
//!   the caller counts it, and memory stays bounded whatever the outage.
//! - Each attempt waits for its answer (or its failure) before the next. An
//!   attempt whose answer was lost after the limiter applied it is counted
//!   twice there: the error is on the side of refusing sooner, never of
//!   admitting past a limit.

/// How often queued settlements go out (the filter's tick while it has a
/// limiter): how long a finished request's global hold may outlive it.
pub const SETTLEMENT_TICK_MS: u64 = 50;

use std::collections::{HashMap, VecDeque};

use crate::limits::global_limits::Call;

/// Settlements one VM keeps at most.
pub const CAPACITY: usize = 10_000;
/// How long a settlement is tried before it is given up.
pub const MAX_AGE_MS: u64 = 10 * 60 * 1000;
/// Wait before the first retry; doubled per failure up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: u64 = 250;
const MAX_BACKOFF_MS: u64 = 8_000;
/// Settlements sent per tick at most, so a limiter coming back after an
/// outage is not hit by a whole backlog at once (nor a tick stalled by it).
pub const MAX_SENDS_PER_TICK: usize = 200;
/// gRPC statuses no retry can change (a malformed call, a limiter without
/// the method): given up at once.
const PERMANENT_GRPC_STATUSES: [u32; 3] = [3, 5, 12];

/// One settlement and its attempts so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub cluster: String,
    pub call: Call,
    pub timeout_ms: u64,
    queued_ms: u64,
    attempts: u32,
    next_ms: u64,
}

/// The outbox is full: the settlement was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{CAPACITY} settlements are already waiting for the rate limiter")]
pub struct Full;

/// What became of a settlement after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The limiter counted it.
    Settled,
    /// It failed and will be tried again.
    Retrying { attempts: u32 },
    /// It failed and is too old to try again.
    GaveUp { attempts: u32 },
    /// Not an answer this outbox waits for.
    Unknown,
}

#[derive(Debug, Default)]
pub struct Outbox {
    waiting: VecDeque<Settlement>,
    in_flight: HashMap<u32, Settlement>,
}

impl Outbox {
    /// Queues a settlement, due at once.
    pub fn push(
        &mut self,
        cluster: &str,
        call: Call,
        timeout_ms: u64,
        now_ms: u64,
    ) -> Result<(), Full> {
        if self.len() >= CAPACITY {
            return Err(Full);
        }
        self.waiting.push_back(Settlement {
            cluster: cluster.to_string(),
            call,
            timeout_ms,
            queued_ms: now_ms,
            attempts: 0,
            next_ms: now_ms,
        });
        Ok(())
    }

    /// Removes and returns the settlements due by `now_ms`, oldest first,
    /// at most [`MAX_SENDS_PER_TICK`]; each must come back through
    /// [`Outbox::sent`] or [`Outbox::not_sent`].
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Settlement> {
        let mut due = Vec::new();
        let mut later = VecDeque::with_capacity(self.waiting.len());
        for s in std::mem::take(&mut self.waiting) {
            if s.next_ms <= now_ms && due.len() < MAX_SENDS_PER_TICK {
                due.push(s);
            } else {
                later.push_back(s);
            }
        }
        self.waiting = later;
        due
    }

    /// Some settlement is waiting out a backoff: the limiter is failing.
    pub fn retrying(&self) -> bool {
        self.waiting.iter().any(|s| s.attempts > 0)
    }

    /// The settlement went out as call `token`; its answer decides.
    pub fn sent(&mut self, token: u32, settlement: Settlement) {
        self.in_flight.insert(token, settlement);
    }

    /// The settlement could not be sent (no such cluster, Envoy refused).
    pub fn not_sent(&mut self, settlement: Settlement, now_ms: u64) -> Attempt {
        self.failed(settlement, now_ms)
    }

    /// The limiter's answer (or Envoy's failure) to call `token`: its gRPC
    /// status, 0 for OK.
    pub fn answered(&mut self, token: u32, grpc_status: u32, now_ms: u64) -> Attempt {
        match self.in_flight.remove(&token) {
            None => Attempt::Unknown,
            Some(_) if grpc_status == 0 => Attempt::Settled,
            Some(settlement) if PERMANENT_GRPC_STATUSES.contains(&grpc_status) => Attempt::GaveUp {
                attempts: settlement.attempts.saturating_add(1),
            },
            Some(settlement) => self.failed(settlement, now_ms),
        }
    }

    fn failed(&mut self, mut settlement: Settlement, now_ms: u64) -> Attempt {
        settlement.attempts = settlement.attempts.saturating_add(1);
        let attempts = settlement.attempts;
        if now_ms.saturating_sub(settlement.queued_ms) >= MAX_AGE_MS {
            return Attempt::GaveUp { attempts };
        }
        let doublings = attempts.saturating_sub(1).min(16);
        let backoff = FIRST_BACKOFF_MS
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF_MS);
        settlement.next_ms = now_ms.saturating_add(backoff);
        self.waiting.push_back(settlement);
        Attempt::Retrying { attempts }
    }

    /// Settlements waiting or in flight.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::global_limits::Method;

    fn call(n: u8) -> Call {
        Call {
            method: Method::Commit,
            message: vec![n],
        }
    }

    fn send_all(outbox: &mut Outbox, now: u64, next_token: &mut u32) -> Vec<u32> {
        let mut tokens = Vec::new();
        for s in outbox.take_due(now) {
            *next_token += 1;
            outbox.sent(*next_token, s);
            tokens.push(*next_token);
        }
        tokens
    }

    #[test]
    fn a_settlement_is_sent_at_once_and_leaves_when_answered_ok() {
        let mut outbox = Outbox::default();
        outbox.push("limitador", call(1), 1000, 0).unwrap();
        let due = outbox.take_due(0);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].call, call(1));
        outbox.sent(7, due[0].clone());
        assert_eq!(outbox.len(), 1, "in flight still counts");
        assert_eq!(outbox.answered(8, 0, 5), Attempt::Unknown);
        assert_eq!(outbox.answered(7, 0, 5), Attempt::Settled);
        assert!(outbox.is_empty());
    }

    #[test]
    fn failures_back_off_and_are_retried_until_the_limiter_answers() {
        let mut outbox = Outbox::default();
        let mut token = 0;
        outbox.push("limitador", call(1), 1000, 0).unwrap();
        let mut now = 0;
        // 250, 500, 1000, 2000, 4000, 8000, 8000 ms apart.
        for (attempt, wait) in [250, 500, 1000, 2000, 4000, 8000, 8000]
            .into_iter()
            .enumerate()
        {
            let tokens = send_all(&mut outbox, now, &mut token);
            assert_eq!(tokens.len(), 1, "attempt {attempt} due at {now}");
            let result = outbox.answered(tokens[0], 14, now);
            assert_eq!(
                result,
                Attempt::Retrying {
                    attempts: attempt as u32 + 1
                }
            );
            assert!(
                outbox.take_due(now + wait - 1).is_empty(),
                "not before {wait} ms"
            );
            now += wait;
        }
        let tokens = send_all(&mut outbox, now, &mut token);
        assert_eq!(outbox.answered(tokens[0], 0, now), Attempt::Settled);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_settlement_not_sent_is_retried_like_a_failed_one() {
        let mut outbox = Outbox::default();
        outbox.push("missing", call(1), 1000, 0).unwrap();
        let s = outbox.take_due(0).remove(0);
        assert_eq!(outbox.not_sent(s, 0), Attempt::Retrying { attempts: 1 });
        assert_eq!(outbox.take_due(250).len(), 1);
    }

    #[test]
    fn a_call_no_retry_can_fix_is_given_up_at_once_and_retries_are_visible() {
        let mut outbox = Outbox::default();
        for n in 0..2 {
            outbox.push("limitador", call(n), 1000, 0).unwrap();
        }
        let mut due = outbox.take_due(0).into_iter();
        outbox.sent(1, due.next().unwrap());
        outbox.sent(2, due.next().unwrap());
        assert!(!outbox.retrying());
        assert_eq!(outbox.answered(1, 12, 0), Attempt::GaveUp { attempts: 1 });
        assert_eq!(outbox.answered(2, 14, 0), Attempt::Retrying { attempts: 1 });
        assert!(outbox.retrying());
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn an_old_settlement_is_given_up_and_counted() {
        let mut outbox = Outbox::default();
        outbox.push("limitador", call(1), 1000, 0).unwrap();
        let s = outbox.take_due(0).remove(0);
        outbox.sent(1, s);
        assert_eq!(
            outbox.answered(1, 14, MAX_AGE_MS),
            Attempt::GaveUp { attempts: 1 }
        );
        assert!(outbox.is_empty());
    }

    #[test]
    fn the_outbox_is_bounded_and_keeps_order() {
        let mut outbox = Outbox::default();
        for i in 0..CAPACITY {
            outbox
                .push("l", call((i % 256) as u8), 1, i as u64)
                .unwrap();
        }
        assert_eq!(outbox.push("l", call(0), 1, 0), Err(Full));
        let due = outbox.take_due(10);
        assert_eq!(due.len(), 11, "only those queued by then");
        assert!(due.iter().zip(0u8..).all(|(s, i)| s.call == call(i)));
        let batch = outbox.take_due(5_000);
        assert_eq!(batch.len(), MAX_SENDS_PER_TICK, "a bounded batch");
        // Taken ones still count until they come back.
        for (token, s) in (0u32..).zip(due.into_iter().chain(batch)) {
            outbox.sent(token, s);
        }
        assert_eq!(outbox.push("l", call(0), 1, 0), Err(Full));
        assert_eq!(outbox.answered(0, 0, 20), Attempt::Settled);
        assert!(outbox.push("l", call(0), 1, 20).is_ok());
    }
}
