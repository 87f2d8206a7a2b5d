//! `maas-filter`: a proxy-wasm HTTP filter that governs access to
//! OpenAI-compatible model endpoints inside Envoy.
//!
//! Per request it authenticates the API key, checks the model against the key's
//! subscription, reserves the request's worst-case cost against every request
//! and token limit, and settles the reservation with the real `usage` the model
//! reports (plain JSON or a server-sent-event stream).
//!
//! Layout, by what each room is about; everything except `wasm` is pure
//! logic that builds and is tested on the host target:
//! - [`subscription`]: the domain types (subscriptions, their limits), which
//!   the parser builds and everything else reads;
//! - [`config`]: the configuration, raw (serde) → validated;
//! - [`auth`]: keys, managed keys and their sync, token claims;
//! - [`limits`]: local counters, global limits, rate-limit headers;
//! - [`openai`]: the OpenAI wire format (endpoints, request, usage, SSE);
//! - [`providers`]: external providers' wire formats and how their
//!   failures reach the client (Anthropic's Messages API, translated);
//! - [`gateway`]: the per-request state machine, one file per phase;
//! - [`backend`]: the second role, an upstream filter of a provider's
//!   cluster, which makes each attempt the provider's own;
//! - [`host`]: the boundary to Envoy, as traits ([`host::StreamHost`] for a
//!   request, [`host::SyncHost`] for the root context's key sync), which
//!   `wasm` implements with proxy-wasm hostcalls and the unit tests with
//!   fakes;
//! - [`audit`], [`error`], [`estimate`], [`metrics`], [`policy`]: what the
//!   request path reports and charges, shared by the phases.

pub mod audit;
pub mod auth;
pub mod backend;
pub mod config;
pub mod error;
pub mod estimate;
pub mod gateway;
pub mod host;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod policy;
pub mod providers;
pub mod subscription;

// Compiled on the host too (proxy-wasm links there), so clippy and the
// type checker see the glue; only the wasm32 build is ever loaded by Envoy.
mod wasm;
