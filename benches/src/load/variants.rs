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
//! Routes match on `x-maas-model`, which our filter strips and sets again, so
//! a load generator that sends the header itself gets the same route through
//! every variant.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use maas_filter::keys::KeyDigest;
use maas_testkit::gateway::{render_gateway, GatewaySpec, RenderError};
use serde_json::{json, Value};

/// The one model the benchmark routes.
pub const BENCH_MODEL: &str = "bench-model";

/// The template's wasm filter entry, as it appears in `http_filters`.
const WASM_FILTER_ENTRY: &str = "- name: envoy.filters.http.wasm";
const ROUTER_FILTER_NAME: &str = "envoy.filters.http.router";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// No wasm filter at all.
    None,
    /// This wasm module in the template's filter slot.
    Wasm(PathBuf),
}

/// One gateway under test: `NAME=none` or `NAME=PATH/TO/MODULE.wasm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// `[a-z0-9-]+`: it names files and table rows.
    pub name: String,
    pub filter: Filter,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VariantError {
    #[error("variant {0:?}: expected NAME=none or NAME=PATH")]
    Syntax(String),
    #[error("variant name {0:?}: use lowercase letters, digits and '-' only")]
    BadName(String),
    #[error("the template has {found} wasm filter entries (`{WASM_FILTER_ENTRY}`); expected exactly one")]
    WasmEntryCount { found: usize },
    #[error("removing the wasm filter left no {ROUTER_FILTER_NAME} in the bootstrap")]
    RouterLost,
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
        let filter = match filter {
            "none" => Filter::None,
            path => Filter::Wasm(PathBuf::from(path)),
        };
        Ok(Self {
            name: name.to_owned(),
            filter,
        })
    }
}

/// Our filter's configuration for the benchmark: shaped like the demo's
/// `free` subscription (two token limits and a request limit on the
/// subscription, a request limit per key, a `max_tokens` cap), so every
/// request reserves and settles four counters, but with amounts no benchmark
/// reaches: a 401 or 429 would invalidate the numbers. One key, `key`.
pub fn bench_filter_config(key: &str) -> Value {
    json!({
        "max_body_bytes": 1_048_576,
        "default_max_tokens": 1024,
        "prompt_bytes_per_token": 1,
        "models": [BENCH_MODEL],
        "subscriptions": {
            "bench": {
                "models": [BENCH_MODEL],
                "limits": {
                    "requests": ["100000000/min"],
                    "tokens": ["100000000000/min", "100000000000000/day"]
                },
                "key_limits": { "requests": ["100000000/10s"] },
                "max_tokens": { "cap": 512, "mode": "clamp" }
            }
        },
        "keys": [{
            "id": "bench",
            "owner": "bench@example.com",
            "subscription": "bench",
            "sha256": KeyDigest::of(key).to_hex()
        }]
    })
}

/// The bootstrap for `variant`: listener and admin on ephemeral loopback
/// ports (read them back from the admin API), [`BENCH_MODEL`] routed to
/// `upstream`.
pub fn render_variant(
    template: &str,
    variant: &Variant,
    filter_config: &Value,
    upstream: SocketAddr,
    access_log: &Path,
) -> Result<String, VariantError> {
    let wasm_path = match &variant.filter {
        Filter::Wasm(path) => path.clone(),
        // Rendered, then removed with the entry that names it.
        Filter::None => PathBuf::from("/nonexistent/no-filter.wasm"),
    };
    let spec = GatewaySpec {
        control_plane: None,
        limiter: None,
        oidc: None,
        listen_port: 0,
        admin_port: 0,
        wasm_path,
        filter_config: filter_config.clone(),
        access_log_path: access_log.to_owned(),
        models: vec![(BENCH_MODEL.to_owned(), upstream)],
    };
    let bootstrap = render_gateway(template, &spec)?;
    match variant.filter {
        Filter::None => remove_wasm_filter(&bootstrap),
        Filter::Wasm(_) => Ok(bootstrap),
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
                filter: Filter::Wasm("/x/y.wasm".into())
            })
        );
        for bad in ["none", "=none", "a=", "A=none", "a b=none", "a/b=x.wasm"] {
            assert!(bad.parse::<Variant>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_none_variant_keeps_everything_but_the_wasm_filter() {
        let config = bench_filter_config("sk-test");
        let log = Path::new("/tmp/access.log");
        let with = render_variant(
            &gateway_template(),
            &"ours=/m/maas_filter.wasm".parse().unwrap(),
            &config,
            upstream(),
            log,
        )
        .unwrap();
        let without = render_variant(
            &gateway_template(),
            &"none=none".parse().unwrap(),
            &config,
            upstream(),
            log,
        )
        .unwrap();
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
    fn the_bench_config_is_accepted_by_the_filter() {
        let config = bench_filter_config("sk-maas-bench");
        let parsed = maas_filter::config::Config::from_json(config.to_string().as_bytes());
        assert!(parsed.is_ok(), "{:?}", parsed.err());
    }
}
