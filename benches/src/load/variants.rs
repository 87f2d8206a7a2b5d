//! The Envoy bootstraps the load benchmark compares.
//!
//! Every variant is rendered from `envoy/gateway.template.yaml` by testkit's
//! [`render_gateway`], with the same listener, routes, access log and upstream,
//! so the only difference between them is the HTTP filter chain:
//! - [`Filter::None`]: the wasm filter's entry removed from `http_filters`
//!   (the router alone);
//! - [`Filter::Wasm`]: the template's wasm entry pointing at that module. The
//!   empty filter ignores the configuration it is handed; ours reads it.
//!
//! A wasm variant's limits are [`LimitMode::Local`] (shared data) or
//! [`LimitMode::Global`]: the same rates kept by a rate limiter, so its
//! bootstrap also gets the template's `limitador` cluster and its filter
//! configuration a `limiter` block. The limiter's limits file is rendered from
//! that same configuration ([`bench_limits_file`]), so every descriptor the
//! filter sends matches a limit.
//!
//! Routes match on `x-maas-model`, which our filter strips and sets again, so
//! a load generator that sends the header itself gets the same route through
//! every variant.
//!
//! A wasm variant may route the model to an external provider instead
//! ([`Route::Provider`]): the same upstream behind a TLS-terminating Envoy
//! ([`BenchProvider`]), reached through the provider cluster the gateway
//! renders for real providers (TLS verified against the bench's CA, the
//! credential injected by Envoy), with the filter translating for
//! Anthropic's kind. What that costs next to a local model is the
//! comparison.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use maas_filter::auth::keys::KeyDigest;
use maas_filter::config::Config;
use maas_filter::limits::global_limits::limitador_limits;
use maas_filter::providers::ProviderKind;
use maas_testkit::gateway::{
    render_gateway, CredentialSpec, GatewaySpec, ProviderSpec, RenderError, LIMITER_CLUSTER,
};
use serde_json::{json, Value};

/// The one model the benchmark routes.
pub const BENCH_MODEL: &str = "bench-model";

/// The limiter namespace of the benchmark's global limits.
pub const BENCH_LIMITER_DOMAIN: &str = "maas-bench";

/// Deadline of an admission call in the global variant. Production keeps
/// 20 ms; here a neighbour that stalls the load core for that long would turn
/// into a 503 and abort the run, while a call that answers in time costs the
/// same whatever its deadline.
pub const BENCH_LIMITER_TIMEOUT_MS: u64 = 1000;

/// A wasm variant's module path is `global:PATH` when its limits are global.
const GLOBAL_PREFIX: &str = "global:";
/// … and `provider:KIND:PATH` when an external provider of that kind
/// serves its model.
const PROVIDER_PREFIX: &str = "provider:";

/// The template's wasm filter entry, as it appears in `http_filters`.
const WASM_FILTER_ENTRY: &str = "- name: envoy.filters.http.wasm";
const ROUTER_FILTER_NAME: &str = "envoy.filters.http.router";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// No wasm filter at all.
    None,
    /// This wasm module in the template's filter slot, its limits kept
    /// there, the model routed by `route`.
    Wasm {
        module: PathBuf,
        limits: LimitMode,
        route: Route,
    },
}

/// Where a wasm variant's model is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The upstream, over plain HTTP, as a local model server.
    Local,
    /// The upstream behind TLS as an external provider of this kind.
    Provider(ProviderKind),
}

/// The stand-in provider of the provider variants: the upstream behind a
/// TLS front (`load-bench provider`), its CA and the credential's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchProvider {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    pub secret_file: PathBuf,
}

/// The provider's name in the filter's and Envoy's configuration.
pub const BENCH_PROVIDER: &str = "bench-provider";
/// The stand-in provider's host name (its certificate's SAN, the SNI).
pub const BENCH_PROVIDER_HOST: &str = "provider.bench.internal";

