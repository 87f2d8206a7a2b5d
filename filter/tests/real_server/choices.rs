//! `n` choices through the real stack: the gateway reserves the completion
//! budget once per choice, and the charge is the usage the server reported
//! for all of them (the prompt once, every choice's completion), whole and
//! streamed.

use maas_testkit::InferenceServer;
use serde_json::json;

use super::{charged, chat_ok, gateway, streamed_without_usage, usage_of, MODEL};
const KEY: &str = "sk-choices-key";
const AUTH: &str = "Bearer sk-choices-key";

#[test]
fn every_choice_is_charged_whole_and_streamed() {
    let server = InferenceServer::start(&[]);
    let gateway = gateway(&server, KEY);
    // `ignore_eos`: each choice spends its whole budget, so the usage is
    // known: three choices of 16 tokens.
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "n": 3, "temperature": 1.0, "seed": 4, "max_tokens": 16, "ignore_eos": true,
    });
    let answer = chat_ok(&gateway, AUTH, &body).json();
    assert_eq!(answer["choices"].as_array().unwrap().len(), 3, "{answer}");
    let (prompt, completion) = usage_of(&answer["usage"]);
    assert_eq!(completion, 3 * 16, "{answer}");
    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(charged(&record), (prompt, completion), "{record}");

    // Streamed, usage not asked for: the gateway asks, charges all three
    // choices, and strips the usage from what the client sees.
    let events = streamed_without_usage(&gateway, AUTH, &body);
    let mut finished: Vec<u64> = events
        .iter()
        .filter(|e| !e["choices"][0]["finish_reason"].is_null())
        .map(|e| e["choices"][0]["index"].as_u64().unwrap())
        .collect();
    finished.sort_unstable();
    assert_eq!(finished, [0, 1, 2], "{events:?}");
    let record = gateway.await_access_log(2).remove(1);
    assert_eq!(charged(&record), (prompt, completion), "{record}");
}
