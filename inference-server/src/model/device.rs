//! The forward pass on candle tensors, for accelerators (`--device cuda`).
//!
//! The same model and the same batching contract as the host path: one step
//! feeds every sequence's tokens through each linear layer as one matrix,
//! RoPE rotates each row at its own position, and each row attends over its
//! sequence's blocks of the paged KV memory (`device_kv`), the whole batch
//! in one launch per layer (`paged_attention`). Written with candle ops, it runs wherever candle has a
//! backend. Weights stay in their GGUF block formats on the device and go
//! through candle's quantized matmul kernels (one launch per layer for the
//! whole batch). Every architecture the host path runs runs here too:
//! per-head Q/K norms (Qwen 3, Gemma 3), Gemma's sandwich norms, GELU MLP,
//! embedding scale and sliding-window layers with their own RoPE. Tests run
//! it on candle's CPU device against the host path; `--features cuda` runs
//! the same code on a GPU.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use super::config::{Family, ModelConfig, RopeStyle};
use super::device_kv::DeviceKv;
use super::ops::Rope;
use super::paged_attention::{PagedAttention, SequenceRows, StepLayout, MAX_HEAD_DIM};
use super::{Logits, ModelError, StepInput};

/// One linear weight on the device, with its optional bias.
pub struct DeviceLinear {
    matmul: QMatMul,
    bias: Option<Tensor>,
}

