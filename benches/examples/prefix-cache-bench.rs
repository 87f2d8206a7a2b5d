//! Issue 18's "shared system prompt" workload against real servers, one
//! after the other on the same cores and model file: our server (the
//! `serve` build, `MAAS_INFERENCE_SERVER`) with its prefix cache, ours with
//! `--no-prefix-caching`, and llama.cpp's `llama-server`
//! (`MAAS_LLAMA_SERVER`, set by `benches/prefix-cache.sh` from
//! `scripts/llama-cpp.sh`; unset: no peer) with `-np 8` slots and its prompt
//! cache. Each is started fresh on a loopback port, sent the warm-up (the
//! prefix alone, cold), then rounds of 8 concurrent streamed completions,
//! each the prefix and a new question, and stopped. Prints the report of
//! `maas_benches::inference::prefix_cache` for each model in
//! `MAAS_BENCH_MODELS` (space-separated GGUF paths; default: the embedded
//! SmolLM2 Q4_1), also written to `target/inference-bench/prefix-cache.md`.
//!
//! `MAAS_PREFIX_BENCH_ONLY=llama` (or `cache`, `no-cache`, comma-separated)
//! runs only those setups; `MAAS_PREFIX_BENCH_LLAMA_ARGS` replaces the
//! prompt-cache flags llama-server gets (`LLAMA_ARGS`), to try others.
//!
//! Bounded: one warm-up and 3 rounds of 8 requests of 16 generated tokens
//! per setup, no new round after 5 minutes, and no read waits more than
//! 5 minutes (`client::READ_TIMEOUT`).

// A bench, not shipped code: a failed setup ends the run at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use maas_benches::inference::llama_server::LlamaServer;
use maas_benches::inference::prefix_cache::{
    question, request, system_prefix, PrefixCacheReport, Run, Setup, CLIENTS, ROUNDS,
};
use maas_benches::inference::{client, median, Timing};
use maas_testkit::{default_model, InferenceLaunch, InferenceServer};

const PATH: &str = "/v1/completions";
/// No round starts after this long into a setup's run.
const DEADLINE: Duration = Duration::from_secs(300);
/// llama-server's prompt cache, said explicitly though these are its
/// defaults: every slot keeps its last prompt's KV and reuses the longest
/// common prefix with the next (`cache_prompt: true` in each request); a
/// request goes to the idle slot whose prompt shares the most with it
/// (`--slot-prompt-similarity 0.1`), else to the least recently used one,
/// which first loads the best-matching prompt from a host-memory cache of
/// idle slots' prompts (`--cache-ram`). The cache is per slot: after the
/// warm-up only its slot holds the prefix, and as that slot is busy when
/// the next requests arrive it is not yet in the host cache either, so 7 of
/// round 1's 8 requests start cold; from round 2 every slot has it.
/// `--slot-prompt-similarity 0` (always the least recently used slot) gets
/// the host cache to fill 6-7 of round 1's slots, but then every request
/// pays a save and a load of its slot's KV, and round 1 still waits on the
/// cold slot's prefill batched with it; on the median, which the report
/// compares, the default came out ahead (2026-12-06, on a loaded machine). `--cache-reuse` is left
/// off: it reuses chunks after the common prefix by shifting them, which a
/// new question after the same prefix never has.
const LLAMA_ARGS: [&str; 4] = ["--cache-ram", "8192", "--slot-prompt-similarity", "0.1"];

fn main() {
    let models: Vec<PathBuf> = std::env::var("MAAS_BENCH_MODELS")
        .map(|list| list.split_whitespace().map(PathBuf::from).collect())
        .unwrap_or_else(|_| vec![default_model()]);
    let only = std::env::var("MAAS_PREFIX_BENCH_ONLY").ok();
    let mut setups = match &only {
        Some(list) => {
            Setup::parse_list(list).unwrap_or_else(|e| panic!("MAAS_PREFIX_BENCH_ONLY: {e}"))
        }
        None => Setup::ALL.to_vec(),
    };
    let peer = std::env::var_os("MAAS_LLAMA_SERVER").map(PathBuf::from);
    if peer.is_none() && setups.contains(&Setup::LlamaServer) {
        assert!(
            only.is_none(),
            "MAAS_PREFIX_BENCH_ONLY names llama, but MAAS_LLAMA_SERVER (llama-server's path, \
             from scripts/llama-cpp.sh) is not set"
        );
        eprintln!("prefix-cache-bench: no MAAS_LLAMA_SERVER, so no llama-server run");
        setups.retain(|s| *s != Setup::LlamaServer);
    }
    let out = out_dir();
    let mut markdown = String::new();
    for model in &models {
        let name = model
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        let runs = setups
            .iter()
            .map(|setup| match setup {
                Setup::LlamaServer => llama_server(peer.as_deref().expect("checked"), model, &name),
                ours => our_server(*ours, model, &name),
            })
            .collect();
        let report = PrefixCacheReport {
            model: name,
            rounds: ROUNDS,
            runs,
        };
        let section = report.markdown();
        println!("{section}");
        markdown.push_str(&section);
        markdown.push('\n');
    }
    let file = out.join("prefix-cache.md");
    std::fs::write(&file, markdown).unwrap_or_else(|e| panic!("cannot write {file:?}: {e}"));
    eprintln!("prefix-cache-bench: report written to {}", file.display());
}

