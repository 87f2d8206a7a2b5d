//! The per-request state machine: authenticate, authorise the model, reserve
//! the worst case against every limit, forward, read the usage, settle.
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

use crate::audit::{AuditRecord, UsageSource};
use crate::claims;
use crate::config::{synced_subscription, CapMode, Config, Quantity, ScopeLimits, Subscription};
use crate::endpoint::Endpoint;
use crate::error::GatewayError;
use crate::estimate::{answered_before_any_model, SeenOutput, UsageBounds};
use crate::global_limits::{self, Caller, FailureMode, Method, Verdict};
use crate::host::{Flow, StreamHost};
use crate::key_sync::{self, Lookup};
use crate::keys::{self, presented_key, AuthFailure};
use crate::limits::{self, Hold, ReserveError};
use crate::managed_keys::{self, ManagedKey, PresentedKey};
use crate::metrics::{Metric, ModelId, Outcome};
use crate::policy::Policy;
use crate::ratelimit_headers::RateLimitHeaders;
use crate::request::{parse_completion_request, rewrite_completion_request, BodyRewrite};
use crate::sse::SseUsageParser;
use crate::usage::{parse_json_usage, Usage};
use std::rc::Rc;

/// Headers the filter owns on the way upstream: credentials it consumes and
/// identity it asserts. Client-sent values are always dropped.
pub const OWNED_REQUEST_HEADERS: [&str; 6] = [
    "authorization",
    "x-api-key",
    "x-maas-subscription",
    "x-maas-key-id",
    "x-maas-user",
    "x-maas-model",
];

/// A JSON response larger than this is passed through without reading its
/// usage (and charged by estimate) rather than held in memory.
const MAX_JSON_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// The least time a settlement call is given (see `settle_global`).
const SETTLEMENT_TIMEOUT_MS: u64 = 5_000;
/// One SSE event larger than this is not inspected.
const MAX_SSE_EVENT_BYTES: usize = 1024 * 1024;

/// Who is calling, and under which subscription.
#[derive(Debug, Clone)]
struct Identity {
    /// `None` for a token holder.
    key_id: Option<String>,
    user: String,
    subscription: Rc<Subscription>,
    /// Limits of the key alone (empty when it has none).
    key_limits: Rc<ScopeLimits>,
}

/// The result of checking a presented API key.
enum KeyCheck {
    Found(Identity),
    Refused(AuthFailure),
    /// A managed key id this gateway has never seen: ask the control plane.
    Lookup(String),
}

/// A request held at its headers while the control plane is asked about
/// its key.
#[derive(Debug)]
struct PendingLookup {
    key: String,
    end_of_stream: bool,
    content_length: Option<u64>,
    /// The buffered body's size, once the client has sent all of it.
    body_size: Option<usize>,
}

/// What was reserved at admission, settled exactly once: one hold per scope
/// of [`limited_scopes`], in its order.
#[derive(Debug)]
struct Admission {
    holds: Vec<Hold>,
    /// What the reservation was made for: the charge when no usage comes.
    bounds: UsageBounds,
}

/// A call to the limiter an admitted request waits on.
#[derive(Debug)]
struct LimiterCall {
    token: u32,
    method: Method,
    quantity: Quantity,
    failure_mode: FailureMode,
}

/// An admission call not yet made.
#[derive(Debug)]
struct QueuedCall {
    quantity: Quantity,
    amount: u64,
    failure_mode: FailureMode,
}

/// The global side of an admission: calls made one at a time, then what
/// the token call granted, settled with one call when the response ends.
#[derive(Debug, Default)]
struct GlobalAdmission {
    /// Still to ask, the next one last.
    queue: Vec<QueuedCall>,
    /// The call in flight.
    pending: Option<LimiterCall>,
    /// Tokens were admitted by the limiter: `Some(id)` a reservation to
    /// commit, `None` (no reservations) usage to report.
    tokens: Option<Option<String>>,
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

enum ResponseReader {
    /// Not read: not admitted, an error status, or an encoding we cannot parse.
    Skip,
    Json {
        buf: Vec<u8>,
        overflowed: bool,
        /// Body bytes received, kept or not (the estimate's text).
        seen: u64,
    },
    Sse(Box<SseUsageParser>),
}

pub struct Stream {
    config: Rc<Config>,
    policy: Rc<Policy>,
    start_ms: u64,
    method: String,
    path: String,
    request_id: Option<String>,
    identity: Option<Identity>,
    pending: Option<PendingLookup>,
    endpoint: Option<Endpoint>,
    model: Option<String>,
    model_id: ModelId,
    streaming: bool,
    strip_usage: bool,
    reserved_tokens: u64,
    admission: Option<Admission>,
    global: Option<GlobalAdmission>,
    headers: RateLimitHeaders,
    replied: bool,
    status: Option<u32>,
    refusal: Option<(Outcome, &'static str)>,
    reader: ResponseReader,
    response_complete: bool,
    charged: Option<(Usage, UsageSource)>,
}

impl Stream {
    /// `policy`: the subscriptions in force when the request starts.
    pub fn new(config: Rc<Config>, policy: Rc<Policy>) -> Stream {
        Stream {
            config,
            policy,
            start_ms: 0,
            method: String::new(),
            path: String::new(),
            request_id: None,
            identity: None,
            pending: None,
            endpoint: None,
            model: None,
            model_id: None,
            streaming: false,
            strip_usage: false,
            reserved_tokens: 0,
            admission: None,
            global: None,
            headers: RateLimitHeaders::default(),
            replied: false,
            status: None,
            refusal: None,
            reader: ResponseReader::Skip,
            response_complete: false,
            charged: None,
        }
    }

