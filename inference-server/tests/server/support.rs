//! Requests and stream parsing shared by the tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use std::path::PathBuf;

use maas_testkit::inference::default_model_path;
use maas_testkit::{
    default_model, eventually, post_json, InferenceLaunch, InferenceServer, Response,
};
use serde_json::{json, Value};

pub const MODEL: &str = "smollm2-135m-instruct";
pub const GEMMA: &str = "gemma-3-270m";

/// Gemma 3 270M (Q4_K_M), beside the embedded model; a test that needs it
/// fails, naming the script that fetches it, rather than skipping.
pub fn gemma_model() -> PathBuf {
    let path = default_model_path().with_file_name("gemma-3-270m-q4_k_m.gguf");
    assert!(
        path.is_file(),
        "no Gemma 3 file at {path:?}: fetch it with scripts/fetch-gemma.sh (`make test` does)"
    );
    path
}

/// A server on the Gemma 3 file plus `args`.
pub fn gemma_server(args: &[&str]) -> InferenceServer {
    let launch = InferenceLaunch {
        model: gemma_model(),
        model_id: GEMMA.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..InferenceLaunch::default_model()
    };
    InferenceServer::launch(&launch).unwrap_or_else(|e| panic!("{e}"))
}

/// A copy of the embedded model changed by `edit`, in a fresh file.
pub fn edited_model(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(default_model()).unwrap();
    edit(&mut bytes);
    let path = std::env::temp_dir().join(format!("maas-{name}-{}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The usage's prompt tokens and the text of a successful response.
pub fn tokens_and_text(r: &Response) -> (u64, String) {
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let choice = &body["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .or(choice["text"].as_str())
        .unwrap_or_else(|| panic!("no text: {body}"));
    (
        body["usage"]["prompt_tokens"].as_u64().unwrap(),
        text.to_string(),
    )
}

pub fn chat_body(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
    });
    merge(&mut body, extra);
    body
}

pub fn merge(body: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
}

/// A POST of `body` as it is, JSON or not.
pub fn post_raw(server: &InferenceServer, path: &str, body: &str) -> Response {
    maas_testkit::request(
        "POST",
        &server.url(path),
        &[("content-type", "application/json")],
        Some(body.as_bytes()),
    )
}

pub fn chat(server: &InferenceServer, body: &Value) -> Response {
    post_json(&server.url("/v1/chat/completions"), &[], body)
}

pub fn completion(server: &InferenceServer, body: &Value) -> Response {
    post_json(&server.url("/v1/completions"), &[], body)
}

/// The assistant's text of a successful non-streaming chat response.
pub fn chat_text(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {}", r.text()))
        .to_string()
}

/// A parsed SSE chat or completion stream.
#[derive(Debug)]
pub struct Stream {
    pub chunks: Vec<Value>,
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub done: bool,
}

pub fn parse_stream(r: &Response) -> Stream {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let data = r.sse_data();
    let done = data.last().map(String::as_str) == Some("[DONE]");
    let mut s = Stream {
        chunks: Vec::new(),
        text: String::new(),
        finish_reason: None,
        usage: None,
        done,
    };
    for d in data.iter().filter(|d| *d != "[DONE]") {
        let chunk: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?}: {e}"));
        if let Some(choice) = chunk["choices"].get(0) {
            let piece = choice["delta"]["content"]
                .as_str()
                .or(choice["text"].as_str());
            s.text.push_str(piece.unwrap_or(""));
            if let Some(f) = choice["finish_reason"].as_str() {
                s.finish_reason = Some(f.to_string());
            }
        }
        if !chunk["usage"].is_null() {
            s.usage = Some(chunk["usage"].clone());
        }
        s.chunks.push(chunk);
    }
    s
}

/// Sends a chat request on a raw socket and returns the socket without
/// reading, so a test can hang up whenever it likes.
pub fn send_raw(server: &InferenceServer, body: &Value) -> TcpStream {
    let mut sock = TcpStream::connect(server.addr()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.to_string();
    write!(
        sock,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    sock
}

/// Opens a streaming request on a raw socket and returns it once the first
/// `data:` event has arrived, so a test can hang up mid-stream.
pub fn open_stream(server: &InferenceServer, body: &Value) -> TcpStream {
    let mut sock = send_raw(server, body);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = sock.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "stream closed early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    sock
}

/// A Prometheus sample's value from `/metrics` text (exact series match).
pub fn metric(server: &InferenceServer, series: &str) -> f64 {
    let text = maas_testkit::get(&server.url("/metrics")).text();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Waits (up to 10 s) until a `/metrics` series reads `want`: gauges settle
/// after the engine's next step.
pub fn await_metric(server: &InferenceServer, series: &str, want: f64) {
    eventually(Duration::from_secs(10), || match metric(server, series) {
        v if v == want => Ok(()),
        v => Err(format!("{series} is {v}, waiting for {want}")),
    });
}

/// `outcome`'s series of `inference_requests_total`.
pub fn outcome(name: &str) -> String {
    format!("inference_requests_total{{model=\"{MODEL}\",outcome=\"{name}\"}}")
}

/// A streamed request that runs for minutes unless something stops it.
pub fn endless_stream() -> Value {
    chat_body(
        "Write a very long essay about the history of Europe.",
        // Without `ignore_eos` a sampled answer may end within a second.
        json!({"max_tokens": 4000, "stream": true, "ignore_eos": true}),
    )
}

/// The streamed completion's text for `prompt` (greedy, `max_tokens`).
pub fn streamed_text(server: &InferenceServer, prompt: &str, max_tokens: u32) -> String {
    let r = chat(
        server,
        &chat_body(prompt, json!({"max_tokens": max_tokens, "stream": true})),
    );
    let s = parse_stream(&r);
    assert!(s.done);
    s.text
}

/// Asserts that every prompt streams the same text alone and all at once,
/// and that the server really batched them: some steps carried several
/// sequences (the histogram's first bucket counts single-sequence steps).
pub fn assert_batching_changes_nothing(
    server: &InferenceServer,
    prompts: &[&str],
    max_tokens: u32,
) {
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| streamed_text(server, p, max_tokens))
        .collect();
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| scope.spawn(move || streamed_text(server, p, max_tokens)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((prompt, a), t) in prompts.iter().zip(&alone).zip(&together) {
        assert_eq!(a, t, "{prompt:?} changed when batched");
    }
    let steps = metric(server, "inference_batch_sequences_count");
    let single = metric(server, "inference_batch_sequences_bucket{le=\"1\"}");
    assert!(
        single < steps,
        "no step batched more than one sequence ({single} of {steps})"
    );
}
