//! An Anthropic model end to end, on loopback: the real Envoy and the real
//! filter translate OpenAI's chat completions into Anthropic's Messages API
//! and back, over TLS to a stand-in provider (the mock's `/v1/messages`
//! behind a TLS-terminating Envoy), with the credential Envoy injects; the
//! answers are charged as the provider reported them, and its failures
//! reach the client as OpenAI errors it can act on.
//!
//! Needs the Envoy binary, the release filter module and the `openssl` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use maas_filter::auth::keys::KeyDigest;
use maas_testkit::envoy::{envoy_binary, ScratchDir, TlsFront};
use maas_testkit::mock_upstream::TOKEN_TEXT;
use maas_testkit::{CredentialSpec, Gateway, MockUpstream, ProviderSpec, Response, TestCa};
use serde_json::{json, Value};

const HOST: &str = "api.anthropic.test";
const CLIENT_KEY: &str = "sk-maas-client-7";
const SECRET: &str = "sk-ant-provider-secret";

struct StandIn {
    upstream: MockUpstream,
    // Held for their lifetime: the front serves, the CA's files back it.
    _front: TlsFront,
    _ca: TestCa,
    _secrets: ScratchDir,
    gateway: Gateway,
}

/// The gateway with one local-looking id, `claude`, served by an Anthropic
/// provider as `claude-test-model`.
fn start() -> StandIn {
    start_with_timeout(None)
}

/// [`start`], with the provider's request timeout.
fn start_with_timeout(timeout: Option<std::time::Duration>) -> StandIn {
    start_with(timeout, None)
}

/// [`start`], with the provider's request timeout and another bootstrap
/// template.
fn start_with(timeout: Option<std::time::Duration>, template: Option<String>) -> StandIn {
    envoy_binary();
    let ca = TestCa::create("maas test anthropic CA");
    let cert = ca.issue(HOST);
    let upstream = MockUpstream::start();
    let front = TlsFront::start(&cert.cert, &cert.key, upstream.addr());
    let secrets = ScratchDir::create().unwrap();
    let secret_file = secrets.path().join("anthropic.key");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let filter = json!({
        "providers": [{ "name": "anthropic", "kind": "anthropic" }],
        "external_models": [{ "id": "claude", "provider": "anthropic", "model": "claude-test-model" }],
        "default_max_tokens": 64,
        "subscriptions": {
            "pro": { "models": ["claude"], "limits": { "tokens": ["100000/min"] } }
        },
        "keys": [{
            "id": "client-7", "owner": "dana@example.com", "subscription": "pro",
            "sha256": KeyDigest::of(CLIENT_KEY).to_hex()
        }]
    });
    let mut builder = Gateway::builder();
    if let Some(template) = template {
        builder = builder.template(template);
    }
    let gateway = builder
        .filter_config(filter)
        .provider(ProviderSpec {
            name: "anthropic".into(),
            address: front.addr().ip().to_string(),
            port: front.addr().port(),
            host: HOST.into(),
            ca_file: Some(ca.cert().to_owned()),
            credential: CredentialSpec {
                header: "x-api-key".into(),
                value_prefix: None,
                secret_file,
            },
            models: vec!["claude".into()],
            http2: true,
            timeout,
        })
        .start();
    StandIn {
        upstream,
        _front: front,
        _ca: ca,
        _secrets: secrets,
        gateway,
    }
}

fn chat(s: &StandIn, body: Value, extra: &[(&str, &str)]) -> Response {
    let bearer = format!("Bearer {CLIENT_KEY}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    s.gateway.post_json("/v1/chat/completions", &headers, &body)
}

fn question(stream: bool) -> Value {
    json!({
        "model": "claude",
        "max_tokens": 5,
        "stream": stream,
        "messages": [
            { "role": "system", "content": "Answer briefly." },
            { "role": "user", "content": "two words here" }
        ]
    })
}

#[test]
fn a_chat_completion_is_asked_in_messages_and_answered_in_openai_format() {
    let s = start();
    let response = chat(&s, question(false), &[("x-mock-completion-tokens", "3")]);
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        TOKEN_TEXT.repeat(3)
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // The mock counts the system prompt, the words and 3 per message.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(
        response.header("content-length"),
        Some(response.text().len().to_string().as_str())
    );

    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(seen.header("host"), Some(HOST));
    assert_eq!(
        seen.json(),
        json!({"model": "claude-test-model", "max_tokens": 5, "system": "Answer briefly.",
               "messages": [{"role": "user", "content": "two words here"}]})
    );

    let audit = s.gateway.await_access_log(1);
    let record = audit.last().unwrap();
    assert_eq!(record["usage"], "reported");
    assert_eq!(record["total_tokens"], 11);
    assert_eq!(record["model"], "claude");
}

