//! `maas-filter`: a proxy-wasm HTTP filter that governs access to
//! OpenAI-compatible model endpoints inside Envoy.
//!
//! Per request it authenticates the API key, checks the model against the key's
//! subscription, reserves the request's worst-case cost against every request
//! and token limit, and settles the reservation with the real `usage` the model
//! reports (plain JSON or a server-sent-event stream).
//!
//! Layout: everything except [`wasm`] is pure logic that builds and is tested
//! on the host target. [`gateway`] is the per-request state machine; it talks to
//! Envoy only through the [`host::StreamHost`] trait, which [`wasm`] implements
//! with proxy-wasm hostcalls and the unit tests implement with a fake.

pub mod audit;
pub mod claims;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod estimate;
pub mod gateway;
pub mod global_limits;
pub mod host;
pub mod key_sync;
pub mod keys;
pub mod limits;
pub mod managed_keys;
pub mod metrics;
pub mod policy;
pub mod ratelimit_headers;
pub mod request;
pub mod settlement_outbox;
pub mod sse;
pub mod usage;

// Compiled on the host too (proxy-wasm links there), so clippy and the
// type checker see the glue; only the wasm32 build is ever loaded by Envoy.
mod wasm;
