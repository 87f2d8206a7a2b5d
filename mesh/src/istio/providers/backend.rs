//! The filter's backend role in the mesh: the same module, as an upstream
//! HTTP filter of each provider's cluster, ahead of the credential
//! injector, configured with that provider's backend document (the
//! counterpart of testkit's local `backend_filter`).
//!
//! Invariants:
//! - The document is the filter's own ([`BackendConfig::document_for`] on
//!   the configuration the gateway role loads), so the two roles cannot
//!   disagree on a model's name at its provider; a provider no model uses
//!   gets no backend role.
//! - The wasm settings are the bootstrap template's (one source, as for the
//!   gateway role), with the role's own name, root id and VM id; the code
//!   is fetched by URL with its `sha256` pin through
//!   [`WASM_SOURCE_CLUSTER`](crate::istio::WASM_SOURCE_CLUSTER), as the
//!   gateway role's is. An `oci://` reference is refused: Envoy fetches
//!   this code itself, and only Istio's agent (for a `WasmPlugin`) pulls
//!   OCI images.

use serde_json::{json, Value};

use maas_filter::backend::BackendConfig;
use maas_filter::config::Config;

use super::super::{check_sha256, url_host, wasm_config, WasmModule, WASM_TYPE};
use super::ProvidersError;

pub use maas_filter::backend::envoy::FILTER_NAME as BACKEND_FILTER_NAME;

/// Refuses a module source Envoy cannot fetch for an upstream filter.
pub(super) fn check_module(wasm: &WasmModule) -> Result<(), ProvidersError> {
    if wasm.url.starts_with("oci://") {
        return Err(ProvidersError::OciModule(wasm.url.clone()));
    }
    check_sha256(&wasm.sha256)?;
    url_host(&wasm.url)?;
    Ok(())
}

/// The upstream filter for `provider`'s cluster, from the template's wasm
/// `config`; `None` when no model uses the provider.
pub(super) fn backend_filter(
    config: &Config,
    provider: &str,
    template: &Value,
    wasm: &WasmModule,
) -> Option<Value> {
    let document = BackendConfig::document_for(config, provider)?;
    let mut settings = template.clone();
    settings["name"] = json!(BACKEND_FILTER_NAME);
    settings["root_id"] = json!(BACKEND_FILTER_NAME);
    settings["vm_config"]["vm_id"] = json!(BACKEND_FILTER_NAME);
    Some(json!({
        "name": BACKEND_FILTER_NAME,
        "typed_config": { "@type": WASM_TYPE, "config": wasm_config(&settings, &document, wasm) },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::{placeholder, MeshSettings};

    fn config() -> Config {
        let doc = json!({
            "models": ["local-m"],
            "providers": [
                {"name": "azure", "kind": "azure-openai", "api_version": "2024-10-21"},
                {"name": "idle", "kind": "openai-compatible"}
            ],
            "external_models": [{"id": "gpt-4o", "provider": "azure", "model": "gpt-4o-prod"}],
            "subscriptions": {}
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_backend_role_takes_the_templates_settings_and_its_own_names() {
        let template = json!({
            "name": "maas-gateway", "root_id": "maas-gateway",
            "failure_policy": "FAIL_CLOSED", "allow_on_headers_stop_iteration": true,
            "vm_config": {"vm_id": "maas-gateway", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": "x.wasm"}}},
        });
        let wasm = MeshSettings::default().wasm;
        let filter = backend_filter(&config(), "azure", &template, &wasm)
            .unwrap_or_else(|| panic!("azure serves a model"));
        let c = &filter["typed_config"]["config"];
        assert_eq!(c["root_id"], BACKEND_FILTER_NAME);
        assert_eq!(c["vm_config"]["vm_id"], BACKEND_FILTER_NAME);
        assert_eq!(c["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert_eq!(c["failure_policy"], "FAIL_CLOSED");
        assert_eq!(c["allow_on_headers_stop_iteration"], true);
        let remote = &c["vm_config"]["code"]["remote"];
        assert_eq!(remote["http_uri"]["uri"], placeholder::WASM_URL);
        assert_eq!(remote["http_uri"]["cluster"], "maas-wasm-source");
        assert_eq!(remote["sha256"], placeholder::WASM_SHA256);
        let document: Value = serde_json::from_str(
            c["configuration"]["value"]
                .as_str()
                .unwrap_or_else(|| panic!("a string: {c}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            document,
            json!({"backend": {"provider": "azure", "kind": "azure-openai",
                "api_version": "2024-10-21", "models": {"gpt-4o": "gpt-4o-prod"}}})
        );
        assert!(backend_filter(&config(), "idle", &template, &wasm).is_none());
    }

    #[test]
    fn an_oci_module_is_refused_with_what_to_pass_instead() {
        let mut wasm = MeshSettings::default().wasm;
        assert!(check_module(&wasm).is_ok());
        wasm.url = format!(
            "oci://registry.example.com/maas/maas-filter@sha256:{}",
            "ab".repeat(32)
        );
        let err = check_module(&wasm).unwrap_err();
        assert!(matches!(err, ProvidersError::OciModule(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("--wasm-url") && text.contains("--wasm-sha256"),
            "{text}"
        );
        wasm.url = placeholder::WASM_URL.into();
        wasm.sha256 = "abc".into();
        assert!(check_module(&wasm).is_err());
    }
}
