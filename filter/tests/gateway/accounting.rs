//! Usage accounting: what each request is charged, where the number came
//! from, and what the metrics and the audit trail say about it.

use crate::support::*;
use maas_testkit::eventually;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn audit_for(s: &Stack, count: usize) -> Vec<Value> {
    s.gateway.await_access_log(count)
}

#[test]
fn json_usage_is_charged_and_reported() {
    let s = Stack::start(base_config());
    for _ in 0..3 {
        let r = s.chat(
            FREE_KEY,
            &chat_body("m1", 10),
            &[
                ("x-mock-prompt-tokens", "7"),
                ("x-mock-completion-tokens", "5"),
            ],
        );
        assert_eq!(r.status, 200);
    }
    let labels = [("subscription", "free"), ("model", "m1")];
    eventually(Duration::from_secs(5), || {
        let got = (
            s.metric("maas_prompt_tokens_total", &labels),
            s.metric("maas_completion_tokens_total", &labels),
            s.metric("maas_total_tokens_total", &labels),
            s.metric(
                "maas_requests_total",
                &[("subscription", "free"), ("model", "m1"), ("outcome", "ok")],
            ),
        );
        (got == (21.0, 15.0, 36.0, 3.0))
            .then_some(())
            .ok_or(format!("{got:?}"))
    });
    assert_eq!(s.metric("maas_estimated_usage_total", &labels), 0.0);

    let log = audit_for(&s, 3);
    let a = &log[2];
    assert_eq!(a["key_id"], "free-1");
    assert_eq!(a["user"], "alice@example.com");
    assert_eq!(a["subscription"], "free");
    assert_eq!(a["model"], "m1");
    assert_eq!(a["status"], 200);
    assert_eq!(a["outcome"], "ok");
    assert_eq!(a["usage"], "reported");
    assert_eq!(
        (
            a["prompt_tokens"].as_u64(),
            a["completion_tokens"].as_u64(),
            a["total_tokens"].as_u64()
        ),
        (Some(7), Some(5), Some(12))
    );
    assert_eq!(a["path"], "/v1/chat/completions");
    assert!(a["latency_ms"].is_u64());
    let line = serde_json::to_string(a).unwrap();
    assert!(
        !line.contains("Hello there"),
        "the prompt never reaches the audit log"
    );
    assert!(!line.contains(FREE_KEY), "nor the key");
}

#[test]
fn refusals_are_audited_too() {
    let s = Stack::start(base_config());
    s.chat(REVOKED_KEY, &chat_body("m1", 10), &[]);
    s.chat(FREE_KEY, &chat_body("m2", 10), &[]);
    let log = audit_for(&s, 2);
    assert_eq!(log[0]["status"], 401);
    assert_eq!(log[0]["key_id"], Value::Null);
    assert_eq!(log[0]["error_code"], "invalid_api_key");
    assert_eq!(log[1]["status"], 404);
    assert_eq!(log[1]["key_id"], "free-1");
    assert_eq!(log[1]["outcome"], "rejected");
    assert_eq!(log[1]["total_tokens"], 0);
}

fn streamed(model: &str, include_usage: Option<bool>) -> Value {
    let mut b = chat_body(model, 10);
    b["stream"] = json!(true);
    if let Some(u) = include_usage {
        b["stream_options"] = json!({"include_usage": u});
    }
    b
}

#[test]
fn stream_usage_is_read_and_hidden_unless_asked_for() {
    let s = Stack::start(base_config());
    let headers = [
        ("x-mock-prompt-tokens", "11"),
        ("x-mock-completion-tokens", "4"),
    ];

    // The client did not ask for usage: the filter asks upstream and removes
    // the extra chunk from the stream.
    let r = s.chat(FREE_KEY, &streamed("m1", None), &headers);
    assert_eq!(r.status, 200);
    let events = r.sse_data();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["content"] == "tok ")
            .count(),
        4
    );
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "{events:?}"
    );
    assert_eq!(
        s.upstream.requests()[0].json()["stream_options"]["include_usage"],
        true
    );

    // The client asked: it gets the usage chunk, untouched.
    let r = s.chat(FREE_KEY, &streamed("m1", Some(true)), &headers);
    let events = r.sse_data();
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 15);

    let labels = [("subscription", "free"), ("model", "m1")];
    assert_eq!(s.metric("maas_total_tokens_total", &labels), 30.0);
    assert_eq!(s.metric("maas_estimated_usage_total", &labels), 0.0);
}

