//! The inference server over real HTTP: the release binary, the real
//! SmolLM2-135M-Instruct GGUF, loopback ports. Each test starts its own
//! server (loading takes well under a second) so tests stay independent.

mod api;
mod batching;
mod errors;
mod lifecycle;
mod python;
mod support;
