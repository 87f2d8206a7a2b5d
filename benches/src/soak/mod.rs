//! The bounded soak's typed half (`benches/soak.sh` builds and runs the
//! `soak` example, which owns the processes): mixed traffic from several
//! keys through the whole stack while its parts are killed and brought
//! back, then the ledgers compared.
//!
//! - [`plan`]: subscriptions, limits, keys, prompts, traffic mix, fault
//!   schedule (one source for the filter configuration, the control plane's
//!   subscriptions and the window checks).
//! - [`client`]: the clients (plain, streamed, cut streams) and what each
//!   saw.
//! - [`redis_counters`]: the limiter's counters read from Redis.
//! - [`ledger`]: the comparison of the clients', the audit log's, the
//!   filter's, the inference server's and the limiter's books, and the
//!   report.

pub mod client;
pub mod ledger;
pub mod plan;
pub mod redis_counters;
