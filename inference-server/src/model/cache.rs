//! One sequence's keys and values for every layer, in f16.
//!
//! Half precision, as llama.cpp's default cache and vLLM's (the model's
//! dtype) keep them: at 8 streams and a few hundred positions a decode step
//! reads about as many bytes of cache as of weights, and f32 doubled that
//! traffic and the memory. The rounding is far below what the 8-bit
//! activations of the matmuls already cost.
//!
//! Layout per layer: `positions × kv_heads × head_dim`, so appending a token is
//! a contiguous copy and the buffer only ever grows at its end. The capacity
//! for the sequence's whole budget (prompt + max new tokens) is reserved at
//! admission: the kernel commits pages only as they are written, so a large
//! reservation costs address space, not memory, and no step ever reallocates
//! or concatenates.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::config::ModelConfig;
use super::ModelError;

pub struct HostCache {
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
    kv_width: usize,
    len: usize,
}

impl HostCache {
    /// Reserves room for `capacity_tokens` positions. A failed reservation
    /// (an address-space limit, strict overcommit) is an error for this
    /// sequence, never an abort of the process.
    pub fn new(config: &ModelConfig, capacity_tokens: usize) -> Result<Self, ModelError> {
        let kv_width = config.kv_width();
        let elements = capacity_tokens.checked_mul(kv_width).ok_or_else(|| {
            ModelError::Forward(format!(
                "a KV cache for {capacity_tokens} positions overflows"
            ))
        })?;
        let reserve = || -> Result<Vec<Vec<f16>>, ModelError> {
            (0..config.layers)
                .map(|_| {
                    let mut v = Vec::new();
                    v.try_reserve_exact(elements).map_err(|e| {
                        ModelError::Forward(format!(
                            "cannot reserve a KV cache for {capacity_tokens} positions: {e}"
                        ))
                    })?;
                    Ok(v)
                })
                .collect()
        };
        Ok(Self {
            keys: reserve()?,
            values: reserve()?,
            kv_width,
            len: 0,
        })
    }

    /// Takes `from`'s positions (this cache, reserved as large, holds none
    /// yet): another choice of the same request continues from them instead
    /// of computing the prompt again. Within the reserved room, so nothing
    /// is allocated.
    pub fn copy_prefix(&mut self, from: &HostCache) {
        for (to, from) in self
            .keys
            .iter_mut()
            .zip(&from.keys)
            .chain(self.values.iter_mut().zip(&from.values))
        {
            to.clear();
            to.extend_from_slice(from);
        }
        self.len = from.len;
    }

    /// Positions already cached (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes this cache holds in memory now.
    pub fn resident_bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|v| v.len() * std::mem::size_of::<f16>())
            .sum()
    }

    pub(super) fn append(&mut self, layer: usize, key: &[f32], value: &[f32]) {
        push_f16(&mut self.keys[layer], key);
        push_f16(&mut self.values[layer], value);
    }

    /// The first `positions` cached keys and values of `layer`.
    pub(super) fn layer(&self, layer: usize, positions: usize) -> (&[f16], &[f16]) {
        let end = positions * self.kv_width;
        (&self.keys[layer][..end], &self.values[layer][..end])
    }

    pub(super) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}

/// Appends `from` rounded to f16 (within the reserved room: no allocation).
fn push_f16(to: &mut Vec<f16>, from: &[f32]) {
    let start = to.len();
    to.resize(start + from.len(), f16::ZERO);
    to[start..].convert_from_f32_slice(from);
}
