//! The OpenAI wire format as the gateway reads it: which endpoint a request
//! addresses ([`endpoint`]), the completion request body ([`request`]), and
//! the usage a response reports, in one JSON body ([`usage`]) or a
//! server-sent-event stream ([`sse`]).
//!
//! Each body is walked once, without building a document tree; nothing here
//! knows about keys, limits or Envoy.

pub mod endpoint;
pub mod request;
pub mod sse;
pub mod usage;