    pub fn on_request_headers(&mut self, host: &dyn StreamHost, end_of_stream: bool) -> Flow {
        self.start_ms = host.now_ms();
        let mut authorization = None;
        let mut x_api_key = None;
        let mut content_length = None;
        let mut to_remove: Vec<&'static str> = Vec::new();
        // Envoy obeys `x-envoy-*` request headers (timeouts, retries) from
        // callers it deems internal (any pod, with `use_remote_address`):
        // a caller could cut its own request short after the prompt was
        // computed, or have it retried, and pay once. Only Envoy sets them.
        let mut envoy_controls: Vec<String> = Vec::new();
        for (name, value) in host.request_headers() {
            match name.as_str() {
                ":method" => self.method = value,
                ":path" => {
                    let end = value.find(['?', '#']).unwrap_or(value.len());
                    self.path = value.get(..end).unwrap_or_default().to_string();
                }
                "x-request-id" => self.request_id = Some(value),
                "content-length" => content_length = value.trim().parse::<u64>().ok(),
                // The response must arrive unencoded for its usage to be read.
                "accept-encoding" if !to_remove.contains(&"accept-encoding") => {
                    to_remove.push("accept-encoding")
                }
                _ if name.starts_with("x-envoy-") => envoy_controls.push(name),
                _ => {
                    let Some(owned) = OWNED_REQUEST_HEADERS.iter().find(|h| **h == name) else {
                        continue;
                    };
                    if !to_remove.contains(owned) {
                        to_remove.push(owned);
                    }
                    match *owned {
                        "authorization" if authorization.is_none() => authorization = Some(value),
                        "x-api-key" if x_api_key.is_none() => x_api_key = Some(value),
                        _ => {}
                    }
                }
            }
        }
        // Removing only the headers present saves a host call per absent one.
        for name in to_remove {
            host.set_request_header(name, None);
        }
        for name in envoy_controls {
            host.set_request_header(&name, None);
        }

        match self.token_identity(host) {
            Some(Ok(identity)) => {
                return self.identified(host, identity, end_of_stream, content_length)
            }
            Some(Err(err)) => {
                host.add_metric(
                    Metric::AuthFailures {
                        reason: AuthFailure::NoSubscription,
                    },
                    1,
                );
                return self.refuse(host, Outcome::Rejected, &err);
            }
            None => {}
        }
        let Some(presented) = presented_key(authorization.as_deref(), x_api_key.as_deref()) else {
            return self.refuse_auth(host, AuthFailure::Missing);
        };
        match self.check_key(host, presented) {
            KeyCheck::Found(identity) => {
                self.identified(host, identity, end_of_stream, content_length)
            }
            KeyCheck::Refused(reason) => self.refuse_auth(host, reason),
            KeyCheck::Lookup(id) => {
                let budget = self
                    .config
                    .control_plane
                    .as_ref()
                    .map_or(0, |c| c.lookups_per_second);
                if !key_sync::take_lookup_budget(host.counters(), budget, self.start_ms / 1000) {
                    host.add_metric(
                        Metric::KeyLookups {
                            result: "throttled",
                        },
                        1,
                    );
                    return self.refuse_auth(host, AuthFailure::Unknown);
                }
                if !host.dispatch_key_lookup(&id) {
                    host.add_metric(Metric::KeyLookups { result: "failed" }, 1);
                    return self.refuse(
                        host,
                        Outcome::Rejected,
                        &GatewayError::KeyLookupUnavailable,
                    );
                }
                self.pending = Some(PendingLookup {
                    key: presented.to_string(),
                    end_of_stream,
                    content_length,
                    body_size: None,
                });
                Flow::Pause
            }
        }
    }

    /// The identity of a token `jwt_authn` verified (`None`: no token, or
    /// OIDC not configured); its groups pick the subscription.
    fn token_identity(&self, host: &dyn StreamHost) -> Option<Result<Identity, GatewayError>> {
        let oidc = self.config.oidc.as_ref()?;
        let user = claims::as_string(&host.token_claim(&oidc.user_claim)?)?;
        // It becomes a header value and a counter name, and must not pass
        // for one of the control plane's own identities (whose keys count
        // under the same name): the control plane's rule for subjects.
        if keys::check_subject(&user).is_err() {
            return None;
        }
        let groups = host
            .token_claim(&oidc.groups_claim)
            .map(|b| claims::as_string_list(&b))
            .unwrap_or_default();
        Some(match self.policy.subscription_for_groups(&groups) {
            Some(sub) => Ok(Identity {
                key_id: None,
                key_limits: Rc::new(sub.holder_limits(None, &user)),
                user,
                subscription: Rc::clone(sub),
            }),
            None => Err(GatewayError::NoSubscription { subject: user }),
        })
    }

    fn refuse_auth(&mut self, host: &dyn StreamHost, reason: AuthFailure) -> Flow {
        host.add_metric(Metric::AuthFailures { reason }, 1);
        let err = match reason {
            AuthFailure::Missing => GatewayError::MissingKey,
            _ => GatewayError::InvalidKey,
        };
        self.refuse(host, Outcome::Rejected, &err)
    }

    /// Configuration keys first (one hash lookup), then managed keys in
    /// shared data.
    fn check_key(&self, host: &dyn StreamHost, presented: &str) -> KeyCheck {
        let now_secs = self.start_ms / 1000;
        match self.config.keys.authenticate(presented, now_secs) {
            Ok((_, key)) => {
                let subscription = self
                    .config
                    .subscriptions
                    .get(key.subscription)
                    .and_then(|s| self.policy.subscription(&s.name));
                return match subscription {
                    Some(sub) => KeyCheck::Found(Identity {
                        key_id: Some(key.id.clone()),
                        user: key.owner.clone(),
                        subscription: Rc::clone(sub),
                        key_limits: Rc::clone(&key.limits),
                    }),
                    None => KeyCheck::Refused(AuthFailure::Unknown),
                };
            }
            Err(AuthFailure::Unknown) => {}
            Err(reason) => return KeyCheck::Refused(reason),
        }
        let Some(managed) = managed_keys::parse(presented) else {
            return KeyCheck::Refused(AuthFailure::Unknown);
        };
        if self.config.control_plane.is_none() {
            return KeyCheck::Refused(AuthFailure::Unknown);
        }
        let epoch = self.policy.state.epoch;
        match key_sync::lookup(host.counters(), managed.id, epoch, self.start_ms) {
            // A key of a subscription this gateway has not synced yet: the
            // lookup answer carries the subscription too.
            Ok(Lookup::Found(record))
                if self.policy.subscription(&record.subscription).is_none() =>
            {
                KeyCheck::Lookup(managed.id.to_string())
            }
            Ok(Lookup::Found(record)) => self.managed_identity(&record, &managed, None),
            Ok(Lookup::Absent) => KeyCheck::Refused(AuthFailure::Unknown),
            Ok(Lookup::Unknown) => KeyCheck::Lookup(managed.id.to_string()),
            Err(e) => {
                host.warn(&format!("managed key store unavailable: {e}"));
                KeyCheck::Refused(AuthFailure::Unknown)
            }
        }
    }

