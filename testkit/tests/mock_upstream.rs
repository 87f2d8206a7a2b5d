//! The mock upstream over real loopback HTTP, as the gateway will see it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maas_testkit::mock_upstream::{MockUpstream, TOKEN_TEXT};
use maas_testkit::{get, post_json, request, try_request, Response};
use serde_json::{json, Value};

fn chat(upstream: &MockUpstream, headers: &[(&str, &str)], body: Value) -> Response {
    post_json(&upstream.url("/v1/chat/completions"), headers, &body)
}

/// The JSON chunks of an SSE body, and whether it ended with `[DONE]`.
fn sse_chunks(response: &Response) -> (Vec<Value>, bool) {
    let mut data = response.sse_data();
    let done = data.last().map(String::as_str) == Some("[DONE]");
    if done {
        data.pop();
    }
    let chunks = data
        .iter()
        .map(|payload| serde_json::from_str(payload).expect("chunk is JSON"))
        .collect();
    (chunks, done)
}

#[test]
fn chat_completion_reports_usage() {
    let upstream = MockUpstream::start();
    let response = chat(
        &upstream,
        &[("x-mock-completion-tokens", "5")],
        json!({ "model": "m1", "messages": [{ "role": "user", "content": "one two three" }] }),
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "m1");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        TOKEN_TEXT.repeat(5)
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({ "prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11 })
    );
}

#[test]
fn max_tokens_and_headers_set_the_counts() {
    let upstream = MockUpstream::start();
    let cases = [
        (json!({ "max_tokens": 3 }), vec![], 3, "length"),
        (
            json!({ "max_completion_tokens": 2 }),
            vec![("x-mock-completion-tokens", "9")],
            2,
            "length",
        ),
        (
            json!({ "max_tokens": 50 }),
            vec![("x-mock-completion-tokens", "9")],
            9,
            "stop",
        ),
        (json!({}), vec![], 16, "stop"),
    ];
    for (extra, headers, tokens, finish) in cases {
        let mut body = json!({ "messages": [{ "role": "user", "content": "hi" }] });
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        let mut headers = headers.clone();
        headers.push(("x-mock-prompt-tokens", "100"));
        let response = chat(&upstream, &headers, body.clone()).json();
        assert_eq!(response["usage"]["completion_tokens"], tokens, "{body}");
        assert_eq!(response["usage"]["prompt_tokens"], 100, "{body}");
        assert_eq!(response["usage"]["total_tokens"], 100 + tokens, "{body}");
        assert_eq!(response["choices"][0]["finish_reason"], finish, "{body}");
    }
}

#[test]
fn text_completion_and_omitted_usage() {
    let upstream = MockUpstream::start();
    let body = post_json(
        &upstream.url("/v1/completions"),
        &[("x-mock-completion-tokens", "2")],
        &json!({ "model": "m2", "prompt": "say hi" }),
    )
    .json();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "tok tok ");
    assert_eq!(body["usage"]["prompt_tokens"], 2);

    let body = chat(&upstream, &[("x-mock-omit-usage", "1")], json!({})).json();
    assert!(body.get("usage").is_none(), "{body}");
}

#[test]
fn stream_without_include_usage_has_no_usage() {
    let upstream = MockUpstream::start();
    let response = chat(
        &upstream,
        &[("x-mock-completion-tokens", "3")],
        json!({ "model": "m1", "stream": true, "messages": [] }),
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert!(
        response.text().ends_with("data: [DONE]\n\n"),
        "{}",
        response.text()
    );
    let (chunks, done) = sse_chunks(&response);
    assert!(done);
    assert_eq!(chunks.len(), 4, "3 content chunks and the finish chunk");
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert!(chunk.get("usage").is_none(), "{chunk}");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({ "role": "assistant", "content": "tok " })
    );
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({ "content": "tok " })
    );
    assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
}

