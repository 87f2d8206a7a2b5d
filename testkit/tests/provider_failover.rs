//! Failover between a model's backends, end to end on loopback: the real
//! Envoy retries a request that a backend failed before answering on the
//! model's next backend (the filter configuration's `fallbacks`), each
//! attempt through that backend's own cluster, where the filter's backend
//! role makes the request that provider's own (its model name, its wire
//! format) and Envoy injects that provider's key. The client gets one
//! answer, in OpenAI's format, and is charged once, for the attempt that
//! answered; the audit record and the metrics show the attempts. Nothing a
//! client sends chooses the path a provider is sent (`x-maas-path` was the
//! backend role's own header once).
//!
//! Two stand-in providers over TLS (an OpenAI-compatible one and an
//! Anthropic one, each a TLS-terminating Envoy in front of the mock), a
//! local model, and a provider nobody listens for.
//! Needs the Envoy binary, the release filter module and the `openssl` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use maas_filter::auth::keys::KeyDigest;
use maas_testkit::envoy::{envoy_binary, ScratchDir, TlsFront};
use maas_testkit::mock_upstream::TOKEN_TEXT;
use maas_testkit::{CredentialSpec, Gateway, MockUpstream, ProviderSpec, Response, TestCa};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};

const OPENAI_HOST: &str = "api.openai-a.test";
const ANTHROPIC_HOST: &str = "api.anthropic-b.test";
const CLIENT_KEY: &str = "sk-maas-client-9";
const OPENAI_SECRET: &str = "sk-openai-a-secret";
const ANTHROPIC_SECRET: &str = "sk-ant-b-secret";

struct Stack {
    upstream: MockUpstream,
    _fronts: Vec<TlsFront>,
    _ca: TestCa,
    _secrets: ScratchDir,
    gateway: Gateway,
}

/// A loopback address nothing listens on (bound, then let go).
fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn provider(
    name: &str,
    addr: SocketAddr,
    host: &str,
    ca: &TestCa,
    credential: CredentialSpec,
    models: &[&str],
) -> ProviderSpec {
    ProviderSpec {
        name: name.into(),
        address: addr.ip().to_string(),
        port: addr.port(),
        host: host.into(),
        ca_file: Some(ca.cert().to_owned()),
        credential,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        http2: true,
        timeout: None,
    }
}

/// `header: [prefix]<the secret in secret_file>`.
fn key(header: &str, prefix: Option<&str>, secret_file: std::path::PathBuf) -> CredentialSpec {
    CredentialSpec {
        header: header.into(),
        value_prefix: prefix.map(str::to_owned),
        secret_file,
    }
}

