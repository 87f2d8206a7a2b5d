//! Tiny random-weight GGUF models with real metadata, written by candle:
//! the loader's and forward pass's unit tests, and the comparison with
//! llama.cpp (`tests/llama_cpp_reference.rs`), run on them. Built only for
//! tests (`cfg(test)` or the `test-models` feature the crate's own
//! integration tests turn on), never into a `cargo build` of the server.

// A test model's writer: a failure here is the calling test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::text::fixtures::tiny_spec;

/// How the tiny model's weight matrices are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// Every block format the host loader handles: Q4_1 and Q4_0 through
    /// the packed kernels, Q5_0 (gemma3's attention), Q8_0 for the tied
    /// embedding and the down projection, F32 for the output projection.
    Mixed,
    /// Everything F32: no quantized arithmetic anywhere, so two runtimes
    /// computing the same function agree to rounding.
    F32,
}

pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FFN: usize = 96;
pub const LAYERS: usize = 2;
pub const CONTEXT: usize = 128;

/// Deterministic pseudo-random weights (no global RNG: reruns are identical).
fn weights(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

fn qtensor(seed: u64, dims: &[usize], dtype: GgmlDType, scale: f32) -> QTensor {
    let len = dims.iter().product();
    let t = Tensor::from_vec(weights(seed, len, scale), dims, &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

/// A two-layer llama with every block format the loader handles: Q4_1 and
/// Q4_0 through the packed kernels, Q8_0 for the tied embedding, F32 through
/// candle's fallback.
pub fn tiny_gguf() -> PathBuf {
    tiny_gguf_of("llama")
}

/// Architectures the tiny model is written as (see [`tiny_gguf_of`]).
pub const ARCHITECTURES: &[&str] = &["llama", "llama3", "qwen2", "qwen3", "gemma3", "phi3"];

/// The same tiny model as architecture `arch`: `qwen2` adds Q/K/V biases and
/// rotates halves instead of adjacent pairs; `qwen3` has per-head Q/K norms
/// and a head size of its own; `gemma3` adds Gemma's sandwich norms, a
/// sliding window on its first layer and Q5_0 attention weights (projected
/// part by part); `llama3` is llama with Llama 3.x RoPE factors and linear
/// scaling; `phi3` stacks Q, K and V in `attn_qkv` and gate and up in
/// `ffn_up`, rotates halves, has its own output matrix (llama.cpp requires
/// one) and a sliding window in its metadata that llama.cpp, and so we,
/// ignore.
pub fn tiny_gguf_of(variant: &str) -> PathBuf {
    write(variant, Weights::Mixed)
}

/// The tiny model as `variant` (see [`tiny_gguf_of`]) with `weights`,
/// written to a fresh temporary file.
pub fn write(variant: &str, weights: Weights) -> PathBuf {
    // Norms, biases and RoPE factors are F32 in every real file too.
    let matrix = |dtype: GgmlDType| match weights {
        Weights::Mixed => dtype,
        Weights::F32 => GgmlDType::F32,
    };
    let arch = if variant == "llama3" {
        "llama"
    } else {
        variant
    };
    let spec = tiny_spec();
    let vocab = spec.tokens.len();
    let own_head = matches!(arch, "qwen3" | "gemma3");
    let head_dim = if own_head { 24 } else { HIDDEN / HEADS };
    let q_width = HEADS * head_dim;
    let u32v = |v: usize| Value::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (key("block_count"), u32v(LAYERS)),
        (key("embedding_length"), u32v(HIDDEN)),
        (key("feed_forward_length"), u32v(FFN)),
        (key("attention.head_count"), u32v(HEADS)),
        (key("attention.head_count_kv"), u32v(KV_HEADS)),
        (key("context_length"), u32v(CONTEXT)),
        (key("rope.dimension_count"), u32v(head_dim)),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (
            "tokenizer.ggml.model".into(),
            Value::String(spec.model.clone()),
        ),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(spec.tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(spec.token_types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(spec.merges.iter().cloned().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u32v(1)),
        ("tokenizer.ggml.eos_token_id".into(), u32v(2)),
    ];
    match variant {
        "qwen3" | "gemma3" => {
            metadata.push((key("attention.key_length"), u32v(head_dim)));
            metadata.push((key("attention.value_length"), u32v(head_dim)));
        }
        "llama3" => metadata.push((key("rope.scaling.factor"), Value::F32(2.0))),
        _ => {}
    }
    if arch == "gemma3" {
        metadata.push((key("attention.sliding_window"), u32v(6)));
        metadata.push((key("attention.sliding_window_pattern"), u32v(2)));
    }
    if arch == "phi3" {
        metadata.push((key("attention.sliding_window"), u32v(6)));
    }
    metadata.push((
        "tokenizer.chat_template".into(),
        Value::String("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}".into()),
    ));

    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            qtensor(1, &[vocab, HIDDEN], matrix(GgmlDType::Q8_0), 1.0),
        ),
        (
            "output_norm.weight".into(),
            qtensor(2, &[HIDDEN], GgmlDType::F32, 1.0),
        ),
    ];
    let kv = KV_HEADS * head_dim;
    for l in 0..LAYERS {
        let s = 100 * (l as u64 + 1);
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        let q4 = if l == 0 {
            GgmlDType::Q4_1
        } else {
            GgmlDType::Q4_0
        };
        let qk = matrix(if arch == "gemma3" {
            GgmlDType::Q5_0
        } else {
            q4
        });
        let q4 = matrix(q4);
        tensors.extend([
            (p("attn_norm"), qtensor(s, &[HIDDEN], GgmlDType::F32, 1.0)),
            (
                p("attn_output"),
                qtensor(s + 4, &[HIDDEN, q_width], GgmlDType::F32, 0.2),
            ),
            (
                p("ffn_norm"),
                qtensor(s + 5, &[HIDDEN], GgmlDType::F32, 1.0),
            ),
            (
                p("ffn_down"),
                qtensor(s + 8, &[HIDDEN, FFN], matrix(GgmlDType::Q8_0), 0.2),
            ),
        ]);
        if arch == "phi3" {
            tensors.extend([
                (
                    p("attn_qkv"),
                    qtensor(s + 1, &[q_width + 2 * kv, HIDDEN], q4, 0.3),
                ),
                (p("ffn_up"), qtensor(s + 7, &[2 * FFN, HIDDEN], q4, 0.2)),
            ]);
        } else {
            tensors.extend([
                (p("attn_q"), qtensor(s + 1, &[q_width, HIDDEN], qk, 0.3)),
                (p("attn_k"), qtensor(s + 2, &[kv, HIDDEN], qk, 0.3)),
                (p("attn_v"), qtensor(s + 3, &[kv, HIDDEN], q4, 0.3)),
                (p("ffn_gate"), qtensor(s + 6, &[FFN, HIDDEN], q4, 0.2)),
                (p("ffn_up"), qtensor(s + 7, &[FFN, HIDDEN], q4, 0.2)),
            ]);
        }
        if arch == "qwen2" {
            let b = |n: &str| format!("blk.{l}.{n}.bias");
            tensors.extend([
                (b("attn_q"), qtensor(s + 9, &[HIDDEN], GgmlDType::F32, 0.5)),
                (b("attn_k"), qtensor(s + 10, &[kv], GgmlDType::F32, 0.5)),
                (b("attn_v"), qtensor(s + 11, &[kv], GgmlDType::F32, 0.5)),
            ]);
        }
        if own_head {
            tensors.extend([
                (
                    p("attn_q_norm"),
                    qtensor(s + 12, &[head_dim], GgmlDType::F32, 1.0),
                ),
                (
                    p("attn_k_norm"),
                    qtensor(s + 13, &[head_dim], GgmlDType::F32, 1.0),
                ),
            ]);
        }
        if arch == "gemma3" {
            tensors.extend([
                (
                    p("post_attention_norm"),
                    qtensor(s + 14, &[HIDDEN], GgmlDType::F32, 1.0),
                ),
                (
                    p("post_ffw_norm"),
                    qtensor(s + 15, &[HIDDEN], GgmlDType::F32, 1.0),
                ),
            ]);
        }
    }
    if arch == "phi3" {
        tensors.push((
            "output.weight".into(),
            qtensor(3, &[vocab, HIDDEN], matrix(GgmlDType::Q8_0), 1.0),
        ));
    }
    if variant == "llama3" {
        let factors: Vec<f32> = (0..head_dim / 2).map(|i| 1.0 + i as f32).collect();
        let t = Tensor::from_vec(factors, head_dim / 2, &Device::Cpu).unwrap();
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }

    let mut bytes = Cursor::new(Vec::new());
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut bytes, &md, &ts).unwrap();
    let path = std::env::temp_dir().join(format!(
        "maas-tiny-{variant}-{weights:?}-{}-{:?}.gguf",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, bytes.into_inner()).unwrap();
    path
}
