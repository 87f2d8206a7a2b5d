//! The filter's Prometheus-visible counters. A [`Metric`] is a small key (a
//! shared subscription name, a model index) so recording one costs no
//! allocation; the host turns each distinct key into an Envoy metric once
//! per VM and caches its id.
//!
//! Names follow Istio's tag convention (`maas.<what>.<label>=.=<value>;.;`),
//! which `envoy/gateway.template.yaml`'s `stats_tags` turn into labels.
//! Labels only ever take configured values (subscriptions, models, key ids
//! the configuration or the control plane issued) or fixed words, so a
//! client cannot grow the metric set by sending made-up model names.
//!
//! The usage counters showback reads (requests, prompt and completion
//! tokens) carry the caller's key id, so the control plane can break usage
//! down by key and owner. A token holder (OIDC) has no key and no `key`
//! label: their subject is free text, which must never reach a stat name
//! (a `;.;` in it would forge labels).

use crate::auth::keys::AuthFailure;
use crate::subscription::Quantity;
use std::fmt::Write;
use std::rc::Rc;

/// Why a request ended the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Admitted; the model answered 2xx and the response completed.
    Ok,
    /// Admitted; the model (or Envoy on its behalf) answered non-2xx.
    UpstreamError,
    /// Admitted; the client went away or the stream was cut before its end.
    Incomplete,
    /// Refused by a request or token limit.
    RateLimited,
    /// Refused before admission: bad body, unknown model, cap exceeded.
    Rejected,
    /// Refused because the counters could not be updated.
    LimiterError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Incomplete => "incomplete",
            Outcome::RateLimited => "rate_limited",
            Outcome::Rejected => "rejected",
            Outcome::LimiterError => "limiter_error",
        }
    }
}

/// A subscription's name (shared with the subscription itself).
pub type SubscriptionId = Rc<str>;
/// Index of a configured model (`None`: not a configured model).
pub type ModelId = Option<u32>;
/// The caller's key id, shared with its identity (`None`: a token holder).
pub type KeyId = Option<Rc<str>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Metric {
    Requests {
        subscription: SubscriptionId,
        model: ModelId,
        outcome: Outcome,
        key: KeyId,
    },
    PromptTokens {
        subscription: SubscriptionId,
        model: ModelId,
        key: KeyId,
    },
    CompletionTokens {
        subscription: SubscriptionId,
        model: ModelId,
        key: KeyId,
    },
    TotalTokens {
        subscription: SubscriptionId,
        model: ModelId,
    },
    /// Requests charged by estimate because the model reported no usage
    /// (or by their whole reservation, when the response could not be
    /// decoded: the audit record's `usage` tells which).
    EstimatedUsage {
        subscription: SubscriptionId,
        model: ModelId,
    },
    RateLimited {
        subscription: SubscriptionId,
        kind: Quantity,
    },
    AuthFailures {
        reason: AuthFailure,
    },
    /// Settlements that could not update a counter (logged too).
    SettleErrors,
    /// `/v1/models` and `/v1/models/{id}` answered by the filter.
    ModelListings,
    /// Calls to the control plane's sync, by result (`changed`,
    /// `not_modified`, `failed`, `other_store`: an answer from another
    /// database than the keys came from, which restarts the sync from 0).
    KeySyncs {
        result: &'static str,
    },
    /// Lookups of never-seen managed key ids, by result (`found`, `absent`,
    /// `failed`, `throttled`).
    KeyLookups {
        result: &'static str,
    },
    /// Calls to the rate limiter service for global limits, by result
    /// (`ok`, `over_limit`, `failed`: no usable answer, after which the
    /// limit's failure mode decides; `unmatched`: a reservation granted with
    /// no limit behind it, i.e. a limits file out of step with the
    /// configuration; for settlements: `settled`, `settle_retry`: an attempt
    /// failed and will be repeated, `settle_dropped`: given up or not kept).
    LimiterCalls {
        result: &'static str,
    },
    /// Gauge: seconds since the control plane last answered a sync.
    KeySyncAgeSeconds,
    /// Gauge: subscriptions in force (configured and synced).
    Subscriptions,
    /// Gauge: settlements waiting for the rate limiter in this worker.
    SettlementsWaiting,
    /// Answers from an external provider, one per attempt (the backend
    /// role, [`crate::backend`]), by provider and by the status class the
    /// client would be given (`2xx`, `4xx`, `429`, `5xx`).
    ProviderResponses {
        provider: Rc<str>,
        status: &'static str,
    },
}

impl Metric {
    /// Gauges are set, counters are added to.
    pub fn is_gauge(&self) -> bool {
        matches!(
            self,
            Metric::KeySyncAgeSeconds | Metric::Subscriptions | Metric::SettlementsWaiting
        )
    }

