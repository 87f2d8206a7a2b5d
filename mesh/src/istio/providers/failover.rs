//! Models with fallbacks (the filter configuration's `fallbacks`) in the
//! mesh: the counterpart of testkit's local failover route, as a patch of
//! the route Istio generates for the model's `HTTPRoute` rule.
//!
//! Istio names the route of rule *i* of `HTTPRoute` *name* in namespace
//! *ns* `<ns>.<name>.<i>`: an external model's rule is in
//! [`PROVIDERS_ROUTE`] (rendered here, in [`super::routed_models`] order),
//! a local model's in [`MODELS_ROUTE`] (rendered by `render-istio` from the
//! same configuration, in [`local_models`] order). Each backend keeps the
//! cluster Istio builds for it, `outbound|<port>||<host>`: a provider's,
//! with its TLS, backend role and credential injector, or the inference
//! Service's.
//!
//! The patch (`HTTP_ROUTE` `MERGE`) gives the route Envoy's matcher
//! cluster specifier on `x-envoy-attempt-count` (no header: the first
//! backend; `k`: fallback *k*, since the header still reads the previous
//! attempt's number when the next cluster is picked) and a retry policy
//! with `refresh_cluster_on_retry`, so each retry goes to the next backend;
//! the header is only sent when the virtual host says
//! `include_request_attempt_count`. Istio merges protos: setting
//! `inline_cluster_specifier_plugin` and `auto_host_rewrite` replaces the
//! rule's `cluster` and `host_rewrite_literal` (members of the same
//! oneofs), each attempt gets the `Host` of the cluster it goes to, and
//! `retriable_status_codes` is appended to Istio's default (`503`).
//! Needs Envoy >= 1.39 (`refresh_cluster_on_retry`) in the gateway and in
//! istiod's Envoy API.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use maas_filter::config::Config;

use super::super::{gateway_target, local_models, metadata, MeshSettings, MODELS_ROUTE};
use super::{MeshProvider, ProvidersError, ORIGINATION_PORT, PROVIDERS_ROUTE};

/// The `EnvoyFilter` of the models with fallbacks.
pub const FAILOVER_ENVOY_FILTER: &str = "maas-model-failover";

pub use maas_filter::backend::envoy::{ATTEMPT_HEADER, RETRIABLE_STATUS_CODES, RETRY_ON};

/// A model's route and its backends' clusters, in the order tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chain {
    pub(super) model: String,
    /// Istio's name for the model's route.
    pub(super) route: String,
    pub(super) clusters: Vec<String>,
}

/// Istio's cluster for a provider's `ServiceEntry` port.
pub(super) fn provider_cluster(provider: &MeshProvider) -> String {
    format!("outbound|{ORIGINATION_PORT}||{}", provider.host)
}

fn local_cluster(settings: &MeshSettings) -> String {
    format!(
        "outbound|{}||{}",
        settings.inference_port,
        settings.service_host(&settings.inference_app)
    )
}

/// The chain of every model with fallbacks. `routed`: the external models
/// in `maas-providers` rule order, with their provider.
pub(super) fn chains(
    config: &Config,
    routed: &[(&str, &MeshProvider)],
    providers: &BTreeMap<&str, &MeshProvider>,
    settings: &MeshSettings,
) -> Result<Vec<Chain>, ProvidersError> {
    let local = local_models(config);
    let ns = &settings.namespace;
    let mut chains = Vec::new();
    for (model, fallbacks) in &config.fallbacks {
        let (route, first) = if let Some(i) = local.iter().position(|m| m == model) {
            (format!("{ns}.{MODELS_ROUTE}.{i}"), local_cluster(settings))
        } else if let Some(i) = routed.iter().position(|(m, _)| m == model) {
            (
                format!("{ns}.{PROVIDERS_ROUTE}.{i}"),
                provider_cluster(routed[i].1),
            )
        } else {
            return Err(ProvidersError::UnroutedFallbackModel(model.clone()));
        };
        let mut clusters = vec![first];
        for fallback in fallbacks {
            let provider = providers.get(fallback.provider.as_str()).ok_or_else(|| {
                ProvidersError::MissingInMesh {
                    provider: fallback.provider.clone(),
                    models: vec![model.clone()],
                }
            })?;
            clusters.push(provider_cluster(provider));
        }
        chains.push(Chain {
            model: model.clone(),
            route,
            clusters,
        });
    }
    Ok(chains)
}

