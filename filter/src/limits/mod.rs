//! Request and token limits per fixed window, enforced across Envoy's worker threads
//! through shared data, without overshoot.
//!
//! The limits of one scope (a subscription, a key) form a [`LimitGroup`]: one counter in
//! shared data holding one window per rate, so a scope costs one read and one CAS write
//! however many rates it has. At admission the filter [`reserve`]s each request's worst
//! case (1 request; prompt estimate + `max_tokens`) against every rate of every group that
//! applies, all or nothing; when the response ends it [`settle`]s each [`Hold`] (one per
//! group) to the real usage. Windows are fixed and aligned to the Unix epoch (`1/day`
//! resets at 00:00 UTC); each rate's window in a counter is `(window_start, used)`, rolls
//! over on its own, and a stored window that is over reads as empty.
//!
//! Invariants:
//! - A window's `used` never exceeds its limit as long as each settled actual is at most
//!   its hold: admission checks `used + amount <= limit` and writes with CAS, so
//!   concurrent workers never both take the last units, and no update is lost.
//! - `used` is the sum of the live holds plus the settled actuals charged to that window.
//!   A hold is settled at most once (`settle` consumes it); an actual above the hold is
//!   recorded as is, so the counter tells the truth even when an upstream overshoots.
//! - Usage belongs to the window the request was admitted in: settling after that window
//!   ended changes nothing.
//! - Nothing panics or overflows on any input, including corrupted counter bytes (read as
//!   empty windows and rewritten by the next CAS write, as is a value whose length does
//!   not match the group's rate count) and hand-built `Rate`s.
//! - CAS retries are bounded by [`MAX_CAS_ATTEMPTS`]; a store error is returned, never
//!   spun on. When `reserve` fails it releases what it took; if that release fails too,
//!   the window stays over-charged (refusing early) until it ends — never under-charged.
//! - Creating a counter loses nothing either. Shared data has no create-if-absent, but
//!   its `set` creates an absent key whatever the cas and refuses a stale one on an
//!   existing key: counters (those [`ensure_counter`] makes at configuration time, and
//!   those of managed keys and token holders, made on the request path) are written
//!   with a cas that is not current, so a worker that creates one second loses its
//!   write and retries on the first one's counter. (Only a host cas equal to that
//!   value, once per 2^32 - 1 writes, would let both land.)
//!
//! Everything here is pure logic over the [`CounterStore`] trait; [`MemoryStore`] is the
//! host-target double for tests and benches.
//!
//! Beside the local ledger: [`global_limits`] (limits a rate limiter service keeps,
//! shared by many gateways), [`settlement_outbox`] (its settlements on their way, retried
//! from the root context) and [`ratelimit_headers`] (what a client is told of its limits).

pub mod global_limits;
pub mod ratelimit_headers;
pub mod settlement_outbox;

mod counter;
mod ledger;
mod memory;
mod rate;
mod store;

pub use ledger::{
    ensure_counter, reserve, settle, state, Denial, HeldWindow, Hold, LimitGroup, LimitState,
    ReserveError, MAX_CAS_ATTEMPTS,
};
pub use memory::MemoryStore;
pub use rate::{Rate, RateError, RateErrorReason, MAX_WINDOW_SECS};
pub use store::{Cas, CounterStore, StoreError};
