//! The `render-gateway` binary: the renderer `make run` and the tests use,
//! with its options on the command line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn render(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_render-gateway"))
        .args(args)
        .output()
        .expect("run render-gateway")
}

#[test]
fn renders_the_shipped_template_to_stdout() {
    let dir = std::env::temp_dir().join(format!("maas-render-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("filter.json");
    std::fs::write(&config, r#"{ "keys": [] }"#).expect("config");
    let output = render(&[
        "--filter-config",
        config.to_str().expect("utf-8"),
        "--model",
        "m1=127.0.0.1:8000",
        "--model",
        "org/m=2=127.0.0.1:8001",
        "--listen-port",
        "18080",
        "--wasm",
        "/opt/maas_filter.wasm",
        "--control-plane",
        "127.0.0.1:8090",
        "--oidc-issuer",
        "https://issuer.test",
        "--oidc-audience",
        "maas",
        "--oidc-jwks",
        maas_testkit::workspace_root()
            .join("control-plane/tests/fixtures/jwks.json")
            .to_str()
            .expect("utf-8"),
    ]);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8(output.stdout).expect("utf-8");
    assert!(yaml.contains("port_value: 18080 }"));
    assert!(yaml.contains("port_value: 9901 }"));
    assert!(yaml.contains(r#"value: "{\"keys\":[]}""#));
    assert!(yaml.contains(r#"filename: "/opt/maas_filter.wasm""#));
    assert!(yaml.contains(r#"path: "/dev/stdout""#));
    // The last `=` splits name from address, so a name may contain `=`.
    assert!(yaml.contains(r#"exact: "org/m=2""#));
    assert!(yaml.contains("cluster: model_org_m_2_1,"));
    assert!(yaml.contains(r#"socket_address: { address: "127.0.0.1", port_value: 8090 }"#));
    assert!(yaml.contains(r#"issuer: "https://issuer.test""#));
    assert!(yaml.contains(r#"audiences: [ "maas" ]"#));
}

#[test]
fn reports_bad_arguments() {
    for args in [
        &["--model", "m1=127.0.0.1:8000"][..],
        &["--filter-config", "/nonexistent.json"],
        &["--bogus"],
    ] {
        let output = render(args);
        assert!(!output.status.success(), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
    let config = maas_testkit::workspace_root().join("envoy/filter-config.json");
    let output = render(&[
        "--filter-config",
        config.to_str().expect("utf-8"),
        "--oidc-issuer",
        "https://x",
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("go together"));
    let output = render(&["--model", "m1=localhost:80"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"localhost:80\" is not HOST:PORT"),
        "{stderr}"
    );
}

#[test]
fn renders_external_providers_from_a_providers_file_and_envoy_accepts_it() {
    let dir = maas_testkit::envoy::ScratchDir::create().expect("dir");
    let config = dir.path().join("filter.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "models": ["m1"],
            "providers": [
                {"name": "openai", "kind": "openai-compatible"},
                {"name": "anthropic", "kind": "anthropic"}
            ],
            "external_models": [{"id": "gpt-4o", "provider": "openai", "model": "gpt-4o-2024-08-06"}],
            "fallbacks": {"gpt-4o": [{"provider": "anthropic", "model": "claude-sonnet-4-5"}]},
            "subscriptions": {}
        })
        .to_string(),
    )
    .expect("config");
    let providers = dir.path().join("providers.json");
    std::fs::write(
        &providers,
        r#"[{"name": "openai", "host": "api.openai.com", "secret_file": "/etc/maas/openai.key"},
            {"name": "anthropic", "host": "api.anthropic.com", "timeout_secs": 120,
             "secret_file": "/etc/maas/anthropic.key"}]"#,
    )
    .expect("providers");
    let sds = dir.path().join("sds");
    let out = dir.path().join("envoy.yaml");
    let output = render(&[
        "--filter-config",
        config.to_str().expect("utf-8"),
        "--model",
        "m1=127.0.0.1:8000",
        "--providers",
        providers.to_str().expect("utf-8"),
        "--credential-sds-dir",
        sds.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = std::fs::read_to_string(&out).expect("bootstrap");
    assert!(yaml.contains("- name: provider_openai\n"), "{yaml}");
    assert!(yaml.contains(r#"sni: "api.anthropic.com""#));
    // The kind decides the header: Anthropic's key goes in x-api-key.
    assert!(yaml.contains(r#"header: "x-api-key""#));
    assert!(yaml.contains("refresh_cluster_on_retry: true"));
    assert!(
        !yaml.contains("/etc/maas/anthropic.key"),
        "only the SDS file names the key file"
    );
    let sds_file = std::fs::read_to_string(sds.join("provider_anthropic_credential.sds.yaml"))
        .expect("SDS file written");
    assert!(
        sds_file.contains(r#"filename: "/etc/maas/anthropic.key""#),
        "{sds_file}"
    );
    maas_testkit::envoy::validate(&out).expect("Envoy accepts the bootstrap");

    // Out of step with the filter configuration: refused, naming what.
    std::fs::write(
        &providers,
        r#"[{"name": "openai", "host": "api.openai.com", "secret_file": "/k"}]"#,
    )
    .expect("providers");
    let output = render(&[
        "--filter-config",
        config.to_str().expect("utf-8"),
        "--providers",
        providers.to_str().expect("utf-8"),
        "--credential-sds-dir",
        sds.to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no entry for provider \"anthropic\""),
        "{stderr}"
    );
    let output = render(&[
        "--filter-config",
        config.to_str().expect("utf-8"),
        "--providers",
        providers.to_str().expect("utf-8"),
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("go together"));
}