#[test]
fn stream_with_include_usage_ends_with_a_usage_chunk() {
    let upstream = MockUpstream::start();
    let response = chat(
        &upstream,
        &[
            ("x-mock-completion-tokens", "4"),
            ("x-mock-prompt-tokens", "7"),
        ],
        json!({ "stream": true, "stream_options": { "include_usage": true }, "max_tokens": 2 }),
    );
    let (chunks, done) = sse_chunks(&response);
    assert!(done);
    assert_eq!(chunks.len(), 4, "2 content, finish, usage");
    for chunk in &chunks[..3] {
        assert_eq!(chunk["usage"], Value::Null, "{chunk}");
        assert!(
            chunk.get("usage").is_some(),
            "usage: null is present: {chunk}"
        );
    }
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[3]["choices"], json!([]));
    assert_eq!(chunks[3]["object"], "chat.completion.chunk");
    assert_eq!(
        chunks[3]["usage"],
        json!({ "prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9 })
    );

    let omitted = chat(
        &upstream,
        &[("x-mock-omit-usage", "true")],
        json!({ "stream": true, "stream_options": { "include_usage": true } }),
    );
    let (chunks, done) = sse_chunks(&omitted);
    assert!(done);
    assert!(
        chunks.iter().all(|chunk| chunk["usage"].is_null()),
        "{}",
        omitted.text()
    );
}

#[test]
fn text_completion_stream() {
    let upstream = MockUpstream::start();
    let response = post_json(
        &upstream.url("/v1/completions"),
        &[("x-mock-completion-tokens", "2")],
        &json!({ "prompt": "x", "stream": true, "stream_options": { "include_usage": true } }),
    );
    let (chunks, done) = sse_chunks(&response);
    assert!(done);
    let texts: Vec<_> = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].clone())
        .collect();
    assert_eq!(texts[..3], [json!("tok "), json!("tok "), json!("")]);
    assert_eq!(chunks[3]["object"], "text_completion");
    assert_eq!(chunks[3]["usage"]["completion_tokens"], 2);
}

/// Reads a raw HTTP/1.1 response and returns its chunked-encoding chunks:
/// each SSE event must be a chunk of its own, which is what a proxy sees.
fn raw_chunks(upstream: &MockUpstream, body: &str, headers: &str) -> (String, Vec<String>) {
    let mut stream = TcpStream::connect(upstream.addr()).expect("connect");
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("head");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let mut chunks = Vec::new();
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).expect("chunk size") == 0 {
            break; // connection closed without the last chunk
        }
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            break;
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).expect("chunk");
        chunks.push(String::from_utf8(chunk[..size].to_vec()).expect("utf-8"));
    }
    (head, chunks)
}