fn cluster_action(cluster: &str) -> Value {
    json!({ "action": {
        "name": cluster,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction",
            "cluster": cluster,
        },
    } })
}

/// The `route` (a `RouteAction`) each chained model's route is merged with.
pub(super) fn route_action(chain: &Chain) -> Value {
    let (first, fallbacks) = match chain.clusters.split_first() {
        Some(split) => split,
        None => return json!({}),
    };
    let attempts: serde_json::Map<String, Value> = fallbacks
        .iter()
        .enumerate()
        .map(|(k, cluster)| ((k + 1).to_string(), cluster_action(cluster)))
        .collect();
    json!({
        "auto_host_rewrite": true,
        "retry_policy": {
            "retry_on": RETRY_ON,
            "retriable_status_codes": RETRIABLE_STATUS_CODES,
            "num_retries": fallbacks.len(),
            "refresh_cluster_on_retry": true,
            "retry_back_off": { "base_interval": "0.01s", "max_interval": "0.1s" },
        },
        "inline_cluster_specifier_plugin": { "extension": {
            "name": "envoy.router.cluster_specifier_plugin.matcher",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier",
                "cluster_matcher": { "matcher_tree": {
                    "input": {
                        "name": "attempt",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                            "header_name": ATTEMPT_HEADER,
                        },
                    },
                    "exact_match_map": { "map": attempts },
                }, "on_no_match": cluster_action(first) },
            },
        } },
    })
}

/// The `EnvoyFilter` of `chains`; `None` without any.
pub(super) fn failover_envoy_filter(chains: &[Chain], settings: &MeshSettings) -> Option<Value> {
    if chains.is_empty() {
        return None;
    }
    // The attempt count is a virtual host's setting, and the gateway's
    // virtual hosts are named after its listeners' hostnames, which the
    // rendering does not know: every virtual host of this Gateway sends
    // it (a retry count, nothing about the caller).
    let mut patches = vec![json!({
        "applyTo": "VIRTUAL_HOST",
        "match": { "context": "GATEWAY" },
        "patch": { "operation": "MERGE", "value": { "include_request_attempt_count": true } },
    })];
    patches.extend(chains.iter().map(|chain| {
        json!({
            "applyTo": "HTTP_ROUTE",
            "match": {
                "context": "GATEWAY",
                "routeConfiguration": { "vhost": { "route": { "name": chain.route } } },
            },
            "patch": { "operation": "MERGE", "value": { "route": route_action(chain) } },
        })
    }));
    Some(json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata(FAILOVER_ENVOY_FILTER, settings),
        "spec": { "targetRefs": gateway_target(settings), "configPatches": patches },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_after_the_first_names_the_next_backend() {
        let chain = Chain {
            model: "m".into(),
            route: "maas.maas-providers.0".into(),
            clusters: vec![
                "outbound|80||a.example.com".into(),
                "outbound|80||b.example.com".into(),
                "outbound|80||c.example.com".into(),
            ],
        };
        let action = route_action(&chain);
        assert_eq!(action["retry_policy"]["num_retries"], 2);
        assert_eq!(action["retry_policy"]["refresh_cluster_on_retry"], true);
        let plugin = &action["inline_cluster_specifier_plugin"]["extension"]["typed_config"]
            ["cluster_matcher"];
        assert_eq!(
            plugin["on_no_match"]["action"]["typed_config"]["cluster"],
            "outbound|80||a.example.com"
        );
        let map = &plugin["matcher_tree"]["exact_match_map"]["map"];
        assert_eq!(
            map["1"]["action"]["typed_config"]["cluster"],
            "outbound|80||b.example.com"
        );
        assert_eq!(
            map["2"]["action"]["typed_config"]["cluster"],
            "outbound|80||c.example.com"
        );
        assert!(failover_envoy_filter(&[], &MeshSettings::default()).is_none());
    }
}
