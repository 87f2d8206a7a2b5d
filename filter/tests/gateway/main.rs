//! The filter proven inside a real Envoy 1.40: each test starts Envoy with the
//! release `maas_filter.wasm` and testkit's OpenAI-shaped upstream on loopback
//! ports, and talks HTTP to it as a client would. (`make test` fetches Envoy
//! and builds the module first.)

// Test support code may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounting;
mod auth;
mod concurrency;
mod configs;
mod limits;
mod requests;
mod streams;
mod support;
