//! `n` choices from one request: one prefill shared by all of them, a seed
//! stream per choice, each choice's index on its chunks, usage for all.

use maas_testkit::InferenceServer;
use serde_json::{json, Value};

use crate::support::{
    chat, chat_body, completion, endless_stream, metric, open_stream, parse_stream, MODEL,
};

const PROMPT_TOKENS: &str = "inference_prompt_tokens_total{model=\"smollm2-135m-instruct\"}";

fn sampled(n: usize, seed: u64) -> Value {
    json!({
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 12,
        "temperature": 1.0, "seed": seed, "n": n, "ignore_eos": true,
    })
}

fn texts(body: &Value) -> Vec<String> {
    body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i, "{body}");
            c["text"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn choices_share_one_prefill_and_sample_with_a_seed_each() {
    let server = InferenceServer::start(&[]);
    let prefilled = metric(&server, PROMPT_TOKENS);
    let requests = "inference_request_seconds_count";
    let r = completion(&server, &sampled(3, 7));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let three = texts(&body);
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 3 * 12, "{body}");
    assert_eq!(body["usage"]["total_tokens"], prompt + 36);
    assert_eq!(
        metric(&server, PROMPT_TOKENS) - prefilled,
        prompt as f64,
        "the prompt of three choices is counted once"
    );
    assert_eq!(metric(&server, requests), 1.0, "one request, timed once");
    // Choice i samples as one choice seeded with 7 + i would.
    for (i, text) in three.iter().enumerate() {
        let alone = completion(&server, &sampled(1, 7 + i as u64)).json();
        assert_eq!(texts(&alone), std::slice::from_ref(text), "choice {i}");
    }
    assert!(
        three[0] != three[1] || three[1] != three[2],
        "three seeds gave one text: {three:?}"
    );
}

#[test]
fn streamed_choices_carry_their_index_and_end_with_the_usage_of_all() {
    let server = InferenceServer::start(&[]);
    let body = chat_body(
        "Tell me a story.",
        json!({"n": 2, "temperature": 1.0, "seed": 3, "max_tokens": 10}),
    );
    let whole = chat(&server, &body).json();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let s = parse_stream(&chat(&server, &streamed));
    assert!(s.done);
    let mut text = [String::new(), String::new()];
    let mut roles = [0, 0];
    let mut finishes = [None, None];
    for chunk in s.chunks.iter().filter(|c| c["usage"].is_null()) {
        let choices = chunk["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 1, "{chunk}");
        let i = choices[0]["index"].as_u64().unwrap() as usize;
        let delta = &choices[0]["delta"];
        roles[i] += usize::from(delta["role"] == "assistant");
        text[i] += delta["content"].as_str().unwrap_or("");
        if let Some(f) = choices[0]["finish_reason"].as_str() {
            assert!(finishes[i].is_none(), "choice {i} finished twice");
            finishes[i] = Some(f.to_string());
        }
    }
    assert_eq!(roles, [1, 1], "each choice opens with the role once");
    for i in 0..2 {
        assert_eq!(
            text[i], whole["choices"][i]["message"]["content"],
            "choice {i}"
        );
        assert_eq!(
            finishes[i].as_deref(),
            whole["choices"][i]["finish_reason"].as_str()
        );
    }
    // The same counts; the streamed request came second and found its
    // prompt's full blocks in the prefix cache.
    let streamed_usage = s.usage.unwrap();
    let mut usage = streamed_usage.clone();
    let cached = usage["prompt_tokens_details"]["cached_tokens"].take();
    assert!(cached.as_u64().is_some_and(|c| c > 0), "{usage}");
    usage["prompt_tokens_details"]["cached_tokens"] = json!(0);
    assert_eq!(usage, whole["usage"]);
    // The usage of both comes once, last, after both choices finished.
    let last = s.chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(last["usage"], streamed_usage);
    assert_eq!(s.chunks.iter().filter(|c| !c["usage"].is_null()).count(), 1);
}

#[test]
fn every_choice_keeps_to_the_response_format() {
    let server = InferenceServer::start(&[]);
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": false,
    });
    let body = chat_body(
        "Describe a person as JSON.",
        json!({
            "n": 3, "temperature": 1.0, "seed": 11, "max_tokens": 60,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        }),
    );
    let r = chat(&server, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for c in choices {
        assert_eq!(c["finish_reason"], "stop", "{c}");
        let text = c["message"]["content"].as_str().unwrap();
        let v: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
    }
}

#[test]
fn more_choices_than_running_slots_are_refused_and_a_full_server_says_503() {
    let server = InferenceServer::start(&["--max-running", "2", "--max-queued", "1"]);
    let r = completion(&server, &sampled(3, 1));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "n");
    let r = completion(&server, &sampled(2, 1));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 2);
    // Two of the three places taken: two choices do not fit in the one left.
    let running = [
        open_stream(&server, &endless_stream()),
        open_stream(&server, &endless_stream()),
    ];
    let r = completion(&server, &sampled(2, 1));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "server_overloaded");
    drop(running);
}
