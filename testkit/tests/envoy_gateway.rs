//! The harness against a real Envoy, with the do-nothing proxy-wasm module in
//! the filter's place: these tests check the template and the harness (start,
//! readiness, routing by `x-maas-model`, admin, metrics, access log, stop),
//! not the filter. They need the Envoy binary (`make test` fetches it) and
//! fail, with that hint, without it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use maas_testkit::envoy::{envoy_binary, passthrough_wasm_file};
use maas_testkit::{
    eventually, gateway_template, render_gateway, validate, validate_yaml, Gateway, GatewaySpec,
    MockUpstream, StartError,
};
use serde_json::json;

fn passthrough_gateway() -> maas_testkit::GatewayBuilder {
    Gateway::builder()
        .wasm_path(passthrough_wasm_file().expect("write the passthrough module"))
        .filter_config(json!({ "ignored": "by the passthrough module" }))
}

#[test]
fn shipped_template_validates() {
    envoy_binary();
    let spec = GatewaySpec {
        control_plane: None,
        limiter: None,
        oidc: None,
        providers: Vec::new(),
        credential_sds_dir: None,
        listen_port: 8080,
        admin_port: 9901,
        wasm_path: passthrough_wasm_file().expect("write the passthrough module"),
        filter_config: json!({ "a": "b" }),
        access_log_path: "/dev/null".into(),
        models: vec![
            ("m1".into(), "127.0.0.1:8000".parse().expect("addr")),
            (
                "Odd/Name: \"x\"".into(),
                "[::1]:8001".parse().expect("addr"),
            ),
        ],
    };
    let rendered = render_gateway(&gateway_template(), &spec).expect("renders");
    validate_yaml(&rendered).unwrap_or_else(|error| panic!("{error}\n{rendered}"));

    // With a control plane and an OIDC issuer (the test issuer's JWKS).
    let jwks = std::fs::read_to_string(
        maas_testkit::workspace_root().join("control-plane/tests/fixtures/jwks.json"),
    )
    .expect("the test issuer's JWKS");
    let full = GatewaySpec {
        control_plane: Some("127.0.0.1:8090".parse().expect("addr")),
        limiter: Some("127.0.0.1:8081".parse().expect("addr")),
        oidc: Some(maas_testkit::OidcSpec {
            issuer: "https://issuer.test".into(),
            audience: "maas".into(),
            jwks,
        }),
        ..spec.clone()
    };
    let rendered = render_gateway(&gateway_template(), &full).expect("renders");
    assert!(rendered.contains("- name: envoy.filters.http.jwt_authn"));
    assert!(rendered.contains("- name: limitador"));
    validate_yaml(&rendered).unwrap_or_else(|error| panic!("{error}\n{rendered}"));

    let no_models = GatewaySpec {
        models: Vec::new(),
        ..spec
    };
    let rendered = render_gateway(&gateway_template(), &no_models).expect("renders");
    validate_yaml(&rendered).unwrap_or_else(|error| panic!("{error}\n{rendered}"));

    let error = validate_yaml("static_resources: { clusters: [ { name: 1 } ] }\nbogus: 1\n")
        .expect_err("an unknown field must fail validation");
    assert!(error.contains("bogus"), "{error}");
    assert!(validate(std::path::Path::new("/nonexistent/envoy.yaml")).is_err());
}

#[test]
fn gateway_routes_each_model_to_its_upstream() {
    envoy_binary();
    let first = MockUpstream::start();
    let second = MockUpstream::start();
    // A port nothing listens on: the upstream is down.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut gateway = passthrough_gateway()
        .model("m1", first.addr())
        .model("m2", second.addr())
        .model("down", down)
        .concurrency(2)
        .start();
    assert!(gateway.is_running());
    assert_eq!(gateway.admin_get("/ready").trim(), "LIVE");

    let body = json!({ "model": "m1", "messages": [{ "role": "user", "content": "hi" }] });
    let response = gateway.post_json("/v1/chat/completions", &[("x-maas-model", "m1")], &body);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["usage"]["total_tokens"], 4 + 16);
    assert_eq!(first.requests().len(), 1);
    assert_eq!(first.requests()[0].json(), body);
    assert!(second.requests().is_empty());

    let stream = gateway.post_json(
        "/v1/chat/completions",
        &[("x-maas-model", "m2"), ("x-mock-completion-tokens", "3")],
        &json!({ "stream": true, "stream_options": { "include_usage": true } }),
    );
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    let data = stream.sse_data();
    assert_eq!(data.len(), 3 + 1 + 1 + 1, "{}", stream.text());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(second.requests().len(), 1);

    // An upstream that dies mid-stream: the client sees the body cut short.
    let cut = gateway.post_json(
        "/v1/chat/completions",
        &[("x-maas-model", "m2"), ("x-mock-cut-after", "2")],
        &json!({ "stream": true }),
    );
    assert_eq!(cut.status, 200);
    assert!(cut.body_error.is_some(), "{}", cut.text());
    assert_eq!(cut.sse_data().len(), 2);

    // No model header: the template's catch-all answers, in OpenAI's shape.
    let unrouted = gateway.request("GET", "/v1/anything", &[], None);
    assert_eq!(unrouted.status, 404);
    assert_eq!(unrouted.header("content-type"), Some("application/json"));
    assert_eq!(unrouted.json()["error"]["code"], "unknown_url");

    // Upstream refused: Envoy's local reply, mapped to an OpenAI error body.
    let refused = gateway.post_json(
        "/v1/chat/completions",
        &[("x-maas-model", "down")],
        &json!({}),
    );
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(
        refused.json()["error"]["type"],
        "upstream_error",
        "{}",
        refused.text()
    );

    // The access log line is the filter's audit record; the passthrough
    // module writes none, so each request leaves an empty line.
    eventually(Duration::from_secs(10), || {
        let lines = gateway.access_log_text().matches('\n').count();
        (lines == 5)
            .then_some(())
            .ok_or(format!("{lines} access log lines, want 5"))
    });
    assert!(gateway.access_log().is_empty());

    let completed = eventually(Duration::from_secs(10), || {
        match gateway.metric(
            "envoy_cluster_upstream_rq_completed",
            &[("envoy_cluster_name", "model_m2_1")],
        ) {
            Some(value) if value >= 2.0 => Ok(value),
            other => Err(format!("model_m2_1 completed requests: {other:?}")),
        }
    });
    assert_eq!(completed, 2.0);
    assert!(gateway.envoy_log().len() < 1_000_000);

    // Stopping removes the process and the scratch directory.
    let (pid, dir) = (gateway.pid(), gateway.dir().to_owned());
    drop(gateway);
    let pid = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: signal 0 only checks whether the (reaped) pid still exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "envoy still running");
    assert!(!dir.exists(), "{dir:?} left behind");
}

#[test]
fn a_broken_bootstrap_fails_fast_with_envoys_reason() {
    envoy_binary();
    let started = Instant::now();
    let error = passthrough_gateway()
        .template("admin: { address: { socket_address: { address: 127.0.0.1, port_value: {{ADMIN_PORT}} } } }\nnot_a_field: {{LISTEN_PORT}}\n")
        .try_start()
        .err()
        .expect("Envoy must refuse the bootstrap");
    assert!(matches!(error, StartError::Exited { .. }), "{error}");
    assert!(error.to_string().contains("not_a_field"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let error = passthrough_gateway()
        .template("{{NO_SUCH_PLACEHOLDER}}")
        .try_start()
        .err()
        .expect("render error");
    assert!(matches!(error, StartError::Render(_)), "{error}");
}
