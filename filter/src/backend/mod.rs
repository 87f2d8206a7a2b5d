//! The filter's second role: an upstream HTTP filter of an external
//! provider's Envoy cluster, run once per attempt.
//!
//! The gateway role ([`crate::gateway`], downstream, once per request)
//! decides who may call which model and charges what the answer reports; it
//! reads and writes OpenAI's API only. What a provider needs differently
//! is done here, per attempt, so that when Envoy retries a failed request
//! on a model's next backend ([`crate::config::Config::fallbacks`]) each
//! attempt goes out in the form its own provider takes:
//! - the provider's name for the model and its path (Azure's deployment
//!   path), or for Anthropic a Messages request;
//! - the answer back in OpenAI's form (Anthropic's body and stream
//!   translated), and any provider's error mapped by
//!   [`crate::providers::upstream_failure`], which also decides whether
//!   Envoy tries the next backend (a mapped 429 or 5xx);
//! - `x-maas-backend` on the response, naming the provider that answered,
//!   which the gateway role takes off again for its audit record.
//!
//! Envoy's credential injector follows this filter in the same chain, so a
//! provider key never passes through here either.

mod document;
mod stream;

pub use document::{BackendConfig, BACKEND_HEADER, PROVIDER_STATUS_HEADER};
pub use stream::BackendStream;

/// Filter state the gateway role sets on a request it admitted (the model,
/// as it routed it): the backend role sends nothing to a provider without
/// it. Were the gateway role ever missing from the listener (an
/// EnvoyFilter whose anchor filter is absent is skipped without an error),
/// a client's own `x-maas-model` would route to a provider's cluster, whose
/// credential injector adds the operator's key: no authentication, limit
/// or account. Filter state is Envoy's, never a client's to set.
pub const ADMITTED_STATE: &str = "maas_admitted";

/// How Envoy is set up around the backend role. Both renderers (the local
/// bootstrap in `testkit`, the mesh's in `maas-mesh`) write it from here.
pub mod envoy {
    /// The backend role's filter name, plugin root id and VM id in a
    /// provider cluster's upstream filters: its own VM, apart from the
    /// gateway role's.
    pub const FILTER_NAME: &str = "maas-backend";

    /// What moves a request to a model's next backend: no connection, a
    /// reset, any 5xx, and the statuses of [`RETRIABLE_STATUS_CODES`] (the
    /// backend role maps a provider's other failures onto these: a refused
    /// credential is a 502, an overloaded provider a 503).
    pub const RETRY_ON: &str = "connect-failure,refused-stream,reset,5xx,retriable-status-codes";

    /// A provider's rate limit moves the request on too.
    pub const RETRIABLE_STATUS_CODES: [u32; 1] = [429];

    /// The request header each attempt's cluster is chosen by: when the
    /// cluster for attempt *k* + 1 is chosen it still reads *k*, so no
    /// header means the first backend and `k` fallback *k*.
    pub const ATTEMPT_HEADER: &str = "x-envoy-attempt-count";
}
