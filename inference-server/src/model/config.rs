//! The architecture hyper-parameters a GGUF file declares, read and checked once
//! at load so the forward pass can trust them.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use super::ModelError;

/// How a model rotates query/key pairs. GGUF llama checkpoints are converted
/// with their Q/K rows permuted so that rotation pairs are adjacent
/// (`Interleaved`); Qwen- and Gemma-style models keep the halves layout
/// (`Halves`), the same split llama.cpp makes in `llama_model_rope_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Interleaved,
    Halves,
}

/// The block shape an architecture uses. Llama-shaped blocks are
/// `x + attn(norm(x))`, `x + swiglu(norm(x))`; Gemma 3 wraps both branches in
/// a second norm ("sandwich") and gates its MLP with GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Gemma3,
}

/// The rotation frequencies one kind of layer uses: `base` and `scale` as
/// llama.cpp's `freq_base`/`freq_scale` (angle = scale · pos · base^(-2i/d)).
/// Per-dimension factors (`rope_freqs.weight`, Llama 3.x) are tensors and are
/// read by the loader.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    pub base: f32,
    pub scale: f32,
}

/// Sliding-window attention on some layers (Gemma 3): a local layer sees the
/// last `window` positions (itself included) and rotates with `local_rope`;
/// the others are global and use the model's main RoPE.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    pub window: usize,
    pub local_rope: RopeParams,
    /// One entry per layer: `true` for a sliding-window layer.
    pub local: Vec<bool>,
}

/// Bounds on a file's sizes, far above any model's (Llama 3.1 405B: 126
/// layers, 16,384 wide, 128 heads of 128; Llama 4: a 10M context).
const MAX_LAYERS: usize = 1_024;
const MAX_WIDTH: usize = 1 << 20;
const MAX_HEADS: usize = 4_096;
const MAX_HEAD_DIM: usize = 4_096;
const MAX_CONTEXT: usize = 1 << 27;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub family: Family,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub context_length: usize,
    pub rope: RopeParams,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// Multiplies attention scores (1/sqrt(head_dim) unless the family says
    /// otherwise).
    pub attention_scale: f32,
    pub sliding_window: Option<SlidingWindow>,
    /// `cap · tanh(logits / cap)` on the output, when the file asks for it.
    pub final_logit_softcap: Option<f32>,
}

struct Arch {
    name: &'static str,
    family: Family,
    rope_style: RopeStyle,
    qk_norm: bool,
}

/// What each supported architecture looks like; everything else (sizes,
/// bases, windows) is read from the file. Biases on Q/K/V (qwen2) are
/// optional tensors and need no flag.
const SUPPORTED: &[Arch] = &[
    Arch {
        name: "llama",
        family: Family::Llama,
        rope_style: RopeStyle::Interleaved,
        qk_norm: false,
    },
    Arch {
        name: "mistral",
        family: Family::Llama,
        rope_style: RopeStyle::Interleaved,
        qk_norm: false,
    },
    Arch {
        name: "qwen2",
        family: Family::Llama,
        rope_style: RopeStyle::Halves,
        qk_norm: false,
    },
    Arch {
        name: "qwen3",
        family: Family::Llama,
        rope_style: RopeStyle::Halves,
        qk_norm: true,
    },
    // Phi-3 (and Phi-4, written as phi3) stacks Q, K and V in one
    // `attn_qkv` and gate and up in one `ffn_up`; the loader reads them as
    // written. Its `attention.sliding_window` is ignored, as llama.cpp
    // ignores it (its converters do not say which layers slide).
    Arch {
        name: "phi3",
        family: Family::Llama,
        rope_style: RopeStyle::Halves,
        qk_norm: false,
    },
    Arch {
        name: "gemma3",
        family: Family::Gemma3,
        rope_style: RopeStyle::Halves,
        qk_norm: true,
    },
];

