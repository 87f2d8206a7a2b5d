//! The checked-in OpenAPI description and the served API agree: it parses,
//! every operation it documents is routed (no 404 or 405 for it), and every
//! route the server has is documented.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use maas_control_plane::api::{router, AppState, Authenticator};
use maas_control_plane::store::Store;
use maas_filter::auth::keys::KeyDigest;
use serde_json::Value;

/// The routes `api::router` serves, as (method, OpenAPI path).
const SERVED: &[(&str, &str)] = &[
    ("post", "/maas-api/v1/api-keys"),
    ("get", "/maas-api/v1/api-keys"),
    ("delete", "/maas-api/v1/api-keys/{id}"),
    ("get", "/maas-api/v1/subscriptions"),
    ("put", "/maas-api/v1/subscriptions/{name}"),
    ("get", "/maas-api/v1/sync"),
    ("get", "/maas-api/v1/sync/keys/{id}"),
    ("get", "/maas-api/v1/usage"),
    ("get", "/maas-api/v1/usage/limits"),
    ("get", "/maas-api/v1/prices"),
    ("put", "/maas-api/v1/prices/{model}"),
    ("delete", "/maas-api/v1/prices/{model}"),
    ("get", "/metrics"),
    ("get", "/maas-api/health"),
    ("get", "/maas-api/ui"),
];

fn documented() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push((method.clone(), path.clone()));
        }
    }
    ops.sort();
    ops
}

#[test]
fn the_description_lists_exactly_the_served_operations() {
    let mut served: Vec<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented(), served);
}

#[test]
fn every_documented_operation_is_routed() {
    let dir = std::env::temp_dir().join(format!("maas-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("db").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = runtime.block_on(async {
        let state = Arc::new(AppState {
            store: Store::connect(&url).await.unwrap(),
            auth: Authenticator::new(Some(KeyDigest::of("t")), None, None),
            max_key_lifetime: None,
            max_keys_minted_per_day: 100,
            admission: Default::default(),
            price_exposition: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        addr
    });
    for (method, path) in documented() {
        let concrete = path
            .replace("{id}", "someid")
            .replace("{name}", "somename")
            .replace("{model}", "somemodel");
        let r = maas_testkit::request(
            &method.to_uppercase(),
            &format!("http://{addr}{concrete}"),
            &[
                ("authorization", "Bearer t"),
                ("content-type", "application/json"),
            ],
            (method == "post" || method == "put").then_some(b"{}".as_slice()),
        );
        // A routed operation answers with its own status (200, 400, 404 for
        // an absent key...), never the router's unknown path or method.
        let routed = !(r.status == 405 || (r.status == 404 && r.text().contains("unknown path")));
        assert!(routed, "{method} {path}: {} {}", r.status, r.text());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
