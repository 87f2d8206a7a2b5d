//! A device's KV memory: the host's layout (see `cache`) in device tensors.
//! Per layer one `[slots, kv_width]` f16 tensor of keys and one of values,
//! where a position's slot is `block × block_tokens + position in block`.
//! The engine hands out the same block tables as on the host, so prefix
//! caching and a request's forking choices work the same on a GPU.
//!
//! A step writes its new keys and values with one scatter per tensor (the
//! slots of all its rows at once) and attends with one kernel launch per
//! layer for the whole batch (see `paged_attention`).

use candle_core::{DType, Device, Tensor};
use half::f16;

use super::cache::{check_table, layer_size, zeroed, BlockId};
use super::config::ModelConfig;
use super::paged_attention::StepLayout;
use super::ModelError;

pub struct DeviceKv {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    blocks: usize,
    block_tokens: usize,
}

impl DeviceKv {
    /// Memory for `blocks` blocks of `block_tokens` positions on `device`,
    /// taken whole at start: on a GPU, a budget that does not fit fails
    /// here rather than in a step.
    pub fn new(
        config: &ModelConfig,
        device: &Device,
        blocks: usize,
        block_tokens: usize,
    ) -> Result<Self, ModelError> {
        let kv_width = config.kv_width();
        let (slots, elements) = layer_size(blocks, block_tokens, kv_width)?;
        let refused = |e: &dyn std::fmt::Display| {
            ModelError::Forward(format!(
                "cannot allocate {blocks} KV blocks of {block_tokens} positions on {:?}: {e}",
                device.location()
            ))
        };
        let tensor = || -> Result<Tensor, ModelError> {
            if device.is_cpu() {
                // candle's CPU `zeros` writes every element; zeroed memory
                // from the allocator is committed only as blocks are used,
                // as on the host path.
                let data: Vec<f16> = zeroed(elements).ok_or_else(|| refused(&"out of memory"))?;
                Ok(Tensor::from_vec(data, (slots, kv_width), device)?)
            } else {
                Tensor::zeros((slots, kv_width), DType::F16, device).map_err(|e| refused(&e))
            }
        };
        let mut keys = Vec::with_capacity(config.layers);
        let mut values = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            keys.push(tensor()?);
            values.push(tensor()?);
        }
        Ok(Self {
            keys,
            values,
            blocks,
            block_tokens,
        })
    }

    pub fn blocks(&self) -> usize {
        self.blocks
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Checks that every block of `table` is in this memory and that it
    /// covers `positions` (before a step writes anything).
    pub(super) fn check(&self, table: &[BlockId], positions: usize) -> Result<(), ModelError> {
        check_table(table, positions, self.block_tokens, self.blocks)
    }

    /// Stores the step's new keys and values of `layer` (`[rows, kv_width]`
    /// each, any float type) at their rows' slots.
    pub(super) fn write(
        &self,
        layer: usize,
        step: &StepLayout,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<(), ModelError> {
        for (cache, new) in [(&self.keys[layer], keys), (&self.values[layer], values)] {
            cache.scatter_set(step.write_index(), &new.to_dtype(DType::F16)?, 0)?;
        }
        Ok(())
    }

    /// `layer`'s keys and values.
    pub(super) fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Copies block `from` into block `to`, every layer.
    pub fn copy_block(&mut self, from: BlockId, to: BlockId) -> Result<(), ModelError> {
        let bt = self.block_tokens;
        for b in [from, to] {
            if b as usize >= self.blocks {
                return Err(ModelError::Forward(format!(
                    "KV block {b} beyond the {} allocated",
                    self.blocks
                )));
            }
        }
        for cache in self.keys.iter().chain(&self.values) {
            let block = block_of(cache, from as usize, bt)?;
            cache.slice_set(&block, 0, to as usize * bt)?;
        }
        Ok(())
    }
}

/// Block `block`'s rows of a layer's cache, copied into storage of their
/// own (`slice_set` refuses a source sharing the cache's). `Tensor::copy`
/// would clone the layer's whole cache, gigabytes on a GPU, to keep one
/// block of it.
fn block_of(cache: &Tensor, block: usize, block_tokens: usize) -> candle_core::Result<Tensor> {
    cache
        .narrow(0, block * block_tokens, block_tokens)?
        .force_contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_copied_alone() {
        let (slots, width, bt) = (12, 4, 4);
        let data: Vec<f16> = (0..slots * width)
            .map(|i| f16::from_f32(i as f32))
            .collect();
        let cache = Tensor::from_vec(data, (slots, width), &Device::Cpu).unwrap();
        let block = block_of(&cache, 1, bt).unwrap();
        let rows: Vec<Vec<f32>> = block.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
        assert_eq!(rows[0], [16.0, 17.0, 18.0, 19.0]);
        assert_eq!(rows[3], [28.0, 29.0, 30.0, 31.0]);
        let (storage, _) = block.storage_and_layout();
        let candle_core::Storage::Cpu(storage) = &*storage else {
            panic!("a CPU tensor")
        };
        assert_eq!(
            storage.as_slice::<f16>().unwrap().len(),
            bt * width,
            "one block's storage"
        );
        // And the cache takes it back at another block.
        cache.slice_set(&block, 0, 2 * bt).unwrap();
        let copied: Vec<Vec<f32>> = cache
            .narrow(0, 2 * bt, bt)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(copied, rows);
    }
}