    /// `extra`: the key's subscription as a lookup answer carried it, for a
    /// subscription so new the sync has not brought it yet.
    fn managed_identity(
        &self,
        record: &ManagedKey,
        presented: &PresentedKey<'_>,
        extra: Option<Subscription>,
    ) -> KeyCheck {
        if !record.verify(presented) {
            return KeyCheck::Refused(AuthFailure::Unknown);
        }
        if record.revoked {
            return KeyCheck::Refused(AuthFailure::Revoked);
        }
        if record.expires_at.is_some_and(|t| self.start_ms / 1000 >= t) {
            return KeyCheck::Refused(AuthFailure::Expired);
        }
        // The control plane validates owners when it mints; one stored
        // before it did must still never reach a header.
        if keys::check_user_name(&record.owner).is_err() {
            return KeyCheck::Refused(AuthFailure::Unknown);
        }
        let subscription = match self.policy.subscription(&record.subscription) {
            Some(s) => Rc::clone(s),
            None => match extra {
                Some(s) if *s.name == *record.subscription => Rc::new(s),
                _ => return KeyCheck::Refused(AuthFailure::Unknown),
            },
        };
        KeyCheck::Found(Identity {
            key_id: Some(record.id.clone()),
            user: record.owner.clone(),
            key_limits: Rc::new(subscription.holder_limits(Some(&record.id), &record.owner)),
            subscription,
        })
    }

    /// The control plane's answer about a pending key (`None`: the call
    /// failed or timed out). Resumes, or refuses, the held request.
    pub fn on_key_lookup(&mut self, host: &dyn StreamHost, status: Option<u32>, body: &[u8]) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if self.replied {
            return;
        }
        let Some(presented) = managed_keys::parse(&pending.key) else {
            return;
        };
        let now_ms = host.now_ms();
        let negative_ms = self
            .config
            .control_plane
            .as_ref()
            .map_or(0, |c| c.negative_cache_ms);
        let check = match status {
            Some(200) => {
                let delta = managed_keys::parse_sync(body).ok();
                let found = delta
                    .as_ref()
                    .and_then(|d| d.keys.iter().find(|k| k.id == presented.id));
                match found {
                    Some(answer) => {
                        if let Err(e) =
                            key_sync::record_lookup(host.counters(), presented.id, Some(answer), 0)
                        {
                            host.warn(&format!("could not store a looked-up key: {e}"));
                        }
                        host.add_metric(Metric::KeyLookups { result: "found" }, 1);
                        // What is stored now, if newer than the answer (a
                        // revocation the sync wrote meanwhile), decides.
                        let stored = key_sync::lookup(host.counters(), presented.id, 0, now_ms);
                        let record = match &stored {
                            Ok(Lookup::Found(r)) if r.version > answer.version => r,
                            _ => answer,
                        };
                        let extra = delta.as_ref().and_then(|d| {
                            let v = d.subscriptions.iter().find(|v| {
                                v.get("name").and_then(|n| n.as_str())
                                    == Some(record.subscription.as_str())
                            })?;
                            synced_subscription(v, &self.config.models).ok()
                        });
                        self.managed_identity(record, &presented, extra)
                    }
                    None => {
                        host.add_metric(Metric::KeyLookups { result: "failed" }, 1);
                        return self.fail_lookup(host);
                    }
                }
            }
            Some(404) => {
                let until = now_ms.saturating_add(negative_ms);
                if let Err(e) = key_sync::record_lookup(host.counters(), presented.id, None, until)
                {
                    host.warn(&format!("could not remember an unknown key: {e}"));
                }
                host.add_metric(Metric::KeyLookups { result: "absent" }, 1);
                KeyCheck::Refused(AuthFailure::Unknown)
            }
            _ => {
                host.add_metric(Metric::KeyLookups { result: "failed" }, 1);
                return self.fail_lookup(host);
            }
        };
        let flow = match check {
            KeyCheck::Found(identity) => self.identified(
                host,
                identity,
                pending.end_of_stream,
                pending.content_length,
            ),
            KeyCheck::Refused(reason) => self.refuse_auth(host, reason),
            KeyCheck::Lookup(_) => self.refuse_auth(host, AuthFailure::Unknown),
        };
        let flow = match (flow, pending.body_size) {
            (Flow::Pause, Some(size)) if self.awaiting_body() => {
                self.on_request_body(host, size, true)
            }
            (flow, _) => flow,
        };
        if flow == Flow::Continue && !self.replied {
            host.resume_request();
        }
    }

    fn fail_lookup(&mut self, host: &dyn StreamHost) {
        self.refuse(host, Outcome::Rejected, &GatewayError::KeyLookupUnavailable);
    }

