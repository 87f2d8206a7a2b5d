//! What the filter accepts and refuses about the request itself: endpoints,
//! models, bodies.

use crate::support::*;
use serde_json::json;

#[test]
fn models_are_filtered_by_subscription() {
    let s = Stack::start(base_config());
    let list = |key: &str| {
        let r = s.gateway.request(
            "GET",
            "/v1/models",
            &[("authorization", &format!("Bearer {key}"))],
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["object"], "list");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(list(FREE_KEY), vec!["m1"]);
    assert_eq!(list(GOLD_KEY), vec!["m1", "m2"]);
    let one = s.gateway.request(
        "GET",
        "/v1/models/m1",
        &[("authorization", &format!("Bearer {FREE_KEY}"))],
        None,
    );
    assert_eq!(one.json()["id"], "m1");
    let hidden = s.gateway.request(
        "GET",
        "/v1/models/m2",
        &[("authorization", &format!("Bearer {FREE_KEY}"))],
        None,
    );
    assert_error(&hidden, 404, "model_not_found");
    let anonymous = s.gateway.request("GET", "/v1/models", &[], None);
    assert_error(&anonymous, 401, "missing_api_key");
    assert!(
        s.upstream.requests().is_empty(),
        "the filter answers /v1/models itself"
    );
}

#[test]
fn a_model_whose_id_has_a_slash_is_retrieved_as_sdks_ask_for_it() {
    let mut config = base_config();
    config["models"] = json!(["m1", "meta-llama/Llama-3.1-8B"]);
    config["subscriptions"]["free"]["models"] = json!(["m1", "meta-llama/Llama-3.1-8B"]);
    config["subscriptions"]["gold"]["models"] = json!(["m1"]);
    let upstream = maas_testkit::MockUpstream::start();
    let gateway = maas_testkit::Gateway::builder()
        .filter_config(config)
        .model("m1", upstream.addr())
        .model("meta-llama/Llama-3.1-8B", upstream.addr())
        .start();
    let get = |path: &str| {
        gateway.request(
            "GET",
            path,
            &[("authorization", &format!("Bearer {FREE_KEY}"))],
            None,
        )
    };
    let r = get("/v1/models/meta-llama/Llama-3.1-8B");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "meta-llama/Llama-3.1-8B");
    assert_error(
        &get("/v1/models/meta-llama/Llama-3.1-70B"),
        404,
        "model_not_found",
    );
    assert!(upstream.requests().is_empty());
}

#[test]
fn models_outside_the_subscription_or_unknown_get_404() {
    let s = Stack::start(base_config());
    let outside = s.chat(FREE_KEY, &chat_body("m2", 8), &[]);
    let body = assert_error(&outside, 404, "model_not_found");
    assert_eq!(body["error"]["param"], "model");
    let unknown = s.chat(FREE_KEY, &chat_body("gpt-17", 8), &[]);
    assert_error(&unknown, 404, "model_not_found");
    assert!(s.upstream.requests().is_empty());
}

#[test]
fn bad_bodies_get_400_and_oversized_ones_413() {
    let s = Stack::start(base_config());
    let auth = format!("Bearer {FREE_KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let post = |body: &[u8]| {
        s.gateway
            .request("POST", "/v1/chat/completions", &headers, Some(body))
    };

    assert_error(&post(b"{\"model\": \"m1\", "), 400, "invalid_json");
    assert_error(&post(b"[1,2,3]"), 400, "invalid_json");
    assert_error(&post(br#"{"messages":[]}"#), 400, "missing_model");
    assert_error(
        &post(br#"{"model":"m1","max_tokens":"lots"}"#),
        400,
        "invalid_value",
    );
    // The same field twice is ambiguous: the filter and the model server
    // could each read a different one.
    assert_error(
        &post(br#"{"model":"m1","model":"m2"}"#),
        400,
        "invalid_json",
    );
    assert_error(
        &post(br#"{"model":"m1","mod\u0065l":"m2"}"#),
        400,
        "invalid_json",
    );
    let empty = s
        .gateway
        .request("POST", "/v1/chat/completions", &headers, None);
    assert_error(&empty, 400, "missing_body");

    let mut big = br#"{"model":"m1","messages":[{"role":"user","content":""#.to_vec();
    big.resize(1024 * 1024 + 64, b'a');
    big.extend_from_slice(br#""}]}"#);
    assert_error(&post(&big), 413, "request_too_large");
    assert!(s.upstream.requests().is_empty());
}

#[test]
fn unknown_paths_and_methods_are_refused() {
    let s = Stack::start(base_config());
    let auth = format!("Bearer {FREE_KEY}");
    let h = [("authorization", auth.as_str())];
    assert_error(
        &s.gateway.request("POST", "/v1/embeddings", &h, Some(b"{}")),
        404,
        "unknown_url",
    );
    assert_error(
        &s.gateway.request("GET", "/admin", &h, None),
        404,
        "unknown_url",
    );
    let r = s.gateway.request("GET", "/v1/chat/completions", &h, None);
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    // Path tricks are normalised by Envoy before the filter compares.
    let r = s.gateway.request(
        "POST",
        "/v1//chat/./completions",
        &h,
        Some(chat_body("m1", 4).to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(s
        .upstream
        .requests()
        .iter()
        .all(|q| q.path == "/v1/chat/completions"));
}

#[test]
fn each_model_is_routed_to_its_own_cluster() {
    let m1 = maas_testkit::MockUpstream::start();
    let m2 = maas_testkit::MockUpstream::start();
    let gateway = maas_testkit::Gateway::builder()
        .filter_config(base_config())
        .model("m1", m1.addr())
        .model("m2", m2.addr())
        .start();
    let auth = format!("Bearer {GOLD_KEY}");
    for model in ["m1", "m2", "m2"] {
        let r = gateway.post_json(
            "/v1/chat/completions",
            &[("authorization", &auth)],
            &chat_body(model, 4),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(m1.requests().len(), 1);
    assert_eq!(m2.requests().len(), 2);
    assert!(m2
        .requests()
        .iter()
        .all(|r| r.json()["model"] == json!("m2")));
}

#[test]
fn upstream_failures_are_openai_shaped() {
    // A model whose server is down: Envoy's own 503, reshaped to JSON.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = maas_testkit::MockUpstream::start();
    let gateway = maas_testkit::Gateway::builder()
        .filter_config(base_config())
        .model("m1", up.addr())
        .model("m2", dead)
        .start();
    let auth = format!("Bearer {GOLD_KEY}");
    let r = gateway.post_json(
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &chat_body("m2", 4),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "upstream_error");
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");

    // A model server error passes through with its own status and body.
    let r = gateway.post_json(
        "/v1/chat/completions",
        &[("authorization", &auth), ("x-mock-status", "500")],
        &chat_body("m1", 4),
    );
    assert_eq!(r.status, 500);
    assert!(r.json()["error"].is_object());
}
