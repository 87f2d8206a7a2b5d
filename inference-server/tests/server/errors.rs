//! Bad input gets a specific status and an OpenAI-shaped error body, before
//! it costs the engine anything.

use maas_testkit::{get, InferenceServer, Response};
use serde_json::{json, Value};

use crate::support::*;

fn assert_error(r: &Response, status: u16, param: Option<&str>, needle: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let e = r.json()["error"].clone();
    assert!(
        e["message"].as_str().unwrap().contains(needle),
        "{needle:?} not in {e}"
    );
    assert!(e["type"].is_string(), "{e}");
    assert_eq!(e["param"].as_str(), param, "{e}");
    e
}

#[test]
fn invalid_requests_get_400_naming_the_problem() {
    let server = InferenceServer::start(&["--context", "64"]);
    let r = post_raw(
        &server,
        "/v1/chat/completions",
        r#"{"model": "smollm2-135m-instruct", "messages": ["#,
    );
    assert_error(&r, 400, None, "not valid JSON");
    let r = chat(&server, &json!({"model": MODEL}));
    assert_error(&r, 400, Some("messages"), "required");
    let r = chat(&server, &chat_body("hi", json!({"n": 17})));
    assert_error(&r, 400, Some("n"), "at most 16 sequences at once");
    let r = chat(&server, &chat_body("hi", json!({"temperature": -1})));
    assert_error(&r, 400, Some("temperature"), "between 0 and 2");
    let r = chat(&server, &chat_body("hi", json!({"max_tokens": 0})));
    assert_error(&r, 400, Some("max_tokens"), "at least 1");
    let r = completion(&server, &json!({"model": MODEL, "prompt": ""}));
    assert_error(&r, 400, Some("prompt"), "empty");
    let r = completion(&server, &json!({"model": MODEL, "prompt": [1, 2, 999999]}));
    assert_error(&r, 400, Some("prompt"), "outside the vocabulary");
    // Other servers' fields that would change the answer are refused, not
    // ignored (the client would take unconstrained text for constrained).
    for (extra, param) in [
        (json!({"guided_json": {"type": "object"}}), "guided_json"),
        (json!({"grammar": "root ::= \"yes\""}), "grammar"),
        (json!({"min_p": 0.1}), "min_p"),
    ] {
        let r = chat(&server, &chat_body("hi", extra));
        let e = assert_error(&r, 400, Some(param), "not supported");
        assert_eq!(e["code"], "unsupported_parameter", "{e}");
    }
    let r = completion(
        &server,
        &json!({"model": MODEL, "prompt": "def f(", "suffix": "\n    return x"}),
    );
    assert_error(&r, 400, Some("suffix"), "not supported");
}

/// llama.cpp's `n_predict` bounds the answer as `max_tokens` does; what
/// SDKs send by default (and the fields at their neutral values) passes.
#[test]
fn n_predict_is_a_budget_and_neutral_fields_pass() {
    let server = InferenceServer::start(&[]);
    let r = chat(
        &server,
        &chat_body(
            "Write a long story about a dragon.",
            json!({"n_predict": 3, "ignore_eos": true, "user": "u-1", "store": false,
                   "metadata": {"team": "a"}, "min_p": 0, "repetition_penalty": 1}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 3, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
    assert_eq!(
        r.json()["choices"][0]["message"]["refusal"],
        Value::Null,
        "{}",
        r.text()
    );
}

#[test]
fn a_request_beyond_the_context_is_refused_with_the_numbers() {
    let server = InferenceServer::start(&["--context", "64"]);
    // 36 prompt tokens + 40 > 64.
    let r = chat(
        &server,
        &chat_body("Hello, how are you?", json!({"max_tokens": 40})),
    );
    let e = assert_error(
        &r,
        400,
        Some("messages"),
        "maximum context length is 64 tokens",
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("76 tokens (36 in the prompt, 40 for the completion)"),
        "{e}"
    );
    assert_eq!(e["code"], "context_length_exceeded");
    let long = "word ".repeat(100);
    let r = completion(&server, &json!({"model": MODEL, "prompt": long}));
    assert_error(&r, 400, Some("prompt"), "the prompt alone has");
    // Without max_tokens the completion may use the rest of the context.
    let r = chat(
        &server,
        &chat_body("Hello, how are you?", json!({"temperature": 0})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["usage"]["total_tokens"].as_u64().unwrap() <= 64);
}

#[test]
fn unknown_models_paths_methods_and_huge_bodies_are_refused() {
    let server = InferenceServer::start(&["--max-body-bytes", "2048"]);
    let mut body = chat_body("hi", json!({}));
    body["model"] = json!("gpt-4o");
    let e = assert_error(
        &chat(&server, &body),
        404,
        Some("model"),
        "`gpt-4o` does not exist",
    );
    assert_eq!(e["code"], "model_not_found");

    let e = assert_error(
        &get(&server.url("/v1/embeddings")),
        404,
        None,
        "Unknown path",
    );
    assert_eq!(e["code"], "unknown_url");
    assert_error(
        &get(&server.url("/v1/chat/completions")),
        405,
        None,
        "Method not allowed",
    );

    let big = chat_body(&"x".repeat(4096), json!({}));
    let e = assert_error(&chat(&server, &big), 413, None, "2048 bytes");
    assert_eq!(e["code"], "request_too_large");
    // The server is unharmed.
    assert_eq!(
        chat(&server, &chat_body("hi", json!({"max_tokens": 2}))).status,
        200
    );
}

/// A body that never arrives whole holds its connection only until
/// `--body-read-timeout-secs`, then gets an OpenAI-shaped 408; the server
/// answers others meanwhile.
#[test]
fn a_body_that_stops_arriving_gets_408() {
    use std::io::{Read, Write};
    let server = InferenceServer::start(&["--body-read-timeout-secs", "1"]);
    let mut socket = std::net::TcpStream::connect(server.addr()).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
    socket.write_all(head.as_bytes()).unwrap();
    socket.write_all(br#"{"model": "#).unwrap();
    let r = get(&server.url("/health"));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut answer = String::new();
    // The server closes the connection after its answer.
    let _ = socket.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let error: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");
}
