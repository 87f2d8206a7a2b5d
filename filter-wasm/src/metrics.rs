//! The filter's Prometheus-visible counters. A [`Metric`] is a small `Copy`
//! key (indices into the configuration, not strings) so recording one costs
//! no allocation; the host turns each distinct key into an Envoy metric once
//! per VM and caches its id.
//!
//! Names follow Istio's tag convention (`maas.<what>.<label>=.=<value>;.;`),
//! which `envoy/gateway.template.yaml`'s `stats_tags` turn into labels.
//! Labels only ever take configured values (subscriptions, models) or fixed
//! words, so a client cannot grow the metric set by sending made-up model
//! names.

use crate::config::{Config, Quantity};
use crate::keys::AuthFailure;
use std::fmt::Write;

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

/// Index of a configured subscription / model (`None`: not a configured model).
pub type SubscriptionId = u32;
pub type ModelId = Option<u32>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Requests {
        subscription: SubscriptionId,
        model: ModelId,
        outcome: Outcome,
    },
    PromptTokens {
        subscription: SubscriptionId,
        model: ModelId,
    },
    CompletionTokens {
        subscription: SubscriptionId,
        model: ModelId,
    },
    TotalTokens {
        subscription: SubscriptionId,
        model: ModelId,
    },
    /// Requests charged by estimate because the model reported no usage.
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
}

impl Metric {
    /// The Envoy stat name, e.g.
    /// `maas.requests_total.subscription=.=free;.;model=.=m1;.;outcome=.=ok;.;`.
    pub fn name(&self, config: &Config) -> String {
        let sub = |i: SubscriptionId| {
            config
                .subscriptions
                .get(i as usize)
                .map_or("unknown", |s| s.name.as_str())
        };
        let model = |m: ModelId| {
            m.and_then(|i| config.models.get(i as usize))
                .map_or("unknown", |s| s.as_str())
        };
        let mut out = String::with_capacity(96);
        let (what, labels): (&str, Vec<(&str, &str)>) = match *self {
            Metric::Requests {
                subscription,
                model: m,
                outcome,
            } => (
                "requests_total",
                vec![
                    ("subscription", sub(subscription)),
                    ("model", model(m)),
                    ("outcome", outcome.as_str()),
                ],
            ),
            Metric::PromptTokens {
                subscription,
                model: m,
            } => (
                "prompt_tokens_total",
                vec![("subscription", sub(subscription)), ("model", model(m))],
            ),
            Metric::CompletionTokens {
                subscription,
                model: m,
            } => (
                "completion_tokens_total",
                vec![("subscription", sub(subscription)), ("model", model(m))],
            ),
            Metric::TotalTokens {
                subscription,
                model: m,
            } => (
                "total_tokens_total",
                vec![("subscription", sub(subscription)), ("model", model(m))],
            ),
            Metric::EstimatedUsage {
                subscription,
                model: m,
            } => (
                "estimated_usage_total",
                vec![("subscription", sub(subscription)), ("model", model(m))],
            ),
            Metric::RateLimited { subscription, kind } => (
                "rate_limited_total",
                vec![
                    ("subscription", sub(subscription)),
                    ("reason", kind.as_str()),
                ],
            ),
            Metric::AuthFailures { reason } => {
                ("auth_failures_total", vec![("reason", reason.as_str())])
            }
            Metric::SettleErrors => ("settle_errors_total", Vec::new()),
            Metric::ModelListings => ("model_listings_total", Vec::new()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_json(
            br#"{"models":["m1"],"subscriptions":{"free":{"models":["m1"],"limits":"unlimited"}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn names_embed_labels_in_istio_form() {
        let c = config();
        let table = [
            (
                Metric::Requests {
                    subscription: 0,
                    model: Some(0),
                    outcome: Outcome::Ok,
                },
                "maas.requests_total.subscription=.=free;.;model=.=m1;.;outcome=.=ok;.;",
            ),
            (
                Metric::TotalTokens {
                    subscription: 0,
                    model: None,
                },
                "maas.total_tokens_total.subscription=.=free;.;model=.=unknown;.;",
            ),
            (
                Metric::RateLimited {
                    subscription: 0,
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
        ];
        for (m, want) in table {
            assert_eq!(m.name(&c), want);
        }
    }
}
