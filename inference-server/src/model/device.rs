//! The forward pass on candle tensors, for accelerators (`--device cuda`).
//!
//! The same model and the same batching contract as the host path: one step
//! feeds every sequence's tokens through each linear layer as one matrix,
//! RoPE rotates each row at its own position, and each sequence attends over
//! its own cache. Written with candle ops, it runs wherever candle has a
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
use super::ops::Rope;
use super::{Logits, ModelError};

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

/// One sequence's keys and values on the device: per layer one
/// `[kv_heads, capacity, head_dim]` tensor, allocated whole at admission (so
/// running out of device memory refuses the request instead of failing a
/// step) and written in place as positions arrive.
pub struct DeviceCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    capacity: usize,
    len: usize,
    bytes: usize,
}

impl DeviceCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device memory the cache holds (all of it is reserved at admission).
    pub fn resident_bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `from`'s positions into this cache (see
    /// a request's choices forking), device to device.
    pub fn copy_prefix(&mut self, from: &DeviceCache) -> Result<(), ModelError> {
        if from.len > self.capacity {
            return Err(ModelError::Forward(format!(
                "cannot copy {} positions into a cache of {}",
                from.len, self.capacity
            )));
        }
        if from.len > 0 {
            for (to, from_t) in self
                .keys
                .iter_mut()
                .zip(&from.keys)
                .chain(self.values.iter_mut().zip(&from.values))
            {
                // A narrowed view is strided; slice_set takes contiguous
                // sources only.
                to.slice_set(&from_t.narrow(1, 0, from.len)?.contiguous()?, 1, 0)?;
            }
        }
        self.len = from.len;
        Ok(())
    }
}

/// One sequence's share of a device step (see [`super::StepInput`]).
pub struct DeviceStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut DeviceCache,
    pub logits: bool,
}

impl DeviceModel {
    pub(super) fn new(
        device: Device,
        config: ModelConfig,
        w: DeviceWeights,
        ropes: &[Rope],
    ) -> Result<Self, ModelError> {
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

    pub fn new_cache(&self, capacity_tokens: usize) -> Result<DeviceCache, ModelError> {
        let cfg = &self.config;
        let shape = (cfg.kv_heads, capacity_tokens, cfg.head_dim);
        let alloc = || -> Result<Vec<Tensor>, ModelError> {
            (0..cfg.layers)
                .map(|_| {
                    Tensor::zeros(shape, DType::F32, &self.device).map_err(|e| {
                        ModelError::Forward(format!(
                            "cannot allocate a KV cache for {capacity_tokens} positions: {e}"
                        ))
                    })
                })
                .collect()
        };
        Ok(DeviceCache {
            keys: alloc()?,
            values: alloc()?,
            capacity: capacity_tokens,
            len: 0,
            bytes: 2 * cfg.layers * capacity_tokens * cfg.kv_width() * 4,
        })
    }

    /// Runs every input's tokens through the model, appends them to each
    /// input's cache, and returns the logits (one `vocab`-wide row per input
    /// that asked, in input order).
    pub fn forward(&self, batch: &mut [DeviceStep<'_>]) -> Result<Logits, ModelError> {
        let cfg = &self.config;
        let mut positions = Vec::new();
        let mut ids = Vec::new();
        for input in batch.iter() {
            let start = input.cache.len;
            let end = start + input.tokens.len();
            if end > self.positions {
                return Err(ModelError::Forward(format!(
                    "position {end} beyond the model's {} positions",
                    self.positions
                )));
            }
            if end > input.cache.capacity {
                return Err(ModelError::Forward(format!(
                    "position {end} beyond the sequence's cache of {}",
                    input.cache.capacity
                )));
            }
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
            let mut outs = Vec::with_capacity(batch.len());
            let mut offset = 0;
            for input in batch.iter_mut() {
                let t = input.tokens.len();
                outs.push(self.attend(
                    layer,
                    block.window,
                    input.cache,
                    &q.narrow(0, offset, t)?,
                    &k.narrow(0, offset, t)?,
                    &v.narrow(0, offset, t)?,
                )?);
                offset += t;
            }
            let attn = Tensor::cat(&outs, 0)?;
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
        for input in batch.iter_mut() {
            let t = input.tokens.len();
            if input.logits {
                last.push((offset + t - 1) as u32);
            }
            offset += t;
            input.cache.len += t;
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

    /// Causal attention of one sequence's `t` new tokens (`q`: `[t, heads ×
    /// head_dim]`, `k`/`v`: `[t, kv_width]`) over its cache, after storing
    /// the new keys and values at positions `len..len + t`; with a `window`,
    /// each query sees only the last `window` positions, itself included.
    fn attend(
        &self,
        layer: usize,
        window: Option<usize>,
        cache: &mut DeviceCache,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let cfg = &self.config;
        let (t, hd) = (q.dim(0)?, cfg.head_dim);
        let (heads, kv_heads) = (cfg.heads, cfg.kv_heads);
        let group = heads / kv_heads;
        let start = cache.len;
        let end = start + t;
        let by_head = |x: &Tensor, heads: usize| -> Result<Tensor, ModelError> {
            Ok(x.reshape((t, heads, hd))?.transpose(0, 1)?.contiguous()?)
        };
        cache.keys[layer].slice_set(&by_head(k, kv_heads)?, 1, start)?;
        cache.values[layer].slice_set(&by_head(v, kv_heads)?, 1, start)?;
        // The oldest position any of these queries sees.
        let first = window.map_or(0, |w| (start + 1).saturating_sub(w));
        let visible = end - first;
        let keys = cache.keys[layer].narrow(1, first, visible)?.contiguous()?;
        let values = cache.values[layer]
            .narrow(1, first, visible)?
            .contiguous()?;

        // Query head h reads KV head h / group, so the heads of one group
        // stack into one `[group × t, head_dim]` matrix per KV head.
        let q = by_head(q, heads)?.reshape((kv_heads, group * t, hd))?;
        let mut scores = (q.matmul(&keys.t()?)? * f64::from(cfg.attention_scale))?;
        if t > 1 {
            // Token j (position start + j) sees positions up to its own,
            // and within its window.
            let mask: Vec<f32> = (0..t)
                .flat_map(|j| {
                    let at = start + j;
                    (first..end).map(move |p| {
                        let seen = p <= at && window.is_none_or(|w| at - p < w);
                        if seen {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (t, visible), &self.device)?;
            scores = scores
                .reshape((kv_heads, group, t, visible))?
                .broadcast_add(&mask)?
                .reshape((kv_heads, group * t, visible))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs
            .matmul(&values)?
            .reshape((heads, t, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, heads * hd))?)
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