    /// The request's identity is known: assert it upstream, then route by
    /// endpoint.
    fn identified(
        &mut self,
        host: &dyn StreamHost,
        identity: Identity,
        end_of_stream: bool,
        content_length: Option<u64>,
    ) -> Flow {
        if let Some(id) = &identity.key_id {
            host.set_request_header("x-maas-key-id", Some(id));
            host.publish_identity("key_id", id);
        }
        host.set_request_header("x-maas-user", Some(&identity.user));
        host.set_request_header("x-maas-subscription", Some(&identity.subscription.name));
        host.publish_identity("user", &identity.user);
        host.publish_identity("subscription", &identity.subscription.name);
        self.identity = Some(identity);

        let endpoint = match Endpoint::classify(&self.method, &self.path) {
            Ok(e) => e,
            Err(err) => return self.refuse(host, Outcome::Rejected, &err),
        };
        let flow = match &endpoint {
            Endpoint::ListModels => self.list_models(host),
            Endpoint::RetrieveModel(id) => self.retrieve_model(host, id),
            _ if end_of_stream => self.refuse(host, Outcome::Rejected, &GatewayError::BodyRequired),
            _ => {
                if content_length.is_some_and(|n| n > self.config.max_body_bytes as u64) {
                    let err = GatewayError::BodyTooLarge {
                        limit: self.config.max_body_bytes,
                    };
                    return self.refuse(host, Outcome::Rejected, &err);
                }
                Flow::Pause
            }
        };
        self.endpoint = Some(endpoint);
        flow
    }

    pub fn on_request_body(
        &mut self,
        host: &dyn StreamHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if self.replied {
            return Flow::Continue;
        }
        if let Some(pending) = &mut self.pending {
            // Held until the key lookup answers; the body waits with it.
            if body_size > self.config.max_body_bytes {
                let err = GatewayError::BodyTooLarge {
                    limit: self.config.max_body_bytes,
                };
                return self.refuse(host, Outcome::Rejected, &err);
            }
            if end_of_stream {
                pending.body_size = Some(body_size);
            }
            return Flow::Buffer;
        }
        if !self.awaiting_body() {
            return Flow::Continue;
        }
        if body_size > self.config.max_body_bytes {
            let err = GatewayError::BodyTooLarge {
                limit: self.config.max_body_bytes,
            };
            return self.refuse(host, Outcome::Rejected, &err);
        }
        if !end_of_stream {
            return Flow::Buffer;
        }
        let body = host.request_body(body_size).unwrap_or_default();
        match self.admit(host, &body) {
            // Held until the limiter answers (`on_limiter_response`).
            Ok(()) if self.awaiting_limiter() => Flow::Pause,
            Ok(()) => Flow::Continue,
            Err((outcome, err)) => {
                self.abandon_admission(host);
                self.refuse(host, outcome, &err)
            }
        }
    }

    fn awaiting_limiter(&self) -> bool {
        self.global.as_ref().is_some_and(|g| g.pending.is_some())
    }

    /// Who the limiter counts: the same descriptor at admission and at
    /// settlement.
    fn caller(&self) -> Option<Caller> {
        let identity = self.identity.as_ref()?;
        Some(Caller {
            subscription: identity.subscription.name.to_string(),
            key: identity
                .subscription
                .holder_descriptor(identity.key_id.as_deref(), &identity.user),
            model: self.model.clone().unwrap_or_default(),
        })
    }

    /// Asks the limiter about the request's global limits: one call per
    /// quantity that has any, one at a time, tokens first. A token
    /// reservation can be given back (commit 0) if the request limit then
    /// refuses; a request hit counted by `ShouldRateLimit` cannot, so it is
    /// asked last, once nothing else can refuse the request.
    fn start_global(&mut self, host: &dyn StreamHost, worst_case: u64) -> Result<(), GatewayError> {
        let Some(identity) = self.identity.as_ref() else {
            return Ok(());
        };
        let scopes = [&identity.subscription.limits, &*identity.key_limits];
        let mut queue = Vec::new();
        for quantity in [Quantity::Requests, Quantity::Tokens] {
            let mut rates = scopes.iter().flat_map(|s| s.global_of(quantity)).peekable();
            if rates.peek().is_none() {
                continue;
            }
            let Some(limiter) = self.config.limiter.as_ref() else {
                // Validation refuses global limits without a limiter; fail
                // closed should one arrive some other way.
                return Err(GatewayError::LimiterUnavailable);
            };
            let deny =
                rates.any(|r| r.failure_mode.unwrap_or(limiter.failure_mode) == FailureMode::Deny);
            let mode = if deny {
                FailureMode::Deny
            } else {
                FailureMode::Allow
            };
            // Popped from the end: requests pushed first are asked last.
            queue.push(QueuedCall {
                quantity,
                amount: quantity.of(1, worst_case),
                failure_mode: mode,
            });
        }
        self.global = Some(GlobalAdmission {
            queue,
            ..GlobalAdmission::default()
        });
        self.next_global(host)
    }

    /// Dispatches the next queued call, if any. Errors when a call that
    /// fails closed cannot even be made.
    fn next_global(&mut self, host: &dyn StreamHost) -> Result<(), GatewayError> {
        let config = Rc::clone(&self.config);
        let (Some(limiter), Some(caller)) = (config.limiter.as_ref(), self.caller()) else {
            return Ok(());
        };
        while let Some(next) = self.global.as_mut().and_then(|g| g.queue.pop()) {
            let call = global_limits::admission_call(limiter, &caller, next.quantity, next.amount);
            let sent = host.dispatch_limiter(
                &limiter.cluster,
                call.method,
                &call.message,
                limiter.timeout_ms,
            );
            match sent {
                Some(token) => {
                    if let Some(g) = self.global.as_mut() {
                        g.pending = Some(LimiterCall {
                            token,
                            method: call.method,
                            quantity: next.quantity,
                            failure_mode: next.failure_mode,
                        });
                    }
                    return Ok(());
                }
                None => {
                    self.limiter_failed(host, "the call could not be dispatched");
                    if next.failure_mode == FailureMode::Deny {
                        return Err(GatewayError::LimiterUnavailable);
                    }
                }
            }
        }
        Ok(())
    }

    fn limiter_failed(&self, host: &dyn StreamHost, why: &str) {
        host.add_metric(Metric::LimiterCalls { result: "failed" }, 1);
        host.warn_throttled(
            "limiter",
            &format!("maas-gateway: rate limiter unavailable for global limits: {why}"),
        );
    }