/// The supported architecture names, for error messages.
pub fn supported_architectures() -> String {
    SUPPORTED
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gemma 3 layers are local except every sixth (llama.cpp's default
/// `sliding_window_pattern` for gemma3).
const GEMMA3_SWA_PATTERN: usize = 6;
/// Gemma 3's local layers rotate with base 10,000 unless the file says
/// otherwise (`rope.freq_base_swa`), unscaled.
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Typed lookups of `{arch}.*` keys; every error names the full key.
struct Keys<'a> {
    md: &'a HashMap<String, Value>,
    arch: &'a str,
}

impl Keys<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    fn usize_opt(&self, suffix: &str) -> Result<Option<usize>, ModelError> {
        let k = self.key(suffix);
        self.md
            .get(&k)
            .map(|v| integer(v).ok_or_else(|| ModelError::metadata(&k, "not an unsigned integer")))
            .transpose()
    }

    fn usize(&self, suffix: &str) -> Result<usize, ModelError> {
        self.usize_opt(suffix)?
            .ok_or_else(|| ModelError::metadata(&self.key(suffix), "missing"))
    }

    fn f32_opt(&self, suffix: &str) -> Result<Option<f32>, ModelError> {
        let k = self.key(suffix);
        self.md
            .get(&k)
            .map(|v| {
                v.to_f32()
                    .map_err(|_| ModelError::metadata(&k, "not a float"))
            })
            .transpose()
    }

    fn string_opt(&self, suffix: &str) -> Result<Option<&str>, ModelError> {
        let k = self.key(suffix);
        self.md
            .get(&k)
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| ModelError::metadata(&k, "not a string"))
            })
            .transpose()
    }
}

impl ModelConfig {
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self, ModelError> {
        let name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| ModelError::metadata("general.architecture", "missing"))?;
        let arch = SUPPORTED
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| ModelError::UnsupportedArchitecture(name.clone()))?;
        let keys = Keys { md, arch: &name };

        let layers = keys.usize("block_count")?;
        let hidden = keys.usize("embedding_length")?;
        let heads = keys.usize("attention.head_count")?;
        let kv_heads = keys.usize_opt("attention.head_count_kv")?.unwrap_or(heads);
        let ffn = keys.usize("feed_forward_length")?;
        let context_length = keys.usize("context_length")?;
        let rms_eps = keys
            .f32_opt("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5);

        if layers == 0 || hidden == 0 || heads == 0 || kv_heads == 0 || ffn == 0 {
            return Err(ModelError::metadata(&name, "zero-sized dimension"));
        }
        // Sizes no model has, which would be allocated before the tensors
        // can say otherwise (a vector per layer, RoPE tables per position):
        // refused here rather than aborting the process.
        for (key, value, most) in [
            ("block_count", layers, MAX_LAYERS),
            ("embedding_length", hidden, MAX_WIDTH),
            ("attention.head_count", heads, MAX_HEADS),
            ("feed_forward_length", ffn, MAX_WIDTH),
            ("context_length", context_length, MAX_CONTEXT),
        ] {
            if value > most {
                return Err(ModelError::metadata(
                    &keys.key(key),
                    &format!("{value} is more than any model has (at most {most} are read)"),
                ));
            }
        }
        if heads % kv_heads != 0 {
            return Err(ModelError::metadata(
                &keys.key("attention.head_count_kv"),
                "does not divide attention.head_count",
            ));
        }
        // Qwen 3 and Gemma 3 declare a head size of their own; others
        // split the embedding evenly.
        let head_dim = match keys.usize_opt("attention.key_length")? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(ModelError::metadata(
                    &keys.key("attention.head_count"),
                    "does not divide embedding_length",
                ))
            }
        };
        if let Some(v) = keys.usize_opt("attention.value_length")? {
            if v != head_dim {
                return Err(ModelError::metadata(
                    &keys.key("attention.value_length"),
                    "differs from attention.key_length",
                ));
            }
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::metadata(&name, "odd head dimension"));
        }
        if head_dim > MAX_HEAD_DIM {
            return Err(ModelError::metadata(
                &keys.key("attention.key_length"),
                &format!("{head_dim} is more than any model has (at most {MAX_HEAD_DIM})"),
            ));
        }
        if let Some(rot) = keys.usize_opt("rope.dimension_count")? {
            if rot != head_dim {
                return Err(ModelError::metadata(
                    &keys.key("rope.dimension_count"),
                    "partial rotary embeddings are not supported",
                ));
            }
        }
        let rope = RopeParams {
            base: keys.f32_opt("rope.freq_base")?.unwrap_or(10_000.0),
            scale: rope_scale(&keys)?,
        };

        let mut attention_scale = 1.0 / (head_dim as f32).sqrt();
        let mut sliding_window = None;
        if arch.family == Family::Gemma3 {
            // The GGUF carries no query_pre_attn_scalar: llama.cpp derives it
            // from the model size as Gemma's reference code does (the 27B,
            // 62 layers, scales by hidden/heads, the others by head_dim).
            if layers == 62 {
                attention_scale = 1.0 / ((hidden / heads) as f32).sqrt();
            }
            sliding_window = gemma3_window(&keys, layers)?;
        }
        let final_logit_softcap = keys
            .f32_opt("final_logit_softcapping")?
            .filter(|cap| *cap != 0.0);
        Ok(Self {
            architecture: name.clone(),
            family: arch.family,
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            context_length,
            rope,
            rope_style: arch.rope_style,
            rms_eps,
            qk_norm: arch.qk_norm,
            attention_scale,
            sliding_window,
            final_logit_softcap,
        })
    }

    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The window of `layer` (`None`: it attends to every position) and the
    /// RoPE it rotates with.
    pub fn layer_attention(&self, layer: usize) -> (Option<usize>, RopeParams) {
        match &self.sliding_window {
            Some(sw) if sw.local.get(layer).copied().unwrap_or(false) => {
                (Some(sw.window), sw.local_rope)
            }
            _ => (None, self.rope),
        }
    }
}