/// Where our filter keeps the benchmark's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    /// Envoy's shared data (`"100000000/min"`).
    Local,
    /// The rate limiter (`{"rate": "100000000/min", "mode": "global"}`),
    /// reached through the `limitador` cluster.
    Global,
}

/// One gateway under test: `NAME=none`, `NAME=PATH/TO/MODULE.wasm` or
/// `NAME=global:PATH/TO/MODULE.wasm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// `[a-z0-9-]+`: it names files and table rows.
    pub name: String,
    pub filter: Filter,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VariantError {
    #[error("variant {0:?}: expected NAME=none, NAME=PATH, NAME=global:PATH or NAME=provider:KIND:PATH (KIND openai-compatible, azure-openai or anthropic)")]
    Syntax(String),
    #[error("variant {0:?} routes to a provider but no provider was given")]
    NoProvider(String),
    #[error("variant name {0:?}: use lowercase letters, digits and '-' only")]
    BadName(String),
    #[error("the template has {found} wasm filter entries (`{WASM_FILTER_ENTRY}`); expected exactly one")]
    WasmEntryCount { found: usize },
    #[error("removing the wasm filter left no {ROUTER_FILTER_NAME} in the bootstrap")]
    RouterLost,
    #[error("variant {0:?} has global limits but no limiter address was given")]
    NoLimiter(String),
    #[error("the benchmark's filter configuration is refused: {0}")]
    FilterConfig(String),
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl FromStr for Variant {
    type Err = VariantError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, filter) = text
            .split_once('=')
            .filter(|(name, filter)| !name.is_empty() && !filter.is_empty())
            .ok_or_else(|| VariantError::Syntax(text.to_owned()))?;
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(VariantError::BadName(name.to_owned()));
        }
        let syntax = || VariantError::Syntax(text.to_owned());
        let wasm = |module: &str, limits, route| {
            if module.is_empty() {
                return Err(syntax());
            }
            Ok(Filter::Wasm {
                module: PathBuf::from(module),
                limits,
                route,
            })
        };
        let filter = if filter == "none" {
            Filter::None
        } else if let Some(module) = filter.strip_prefix(GLOBAL_PREFIX) {
            wasm(module, LimitMode::Global, Route::Local)?
        } else if let Some(rest) = filter.strip_prefix(PROVIDER_PREFIX) {
            let (kind, module) = rest.split_once(':').ok_or_else(syntax)?;
            let kind: ProviderKind = serde_json::from_value(json!(kind)).map_err(|_| syntax())?;
            wasm(module, LimitMode::Local, Route::Provider(kind))?
        } else {
            wasm(filter, LimitMode::Local, Route::Local)?
        };
        Ok(Self {
            name: name.to_owned(),
            filter,
        })
    }
}

impl Variant {
    /// How its filter keeps limits; `Local` for no filter.
    pub fn limits(&self) -> LimitMode {
        match self.filter {
            Filter::Wasm { limits, .. } => limits,
            Filter::None => LimitMode::Local,
        }
    }

    /// Where its model is served; `Local` for no filter.
    pub fn route(&self) -> Route {
        match self.filter {
            Filter::Wasm { route, .. } => route,
            Filter::None => Route::Local,
        }
    }
}