    /// The limiter's answer to the admission call in flight. The request
    /// goes on when every call allowed it (or failed open), and is refused
    /// at the first refusal or closed failure, giving back what it held.
    pub fn on_limiter_response(
        &mut self,
        host: &dyn StreamHost,
        token: u32,
        grpc_status: Option<u32>,
        body: &[u8],
    ) {
        let Some(global) = self.global.as_mut() else {
            return;
        };
        if global.pending.as_ref().is_none_or(|c| c.token != token) {
            return;
        }
        let Some(call) = global.pending.take() else {
            return;
        };
        let verdict = global_limits::verdict(call.method, grpc_status, body);
        if let Verdict::Allowed { reservation } = &verdict {
            let reserving = self.config.limiter.as_ref().is_some_and(|l| l.reservations);
            // Reservations asked for, none made: no limit matched the
            // descriptor (a limits file behind the configuration). Let it
            // through, but make the drift visible.
            let unmatched = call.quantity == Quantity::Tokens && reserving && reservation.is_none();
            let result = if unmatched { "unmatched" } else { "ok" };
            host.add_metric(Metric::LimiterCalls { result }, 1);
            if unmatched {
                host.warn_throttled(
                    "limiter-unmatched",
                    "maas-gateway: the limiter has no limit for a global token limit's descriptor; is its limits file rendered from this configuration?",
                );
            } else if call.quantity == Quantity::Tokens {
                // `None` without reservations: usage to report at the end.
                global.tokens = Some(reservation.clone());
            }
        }
        if self.admission.is_none() || self.replied {
            // The request ended while the call was in flight (Envoy gave
            // up on it, or it was settled): give back what the call took.
            self.release_global(host);
            return;
        }
        let refusal = match verdict {
            Verdict::Allowed { .. } => self
                .next_global(host)
                .err()
                .map(|e| (Outcome::LimiterError, e)),
            Verdict::OverLimit {
                limit,
                remaining,
                reset_after_secs,
            } => {
                host.add_metric(
                    Metric::LimiterCalls {
                        result: "over_limit",
                    },
                    1,
                );
                let err =
                    self.global_denial(host, call.quantity, limit, remaining, reset_after_secs);
                Some((Outcome::RateLimited, err))
            }
            Verdict::Failed(why) => {
                self.limiter_failed(host, &why);
                (call.failure_mode == FailureMode::Deny)
                    .then_some((Outcome::LimiterError, GatewayError::LimiterUnavailable))
            }
        };
        if let Some((outcome, err)) = refusal {
            self.abandon_admission(host);
            self.refuse(host, outcome, &err);
        } else if !self.awaiting_limiter() {
            host.resume_request();
        }
    }

    /// The 429 for a global limit: the limiter's numbers where it gave
    /// them, else the tightest configured global limit of that quantity.
    fn global_denial(
        &self,
        host: &dyn StreamHost,
        quantity: Quantity,
        limit: Option<u64>,
        remaining: Option<u64>,
        reset_after_secs: Option<u64>,
    ) -> GatewayError {
        let identity = self.identity.as_ref();
        let tightest = identity.and_then(|i| {
            [&i.subscription.limits, &*i.key_limits]
                .into_iter()
                .flat_map(|s| s.global_of(quantity).map(move |g| (s, g)))
                .min_by_key(|(_, g)| g.rate.amount)
        });
        if let Some(i) = identity {
            host.add_metric(
                Metric::RateLimited {
                    subscription: Rc::clone(&i.subscription.name),
                    kind: quantity,
                },
                1,
            );
        }
        let (scope, window, configured) = match tightest {
            Some((s, g)) => (
                format!("{} (global)", s.scope),
                crate::ratelimit_headers::format_duration(g.rate.window_secs),
                Some(g.rate),
            ),
            None => ("global".to_string(), String::new(), None),
        };
        let requested = match quantity {
            Quantity::Requests => 1,
            Quantity::Tokens => self.reserved_tokens,
        };
        let limit = limit.or(configured.map(|r| r.amount)).unwrap_or(0);
        if quantity == Quantity::Tokens && requested > limit && limit > 0 {
            return GatewayError::RequestTooLarge {
                scope,
                window,
                limit,
                requested,
            };
        }
        GatewayError::RateLimited {
            kind: quantity,
            scope,
            window,
            limit,
            remaining: remaining.unwrap_or(0),
            requested,
            retry_after_secs: reset_after_secs
                .or(configured.map(|r| r.window_secs))
                .unwrap_or(1)
                .max(1),
        }
    }

    /// A request refused after admission gives back everything it held:
    /// local holds settle to nothing, a global reservation commits 0.
    fn abandon_admission(&mut self, host: &dyn StreamHost) {
        if let Some(admission) = self.admission.take() {
            let now_secs = host.now_ms() / 1000;
            if let Some(identity) = self.identity.as_ref() {
                for (scope, hold) in limited_scopes(identity).into_iter().zip(admission.holds) {
                    let nothing = scope.amounts(0, 0);
                    if let Err(e) = limits::settle(host.counters(), now_secs, hold, &nothing) {
                        host.add_metric(Metric::SettleErrors, 1);
                        host.warn(&format!("could not release a reservation: {e}"));
                    }
                }
            }
        }
        self.reserved_tokens = 0;
        self.release_global(host);
    }

    /// Commits 0 for a granted global reservation (it would otherwise hold
    /// its tokens until its TTL).
    fn release_global(&mut self, host: &dyn StreamHost) {
        let granted = self.global.as_mut().and_then(|g| g.tokens.take());
        if let Some(Some(reservation)) = granted {
            self.settle_global(host, Some(reservation), 0);
        }
    }

