//! What a request reserves beyond its body's bytes and its `max_tokens`,
//! and what it is charged when its response cannot be read: media parts
//! at the configured per-part amount, llama.cpp's `n_predict` capped like
//! the other budget fields, and an undecodable response at its whole
//! reservation.

use super::*;

/// The harness's configuration, with media parts at 100 tokens (the
/// default would not fit the harness's 1000-token limit).
fn harness() -> Harness {
    let mut v = config_json();
    v["media_part_tokens"] = serde_json::json!(100);
    Harness::with_config(Config::from_json(v.to_string().as_bytes()).unwrap())
}

/// Requests of the `metered` subscription: tokens only (1000/min), a cap
/// of 100.
const METERED: &str = "maas/sub/metered/tokens/60";

fn metered(h: &Harness, body: &str) -> Stream {
    h.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-metered")],
        body,
    )
}

fn with_images(images: usize) -> String {
    let image =
        r#"{"type":"image_url","image_url":{"url":"https://example.com/big.png","detail":"high"}}"#;
    let parts = vec![image; images].join(",");
    format!(
        r#"{{"model":"m1","max_tokens":10,"messages":[{{"role":"user","content":[{{"type":"text","text":"what?"}},{parts}]}}]}}"#
    )
}

#[test]
fn each_media_part_is_reserved_at_its_configured_tokens() {
    let h = harness();
    let body = with_images(3);
    let mut s = h.chat(&body);
    assert!(h.replied().is_none());
    assert_eq!(h.used(TOK), body.len() as u64 + 3 * 100 + 10);
    h.respond_json(
        &mut s,
        200,
        r#"{"usage":{"prompt_tokens":250,"completion_tokens":4,"total_tokens":254}}"#,
    );
    assert_eq!(h.used(TOK), 254);

    // Five images fit what is left of the 1000-token limit by their bytes
    // alone (the old bound), not at 100 tokens each.
    let body = with_images(5);
    let left = 1000 - 254;
    assert!(body.len() as u64 + 10 <= left);
    assert!(body.len() as u64 + 5 * 100 + 10 > left);
    h.chat(&body);
    let (status, _, err) = h.replied().unwrap();
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["type"], "tokens");
    assert_eq!(h.used(TOK), 254, "a refusal reserves nothing");
}

#[test]
fn a_cut_stream_pays_for_its_media_parts() {
    let h = harness();
    let body = with_images(2).replacen(r#""max_tokens":10"#, r#""max_tokens":10,"stream":true"#, 1);
    let mut s = h.chat(&body);
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    s.on_response_headers(&h.host, false);
    s.on_log(&h.host);
    let a = h.audit();
    assert_eq!(a["usage"], "estimated");
    assert_eq!(a["prompt_tokens"], body.len() as u64 + 2 * 100);
    assert_eq!(a["completion_tokens"], 0);
}

#[test]
fn n_predict_leaves_with_the_reserved_budget() {
    let h = harness();
    // "Unlimited" to llama-server, 10 reserved: it gets 10.
    let body = r#"{"model":"m1","max_tokens":10,"n_predict":-1}"#;
    let _s = h.chat(body);
    assert!(h.replied().is_none());
    assert_eq!(h.used(TOK), body.len() as u64 + 10);
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(
        (sent["max_tokens"].as_i64(), sent["n_predict"].as_i64()),
        (Some(10), Some(10))
    );

    // n_predict alone is the budget asked for, within the cap of 100, and
    // the field other servers read is added.
    let body = r#"{"model":"m1","n_predict":40}"#;
    let _s = h.chat(body);
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(
        (sent["max_tokens"].as_i64(), sent["n_predict"].as_i64()),
        (Some(40), Some(40))
    );

    // Above the cap: clamped in every field.
    let _s = metered(&h, r#"{"model":"m1","n_predict":5000}"#);
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(
        (sent["max_tokens"].as_i64(), sent["n_predict"].as_i64()),
        (Some(100), Some(100))
    );

    metered(&h, r#"{"model":"m1","n_predict":0}"#);
    let (status, _, err) = h.replied().unwrap();
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "n_predict");
}

/// A success the filter cannot decode shows nothing of what was generated:
/// it is charged the whole reservation, and says so.
#[test]
fn an_undecodable_response_is_charged_its_whole_reservation() {
    let h = harness();
    let body = with_images(1);
    let mut s = metered(&h, &body);
    let reserved = body.len() as u64 + 100 + 10;
    assert_eq!(h.used(METERED), reserved);
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "application/json".into()),
        ("content-encoding".into(), "gzip".into()),
    ];
    s.on_response_headers(&h.host, false);
    // Whatever the bytes say, they are not read.
    let usage = r#"{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    *h.host.response_chunk.borrow_mut() = usage.as_bytes().to_vec();
    s.on_response_body(&h.host, usage.len(), true);
    s.on_log(&h.host);
    assert_eq!(h.used(METERED), reserved);
    let a = h.audit();
    assert_eq!(a["usage"], "reserved");
    assert_eq!(a["prompt_tokens"], body.len() as u64 + 100);
    assert_eq!(a["completion_tokens"], 10);
    assert_eq!(
        h.metric("maas.estimated_usage_total.subscription=.=metered;.;model=.=m1;.;"),
        1
    );
    assert!(h
        .host
        .throttled_warnings
        .borrow()
        .iter()
        .any(|w| w.starts_with("undecodable-response")));

    // `identity` (or an empty value) is no encoding; an error status is not
    // read either way, and still charged no tokens when no model ran.
    for (status, encoding, source) in [
        ("200", "identity", "reported"),
        ("200", " ", "reported"),
        ("503", "gzip", "none"),
    ] {
        let mut s = metered(&h, r#"{"model":"m1","max_tokens":10}"#);
        *h.host.response_headers.borrow_mut() = vec![
            (":status".into(), status.into()),
            ("content-type".into(), "application/json".into()),
            ("content-encoding".into(), encoding.into()),
        ];
        *h.host.code_details.borrow_mut() = Some("via_upstream".into());
        s.on_response_headers(&h.host, false);
        *h.host.response_chunk.borrow_mut() = usage.as_bytes().to_vec();
        s.on_response_body(&h.host, usage.len(), true);
        s.on_log(&h.host);
        assert_eq!(h.audit()["usage"], source, "{status} {encoding:?}");
    }
}
