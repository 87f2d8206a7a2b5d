//! The paged KV cache through the public API: a burst that needs more KV
//! memory than the server has is answered whole (requests wait, running
//! ones are preempted and computed again), and a shared system prompt is
//! served from the prefix cache, reported as OpenAI's `cached_tokens`, with
//! the same greedy text as without the cache.

use maas_testkit::{post_json, InferenceServer};
use serde_json::{json, Value};

use crate::support::*;

/// A system prompt of well over 1,500 tokens, the same for every request.
fn system_prompt() -> String {
    let facts = [
        "The gateway checks every API key against its subscription before a request reaches a model.",
        "Token limits are enforced without overshoot: a request reserves its budget before it runs.",
        "Usage is read from JSON bodies and from server-sent event streams alike.",
        "Audit records name the key, the model, the backend that answered and the tokens charged.",
        "Keys can be revoked live; the gateways learn of it within seconds.",
    ];
    let mut text = String::from("You are the support assistant of a model gateway. Facts:\n");
    for round in 0..16 {
        for (i, fact) in facts.iter().enumerate() {
            text.push_str(&format!("{}.{} {fact}\n", round + 1, i + 1));
        }
    }
    text
}

fn ask(system: &str, question: &str, max_tokens: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

/// The text and usage of a successful chat response.
fn answer(server: &InferenceServer, body: &Value) -> (String, Value) {
    let r = chat(server, body);
    assert_eq!(r.status, 200, "{}", r.text());
    (chat_text(&r), r.json()["usage"].clone())
}

const QUESTIONS: [&str; 8] = [
    "How are keys checked?",
    "Can a request overshoot its token limit?",
    "Where is usage read from?",
    "What does an audit record name?",
    "How fast is a revoked key refused?",
    "Summarise the facts in one line.",
    "Which fact is about streams?",
    "What happens before a request reaches a model?",
];

#[test]
fn a_shared_system_prompt_is_served_from_the_prefix_cache_with_the_same_text() {
    let system = system_prompt();
    let cached = InferenceServer::start(&[]);
    let uncached = InferenceServer::start(&["--no-prefix-caching"]);
    // The first request computes the system prompt; the next find it.
    let (_, first) = answer(&cached, &ask(&system, QUESTIONS[0], 8));
    let prompt_tokens = first["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 1500, "{first}");
    assert_eq!(
        first["prompt_tokens_details"]["cached_tokens"], 0,
        "{first}"
    );
    let together: Vec<(String, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = QUESTIONS
            .iter()
            .map(|q| {
                let (server, body) = (&cached, ask(&system, q, 16));
                scope.spawn(move || answer(server, &body))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (q, (text, usage)) in QUESTIONS.iter().zip(&together) {
        let cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        let prompt = usage["prompt_tokens"].as_u64().unwrap();
        // Every whole block of the shared part: all but the question and
        // the part of a block the question shares.
        assert!(
            cached_tokens >= prompt - 40 && cached_tokens < prompt,
            "{q:?}: {usage}"
        );
        let (reference, usage) = answer(&uncached, &ask(&system, q, 16));
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(
            *text, reference,
            "{q:?}: the prefix cache changed the answer"
        );
    }
    let series = |name: &str| format!("{name}{{model_name=\"{MODEL}\"}}");
    let hits = metric(&cached, &series("vllm:prefix_cache_hits_total"));
    assert!(hits >= 8.0 * 1500.0, "{hits} prefix-cache hits");
    assert_eq!(
        metric(&uncached, &series("vllm:prefix_cache_hits_total")),
        0.0
    );
}

/// Behind the gateway, which asserts the caller's subscription, one
/// subscription's cached prompt is never another's: what was cached shows
/// in `cached_tokens` (and the time to the first token), and would tell
/// one tenant what another sent.
#[test]
fn the_prefix_cache_is_shared_within_a_subscription_only() {
    let server = InferenceServer::start(&[]);
    let system = system_prompt();
    let cached_as = |subscription: Option<&str>, question: &str| -> u64 {
        let headers: Vec<(&str, &str)> = subscription
            .map(|s| ("x-maas-subscription", s))
            .into_iter()
            .collect();
        let body = ask(&system, question, 1);
        let r = post_json(&server.url("/v1/chat/completions"), &headers, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(cached_as(Some("team-a"), QUESTIONS[0]), 0);
    assert!(
        cached_as(Some("team-a"), QUESTIONS[1]) > 1500,
        "team-a's own"
    );
    assert_eq!(
        cached_as(Some("team-b"), QUESTIONS[2]),
        0,
        "team-a's prompt"
    );
    assert_eq!(cached_as(None, QUESTIONS[3]), 0, "a subscription's prompt");
    assert!(
        cached_as(Some("team-b"), QUESTIONS[4]) > 1500,
        "team-b's own"
    );
}

#[test]
fn a_burst_needing_more_kv_memory_than_the_server_has_is_answered_whole() {
    // 512 positions of SmolLM2 take 32 blocks of 16 (22.5 KiB a position);
    // 12 MiB holds 34. Eight requests of ~90 + 160 positions need 16 each.
    let server = InferenceServer::start(&[
        "--context",
        "512",
        "--kv-cache-memory",
        "12MiB",
        "--max-running",
        "8",
    ]);
    let body = |q: &str| {
        chat_body(
            &format!("Write a long story about this: {q}"),
            json!({"max_tokens": 160, "ignore_eos": true}),
        )
    };
    let together: Vec<(String, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = QUESTIONS
            .iter()
            .map(|q| {
                let (server, body) = (&server, body(q));
                scope.spawn(move || answer(server, &body))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (q, (_, usage)) in QUESTIONS.iter().zip(&together) {
        assert_eq!(usage["completion_tokens"], 160, "{q:?}: {usage}");
    }
    let series = |name: &str| format!("{name}{{model_name=\"{MODEL}\"}}");
    assert!(
        metric(&server, &series("vllm:num_preemptions_total")) > 0.0,
        "the burst fitted: nothing was preempted"
    );
    assert_eq!(metric(&server, &outcome("failed")), 0.0);
    // The prompt count is the prompts' (what usage says, once each); the
    // recomputation of the preempted shows in the prefill count only.
    let own = |name: &str| metric(&server, &format!("{name}{{model=\"{MODEL}\"}}"));
    let prompts: u64 = together
        .iter()
        .map(|(_, usage)| usage["prompt_tokens"].as_u64().unwrap())
        .sum();
    let computed: u64 = together
        .iter()
        .map(|(_, usage)| {
            usage["prompt_tokens"].as_u64().unwrap()
                - usage["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap()
        })
        .sum();
    assert_eq!(own("inference_prompt_tokens_total"), prompts as f64);
    assert!(
        own("inference_prefill_tokens_total") > computed as f64,
        "{} prefilled, {computed} of prompts not cached, and preemptions",
        own("inference_prefill_tokens_total")
    );
    // Preempted and computed again, each answer is what it is alone.
    for (q, (text, _)) in QUESTIONS.iter().zip(&together) {
        let (alone, _) = answer(&server, &body(q));
        assert_eq!(*text, alone, "{q:?} changed after a preemption");
    }
    let config = maas_testkit::get(&server.url("/metrics")).text();
    assert!(
        config.contains(
            "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"34\",enable_prefix_caching=\"True\",cache_dtype=\"float16\"} 1"
        ),
        "{config}"
    );
}

#[test]
fn choices_the_kv_memory_can_never_hold_at_once_are_a_400_before_any_stream() {
    // 34 blocks of 16 (see above): a 500-token prompt takes 32, its last
    // partial, so four choices need 35 at once; three fit.
    let server = InferenceServer::start(&["--context", "512", "--kv-cache-memory", "12MiB"]);
    let body = |n: u32, stream: bool| json!({"model": MODEL, "prompt": vec![100; 500], "max_tokens": 1, "n": n, "stream": stream});
    for stream in [false, true] {
        let r = completion(&server, &body(4, stream));
        assert_eq!(r.status, 400, "stream {stream}: {}", r.text());
        let error = &r.json()["error"];
        assert_eq!(error["param"], "n", "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("need 35 KV cache blocks"),
            "{error}"
        );
    }
    let r = completion(&server, &body(3, false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 3);
    assert_eq!(metric(&server, &outcome("failed")), 0.0);
}

#[test]
fn kv_memory_too_small_for_one_context_stops_the_server_with_the_reason() {
    let launch = maas_testkit::InferenceLaunch {
        args: ["--context", "512", "--kv-cache-memory", "1MiB"]
            .map(String::from)
            .to_vec(),
        ..maas_testkit::InferenceLaunch::default_model()
    };
    let err = InferenceServer::launch(&launch)
        .err()
        .expect("the server started with 1 MiB of KV cache");
    assert!(
        err.contains("--kv-cache-memory") && err.contains("needs 32 blocks"),
        "{err}"
    );
}

/// `/proc/meminfo`'s value for `key`, in bytes.
fn meminfo(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[test]
fn the_kv_memory_can_be_a_share_of_the_available_memory() {
    let server = InferenceServer::start(&["--kv-cache-memory", "25%"]);
    let available = meminfo("MemAvailable:");
    let health = maas_testkit::get(&server.url("/health")).json();
    let blocks = health["memory"]["kv_cache"]["blocks"].as_u64().unwrap();
    // SmolLM2-135M: 30 layers × 16 positions × 192 wide × keys and values
    // × 2 bytes a block.
    let bytes = blocks * 30 * 16 * 192 * 2 * 2;
    // A quarter of what was available at its start, measured again here
    // (other processes come and go: within a factor of two).
    assert!(
        bytes <= meminfo("MemTotal:") / 4 && bytes > available / 8,
        "{blocks} blocks ({bytes} bytes) for a quarter of {available} bytes available: {health}"
    );
    let r = chat(&server, &chat_body("Say hi.", json!({"max_tokens": 4})));
    assert_eq!(r.status, 200, "{}", r.text());
}
