//! External providers through the real Envoy: the backend role in each
//! provider's cluster decides what path the provider is sent, and nothing a
//! client sends can change it or reach the provider.
//!
//! Two stand-in providers over TLS (an OpenAI-compatible one and an
//! Anthropic one, each a TLS-terminating Envoy in front of the mock). Needs
//! the `openssl` CLI besides Envoy and the release filter module.

use maas_filter::auth::keys::KeyDigest;
use maas_testkit::envoy::{ScratchDir, TlsFront};
use maas_testkit::{CredentialSpec, Gateway, MockUpstream, ProviderSpec, Response, TestCa};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;

const OPENAI_HOST: &str = "api.openai-a.test";
const ANTHROPIC_HOST: &str = "api.anthropic-b.test";
const CLIENT_KEY: &str = "sk-maas-client-7";

struct Providers {
    upstream: MockUpstream,
    _fronts: Vec<TlsFront>,
    _ca: TestCa,
    _secrets: ScratchDir,
    gateway: Gateway,
}

fn provider(
    name: &str,
    addr: SocketAddr,
    host: &str,
    ca: &TestCa,
    credential: (&str, Option<&str>, PathBuf),
    models: &[&str],
) -> ProviderSpec {
    let (header, prefix, secret_file) = credential;
    ProviderSpec {
        name: name.into(),
        address: addr.ip().to_string(),
        port: addr.port(),
        host: host.into(),
        ca_file: Some(ca.cert().to_owned()),
        credential: CredentialSpec {
            header: header.into(),
            value_prefix: prefix.map(str::to_owned),
            secret_file,
        },
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        http2: true,
        timeout: None,
    }
}

/// `gpt-x` on `openai-a`; `claude-x` on `anthropic-b`, then `openai-a`.
fn start() -> Providers {
    let ca = TestCa::create("maas test providers CA");
    let upstream = MockUpstream::start();
    let openai_cert = ca.issue(OPENAI_HOST);
    let anthropic_cert = ca.issue(ANTHROPIC_HOST);
    let openai = TlsFront::start(&openai_cert.cert, &openai_cert.key, upstream.addr());
    let anthropic = TlsFront::start(&anthropic_cert.cert, &anthropic_cert.key, upstream.addr());
    let secrets = ScratchDir::create().unwrap();
    let secret = |name: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, format!("sk-{name}-secret\n")).unwrap();
        path
    };
    let filter = json!({
        "models": [],
        "providers": [
            { "name": "openai-a", "kind": "openai-compatible" },
            { "name": "anthropic-b", "kind": "anthropic" }
        ],
        "external_models": [
            { "id": "gpt-x", "provider": "openai-a", "model": "gpt-x-a" },
            { "id": "claude-x", "provider": "anthropic-b", "model": "claude-b" }
        ],
        "fallbacks": {
            "claude-x": [{ "provider": "openai-a", "model": "gpt-x-a" }]
        },
        "default_max_tokens": 64,
        "subscriptions": {
            "pro": { "models": ["gpt-x", "claude-x"], "limits": "unlimited" }
        },
        "keys": [{
            "id": "client-7", "owner": "dana@example.com", "subscription": "pro",
            "sha256": KeyDigest::of(CLIENT_KEY).to_hex()
        }]
    });
    let gateway = Gateway::builder()
        .filter_config(filter)
        .provider(provider(
            "openai-a",
            openai.addr(),
            OPENAI_HOST,
            &ca,
            ("authorization", Some("Bearer "), secret("openai-a")),
            &["gpt-x"],
        ))
        .provider(provider(
            "anthropic-b",
            anthropic.addr(),
            ANTHROPIC_HOST,
            &ca,
            ("x-api-key", None, secret("anthropic-b")),
            &["claude-x"],
        ))
        .start();
    Providers {
        upstream,
        _fronts: vec![openai, anthropic],
        _ca: ca,
        _secrets: secrets,
        gateway,
    }
}

fn chat(p: &Providers, model: &str, extra: &[(&str, &str)]) -> Response {
    let bearer = format!("Bearer {CLIENT_KEY}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    let body = json!({
        "model": model,
        "max_tokens": 8,
        "messages": [{ "role": "user", "content": "two words" }]
    });
    p.gateway.post_json("/v1/chat/completions", &headers, &body)
}

#[test]
fn a_client_cannot_choose_the_endpoint_a_provider_runs() {
    let p = start();
    let response = chat(
        &p,
        "gpt-x",
        &[
            ("x-maas-path", "/v1/batches/batch_1/cancel"),
            ("x-mock-completion-tokens", "2"),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = p.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].header("x-maas-path"), None);
}

#[test]
fn each_attempt_gets_its_own_providers_path_and_no_path_header() {
    let p = start();
    let response = chat(
        &p,
        "claude-x",
        &[
            ("x-maas-path", "/v1/batches/batch_1/cancel"),
            ("x-mock-status", "429"),
            ("x-mock-status-host", ANTHROPIC_HOST),
            ("x-mock-completion-tokens", "2"),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = p.upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].header("host"), Some(ANTHROPIC_HOST));
    assert_eq!(seen[0].path, "/v1/messages");
    // Attempt 2's header map still has attempt 1's `:path`: the gateway's
    // path comes back from filter state.
    assert_eq!(seen[1].header("host"), Some(OPENAI_HOST));
    assert_eq!(seen[1].path, "/v1/chat/completions");
    for request in &seen {
        assert_eq!(request.header("x-maas-path"), None, "{}", request.path);
    }
}
