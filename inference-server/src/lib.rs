//! The inference server: a GGUF model (llama, mistral, qwen2, qwen3,
//! gemma3) behind an OpenAI-compatible API, with continuous batching.
//! `api/` (HTTP, OpenAI types, validation, SSE) talks to `engine/`
//! (scheduler, sequences, sampling) over channels; `model/` is loading and
//! the forward pass, `text/` the tokenizer and chat templates.

pub mod api;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod server;
pub mod text;
