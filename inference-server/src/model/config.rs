//! The architecture hyper-parameters a GGUF file declares, read and checked once
//! at load so the forward pass can trust them.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use super::ModelError;

/// How a model rotates query/key pairs. GGUF llama checkpoints are converted
/// with their Q/K rows permuted so that rotation pairs are adjacent
/// (`Interleaved`); Qwen-style models keep the halves layout (`Halves`), the
/// same split llama.cpp makes in `llama_model_rope_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Interleaved,
    Halves,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
}

/// Architectures whose blocks are llama-shaped (RMSNorm, rotary attention with
/// grouped KV heads, SwiGLU MLP); they differ only in metadata prefix, RoPE
/// layout and QKV biases, which the loader reads from the file.
const SUPPORTED: &[(&str, RopeStyle)] = &[
    ("llama", RopeStyle::Interleaved),
    ("mistral", RopeStyle::Interleaved),
    ("qwen2", RopeStyle::Halves),
];

impl ModelConfig {
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self, ModelError> {
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| ModelError::metadata("general.architecture", "missing"))?;
        let rope_style = SUPPORTED
            .iter()
            .find(|(name, _)| *name == arch)
            .map(|(_, style)| *style)
            .ok_or_else(|| ModelError::UnsupportedArchitecture(arch.clone()))?;

        let key = |suffix: &str| format!("{arch}.{suffix}");
        let usize_of = |suffix: &str| -> Result<usize, ModelError> {
            let k = key(suffix);
            let v = md
                .get(&k)
                .ok_or_else(|| ModelError::metadata(&k, "missing"))?;
            integer(v).ok_or_else(|| ModelError::metadata(&k, "not an unsigned integer"))
        };
        let f32_of = |suffix: &str, default: Option<f32>| -> Result<f32, ModelError> {
            let k = key(suffix);
            match md.get(&k) {
                Some(v) => v
                    .to_f32()
                    .map_err(|_| ModelError::metadata(&k, "not a float")),
                None => default.ok_or_else(|| ModelError::metadata(&k, "missing")),
            }
        };

        let layers = usize_of("block_count")?;
        let hidden = usize_of("embedding_length")?;
        let heads = usize_of("attention.head_count")?;
        let kv_heads = match md.get(&key("attention.head_count_kv")) {
            Some(v) => integer(v).ok_or_else(|| {
                ModelError::metadata(&key("attention.head_count_kv"), "not an unsigned integer")
            })?,
            None => heads,
        };
        let ffn = usize_of("feed_forward_length")?;
        let context_length = usize_of("context_length")?;
        let rope_theta = f32_of("rope.freq_base", Some(10_000.0))?;
        let rms_eps = f32_of("attention.layer_norm_rms_epsilon", Some(1e-5))?;

        if layers == 0 || hidden == 0 || heads == 0 || kv_heads == 0 || ffn == 0 {
            return Err(ModelError::metadata(&arch, "zero-sized dimension"));
        }
        if hidden % heads != 0 {
            return Err(ModelError::metadata(
                &key("attention.head_count"),
                "does not divide embedding_length",
            ));
        }
        if heads % kv_heads != 0 {
            return Err(ModelError::metadata(
                &key("attention.head_count_kv"),
                "does not divide attention.head_count",
            ));
        }
        let head_dim = hidden / heads;
        if head_dim % 2 != 0 {
            return Err(ModelError::metadata(&arch, "odd head dimension"));
        }
        if let Some(v) = md.get(&key("rope.dimension_count")) {
            if integer(v) != Some(head_dim) {
                return Err(ModelError::metadata(
                    &key("rope.dimension_count"),
                    "partial rotary embeddings are not supported",
                ));
            }
        }
        Ok(Self {
            architecture: arch,
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            context_length,
            rope_theta,
            rope_style,
            rms_eps,
        })
    }

    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

fn integer(v: &Value) -> Option<usize> {
    match v {
        Value::U8(x) => Some(*x as usize),
        Value::U16(x) => Some(*x as usize),
        Value::U32(x) => Some(*x as usize),
        Value::U64(x) => usize::try_from(*x).ok(),
        Value::I8(x) => usize::try_from(*x).ok(),
        Value::I16(x) => usize::try_from(*x).ok(),
        Value::I32(x) => usize::try_from(*x).ok(),
        Value::I64(x) => usize::try_from(*x).ok(),
        _ => None,
    }
}
