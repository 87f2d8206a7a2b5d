//! The inference server over real HTTP: the release binary, the real
//! SmolLM2-135M-Instruct GGUF, loopback ports. Each test starts its own
//! server (loading takes well under a second) so tests stay independent.

// Test support code may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod api_key;
mod bad_files;
mod batching;
mod chat_templates;
mod choices;
mod device;
mod errors;
mod health;
mod kv_cache;
mod lifecycle;
mod logprobs;
mod python;
mod responses;
mod support;
mod tool_turns;
