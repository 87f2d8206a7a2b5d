//! Drives the real inference server (the `serve` build) with streaming
//! clients and prints the report of `maas_benches::inference`, for each
//! model in `MAAS_BENCH_MODELS` (space-separated GGUF paths; default: the
//! embedded SmolLM2 Q4_1), then a table with one row per file. Run by
//! `benches/inference.sh` (`make bench`), which lists every format: the
//! embedded Q4_1, its Q4_K_M, Q5_K_M, Q6_K and Q8_0 requantizations, and
//! Gemma 3 270M Q4_K_M.
//!
//! With `MAAS_LLAMA_SERVER` set (the script sets it from
//! `scripts/llama-cpp.sh`), the same suite, client and prompts then run
//! against llama.cpp's `llama-server` on the same model and thread count,
//! one server after the other on the same cores (`-np` equal to the round's
//! streams, so "8 streams" is `llama-server -np 8`), and a comparison with
//! ratios against the targets is printed, with the memory bound measured on
//! this machine.
//!
//! Bounded: one warm-up, 5 prefill runs, 3 single-stream runs, one round per
//! concurrency level, 128 generated tokens per request.

// A bench, not shipped code: a failed setup ends the run at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use maas_benches::inference::llama_server::LlamaServer;
use maas_benches::inference::{client, Comparison, FormatTable, Report, Round, Timing};
use maas_testkit::{default_model, InferenceLaunch, InferenceServer};
use serde_json::{json, Value};

const GENERATED: usize = 128;
const CHAT: &str = "/v1/chat/completions";

/// About 200 tokens of ordinary English.
const LONG_PROMPT: &str = "The history of the printing press begins long before Gutenberg. \
Woodblock printing spread across East Asia for centuries, and movable type made of clay and \
later metal appeared in China and Korea. In fifteenth-century Europe, a goldsmith from Mainz \
combined a screw press adapted from wine making, an oil-based ink, and a hand mould that cast \
uniform metal letters quickly. The result was a system in which a page could be set, inked and \
pressed hundreds of times a day. Within fifty years presses operated in more than two hundred \
cities, and millions of books had been printed. Scholars argue about the consequences: the \
spread of literacy, the standardisation of languages, the speed of the Reformation and of the \
scientific revolution. What is clear is that information became cheaper to copy than ever \
before, and that this change reshaped religion, politics and science. Summarise this passage.";

const TOPICS: [&str; 16] = [
    "a lighthouse keeper",
    "a robot gardener",
    "a lost cat",
    "a mountain village",
    "a time traveller",
    "a chess prodigy",
    "an old library",
    "a desert caravan",
    "a deep-sea diver",
    "a city at night",
    "a young inventor",
    "a haunted ship",
    "a winter festival",
    "a retired pilot",
    "a talking river",
    "a clockmaker",
];

fn main() {
    let models: Vec<PathBuf> = std::env::var("MAAS_BENCH_MODELS")
        .map(|list| list.split_whitespace().map(PathBuf::from).collect())
        .unwrap_or_else(|_| vec![default_model()]);
    let peer_binary = std::env::var_os("MAAS_LLAMA_SERVER").map(PathBuf::from);
    let mut table = FormatTable::default();
    for model in &models {
        let name = model
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        println!("\n## {name}\n");
        if let Some(comparison) = bench_model(model, &name, peer_binary.as_deref()) {
            table.rows.push((name, comparison));
        }
    }
    if !table.rows.is_empty() {
        println!("\n## Every format side by side with llama.cpp\n");
        println!("{}", table.markdown());
    }
}

