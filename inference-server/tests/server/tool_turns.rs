//! An agent's second turn: the calls an answer made go back to the model
//! through its own chat template, with their results. Each family's
//! template is strict about that history in its own way, and a first
//! answer it cannot take back breaks every tool loop on that model:
//! - Mistral's templates take only call ids of nine letters and digits;
//! - Llama 3.1's takes one call per assistant turn;
//! - Gemma 3's knows no tool turns and refuses two user turns in a row, as
//!   the results of parallel calls would be if each became a user turn.
//!
//! The templates are the families' published ones (`llama3.1.jinja`: Meta's
//! Llama 3.1 8B Instruct, as llama.cpp's `models/templates` keeps it;
//! `mistral.jinja`: Mistral Nemo's, see `chat_template_reference`), given
//! to the SmolLM2 server with `--chat-template`; Gemma 3 is the real file.

use maas_testkit::InferenceServer;
use serde_json::{json, Value};

use crate::support::*;

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "required": ["city"], "additionalProperties": false,
                           "properties": {"city": {"type": "string", "maxLength": 12}}}}},
        {"type": "function", "function": {"name": "get_time",
            "parameters": {"type": "object", "required": ["city"], "additionalProperties": false,
                           "properties": {"city": {"type": "string", "maxLength": 12}}}}},
    ])
}

const QUESTION: &str = "What are the weather and the time in Paris?";

/// The first turn, forced to call: its assistant message, as the client
/// keeps it for the next turn.
fn first_turn(server: &InferenceServer, model: &str) -> Value {
    let r = chat(
        server,
        &json!({
            "model": model, "temperature": 0, "max_tokens": 80,
            "tools": weather_tools(), "tool_choice": "required",
            "messages": [{"role": "user", "content": QUESTION}],
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let choice = &r.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{choice}");
    choice["message"].clone()
}

/// The second turn: the calls and a result for each, with the tools still
/// offered. Its status and body.
fn second_turn(server: &InferenceServer, model: &str, assistant: &Value) -> (u16, String) {
    let mut messages = vec![
        json!({"role": "user", "content": QUESTION}),
        assistant.clone(),
    ];
    for call in assistant["tool_calls"].as_array().unwrap() {
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "18 C"}));
    }
    let r = chat(
        server,
        &json!({"model": model, "temperature": 0, "max_tokens": 8,
                "tools": weather_tools(), "messages": messages}),
    );
    (r.status, r.text())
}

fn template(name: &str) -> String {
    format!("{}/tests/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn mistral_call_ids_go_back_through_its_template() {
    let path = template("chat_template_reference/mistral.jinja");
    let server = InferenceServer::start(&["--chat-template", &path]);
    let assistant = first_turn(&server, MODEL);
    for call in assistant["tool_calls"].as_array().unwrap() {
        let id = call["id"].as_str().unwrap();
        assert!(
            id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
    }
    let (status, body) = second_turn(&server, MODEL, &assistant);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn llama3_answers_one_call_which_its_template_takes_back() {
    let path = template("server/templates/llama3.1.jinja");
    let server = InferenceServer::start(&["--chat-template", &path]);
    // `parallel_tool_calls` is left at its default (true).
    let assistant = first_turn(&server, MODEL);
    let calls = assistant["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{assistant}");
    let (status, body) = second_turn(&server, MODEL, &assistant);
    assert_eq!(status, 200, "{body}");
}

/// Gemma 3's template knows no tools: the server describes them and writes
/// the tool turns as text. The results of two parallel calls make one user
/// turn, with the tools offered or (the final answer) not.
#[test]
fn gemma_takes_back_the_results_of_parallel_calls() {
    let server = gemma_server(&[]);
    let call = |id: &str, name: &str| {
        json!({"id": id, "type": "function",
               "function": {"name": name, "arguments": "{\"city\": \"Paris\"}"}})
    };
    let messages = json!([
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": null,
         "tool_calls": [call("call_a", "get_weather"), call("call_b", "get_time")]},
        {"role": "tool", "tool_call_id": "call_a", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "14:05"},
    ]);
    // And a user message after the results, which joins their turn.
    let mut followed = messages.clone();
    followed
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "user", "content": "Now in one sentence."}));
    for (messages, tools) in [
        (&messages, Some(weather_tools())),
        (&messages, None),
        (&followed, None),
    ] {
        let mut body = json!({"model": GEMMA, "temperature": 0, "max_tokens": 8,
                              "messages": messages});
        if let Some(tools) = &tools {
            body["tools"] = tools.clone();
        }
        let r = chat(&server, &body);
        assert_eq!(r.status, 200, "tools: {}: {}", tools.is_some(), r.text());
    }
}

/// `tool_choice` "auto" with a `response_format`, as agents that declare an
/// output type send on every turn: the answer is a call of a tool or the
/// final answer in the format, never free text.
#[test]
fn auto_with_a_response_format_answers_with_a_call_or_the_format() {
    let server = InferenceServer::start(&[]);
    let schema = json!({"type": "object", "required": ["answer"], "additionalProperties": false,
                        "properties": {"answer": {"type": "string", "maxLength": 40}}});
    for question in [QUESTION, "Say hello."] {
        let r = chat(
            &server,
            &json!({
                "model": MODEL, "temperature": 0, "max_tokens": 200,
                "tools": weather_tools(), "tool_choice": "auto",
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "final", "strict": true, "schema": schema}},
                "messages": [{"role": "user", "content": question}],
            }),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let choice = &r.json()["choices"][0];
        let message = &choice["message"];
        // The weather question gets its calls (greedy SmolLM2 makes them;
        // with the schema over the whole answer it could not).
        assert!(
            question != QUESTION || message["tool_calls"].is_array(),
            "{message}"
        );
        match message["tool_calls"].as_array() {
            Some(calls) => {
                assert_eq!(choice["finish_reason"], "tool_calls", "{choice}");
                for call in calls {
                    let arguments: Value =
                        serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
                            .unwrap();
                    assert!(arguments["city"].is_string(), "{call}");
                }
            }
            None => {
                let content: Value = serde_json::from_str(message["content"].as_str().unwrap())
                    .unwrap_or_else(|e| panic!("{question}: not JSON ({e}): {message}"));
                assert!(content["answer"].is_string(), "{content}");
            }
        }
    }
}
