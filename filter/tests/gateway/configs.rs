//! The configurations we ship are the ones we test: every bootstrap passes
//! `envoy --mode validate` with the real filter (which also runs the filter's
//! configuration parser), and a bad configuration keeps Envoy from serving.

use crate::support::*;
use maas_testkit::{
    gateway_template, render_gateway, validate_yaml, workspace_root, GatewaySpec, StartError,
};
use std::net::SocketAddr;

fn render(config: serde_json::Value) -> String {
    let up: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    let spec = GatewaySpec {
        control_plane: None,
        limiter: None,
        oidc: None,
        providers: Vec::new(),
        credential_sds_dir: None,
        listen_port: 8080,
        admin_port: 9901,
        wasm_path: maas_testkit::envoy::filter_wasm(),
        filter_config: config,
        access_log_path: "/dev/null".into(),
        models: vec![("smollm2-135m-instruct".into(), up)],
    };
    render_gateway(&gateway_template(), &spec).unwrap()
}

#[test]
fn the_shipped_demo_configuration_validates() {
    let demo = std::fs::read_to_string(workspace_root().join("envoy/filter-config.json")).unwrap();
    let demo: serde_json::Value = serde_json::from_str(&demo).unwrap();
    validate_yaml(&render(demo)).unwrap();
}

#[test]
fn a_bad_filter_configuration_stops_envoy_and_names_the_field() {
    let mut c = base_config();
    c["subscriptions"]["free"]["limits"] = serde_json::json!({"tokens": ["20000/fortnight"]});
    let err = validate_yaml(&render(c.clone())).unwrap_err();
    assert!(err.contains("subscriptions.free.limits.tokens[0]"), "{err}");

    let up = maas_testkit::MockUpstream::start();
    let started = maas_testkit::Gateway::builder()
        .filter_config(c)
        .model("m1", up.addr())
        .try_start();
    match started {
        Err(StartError::Exited { log_tail, .. }) | Err(StartError::NotReady { log_tail, .. }) => {
            assert!(
                log_tail.contains("subscriptions.free.limits.tokens[0]"),
                "{log_tail}"
            );
        }
        Err(other) => panic!("unexpected start error: {other}"),
        Ok(_) => panic!("Envoy served with a broken filter configuration"),
    }
}
