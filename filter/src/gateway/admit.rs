//! The request-body phase: a completion request is admitted, or refused.
//!
//! Admission runs in named steps, in this order (each may refuse):
//! 1. [`Stream::route_model`]: the model is one the gateway routes and the
//!    subscription allows;
//! 2. [`Stream::completion_budget`]: the completion budget to reserve, after
//!    the subscription's cap, and whether the body must carry it;
//! 3. `provider::check_backends`: every external backend of the model can
//!    take the request; [`Stream::rewritten_body`]: the body the upstream
//!    gets (budget, usage asked for on a stream);
//! 4. [`Stream::reserve_local`]: the worst case reserved against every local
//!    limit, all or nothing;
//! 5. `start_global` (see `global`): the same asked of the rate limiter;
//! 6. [`forward`]: the rewritten body and `x-maas-model` go upstream; Envoy
//!    routes on that header to the model's cluster, or for a model with
//!    fallbacks to each attempt's; a provider's cluster makes the request
//!    its own (the backend role, [`crate::backend`]), adds TLS and its
//!    credential.
//!
//! Invariant: what is reserved is what the upstream is allowed: the body
//! carries the reserved completion budget whenever the client's differs
//! from it, or named none.

use super::provider;
use super::{limited_scopes, Admission, Identity, Stream};
use crate::backend::ADMITTED_STATE;
use crate::error::GatewayError;
use crate::estimate::{prompt_bound, UsageBounds};
use crate::host::{Flow, StreamHost};
use crate::limits::ratelimit_headers::format_duration;
use crate::limits::{self, LimitGroup, ReserveError};
use crate::metrics::{Metric, Outcome};
use crate::openai::request::{
    parse_request, rewrite_completion_request, BodyRewrite, BudgetField, CompletionRequest,
};
use crate::subscription::{CapMode, Quantity, ScopeLimits, Subscription};
use std::rc::Rc;

/// Why a request was not admitted, and how it counts in the metrics.
type Refusal = (Outcome, GatewayError);

fn rejected(e: GatewayError) -> Refusal {
    (Outcome::Rejected, e)
}

/// The completion budget of an admitted request.
struct Budget {
    /// Reserved per completion, and the most the upstream may generate.
    effective: u64,
    /// The body's budget fields must be set to `effective`: they name
    /// another value, none, or two different ones.
    rewrite: bool,
}

impl Stream {
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
                return self.refuse_too_large(host);
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
            return self.refuse_too_large(host);
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

    /// 413: a body (declared or received) over `max_body_bytes`.
    pub(super) fn refuse_too_large(&mut self, host: &dyn StreamHost) -> Flow {
        let err = GatewayError::BodyTooLarge {
            limit: self.config.max_body_bytes,
        };
        self.refuse(host, Outcome::Rejected, &err)
    }

