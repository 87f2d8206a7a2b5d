//! The KV memory: every sequence's keys and values, every layer, in
//! fixed-size blocks of f16 (PagedAttention's layout). This is the host's;
//! `device_kv` keeps the same layout in a device's memory.
//!
//! Half precision, as llama.cpp's default cache and vLLM's (the model's
//! dtype) keep them: at 8 streams and a few hundred positions a decode step
//! reads about as many bytes of cache as of weights, and f32 doubled that
//! traffic and the memory. The rounding is far below what the 8-bit
//! activations of the matmuls already cost.
//!
//! Layout per layer: `block × position × kv_heads × head_dim`. A sequence
//! names its blocks in position order (its block table, kept by the
//! engine's `kv_blocks::BlockPool`); within a block positions are
//! contiguous, so attention reads runs of `block_tokens` positions at the
//! same stride as a contiguous cache. Blocks are shared between sequences
//! whose prompts start alike (prefix caching) and copied only when a
//! request's choices fork mid-block.
//!
//! The memory is sized once at start (`--kv-cache-memory`) and taken from
//! the allocator zeroed, so the kernel commits pages only as blocks are
//! first written: a large budget costs address space until it is used.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::config::ModelConfig;
use super::ModelError;

/// A block's number in the KV memory.
pub type BlockId = u32;

/// The KV memory of the loaded model, where it runs: the host's, or a
/// device's (see `device_kv`). Both keep f16 blocks of the same layout, so
/// the engine's block tables, prefix caching and forks are the same.
pub enum KvMemory {
    Host(HostKv),
    Device(super::device_kv::DeviceKv),
}

impl KvMemory {
    /// Bytes one block takes: keys and values of `block_tokens` positions
    /// in every layer, in f16.
    pub fn block_bytes(config: &ModelConfig, block_tokens: usize) -> usize {
        2 * config.layers * block_tokens * config.kv_width() * std::mem::size_of::<f16>()
    }

    pub fn blocks(&self) -> usize {
        match self {
            Self::Host(kv) => kv.blocks,
            Self::Device(kv) => kv.blocks(),
        }
    }

    pub fn block_tokens(&self) -> usize {
        match self {
            Self::Host(kv) => kv.block_tokens,
            Self::Device(kv) => kv.block_tokens(),
        }
    }

    /// Copies block `from` into block `to`, every layer (a request's
    /// choices fork: each gets its own copy of the prompt's unfinished
    /// last block).
    pub fn copy_block(&mut self, from: BlockId, to: BlockId) -> Result<(), ModelError> {
        match self {
            Self::Host(kv) => {
                kv.copy_block(from, to);
                Ok(())
            }
            Self::Device(kv) => kv.copy_block(from, to),
        }
    }
}

pub struct HostKv {
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
    kv_width: usize,
    block_tokens: usize,
    blocks: usize,
}

/// Where one sequence's cached keys and values of one layer are: its
/// blocks, in position order, within the layer's memory.
#[derive(Clone, Copy)]
pub struct KvBlocks<'a> {
    pub keys: &'a [f16],
    pub values: &'a [f16],
    pub blocks: &'a [BlockId],
    pub block_tokens: usize,
}

impl<'a> KvBlocks<'a> {
    /// One contiguous run of positions (`keys.len() / kv_width` of them):
    /// a single block as long as the whole cache.
    #[cfg(test)]
    pub fn contiguous(keys: &'a [f16], values: &'a [f16], kv_width: usize) -> Self {
        const FIRST: [BlockId; 1] = [0];
        KvBlocks {
            keys,
            values,
            blocks: &FIRST,
            block_tokens: (keys.len() / kv_width.max(1)).max(1),
        }
    }
}

impl HostKv {
    /// Memory for `blocks` blocks of `block_tokens` positions. A failed
    /// reservation (an address-space limit, strict overcommit) is an error
    /// at start, never an abort.
    pub fn new(
        config: &ModelConfig,
        blocks: usize,
        block_tokens: usize,
    ) -> Result<Self, ModelError> {
        let kv_width = config.kv_width();
        let (_, elements) = layer_size(blocks, block_tokens, kv_width)?;
        let reserve = || -> Result<Vec<Vec<f16>>, ModelError> {
            (0..config.layers)
                .map(|_| {
                    zeroed(elements).ok_or_else(|| {
                        ModelError::Forward(format!(
                            "cannot reserve {blocks} KV blocks of {block_tokens} positions"
                        ))
                    })
                })
                .collect()
        };
        Ok(Self {
            keys: reserve()?,
            values: reserve()?,
            kv_width,
            block_tokens,
            blocks,
        })
    }