/// Our server, then llama.cpp's if `peer_binary`, on `model`; prints both
/// reports and the comparison.
fn bench_model(model: &Path, name: &str, peer_binary: Option<&Path>) -> Option<Comparison> {
    let mut template = None;
    let ours = {
        let launch = InferenceLaunch {
            model: model.to_path_buf(),
            model_id: name.to_string(),
            // The bench sends the same prompts again and again: with the
            // prefix cache on, prefill and TTFT would measure cache hits.
            // benches/prefix-cache.sh measures the cache.
            // MAAS_BENCH_SERVER_ARGS adds flags (say, another --block-size).
            args: [
                "--max-running",
                "16",
                "--max-queued",
                "64",
                "--no-prefix-caching",
            ]
            .map(String::from)
            .into_iter()
            .chain(
                std::env::var("MAAS_BENCH_SERVER_ARGS")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from),
            )
            .collect(),
            ..InferenceLaunch::default_model()
        };
        let server = InferenceServer::launch(&launch).unwrap_or_else(|e| panic!("{e}"));
        let addr = server.addr();
        // A file without a template gets our built-in one by architecture;
        // llama.cpp is given the same file, so both render the same prompt.
        let health = maas_testkit::get(&format!("http://{addr}/health")).json();
        if health["chat_template"] == "builtin" {
            let arch = health["architecture"].as_str().unwrap_or_default();
            template = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "../inference-server/src/text/chat_templates/{arch}.jinja"
            )));
        }
        eprintln!("inference-bench: our server at {addr} on {name}");
        let report = suite("ours", name, &mut |_| addr);
        println!("{}", report.markdown());
        println!("{}", constrained(addr, name));
        report
    };

    let binary = peer_binary?;
    let mut args = Vec::new();
    if let Some(template) = template {
        args.extend([
            "--chat-template-file".into(),
            template.display().to_string(),
        ]);
    }
    // The file's own chat template, as our server renders it.
    args.push("--jinja".into());
    let mut peer = LlamaServer::new(
        binary.to_path_buf(),
        model.to_path_buf(),
        args,
        PathBuf::from("target/inference-bench/llama-server.log"),
    );
    let report = suite("llama.cpp", name, &mut |slots| {
        let addr = peer.serve(slots).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("inference-bench: llama-server -np {slots} at {addr}");
        addr
    });
    drop(peer);
    let comparison = Comparison {
        ours,
        peer: report,
        peer_name: "llama.cpp".into(),
        bytes_per_step: std::fs::metadata(model).map_or(0, |m| m.len()),
        read_bandwidth: read_bandwidth(),
    };
    println!("\n### Side by side with llama.cpp\n");
    println!("{}", comparison.markdown());
    Some(comparison)
}

/// The whole measurement against one server; `server_for(n)` gives the
/// address of a server ready for `n` concurrent streams.
fn suite(name: &str, model: &str, server_for: &mut dyn FnMut(usize) -> SocketAddr) -> Report {
    let request = |prompt: &str, max_tokens| request(model, prompt, max_tokens);
    let addr = server_for(1);
    stream(addr, &request("Say hello.", 16));

    let prefill: Vec<Timing> = (0..5)
        .map(|_| stream(addr, &request(LONG_PROMPT, 1)))
        .collect();
    let prompt_tokens = prefill[0].prompt_tokens;
    // One generated token: the time to it is prefill plus one sampling step.
    let prefill_rates = prefill
        .iter()
        .map(|t| t.prompt_tokens as f64 / (t.done - t.sent).as_secs_f64())
        .collect();

    let single: Vec<Timing> = (0..3)
        .map(|i| stream(addr, &request(&story(i), GENERATED)))
        .collect();
    let single_decode_rates = single.iter().map(Timing::decode_rate).collect();

    let mut rounds = Vec::new();
    for streams in [1, 4, 8, 16] {
        let addr = server_for(streams);
        let bodies = (0..streams)
            .map(|i| request(&story(i), GENERATED))
            .collect();
        let round = Round {
            streams,
            timings: concurrently(addr, bodies),
        };
        eprintln!(
            "inference-bench: {name}: {streams} streams: {:.1} decode tokens/s",
            round.decode_rate()
        );
        rounds.push(round);
    }

    Report {
        prefill_rates,
        prompt_tokens,
        single_decode_rates,
        rounds,
    }
}

