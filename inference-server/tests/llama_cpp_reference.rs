//! Our forward pass against llama.cpp's on the same GGUF files, independent
//! of either tokenizer: both are fed the same token ids, llama.cpp through
//! `llama-server`'s `/completion` (a prompt given as an id array, greedy,
//! `n_probs: 5`), ours in-process. Log-probabilities are compared along
//! llama.cpp's own greedy continuation (teacher-forced: every position
//! conditions on the same tokens in both), at its first 16 positions.
//!
//! Two claims, each with the bar it can meet:
//!
//! 1. **The same model.** On files with F32 weights (the real SmolLM2 and
//!    Gemma 3 files dequantized by `llama-quantize`, and tiny random-weight
//!    files of every architecture we load), no quantized arithmetic is left,
//!    and the two runtimes compute the same function: every top-5
//!    log-probability within 0.05 of llama.cpp's (measured: ≤ 0.02, the rest
//!    being llama.cpp's f16 KV cache), and the 64-token greedy continuations
//!    identical for at least 9 of 10 prompts. Any structural mistake (a
//!    norm, a RoPE base or scaling, a window, a bias) exceeds this by far.
//!
//! 2. **The same rounding quality.** On quantized files both runtimes round
//!    activations to 8 bits, and that rounding moves log-probabilities by
//!    tenths in any implementation: llama.cpp against *itself*, flash
//!    attention on against off on the same Q4_1 file, differs by up to 0.50,
//!    and by up to 0.43 from the same weights in F32. A fixed 0.05 bar would
//!    fail llama.cpp too, so the bar is relative and measured in the same
//!    run: our mean |Δ| from llama.cpp (flash attention on) at most 1.5× its
//!    mean |Δ| from itself with flash attention off, plus 0.02. A wrong
//!    scale, sign or sub-block in a K-quant kernel moves whole logits, far
//!    beyond that.
//!
//! The quantized files: the embedded SmolLM2 Q4_1, its Q4_K_M, Q5_K_M, Q6_K
//! and Q8_0 requantizations and the F32 files (`scripts/reference-models.sh`,
//! made once by llama.cpp's `llama-quantize`, cached), and the real Gemma 3
//! 270M Q4_K_M (`scripts/fetch-gemma.sh`). llama-server comes from
//! `scripts/llama-cpp.sh` (or `MAAS_LLAMA_SERVER`); a missing binary or
//! model fails the test with the command that provides it, never skips.

// Test helpers outside `#[test]` functions may fail loudly too (clippy.toml
// allows it only inside them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use maas_inference_server::model::tiny::{self, Weights};
use maas_inference_server::model::{load_model, Model, Placement, Scratch, StepInput};
use serde_json::{json, Value as Json};

const CONTINUATION: usize = 64;
const COMPARED_POSITIONS: usize = 16;
const TOP: usize = 5;
/// Claim 1's bar (see the module comment).
const EXACT_TOLERANCE: f64 = 0.05;
/// Claim 2's bar: ours ≤ `NOISE_FACTOR` × llama.cpp's own + `NOISE_SLACK`.
const NOISE_FACTOR: f64 = 1.5;
const NOISE_SLACK: f64 = 0.02;

/// The workspace's `.cache`, from this crate's own manifest (the testkit's
/// `workspace_root` is baked in where the testkit was compiled).
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache")
}

/// llama.cpp's server on one model, on a free loopback port; killed on drop.
struct LlamaServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