    /// One settlement call for the request's global token admission.
    fn settle_global(&self, host: &dyn StreamHost, reservation: Option<String>, actual: u64) {
        let (Some(limiter), Some(caller)) = (self.config.limiter.as_ref(), self.caller()) else {
            return;
        };
        if !global_limits::needs_settlement(reservation.as_deref(), actual) {
            return;
        }
        let call = global_limits::settlement_call(limiter, &caller, reservation.as_deref(), actual);
        // Longer than the limiter's own worst case (a Redis call and its
        // retry, about 2 s), so a slow answer is not taken for a failure and
        // sent again.
        let timeout_ms = limiter.timeout_ms.max(SETTLEMENT_TIMEOUT_MS);
        if !host.queue_settlement(&limiter.cluster, call, timeout_ms) {
            self.limiter_failed(host, "a settlement could not be queued");
        }
    }

    /// A completion request not yet answered nor admitted: its body decides.
    fn awaiting_body(&self) -> bool {
        let is_completion = self.endpoint.as_ref().is_some_and(Endpoint::is_completion);
        is_completion && !self.replied && self.admission.is_none()
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

    /// Response trailers end the response: settle with what was read.
    pub fn on_response_trailers(&mut self, host: &dyn StreamHost) -> Flow {
        if !self.replied && self.admission.is_some() {
            self.end_response(host);
        }
        Flow::Continue
    }

    pub fn on_response_headers(&mut self, host: &dyn StreamHost, end_of_stream: bool) -> Flow {
        if self.replied {
            return Flow::Continue;
        }
        let (mut encoded, mut sse) = (false, false);
        for (name, value) in host.response_headers() {
            match name.as_str() {
                ":status" => self.status = value.parse().ok(),
                "content-encoding" => encoded = !value.eq_ignore_ascii_case("identity"),
                "content-type" => {
                    sse = value
                        .trim_start()
                        .get(..17)
                        .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
                }
                _ => {}
            }
        }
        for (name, value) in self.headers.to_headers() {
            host.set_response_header(name, Some(&value));
        }
        if self.admission.is_some() {
            let ok = self.status.is_some_and(|s| (200..300).contains(&s));
            self.reader = match (ok && !encoded, sse) {
                (false, _) => ResponseReader::Skip,
                (true, true) => {
                    if self.strip_usage {
                        // The filter rewrites the stream; a declared length
                        // would no longer hold.
                        host.set_response_header("content-length", None);
                    }
                    ResponseReader::Sse(Box::new(SseUsageParser::new(
                        self.strip_usage,
                        MAX_SSE_EVENT_BYTES,
                    )))
                }
                (true, false) => ResponseReader::Json {
                    buf: Vec::new(),
                    overflowed: false,
                    seen: 0,
                },
            };
        }
        if end_of_stream {
            self.end_response(host);
        }
        Flow::Continue
    }

    pub fn on_response_body(
        &mut self,
        host: &dyn StreamHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if self.replied || self.admission.is_none() {
            return Flow::Continue;
        }
        match &mut self.reader {
            ResponseReader::Skip => {}
            ResponseReader::Json {
                buf,
                overflowed,
                seen,
            } => {
                *seen = seen.saturating_add(body_size as u64);
                if !*overflowed && body_size > 0 {
                    if buf.len().saturating_add(body_size) > MAX_JSON_RESPONSE_BYTES {
                        *overflowed = true;
                        *buf = Vec::new();
                    } else if let Some(chunk) = host.response_body(body_size) {
                        buf.extend_from_slice(&chunk);
                    }
                }
            }
            ResponseReader::Sse(parser) => {
                let chunk = if body_size > 0 {
                    host.response_body(body_size).unwrap_or_default()
                } else {
                    Vec::new()
                };
                let mut out = parser.feed(&chunk);
                if end_of_stream {
                    if let Some(rest) = parser.finish() {
                        out.get_or_insert_with(Vec::new).extend_from_slice(&rest);
                    }
                }
                if let Some(out) = out {
                    if out != chunk {
                        host.replace_response_body(body_size, &out);
                    }
                }
            }
        }
        if end_of_stream {
            self.end_response(host);
        }
        Flow::Continue
    }

    /// Envoy's last word on the stream, also after resets and disconnects.
    pub fn on_log(&mut self, host: &dyn StreamHost) {
        let now_ms = host.now_ms();
        // Anything still reserved never saw its response end.
        self.settle_or_abandon(host, now_ms);
        let outcome = match self.refusal {
            Some((outcome, _)) => outcome,
            None if !self.response_complete => Outcome::Incomplete,
            None if self.status.is_some_and(|s| (200..300).contains(&s)) => Outcome::Ok,
            None => Outcome::UpstreamError,
        };
        let identity = self.identity.as_ref();
        if let Some(i) = identity {
            // Requests refused at the endpoint (unknown path) still count
            // against their subscription's request metric.
            host.add_metric(
                Metric::Requests {
                    subscription: Rc::clone(&i.subscription.name),
                    model: self.model_id,
                    outcome,
                },
                1,
            );
        }
        let (usage, source) = match self.charged {
            Some((u, s)) => (u, Some(s)),
            None => (Usage::default(), None),
        };
        let record = AuditRecord {
            start_ms: self.start_ms,
            request_id: self.request_id.as_deref(),
            method: &self.method,
            path: &self.path,
            key_id: identity.and_then(|i| i.key_id.as_deref()),
            user: identity.map(|i| i.user.as_str()),
            subscription: identity.map(|i| &*i.subscription.name),
            model: self.model.as_deref(),
            stream: self.streaming,
            status: self.status,
            outcome: outcome.as_str(),
            error_code: self.refusal.map(|(_, code)| code),
            reserved_tokens: self.reserved_tokens,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
            usage: source,
            latency_ms: now_ms.saturating_sub(self.start_ms),
        };
        host.set_audit_record(&record.to_json());
    }

    /// Parses the body, applies the subscription's model list and caps,
    /// reserves the worst case and rewrites the body for the upstream.
    fn admit(&mut self, host: &dyn StreamHost, body: &[u8]) -> Result<(), (Outcome, GatewayError)> {
        let rejected = |e: GatewayError| (Outcome::Rejected, e);
        let config = Rc::clone(&self.config);
        let identity = self
            .identity
            .clone()
            .ok_or_else(|| rejected(GatewayError::InvalidKey))?;
        let subscription = Rc::clone(&identity.subscription);

        let request = parse_completion_request(body).map_err(|e| rejected(e.into()))?;
        let model = request.model.as_ref();
        let model_id = config
            .models
            .binary_search_by(|m| m.as_str().cmp(model))
            .ok()
            .map(|i| i as u32);
        // Remember what was asked for (bounded) for the audit record.
        self.model = Some(model.chars().take(128).collect());
        self.model_id = model_id;
        if model_id.is_none() || !subscription.allows(model) {
            return Err(rejected(GatewayError::ModelNotFound(
                model.chars().take(128).collect(),
            )));
        }
        self.streaming = request.stream;

        // Servers differ in how they read a 0 budget (some take it as "no
        // limit"), so it is refused rather than reserved as nothing.
        for (field, value) in [
            ("max_tokens", request.max_tokens),
            ("max_completion_tokens", request.max_completion_tokens),
        ] {
            if value == Some(0) {
                return Err(rejected(GatewayError::BadRequest(
                    crate::request::RequestError::InvalidField {
                        field,
                        expected: "a positive integer or null",
                    },
                )));
            }
        }
        let requested = request.requested_max_tokens();
        let (effective, mut rewrite_max) = match (requested, subscription.max_tokens) {
            (Some(r), Some(p)) if r > p.cap => match p.mode {
                CapMode::Reject => {
                    return Err(rejected(GatewayError::MaxTokensTooLarge {
                        requested: r,
                        cap: p.cap,
                    }))
                }
                CapMode::Clamp => (p.cap, Some(p.cap)),
            },
            (Some(r), _) => (r, None),
            (None, Some(p)) => (p.cap, Some(p.cap)),
            (None, None) => (config.default_max_tokens, Some(config.default_max_tokens)),
        };
        // With both budget fields present, servers disagree on which one wins
        // (vLLM and SGLang prefer `max_completion_tokens`); both get the
        // value that was reserved.
        if let (Some(a), Some(b)) = (request.max_tokens, request.max_completion_tokens) {
            if a != b {
                rewrite_max = Some(effective);
            }
        }
        self.strip_usage = request.stream && !request.include_usage;
        let rewritten = if rewrite_max.is_some() || self.strip_usage {
            let rewrite = BodyRewrite {
                max_tokens: rewrite_max,
                force_include_usage: self.strip_usage,
            };
            Some(rewrite_completion_request(body, &rewrite).map_err(|e| rejected(e.into()))?)
        } else {
            None
        };

        // `max_tokens` bounds each completion; `n`, `best_of` and prompt
        // arrays multiply them.
        let bounds = UsageBounds {
            prompt: (body.len() as u64).div_ceil(config.prompt_bytes_per_token),
            completion: effective.saturating_mul(request.completions()),
            bytes_per_token: config.prompt_bytes_per_token,
        };
        let worst_case = bounds.prompt.saturating_add(bounds.completion);
        let scopes = limited_scopes(&identity);
        let amounts: Vec<Vec<u64>> = scopes.iter().map(|l| l.amounts(1, worst_case)).collect();
        let wants: Vec<(&limits::LimitGroup, &[u64])> = scopes
            .iter()
            .zip(&amounts)
            .map(|(l, a)| (&l.group, a.as_slice()))
            .collect();
        // The request's start time places it in its window: one clock read
        // less, and a slow upload cannot move it into a fresher window.
        let now_secs = self.start_ms / 1000;
        let holds = match limits::reserve(host.counters(), now_secs, &wants) {
            Ok(holds) => holds,
            Err(ReserveError::Denied(d)) => {
                self.observe_limits(host, &scopes, now_secs);
                let refused = scopes.get(d.group).and_then(|l| {
                    let quantity = l.quantities.get(d.rate)?;
                    let rate = l.group.rates.get(d.rate)?;
                    Some((l, quantity, rate))
                });
                let (kind, scope, window) = match refused {
                    Some((l, quantity, rate)) => (
                        *quantity,
                        l.scope.clone(),
                        crate::ratelimit_headers::format_duration(rate.window_secs),
                    ),
                    None => (Quantity::Requests, String::new(), String::new()),
                };
                host.add_metric(
                    Metric::RateLimited {
                        subscription: Rc::clone(&subscription.name),
                        kind,
                    },
                    1,
                );
                let err = if kind == Quantity::Tokens && d.requested > d.limit {
                    GatewayError::RequestTooLarge {
                        scope,
                        window,
                        limit: d.limit,
                        requested: d.requested,
                    }
                } else {
                    GatewayError::RateLimited {
                        kind,
                        scope,
                        window,
                        limit: d.limit,
                        remaining: d.remaining,
                        requested: d.requested,
                        retry_after_secs: d.reset_after_secs.max(1),
                    }
                };
                return Err((Outcome::RateLimited, err));
            }
            Err(ReserveError::Store(e)) => {
                host.warn(&format!("rate limit counters unavailable: {e}"));
                return Err((Outcome::LimiterError, GatewayError::LimiterUnavailable));
            }
        };
        let mut quantities = scopes.iter().flat_map(|l| &l.quantities);
        self.reserved_tokens = if quantities.any(|q| *q == Quantity::Tokens) {
            worst_case
        } else {
            0
        };
        for (l, hold) in scopes.iter().zip(&holds) {
            for (quantity, held) in l.quantities.iter().zip(hold.windows()) {
                self.headers.observe(*quantity, held.state);
            }
        }
        self.admission = Some(Admission { holds, bounds });
        // `scopes` leaves out scopes whose limits are all global.
        let global_tokens = [&subscription.limits, &*identity.key_limits]
            .iter()
            .any(|l| l.global_of(Quantity::Tokens).next().is_some());
        if global_tokens {
            self.reserved_tokens = worst_case;
        }
        self.start_global(host, worst_case)
            .map_err(|e| (Outcome::LimiterError, e))?;

        if let Some(new_body) = rewritten {
            host.replace_request_body(body.len(), &new_body);
            host.set_request_header("content-length", Some(&new_body.len().to_string()));
        }
        // Setting a request header makes Envoy re-evaluate the route, so each
        // model can have its own cluster.
        host.set_request_header("x-maas-model", Some(model));
        Ok(())
    }

    fn observe_limits(&mut self, host: &dyn StreamHost, scopes: &[&ScopeLimits], now_secs: u64) {
        for l in scopes {
            if let Ok(states) = limits::state(host.counters(), now_secs, &l.group) {
                for (quantity, state) in l.quantities.iter().zip(states) {
                    self.headers.observe(*quantity, state);
                }
            }
        }
    }

    fn end_response(&mut self, host: &dyn StreamHost) {
        self.response_complete = true;
        self.settle_or_abandon(host, host.now_ms());
    }

    /// A request still waiting for the limiter never reached the model
    /// (Envoy answered or the client left): nothing is charged, and holds
    /// are given back. Otherwise it is settled.
    fn settle_or_abandon(&mut self, host: &dyn StreamHost, now_ms: u64) {
        if self.awaiting_limiter() {
            self.abandon_admission(host);
        } else {
            self.settle(host, now_ms);
        }
    }

    /// Charges the admitted request once: its reported usage, or an estimate.
    fn settle(&mut self, host: &dyn StreamHost, now_ms: u64) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        let reported = match &self.reader {
            ResponseReader::Json {
                buf,
                overflowed: false,
                ..
            } if self.response_complete => parse_json_usage(buf),
            ResponseReader::Sse(parser) => parser.usage(),
            _ => None,
        };
        // An error answered before any model computed the request (Envoy
        // could not reach one; the model server refused it) is charged no
        // tokens, as providers bill none; it still counts as a request. Any
        // other error, and a success that broke off, is estimated. (A guard:
        // Envoy is asked only when no usage came.)
        let (usage, source) = match reported {
            Some(u) => (u, UsageSource::Reported),
            None if self.answered_before_any_model(host) => (Usage::default(), UsageSource::None),
            None => {
                let seen = match &self.reader {
                    ResponseReader::Sse(parser) => SeenOutput {
                        content_events: parser.content_events(),
                        text_bytes: parser.text_bytes(),
                    },
                    ResponseReader::Json { seen, .. } => SeenOutput {
                        content_events: 0,
                        text_bytes: *seen,
                    },
                    ResponseReader::Skip => SeenOutput::default(),
                };
                (admission.bounds.estimate(seen), UsageSource::Estimated)
            }
        };
        let now_secs = now_ms / 1000;
        let Some(identity) = self.identity.as_ref() else {
            self.charged = Some((usage, source));
            return;
        };
        for (scope, hold) in limited_scopes(identity).into_iter().zip(admission.holds) {
            let actual = scope.amounts(1, usage.total_tokens);
            if let Err(e) = limits::settle(host.counters(), now_secs, hold, &actual) {
                host.add_metric(Metric::SettleErrors, 1);
                host.warn(&format!("could not settle a reservation: {e}"));
            }
        }
        if let Some(granted) = self.global.as_mut().and_then(|g| g.tokens.take()) {
            self.settle_global(host, granted, usage.total_tokens);
        }
        let (model, name) = (self.model_id, &identity.subscription.name);
        let sub = || Rc::clone(name);
        let estimated = u64::from(source == UsageSource::Estimated);
        for (metric, value) in [
            (
                Metric::PromptTokens {
                    subscription: sub(),
                    model,
                },
                usage.prompt_tokens,
            ),
            (
                Metric::CompletionTokens {
                    subscription: sub(),
                    model,
                },
                usage.completion_tokens,
            ),
            (
                Metric::TotalTokens {
                    subscription: sub(),
                    model,
                },
                usage.total_tokens,
            ),
            (
                Metric::EstimatedUsage {
                    subscription: sub(),
                    model,
                },
                estimated,
            ),
        ] {
            if value > 0 || !matches!(metric, Metric::EstimatedUsage { .. }) {
                host.add_metric(metric, value);
            }
        }
        self.charged = Some((usage, source));
    }