    /// Parses the body, applies the subscription's model list and caps,
    /// reserves the worst case and rewrites the body for the upstream.
    fn admit(&mut self, host: &dyn StreamHost, body: &[u8]) -> Result<(), Refusal> {
        let identity = self
            .identity
            .clone()
            .ok_or_else(|| rejected(GatewayError::InvalidKey))?;
        let request =
            parse_request(body, self.endpoint.as_ref()).map_err(|e| rejected(e.into()))?;
        self.route_model(&request, &identity.subscription)?;
        self.completion.streaming = request.stream;
        let budget = self.completion_budget(&request, &identity.subscription)?;
        self.completion.strip_usage = request.stream && !request.usage_wanted();
        let rewritten = self.rewritten_body(
            body,
            &request.model,
            budget.rewrite.then_some(budget.effective),
        )?;
        let outgoing = rewritten.as_deref().unwrap_or(body);
        provider::check_backends(
            &self.config,
            &request.model,
            self.endpoint.as_ref(),
            outgoing,
            request.completions(),
            request.service_tier.as_deref(),
        )
        .map_err(rejected)?;

        // `max_tokens` bounds each completion; `n`, `best_of` and prompt
        // arrays multiply them. The prompt is the client's body, media
        // parts at what the model's backends may charge for one.
        let bytes_per_token = self.config.prompt_bytes_per_token;
        let bounds = UsageBounds {
            prompt: prompt_bound(
                body.len() as u64,
                bytes_per_token,
                request.media_parts,
                self.config.media_part_tokens(&request.model),
            ),
            completion: budget.effective.saturating_mul(request.completions()),
            bytes_per_token,
        };
        let worst_case = bounds.worst_case();
        self.reserve_local(host, &identity, bounds)?;
        // `limited_scopes` leaves out scopes whose limits are all global.
        let global_tokens = [&identity.subscription.limits, &*identity.key_limits]
            .iter()
            .any(|l| l.global_of(Quantity::Tokens).next().is_some());
        if global_tokens {
            self.completion.reserved_tokens = worst_case;
        }
        self.start_global(host, worst_case)
            .map_err(|e| (Outcome::LimiterError, e))?;
        let bearer = self.config.model_server_bearer(&request.model);
        forward(host, body, rewritten.as_deref(), &request.model, bearer);
        Ok(())
    }

    /// Step 1: the model must be one the gateway routes and the
    /// subscription allows. What was asked for is kept (bounded) for the
    /// audit record either way.
    fn route_model(
        &mut self,
        request: &CompletionRequest<'_>,
        subscription: &Subscription,
    ) -> Result<(), Refusal> {
        let model = request.model.as_ref();
        let model_id = self
            .config
            .models
            .binary_search_by(|m| m.as_str().cmp(model))
            .ok()
            .map(|i| i as u32);
        self.completion.model = Some(model.chars().take(128).collect());
        self.completion.model_id = model_id;
        if model_id.is_none() || !subscription.allows(model) {
            return Err(rejected(GatewayError::ModelNotFound(
                model.chars().take(128).collect(),
            )));
        }
        Ok(())
    }

    /// Step 2: the budget asked for (see
    /// [`CompletionRequest::requested_max_tokens`] for the budget fields),
    /// under the subscription's cap; the configured default when neither
    /// the request nor the subscription names one.
    fn completion_budget(
        &self,
        request: &CompletionRequest<'_>,
        subscription: &Subscription,
    ) -> Result<Budget, Refusal> {
        request
            .check_budget_fields()
            .map_err(|e| rejected(e.into()))?;
        let (effective, lowered) = match (request.requested_max_tokens(), subscription.max_tokens) {
            (Some(r), Some(p)) if r > p.cap => match p.mode {
                CapMode::Reject => {
                    return Err(rejected(GatewayError::MaxTokensTooLarge {
                        requested: r,
                        cap: p.cap,
                        field: if request.responses {
                            "max_output_tokens"
                        } else {
                            "max_tokens"
                        },
                    }))
                }
                CapMode::Clamp => (p.cap, true),
            },
            (Some(r), _) => (r, false),
            (None, Some(p)) => (p.cap, true),
            (None, None) => (self.config.default_max_tokens, true),
        };
        Ok(Budget {
            effective,
            rewrite: lowered || request.budget_needs_rewrite(),
        })
    }

    /// Step 3: the body with the budget written in and, on a stream whose
    /// client did not ask for usage, usage asked for (the response phase
    /// strips it again). `None`: the body goes as it came.
    fn rewritten_body(
        &self,
        body: &[u8],
        model: &str,
        max_tokens: Option<u64>,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let force_include_usage = self.completion.strip_usage;
        if max_tokens.is_none() && !force_include_usage {
            return Ok(None);
        }
        let rewrite = BodyRewrite {
            max_tokens,
            insert_as: self.budget_field(model),
            force_include_usage,
            model: None,
            // Each attempt's provider gets its own field from the backend
            // role, which sees which provider an attempt goes to.
            budget_as: None,
        };
        rewrite_completion_request(body, &rewrite)
            .map(Some)
            .map_err(|e| rejected(e.into()))
    }