/// Models and their chains:
/// - `gpt-x`: `openai-a` (as `gpt-x-a`), then `anthropic-b` (as `claude-b`);
/// - `gpt-dead`: `dead` (nothing listens), then `openai-a` (as `gpt-x-a`);
/// - `local-m`: a local model server that is down, then `openai-a` (as `m-remote`).
fn start() -> Stack {
    envoy_binary();
    let ca = TestCa::create("maas test failover CA");
    let upstream = MockUpstream::start();
    let openai_cert = ca.issue(OPENAI_HOST);
    let anthropic_cert = ca.issue(ANTHROPIC_HOST);
    let openai_front = TlsFront::start(&openai_cert.cert, &openai_cert.key, upstream.addr());
    let anthropic_front =
        TlsFront::start(&anthropic_cert.cert, &anthropic_cert.key, upstream.addr());
    let secrets = ScratchDir::create().unwrap();
    let secret = |name: &str, value: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path
    };
    let filter = json!({
        "models": ["local-m"],
        "providers": [
            { "name": "openai-a", "kind": "openai-compatible" },
            { "name": "anthropic-b", "kind": "anthropic" },
            { "name": "dead", "kind": "openai-compatible" }
        ],
        "external_models": [
            { "id": "gpt-x", "provider": "openai-a", "model": "gpt-x-a" },
            { "id": "gpt-dead", "provider": "dead", "model": "gpt-dead" }
        ],
        "fallbacks": {
            "gpt-x": [{ "provider": "anthropic-b", "model": "claude-b" }],
            "gpt-dead": [{ "provider": "openai-a", "model": "gpt-x-a" }],
            "local-m": [{ "provider": "openai-a", "model": "m-remote" }]
        },
        "default_max_tokens": 64,
        "subscriptions": {
            "pro": { "models": ["gpt-x", "gpt-dead", "local-m"], "limits": { "tokens": ["100000/min"] } }
        },
        "keys": [{
            "id": "client-9", "owner": "erin@example.com", "subscription": "pro",
            "sha256": KeyDigest::of(CLIENT_KEY).to_hex()
        }]
    });
    let gateway = Gateway::builder()
        .filter_config(filter)
        .model("local-m", dead_addr())
        .provider(provider(
            "openai-a",
            openai_front.addr(),
            OPENAI_HOST,
            &ca,
            key(
                "authorization",
                Some("Bearer "),
                secret("openai-a.key", OPENAI_SECRET),
            ),
            &["gpt-x"],
        ))
        .provider(provider(
            "anthropic-b",
            anthropic_front.addr(),
            ANTHROPIC_HOST,
            &ca,
            key(
                "x-api-key",
                None,
                secret("anthropic-b.key", ANTHROPIC_SECRET),
            ),
            &[],
        ))
        .provider(provider(
            "dead",
            dead_addr(),
            "api.dead.test",
            &ca,
            key(
                "authorization",
                Some("Bearer "),
                secret("dead.key", "sk-dead"),
            ),
            &["gpt-dead"],
        ))
        .start();
    Stack {
        upstream,
        _fronts: vec![openai_front, anthropic_front],
        _ca: ca,
        _secrets: secrets,
        gateway,
    }
}

fn chat(s: &Stack, model: &str, stream: bool, extra: &[(&str, &str)]) -> Response {
    let bearer = format!("Bearer {CLIENT_KEY}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    let body = json!({
        "model": model,
        "max_tokens": 8,
        "stream": stream,
        "messages": [{ "role": "user", "content": "two words" }]
    });
    s.gateway.post_json("/v1/chat/completions", &headers, &body)
}

fn provider_responses(s: &Stack, provider: &str, status: &str) -> f64 {
    s.gateway
        .metric(
            "maas_provider_responses_total",
            &[("provider", provider), ("status", status)],
        )
        .unwrap_or(0.0)
}

