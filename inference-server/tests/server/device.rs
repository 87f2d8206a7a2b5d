//! `--device`: the candle tensor path (the code CUDA runs) served over HTTP
//! on candle's CPU backend, and clear refusals for devices this build lacks.

use std::process::Command;

use maas_testkit::{inference_server_binary, InferenceServer};
use serde_json::json;

use crate::support::*;

const PROMPTS: [&str; 3] = [
    "What is the capital of France? Answer in one word.",
    "List three prime numbers.",
    "Why is the sky blue?",
];

#[test]
fn the_device_path_answers_and_batches_like_the_host_kernels() {
    let server = InferenceServer::start(&["--device", "candle-cpu"]);
    assert!(
        server.log().contains("candle Cpu"),
        "the log names the device: {}",
        server.log()
    );
    let answer = streamed_text(&server, PROMPTS[0], 20);
    assert!(answer.contains("Paris"), "{answer:?}");
    assert_batching_changes_nothing(&server, &PROMPTS, 20);

    // Usage is counted the same way whatever the device.
    let r = chat(&server, &chat_body(PROMPTS[1], json!({"max_tokens": 7})));
    let usage = &r.json()["usage"];
    assert_eq!(usage["completion_tokens"], 7, "{usage}");
}

#[test]
fn devices_this_build_lacks_or_does_not_know_are_refused_at_start() {
    let run = |device: &str| {
        let out = Command::new(inference_server_binary())
            .args(["--device", device])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("tpu");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("expected cpu, candle-cpu, cuda or cuda:N"),
        "{err}"
    );
    if !cfg!(feature = "cuda") {
        let (code, err) = run("cuda:1");
        assert_eq!(code, Some(2));
        assert!(
            err.contains("no CUDA support") && err.contains("make server-cuda"),
            "{err}"
        );
    }
}