    /// The Envoy stat name, e.g.
    /// `maas.requests_total.subscription=.=free;.;model=.=m1;.;outcome=.=ok;.;`.
    /// `models` is the configuration's (sorted) model list.
    pub fn name(&self, models: &[String]) -> String {
        let sub = |s: &SubscriptionId| -> String { s.to_string() };
        let model = |m: ModelId| {
            m.and_then(|i| models.get(i as usize))
                .map_or("unknown", |s| s.as_str())
                .to_string()
        };
        let mut out = String::with_capacity(96);
        let (what, labels): (&str, Vec<(&str, String)>) = match self {
            Metric::Requests {
                subscription,
                model: m,
                outcome,
                key,
            } => (
                "requests_total",
                with_key(
                    vec![
                        ("subscription", sub(subscription)),
                        ("model", model(*m)),
                        ("outcome", outcome.as_str().to_string()),
                    ],
                    key,
                ),
            ),
            Metric::PromptTokens {
                subscription,
                model: m,
                key,
            } => (
                "prompt_tokens_total",
                with_key(
                    vec![("subscription", sub(subscription)), ("model", model(*m))],
                    key,
                ),
            ),
            Metric::CompletionTokens {
                subscription,
                model: m,
                key,
            } => (
                "completion_tokens_total",
                with_key(
                    vec![("subscription", sub(subscription)), ("model", model(*m))],
                    key,
                ),
            ),
            Metric::TotalTokens {
                subscription,
                model: m,
            } => (
                "total_tokens_total",
                vec![("subscription", sub(subscription)), ("model", model(*m))],
            ),
            Metric::EstimatedUsage {
                subscription,
                model: m,
            } => (
                "estimated_usage_total",
                vec![("subscription", sub(subscription)), ("model", model(*m))],
            ),
            Metric::RateLimited { subscription, kind } => (
                "rate_limited_total",
                vec![
                    ("subscription", sub(subscription)),
                    ("reason", kind.as_str().to_string()),
                ],
            ),
            Metric::AuthFailures { reason } => (
                "auth_failures_total",
                vec![("reason", reason.as_str().to_string())],
            ),
            Metric::SettleErrors => ("settle_errors_total", Vec::new()),
            Metric::ModelListings => ("model_listings_total", Vec::new()),
            Metric::KeySyncs { result } => {
                ("key_syncs_total", vec![("result", result.to_string())])
            }
            Metric::KeyLookups { result } => {
                ("key_lookups_total", vec![("result", result.to_string())])
            }
            Metric::LimiterCalls { result } => {
                ("limiter_calls_total", vec![("result", result.to_string())])
            }
            Metric::KeySyncAgeSeconds => ("key_sync_age_seconds", Vec::new()),
            Metric::Subscriptions => ("subscriptions", Vec::new()),
            Metric::SettlementsWaiting => ("limiter_settlements_waiting", Vec::new()),
            Metric::ProviderResponses { provider, status } => (
                "provider_responses_total",
                vec![
                    ("provider", provider.to_string()),
                    ("status", status.to_string()),
                ],
            ),
        };
        out.push_str("maas.");
        out.push_str(what);
        if !labels.is_empty() {
            out.push('.');
        }
        for (k, v) in labels {
            // Writing into a String cannot fail.
            let _ = write!(out, "{k}=.={v};.;");
        }
        out
    }
}

/// `labels` and, for a key holder, the key id last: series of a key
/// holder extend the name a token holder's series have.
fn with_key<'a>(mut labels: Vec<(&'a str, String)>, key: &KeyId) -> Vec<(&'a str, String)> {
    if let Some(id) = key {
        labels.push(("key", id.to_string()));
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_embed_labels_in_istio_form() {
        let models = ["m1".to_string()];
        let free: SubscriptionId = Rc::from("free");
        let table = [
            (
                Metric::Requests {
                    subscription: free.clone(),
                    model: Some(0),
                    outcome: Outcome::Ok,
                    key: None,
                },
                "maas.requests_total.subscription=.=free;.;model=.=m1;.;outcome=.=ok;.;",
            ),
            (
                Metric::Requests {
                    subscription: free.clone(),
                    model: Some(0),
                    outcome: Outcome::RateLimited,
                    key: Some(Rc::from("alice-1")),
                },
                "maas.requests_total.subscription=.=free;.;model=.=m1;.;outcome=.=rate_limited;.;key=.=alice-1;.;",
            ),
            (
                Metric::PromptTokens {
                    subscription: free.clone(),
                    model: Some(0),
                    key: Some(Rc::from("k2")),
                },
                "maas.prompt_tokens_total.subscription=.=free;.;model=.=m1;.;key=.=k2;.;",
            ),
            (
                Metric::CompletionTokens {
                    subscription: free.clone(),
                    model: None,
                    key: None,
                },
                "maas.completion_tokens_total.subscription=.=free;.;model=.=unknown;.;",
            ),
            (
                Metric::TotalTokens {
                    subscription: free.clone(),
                    model: None,
                },
                "maas.total_tokens_total.subscription=.=free;.;model=.=unknown;.;",
            ),
            (
                Metric::RateLimited {
                    subscription: free.clone(),
                    kind: Quantity::Tokens,
                },
                "maas.rate_limited_total.subscription=.=free;.;reason=.=tokens;.;",
            ),
            (
                Metric::AuthFailures {
                    reason: AuthFailure::Revoked,
                },
                "maas.auth_failures_total.reason=.=revoked;.;",
            ),
            (Metric::SettleErrors, "maas.settle_errors_total"),
            (
                Metric::KeyLookups { result: "absent" },
                "maas.key_lookups_total.result=.=absent;.;",
            ),
            (
                Metric::LimiterCalls { result: "failed" },
                "maas.limiter_calls_total.result=.=failed;.;",
            ),
        ];
        for (m, want) in table {
            assert_eq!(m.name(&models), want);
        }
    }
}