    /// The field a cap is added under when the request names neither: the
    /// one its model's first backend reads on this endpoint (its
    /// provider's, or `max_tokens` for our own servers, which read both).
    /// A fallback attempt has it renamed to its own by the backend role.
    fn budget_field(&self, model: &str) -> BudgetField {
        let chat = self
            .config
            .external
            .get(model)
            .map_or(BudgetField::MaxTokens, |m| m.budget_field);
        BudgetField::on(self.endpoint.as_ref(), chat)
    }

    /// Step 4: reserves the worst case against every local limit of the
    /// caller, all or nothing; a refusal says which limit and by how much.
    fn reserve_local(
        &mut self,
        host: &dyn StreamHost,
        identity: &Identity,
        bounds: UsageBounds,
    ) -> Result<(), Refusal> {
        let worst_case = bounds.worst_case();
        let scopes = limited_scopes(identity);
        let amounts: Vec<Vec<u64>> = scopes.iter().map(|l| l.amounts(1, worst_case)).collect();
        let wants: Vec<(&LimitGroup, &[u64])> = scopes
            .iter()
            .zip(&amounts)
            .map(|(l, a)| (&l.group, a.as_slice()))
            .collect();
        // The window the request is admitted in, not the one its headers
        // came in: a request started in a window that has since ended
        // would open that window again, where its count is never seen by
        // the requests admitted now (a client holding bodies back across
        // windows passed the limit once per window held).
        let now_ms = host.now_ms();
        self.request.admitted_ms = Some(now_ms);
        let now_secs = now_ms / 1000;
        let holds = match limits::reserve(host.counters(), now_secs, &wants) {
            Ok(holds) => holds,
            Err(ReserveError::Denied(d)) => {
                self.observe_limits(host, &scopes, now_secs);
                let err = local_denial(host, &identity.subscription, &scopes, &d);
                return Err((Outcome::RateLimited, err));
            }
            Err(ReserveError::Store(e)) => {
                host.warn(&format!("rate limit counters unavailable: {e}"));
                return Err((Outcome::LimiterError, GatewayError::LimiterUnavailable));
            }
        };
        let mut quantities = scopes.iter().flat_map(|l| &l.quantities);
        self.completion.reserved_tokens = if quantities.any(|q| *q == Quantity::Tokens) {
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
}

/// The 429 (or 413-like "request too large") for a local limit that
/// refused, counted in the metrics.
fn local_denial(
    host: &dyn StreamHost,
    subscription: &Subscription,
    scopes: &[&ScopeLimits],
    d: &limits::Denial,
) -> GatewayError {
    let refused = scopes.get(d.group).and_then(|l| {
        let quantity = l.quantities.get(d.rate)?;
        let rate = l.group.rates.get(d.rate)?;
        Some((l, quantity, rate))
    });
    let (kind, scope, window) = match refused {
        Some((l, quantity, rate)) => (
            *quantity,
            l.scope.clone(),
            format_duration(rate.window_secs),
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
    if kind == Quantity::Tokens && d.requested > d.limit {
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
    }
}

/// Step 6: the upstream gets the rewritten body, the model header that
/// routes it and, for the gateway's own model servers, their key (the
/// client's credential was taken off with the request's headers).
fn forward(
    host: &dyn StreamHost,
    body: &[u8],
    rewritten: Option<&[u8]>,
    model: &str,
    bearer: Option<&str>,
) {
    if bearer.is_some() {
        host.set_request_header("authorization", bearer);
    }
    if let Some(new_body) = rewritten {
        host.replace_request_body(body.len(), new_body);
        host.set_request_header("content-length", Some(&new_body.len().to_string()));
    }
    // Setting a request header makes Envoy re-evaluate the route, so each
    // model can have its own cluster.
    host.set_request_header("x-maas-model", Some(model));
    host.set_request_state(ADMITTED_STATE, model);
}