#[test]
fn a_stream_is_translated_event_by_event_and_charged_as_reported() {
    let s = start();
    let response = chat(&s, question(true), &[("x-mock-completion-tokens", "4")]);
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream")));
    let data = response.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "claude"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, TOKEN_TEXT.repeat(4));
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    // Not asked for: the usage chunk the translation makes is removed again.
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{data:?}");
    let record = s.gateway.await_access_log(1).pop().unwrap();
    assert_eq!(
        (record["usage"].as_str(), record["total_tokens"].as_u64()),
        (Some("reported"), Some(12))
    );

    let mut asked = question(true);
    asked["stream_options"] = json!({"include_usage": true});
    let response = chat(&s, asked, &[("x-mock-completion-tokens", "2")]);
    let usage: Vec<Value> = response
        .sse_data()
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|c| c.get("usage").is_some())
        .collect();
    assert_eq!(usage.len(), 1, "{:?}", response.sse_data());
    assert_eq!(usage[0]["usage"]["completion_tokens"], 2);
}

#[test]
fn the_providers_failures_become_openai_errors_the_client_can_act_on() {
    let s = start();
    let cases = [
        ("401", 502, "provider_credential_rejected"),
        ("429", 429, "provider_rate_limited"),
        ("529", 503, "provider_overloaded"),
        ("400", 400, "provider_rejected_request"),
    ];
    for (status, client_status, code) in cases {
        let response = chat(&s, question(false), &[("x-mock-status", status)]);
        assert_eq!(
            response.status,
            client_status,
            "{status}: {}",
            response.text()
        );
        let body = response.json();
        assert_eq!(body["error"]["code"], code, "{status}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mock failure"),
            "{body}"
        );
    }
    // Refusals before any output are charged no tokens.
    for record in s.gateway.await_access_log(cases.len()) {
        assert_eq!(record["total_tokens"], 0, "{record}");
    }
    // What Anthropic cannot express never leaves the gateway.
    let mut tools = question(false);
    tools["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let response = chat(&s, tools, &[]);
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["param"], "tools");
    assert_eq!(s.upstream.requests().len(), cases.len());
}

#[test]
fn a_provider_slower_than_its_timeout_is_answered_504_in_openai_shape_and_charged_its_reservation()
{
    let s = start_with_timeout(Some(std::time::Duration::from_millis(500)));
    // Had the provider's answer been waited for, it would be a 200.
    let response = chat(&s, question(false), &[("x-mock-delay-ms", "5000")]);
    assert_eq!(response.status, 504, "{}", response.text());
    let body = response.json();
    assert_eq!(body["error"]["type"], "upstream_error", "{body}");
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("response_timeout"),
        "{body}"
    );
    // The provider had the prompt and goes on generating, billing what it
    // generates, none of which was seen: the whole reservation is charged.
    let record = s.gateway.await_access_log(1).pop().unwrap();
    assert_eq!(record["status"], 504);
    assert_eq!(record["usage"], "reserved", "{record}");
    assert_eq!(
        record["total_tokens"], record["reserved_tokens"],
        "{record}"
    );
}

/// Were the gateway role ever missing from the listener (an EnvoyFilter
/// whose anchor is absent is skipped by Istio without an error), a client's
/// own `x-maas-model` would route to the provider's cluster, whose
/// credential injector adds the operator's key. The backend role there
/// sends nothing the gateway role did not admit.
#[test]
fn a_request_the_gateway_role_never_saw_does_not_reach_the_provider() {
    let full = maas_testkit::gateway::gateway_template();
    let start = full
        .find("          - name: envoy.filters.http.wasm\n")
        .expect("the template's gateway role");
    let end = full
        .find("          - name: envoy.filters.http.router\n")
        .expect("the template's router");
    assert!(start < end);
    let without_gateway_role = format!("{}{}", &full[..start], &full[end..]);
    let s = start_with(None, Some(without_gateway_role));
    let response = s.gateway.post_json(
        "/v1/chat/completions",
        &[("x-maas-model", "claude")],
        &question(false),
    );
    assert_eq!(response.status, 500, "{}", response.text());
    assert_eq!(response.json()["error"]["code"], "not_admitted");
    assert!(
        s.upstream.requests().is_empty(),
        "nothing reached the provider"
    );
}