/// llama.cpp's `rope.scaling.type` (default linear) and `rope.scaling.factor`:
/// linear scaling divides positions by the factor; YaRN and LongRoPE change
/// the attention itself and are refused by name.
fn rope_scale(keys: &Keys<'_>) -> Result<f32, ModelError> {
    let kind = keys.string_opt("rope.scaling.type")?.unwrap_or("linear");
    match kind {
        "none" => return Ok(1.0),
        "linear" => {}
        other => {
            return Err(ModelError::metadata(
                &keys.key("rope.scaling.type"),
                &format!("{other:?} RoPE scaling is not supported (none, linear are)"),
            ))
        }
    }
    let factor = match keys.f32_opt("rope.scaling.factor")? {
        Some(f) => Some(f),
        None => keys.f32_opt("rope.scale_linear")?,
    };
    match factor {
        None => Ok(1.0),
        Some(0.0) => Ok(1.0),
        Some(f) if f > 0.0 && f.is_finite() => Ok(1.0 / f),
        Some(_) => Err(ModelError::metadata(
            &keys.key("rope.scaling.factor"),
            "not a positive number",
        )),
    }
}

/// Gemma 3's local layers: `attention.sliding_window` positions on every
/// layer but each `sliding_window_pattern`-th (llama.cpp's convention).
fn gemma3_window(keys: &Keys<'_>, layers: usize) -> Result<Option<SlidingWindow>, ModelError> {
    let window = match keys.usize_opt("attention.sliding_window")? {
        Some(w) if w > 0 => w,
        _ => return Ok(None),
    };
    if let Some(v) = keys.md.get(&keys.key("attention.sliding_window_pattern")) {
        if matches!(v, Value::Array(_)) {
            return Err(ModelError::metadata(
                &keys.key("attention.sliding_window_pattern"),
                "a per-layer pattern array is not supported",
            ));
        }
    }
    let pattern = keys
        .usize_opt("attention.sliding_window_pattern")?
        .unwrap_or(GEMMA3_SWA_PATTERN);
    let local = (0..layers)
        .map(|l| pattern == 0 || l % pattern < pattern - 1)
        .collect();
    Ok(Some(SlidingWindow {
        window,
        local_rope: RopeParams {
            base: keys
                .f32_opt("rope.freq_base_swa")?
                .unwrap_or(GEMMA3_LOCAL_ROPE_BASE),
            scale: 1.0,
        },
        local,
    }))
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
