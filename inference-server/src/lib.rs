//! The inference sidecar: a llama-family GGUF model behind an
//! OpenAI-compatible API, with continuous batching.

pub mod api;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod server;
pub mod text;
