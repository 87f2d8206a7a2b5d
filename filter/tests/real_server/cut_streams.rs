//! A cut stream is charged at least what the model did, on the real stack:
//! Envoy with the release filter in front of the real inference server.
//!
//! The attack this closes: a prompt built to tokenise badly (digits, one
//! token each in SmolLM2) sent as a stream and cut after the first event,
//! so no usage ever arrives. The gateway then charges an estimate, and the
//! estimate must not fall below the prompt tokens the server computed
//! (its own `inference_prompt_tokens_total`), nor above the reservation.

use maas_testkit::{get, prometheus, InferenceServer};
use serde_json::json;

use super::{content_events, gateway, post_raw, read_until, MODEL};

const KEY: &str = "sk-cut-stream-key";
const MAX_TOKENS: u64 = 64;

fn server_prompt_tokens(server: &InferenceServer) -> f64 {
    let text = get(&server.url("/metrics")).text();
    prometheus::metric(&text, "inference_prompt_tokens_total", &[]).unwrap_or(0.0)
}

#[test]
fn a_cut_stream_is_charged_at_least_the_prompt_the_server_computed() {
    let server = InferenceServer::start(&[]);
    let gateway = gateway(&server, KEY);

    // About 1,200 prompt tokens in about 1.3 KB: a bytes/4 estimate would
    // charge a quarter of them.
    let digits: String = "0123456789".repeat(120);
    let body = json!({
        "model": MODEL,
        "stream": true,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": format!("Repeat: {digits}")}]
    })
    .to_string();
    let before = server_prompt_tokens(&server);

    let mut conn = post_raw(gateway.addr(), KEY, &body);
    // Read until the first generated text (the role event comes before
    // the prefill ends), then hang up: the whole prompt was computed.
    let head = read_until(&mut conn, |seen| content_events(seen) > 0);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(conn);

    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(record["usage"], "estimated", "{record}");
    assert_eq!(record["outcome"], "incomplete", "{record}");
    // The server counts prompt tokens when a prefill step ends, before the
    // token it samples is sent: all of them are counted by now.
    let computed = (server_prompt_tokens(&server) - before) as u64;
    assert!(
        computed >= digits.len() as u64,
        "one token per digit was the premise; the server counted {computed}"
    );
    let prompt = record["prompt_tokens"].as_u64().unwrap();
    let total = record["total_tokens"].as_u64().unwrap();
    assert!(
        prompt >= computed,
        "charged {prompt} prompt tokens for {computed} the server computed: {record}"
    );
    assert!(
        total > prompt,
        "the first event's text is charged too: {record}"
    );
    // Never past what was reserved for it.
    assert!(
        total <= body.len() as u64 + MAX_TOKENS,
        "charged {total}, reserved {}",
        body.len() as u64 + MAX_TOKENS
    );
}
