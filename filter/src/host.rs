//! The boundary between the filter's logic and Envoy, as two traits:
//! [`StreamHost`] for one request's state machine ([`crate::gateway`]) and
//! [`SyncHost`] for the root context's key sync
//! ([`crate::auth::key_sync::driver`]). `crate::wasm` implements both with
//! proxy-wasm hostcalls; unit tests implement them with in-memory fakes, so
//! the whole request flow and the sync loop are tested on the host target.
//!
//! Host failures (a header that cannot be set, a metric that cannot be
//! defined) are swallowed by the implementation and logged there: the request
//! path has no better answer to them than carrying on.

use crate::limits::global_limits::{Call, Method};
use crate::limits::CounterStore;
use crate::metrics::Metric;

/// What the filter tells Envoy to do with the stream after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Hold headers until the body has been seen.
    Pause,
    /// Keep buffering the body; call again with more.
    Buffer,
}

pub trait StreamHost {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// All request headers in one host call (lowercase names), so the filter
    /// pays one crossing for the handful it reads.
    fn request_headers(&self) -> Vec<(String, String)>;
    /// `None` removes the header.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    /// The buffered request body, `size` bytes from the start.
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the first `size` bytes of the buffered request body.
    fn replace_request_body(&self, size: usize, body: &[u8]);

    /// All response headers in one host call (lowercase names).
    fn response_headers(&self) -> Vec<(String, String)>;
    fn set_response_header(&self, name: &str, value: Option<&str>);
    /// The current response body chunk (`size` bytes).
    fn response_body(&self, size: usize) -> Option<Vec<u8>>;
    fn replace_response_body(&self, size: usize, body: &[u8]);
    /// Adds `body` at the end of the response body Envoy holds, from the
    /// response trailers callback. Envoy holds one only when the last body
    /// callback returned [`Flow::Buffer`]; false when there was none.
    fn append_response_body(&self, body: &[u8]) -> bool;

    /// Answers the request from the filter; the upstream never sees it.
    fn send_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]);

    /// Publishes the audit record where the access log reads it.
    fn set_audit_record(&self, record: &[u8]);
    /// Publishes one part of the resolved identity (`subscription`,
    /// `key_id`, `user`) for the filters after this one, beside the
    /// request headers: Envoy's filter state `wasm.maas_<name>` (Envoy lets a
    /// wasm filter write filter state, not dynamic metadata).
    fn publish_identity(&self, name: &str, value: &str);
    /// A value this request keeps across Envoy's upstream attempts, in
    /// Envoy's filter state `wasm.<name>`: unlike a request header, neither
    /// the client nor a provider can read or write it, and every attempt's
    /// filter sees what an earlier one wrote.
    fn request_state(&self, name: &str) -> Option<String>;
    fn set_request_state(&self, name: &str, value: &str);

    fn counters(&self) -> &dyn CounterStore;
    /// Asks the control plane about managed key `id`; the answer comes back
    /// through `Stream::on_key_lookup`. False if the call could not be made.
    fn dispatch_key_lookup(&self, id: &str) -> bool;
    /// Lets a request held by the filter go on.
    fn resume_request(&self);
    /// A claim of the token `jwt_authn` verified for this request, in the
    /// encoding `crate::auth::claims` reads; `None` when there is no verified
    /// token or it lacks the claim.
    fn token_claim(&self, claim: &str) -> Option<Vec<u8>>;
    /// Envoy's `response.code_details`: `via_upstream` for a response the
    /// upstream sent, else why Envoy answered itself (e.g.
    /// `upstream_reset_before_response_started{connection_failure}`).
    fn response_code_details(&self) -> Option<String>;

    /// How many upstream attempts Envoy made for this request (a retry on
    /// a model's fallback is one more); `None` when not known.
    fn upstream_attempts(&self) -> Option<u32>;
    /// Sends `message` to the rate limiter's `method` through Envoy's gRPC
    /// client on `cluster`; the answer comes back through
    /// `Stream::on_limiter_response` with the returned token. `None` if the
    /// call could not be made.
    fn dispatch_limiter(
        &self,
        cluster: &str,
        method: Method,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32>;
    /// Hands a settlement to the VM: the root context sends it and retries
    /// it until the limiter counts it (`crate::limits::settlement_outbox`), even
    /// after this stream ended; its answer is not delivered here. False if
    /// it could not be kept.
    fn queue_settlement(&self, cluster: &str, call: Call, timeout_ms: u64) -> bool;
    fn add_metric(&self, metric: Metric, value: u64);
    fn warn(&self, message: &str);
    /// Logs `message` at most once per few seconds per `topic` (per worker):
    /// a dependency that is down must not write one line per request.
    fn warn_throttled(&self, topic: &'static str, message: &str);
}

/// What the key sync needs of the root context: shared data, a call to the
/// control plane, and a way to report. Its answer comes back through
/// `KeySync::on_response`.
pub trait SyncHost {
    /// Envoy's shared data, where the sync state, its lease and the keys live.
    fn store(&self) -> &dyn CounterStore;
    /// GETs `path` from the control plane with the gateway's token; the
    /// call's token, or why it could not be made.
    fn call_control_plane(&self, path: &str) -> Result<u32, String>;
    /// The sync state in shared data may have moved: rebuild what this VM
    /// derives from it (the subscriptions in force).
    fn sync_applied(&self);
    fn add_metric(&self, metric: Metric, value: u64);
    fn set_gauge(&self, metric: Metric, value: u64);
    fn warn(&self, message: &str);
}
