//! The body parsers on the request path: the completion request (parse and
//! rewrite), usage in a buffered JSON response, and the SSE usage parser per
//! streamed chunk (observe-only and strip modes).
//!
//! Baseline in the same run: the same input through `serde_json::Value`
//! (what a straightforward filter would do), so the ratio can be reported.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use maas_filter::openai::request::{
    parse_completion_request, rewrite_completion_request, BodyRewrite,
};
use maas_filter::openai::sse::SseUsageParser;
use maas_filter::openai::usage::parse_json_usage;
use serde_json::Value;

/// A ~1 KB chat completion request, the shape an OpenAI SDK sends.
fn chat_body() -> Vec<u8> {
    let body = serde_json::json!({
        "model": "llama-3.1-8b-instruct",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer concisely and cite the relevant section of the provided document when you can. Do not invent facts; say you do not know instead."},
            {"role": "user", "content": "Here is the document:\n\nSection 1. The gateway authenticates each request with an API key, checks the requested model against the key's subscription, and reserves the worst-case token cost before forwarding.\nSection 2. When the model reports usage, the reservation is settled with the real numbers.\n\nQuestion: what happens when the model never reports usage?"},
            {"role": "assistant", "content": "It estimates the usage from the request size and the number of streamed chunks."},
            {"role": "user", "content": "And is the estimate charged?"}
        ],
        "temperature": 0.2,
        "top_p": 0.95,
        "n": 1,
        "stream": true,
        "max_tokens": 512,
        "user": "user-1234"
    });
    body.to_string().into_bytes()
}

/// A ~2 KB non-streamed chat completion response.
fn json_response() -> Vec<u8> {
    let content = "The estimate is charged like reported usage: the prompt is estimated from the request body size and the completion from the number of content chunks. ".repeat(11);
    let body = serde_json::json!({
        "id": "chatcmpl-9f8e7d6c5b4a",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "llama-3.1-8b-instruct",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 212, "completion_tokens": 388, "total_tokens": 600},
        "system_fingerprint": "fp_44709d6fcb"
    });
    body.to_string().into_bytes()
}

/// A streamed completion: `n` content chunks of ~150 bytes each (one event
/// per chunk, as vLLM sends them), a usage chunk and `[DONE]`.
fn sse_chunks(n: usize) -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-9f8e7d6c5b4a\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"llama-3.1-8b\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i:04}\"}},\"finish_reason\":null}}]}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    chunks.push(
        b"data: {\"id\":\"chatcmpl-9f8e7d6c5b4a\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"llama-3.1-8b\",\"choices\":[],\"usage\":{\"prompt_tokens\":212,\"completion_tokens\":100,\"total_tokens\":312}}\n\n".to_vec(),
    );
    chunks.push(b"data: [DONE]\n\n".to_vec());
    chunks
}

fn request(c: &mut Criterion) {
    let body = chat_body();
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse_completion_request", |b| {
        b.iter(|| parse_completion_request(black_box(&body)).map(|r| r.stream))
    });
    g.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).map(|v| v["stream"] == true))
    });

    let rewrite = BodyRewrite {
        max_tokens: Some(256),
        force_include_usage: true,
        ..BodyRewrite::default()
    };
    g.bench_function("rewrite_completion_request", |b| {
        b.iter(|| rewrite_completion_request(black_box(&body), black_box(&rewrite)))
    });
    g.bench_function("baseline_rewrite_via_value", |b| {
        b.iter(|| {
            let mut v: Value = serde_json::from_slice(black_box(&body)).unwrap_or_default();
            if let Some(map) = v.as_object_mut() {
                map.insert("max_tokens".into(), 256.into());
                map.insert(
                    "stream_options".into(),
                    serde_json::json!({"include_usage": true}),
                );
            }
            serde_json::to_vec(&v)
        })
    });
    g.finish();
}

fn usage(c: &mut Criterion) {
    let body = json_response();
    let mut g = c.benchmark_group("usage");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse_json_usage", |b| {
        b.iter(|| parse_json_usage(black_box(&body)))
    });
    g.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| {
            serde_json::from_slice::<Value>(black_box(&body))
                .ok()
                .and_then(|v| v["usage"]["total_tokens"].as_u64())
        })
    });
    g.finish();
}

fn sse(c: &mut Criterion) {
    let chunks = sse_chunks(100);
    let mut g = c.benchmark_group("sse_per_chunk");
    // Per chunk: one element per fed chunk.
    g.throughput(Throughput::Elements(chunks.len() as u64));
    for (name, strip) in [("feed_observe", false), ("feed_strip", true)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut parser = SseUsageParser::new(strip, 64 * 1024);
                let mut forwarded = 0;
                for chunk in &chunks {
                    forwarded += parser.feed(black_box(chunk)).map_or(0, |out| out.len());
                }
                (parser.usage(), parser.content_events(), forwarded)
            })
        });
    }
    // Baseline: each chunk is one complete event here, so the naive filter
    // strips `data: ` and parses the JSON into a Value.
    g.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| {
            let mut content = 0u64;
            let mut total = None;
            for chunk in &chunks {
                let data = black_box(chunk)
                    .strip_prefix(b"data: ")
                    .unwrap_or_default()
                    .trim_ascii_end();
                if let Ok(v) = serde_json::from_slice::<Value>(data) {
                    if v["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                        content += 1;
                    }
                    if let Some(t) = v["usage"]["total_tokens"].as_u64() {
                        total = Some(t);
                    }
                }
            }
            (content, total)
        })
    });
    g.finish();
}

criterion_group!(benches, request, usage, sse);
criterion_main!(benches);
