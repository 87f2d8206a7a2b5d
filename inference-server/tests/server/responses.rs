//! `/v1/responses` over HTTP: the same engine and validation as chat
//! completions, in the Responses API's shapes (the official client's own
//! checks of them run in `python.rs`).

use maas_testkit::{post_json, InferenceServer};
use serde_json::{json, Value};

use crate::support::*;

fn respond(server: &InferenceServer, body: &Value) -> maas_testkit::Response {
    post_json(&server.url("/v1/responses"), &[], body)
}

/// The events of a streamed response, each `event: <type>` matching its
/// data's `type`.
fn events(r: &maas_testkit::Response) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (kind, data) = e.split_once('\n').unwrap();
            let value: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(kind.strip_prefix("event: ").unwrap(), value["type"], "{e}");
            value
        })
        .collect()
}

/// A greedy answer is the chat completion's answer to the same messages,
/// whole and streamed, with the same usage in the Responses API's words.
#[test]
fn a_response_is_the_chat_completion_of_the_same_conversation() {
    let server = InferenceServer::start(&[]);
    let question = "Name three colours of the rainbow.";
    let chat_r = chat(
        &server,
        &json!({"model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 24,
                "messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": question}]}),
    );
    let expected = chat_text(&chat_r);
    let chat_usage = chat_r.json()["usage"].clone();
    let request = json!({"model": "smollm2-135m-instruct", "temperature": 0,
                         "max_output_tokens": 24, "instructions": "Be brief.", "input": question});

    let whole = respond(&server, &request);
    assert_eq!(whole.status, 200, "{}", whole.text());
    let whole = whole.json();
    assert_eq!(whole["object"], "response");
    assert_eq!(whole["output"][0]["type"], "message");
    assert_eq!(whole["output"][0]["content"][0]["text"], expected.as_str());
    assert_eq!(whole["usage"]["input_tokens"], chat_usage["prompt_tokens"]);
    assert_eq!(
        whole["usage"]["output_tokens"],
        chat_usage["completion_tokens"]
    );
    assert_eq!(whole["max_output_tokens"], 24);
    assert_eq!(whole["instructions"], "Be brief.");
    assert_eq!(whole["store"], false);
    let status = if chat_r.json()["choices"][0]["finish_reason"] == "length" {
        "incomplete"
    } else {
        "completed"
    };
    assert_eq!(whole["status"], status);

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let events = events(&respond(&server, &streamed));
    assert_eq!(events[0]["type"], "response.created");
    let last = events.last().unwrap();
    assert_eq!(last["type"], format!("response.{status}"));
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, expected);
    assert_eq!(last["response"]["usage"], whole["usage"]);
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        expected.as_str()
    );
    for (n, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], n, "{e}");
    }
}

/// Bad input gets a 400 naming the Responses field at fault; what needs
/// stored state or work outside the model is refused by name; an unknown
/// model is a 404.
#[test]
fn bad_and_unsupported_requests_are_refused_by_name() {
    let server = InferenceServer::start(&[]);
    let model = "smollm2-135m-instruct";
    for (body, status, param, code) in [
        (
            json!({"model": model, "input": "Hi", "previous_response_id": "resp_1"}),
            400,
            json!("previous_response_id"),
            json!("unsupported_parameter"),
        ),
        (
            json!({"model": model, "input": "Hi", "tools": [{"type": "web_search"}]}),
            400,
            json!("tools"),
            json!("unsupported_parameter"),
        ),
        (
            json!({"model": model, "input": "Hi", "max_tokens": 5}),
            400,
            json!("max_tokens"),
            Value::Null,
        ),
        (
            json!({"model": model, "input": "Hi", "max_output_tokens": 0}),
            400,
            json!("max_output_tokens"),
            Value::Null,
        ),
        (
            json!({"model": model, "input": "Hi", "text": {"format": {"type": "json_schema", "name": "s",
                "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}}),
            400,
            json!("text.format.schema"),
            Value::Null,
        ),
        (
            json!({"model": model, "input": [{"role": "user", "content": 5}]}),
            400,
            json!("input"),
            Value::Null,
        ),
        (
            json!({"model": "no-such-model", "input": "Hi"}),
            404,
            json!("model"),
            json!("model_not_found"),
        ),
    ] {
        let r = respond(&server, &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let error = &r.json()["error"];
        assert_eq!(error["param"], param, "{body}: {error}");
        if !code.is_null() {
            assert_eq!(error["code"], code, "{body}: {error}");
        }
    }
    let r = post_raw(&server, "/v1/responses", r#"{"model": "#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
}