/// `target/inference-bench` of the workspace: the report and the servers'
/// logs.
fn out_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let dir = root.join("target/inference-bench");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
    dir
}

fn our_server(setup: Setup, model: &Path, name: &str) -> Run {
    let flags: Vec<String> = setup.our_flags().iter().map(|f| f.to_string()).collect();
    let log = out_dir().join(format!("prefix-cache-ours-{}.log", setup.key()));
    let launch = InferenceLaunch {
        port: 0,
        model: model.to_path_buf(),
        model_id: name.to_string(),
        log: Some(log.clone()),
        args: flags.clone(),
    };
    let server = InferenceServer::launch(&launch).unwrap_or_else(|e| {
        panic!(
            "{} ({}): our server exited or did not come up; does {} know its flags? (log: {})\n{e}",
            setup.label(),
            flags.join(" "),
            maas_testkit::inference_server_binary().display(),
            log.display()
        )
    });
    eprintln!(
        "prefix-cache-bench: {} at {} on {name}",
        setup.label(),
        server.addr()
    );
    let (warmup, rounds) = measure(setup, server.addr(), name, &log);
    drop(server);
    Run {
        setup,
        flags: flags.join(" "),
        warmup,
        rounds,
    }
}

fn llama_server(binary: &Path, model: &Path, name: &str) -> Run {
    let log = out_dir().join("prefix-cache-llama-server.log");
    // MAAS_PREFIX_BENCH_LLAMA_ARGS replaces LLAMA_ARGS, to try others.
    let args = std::env::var("MAAS_PREFIX_BENCH_LLAMA_ARGS").map_or_else(
        |_| LLAMA_ARGS.map(String::from).to_vec(),
        |args| args.split_whitespace().map(String::from).collect(),
    );
    let mut server = LlamaServer::new(binary.to_path_buf(), model.to_path_buf(), args, log.clone());
    let addr = server.serve(CLIENTS).unwrap_or_else(|e| panic!("{e}"));
    let setup = Setup::LlamaServer;
    eprintln!("prefix-cache-bench: {} at {addr} on {name}", setup.label());
    let (warmup, rounds) = measure(setup, addr, name, &log);
    Run {
        setup,
        flags: format!(
            "{}; requests: cache_prompt",
            server.flags(CLIENTS).join(" ")
        ),
        warmup,
        rounds,
    }
}

/// The warm-up, then up to [`ROUNDS`] rounds of [`CLIENTS`] concurrent
/// requests, each the prefix and a new question.
fn measure(setup: Setup, addr: SocketAddr, model: &str, log: &Path) -> (Timing, Vec<Vec<Timing>>) {
    let fail = |e: String| -> ! {
        panic!(
            "{}: {e}\n(has the server exited? its log: {})",
            setup.label(),
            log.display()
        )
    };
    let prefix = system_prefix();
    let warmup = client::stream(addr, PATH, &request(model, &prefix)).unwrap_or_else(|e| fail(e));
    eprintln!(
        "prefix-cache-bench: {}: warm-up, {} prompt tokens (the prefix): TTFT {:.0} ms",
        setup.label(),
        warmup.prompt_tokens,
        warmup.ttft().as_secs_f64() * 1e3
    );
    let deadline = Instant::now() + DEADLINE;
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        if Instant::now() >= deadline {
            eprintln!(
                "prefix-cache-bench: {}: deadline reached after {round} rounds",
                setup.label()
            );
            break;
        }
        let bodies: Vec<_> = (0..CLIENTS)
            .map(|c| request(model, &format!("{prefix}{}", question(round, c))))
            .collect();
        let timings = client::concurrently(addr, PATH, &bodies).unwrap_or_else(|e| fail(e));
        let ttfts: Vec<f64> = timings.iter().map(|t| t.ttft().as_secs_f64()).collect();
        let cached: Vec<usize> = timings.iter().map(|t| t.cached_tokens).collect();
        eprintln!(
            "prefix-cache-bench: {}: round {}: TTFT p50 {:.0} ms, cached tokens {cached:?}",
            setup.label(),
            round + 1,
            median(&ttfts) * 1e3
        );
        rounds.push(timings);
    }
    (warmup, rounds)
}