/// The cost of constrained decoding: aggregate decode with every stream's
/// tokens masked by a JSON schema (llguidance, masks computed beside the
/// forward pass) against the same number of plain streams, on one server in
/// one run. The schema's answer is long (twelve strings of 20–40
/// characters), so most of each stream is decoding under the mask.
fn constrained(addr: SocketAddr, model: &str) -> String {
    let schema = json!({
        "type": "object", "additionalProperties": false, "required": ["items"],
        "properties": {"items": {"type": "array", "minItems": 12, "maxItems": 12,
            "items": {"type": "string", "minLength": 20, "maxLength": 40}}},
    });
    let mut out = String::from(
        "### Constrained decoding (response_format json_schema)\n\n| streams | plain: aggregate decode tokens/s | json_schema: aggregate decode tokens/s | ratio |\n|---:|---:|---:|---:|\n",
    );
    for streams in [1, 4, 8] {
        let round = |constrain: bool| {
            let bodies = (0..streams)
                .map(|i| {
                    let mut body = request(
                        model,
                        &format!("List twelve facts about {}.", TOPICS[i % TOPICS.len()]),
                        160,
                    );
                    if constrain {
                        body["response_format"] = json!({"type": "json_schema",
                            "json_schema": {"name": "facts", "schema": schema}});
                        body["max_tokens"] = json!(400);
                        body["ignore_eos"] = json!(false);
                    }
                    body
                })
                .collect();
            Round {
                streams,
                timings: concurrently(addr, bodies),
            }
            .decode_rate()
        };
        let (plain, masked) = (round(false), round(true));
        eprintln!("inference-bench: constrained, {streams} streams: {plain:.1} plain, {masked:.1} json_schema");
        out.push_str(&format!(
            "| {streams} | {plain:.1} | {masked:.1} | {:.2}× |\n",
            masked / plain.max(f64::MIN_POSITIVE)
        ));
    }
    out
}

/// Streams every body at once, one client thread each; their timings in
/// order.
fn concurrently(addr: SocketAddr, bodies: Vec<Value>) -> Vec<Timing> {
    client::concurrently(addr, CHAT, &bodies).unwrap_or_else(|e| panic!("{e}"))
}

/// Read bandwidth of this machine with every core reading its share of a
/// buffer larger than the caches: what one decode step's weight reads are
/// bounded by. Best of three passes. Each reader asks for its lines 4 KB
/// ahead, as the server's kernels do (19 GB/s without, 23–26 with, on the
/// 2-vCPU Xeon). A step can still read faster than this bound, because
/// the last level cache keeps part of the weights from one step to the
/// next.
fn read_bandwidth() -> f64 {
    const BYTES: usize = 512 << 20;
    let words = vec![1u64; BYTES / 8];
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = words.len().div_ceil(threads);
    (0..3)
        .map(|_| {
            let start = Instant::now();
            let total: u64 = std::thread::scope(|scope| {
                let handles: Vec<_> = words
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || sum_prefetched(part)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
            });
            assert_eq!(total as usize, words.len());
            BYTES as f64 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// The wrapping sum of `words`, read in 4 KB pieces with the next piece
/// prefetched.
fn sum_prefetched(words: &[u64]) -> u64 {
    const PIECE: usize = 4096 / 8;
    let mut pieces = words.chunks(PIECE).peekable();
    let mut total = 0u64;
    while let Some(piece) = pieces.next() {
        #[cfg(target_arch = "x86_64")]
        if let Some(next) = pieces.peek() {
            for line in next.chunks(8) {
                // SAFETY: a prefetch of a valid address has no effect but
                // on the caches.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        line.as_ptr().cast(),
                    )
                };
            }
        }
        total = piece.iter().fold(total, |a, w| a.wrapping_add(*w));
    }
    total
}

fn story(i: usize) -> String {
    format!("Write a long story about {}.", TOPICS[i % TOPICS.len()])
}

fn request(model: &str, prompt: &str, max_tokens: usize) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
        // llama-server would otherwise reuse the previous request's prompt
        // from its cache and skip the prefill being measured; ours has no
        // prompt cache and ignores the field.
        "cache_prompt": false,
    })
}

/// One streamed chat completion, timed as its events arrive.
fn stream(addr: SocketAddr, body: &Value) -> Timing {
    client::stream(addr, CHAT, body).unwrap_or_else(|e| panic!("{e}"))
}
