//! Start-up and shutdown: a clear message without a model, and SIGTERM that
//! lets running streams finish (or cuts them cleanly at the grace deadline).

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;

use std::time::Duration;

use maas_testkit::{eventually, inference_server_binary, try_request, InferenceServer};
use serde_json::json;

use crate::support::*;

fn read_to_end(mut sock: TcpStream) -> String {
    let mut all = Vec::new();
    let _ = sock.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn sigterm_lets_running_streams_finish_then_exits_cleanly() {
    let mut server = InferenceServer::start(&[]);
    let sock = open_stream(
        &server,
        &chat_body(
            "Count from 1 to 20.",
            json!({"max_tokens": 64, "stream": true}),
        ),
    );
    let reader = std::thread::spawn(move || read_to_end(sock));
    server.signal_term();
    // New work is refused at once: the listener closes (or, on a connection
    // already open, the answer is 503).
    eventually(Duration::from_secs(10), || {
        match try_request("GET", &server.url("/health"), &[], None) {
            Err(_) => Ok(()),
            Ok(r) if r.status == 503 => Ok(()),
            Ok(r) => Err(format!("health still {} during shutdown", r.status)),
        }
    });
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", server.log());
    let rest = reader.join().unwrap();
    assert!(rest.contains("data: [DONE]"), "stream was cut: {rest}");
    assert!(server.log().contains("shutting down"), "{}", server.log());
}

/// The `data:` events of a raw HTTP/1.1 stream's text, parsed.
fn events(raw: &str) -> Vec<serde_json::Value> {
    raw.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

#[test]
fn the_grace_deadline_cuts_streams_with_an_error_event_and_their_usage() {
    let mut server = InferenceServer::start(&["--shutdown-grace-secs", "1"]);
    let mut long = endless_stream();
    merge(
        &mut long,
        json!({"stream_options": {"include_usage": true}}),
    );
    let sock = open_stream(&server, &long);
    let reader = std::thread::spawn(move || read_to_end(sock));
    let status = server.terminate();
    assert!(status.success(), "{status}");
    let rest = reader.join().unwrap();
    assert!(
        !rest.contains("[DONE]"),
        "a cut stream must not look complete"
    );
    let events = events(&rest);
    let (usage, error) = match events.as_slice() {
        [.., usage, error] => (usage, error),
        _ => panic!("{rest}"),
    };
    assert_eq!(error["error"]["code"], "generation_failed", "{rest}");
    // What it computed, exactly: a gateway charges this, not an estimate.
    let contents = events
        .iter()
        .filter(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count() as u64;
    let completion = usage["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion >= contents && completion > 0, "{rest}");
    assert!(
        usage["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );
    assert_eq!(usage["choices"], json!([]), "{usage}");
    // The usage is the usage chunk's alone: an event of usage is what a
    // gateway strips when its client did not ask for it.
    assert!(error.get("usage").is_none(), "{error}");
}

#[test]
fn a_non_streamed_answer_cut_at_the_deadline_reports_what_it_computed() {
    let mut server = InferenceServer::start(&["--shutdown-grace-secs", "1"]);
    let mut long = endless_stream();
    merge(&mut long, json!({"stream": false}));
    let sock = send_raw(&server, &long);
    let reader = std::thread::spawn(move || read_to_end(sock));
    // Decoding before the signal: a token generated (on a loaded machine
    // prefill alone may outlast the grace period).
    let generated = format!("inference_generated_tokens_total{{model=\"{MODEL}\"}}");
    eventually(Duration::from_secs(30), || {
        match metric(&server, &generated) {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("{n} tokens generated")),
        }
    });
    let status = server.terminate();
    assert!(status.success(), "{status}");
    let raw = reader.join().unwrap();
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    let body: serde_json::Value =
        serde_json::from_str(&raw[raw.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["error"]["code"], "generation_failed", "{body}");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );
}

#[test]
fn a_queued_stream_refused_at_shutdown_gets_a_503_not_a_stream() {
    let mut server = InferenceServer::start(&["--max-running", "1", "--shutdown-grace-secs", "30"]);
    let running = open_stream(&server, &endless_stream());
    let mut queued = endless_stream();
    merge(
        &mut queued,
        json!({"stream_options": {"include_usage": true}}),
    );
    let queued = send_raw(&server, &queued);
    await_metric(&server, "inference_queue_depth", 1.0);
    server.signal_term();
    let raw = read_to_end(queued);
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    let body: serde_json::Value =
        serde_json::from_str(&raw[raw.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["error"]["code"], "generation_failed", "{body}");
    // Nothing was computed for it.
    assert_eq!(body["usage"]["prompt_tokens"], 0, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 0, "{body}");
    drop(running);
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}");
}

#[test]
fn without_the_default_model_the_server_says_how_to_fetch_it() {
    let out = Command::new(inference_server_binary())
        .env("MAAS_MODEL_DIR", "/nonexistent-model-dir")
        .args(["--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("make model") && err.contains("/nonexistent-model-dir"),
        "{err}"
    );
}

#[test]
fn invalid_limits_are_refused_at_start() {
    let out = Command::new(inference_server_binary())
        .args(["--max-running", "64", "--max-batch-tokens", "16"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max batch tokens (16) must cover one decode token per running sequence (64)"),
        "{err}"
    );
}

#[test]
fn until_the_model_is_loaded_health_and_requests_say_loading() {
    // A FIFO as the model file: opening it blocks until a writer appears,
    // which here is never, so the server stays in its loading phase.
    let dir = std::env::temp_dir().join(format!("maas-loading-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("model.gguf");
    let _ = std::fs::remove_file(&fifo);
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut child = Command::new(inference_server_binary())
        .args(["--port", "0", "--model"])
        .arg(&fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();

    let health = maas_testkit::get(&format!("{addr}/health"));
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["status"], "loading");
    let r = maas_testkit::post_json(
        &format!("{addr}/v1/chat/completions"),
        &[],
        &chat_body("hi", json!({})),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_loading");

    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