/// Our filter's configuration for the benchmark: shaped like the demo's
/// `free` subscription (two token limits and a request limit on the
/// subscription, a request limit per key, a `max_tokens` cap), so every
/// request reserves and settles four counters, but with amounts no benchmark
/// reaches: a 401 or 429 would invalidate the numbers. One key, `key`.
///
/// With [`LimitMode::Global`] the same four rates are global, so a request
/// costs one `ShouldRateLimit` (both request counters) and one `Reserve`
/// (both token counters) before it goes upstream, and one `Commit` after.
/// The limiter's failure mode stays `deny`: a limiter that does not answer
/// makes a 503, which stops the run instead of passing requests uncounted.
///
/// With [`Route::Provider`] the model is an external model of that kind
/// instead of a local one (the provider calls it `bench-upstream-model`).
pub fn bench_filter_config(key: &str, limits: LimitMode, route: Route) -> Value {
    let rate = |rate: &str| match limits {
        LimitMode::Local => json!(rate),
        LimitMode::Global => json!({ "rate": rate, "mode": "global" }),
    };
    let mut config = json!({
        "max_body_bytes": 1_048_576,
        "default_max_tokens": 1024,
        "prompt_bytes_per_token": 1,
        "models": [BENCH_MODEL],
        "subscriptions": {
            "bench": {
                "models": [BENCH_MODEL],
                "limits": {
                    "requests": [rate("100000000/min")],
                    "tokens": [rate("100000000000/min"), rate("100000000000000/day")]
                },
                "key_limits": { "requests": [rate("100000000/10s")] },
                "max_tokens": { "cap": 512, "mode": "clamp" }
            }
        },
        "keys": [{
            "id": "bench",
            "owner": "bench@example.com",
            "subscription": "bench",
            "sha256": KeyDigest::of(key).to_hex()
        }]
    });
    if let Route::Provider(kind) = route {
        config["models"] = json!([]);
        config["providers"] = json!([{ "name": BENCH_PROVIDER, "kind": kind.as_str() }]);
        if kind == ProviderKind::AzureOpenAi {
            config["providers"][0]["api_version"] = json!("2024-10-21");
        }
        config["external_models"] = json!([
            { "id": BENCH_MODEL, "provider": BENCH_PROVIDER, "model": "bench-upstream-model" }
        ]);
    }
    if limits == LimitMode::Global {
        config["limiter"] = json!({
            "cluster": LIMITER_CLUSTER,
            "domain": BENCH_LIMITER_DOMAIN,
            "timeout_ms": BENCH_LIMITER_TIMEOUT_MS
        });
    }
    config
}

/// The limiter's limits file (Limitador's YAML) for the global
/// configuration of `key`, rendered by the filter crate from the parsed
/// configuration, as a deployment would.
pub fn bench_limits_file(key: &str) -> Result<String, VariantError> {
    let config = bench_filter_config(key, LimitMode::Global, Route::Local);
    let parsed = Config::from_json(config.to_string().as_bytes())
        .map_err(|e| VariantError::FilterConfig(e.to_string()))?;
    Ok(limitador_limits(
        BENCH_LIMITER_DOMAIN,
        parsed.subscriptions.iter().map(|s| &**s),
    ))
}

/// The bootstrap for `variant`: listener and admin on ephemeral loopback
/// ports (read them back from the admin API), [`BENCH_MODEL`] routed to
/// `upstream`, our filter configured by [`bench_filter_config`] for `key`.
/// Only a variant with global limits gets the `limitador` cluster, pointing
/// at `limiter`; the others do not need it. A provider variant routes the
/// model to `provider` instead, with its credential's SDS file in
/// `sds_dir` (written by the caller, [`maas_testkit::write_credential_sds`]).
#[allow(clippy::too_many_arguments)] // the bench's fixed inputs, then the variant's
pub fn render_variant(
    template: &str,
    variant: &Variant,
    key: &str,
    upstream: SocketAddr,
    limiter: Option<SocketAddr>,
    provider: Option<&BenchProvider>,
    sds_dir: &Path,
    access_log: &Path,
) -> Result<String, VariantError> {
    let wasm_path = match &variant.filter {
        Filter::Wasm { module, .. } => module.clone(),
        // Rendered, then removed with the entry that names it.
        Filter::None => PathBuf::from("/nonexistent/no-filter.wasm"),
    };
    let limiter = match variant.limits() {
        LimitMode::Local => None,
        LimitMode::Global => {
            Some(limiter.ok_or_else(|| VariantError::NoLimiter(variant.name.clone()))?)
        }
    };
    let (models, providers) = match variant.route() {
        Route::Local => (vec![(BENCH_MODEL.to_owned(), upstream)], Vec::new()),
        Route::Provider(kind) => {
            let provider =
                provider.ok_or_else(|| VariantError::NoProvider(variant.name.clone()))?;
            (Vec::new(), vec![bench_provider_spec(provider, kind)])
        }
    };
    let spec = GatewaySpec {
        control_plane: None,
        limiter,
        oidc: None,
        providers,
        credential_sds_dir: Some(sds_dir.to_owned()),
        listen_port: 0,
        admin_port: 0,
        wasm_path,
        filter_config: bench_filter_config(key, variant.limits(), variant.route()),
        access_log_path: access_log.to_owned(),
        models,
    };
    let bootstrap = render_gateway(template, &spec)?;
    match variant.filter {
        Filter::None => remove_wasm_filter(&bootstrap),
        Filter::Wasm { .. } => Ok(bootstrap),
    }
}

