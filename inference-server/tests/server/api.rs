//! What an OpenAI client sees: answers, sampling controls, usage, streams.

use maas_testkit::{get, InferenceLaunch, InferenceServer};
use serde_json::{json, Value};

use crate::support::*;

#[test]
fn greedy_answer_names_paris() {
    let server = InferenceServer::start(&[]);
    let r = chat(
        &server,
        &chat_body(
            "What is the capital of France? Answer in one word.",
            json!({"max_tokens": 16}),
        ),
    );
    let text = chat_text(&r);
    assert!(text.contains("Paris"), "{text:?}");
    let body = r.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[test]
fn a_fixed_seed_reproduces_sampled_output() {
    let server = InferenceServer::start(&[]);
    let body = |seed: u64| {
        chat_body(
            "Write a short poem about the sea.",
            json!({"temperature": 1.0, "top_p": 0.95, "seed": seed, "max_tokens": 32}),
        )
    };
    let first = chat_text(&chat(&server, &body(1234)));
    let again = chat_text(&chat(&server, &body(1234)));
    let other = chat_text(&chat(&server, &body(99)));
    assert_eq!(first, again);
    assert_ne!(first, other, "two seeds gave the same 32 sampled tokens");
}

#[test]
fn usage_counts_match_the_reference_tokenizer() {
    let server = InferenceServer::start(&[]);
    // The published tokenizer gives 36 ids for this conversation rendered
    // with the default system prompt, and 6 for the bare sentence.
    let r = chat(
        &server,
        &chat_body("Hello, how are you?", json!({"max_tokens": 5})),
    );
    let usage = &r.json()["usage"];
    assert_eq!(usage["prompt_tokens"], 36, "{usage}");
    let r = completion(
        &server,
        &json!({"model": MODEL, "prompt": "Hello, how are you?", "max_tokens": 7, "temperature": 0}),
    );
    let body = r.json();
    assert_eq!(
        body["usage"],
        json!({
            "prompt_tokens": 6,
            "completion_tokens": 7,
            "total_tokens": 13,
            "prompt_tokens_details": {"cached_tokens": 0},
        })
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["object"], "text_completion");
}

#[test]
fn logit_bias_and_penalties_steer_a_greedy_answer() {
    let server = InferenceServer::start(&[]);
    let text = |prompt: &str, extra: Value| {
        let mut body = json!({"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 8});
        merge(&mut body, extra);
        tokens_and_text(&completion(&server, &body)).1
    };
    // A bias of +100 makes one token win every step: eight of it.
    let forced = json!({"logit_bias": {"1000": 100}});
    let one = text(
        "The capital of France is",
        merge_into(json!({"max_tokens": 1}), &forced),
    );
    let eight = text("The capital of France is", forced);
    assert!(!one.is_empty());
    assert_eq!(eight, one.repeat(8));
    assert_ne!(text("The capital of France is", json!({})), eight);
    // A count the model continues greedily; a frequency penalty makes it
    // leave the pattern.
    let count = "1 1 1 1 1 1 1 1 1 1 1 1";
    let plain = text(count, json!({}));
    let penalised = text(
        count,
        json!({"frequency_penalty": 2, "presence_penalty": 1}),
    );
    assert_ne!(plain, penalised, "the penalties changed nothing: {plain:?}");
    // An id the model does not have is refused before anything runs.
    let r = completion(
        &server,
        &json!({"model": MODEL, "prompt": "x", "logit_bias": {"4000000": 5}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["param"], "logit_bias", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("outside the vocabulary"),
        "{e}"
    );
}

fn merge_into(mut body: Value, extra: &Value) -> Value {
    merge(&mut body, extra.clone());
    body
}

#[test]
fn max_tokens_ends_with_length_and_counts_exactly() {
    let server = InferenceServer::start(&[]);
    for field in ["max_tokens", "max_completion_tokens"] {
        let r = chat(
            &server,
            &chat_body("Tell me a long story about a dragon.", json!({field: 5})),
        );
        let body = r.json();
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{field}");
        assert_eq!(body["usage"]["completion_tokens"], 5, "{field}");
    }
}

#[test]
fn stop_strings_end_the_text_before_them_plain_and_streamed() {
    let server = InferenceServer::start(&[]);
    let prompt = "List the numbers from 1 to 10, one per line.";
    let full = chat_text(&chat(
        &server,
        &chat_body(prompt, json!({"max_tokens": 60})),
    ));
    let stop = "5";
    let cut = full
        .find(stop)
        .unwrap_or_else(|| panic!("no {stop:?} in {full:?}"));
    let expected = &full[..cut];

    let r = chat(
        &server,
        &chat_body(
            prompt,
            json!({"max_tokens": 60, "stop": [stop, "never-seen"]}),
        ),
    );
    assert_eq!(chat_text(&r), expected);
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");

    // Streamed, the held-back prefix of a multi-character stop must not leak
    // either: the two characters before "5" (", " or ".\n") recur earlier.
    let start = full[..cut]
        .char_indices()
        .rev()
        .nth(1)
        .map_or(0, |(i, _)| i);
    let stop = &full[start..=cut];
    let cut = full.find(stop).unwrap();
    let r = chat(
        &server,
        &chat_body(
            prompt,
            json!({"max_tokens": 60, "stop": stop, "stream": true}),
        ),
    );
    let s = parse_stream(&r);
    assert_eq!(s.text, full[..cut]);
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
    assert!(s.done);
}

#[test]
fn streams_are_openai_shaped_and_match_the_plain_answer() {
    let server = InferenceServer::start(&[]);
    let prompt = "Name three colors.";
    let plain = chat(&server, &chat_body(prompt, json!({"max_tokens": 24})));
    let plain_body = plain.json();
    let counted = |name: &str| metric(&server, &format!("{name}{{model=\"{MODEL}\"}}"));
    let prefilled = counted("inference_prefill_tokens_total");

    let r = chat(
        &server,
        &chat_body(
            prompt,
            json!({"max_tokens": 24, "stream": true, "stream_options": {"include_usage": true}}),
        ),
    );
    let s = parse_stream(&r);
    assert!(s.done, "stream must end with [DONE]");
    assert_eq!(
        s.text,
        plain_body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
    // The same counts; the stream's prompt came second, so its two full
    // KV blocks (32 of 34 tokens) were found in the prefix cache.
    let mut usage = s.usage.clone().expect("a usage chunk");
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 32,
        "{usage}"
    );
    assert_eq!(
        plain_body["usage"]["prompt_tokens_details"]["cached_tokens"],
        0
    );
    usage["prompt_tokens_details"]["cached_tokens"] = json!(0);
    assert_eq!(usage, plain_body["usage"]);
    // Both prompts count whole; only what the cache lacked was computed.
    let prompt_tokens = usage["prompt_tokens"].as_f64().unwrap();
    assert_eq!(
        counted("inference_prompt_tokens_total"),
        2.0 * prompt_tokens
    );
    assert_eq!(
        counted("inference_prefill_tokens_total") - prefilled,
        prompt_tokens - 32.0
    );
    assert_eq!(
        s.finish_reason.as_deref(),
        plain_body["choices"][0]["finish_reason"].as_str()
    );

    let id = &s.chunks[0]["id"];
    assert_eq!(s.chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (last, choices) = s.chunks.split_last().unwrap();
    assert_eq!(
        last["choices"],
        json!([]),
        "usage rides on a final chunk without choices"
    );
    for c in choices {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(&c["id"], id);
        assert!(c.as_object().unwrap().contains_key("usage") && c["usage"].is_null());
    }
    assert!(choices[..choices.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));

    // Without include_usage there is no usage at all; completions stream too.
    let r = completion(
        &server,
        &json!({"model": MODEL, "prompt": "The sky is", "max_tokens": 8, "temperature": 0, "stream": true}),
    );
    let s = parse_stream(&r);
    assert!(s.done && s.usage.is_none());
    assert!(s
        .chunks
        .iter()
        .all(|c| c["object"] == "text_completion" && c.get("usage").is_none()));
    assert_eq!(s.finish_reason.as_deref(), Some("length"));
}

#[test]
fn models_health_and_metrics_describe_the_server() {
    let server = InferenceServer::start(&[]);
    assert_eq!(get(&server.url("/health")).json()["status"], "ok");
    let models = get(&server.url("/v1/models")).json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["max_model_len"], 8192);
    assert_eq!(
        get(&server.url(&format!("/v1/models/{MODEL}"))).json()["id"],
        MODEL
    );
    assert_eq!(get(&server.url("/v1/models/gpt-4")).status, 404);

    let series = format!("inference_generated_tokens_total{{model=\"{MODEL}\"}}");
    let before = metric(&server, &series);
    let r = chat(&server, &chat_body("Say hi.", json!({"max_tokens": 4})));
    let generated = r.json()["usage"]["completion_tokens"].as_f64().unwrap();
    assert_eq!(metric(&server, &series), before + generated);
    let prompt = r.json()["usage"]["prompt_tokens"].as_f64().unwrap();
    assert_eq!(
        metric(
            &server,
            &format!("inference_prompt_tokens_total{{model=\"{MODEL}\"}}")
        ),
        prompt
    );
    // The Inference Extension's model-server protocol names, for its
    // endpoint picker: the same gauges, read from one scrape (other tests
    // share this server, so the values move between scrapes).
    let text = maas_testkit::get(&server.url("/metrics")).text();
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    };
    for (ours, protocol) in [
        ("inference_queue_depth", "vllm:num_requests_waiting"),
        ("inference_running_sequences", "vllm:num_requests_running"),
    ] {
        let protocol = format!("{protocol}{{model_name=\"{MODEL}\"}}");
        assert!(value(ours).is_some(), "no {ours} in:\n{text}");
        assert_eq!(value(&protocol), value(ours), "{protocol} in:\n{text}");
    }
    for name in [
        "inference_queue_depth",
        "inference_running_sequences",
        "inference_batch_tokens_count",
        "inference_time_to_first_token_seconds_count",
        "inference_inter_token_latency_seconds_count",
    ] {
        metric(&server, name);
    }
    assert_eq!(
        metric(&server, "inference_time_to_first_token_seconds_count"),
        1.0
    );
}

#[test]
fn a_model_id_with_a_slash_is_retrieved_as_clients_send_it() {
    // OpenAI's clients do not percent-encode the id in the path.
    let id = "HuggingFaceTB/SmolLM2-135M-Instruct";
    let mut launch = InferenceLaunch::default_model();
    launch.model_id = id.into();
    let server = InferenceServer::launch(&launch).unwrap();
    let card = get(&server.url(&format!("/v1/models/{id}")));
    assert_eq!(card.status, 200, "{}", card.text());
    assert_eq!(card.json()["id"], id);
    assert_eq!(get(&server.url("/v1/models/HuggingFaceTB")).status, 404);
    assert_eq!(
        get(&server.url(&format!("/v1/models/{id}/extra"))).status,
        404
    );
}
