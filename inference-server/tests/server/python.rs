//! The official OpenAI Python client, unchanged, runs the example scripts
//! against the server.

use std::process::Command;

use maas_testkit::{python_with_openai, workspace_root, InferenceServer};

/// Runs `examples/<script>` against a fresh server; its output, once it
/// exited successfully.
fn run_example(script: &str) -> String {
    let python = python_with_openai();
    let server = InferenceServer::start(&[]);
    let out = Command::new(python)
        .arg(workspace_root().join("examples").join(script))
        .env("INFERENCE_BASE_URL", server.url("/v1"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Fails unless each of `lines` is in `stdout`.
fn assert_printed(stdout: &str, lines: &[&str]) {
    for line in lines {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }
}

/// Fails unless the example's `answer:` line names Paris.
fn assert_answered_paris(stdout: &str) {
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("answer:") && l.contains("Paris")),
        "{stdout}"
    );
}

/// The number the example printed after `label`.
fn printed_count(stdout: &str, label: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.split_once(label).map(|(_, n)| n))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}"))
}

#[test]
fn the_openai_python_client_works_unchanged() {
    let stdout = run_example("inference_client.py");
    assert_printed(
        &stdout,
        &[
            "model: smollm2-135m-instruct",
            "finish: stop",
            "'prompt_tokens': 42",
            "seeded twice, same text: True",
            "logit_bias forces one token: True",
            "logprobs spell the answer: True",
            "n=3 indices: [0, 1, 2]",
            "n=3 choice i is seed 7+i: True",
            "n=3 texts differ: True",
            "n=3 usage is all choices': True",
            "best_of=2 refused: 400 best_of",
        ],
    );
    assert_answered_paris(&stdout);
    assert!(
        stdout.contains("stream usage: {'completion_tokens'"),
        "{stdout}"
    );
}

/// `examples/structured_outputs.py`: 23 JSON schemas (nested objects,
/// arrays, enums, required fields, number bounds, string patterns, unions,
/// references), half greedy and half sampled, each answer checked with the
/// `jsonschema` validator; a streamed one; `json_object`; a schema the
/// grammar engine refuses.
#[test]
fn every_structured_output_validates_against_its_schema() {
    let stdout = run_example("structured_outputs.py");
    assert_printed(
        &stdout,
        &[
            "schemas valid: 23 of 23",
            "streamed valid: True",
            "json_object is an object: True stop",
            "bad schema refused: 400 response_format.json_schema.schema",
        ],
    );
    // Every answer ended because its document was complete, not cut.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains(": valid (stop)"))
            .count(),
        23,
        "{stdout}"
    );
}

/// `examples/tool_calling.py`: a weather tool with `tool_choice`
/// `required` and with a named function (greedy and sampled), three
/// sampled choices each forced to a valid call, streamed
/// `delta.tool_calls` (the arguments in several fragments), a second turn
/// with the tool's result, and `auto`; every call's arguments checked
/// against the function's schema with `jsonschema`.
#[test]
fn tool_calls_are_made_streamed_and_answered() {
    let stdout = run_example("tool_calling.py");
    assert_printed(
        &stdout,
        &[
            "required: tool_calls [(",
            "named: tool_calls get_time",
            "n=3: [0, 1, 2] ids unique: True",
            "streamed: tool_calls [(",
            "second turn: ",
            "auto: ",
        ],
    );
    // The streamed call's arguments came as the model wrote them, not
    // whole at the end.
    assert!(
        printed_count(&stdout, "streamed argument fragments: ") > 1,
        "{stdout}"
    );
}

/// `examples/responses_client.py`: the Responses API through the official
/// client, whose stream accumulator fails on any event out of place: a
/// greedy answer whole and streamed (the same text and usage), an answer
/// the budget cut, a forced call checked against its schema and the
/// second turn carrying its output, a streamed call, a structured answer
/// parsed into a pydantic model, and `previous_response_id` refused.
#[test]
fn the_responses_api_works_with_the_openai_client_unchanged() {
    let stdout = run_example("responses_client.py");
    assert_printed(
        &stdout,
        &[
            "id: True",
            "usage: ",
            "streamed first/last: response.created response.",
            "streamed text is the whole one: True",
            "streamed usage is the whole one: True",
            "cut: incomplete max_output_tokens 3",
            "required: completed [('get_weather', True)",
            "second turn: ",
            "streamed call: get_weather argument fragments: ",
            "parsed: City ",
            "previous_response_id refused: 400 previous_response_id unsupported_parameter",
        ],
    );
    assert_answered_paris(&stdout);
    assert!(
        printed_count(&stdout, "argument fragments: ") > 1,
        "{stdout}"
    );
}