fn llama_server_binary() -> PathBuf {
    let path = std::env::var_os("MAAS_LLAMA_SERVER").map_or_else(
        || cache_dir().join("llama.cpp/0.3.36/build/bin/llama-server"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no llama-server at {path:?}: run scripts/llama-cpp.sh (about 11 minutes on 2 cores, \
         cached) or set MAAS_LLAMA_SERVER"
    );
    path
}

/// One greedy continuation by llama.cpp.
struct Reference {
    tokens: Vec<u32>,
    /// Per generated position, up to the first that llama-server reported
    /// nothing for: token id → log-probability for llama.cpp's top 5.
    top: Vec<HashMap<u32, f64>>,
}

impl LlamaServer {
    /// `flash_attention`: llama.cpp's `-fa on|off`, its two attention paths.
    fn start(model: &Path, flash_attention: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!(
            "maas-llama-server-{}-{port}.log",
            std::process::id()
        ));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let child = Command::new(llama_server_binary())
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
            .args(["-np", "1", "-c", "2048", "--no-warmup"])
            .args(["-fa", if flash_attention { "on" } else { "off" }])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start llama-server");
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = maas_testkit::try_request("GET", &self.url("/health"), &[], None) {
                if r.status == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "llama-server exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "llama-server not ready after 120 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The ids of `text` by the model's own tokenizer, BOS included.
    fn tokenize(&self, text: &str) -> Vec<u32> {
        let body = json!({"content": text, "add_special": true});
        let r = maas_testkit::post_json(&self.url("/tokenize"), &[], &body);
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_value(r.json()["tokens"].clone()).unwrap()
    }

    /// llama.cpp's greedy continuation of `prompt` (up to `n` tokens) with
    /// its top-5 log-probabilities at each generated position.
    fn complete(&self, prompt: &[u32], n: usize) -> Reference {
        let body = json!({
            "prompt": prompt,
            "n_predict": n,
            "temperature": 0.0,
            "n_probs": TOP,
            "cache_prompt": false,
            "return_tokens": true,
        });
        let r = maas_testkit::post_json(&self.url("/completion"), &[], &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let answer = r.json();
        assert_eq!(
            answer["tokens_evaluated"].as_u64(),
            Some(prompt.len() as u64),
            "llama-server did not take the prompt as given: {answer}"
        );
        let id = |v: &Json| v["id"].as_u64().unwrap() as u32;
        let tokens: Vec<u32> = answer["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        // llama-server reports no entry for a token after which the text
        // ends inside a UTF-8 character (its `validate_utf8`), so entries and
        // positions part at the first such token: only the entries before
        // it are positioned for certain, and only those are kept.
        // (With no entry at all the field is absent.)
        let entries = answer["completion_probabilities"].as_array().cloned();
        let top: Vec<HashMap<u32, f64>> = entries
            .unwrap_or_default()
            .iter()
            .zip(&tokens)
            .take_while(|(step, &token)| id(step) == token)
            .map(|(step, _)| {
                step["top_logprobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| (id(t), t["logprob"].as_f64().unwrap()))
                    .collect()
            })
            .collect();
        Reference { tokens, top }
    }

    /// llama.cpp's top-5 at positions `from..n` after `prompt` when the
    /// continuation is forced to be `forced`: one single-token request per
    /// position (llama-server reports no prompt probabilities); empty for a
    /// token it reports nothing for.
    fn forced(
        &self,
        prompt: &[u32],
        forced: &[u32],
        from: usize,
        n: usize,
    ) -> Vec<HashMap<u32, f64>> {
        (from..n.min(forced.len()))
            .map(|k| {
                let context: Vec<u32> = prompt.iter().chain(&forced[..k]).copied().collect();
                self.complete(&context, 1)
                    .top
                    .into_iter()
                    .next()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// `reference`'s top-5 at its first `n` positions: those its greedy
    /// run reported, then the rest forced one by one.
    fn first_positions(
        &self,
        prompt: &[u32],
        reference: &Reference,
        n: usize,
    ) -> Vec<HashMap<u32, f64>> {
        let mut top: Vec<_> = reference.top.iter().take(n).cloned().collect();
        let reported = top.len();
        top.extend(self.forced(prompt, &reference.tokens, reported, n));
        top
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&l| l as f64 - log_sum).collect()
}

/// Our model, run in-process one token at a time after the prompt.
struct Ours<'a> {
    model: &'a Model,
}

impl Ours<'_> {
    /// Feeds `prompt`, then for `steps` steps the token `next` picks from
    /// the step's index and logits.
    fn steps(&self, prompt: &[u32], steps: usize, mut next: impl FnMut(usize, &[f32]) -> u32) {
        // One sequence's blocks of the host KV memory, in order.
        const BLOCK: usize = 16;
        let blocks = (prompt.len() + steps + 1).div_ceil(BLOCK);
        let mut kv = self.model.new_kv(blocks, BLOCK).unwrap();
        let table: Vec<u32> = (0..blocks as u32).collect();
        let mut scratch = Scratch::default();
        let mut feed: Vec<u32> = prompt.to_vec();
        let mut start = 0;
        for step in 0..steps {
            let batch = [StepInput {
                tokens: &feed,
                blocks: &table,
                start,
                logits: true,
            }];
            let logits = self
                .model
                .forward(&batch, &mut kv, &mut scratch)
                .unwrap()
                .into_rows();
            start += feed.len();
            feed = vec![next(step, &logits[0])];
        }
    }

    /// Our log-probabilities at the first `n` positions along `forced`.
    fn forced(&self, prompt: &[u32], forced: &[u32], n: usize) -> Vec<Vec<f64>> {
        let mut out = Vec::new();
        self.steps(prompt, n.min(forced.len()), |step, logits| {
            out.push(log_softmax(logits));
            forced[step]
        });
        out
    }

    /// Our greedy continuation, and the log-probabilities it was chosen from.
    fn greedy(&self, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f64>>) {
        let (mut tokens, mut logprobs) = (Vec::new(), Vec::new());
        self.steps(prompt, n, |_, logits| {
            let next = maas_inference_server::engine::sampling::argmax(logits);
            tokens.push(next);
            logprobs.push(log_softmax(logits));
            next
        });
        (tokens, logprobs)
    }
}

/// |Δ| for every token in `reference`'s top-5 at every compared position,
/// against `other`'s log-probability of it (skipped where `other` has none).
fn deltas(reference: &[HashMap<u32, f64>], other: impl Fn(usize, u32) -> Option<f64>) -> Vec<f64> {
    let mut out = Vec::new();
    for (pos, top) in reference.iter().enumerate() {
        for (&id, &theirs) in top {
            if let Some(ours) = other(pos, id) {
                out.push((ours - theirs).abs());
            }
        }
    }
    out
}

fn stats(deltas: &[f64]) -> (f64, f64) {
    let (mut sum, mut n, mut max) = (0.0, 0usize, 0.0f64);
    for &d in deltas {
        sum += d;
        n += 1;
        max = max.max(d);
    }
    assert!(n > 0, "no log-probabilities to compare");
    (sum / n as f64, max)
}

/// Claim 1 on `path` (F32 weights): see the module comment.
fn computes_the_same_function(name: &str, path: &Path, prompts: &[Vec<u32>], server: &LlamaServer) {
    let model = load_model(path, None, &Placement::Host)
        .unwrap_or_else(|e| panic!("{name}: our loader refused {path:?}: {e}"));
    let ours = Ours { model: &model };
    let mut failures = Vec::new();
    let mut identical = 0;
    let (mut worst, mut positions) = (0.0f64, 0);
    for (i, prompt) in prompts.iter().enumerate() {
        let reference = server.complete(prompt, CONTINUATION);
        let top = server.first_positions(prompt, &reference, COMPARED_POSITIONS);
        positions += top.iter().filter(|t| !t.is_empty()).count();
        let forced = ours.forced(prompt, &reference.tokens, COMPARED_POSITIONS);
        let max = deltas(&top, |pos, id| Some(forced[pos][id as usize]))
            .into_iter()
            .fold(0.0, f64::max);
        worst = worst.max(max);
        if max > EXACT_TOLERANCE {
            failures.push(format!(
                "prompt {i}: a top-{TOP} log-probability differs by {max:.4} (bar \
                 {EXACT_TOLERANCE})"
            ));
        }
        let (tokens, logprobs) = ours.greedy(prompt, CONTINUATION);
        // llama.cpp stops after an end-of-generation token; ours runs on.
        let tokens = &tokens[..reference.tokens.len()];
        match tokens
            .iter()
            .zip(&reference.tokens)
            .position(|(a, b)| a != b)
        {
            None => identical += 1,
            Some(p) => {
                let (a, b) = (tokens[p] as usize, reference.tokens[p] as usize);
                eprintln!(
                    "{name} prompt {i}: continuations part at token {p}: ours {a}, llama.cpp \
                     {b}, {:.4} apart in our distribution",
                    logprobs[p][a] - logprobs[p][b]
                );
            }
        }
    }
    eprintln!(
        "{name}: max |Δ logprob| {worst:.4} over the top-{TOP} at {positions} positions; \
         {identical} of {} greedy continuations identical",
        prompts.len()
    );
    // Not vacuous. llama-server reports nothing for a token that ends
    // inside a UTF-8 character; the tiny models' random weights pick the
    // byte tokens 0x80.. about as often as ASCII ones (their coverage:
    // 111-151 of 160), the real models rarely.
    let possible = prompts.len() * COMPARED_POSITIONS;
    if positions < possible / 2 {
        failures.push(format!(
            "llama-server reported only {positions} of {possible} positions"
        ));
    }
    let needed = prompts.len() - prompts.len() / 10;
    if identical < needed {
        failures.push(format!(
            "only {identical} of {} continuations identical (need {needed})",
            prompts.len()
        ));
    }
    assert!(
        failures.is_empty(),
        "{name} computes a different function from llama.cpp's:\n{}",
        failures.join("\n")
    );
}

/// Claim 2 on the quantized file at `path`: see the module comment.
fn rounds_no_worse_than_llama_cpp(name: &str, path: &Path, prompts: &[Vec<u32>]) {
    let (flash, plain) = (
        LlamaServer::start(path, true),
        LlamaServer::start(path, false),
    );
    let model = load_model(path, None, &Placement::Host)
        .unwrap_or_else(|e| panic!("{name}: our loader refused {path:?}: {e}"));
    let ours = Ours { model: &model };
    let (mut own, mut theirs) = (Vec::new(), Vec::new());
    let (mut agree_ours, mut agree_self) = (0, 0);
    for prompt in prompts {
        let reference = flash.complete(prompt, CONTINUATION);
        let top = flash.first_positions(prompt, &reference, COMPARED_POSITIONS);
        let forced = ours.forced(prompt, &reference.tokens, COMPARED_POSITIONS);
        own.extend(deltas(&top, |pos, id| Some(forced[pos][id as usize])));
        let other = plain.forced(prompt, &reference.tokens, 0, COMPARED_POSITIONS);
        theirs.extend(deltas(&top, |pos, id| other[pos].get(&id).copied()));
        let n = reference.tokens.len();
        agree_ours += usize::from(ours.greedy(prompt, n).0 == reference.tokens);
        agree_self += usize::from(plain.complete(prompt, n).tokens == reference.tokens);
    }
    let (ours_mean, ours_max) = stats(&own);
    let (self_mean, self_max) = stats(&theirs);
    let bar = NOISE_FACTOR * self_mean + NOISE_SLACK;
    eprintln!(
        "{name}: |Δ logprob| from llama.cpp: ours mean {ours_mean:.4} max {ours_max:.4}; \
         llama.cpp without flash attention mean {self_mean:.4} max {self_max:.4}; greedy \
         continuations identical to llama.cpp's: ours {agree_ours}/{n}, llama.cpp's other \
         path {agree_self}/{n}",
        n = prompts.len()
    );
    assert!(
        ours_mean <= bar,
        "{name}: our mean |Δ logprob| from llama.cpp, {ours_mean:.4}, exceeds {bar:.4} \
         ({NOISE_FACTOR} × llama.cpp's own {self_mean:.4} + {NOISE_SLACK})"
    );
}

fn model_path(dir: &Path, file: &str, made_by: &str) -> PathBuf {
    let path = dir.join(file);
    assert!(path.is_file(), "no model at {path:?}: run {made_by}");
    path
}

fn models_dir() -> PathBuf {
    std::env::var_os("MAAS_MODEL_DIR").map_or_else(|| cache_dir().join("models"), PathBuf::from)
}

fn reference_model(file: &str) -> PathBuf {
    model_path(
        &models_dir().join("reference"),
        file,
        "scripts/reference-models.sh",
    )
}

/// Ten prompts of different kinds: facts, code, prose, lists, dialogue,
/// numbers, another language.
const PROMPTS: [&str; 10] = [
    "The capital of France is",
    "Here is a Python function that reverses a string:\n\ndef reverse(s):",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "Q: What is the boiling point of water at sea level?\nA:",
    "1, 2, 3, 5, 8, 13,",
    "To make a cup of tea, first",
    "La tour Eiffel se trouve à",
    "SELECT name, email FROM users WHERE",
    "Dear customer,\n\nThank you for your order. Unfortunately,",
];

/// The ten prompts by `server`'s tokenizer; for Gemma the last is replaced
/// by one past its 512-position window, where the local layers must forget
/// the start while the global ones still see it.
fn prompts(server: &LlamaServer, long: bool) -> Vec<Vec<u32>> {
    let mut prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|t| server.tokenize(t)).collect();
    if long {
        let text = "Rivers carry water from the mountains to the sea, shaping valleys, \
                    feeding farms and cities, and carrying stories along the way. "
            .repeat(24);
        let long = server.tokenize(&format!("{text}\nIn short, rivers"));
        assert!(
            long.len() > 512,
            "long prompt has only {} tokens",
            long.len()
        );
        *prompts.last_mut().unwrap() = long;
    }
    prompts
}

#[test]
fn smollm2_in_f32_computes_what_llama_cpp_computes() {
    let path = reference_model("SmolLM2-135M-Instruct.F32.gguf");
    let server = LlamaServer::start(&path, true);
    computes_the_same_function("smollm2-135m f32", &path, &prompts(&server, false), &server);
}

#[test]
fn gemma3_in_f32_computes_what_llama_cpp_computes() {
    let path = reference_model("gemma-3-270m.F32.gguf");
    let server = LlamaServer::start(&path, true);
    computes_the_same_function("gemma3-270m f32", &path, &prompts(&server, true), &server);
}

/// Every architecture we load, as a tiny F32 model with real metadata keys
/// (`model::tiny`): Llama 3.x RoPE factors and scaling, qwen2's biases,
/// qwen3's and gemma3's per-head norms and head size, gemma3's sandwich
/// norms and a sliding window shorter than the prompts.
#[test]
fn tiny_models_of_every_architecture_compute_what_llama_cpp_computes() {
    for &variant in tiny::ARCHITECTURES {
        let path = tiny::write(variant, Weights::F32);
        let server = LlamaServer::start(&path, true);
        // Prompts of 20..50 ids over the byte tokens, within the tiny
        // model's context with the continuation.
        let room = tiny::CONTEXT - CONTINUATION;
        let prompts: Vec<Vec<u32>> = (0..10u32)
            .map(|p| {
                (0..(20 + 3 * p as usize).min(room) as u32)
                    .map(|i| 3 + (i * 37 + p * 11) % 256)
                    .collect()
            })
            .collect();
        computes_the_same_function(&format!("tiny {variant}"), &path, &prompts, &server);
        drop(server);
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn quantized_smollm2_files_round_no_worse_than_llama_cpp() {
    let q4_1 = model_path(
        &models_dir(),
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "scripts/fetch-model.sh",
    );
    let files = [
        q4_1,
        reference_model("SmolLM2-135M-Instruct.Q4_K_M.gguf"),
        reference_model("SmolLM2-135M-Instruct.Q5_K_M.gguf"),
        reference_model("SmolLM2-135M-Instruct.Q6_K.gguf"),
        reference_model("SmolLM2-135M-Instruct.Q8_0.gguf"),
    ];
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let prompts = prompts(&LlamaServer::start(&path, true), false);
        rounds_no_worse_than_llama_cpp(&name, &path, &prompts);
    }
}

#[test]
fn gemma3_q4_k_m_rounds_no_worse_than_llama_cpp() {
    let path = model_path(
        &models_dir(),
        "gemma-3-270m-q4_k_m.gguf",
        "scripts/fetch-gemma.sh",
    );
    let prompts = prompts(&LlamaServer::start(&path, true), true);
    rounds_no_worse_than_llama_cpp("gemma-3-270m-q4_k_m", &path, &prompts);
}
