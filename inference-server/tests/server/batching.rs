//! Continuous batching through the public API: identical greedy output alone
//! and together, slots freed by disconnects, an honest 503 when full.

use std::io::Read;
use std::time::Duration;

use maas_testkit::InferenceServer;
use serde_json::json;

use crate::support::*;

const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "What is 12 times 12?",
    "Describe a cat to someone who has never seen one.",
    "Give me a tip for learning Rust.",
    "Why is the sky blue?",
];

#[test]
fn eight_concurrent_streams_each_get_their_solo_greedy_text() {
    let server = InferenceServer::start(&[]);
    assert_batching_changes_nothing(&server, &PROMPTS, 48);
}

/// With one slot, a request that `hang_up` abandons mid-generation is
/// retired (counted as cancelled) and the slot serves the next request.
fn assert_hang_up_frees_the_slot(hang_up: impl FnOnce(&InferenceServer) -> std::net::TcpStream) {
    let server = InferenceServer::start(&["--max-running", "1", "--max-queued", "1"]);
    let sock = hang_up(&server);
    await_metric(&server, "inference_running_sequences", 1.0);
    drop(sock);
    await_metric(&server, &outcome("cancelled"), 1.0);
    await_metric(&server, "inference_running_sequences", 0.0);
    let r = chat(&server, &chat_body("Say hi.", json!({"max_tokens": 4})));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_client_that_hangs_up_frees_its_slot() {
    assert_hang_up_frees_the_slot(|server| open_stream(server, &endless_stream()));
}

#[test]
fn a_non_streaming_client_that_hangs_up_frees_its_slot_too() {
    assert_hang_up_frees_the_slot(|server| {
        let mut body = endless_stream();
        body["stream"] = json!(false);
        send_raw(server, &body)
    });
}

#[test]
fn a_full_queue_answers_503_with_retry_after_at_once() {
    let server = InferenceServer::start(&["--max-running", "1", "--max-queued", "1"]);
    let running = open_stream(&server, &endless_stream());
    // A queued stream's headers come with its first token (a request that
    // fails before it has one gets its own status).
    let queued = send_raw(&server, &endless_stream());
    await_metric(&server, "inference_queue_depth", 1.0);
    let started = std::time::Instant::now();
    let r = chat(&server, &chat_body("Say hi.", json!({"max_tokens": 4})));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal must not wait"
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    let e = r.json();
    assert_eq!(e["error"]["code"], "server_overloaded");
    assert_eq!(e["error"]["type"], "server_error");
    assert_eq!(metric(&server, &outcome("rejected_queue_full")), 1.0);
    await_metric(&server, "inference_queue_depth", 1.0);
    drop(running);
    // The queued stream is admitted once the running one is gone.
    let mut queued = queued;
    let mut buf = [0u8; 4096];
    let mut seen = String::new();
    while seen.matches("data: ").count() < 3 {
        let n = queued.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
}