    /// The response is an error no model computed (see
    /// [`answered_before_any_model`]).
    fn answered_before_any_model(&self, host: &dyn StreamHost) -> bool {
        self.status.is_some_and(|s| {
            !(200..300).contains(&s)
                && answered_before_any_model(s, host.response_code_details().as_deref())
        })
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
        self.status = Some(status);
        self.response_complete = true;
        host.send_reply(status, headers, body);
    }

    fn allowed_models(&self) -> &[String] {
        self.identity
            .as_ref()
            .map_or(&[], |i| i.subscription.models.as_slice())
    }

    fn list_models(&mut self, host: &dyn StreamHost) -> Flow {
        host.add_metric(Metric::ModelListings, 1);
        let data: Vec<serde_json::Value> = self
            .allowed_models()
            .iter()
            .map(|m| model_object(m))
            .collect();
        let body = serde_json::json!({ "object": "list", "data": data });
        self.reply_json(host, &body)
    }

    fn retrieve_model(&mut self, host: &dyn StreamHost, id: &str) -> Flow {
        host.add_metric(Metric::ModelListings, 1);
        if self.allowed_models().iter().any(|m| m == id) {
            let body = model_object(id);
            self.reply_json(host, &body)
        } else {
            let err = GatewayError::ModelNotFound(id.chars().take(128).collect());
            self.refuse(host, Outcome::Rejected, &err)
        }
    }

    fn reply_json(&mut self, host: &dyn StreamHost, body: &serde_json::Value) -> Flow {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.reply(host, 200, &[("content-type", "application/json")], &bytes);
        Flow::Pause
    }
}

fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": "maas" })
}

#[cfg(test)]
mod tests;
