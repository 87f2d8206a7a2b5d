//! The filter on the real stack: Envoy with the release filter in front of
//! the real inference server (SmolLM2), one key of an unlimited-enough
//! subscription, so what is asserted is what the server computed and what
//! the gateway charged for it.

// Test code may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod choices;
mod cut_streams;
mod responses;
mod sampling_fields;
mod server_failures;
mod server_key;
mod structured_outputs;

use maas_testkit::{Gateway, InferenceServer, Response};
use serde_json::{json, Value};

pub const MODEL: &str = "smollm2-135m-instruct";

/// Envoy with the release filter routing [`MODEL`] to `server`, with `key`
/// in a subscription whose token limit no test reaches.
pub fn gateway(server: &InferenceServer, key: &str) -> Gateway {
    gateway_with(server, filter_config(key))
}

/// The filter configuration of [`gateway`].
pub fn filter_config(key: &str) -> Value {
    json!({
        "models": [MODEL],
        "subscriptions": {
            "team": {"models": [MODEL], "limits": {"tokens": ["10000000/day"]}}
        },
        "keys": [{
            "id": "team-1", "owner": "team", "subscription": "team",
            "sha256": maas_filter::auth::keys::KeyDigest::of(key).to_hex()
        }]
    })
}

/// Envoy with the release filter and `config`, routing [`MODEL`] to `server`.
pub fn gateway_with(server: &InferenceServer, config: Value) -> Gateway {
    Gateway::builder()
        .filter_config(config)
        .model(MODEL, server.addr())
        .start()
}

/// The audit record's charge, as `(prompt, completion)`; it must come from
/// the usage the server reported.
pub fn charged(record: &Value) -> (u64, u64) {
    assert_eq!(record["usage"], "reported", "{record}");
    (
        record["prompt_tokens"].as_u64().unwrap(),
        record["completion_tokens"].as_u64().unwrap(),
    )
}

/// An OpenAI `usage` object as `(prompt, completion)`.
pub fn usage_of(usage: &Value) -> (u64, u64) {
    (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    )
}

/// A chat request through the gateway as `auth`, which must succeed.
pub fn chat_ok(gateway: &Gateway, auth: &str, body: &Value) -> Response {
    let r = gateway.post_json("/v1/chat/completions", &[("authorization", auth)], body);
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// `body` streamed without asking for usage: the events the client sees.
/// The gateway asks the server for usage, to charge it, and must strip it.
pub fn streamed_without_usage(gateway: &Gateway, auth: &str, body: &Value) -> Vec<Value> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let events = sse_events(&chat_ok(gateway, auth, &body));
    assert!(
        events
            .iter()
            .all(|e| e.get("usage").is_none_or(Value::is_null)),
        "the usage the gateway asked for reached the client: {events:?}"
    );
    events
}

/// `body` posted to `/v1/chat/completions` at `addr` with `key`, on a raw
/// socket (`connection: close`), for a test that reads the answer as it
/// comes or hangs up mid-way.
pub fn post_raw(addr: std::net::SocketAddr, key: &str, body: &str) -> std::net::TcpStream {
    post_raw_to(addr, "/v1/chat/completions", key, body)
}

/// [`post_raw`] to `path`.
pub fn post_raw_to(
    addr: std::net::SocketAddr,
    path: &str,
    key: &str,
    body: &str,
) -> std::net::TcpStream {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
         connection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    conn
}

/// Reads `conn` (an answer being streamed) until what came so far, as
/// text, satisfies `enough`; what came. Fails if the answer ends first.
pub fn read_until(conn: &mut std::net::TcpStream, enough: impl Fn(&str) -> bool) -> String {
    use std::io::Read;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !enough(&String::from_utf8_lossy(&seen)) {
        let n = conn.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended before what was awaited:\n{}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The `data:` events of raw stream text that carry generated text.
pub fn content_events(stream: &str) -> usize {
    stream
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter(|event| {
            event["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|text| !text.is_empty())
        })
        .count()
}

/// A streamed answer's JSON events, `[DONE]` left out.
pub fn sse_events(r: &Response) -> Vec<Value> {
    r.sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}