#[test]
fn a_429_moves_the_request_to_the_next_provider_in_its_own_wire_format() {
    let s = start();
    let response = chat(
        &s,
        "gpt-x",
        false,
        &[
            ("x-mock-status", "429"),
            ("x-mock-status-host", OPENAI_HOST),
            ("x-mock-completion-tokens", "3"),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-x");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        TOKEN_TEXT.repeat(3)
    );
    assert_eq!(response.header("x-maas-backend"), None);

    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (first, second) = (&seen[0], &seen[1]);
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(first.header("host"), Some(OPENAI_HOST));
    assert_eq!(first.json()["model"], "gpt-x-a");
    assert_eq!(
        first.header("authorization"),
        Some(format!("Bearer {OPENAI_SECRET}").as_str())
    );
    assert_eq!(second.path, "/v1/messages");
    assert_eq!(second.header("host"), Some(ANTHROPIC_HOST));
    assert_eq!(second.json()["model"], "claude-b");
    assert_eq!(second.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(second.header("x-api-key"), Some(ANTHROPIC_SECRET));
    assert_eq!(
        second.header("authorization"),
        None,
        "the first provider's key must not reach the second"
    );

    let record = s.gateway.await_access_log(1).pop().unwrap();
    assert_eq!(record["status"], 200);
    assert_eq!(record["backend"], "anthropic-b");
    assert_eq!(record["attempts"], 2);
    assert_eq!(record["usage"], "reported");
    let charged = record["total_tokens"].as_f64().unwrap();
    assert_eq!(charged, body["usage"]["total_tokens"].as_f64().unwrap());
    // Charged once: the subscription's token counter has exactly this.
    assert_eq!(
        s.gateway.metric(
            "maas_total_tokens_total",
            &[("subscription", "pro"), ("model", "gpt-x")]
        ),
        Some(charged)
    );
    assert_eq!(provider_responses(&s, "openai-a", "429"), 1.0);
    assert_eq!(provider_responses(&s, "anthropic-b", "2xx"), 1.0);
}

#[test]
fn a_stream_fails_over_before_its_first_byte_and_is_translated() {
    let s = start();
    let response = chat(
        &s,
        "gpt-x",
        true,
        &[
            ("x-mock-status", "503"),
            ("x-mock-status-host", OPENAI_HOST),
            ("x-mock-completion-tokens", "4"),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let data = response.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, TOKEN_TEXT.repeat(4));
    let record = s.gateway.await_access_log(1).pop().unwrap();
    assert_eq!(
        (record["backend"].as_str(), record["attempts"].as_u64()),
        (Some("anthropic-b"), Some(2))
    );
    assert_eq!(record["usage"], "reported");
}

#[test]
fn a_backend_nobody_answers_for_fails_over_on_the_connect_failure() {
    let s = start();
    let response = chat(&s, "gpt-dead", false, &[("x-mock-completion-tokens", "2")]);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json()["model"],
        "gpt-x-a",
        "the provider's answer, as it came"
    );
    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("host"), Some(OPENAI_HOST));
    assert_eq!(seen[0].json()["model"], "gpt-x-a");
    let record = s.gateway.await_access_log(1).pop().unwrap();
    assert_eq!(
        (record["backend"].as_str(), record["attempts"].as_u64()),
        (Some("openai-a"), Some(2))
    );
}

#[test]
fn a_local_model_that_is_down_falls_back_to_a_provider_without_our_callers_identity() {
    let s = start();
    let response = chat(&s, "local-m", false, &[("x-mock-completion-tokens", "2")]);
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.json()["model"], "m-remote");
    assert_eq!(seen.header("host"), Some(OPENAI_HOST));
    for identity in ["x-maas-user", "x-maas-key-id", "x-maas-subscription"] {
        assert_eq!(seen.header(identity), None, "{identity} reached a provider");
    }
    let record = s.gateway.await_access_log(1).pop().unwrap();
    assert_eq!(
        (record["backend"].as_str(), record["attempts"].as_u64()),
        (Some("openai-a"), Some(2))
    );
}

#[test]
fn when_every_backend_fails_the_client_gets_an_openai_error_and_pays_no_tokens() {
    let s = start();
    let response = chat(&s, "gpt-x", false, &[("x-mock-status", "503")]);
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.json()["error"]["code"], "provider_overloaded");
    assert_eq!(s.upstream.requests().len(), 2);
    let record = s.gateway.await_access_log(1).pop().unwrap();
    assert_eq!(record["attempts"], 2);
    assert_eq!(record["backend"], "anthropic-b");
    assert_eq!(record["total_tokens"], 0);
    assert_eq!(provider_responses(&s, "openai-a", "5xx"), 1.0);
    assert_eq!(provider_responses(&s, "anthropic-b", "5xx"), 1.0);
}

#[test]
fn a_client_cannot_choose_the_endpoint_a_provider_runs() {
    let s = start();
    let response = chat(
        &s,
        "gpt-x",
        false,
        &[
            ("x-maas-path", "/v1/batches/batch_1/cancel"),
            ("x-mock-completion-tokens", "2"),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].header("x-maas-path"), None);
}

#[test]
fn each_attempt_gets_its_own_providers_path_and_no_path_header() {
    let s = start();
    let response = chat(
        &s,
        "gpt-x",
        false,
        &[
            ("x-maas-path", "/v1/batches/batch_1/cancel"),
            ("x-mock-status", "429"),
            ("x-mock-status-host", OPENAI_HOST),
            ("x-mock-completion-tokens", "2"),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].header("host"), Some(OPENAI_HOST));
    assert_eq!(seen[0].path, "/v1/chat/completions");
    // Attempt 2's header map still has attempt 1's `:path`: the gateway's
    // path comes back from filter state.
    assert_eq!(seen[1].header("host"), Some(ANTHROPIC_HOST));
    assert_eq!(seen[1].path, "/v1/messages");
    for request in &seen {
        assert_eq!(request.header("x-maas-path"), None, "{}", request.path);
    }
}
