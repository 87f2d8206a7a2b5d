//! The shipped Grafana dashboard queries only series that exist: every
//! `maas_*` name and label it uses is one the filter emits (as Envoy's
//! stats tags turn the filter's metric names into Prometheus series) or the
//! control plane's `/metrics` serves (model prices), and every
//! `inference_*` name is one the server's `/metrics` serves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use maas_filter::auth::keys::AuthFailure;
use maas_filter::config::Config;
use maas_filter::metrics::{Metric, Outcome};
use maas_filter::subscription::Quantity;
use serde_json::Value;

/// Prometheus name and label keys of a filter metric, from its Envoy stat
/// name `maas.<what>.<label>=.=<value>;.;…`.
fn series(stat: &str) -> (String, BTreeSet<String>) {
    let rest = stat.strip_prefix("maas.").unwrap();
    let (what, tags) = rest.split_once('.').unwrap_or((rest, ""));
    let labels = tags
        .split(";.;")
        .filter_map(|t| t.split_once("=.=").map(|(k, _)| k.to_string()))
        .collect();
    (format!("maas_{what}"), labels)
}

fn filter_series() -> Vec<(String, BTreeSet<String>)> {
    let config = Config::from_json(
        br#"{"models": ["m"], "subscriptions": {"s": {"models": ["m"], "limits": "unlimited"}}}"#,
    )
    .unwrap();
    let sub = || std::rc::Rc::clone(&config.subscriptions[0].name);
    let model = Some(0);
    // A key holder's series: the usage counters carry its key id.
    let key = || Some(std::rc::Rc::from("k1"));
    [
        Metric::Requests {
            subscription: sub(),
            model,
            outcome: Outcome::Ok,
            key: key(),
        },
        Metric::PromptTokens {
            subscription: sub(),
            model,
            key: key(),
        },
        Metric::CompletionTokens {
            subscription: sub(),
            model,
            key: key(),
        },
        Metric::TotalTokens {
            subscription: sub(),
            model,
        },
        Metric::EstimatedUsage {
            subscription: sub(),
            model,
        },
        Metric::RateLimited {
            subscription: sub(),
            kind: Quantity::Tokens,
        },
        Metric::AuthFailures {
            reason: AuthFailure::Revoked,
        },
        Metric::SettleErrors,
        Metric::ModelListings,
        Metric::KeySyncs { result: "changed" },
        Metric::KeyLookups { result: "found" },
        Metric::KeySyncAgeSeconds,
        Metric::Subscriptions,
    ]
    .iter()
    .map(|m| series(&m.name(&config.models)))
    .collect()
}

/// What the control plane's `/metrics` serves, read off its exposition of
/// one price.
fn control_plane_series() -> Vec<(String, BTreeSet<String>)> {
    let price = maas_control_plane::showback::price::Price::from_json(
        "m",
        br#"{"currency": "USD", "prompt_per_million": 1, "completion_per_million": 2}"#,
    )
    .unwrap();
    maas_prometheus_text::parse(&maas_control_plane::api::price_exposition(&[price]))
        .into_iter()
        .map(|s| (s.name, s.labels.into_iter().map(|(k, _)| k).collect()))
        .collect()
}

/// What `inference-server`'s `/metrics` serves (kept in step with its
/// metrics module; its own tests read these names over HTTP).
const INFERENCE: &[&str] = &[
    "inference_queue_depth",
    "inference_running_sequences",
    "inference_kv_cache_bytes",
    "inference_requests_total",
    "inference_prompt_tokens_total",
    "inference_generated_tokens_total",
    "inference_batch_tokens_bucket",
    "inference_batch_sequences_bucket",
    "inference_step_seconds_bucket",
    "inference_time_to_first_token_seconds_bucket",
    "inference_inter_token_latency_seconds_bucket",
    "inference_request_seconds_bucket",
];

fn exprs(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

fn identifiers(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("maas_") || w.starts_with("inference_"))
        .map(str::to_string)
        .collect()
}

/// The label keys in `by (…)` clauses.
fn grouped_labels(expr: &str) -> Vec<String> {
    clause_labels(expr, "by (")
}

/// The label keys in `on (…)` clauses: what a binary operation matches on.
fn matched_labels(expr: &str) -> Vec<String> {
    clause_labels(expr, "on (")
}

fn clause_labels(expr: &str, clause: &str) -> Vec<String> {
    expr.match_indices(clause)
        .flat_map(|(i, _)| {
            let rest = &expr[i + clause.len()..];
            rest[..rest.find(')').unwrap()]
                .split(',')
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|l| l != "le")
        .collect()
}

#[test]
fn the_dashboard_queries_only_series_that_exist() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dashboards/maas-showback.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let maas: Vec<(String, BTreeSet<String>)> = filter_series()
        .into_iter()
        .chain(control_plane_series())
        .collect();
    let all = exprs(&dashboard);
    assert!(all.len() >= 8, "{all:?}");
    let mut priced = false;
    for expr in &all {
        let names = identifiers(expr);
        assert!(!names.is_empty(), "{expr}");
        let mut label_sets = Vec::new();
        for name in &names {
            if name.starts_with("maas_") {
                let (_, labels) = maas
                    .iter()
                    .find(|(n, _)| n == name)
                    .unwrap_or_else(|| panic!("{expr}: no component emits {name}"));
                label_sets.push(labels);
            } else {
                assert!(
                    INFERENCE.contains(&name.as_str()),
                    "{expr}: the server has no {name}"
                );
            }
        }
        if label_sets.is_empty() {
            continue;
        }
        // A series joined on a label must have it on both sides; a group
        // must be by a label some series of the expression has (the price
        // has no subscription, the tokens have one).
        for label in matched_labels(expr) {
            for labels in &label_sets {
                assert!(
                    labels.contains(&label),
                    "{expr}: cannot match on {label} ({labels:?})"
                );
            }
        }
        for label in grouped_labels(expr) {
            assert!(
                label_sets.iter().any(|labels| labels.contains(&label)),
                "{expr}: no series has the label {label} ({label_sets:?})"
            );
        }
        priced |= names.iter().any(|n| n == "maas_model_price_per_million")
            && names.iter().any(|n| n.ends_with("_tokens_total"));
    }
    assert!(priced, "no panel turns tokens into cost");
}
