//! The agents' sampling fields through the real stack: Envoy with the release
//! filter in front of the real inference server. Log-probabilities make every
//! streamed event several times larger, and penalties and biases change what
//! is generated; the charge must still be the usage the server reported.

use maas_testkit::InferenceServer;
use serde_json::{json, Value};

use super::{charged, chat_ok, gateway, sse_events, usage_of, MODEL};
const KEY: &str = "sk-sampling-fields-key";
const AUTH: &str = "Bearer sk-sampling-fields-key";

#[test]
fn logprobs_penalties_and_biases_are_charged_the_reported_usage() {
    let server = InferenceServer::start(&[]);
    let gateway = gateway(&server, KEY);
    let sampling = json!({
        "logprobs": true, "top_logprobs": 20,
        "frequency_penalty": 0.7, "presence_penalty": 0.3,
        "logit_bias": {"1000": 2.5}, "temperature": 0, "max_tokens": 24,
    });

    // A whole chat answer.
    let mut body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Name three rivers."}]});
    body.as_object_mut()
        .unwrap()
        .extend(sampling.as_object().unwrap().clone());
    let answer = chat_ok(&gateway, AUTH, &body).json();
    assert!(!answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .is_empty());
    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(charged(&record), usage_of(&answer["usage"]));

    // The same streamed, usage asked for: every event carries 20
    // alternatives per token.
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = gateway.post_json("/v1/chat/completions", &[("authorization", AUTH)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let events: Vec<Value> = sse_events(&r);
    let entries: usize = events
        .iter()
        .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
        .map(Vec::len)
        .sum();
    let usage = events.iter().rev().find(|e| !e["usage"].is_null()).unwrap()["usage"].clone();
    assert!(
        entries > 0 && entries as u64 <= usage_of(&usage).1,
        "{entries} {usage}"
    );
    let record = gateway.await_access_log(2).remove(1);
    assert_eq!(charged(&record), usage_of(&usage));

    // A completion with logprobs, streamed without asking for usage: the
    // gateway asks for it, charges it, and strips it from what the client
    // sees.
    let body = json!({"model": MODEL, "prompt": "Rivers of Europe:", "stream": true,
                      "logprobs": 5, "max_tokens": 16, "temperature": 0});
    let r = gateway.post_json("/v1/completions", &[("authorization", AUTH)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.sse_data();
    assert!(data.iter().all(|d| !d.contains("\"usage\":{")), "{data:?}");
    let tokens: usize = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|e| {
            e["choices"][0]["logprobs"]["tokens"]
                .as_array()
                .map(Vec::len)
        })
        .sum();
    let record = gateway.await_access_log(3).remove(2);
    let (_, completion) = charged(&record);
    // Every generated token has an entry except an end-of-sequence one.
    assert!(
        tokens as u64 == completion || tokens as u64 + 1 == completion,
        "{tokens} entries, {completion} charged: {record}"
    );
}