impl DeviceLinear {
    pub fn new(weight: QTensor, bias: Option<Tensor>) -> Result<Self, ModelError> {
        Ok(Self {
            matmul: QMatMul::from_qtensor(weight)?,
            bias,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = x.apply(&self.matmul)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Projections of the same input whose outputs a block takes apart: one
/// matrix each, or one stacked matrix (Phi-3's `attn_qkv`, and its `ffn_up`
/// holding gate and up) whose output columns are split at these widths.
pub enum DeviceProjections {
    Separate(Vec<DeviceLinear>),
    Stacked(DeviceLinear, Vec<usize>),
}

impl DeviceProjections {
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>, ModelError> {
        match self {
            Self::Separate(linears) => linears.iter().map(|l| l.forward(x)).collect(),
            Self::Stacked(linear, widths) => {
                let y = linear.forward(x)?;
                let mut at = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = y.narrow(1, at, w)?.contiguous()?;
                        at += w;
                        Ok(part)
                    })
                    .collect()
            }
        }
    }
}

pub struct DeviceBlock {
    pub attn_norm: Tensor,
    /// Queries, keys and values.
    pub qkv: DeviceProjections,
    /// Per-head RMSNorm weights of queries and keys (`[head_dim]` each).
    pub qk_norm: Option<(Tensor, Tensor)>,
    pub out: DeviceLinear,
    /// Gemma's norm of the attention output before the residual add.
    pub post_attn_norm: Option<Tensor>,
    pub ffn_norm: Tensor,
    /// The MLP's gate and up projections.
    pub gate_up: DeviceProjections,
    pub down: DeviceLinear,
    /// Gemma's norm of the MLP output before the residual add.
    pub post_ffn_norm: Option<Tensor>,
    /// Sliding window of this layer (`None`: global attention).
    pub window: Option<usize>,
    /// Index of this layer's RoPE in the model's tables.
    pub rope: usize,
}

/// A model's weights, loaded onto one device.
pub struct DeviceWeights {
    pub vocab: usize,
    /// `[vocab, hidden]`, dequantized: a step gathers its tokens' rows.
    pub embedding: Tensor,
    pub blocks: Vec<DeviceBlock>,
    pub norm: Tensor,
    pub lm_head: DeviceLinear,
}

pub struct DeviceModel {
    device: Device,
    config: ModelConfig,
    w: DeviceWeights,
    /// Per RoPE (global, then local layers'), `[positions, head_dim / 2]`
    /// cos and sin, from the host path's tables.
    ropes: Vec<(Tensor, Tensor)>,
    positions: usize,
}

impl DeviceModel {
    pub(super) fn new(
        device: Device,
        config: ModelConfig,
        w: DeviceWeights,
        ropes: &[Rope],
    ) -> Result<Self, ModelError> {
        if config.head_dim > MAX_HEAD_DIM {
            return Err(ModelError::metadata(
                "attention.key_length",
                &format!(
                    "heads of {} on a device (its attention kernel takes at most {MAX_HEAD_DIM}); use --device cpu",
                    config.head_dim
                ),
            ));
        }
        let positions = ropes
            .first()
            .ok_or_else(|| ModelError::Forward("no RoPE".into()))?
            .positions();
        let ropes = ropes
            .iter()
            .map(|rope| {
                let (cos, sin, half) = rope.tables();
                Ok((
                    Tensor::from_vec(cos, (positions, half), &device)?,
                    Tensor::from_vec(sin, (positions, half), &device)?,
                ))
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self {
            device,
            config,
            w,
            ropes,
            positions,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.positions
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn vocab_size(&self) -> usize {
        self.w.vocab
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes free on the device (for a CPU device, the host's available
    /// memory).
    pub fn free_memory(&self) -> Result<u64, ModelError> {
        match &self.device {
            #[cfg(feature = "cuda")]
            Device::Cuda(gpu) => gpu
                .cuda_stream()
                .context()
                .mem_get_info()
                .map(|(free, _total)| free as u64)
                .map_err(|e| {
                    ModelError::Forward(format!("cannot read the GPU's free memory: {e}"))
                }),
            _ => super::host_available_memory(),
        }
    }

    /// The KV memory: `blocks` blocks of `block_tokens` positions.
    pub fn new_kv(&self, blocks: usize, block_tokens: usize) -> Result<DeviceKv, ModelError> {
        DeviceKv::new(&self.config, &self.device, blocks, block_tokens)
    }

    /// Runs every input's tokens through the model, stores their keys and
    /// values in their blocks of `kv`, and returns the logits (one
    /// `vocab`-wide row per input that asked, in input order).
    pub fn forward(&self, batch: &[StepInput<'_>], kv: &DeviceKv) -> Result<Logits, ModelError> {
        let cfg = &self.config;
        let mut positions = Vec::new();
        let mut ids = Vec::new();
        for input in batch {
            let start = input.start;
            let end = start + input.tokens.len();
            if end > self.positions {
                return Err(ModelError::Forward(format!(
                    "position {end} beyond the model's {} positions",
                    self.positions
                )));
            }
            kv.check(input.blocks, end)?;
            if let Some(&bad) = input.tokens.iter().find(|&&t| t as usize >= self.w.vocab) {
                return Err(ModelError::Forward(format!(
                    "token id {bad} outside the vocabulary of {}",
                    self.w.vocab
                )));
            }
            positions.extend((start..end).map(|p| p as u32));
            ids.extend_from_slice(input.tokens);
        }
        let n = ids.len();
        if n == 0 {
            return Ok(Logits::new(Vec::new(), self.w.vocab));
        }
        let rows: Vec<SequenceRows<'_>> = batch
            .iter()
            .map(|input| SequenceRows {
                blocks: input.blocks,
                start: input.start,
                len: input.tokens.len(),
            })
            .collect();
        let step = StepLayout::new(
            &rows,
            kv.blocks(),
            kv.block_tokens(),
            cfg.kv_width(),
            &self.device,
        )?;
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let at = Tensor::from_vec(positions, n, &self.device)?;
        let half = cfg.head_dim / 2;
        // Each token is its own "batch" entry for RoPE: one row of angles
        // per token, at that token's position, from each table.
        let angles = self
            .ropes
            .iter()
            .map(|(cos, sin)| {
                Ok((
                    cos.index_select(&at, 0)?.reshape((n, 1, half))?,
                    sin.index_select(&at, 0)?.reshape((n, 1, half))?,
                ))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        // Queries and keys per head: normed (Qwen 3, Gemma 3), then rotated.
        let heads_of = |x: Tensor, heads: usize, norm: Option<&Tensor>, rope: usize| {
            let mut x = x.reshape((n, heads, 1, cfg.head_dim))?;
            if let Some(w) = norm {
                x = candle_nn::ops::rms_norm(&x, w, cfg.rms_eps)?;
            }
            let (cos, sin) = &angles[rope];
            let rotated = match cfg.rope_style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
                RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, cos, sin)?,
            };
            Ok::<_, ModelError>(rotated.reshape((n, heads * cfg.head_dim))?)
        };
        let gemma = cfg.family == Family::Gemma3;
        // `x + norm(y)` for Gemma's sandwich norms, else `x + y`.
        let residual = |x: Tensor, y: Tensor, post: &Option<Tensor>| match post {
            Some(w) => Ok::<_, ModelError>((x + candle_nn::ops::rms_norm(&y, w, cfg.rms_eps)?)?),
            None => Ok((x + y)?),
        };

        let mut x = self.w.embedding.index_select(&ids, 0)?;
        if gemma {
            // Gemma scales its embeddings by sqrt(hidden), taken in f32 as
            // on the host.
            x = (x * f64::from((cfg.hidden as f32).sqrt()))?;
        }
        for (layer, block) in self.w.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, cfg.rms_eps)?;
            let (q_norm, k_norm) = match &block.qk_norm {
                Some((q, k)) => (Some(q), Some(k)),
                None => (None, None),
            };
            let [q, k, v] = projected::<3>(&block.qkv, &h)?;
            let q = heads_of(q, cfg.heads, q_norm, block.rope)?;
            let k = heads_of(k, cfg.kv_heads, k_norm, block.rope)?;
            kv.write(layer, &step, &k, &v)?;
            let (keys, values) = kv.layer(layer);
            let attn = PagedAttention {
                step: &step,
                heads: cfg.heads,
                kv_heads: cfg.kv_heads,
                head_dim: cfg.head_dim,
                block_tokens: kv.block_tokens(),
                scale: cfg.attention_scale,
                window: block.window,
            }
            .forward(&q, keys, values)?;
            x = residual(x, block.out.forward(&attn)?, &block.post_attn_norm)?;

            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, cfg.rms_eps)?;
            let [gate, up] = projected::<2>(&block.gate_up, &h)?;
            // Gemma's GELU is the tanh approximation, which candle's `gelu` is.
            let gate = if gemma {
                gate.gelu()?
            } else {
                candle_nn::ops::silu(&gate)?
            };
            let act = (gate * up)?;
            x = residual(x, block.down.forward(&act)?, &block.post_ffn_norm)?;
        }

        let mut last = Vec::new();
        let mut offset = 0;
        for input in batch {
            let t = input.tokens.len();
            if input.logits {
                last.push((offset + t - 1) as u32);
            }
            offset += t;
        }
        if last.is_empty() {
            return Ok(Logits::new(Vec::new(), self.w.vocab));
        }
        let rows = last.len();
        let last = Tensor::from_vec(last, rows, &self.device)?;
        let h = candle_nn::ops::rms_norm(&x.index_select(&last, 0)?, &self.w.norm, cfg.rms_eps)?;
        let mut logits = self.w.lm_head.forward(&h)?.to_dtype(DType::F32)?;
        if let Some(cap) = cfg.final_logit_softcap {
            logits = ((logits / f64::from(cap))?.tanh()? * f64::from(cap))?;
        }
        Ok(Logits::new(
            logits.flatten_all()?.to_vec1::<f32>()?,
            self.w.vocab,
        ))
    }
}

/// The `N` outputs of `projections` applied to `x`.
fn projected<const N: usize>(
    projections: &DeviceProjections,
    x: &Tensor,
) -> Result<[Tensor; N], ModelError> {
    projections
        .forward(x)?
        .try_into()
        .map_err(|parts: Vec<Tensor>| {
            ModelError::Forward(format!(
                "{} projections where {N} were expected",
                parts.len()
            ))
        })
}

/// Rows of a dequantized `[rows, cols]` weight as an f32 tensor on `device`.
pub(super) fn dense(t: &QTensor, device: &Device) -> Result<Tensor, ModelError> {
    Ok(t.dequantize(device)?.to_dtype(DType::F32)?)
}

/// `[len]` f32 vector on `device` (norm weights, biases).
pub(super) fn vector(values: &[f32], device: &Device) -> Result<Tensor, ModelError> {
    Ok(Tensor::from_slice(values, values.len(), device)?)
}
