//! The rate-limit gRPC messages the gateway filter and the limiter share, as
//! hand-written `prost` types with the upstream field numbers, so neither
//! side needs `protoc` and the filter can build them for `wasm32-wasip1`.
//!
//! - [`rls`], Envoy's rate limit service v3 (`ShouldRateLimit`): request,
//!   response, per-descriptor status, response code.
//! - [`descriptor`], Envoy's `RateLimitDescriptor` (key/value entries), shared
//!   by every method.
//! - [`kuadrant`], Kuadrant's extension (`CheckRateLimit`, `Report`,
//!   `Reserve`, `Commit`): the reserve/commit messages; check and report take
//!   Envoy's request and response.
//! - [`duration`], `google.protobuf.Duration`.
//! - [`method`], the gRPC service and method names, as Envoy's
//!   `dispatch_grpc_call` and HTTP/2 paths want them.
//!
//! Only the fields the gateway and the limiter use are declared; prost skips
//! the others (such as `dynamic_metadata` and `quota`) when decoding, so an
//! answer from a real Limitador or Envoy's reference service decodes too.
//! The tests decode byte strings written out by hand from the protobuf wire
//! format, so each field number is checked against the wire, not against
//! these declarations.

pub mod descriptor;
pub mod duration;
pub mod kuadrant;
pub mod method;
pub mod rls;

pub use descriptor::{DescriptorEntry, RateLimitDescriptor, RateLimitOverride, RateLimitUnit};
pub use duration::Duration;
pub use kuadrant::{CommitRequest, CommitResponse, ReserveRequest, ReserveResponse};
pub use method::{
    GrpcMethod, CHECK_RATE_LIMIT, COMMIT, ENVOY_RLS_SERVICE, KUADRANT_SERVICE, REPORT, RESERVE,
    SHOULD_RATE_LIMIT,
};
pub use prost::Message;
pub use rls::{
    Code, DescriptorStatus, HeaderValue, RateLimit, RateLimitRequest, RateLimitResponse,
};

#[cfg(test)]
mod wire;
