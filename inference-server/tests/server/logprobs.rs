//! Log-probabilities as OpenAI clients read them: chat's `logprobs.content`
//! and completions' `tokens` / `token_logprobs` / `top_logprobs`, whole and
//! streamed, consistent with the text and with greedy decoding.

use maas_testkit::{post_json, InferenceServer};
use serde_json::{json, Value};

use crate::support::*;

const QUESTION: &str = "What is the capital of France?";

/// A chat entry: the token's bytes, its logprob, and the alternatives.
type Entry = (Vec<u8>, f64, Vec<(String, f64)>);

fn chat_entries(content: &Value) -> Vec<Entry> {
    content
        .as_array()
        .unwrap_or_else(|| panic!("no content: {content}"))
        .iter()
        .map(|e| {
            let bytes = e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            let top = e["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["token"].as_str().unwrap().to_string(),
                        t["logprob"].as_f64().unwrap(),
                    )
                })
                .collect();
            (bytes, e["logprob"].as_f64().unwrap(), top)
        })
        .collect()
}

#[test]
fn chat_logprobs_spell_the_answer_and_rank_its_greedy_tokens_first() {
    let server = InferenceServer::start(&[]);
    let body = chat_body(
        QUESTION,
        json!({"max_tokens": 6, "logprobs": true, "top_logprobs": 5}),
    );
    let r = chat(&server, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "length", "{answer}");
    assert_eq!(choice["logprobs"]["refusal"], Value::Null);
    let entries = chat_entries(&choice["logprobs"]["content"]);
    assert_eq!(
        entries.len() as u64,
        answer["usage"]["completion_tokens"].as_u64().unwrap()
    );
    // The tokens' bytes are the answer's text, byte for byte.
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.0.clone()).collect();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        choice["message"]["content"].as_str().unwrap()
    );
    for (token, logprob, top) in &entries {
        assert_eq!(top.len(), 5);
        assert!(*logprob <= 0.0);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0].0, String::from_utf8_lossy(token));
        assert!((top[0].1 - logprob).abs() < 1e-6, "{logprob} vs {top:?}");
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "{top:?}");
        let mass: f64 = top.iter().map(|t| t.1.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{mass}");
    }

    // Streamed: the same entries, spread over the chunks.
    let mut streamed = body.clone();
    merge(&mut streamed, json!({"stream": true}));
    let s = parse_stream(&post_json(
        &server.url("/v1/chat/completions"),
        &[],
        &streamed,
    ));
    let chunks: Vec<Value> = s
        .chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    let again = chat_entries(&Value::Array(chunks));
    assert_eq!(again.len(), entries.len());
    for (a, b) in again.iter().zip(&entries) {
        assert_eq!(a.0, b.0);
        assert!((a.1 - b.1).abs() < 1e-6);
    }

    // Not asked: null.
    let plain = chat(&server, &chat_body(QUESTION, json!({"max_tokens": 2})));
    assert_eq!(plain.json()["choices"][0]["logprobs"], Value::Null);
}

#[test]
fn completion_logprobs_list_tokens_offsets_and_alternatives() {
    let server = InferenceServer::start(&[]);
    let r = completion(
        &server,
        &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5,
                "temperature": 0, "logprobs": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let choice = &answer["choices"][0];
    let lp = &choice["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 5);
    assert_eq!(tokens.concat(), choice["text"].as_str().unwrap());
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    let mut at = 0;
    for (token, offset) in tokens.iter().zip(&offsets) {
        assert_eq!(*offset, at);
        at += token.chars().count() as u64;
    }
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3, "{top:?}");
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        // Greedy: the chosen token is the most likely one and among them.
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!((best - chosen).abs() < 1e-6, "{chosen} vs {top:?}");
        assert!(
            top.contains_key(tokens[i]),
            "{:?} not in {top:?}",
            tokens[i]
        );
    }
}

#[test]
fn logprobs_asked_the_wrong_way_are_refused() {
    let server = InferenceServer::start(&[]);
    for (body, param) in [
        (
            chat_body(QUESTION, json!({"top_logprobs": 2})),
            "top_logprobs",
        ),
        (
            chat_body(QUESTION, json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (chat_body(QUESTION, json!({"logprobs": 3})), "logprobs"),
    ] {
        let r = chat(&server, &body);
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"]["param"], param, "{}", r.text());
    }
    let r = completion(
        &server,
        &json!({"model": MODEL, "prompt": "x", "logprobs": 21}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "logprobs");
}
