//! Shared set-up: a gateway with a known configuration in front of one mock
//! upstream, and the demo keys the tests present.

use maas_filter::auth::keys::KeyDigest;
use maas_testkit::{Gateway, MockUpstream, Response};
use serde_json::{json, Value};

pub const FREE_KEY: &str = "sk-test-free-1";
pub const GOLD_KEY: &str = "sk-test-gold-1";
pub const REVOKED_KEY: &str = "sk-test-revoked";
pub const EXPIRED_KEY: &str = "sk-test-expired";

pub fn key_entry(id: &str, owner: &str, subscription: &str, key: &str) -> Value {
    json!({"id": id, "owner": owner, "subscription": subscription, "sha256": KeyDigest::of(key).to_hex()})
}

/// Two models; `free` may use only m1, `gold` both. Limits are generous
/// unless a test passes its own configuration.
pub fn base_config() -> Value {
    let mut revoked = key_entry("revoked-1", "mallory", "free", REVOKED_KEY);
    revoked["revoked"] = json!(true);
    let mut expired = key_entry("expired-1", "eve", "free", EXPIRED_KEY);
    expired["expires_at"] = json!("2020-01-01T00:00:00Z");
    json!({
        "models": ["m1", "m2"],
        "default_max_tokens": 64,
        "subscriptions": {
            "free": {"models": ["m1"], "limits": {"requests": ["100000/day"], "tokens": ["100000000/day"]}},
            "gold": {"models": ["m1", "m2"], "limits": "unlimited"}
        },
        "keys": [
            key_entry("free-1", "alice@example.com", "free", FREE_KEY),
            key_entry("gold-1", "bob@example.com", "gold", GOLD_KEY),
            revoked,
            expired
        ]
    })
}

pub struct Stack {
    pub upstream: MockUpstream,
    pub gateway: Gateway,
}

impl Stack {
    pub fn start(config: Value) -> Stack {
        Self::start_with_workers(config, 2)
    }

    pub fn start_with_workers(config: Value, workers: u32) -> Stack {
        let upstream = MockUpstream::start();
        let gateway = Gateway::builder()
            .filter_config(config)
            .model("m1", upstream.addr())
            .model("m2", upstream.addr())
            .concurrency(workers)
            .start();
        Stack { upstream, gateway }
    }

    /// POST /v1/chat/completions with `key` and extra headers.
    pub fn chat(&self, key: &str, body: &Value, extra: &[(&str, &str)]) -> Response {
        let auth = format!("Bearer {key}");
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        self.gateway
            .post_json("/v1/chat/completions", &headers, body)
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.gateway.metric(name, labels).unwrap_or(0.0)
    }
}

pub fn chat_body(model: &str, max_tokens: u64) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hello there"}]})
}

/// Asserts an OpenAI-shaped error with this status and code.
pub fn assert_error(r: &Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.text()
    );
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
    body
}