#[test]
fn each_event_is_its_own_chunk() {
    let upstream = MockUpstream::start();
    let (head, chunks) = raw_chunks(
        &upstream,
        r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
        "x-mock-completion-tokens: 3\r\n",
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(chunks.len(), 3 + 1 + 1 + 1, "{chunks:#?}");
    for chunk in &chunks {
        assert!(
            chunk.starts_with("data: ") && chunk.ends_with("\n\n"),
            "{chunk:?}"
        );
        assert_eq!(chunk.matches("data: ").count(), 1, "{chunk:?}");
    }
    assert_eq!(chunks[5], "data: [DONE]\n\n");
}

#[test]
fn cut_after_aborts_the_stream_mid_body() {
    let upstream = MockUpstream::start();
    for cut in [0, 2, 4] {
        let response = chat(
            &upstream,
            &[
                ("x-mock-completion-tokens", "4"),
                ("x-mock-cut-after", &cut.to_string()),
            ],
            json!({ "stream": true, "stream_options": { "include_usage": true } }),
        );
        assert_eq!(response.status, 200);
        assert!(
            response.body_error.is_some(),
            "cut {cut}: the body must end in an error"
        );
        let (chunks, done) = sse_chunks(&response);
        assert!(!done, "cut {cut}: no [DONE]");
        assert_eq!(chunks.len(), cut, "cut {cut}: {}", response.text());
        assert!(chunks
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()));
    }
    // Past the end of the content: the stream completes.
    let response = chat(
        &upstream,
        &[("x-mock-completion-tokens", "2"), ("x-mock-cut-after", "3")],
        json!({ "stream": true }),
    );
    assert_eq!(response.body_error, None);
    assert!(sse_chunks(&response).1);
    // The raw view: the last chunk never arrives.
    let (_, raw) = raw_chunks(&upstream, r#"{"stream":true}"#, "x-mock-cut-after: 1\r\n");
    assert_eq!(raw.len(), 1);
}

#[test]
fn status_header_fails_with_an_openai_error() {
    let upstream = MockUpstream::start();
    for status in ["429", "500", "503"] {
        let response = chat(
            &upstream,
            &[("x-mock-status", status)],
            json!({ "stream": true }),
        );
        assert_eq!(response.status.to_string(), status);
        assert_eq!(
            response.json(),
            json!({ "error": { "message": "mock failure", "type": "server_error", "code": null } })
        );
    }
}

#[test]
fn malformed_requests_get_400() {
    let upstream = MockUpstream::start();
    let url = upstream.url("/v1/chat/completions");
    let response = request("POST", &url, &[], Some(b"{not json"));
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");

    let response = request(
        "POST",
        &url,
        &[("x-mock-completion-tokens", "lots")],
        Some(b"{}"),
    );
    assert_eq!(response.status, 400);
    let message = response.json()["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(message.contains("x-mock-completion-tokens"), "{message}");
}

#[test]
fn models_unknown_routes_and_the_request_log() {
    let upstream = MockUpstream::start();
    let models = get(&upstream.url("/v1/models"));
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], "mock-model");

    let missing = get(&upstream.url("/v1/nope?x=1"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "unknown_url");
    let wrong_method = get(&upstream.url("/v1/chat/completions"));
    assert_eq!(wrong_method.status, 404);

    chat(&upstream, &[("x-trace", "abc")], json!({ "model": "m9" }));
    let recorded = upstream.requests();
    let paths: Vec<_> = recorded.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/models",
            "/v1/nope?x=1",
            "/v1/chat/completions",
            "/v1/chat/completions"
        ]
    );
    let last = &recorded[3];
    assert_eq!(last.method, "POST");
    assert_eq!(last.header("X-Trace"), Some("abc"));
    assert!(last
        .headers
        .iter()
        .all(|(name, _)| *name == name.to_ascii_lowercase()));
    assert_eq!(last.json(), json!({ "model": "m9" }));

    // The control path serves the same log and is not recorded itself.
    let listed = get(&upstream.url("/__mock/requests")).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(4));
    assert_eq!(listed[3]["body"], r#"{"model":"m9"}"#);
    assert_eq!(listed[3]["path"], "/v1/chat/completions");
    assert_eq!(upstream.requests().len(), 4);

    upstream.clear_requests();
    assert!(upstream.requests().is_empty());
    chat(&upstream, &[], json!({}));
    assert_eq!(
        request("DELETE", &upstream.url("/__mock/requests"), &[], None).status,
        204
    );
    assert!(upstream.requests().is_empty());
}

#[test]
fn delays_hold_the_headers_and_space_the_events() {
    let upstream = MockUpstream::start();
    let started = Instant::now();
    let response = chat(&upstream, &[("x-mock-delay-ms", "200")], json!({}));
    assert_eq!(response.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let started = Instant::now();
    let response = chat(
        &upstream,
        &[
            ("x-mock-completion-tokens", "2"),
            ("x-mock-chunk-delay-ms", "50"),
        ],
        json!({ "stream": true }),
    );
    // Four events (2 content, finish, [DONE]) with three gaps between them.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert!(sse_chunks(&response).1);
}

#[test]
fn serves_concurrent_streams() {
    let upstream = MockUpstream::start();
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                for _ in 0..5 {
                    let response = chat(
                        &upstream,
                        &[("x-mock-completion-tokens", "20")],
                        json!({ "stream": true, "stream_options": { "include_usage": true } }),
                    );
                    let (chunks, done) = sse_chunks(&response);
                    assert!(done);
                    assert_eq!(chunks.len(), 22);
                }
            });
        }
    });
    assert_eq!(upstream.requests().len(), 80);
}

#[test]
fn drop_stops_the_server() {
    let upstream = MockUpstream::start();
    let url = upstream.url("/v1/models");
    assert_eq!(get(&url).status, 200);
    drop(upstream);
    assert!(try_request("GET", &url, &[], None).is_err());
}

#[test]
fn binary_serves_until_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mock-upstream");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("banner");
    let addr = line
        .trim()
        .strip_prefix("mock-upstream listening on ")
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .to_owned();
    let response = post_json(
        &format!("http://{addr}/v1/chat/completions"),
        &[],
        &json!({ "messages": [{ "role": "user", "content": "hi" }] }),
    );
    assert_eq!(response.json()["usage"]["total_tokens"], 4 + 16);
    let listed = get(&format!("http://{addr}/__mock/requests")).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));

    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: signalling the child we spawned and have not reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");

    let usage = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .arg("--bogus")
        .output()
        .expect("run");
    assert_eq!(usage.status.code(), Some(2));
}
