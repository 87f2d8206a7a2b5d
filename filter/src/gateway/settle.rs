//! Settlement: an admitted request is charged once, with the usage its
//! response reported or an estimate; a request refused after admission
//! gives back what it held. Then the access log's audit record.
//!
//! Invariant: `admission` is taken out of the stream by whichever of
//! [`Stream::settle`] and [`Stream::abandon_admission`] runs first, so a
//! request is settled (or released) exactly once.

use super::response::ResponseReader;
use super::{limited_scopes, Stream};
use crate::audit::{AuditRecord, UsageSource};
use crate::estimate::{answer_never_came, answered_before_any_model, SeenOutput};
use crate::host::StreamHost;
use crate::limits;
use crate::metrics::{Metric, Outcome};
use crate::openai::usage::{parse_json_usage, Usage};
use std::rc::Rc;

impl Stream {
    /// Envoy's last word on the stream, also after resets and disconnects.
    pub fn on_log(&mut self, host: &dyn StreamHost) {
        let now_ms = host.now_ms();
        // Anything still reserved never saw its response end.
        self.settle_or_abandon(host, now_ms);
        let outcome = match self.refusal {
            Some((outcome, _)) => outcome,
            None if !self.response.complete => Outcome::Incomplete,
            None if self
                .response
                .status
                .is_some_and(|s| (200..300).contains(&s)) =>
            {
                Outcome::Ok
            }
            None => Outcome::UpstreamError,
        };
        let identity = self.identity.as_ref();
        if let Some(i) = identity {
            // Requests refused at the endpoint (unknown path) still count
            // against their subscription's request metric.
            host.add_metric(
                Metric::Requests {
                    subscription: Rc::clone(&i.subscription.name),
                    model: self.completion.model_id,
                    outcome,
                    key: i.key_id.clone(),
                },
                1,
            );
        }
        let (usage, source) = match self.response.charged {
            Some((u, s)) => (u, Some(s)),
            None => (Usage::default(), None),
        };
        let record = AuditRecord {
            start_ms: self.request.start_ms,
            admitted_ms: self.request.admitted_ms,
            request_id: self.request.request_id.as_deref(),
            method: &self.request.method,
            path: &self.request.path,
            key_id: identity.and_then(|i| i.key_id.as_deref()),
            user: identity.map(|i| i.user.as_str()),
            subscription: identity.map(|i| &*i.subscription.name),
            model: self.completion.model.as_deref(),
            stream: self.completion.streaming,
            status: self.response.status,
            outcome: outcome.as_str(),
            error_code: self.refusal.map(|(_, code)| code),
            reserved_tokens: self.completion.reserved_tokens,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
            usage: source,
            latency_ms: now_ms.saturating_sub(self.request.start_ms),
            backend: self.response.backend.as_deref(),
            attempts: host.upstream_attempts().filter(|&n| n > 1),
        };
        host.set_audit_record(&record.to_json());
    }

    pub(super) fn end_response(&mut self, host: &dyn StreamHost) {
        self.response.complete = true;
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
        let reported = match &self.response.reader {
            ResponseReader::Json {
                buf,
                overflowed: false,
                ..
            } if self.response.complete => parse_json_usage(buf),
            ResponseReader::Sse(reader) => reader.parser.usage(),
            _ => None,
        };
        // Usage reported is charged, an error's too (our model server
        // reports what it computed before it failed). An error without it
        // answered before any model computed the request (Envoy could not
        // reach one; the model server refused it) is charged no tokens, as
        // providers bill none; it still counts as a request. No response
        // header at all (the client left first, Envoy's timeout) where the
        // model may have generated all of it unseen (see below) is charged
        // the reservation. Any other error, and a success that broke off,
        // is estimated from what was seen. (A guard: Envoy is asked only
        // when no usage came.)
        let (usage, source) = match reported {
            Some(u) => (u, UsageSource::Reported),
            None if self.answered_before_any_model(host) => (Usage::default(), UsageSource::None),
            None => {
                // An external provider (a model's own, or a fallback) goes
                // on with a generation whose client left, and bills it. The
                // model's own server stops at its next step, but answers a
                // whole (not streamed) request only when it is complete: no
                // header there may follow nearly all of it. Only its stream,
                // whose headers go out with its first token, shows that no
                // header means nothing was generated (then estimated).
                let unseen_possible = !self.completion.streaming
                    || self.completion.model.as_deref().is_some_and(|m| {
                        !self.config.served_locally(m) || self.config.backends(m).next().is_some()
                    });
                let never_came = unseen_possible
                    && !self.response.via_upstream
                    && self.response.upstream_status.is_none()
                    && answer_never_came(
                        self.response.status,
                        host.response_code_details().as_deref(),
                    );
                let seen = match &self.response.reader {
                    _ if never_came => SeenOutput {
                        unseen: true,
                        ..SeenOutput::default()
                    },
                    ResponseReader::Sse(reader) => SeenOutput {
                        content_events: reader.parser.content_events(),
                        text_bytes: reader.parser.text_bytes(),
                        unseen: false,
                    },
                    ResponseReader::Json { seen, answer, .. } => SeenOutput {
                        content_events: 0,
                        text_bytes: if *answer { *seen } else { 0 },
                        unseen: false,
                    },
                    ResponseReader::Undecodable => SeenOutput {
                        unseen: true,
                        ..SeenOutput::default()
                    },
                    ResponseReader::Skip | ResponseReader::Replaced { .. } => SeenOutput::default(),
                };
                let source = if seen.unseen {
                    UsageSource::Reserved
                } else {
                    UsageSource::Estimated
                };
                (admission.bounds.estimate(seen), source)
            }
        };
        let now_secs = now_ms / 1000;
        let Some(identity) = self.identity.as_ref() else {
            self.response.charged = Some((usage, source));
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
        let (model, name) = (self.completion.model_id, &identity.subscription.name);
        let sub = || Rc::clone(name);
        let key = || identity.key_id.clone();
        // Every charge without a reported usage, by estimate or reservation.
        let estimated = u64::from(matches!(
            source,
            UsageSource::Estimated | UsageSource::Reserved
        ));
        for (metric, value) in [
            (
                Metric::PromptTokens {
                    subscription: sub(),
                    model,
                    key: key(),
                },
                usage.prompt_tokens,
            ),
            (
                Metric::CompletionTokens {
                    subscription: sub(),
                    model,
                    key: key(),
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
        self.response.charged = Some((usage, source));
    }

    /// The response is an error no model computed (see
    /// [`answered_before_any_model`]).
    fn answered_before_any_model(&self, host: &dyn StreamHost) -> bool {
        // The upstream's own status, where the client was given another (a
        // refused credential is the client's 502, and cost the upstream
        // nothing).
        let status = self.response.upstream_status.or(self.response.status);
        status.is_some_and(|s| {
            !(200..300).contains(&s)
                && answered_before_any_model(s, host.response_code_details().as_deref())
        })
    }

    /// A request refused after admission gives back everything it held:
    /// local holds settle to nothing, a global reservation commits 0.
    pub(super) fn abandon_admission(&mut self, host: &dyn StreamHost) {
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
        self.completion.reserved_tokens = 0;
        self.release_global(host);
    }
}