/// The provider cluster for `provider`, with the header each kind reads its
/// key from.
pub fn bench_provider_spec(provider: &BenchProvider, kind: ProviderKind) -> ProviderSpec {
    let (header, prefix) = kind.credential_header();
    ProviderSpec {
        name: BENCH_PROVIDER.into(),
        address: provider.addr.ip().to_string(),
        port: provider.addr.port(),
        host: BENCH_PROVIDER_HOST.into(),
        ca_file: Some(provider.ca_file.clone()),
        credential: CredentialSpec {
            header: header.into(),
            value_prefix: prefix.map(str::to_owned),
            secret_file: provider.secret_file.clone(),
        },
        models: vec![BENCH_MODEL.into()],
        // As the real APIs speak it.
        http2: true,
        timeout: None,
    }
}

/// Removes the wasm filter's list item from `http_filters`: its
/// `- name: envoy.filters.http.wasm` line and every line below it that is
/// blank or indented deeper (the item's body and comments), up to the next
/// item. Refuses a bootstrap with no such entry or several, so a template
/// change cannot silently leave the filter in the "none" variant.
pub fn remove_wasm_filter(bootstrap: &str) -> Result<String, VariantError> {
    let lines: Vec<&str> = bootstrap.split_inclusive('\n').collect();
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.trim() == WASM_FILTER_ENTRY)
        .map(|(index, _)| index)
        .collect();
    let [start] = starts[..] else {
        return Err(VariantError::WasmEntryCount {
            found: starts.len(),
        });
    };
    let indent = indentation(lines[start]);
    let end = lines[start + 1..]
        .iter()
        .position(|line| !line.trim().is_empty() && indentation(line) <= indent)
        .map_or(lines.len(), |offset| start + 1 + offset);
    let kept: String = lines[..start].concat() + &lines[end..].concat();
    if !kept.contains(ROUTER_FILTER_NAME) {
        return Err(VariantError::RouterLost);
    }
    Ok(kept)
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use maas_testkit::gateway::gateway_template;

    fn upstream() -> SocketAddr {
        "127.0.0.1:18000".parse().unwrap()
    }

    fn limiter() -> SocketAddr {
        "127.0.0.1:18081".parse().unwrap()
    }

    fn render(variant: &str, limiter: Option<SocketAddr>) -> Result<String, VariantError> {
        render_variant(
            &gateway_template(),
            &variant.parse().unwrap(),
            "sk-test",
            upstream(),
            limiter,
            Some(&provider()),
            Path::new("/tmp/sds"),
            Path::new("/tmp/access.log"),
        )
    }

    fn provider() -> BenchProvider {
        BenchProvider {
            addr: "127.0.0.1:18443".parse().unwrap(),
            ca_file: "/tmp/provider-ca.pem".into(),
            secret_file: "/tmp/provider.key".into(),
        }
    }

    #[test]
    fn variants_parse() {
        assert_eq!(
            "none=none".parse(),
            Ok(Variant {
                name: "none".into(),
                filter: Filter::None
            })
        );
        assert_eq!(
            "maas-s=/x/y.wasm".parse(),
            Ok(Variant {
                name: "maas-s".into(),
                filter: Filter::Wasm {
                    module: "/x/y.wasm".into(),
                    limits: LimitMode::Local,
                    route: Route::Local,
                }
            })
        );
        assert_eq!(
            "maas-global=global:/x/y.wasm".parse(),
            Ok(Variant {
                name: "maas-global".into(),
                filter: Filter::Wasm {
                    module: "/x/y.wasm".into(),
                    limits: LimitMode::Global,
                    route: Route::Local,
                }
            })
        );
        assert_eq!(
            "maas-anthropic=provider:anthropic:/x/y.wasm".parse(),
            Ok(Variant {
                name: "maas-anthropic".into(),
                filter: Filter::Wasm {
                    module: "/x/y.wasm".into(),
                    limits: LimitMode::Local,
                    route: Route::Provider(ProviderKind::Anthropic),
                }
            })
        );
        for bad in [
            "none",
            "=none",
            "a=",
            "A=none",
            "a b=none",
            "a/b=x.wasm",
            "a=global:",
            "a=provider:anthropic:",
            "a=provider:bedrock:/x.wasm",
            "a=provider:/x.wasm",
        ] {
            assert!(bad.parse::<Variant>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_none_variant_keeps_everything_but_the_wasm_filter() {
        let with = render("ours=/m/maas_filter.wasm", None).unwrap();
        let without = render("none=none", None).unwrap();
        assert!(with.contains("envoy.filters.http.wasm"));
        assert!(with.contains("/m/maas_filter.wasm"));
        assert!(!without.contains("- name: envoy.filters.http.wasm"));
        // The /maas-api route's per-filter entry is optional: Envoy accepts
        // the bootstrap without the filter.
        maas_testkit::validate_yaml(&without).unwrap_or_else(|e| panic!("{e}\n{without}"));
        assert!(!without.contains("vm_config"));
        assert!(!without.contains("nonexistent"));
        // What is left is exactly the rest: the router directly under
        // `http_filters:`, routes and clusters untouched.
        assert!(without
            .contains("          http_filters:\n          - name: envoy.filters.http.router\n"));
        let removed = with.lines().count() - without.lines().count();
        assert!((10..40).contains(&removed), "{removed} lines removed");
        for needle in [
            "x-maas-model",
            "bench-model",
            "port_value: 18000",
            "/tmp/access.log",
        ] {
            assert!(without.contains(needle), "{needle}");
        }
    }

    #[test]
    fn removal_refuses_a_bootstrap_without_exactly_one_entry() {
        assert_eq!(
            remove_wasm_filter("http_filters:\n- name: envoy.filters.http.router\n"),
            Err(VariantError::WasmEntryCount { found: 0 })
        );
        let twice = "- name: envoy.filters.http.wasm\n  a: 1\n- name: envoy.filters.http.wasm\n- name: envoy.filters.http.router\n";
        assert_eq!(
            remove_wasm_filter(twice),
            Err(VariantError::WasmEntryCount { found: 2 })
        );
        assert_eq!(
            remove_wasm_filter("x:\n  - name: envoy.filters.http.wasm\n    b: 2\n"),
            Err(VariantError::RouterLost)
        );
        assert_eq!(
            remove_wasm_filter(
                "f:\n  - name: envoy.filters.http.wasm\n    b: 2\n\n      # c\n  - name: envoy.filters.http.router\nz: 1\n"
            ),
            Ok("f:\n  - name: envoy.filters.http.router\nz: 1\n".to_owned())
        );
    }

    #[test]
    fn only_the_global_variant_gets_the_limiter_cluster_and_block() {
        let local = render("maas=/m/maas_filter.wasm", Some(limiter())).unwrap();
        assert!(
            !local.contains(&format!("- name: {LIMITER_CLUSTER}")),
            "{local}"
        );
        let global = render("maas-global=global:/m/maas_filter.wasm", Some(limiter())).unwrap();
        assert!(global.contains(&format!("- name: {LIMITER_CLUSTER}")));
        assert!(global.contains("port_value: 18081"));
        // The filter configuration is embedded as a JSON string.
        assert!(global.contains(r#"\"mode\":\"global\""#), "{global}");
        // Envoy validates the cluster in testkit's template test; the
        // module path here does not exist.
        assert_eq!(
            render("maas-global=global:/m/maas_filter.wasm", None),
            Err(VariantError::NoLimiter("maas-global".into()))
        );
    }

    #[test]
    fn a_provider_variant_routes_its_model_to_the_provider_over_tls() {
        let yaml = render(
            "maas-anthropic=provider:anthropic:/m/maas_filter.wasm",
            None,
        )
        .unwrap();
        assert!(yaml.contains("provider_bench-provider"), "{yaml}");
        assert!(yaml.contains(BENCH_PROVIDER_HOST), "{yaml}");
        assert!(
            yaml.contains("envoy.filters.http.credential_injector"),
            "{yaml}"
        );
        assert!(
            !yaml.contains("model_bench-model"),
            "no local route: {yaml}"
        );
        let mut without = "maas-ext=provider:openai-compatible:/m.wasm"
            .parse::<Variant>()
            .unwrap();
        without.name = "maas-ext".into();
        assert_eq!(
            render_variant(
                &gateway_template(),
                &without,
                "k",
                upstream(),
                None,
                None,
                Path::new("/tmp"),
                Path::new("/tmp/a.log")
            ),
            Err(VariantError::NoProvider("maas-ext".into()))
        );
    }

    #[test]
    fn the_bench_configs_are_accepted_by_the_filter() {
        let parse = |limits| {
            let config = bench_filter_config("sk-maas-bench", limits, Route::Local);
            Config::from_json(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
        };
        for kind in [
            ProviderKind::OpenAiCompatible,
            ProviderKind::AzureOpenAi,
            ProviderKind::Anthropic,
        ] {
            let config =
                bench_filter_config("sk-maas-bench", LimitMode::Local, Route::Provider(kind));
            let parsed = Config::from_json(config.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(parsed.external[BENCH_MODEL].kind, kind);
        }
        let local = parse(LimitMode::Local);
        assert!(local.limiter.is_none());
        let global = parse(LimitMode::Global);
        let limiter = global.limiter.as_ref().unwrap();
        assert_eq!(
            (limiter.cluster.as_str(), limiter.domain.as_str()),
            (LIMITER_CLUSTER, BENCH_LIMITER_DOMAIN)
        );
        // Every rate of the local configuration, and only those, is global.
        for (local, global) in local.subscriptions.iter().zip(&global.subscriptions) {
            assert!(local.limits.global.is_empty());
            assert_eq!(global.limits.global.len(), 3);
            assert_eq!(global.key_limits.as_ref().unwrap().global.len(), 1);
        }
    }

    #[test]
    fn the_limits_file_has_one_limit_per_global_rate() {
        let yaml = bench_limits_file("sk-maas-bench").unwrap();
        assert_eq!(
            yaml.matches("- namespace: maas-bench\n").count(),
            4,
            "{yaml}"
        );
        for limit in [
            "bench subscription requests 100000000/60s",
            "bench subscription tokens 100000000000/60s",
            "bench subscription tokens 100000000000000/86400s",
            "bench key requests 100000000/10s",
        ] {
            assert!(yaml.contains(limit), "{limit}: {yaml}");
        }
        // Only the per-key limit counts each key apart.
        assert_eq!(yaml.matches("descriptors[0].key").count(), 1, "{yaml}");
    }
}