    /// Stores position `position`'s key and value of `layer` in the
    /// sequence whose blocks are `table`.
    pub(super) fn write(
        &mut self,
        layer: usize,
        table: &[BlockId],
        position: usize,
        key: &[f32],
        value: &[f32],
    ) -> Result<(), ModelError> {
        let at = self.offset(table, position)?;
        let end = at + self.kv_width;
        self.keys[layer][at..end].convert_from_f32_slice(key);
        self.values[layer][at..end].convert_from_f32_slice(value);
        Ok(())
    }

    /// The element offset of `position` in the sequence with blocks
    /// `table` (see [`slot`]).
    fn offset(&self, table: &[BlockId], position: usize) -> Result<usize, ModelError> {
        Ok(slot(table, position, self.block_tokens, self.blocks)? * self.kv_width)
    }

    /// `layer`'s memory as the sequence with blocks `table` sees it.
    pub(super) fn layer<'a>(&'a self, layer: usize, table: &'a [BlockId]) -> KvBlocks<'a> {
        KvBlocks {
            keys: &self.keys[layer],
            values: &self.values[layer],
            blocks: table,
            block_tokens: self.block_tokens,
        }
    }

    fn copy_block(&mut self, from: BlockId, to: BlockId) {
        let len = self.block_tokens * self.kv_width;
        let (from, to) = (from as usize * len, to as usize * len);
        for layer in self.keys.iter_mut().chain(self.values.iter_mut()) {
            layer.copy_within(from..from + len, to);
        }
    }

    /// Whether every value of block `b`, keys and values of every layer,
    /// is still zero (tests: what a step must not have written).
    #[cfg(test)]
    pub(super) fn block_is_zero(&self, b: BlockId) -> bool {
        let len = self.block_tokens * self.kv_width;
        let at = b as usize * len;
        self.keys
            .iter()
            .chain(&self.values)
            .all(|layer| layer[at..at + len].iter().all(|v| v.to_bits() == 0))
    }

    /// Checks that every block of `table` is in this memory and that it
    /// covers `positions` (before a forward pass writes anything).
    pub(super) fn check(&self, table: &[BlockId], positions: usize) -> Result<(), ModelError> {
        check_table(table, positions, self.block_tokens, self.blocks)
    }
}

/// One layer's slots (`blocks × block_tokens` positions) and elements
/// (`slots × kv_width`) of keys, or of values; an error if they overflow.
pub(super) fn layer_size(
    blocks: usize,
    block_tokens: usize,
    kv_width: usize,
) -> Result<(usize, usize), ModelError> {
    blocks
        .checked_mul(block_tokens)
        .and_then(|slots| Some((slots, slots.checked_mul(kv_width)?)))
        .ok_or_else(|| {
            ModelError::Forward(format!("{blocks} KV blocks of {block_tokens} overflow"))
        })
}

/// The position's place in a KV memory of `blocks` blocks of
/// `block_tokens` positions, for the sequence whose blocks are `table`
/// (in position order): `block × block_tokens + position % block_tokens`.
/// Positions beyond its table, or blocks beyond the memory, are errors (the
/// engine's bookkeeping would be wrong).
pub(super) fn slot(
    table: &[BlockId],
    position: usize,
    block_tokens: usize,
    blocks: usize,
) -> Result<usize, ModelError> {
    let block = table.get(position / block_tokens).copied().ok_or_else(|| {
        ModelError::Forward(format!(
            "position {position} beyond the sequence's {} KV blocks",
            table.len()
        ))
    })? as usize;
    if block >= blocks {
        return Err(ModelError::Forward(format!(
            "KV block {block} beyond the {blocks} allocated"
        )));
    }
    Ok(block * block_tokens + position % block_tokens)
}

/// Checks that every block of `table` is among `blocks` and that the table
/// covers `positions`.
pub(super) fn check_table(
    table: &[BlockId],
    positions: usize,
    block_tokens: usize,
    blocks: usize,
) -> Result<(), ModelError> {
    if positions > 0 {
        slot(table, positions - 1, block_tokens, blocks)?;
    }
    match table.iter().find(|&&b| b as usize >= blocks) {
        Some(b) => Err(ModelError::Forward(format!(
            "KV block {b} beyond the {blocks} allocated"
        ))),
        None => Ok(()),
    }
}

/// `n` zero halves straight from the allocator's zeroed memory (calloc:
/// for large sizes fresh pages the kernel commits on first write), where
/// `vec![f16::ZERO; n]` would write every element; `None` when the
/// allocator refuses.
pub(super) fn zeroed(n: usize) -> Option<Vec<f16>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f16>(n).ok()?;
    // SAFETY: the layout has a non-zero size; all-zero bits are a valid
    // f16 (0.0); the Vec takes the allocation with the layout it was made
    // with (`n` elements of f16, from the global allocator), all initialised.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<f16>();
        if ptr.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(ptr, n, n))
    }
}