#[test]
fn cut_streams_are_charged_their_prompt_bound_and_text() {
    let s = Stack::start(base_config());
    let body = streamed("m1", None);
    let body_len = body.to_string().len() as u64;
    let r = s.chat(
        FREE_KEY,
        &body,
        &[
            ("x-mock-completion-tokens", "10"),
            ("x-mock-cut-after", "3"),
        ],
    );
    assert!(r.body_error.is_some() || r.sse_data().last().map(String::as_str) != Some("[DONE]"));

    let log = audit_for(&s, 1);
    let cut = &log[0];
    assert_eq!(cut["usage"], "estimated");
    // Three content events of "tok " each: their text's bytes (one token
    // per byte, `prompt_bytes_per_token`'s default) outweigh one per event,
    // up to the completion's reservation (`max_tokens` 10).
    let text = maas_testkit::mock_upstream::TOKEN_TEXT.len() as u64;
    assert_eq!(cut["completion_tokens"], (3 * text).min(10));
    // The prompt is charged the bound it was reserved with.
    assert_eq!(cut["prompt_tokens"], body_len);
    assert_eq!(
        s.metric("maas_estimated_usage_total", &[("subscription", "free")]),
        1.0
    );
}

/// An error answered before any model computed the request: the model
/// server's own 503 (overloaded, loading), or Envoy's when no model answers
/// at all. Neither is charged tokens; both count as requests. The server's
/// 500 may have followed the computation: estimated.
#[test]
fn errors_before_any_model_computed_charge_no_tokens() {
    let s = Stack::start(base_config());
    let err = s.chat(FREE_KEY, &chat_body("m1", 10), &[("x-mock-status", "503")]);
    assert_eq!(err.status, 503);
    // m2's cluster points at a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let gateway = maas_testkit::Gateway::builder()
        .filter_config(base_config())
        .model("m1", dead)
        .model("m2", dead)
        .start();
    let down = gateway.post_json(
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {FREE_KEY}"))],
        &chat_body("m1", 10),
    );
    assert_eq!(down.status, 503, "{}", down.text());

    for record in [
        audit_for(&s, 1).remove(0),
        gateway.await_access_log(1).remove(0),
    ] {
        assert_eq!(record["outcome"], "upstream_error", "{record}");
        assert_eq!(record["usage"], "none", "{record}");
        assert_eq!(record["total_tokens"], 0, "{record}");
    }
    let labels = [("subscription", "free"), ("model", "m1")];
    assert_eq!(s.metric("maas_total_tokens_total", &labels), 0.0);
    let body = chat_body("m1", 10);
    let failed = s.chat(FREE_KEY, &body, &[("x-mock-status", "500")]);
    assert_eq!(failed.status, 500);
    let record = audit_for(&s, 2).remove(1);
    assert_eq!(record["usage"], "estimated", "{record}");
    assert_eq!(
        record["prompt_tokens"],
        body.to_string().len() as u64,
        "{record}"
    );
    assert_eq!(
        s.metric(
            "maas_requests_total",
            &[("subscription", "free"), ("outcome", "upstream_error")]
        ),
        2.0
    );
}

/// A client that hangs up mid-stream is still charged, exactly once, for
/// what it had been sent; the reservation does not leak.
#[test]
fn client_disconnect_settles_the_reservation() {
    let mut c = base_config();
    c["subscriptions"]["free"]["limits"] = json!({"tokens": ["100000/day"]});
    let s = Stack::start(c);
    let body = streamed("m1", None).to_string();
    let mut conn = TcpStream::connect(s.gateway.addr()).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {FREE_KEY}\r\n\
         content-type: application/json\r\nx-mock-completion-tokens: 200\r\nx-mock-chunk-delay-ms: 20\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("tok ") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(conn);

    let log = audit_for(&s, 1);
    assert_eq!(log[0]["outcome"], "incomplete");
    assert_eq!(log[0]["usage"], "estimated");
    let charged = log[0]["total_tokens"].as_u64().unwrap();
    assert!(charged < 200 + body.len() as u64, "charged {charged}");
    // The next request sees exactly the estimate charged, nothing held.
    let r = s.chat(FREE_KEY, &chat_body("m1", 10), &[]);
    let reservation = chat_body("m1", 10).to_string().len() as u64 + 10;
    let remaining: u64 = r
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(remaining, 100_000 - charged - reservation);
}

/// The filter strips the client's `accept-encoding`, so a compressed answer
/// is an upstream's misbehaviour; its body cannot be read for usage, so
/// nothing shows it generated less than it was allowed: it is charged the
/// whole reservation, and says so.
#[test]
fn undecodable_responses_are_charged_their_whole_reservation() {
    let s = Stack::start(base_config());
    let body = chat_body("m1", 10);
    let r = s.chat(
        FREE_KEY,
        &body,
        &[
            ("x-mock-content-encoding", "gzip"),
            ("x-mock-prompt-tokens", "3"),
            ("x-mock-completion-tokens", "2"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-encoding"), Some("gzip"));

    let record = audit_for(&s, 1).remove(0);
    assert_eq!(record["usage"], "reserved", "{record}");
    assert_eq!(
        (
            record["prompt_tokens"].as_u64(),
            record["completion_tokens"].as_u64()
        ),
        (Some(body.to_string().len() as u64), Some(10)),
        "{record}"
    );
    assert_eq!(
        record["total_tokens"], record["reserved_tokens"],
        "{record}"
    );
    assert_eq!(
        s.metric(
            "maas_estimated_usage_total",
            &[("subscription", "free"), ("model", "m1")]
        ),
        1.0
    );
}
