//! Global limits at admission and settlement: the calls to the rate
//! limiter service (see [`crate::limits::global_limits`]) a request with
//! global limits waits on, made one at a time, and the one settlement call
//! that commits (or reports) its real usage when it ends.
//!
//! Invariants:
//! - A request limit counted by `ShouldRateLimit` cannot be given back, so
//!   it is asked last, once nothing else can refuse the request.
//! - A granted token reservation is settled exactly once: with the usage,
//!   or with 0 when the request is refused or abandoned after the grant.

use super::Stream;
use crate::config::Config;
use crate::error::GatewayError;
use crate::host::StreamHost;
use crate::limits::global_limits::{self, Caller, Method, Verdict};
use crate::limits::ratelimit_headers::format_duration;
use crate::limits::settlement_outbox::SETTLEMENT_TICK_MS;
use crate::metrics::{Metric, Outcome};
use crate::subscription::{FailureMode, Quantity};
use std::rc::Rc;

/// The least time a settlement call is given (see `settle_global`).
const SETTLEMENT_TIMEOUT_MS: u64 = 5_000;

/// A call to the limiter an admitted request waits on.
#[derive(Debug)]
struct LimiterCall {
    token: u32,
    /// When it was sent: a hold it is granted lasts from about then.
    sent_ms: u64,
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
pub(super) struct GlobalAdmission {
    /// Still to ask, the next one last.
    queue: Vec<QueuedCall>,
    /// The call in flight.
    pending: Option<LimiterCall>,
    /// Tokens were admitted by the limiter: `Some(id)` a reservation to
    /// commit, `None` (no reservations) usage to report.
    pub(super) tokens: Option<Option<String>>,
    /// When the Reserve that holds them was sent.
    held_since_ms: Option<u64>,
}

/// Envoy's router takes this request header (set by a filter; a client's
/// is removed, see `auth`) as the request's timeout in place of the
/// route's.
const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";

/// A global reservation holds for `reservation_ttl_ms`, then lets the
/// limiter admit others against the same budget. A generation that ran
/// past its hold would overshoot the limit by what it then generated, so
/// Envoy is told to end the request when the hold ends, measured from when
/// the Reserve was sent (the hold cannot start before) and set as the
/// request goes on (Envoy's timer starts then). The header replaces the
/// route's timeout, so it is never set longer than the route's own where
/// the configuration gives it (`route_timeouts_ms`). `Err` when the hold
/// has already lapsed: the request would run unheld.
fn end_before_the_hold(
    host: &dyn StreamHost,
    config: &Config,
    model: Option<&str>,
    sent_ms: u64,
) -> Result<(), GatewayError> {
    if config.limiter.is_none() {
        return Ok(());
    }
    let left = hold_left(host, config, sent_ms);
    if left == 0 {
        return Err(GatewayError::LimiterUnavailable);
    }
    let route = model
        .and_then(|m| config.route_timeouts_ms.get(m))
        .copied()
        .unwrap_or(u64::MAX);
    host.set_request_header(TIMEOUT_HEADER, Some(&left.min(route).to_string()));
    Ok(())
}

/// Milliseconds a request whose Reserve was sent at `sent_ms` may still
/// run: what is left of its hold, less the way of its commit (the next
/// settlement tick, then one limiter call), which must count the usage
/// before the hold lets others have the budget.
fn hold_left(host: &dyn StreamHost, config: &Config, sent_ms: u64) -> u64 {
    let Some(limiter) = config.limiter.as_ref() else {
        return 0;
    };
    let commit_way = SETTLEMENT_TICK_MS.saturating_add(limiter.timeout_ms);
    limiter
        .reservation_ttl_ms
        .saturating_sub(commit_way)
        .saturating_sub(host.now_ms().saturating_sub(sent_ms))
}

impl Stream {
    pub(super) fn awaiting_limiter(&self) -> bool {
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
            model: self.completion.model.clone().unwrap_or_default(),
        })
    }

    /// Asks the limiter about the request's global limits: one call per
    /// quantity that has any, one at a time, tokens first. A token
    /// reservation can be given back (commit 0) if the request limit then
    /// refuses; a request hit counted by `ShouldRateLimit` cannot, so it is
    /// asked last, once nothing else can refuse the request.
    pub(super) fn start_global(
        &mut self,
        host: &dyn StreamHost,
        worst_case: u64,
    ) -> Result<(), GatewayError> {
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
                            sent_ms: host.now_ms(),
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
                if reservation.is_some() {
                    global.held_since_ms = Some(call.sent_ms);
                }
            }
        }
        if self.admission.is_none() || self.replied {
            // The request ended while the call was in flight (Envoy gave
            // up on it, or it was settled): give back what the call took.
            self.release_global(host);
            return;
        }
        // A hold that lapsed before its answer came holds nothing: refused
        // before the request limit (asked last, as nothing may refuse after
        // it) counts a hit.
        let lapsed = self
            .global
            .as_ref()
            .and_then(|g| g.held_since_ms)
            .is_some_and(|sent| hold_left(host, &self.config, sent) == 0);
        let refusal = match verdict {
            Verdict::Allowed { .. } if lapsed => {
                Some((Outcome::LimiterError, GatewayError::LimiterUnavailable))
            }
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
        let refusal = refusal.or_else(|| {
            if self.awaiting_limiter() {
                return None;
            }
            let held = self.global.as_ref().and_then(|g| g.held_since_ms)?;
            let model = self.completion.model.as_deref();
            end_before_the_hold(host, &self.config, model, held)
                .err()
                .map(|e| (Outcome::LimiterError, e))
        });
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
                format_duration(g.rate.window_secs),
                Some(g.rate),
            ),
            None => ("global".to_string(), String::new(), None),
        };
        let requested = match quantity {
            Quantity::Requests => 1,
            Quantity::Tokens => self.completion.reserved_tokens,
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

    /// Commits 0 for a granted global reservation (it would otherwise hold
    /// its tokens until its TTL).
    pub(super) fn release_global(&mut self, host: &dyn StreamHost) {
        let granted = self.global.as_mut().and_then(|g| g.tokens.take());
        if let Some(Some(reservation)) = granted {
            self.settle_global(host, Some(reservation), 0);
        }
    }

    /// One settlement call for the request's global token admission.
    pub(super) fn settle_global(
        &self,
        host: &dyn StreamHost,
        reservation: Option<String>,
        actual: u64,
    ) {
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
}
