//! A model with fallbacks (the filter configuration's `fallbacks`): one
//! route whose cluster is chosen per attempt, and a retry policy that makes
//! the next attempt on the next backend.
//!
//! Envoy (1.39 and later) re-selects a route's cluster on each retry when
//! the retry policy says `refresh_cluster_on_retry`. The selector here is
//! Envoy's matcher cluster specifier on `x-envoy-attempt-count` (the
//! virtual host includes it): when the cluster for attempt *k* + 1 is
//! chosen, the header still reads attempt *k*'s number, so no header
//! means the first backend and `k` means fallback *k*. The filter drops
//! any `x-envoy-*` header a client sends before it routes, so a client
//! cannot start further down the chain.
//!
//! Each backend keeps its own cluster, so each attempt gets its own TLS,
//! credential injector and the backend role that makes the request that
//! provider's own. Envoy retries only before any response byte has gone
//! to the client: a stream that failed midway is not restarted elsewhere.

use maas_filter::backend::envoy::{ATTEMPT_HEADER, RETRIABLE_STATUS_CODES, RETRY_ON};

use super::{route_match, route_timeouts, string_literal, ROUTE_INDENT, ROUTE_TIMEOUT};

/// A model's backends, as cluster names in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chain {
    pub model: String,
    pub clusters: Vec<String>,
}

fn cluster_action(cluster: &str) -> String {
    format!(
        "{{ action: {{ name: {cluster}, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.ClusterAction, cluster: {cluster} }} }} }}",
        cluster = string_literal(cluster)
    )
}

/// One route per chain.
pub(super) fn routes(chains: &[Chain]) -> Vec<String> {
    let i = ROUTE_INDENT;
    let mut block = Vec::new();
    for chain in chains {
        let Some((first, fallbacks)) = chain.clusters.split_first() else {
            continue;
        };
        block.push(route_match(&chain.model));
        let attempts = fallbacks
            .iter()
            .enumerate()
            .map(|(k, cluster)| {
                format!(
                    "{i}                    \"{}\": {}",
                    k + 1,
                    cluster_action(cluster)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let timeouts: String = route_timeouts(ROUTE_TIMEOUT)
            .map(|(key, value)| format!("{i}    {key}: {value}\n"))
            .concat();
        block.push(format!(
            "{i}  route:\n\
             {timeouts}\
             {i}    auto_host_rewrite: true\n\
             {i}    retry_policy:\n\
             {i}      retry_on: \"{RETRY_ON}\"\n\
             {i}      retriable_status_codes: {codes:?}\n\
             {i}      num_retries: {retries}\n\
             {i}      refresh_cluster_on_retry: true\n\
             {i}      retry_back_off: {{ base_interval: 0.01s, max_interval: 0.1s }}\n\
             {i}    inline_cluster_specifier_plugin:\n\
             {i}      extension:\n\
             {i}        name: envoy.router.cluster_specifier_plugin.matcher\n\
             {i}        typed_config:\n\
             {i}          \"@type\": type.googleapis.com/envoy.extensions.router.cluster_specifiers.matcher.v3.MatcherClusterSpecifier\n\
             {i}          cluster_matcher:\n\
             {i}            matcher_tree:\n\
             {i}              input:\n\
             {i}                name: attempt\n\
             {i}                typed_config:\n\
             {i}                  \"@type\": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput\n\
             {i}                  header_name: {ATTEMPT_HEADER}\n\
             {i}              exact_match_map:\n\
             {i}                map:\n\
             {attempts}\n\
             {i}            on_no_match: {first}\n\
             {i}  request_headers_to_remove: [x-maas-model]",
            retries = fallbacks.len(),
            first = cluster_action(first),
            codes = RETRIABLE_STATUS_CODES,
        ));
    }
    block
}
