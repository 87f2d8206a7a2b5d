//! A request the model server could not finish is charged what it
//! computed, on the real stack: Envoy with the release filter in front of
//! the real inference server, cut at the server's shutdown deadline. The
//! server reports that usage beside its error; before, the gateway charged
//! such a stream an estimate and such a 503 nothing.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use maas_testkit::{eventually, get, prometheus, Gateway, InferenceServer};
use serde_json::{json, Value};

use super::{charged, content_events, gateway, post_raw, MODEL};

const KEY: &str = "sk-server-failure-key";

/// A request that runs until something stops it.
fn endless(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "stream": stream,
        "max_tokens": 4000,
        // Without it a sampled answer may end before the deadline.
        "ignore_eos": true,
        "messages": [{"role": "user", "content": "Write a very long essay about the history of Europe."}]
    })
}

fn read_to_end(mut conn: TcpStream) -> String {
    let mut all = Vec::new();
    let _ = conn.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

/// Waits until the server has generated a token: decoding, past prefill
/// (which on a loaded machine may outlast a short grace period).
fn await_decoding(server: &InferenceServer) {
    eventually(Duration::from_secs(30), || {
        let text = get(&server.url("/metrics")).text();
        match prometheus::metric(&text, "inference_generated_tokens_total", &[]) {
            Some(v) if v >= 1.0 => Ok(()),
            v => Err(format!("tokens generated: {v:?}")),
        }
    });
}

/// An endless request through the gateway, cut by the server's shutdown
/// deadline while it decodes: the raw answer, and the gateway that charged
/// it.
fn cut_at_the_deadline(stream: bool) -> (String, Gateway) {
    let mut server = InferenceServer::start(&["--shutdown-grace-secs", "1"]);
    let gateway = gateway(&server, KEY);
    let conn = post_raw(gateway.addr(), KEY, &endless(stream).to_string());
    await_decoding(&server);
    server.signal_term();
    let raw = read_to_end(conn);
    assert!(server.wait_exit(Duration::from_secs(60)).success());
    (raw, gateway)
}

#[test]
fn a_stream_cut_at_the_servers_deadline_is_charged_the_usage_it_reported() {
    // The client did not ask for usage: the gateway asks for it, and must
    // charge it although the stream ends in an error.
    let (raw, gateway) = cut_at_the_deadline(true);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("generation_failed"), "{raw}");
    assert!(!raw.contains("[DONE]"), "{raw}");
    let contents = content_events(&raw) as u64;
    let record = gateway.await_access_log(1).remove(0);
    let (prompt, completion) = charged(&record);
    assert!(prompt > 0, "{record}");
    assert!(
        completion >= contents && completion > 0,
        "charged {completion} completion tokens for {contents} content events: {record}"
    );
}

#[test]
fn an_answer_cut_at_the_servers_deadline_is_charged_the_usage_its_error_reports() {
    let (raw, gateway) = cut_at_the_deadline(false);
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    let body: Value = serde_json::from_str(&raw[raw.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["error"]["code"], "generation_failed", "{body}");
    let record = gateway.await_access_log(1).remove(0);
    let (prompt, completion) = charged(&record);
    assert_eq!(
        (prompt, completion),
        (
            body["usage"]["prompt_tokens"].as_u64().unwrap(),
            body["usage"]["completion_tokens"].as_u64().unwrap()
        ),
        "{record}"
    );
    assert!(completion > 0, "it was decoding when cut: {record}");
    assert_eq!(record["status"], 503, "{record}");
}
