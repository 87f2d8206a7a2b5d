//! Structured-output and tool-calling requests through the real stack: a
//! JSON schema or a tool list makes
//! the request body several kilobytes larger (the reservation's prompt bound
//! reads the body) and the constrained answer ends the moment the document
//! is complete; the charge must still be the usage the server reported,
//! whole and streamed.

use maas_testkit::InferenceServer;
use serde_json::{json, Map, Value};

use super::{charged, chat_ok, gateway, streamed_without_usage, usage_of, MODEL};
const KEY: &str = "sk-structured-outputs-key";
const AUTH: &str = "Bearer sk-structured-outputs-key";

/// A schema with many optional properties (a large body) and two required
/// ones the answer must hold.
fn schema() -> Value {
    let mut properties = Map::new();
    properties.insert("city".into(), json!({"type": "string", "maxLength": 16}));
    properties.insert("unit".into(), json!({"enum": ["celsius", "fahrenheit"]}));
    for i in 0..150 {
        properties.insert(
            format!("optional_field_{i}"),
            json!({"type": "integer", "minimum": 0, "maximum": 9, "description": "never needed"}),
        );
    }
    json!({"type": "object", "properties": properties, "required": ["city", "unit"]})
}

fn check(answer: &str) {
    let v: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    assert!(v["city"].as_str().is_some_and(|c| c.len() <= 16), "{v}");
    assert!(
        ["celsius", "fahrenheit"].contains(&v["unit"].as_str().unwrap()),
        "{v}"
    );
}

#[test]
fn json_schema_answers_are_valid_and_charged_the_reported_usage() {
    let server = InferenceServer::start(&[]);
    let gateway = gateway(&server, KEY);
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "weather", "strict": true, "schema": schema()}},
        "temperature": 0, "max_tokens": 200,
    });
    assert!(body.to_string().len() > 10_000);

    let answer = chat_ok(&gateway, AUTH, &body).json();
    assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{answer}");
    check(answer["choices"][0]["message"]["content"].as_str().unwrap());
    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(charged(&record), usage_of(&answer["usage"]));

    // Streamed, usage not asked for: the gateway asks, charges it, and
    // strips it from what the client sees.
    let events = streamed_without_usage(&gateway, AUTH, &body);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    check(&text);
    let record = gateway.await_access_log(2).remove(1);
    let (_, completion) = charged(&record);
    // The same greedy request: the same tokens as the whole answer.
    assert_eq!(completion, usage_of(&answer["usage"]).1, "{record}");

    // A schema the server cannot enforce: its 400 reaches the client, and
    // the refused request is charged nothing.
    body["response_format"]["json_schema"]["schema"] = json!({"type": "strng"});
    let r = gateway.post_json("/v1/chat/completions", &[("authorization", AUTH)], &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json()["error"]["param"],
        "response_format.json_schema.schema"
    );
    let record = gateway.await_access_log(3).remove(2);
    assert_eq!(record["usage"], "none", "{record}");
    assert_eq!(record["prompt_tokens"], 0, "{record}");
    assert_eq!(record["completion_tokens"], 0, "{record}");
}

#[test]
fn forced_tool_calls_are_charged_the_reported_usage_whole_and_streamed() {
    let server = InferenceServer::start(&[]);
    let gateway = gateway(&server, KEY);
    let parameters = json!({"type": "object", "additionalProperties": false,
        "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"]});
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": parameters}}],
        "tool_choice": "required", "temperature": 0, "max_tokens": 100,
    });
    let answer = chat_ok(&gateway, AUTH, &body).json();
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{answer}");
    let call = &choice["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{arguments}");
    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(charged(&record), usage_of(&answer["usage"]));

    // Streamed: the call in `tool_calls` deltas, its name in the first and
    // its arguments in fragments that add up to the whole answer's; the
    // gateway still finds the usage it asked for.
    let events = streamed_without_usage(&gateway, AUTH, &body);
    let mut calls: Vec<(String, String)> = Vec::new();
    for delta in events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
    {
        let index = delta["index"].as_u64().unwrap() as usize;
        if index == calls.len() {
            calls.push(Default::default());
        }
        let (name, arguments) = &mut calls[index];
        name.push_str(delta["function"]["name"].as_str().unwrap_or_default());
        arguments.push_str(delta["function"]["arguments"].as_str().unwrap_or_default());
    }
    // `required` with parallel calls allowed: one call or more, the same
    // streamed as whole.
    let whole: Vec<(String, String)> = choice["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let f = &c["function"];
            (
                f["name"].as_str().unwrap().to_owned(),
                f["arguments"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(calls, whole, "{events:?}");
    assert!(events
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "tool_calls"));
    let record = gateway.await_access_log(2).remove(1);
    assert_eq!(charged(&record), usage_of(&answer["usage"]), "{record}");
}
