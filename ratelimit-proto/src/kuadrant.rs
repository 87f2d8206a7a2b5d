//! Kuadrant's rate-limit extension, `kuadrant.service.ratelimit.v1`, as
//! Limitador serves it: the reserve/commit messages (field numbers as
//! served, see `shared/protos/LIMITADOR-API.md`). `CheckRateLimit` and
//! `Report` reuse Envoy's [`crate::RateLimitRequest`] and
//! [`crate::RateLimitResponse`].
//!
//! Reserve holds an estimate (say, a request's `max_tokens`) against every
//! matching counter, never past a limit counting the other live holds;
//! Commit applies the real amount and releases the hold. A hold ends at
//! its commit or its TTL, whichever comes first.

use crate::descriptor::RateLimitDescriptor;
use crate::duration::Duration;
use crate::rls::Code;

/// `kuadrant.service.ratelimit.v1.ReserveRequest`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ReserveRequest {
    /// `domain` = 1.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// `descriptors` = 2.
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// `amount` = 3: what to hold.
    #[prost(uint64, tag = "3")]
    pub amount: u64,
    /// `ttl` = 4: how long the hold lasts uncommitted; the server caps it,
    /// and uses its cap when unset.
    #[prost(message, optional, tag = "4")]
    pub ttl: Option<Duration>,
}

/// `kuadrant.service.ratelimit.v1.ReserveResponse`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ReserveResponse {
    /// `code` = 1; read it with `code()`.
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    /// `reservation_id` = 2: set only when `code` is OK and something is
    /// held (no limit matched, or an amount of 0, holds nothing).
    #[prost(string, tag = "2")]
    pub reservation_id: String,
}

/// `kuadrant.service.ratelimit.v1.CommitRequest`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct CommitRequest {
    /// `domain` = 1.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// `descriptors` = 2: the same descriptors as the reserve.
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// `reservation_id` = 3: empty, unknown or expired commits like `Report`.
    #[prost(string, tag = "3")]
    pub reservation_id: String,
    /// `actual_amount` = 4: applied to the counters as given (0 adds nothing).
    #[prost(uint64, tag = "4")]
    pub actual_amount: u64,
}

/// `kuadrant.service.ratelimit.v1.CommitResponse`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct CommitResponse {
    /// `reservation_released` = 1: a live hold with that id was released.
    #[prost(bool, tag = "1")]
    pub reservation_released: bool,
}
