//! The per-request state machine: authenticate, authorise the model, reserve
//! the worst case against every limit, forward, read the usage, settle.
//!
//! One file per request phase, each with the `Stream` methods of that phase
//! (as Kuadrant's wasm-shim keeps one file per task):
//! - `auth`: request headers — strip what the filter owns, find the caller
//!   (token, configured key, managed key, a lookup at the control plane);
//! - `admit`: request body — parse, apply the subscription's model list and
//!   caps, reserve the worst case locally;
//! - `global`: the same against the rate limiter service, and its settlement;
//! - `response`: response headers and body — read the reported usage;
//! - `settle`: charge once, or give back; the access-log record;
//! - `models`: `/v1/models`, answered by the filter itself.
//!
//! Invariants:
//! - Identity headers (`x-maas-*`) reaching the upstream are the filter's own;
//!   whatever the client sent under those names, and its credentials, are
//!   removed before anything else happens.
//! - Every admitted request is settled exactly once: when its response ends,
//!   or in `on_log` if it never does (client disconnect, upstream reset). The
//!   admission is moved out of the stream on settlement, so a second
//!   settlement has nothing to act on.
//! - A request is admitted only if its worst case (prompt estimate plus its
//!   effective `max_tokens`, which the filter writes into the body so the
//!   model cannot exceed it) fits every token limit; so a window's charged
//!   tokens never exceed its limit as long as the model honours `max_tokens`.
//! - The filter replies at most once (`replied`); every phase after a reply
//!   lets the stream go on untouched.

mod admit;
mod auth;
mod global;
mod models;
mod provider;
mod response;
mod settle;

use crate::audit::UsageSource;
use crate::config::Config;
use crate::error::GatewayError;
use crate::estimate::UsageBounds;
use crate::host::{Flow, StreamHost};
use crate::limits::ratelimit_headers::RateLimitHeaders;
use crate::limits::Hold;
use crate::metrics::{ModelId, Outcome};
use crate::openai::endpoint::Endpoint;
use crate::openai::usage::Usage;
use crate::policy::Policy;
use crate::subscription::{ScopeLimits, Subscription};
use auth::PendingLookup;
use global::GlobalAdmission;
use response::ResponseReader;
use std::rc::Rc;

/// Who is calling, and under which subscription.
#[derive(Debug, Clone)]
struct Identity {
    /// `None` for a token holder. Shared with the usage metrics that carry
    /// it as a label, so recording them allocates nothing.
    key_id: Option<Rc<str>>,
    user: String,
    subscription: Rc<Subscription>,
    /// Limits of the key alone (empty when it has none).
    key_limits: Rc<ScopeLimits>,
}

/// What was reserved at admission, settled exactly once: one hold per scope
/// of [`limited_scopes`], in its order.
#[derive(Debug)]
struct Admission {
    holds: Vec<Hold>,
    /// What the reservation was made for: the charge when no usage comes.
    bounds: UsageBounds,
}

/// The scopes whose limits a key's request counts against: its subscription
/// and the key itself, those that have limits. Admission and settlement both
/// derive them from the identity the stream holds, so they pair up.
fn limited_scopes(identity: &Identity) -> Vec<&ScopeLimits> {
    [&identity.subscription.limits, &*identity.key_limits]
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect()
}

/// The request line, as the request headers gave it.
#[derive(Debug, Default)]
struct RequestLine {
    start_ms: u64,
    /// When its local limits admitted it (its body had come): the window
    /// it counts in.
    admitted_ms: Option<u64>,
    method: String,
    /// Without its query string.
    path: String,
    request_id: Option<String>,
}

/// What a completion request asked for and was reserved, for the
/// response, the settlement and the audit record.
#[derive(Debug, Default)]
struct CompletionFacts {
    /// As asked for (bounded), routed or not.
    model: Option<String>,
    model_id: ModelId,
    streaming: bool,
    /// A stream whose usage the filter asked for on the client's behalf:
    /// the usage event is removed before the client sees it.
    strip_usage: bool,
    reserved_tokens: u64,
}

/// The response as far as it has come.
struct ResponseState {
    status: Option<u32>,
    /// The response headers were an upstream's (Envoy's code details
    /// `via_upstream` when they came), not a reply of Envoy's own.
    via_upstream: bool,
    reader: ResponseReader,
    /// The external provider that answered (the backend role's
    /// `x-maas-backend`); `None`: the model's own server, or no answer.
    backend: Option<String>,
    /// What the upstream itself answered, when the client was given
    /// another status: a provider's, told by the backend role
    /// (`x-maas-provider-status`), or the model's own server refusing the
    /// gateway's key (see `response`).
    upstream_status: Option<u32>,
    /// The response ended (or the filter answered itself).
    complete: bool,
    /// What the request was charged, once settled.
    charged: Option<(Usage, UsageSource)>,
}

pub struct Stream {
    config: Rc<Config>,
    /// The subscriptions in force when the request started.
    policy: Rc<Policy>,
    request: RequestLine,
    identity: Option<Identity>,
    /// Held at its headers for a key lookup.
    pending: Option<PendingLookup>,
    endpoint: Option<Endpoint>,
    completion: CompletionFacts,
    admission: Option<Admission>,
    global: Option<GlobalAdmission>,
    headers: RateLimitHeaders,
    replied: bool,
    refusal: Option<(Outcome, &'static str)>,
    response: ResponseState,
}

impl Stream {
    /// `policy`: the subscriptions in force when the request starts.
    pub fn new(config: Rc<Config>, policy: Rc<Policy>) -> Stream {
        Stream {
            config,
            policy,
            request: RequestLine::default(),
            identity: None,
            pending: None,
            endpoint: None,
            completion: CompletionFacts::default(),
            admission: None,
            global: None,
            headers: RateLimitHeaders::default(),
            replied: false,
            refusal: None,
            response: ResponseState {
                status: None,
                via_upstream: false,
                reader: ResponseReader::Skip,
                backend: None,
                upstream_status: None,
                complete: false,
                charged: None,
            },
        }
    }

    /// Trailers end a request body without an end-of-stream body callback;
    /// letting such a request through would skip admission, so it is refused.
    pub fn on_request_trailers(&mut self, host: &dyn StreamHost) -> Flow {
        // A request held for its key lookup must not be released by its
        // trailers either: Envoy would forward it unauthenticated.
        if self.pending.is_some() && !self.replied {
            return self.refuse(host, Outcome::Rejected, &GatewayError::TrailersUnsupported);
        }
        if !self.awaiting_body() {
            return Flow::Continue;
        }
        self.refuse(host, Outcome::Rejected, &GatewayError::TrailersUnsupported)
    }

    /// A completion request not yet answered nor admitted: its body decides.
    fn awaiting_body(&self) -> bool {
        let is_completion = self.endpoint.as_ref().is_some_and(Endpoint::is_completion);
        is_completion && !self.replied && self.admission.is_none()
    }

    fn refuse(&mut self, host: &dyn StreamHost, outcome: Outcome, err: &GatewayError) -> Flow {
        let extra = err.extra_headers();
        let limit_headers = self.headers.to_headers();
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        headers.extend(limit_headers.iter().map(|(k, v)| (*k, v.as_str())));
        self.reply(host, err.status(), &headers, &err.body());
        self.refusal = Some((outcome, err.code()));
        Flow::Pause
    }

    fn reply(&mut self, host: &dyn StreamHost, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.replied = true;
        self.response.status = Some(status);
        self.response.complete = true;
        host.send_reply(status, headers, body);
    }
}

#[cfg(test)]
mod tests;
