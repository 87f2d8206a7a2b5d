//! The official OpenAI Python client, unchanged, runs the example script
//! against the server.

use std::process::Command;

use maas_testkit::{python_with_openai, workspace_root, InferenceServer};

#[test]
fn the_openai_python_client_works_unchanged() {
    let python = python_with_openai();
    let server = InferenceServer::start(&[]);
    let out = Command::new(python)
        .arg(workspace_root().join("examples/inference_client.py"))
        .env("INFERENCE_BASE_URL", server.url("/v1"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "model: smollm2-135m-instruct",
        "finish: stop",
        "'prompt_tokens': 42",
        "seeded twice, same text: True",
        "logit_bias forces one token: True",
        "logprobs spell the answer: True",
        "n=2 refused: 400",
    ] {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("answer:") && l.contains("Paris")),
        "{stdout}"
    );
    assert!(
        stdout.contains("stream usage: {'completion_tokens'"),
        "{stdout}"
    );
}
