//! Attention of a whole step over the paged KV memory as one candle op: one
//! launch per layer for every row of the batch, prefill and decode rows
//! alike. Each row is one token of one sequence; it attends causally over
//! its sequence's positions up to its own (within the layer's window), read
//! through the sequence's block table.
//!
//! On CUDA the op runs `cuda/paged_attention.cu`, compiled to PTX at build
//! time by the pinned toolkit (`build.rs`) and loaded through candle's
//! cudarc device: a thread block per (row, query head) whose warps split
//! the positions and merge their partial softmaxes (flash-decoding's split,
//! within one block). On candle's CPU device it runs the same arithmetic in
//! plain Rust: the reference the device path is tested with.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

use super::cache::{slot, BlockId};
use super::ModelError;

/// The head widths the CUDA kernel handles (a lane holds `head_dim / 32`
/// components); the model refuses others on a device at load.
pub const MAX_HEAD_DIM: usize = 256;

/// Where a step's rows are: each row's sequence and position, each
/// sequence's block table, and each row's slot for writing its key and
/// value. Built once a step on the host, uploaded once, read by every layer.
pub struct StepLayout {
    rows: usize,
    max_blocks: usize,
    /// `[sequences × max_blocks]`, unused entries 0.
    tables: Vec<u32>,
    row_seq: Vec<u32>,
    row_pos: Vec<u32>,
    /// The three above on the step's device, for the CUDA kernel.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    on_device: [Tensor; 3],
    /// `[rows, kv_width]`: each row's slot, repeated along the row (the
    /// index of the scatter that writes the row's key and value).
    write_index: Tensor,
}

/// One sequence's part of a step: its blocks, the position of its first
/// new token, and how many tokens it feeds.
pub struct SequenceRows<'a> {
    pub blocks: &'a [BlockId],
    pub start: usize,
    pub len: usize,
}

impl StepLayout {
    /// The layout of `sequences`' rows, in order, over a memory of `blocks`
    /// blocks of `block_tokens` (every table must cover its rows: see
    /// `DeviceKv::check`).
    pub fn new(
        sequences: &[SequenceRows<'_>],
        blocks: usize,
        block_tokens: usize,
        kv_width: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let max_blocks = sequences.iter().map(|s| s.blocks.len()).max().unwrap_or(0);
        let mut tables = vec![0u32; sequences.len() * max_blocks];
        let (mut row_seq, mut row_pos, mut index) = (Vec::new(), Vec::new(), Vec::new());
        for (i, s) in sequences.iter().enumerate() {
            tables[i * max_blocks..i * max_blocks + s.blocks.len()].copy_from_slice(s.blocks);
            for position in s.start..s.start + s.len {
                row_seq.push(i as u32);
                row_pos.push(position as u32);
                let at = slot(s.blocks, position, block_tokens, blocks)? as u32;
                index.extend(std::iter::repeat_n(at, kv_width));
            }
        }
        let rows = row_seq.len();
        let on_device = [
            Tensor::from_slice(&tables, tables.len(), device)?,
            Tensor::from_slice(&row_seq, rows, device)?,
            Tensor::from_slice(&row_pos, rows, device)?,
        ];
        Ok(Self {
            rows,
            max_blocks,
            write_index: Tensor::from_vec(index, (rows, kv_width), device)?,
            tables,
            row_seq,
            row_pos,
            on_device,
        })
    }

    pub(super) fn write_index(&self) -> &Tensor {
        &self.write_index
    }
}

/// The op: `q` `[rows, heads × head_dim]` f32, the layer's keys and values
/// `[slots, kv_heads × head_dim]` f16; gives `[rows, heads × head_dim]` f32.
pub struct PagedAttention<'a> {
    pub step: &'a StepLayout,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_tokens: usize,
    /// Multiplies the scores before the softmax.
    pub scale: f32,
    /// Each row sees only the last `window` positions, its own included.
    pub window: Option<usize>,
}

impl PagedAttention<'_> {
    /// `[rows, heads × head_dim]` f32 of attention over the layer's cache.
    pub fn forward(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<Tensor, ModelError> {
        Ok(q.apply_op3_no_bwd(keys, values, self)?)
    }

    fn out_shape(&self) -> Shape {
        Shape::from((self.step.rows, self.heads * self.head_dim))
    }

    fn check(&self, q: &Layout, k: &Layout, v: &Layout) -> candle_core::Result<()> {
        let width = self.heads * self.head_dim;
        let kv_width = self.kv_heads * self.head_dim;
        if q.dims() != [self.step.rows, width] {
            candle_core::bail!(
                "paged attention: queries {:?}, expected [{}, {width}]",
                q.dims(),
                self.step.rows
            );
        }
        if k.dims() != v.dims() || k.dims().get(1) != Some(&kv_width) {
            candle_core::bail!(
                "paged attention: keys {:?} and values {:?}, expected [slots, {kv_width}]",
                k.dims(),
                v.dims()
            );
        }
        if self.window == Some(0) || self.window.is_some_and(|w| u32::try_from(w).is_err()) {
            candle_core::bail!("paged attention: a window of {:?} positions", self.window);
        }
        if self.kv_heads == 0
            || !self.heads.is_multiple_of(self.kv_heads)
            || self.head_dim > MAX_HEAD_DIM
        {
            candle_core::bail!(
                "paged attention: {} heads over {} KV heads of {}",
                self.heads,
                self.kv_heads,
                self.head_dim
            );
        }
        Ok(())
    }
}

/// The contiguous part of `storage` that `layout` covers.
fn contiguous<'s, T>(data: &'s [T], layout: &Layout) -> candle_core::Result<&'s [T]> {
    match layout.contiguous_offsets() {
        Some((from, to)) => Ok(&data[from..to]),
        None => candle_core::bail!("paged attention takes contiguous tensors"),
    }
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.check(ql, kl, vl)?;
        let q = contiguous(q.as_slice::<f32>()?, ql)?;
        let keys = contiguous(k.as_slice::<f16>()?, kl)?;
        let values = contiguous(v.as_slice::<f16>()?, vl)?;
        let (hd, group) = (self.head_dim, self.heads / self.kv_heads);
        let kv_width = self.kv_heads * hd;
        let width = self.heads * hd;
        let slots = keys.len() / kv_width;
        let s = self.step;
        let mut out = vec![0f32; s.rows * width];
        out.par_chunks_mut(width)
            .enumerate()
            .try_for_each(|(row, out)| {
                let pos = s.row_pos[row] as usize;
                let seq = s.row_seq[row] as usize;
                let table = &s.tables[seq * s.max_blocks..(seq + 1) * s.max_blocks];
                let first = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                // Each visible position's element offset, for every head.
                let at: Vec<usize> = (first..=pos)
                    .map(|p| {
                        slot(table, p, self.block_tokens, slots / self.block_tokens)
                            .map(|slot| slot * kv_width)
                            .map_err(|e| candle_core::Error::Msg(e.to_string()))
                    })
                    .collect::<candle_core::Result<_>>()?;
                let mut scores = vec![0f32; pos + 1 - first];
                for h in 0..self.heads {
                    let query = &q[row * width + h * hd..][..hd];
                    let kv = (h / group) * hd;
                    for (&at, score) in at.iter().zip(scores.iter_mut()) {
                        let key = &keys[at + kv..][..hd];
                        let dot: f32 = query.iter().zip(key).map(|(a, b)| a * b.to_f32()).sum();
                        *score = dot * self.scale;
                    }
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for score in scores.iter_mut() {
                        *score = (*score - max).exp();
                        sum += *score;
                    }
                    let o = &mut out[h * hd..][..hd];
                    for (&at, weight) in at.iter().zip(&scores) {
                        let value = &values[at + kv..][..hd];
                        for (o, v) in o.iter_mut().zip(value) {
                            *o += weight / sum * v.to_f32();
                        }
                    }
                }
                Ok::<_, candle_core::Error>(())
            })?;
        Ok((CpuStorage::F32(out), self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &Layout,
        k: &candle_core::CudaStorage,
        kl: &Layout,
        v: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, q, ql, k, kl, v, vl)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaStorage, WrapErr};
    use candle_core::{Layout, Shape, Storage};
    use half::f16;

    use super::PagedAttention;

    /// PTX of `cuda/paged_attention.cu`, made by `build.rs`.
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
    /// Threads per block: four warps (`WARPS` in the kernel).
    const THREADS: u32 = 128;

    /// The part of `s` that `layout` covers, which must be contiguous.
    fn contiguous_slice<'a, T>(
        s: &'a CudaSlice<T>,
        layout: &Layout,
    ) -> candle_core::Result<CudaView<'a, T>> {
        match layout.contiguous_offsets() {
            Some((from, to)) => Ok(s.slice(from..to)),
            None => candle_core::bail!("paged attention takes contiguous tensors"),
        }
    }

    pub(super) fn forward(
        op: &PagedAttention<'_>,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        op.check(ql, kl, vl)?;
        let dev = q.device();
        let q = contiguous_slice(q.as_cuda_slice::<f32>()?, ql)?;
        let keys = contiguous_slice(k.as_cuda_slice::<f16>()?, kl)?;
        let values = contiguous_slice(v.as_cuda_slice::<f16>()?, vl)?;
        let guards = op
            .step
            .on_device
            .each_ref()
            .map(|t| t.storage_and_layout().0);
        fn u32s(s: &Storage) -> candle_core::Result<&CudaSlice<u32>> {
            match s {
                Storage::Cuda(c) => c.as_cuda_slice::<u32>(),
                _ => candle_core::bail!("paged attention: step tables are not on the GPU"),
            }
        }
        let (tables, row_seq, row_pos) = (u32s(&guards[0])?, u32s(&guards[1])?, u32s(&guards[2])?);
        let rows = op.step.rows;
        let out_len = rows * op.heads * op.head_dim;
        // SAFETY: the kernel writes every element (each block its row and
        // head's `head_dim` outputs).
        let mut out = unsafe { dev.alloc::<f32>(out_len.max(1))? };
        if rows > 0 {
            let func =
                dev.get_or_load_custom_func("paged_attention", "maas_paged_attention", PTX)?;
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, op.heads as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let (max_blocks, heads, kv_heads, head_dim, block_tokens) = (
                op.step.max_blocks as u32,
                op.heads as u32,
                op.kv_heads as u32,
                op.head_dim as u32,
                op.block_tokens as u32,
            );
            // 0: no window (`check` refused a window of 0 or beyond u32).
            let window = op.window.map_or(0, |w| w as u32);
            let mut b = func.builder();
            b.arg(&mut out);
            b.arg(&q);
            b.arg(&keys);
            b.arg(&values);
            b.arg(tables);
            b.arg(row_seq);
            b.arg(row_pos);
            b.arg(&max_blocks);
            b.arg(&heads);
            b.arg(&kv_heads);
            b.arg(&head_dim);
            b.arg(&block_tokens);
            b.arg(&window);
            b.arg(&op.scale);
            // SAFETY: the arguments match the kernel's signature in
            // cuda/paged_attention.cu, and `check` bounded head_dim and the
            // shapes the kernel indexes by.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            op.out_shape(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use half::f16;

    use super::*;

    const BT: usize = 4;
    const SLOTS: usize = 12 * BT;
    const HEADS: usize = 4;
    const KV_HEADS: usize = 2;
    const HD: usize = 8;
    const KV_WIDTH: usize = KV_HEADS * HD;

    /// A value per (seed, index) in [-1, 1): deterministic noise.
    fn noise(seed: usize, i: usize) -> f32 {
        let x = (seed * 7919 + i * 104_729) as u64;
        let x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        (x as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Plain causal attention with candle ops over one sequence's
    /// contiguous keys and values (`[len, kv_width]`), for its last `t`
    /// positions' queries (`[t, heads × head_dim]`).
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, window: Option<usize>) -> Tensor {
        let (t, len) = (q.dim(0).unwrap(), k.dim(0).unwrap());
        let mut heads = Vec::new();
        for h in 0..HEADS {
            let g = h / (HEADS / KV_HEADS);
            let qh = q.narrow(1, h * HD, HD).unwrap();
            let kh = k.narrow(1, g * HD, HD).unwrap();
            let vh = v.narrow(1, g * HD, HD).unwrap();
            let scores = (qh.matmul(&kh.t().unwrap()).unwrap() * f64::from(scale)).unwrap();
            let mask: Vec<f32> = (0..t)
                .flat_map(|j| {
                    let at = len - t + j;
                    (0..len).map(move |p| {
                        let seen = p <= at && window.is_none_or(|w| at - p < w);
                        if seen {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (t, len), &Device::Cpu).unwrap();
            let probs = candle_nn::ops::softmax_last_dim(&(scores + mask).unwrap()).unwrap();
            heads.push(probs.matmul(&vh.contiguous().unwrap()).unwrap());
        }
        Tensor::cat(&heads, 1).unwrap()
    }

    #[test]
    fn paged_attention_equals_plain_attention_over_contiguous_keys() {
        // Two sequences with scattered blocks: the first feeds its last
        // three positions (a prefill chunk), the second its last (decode).
        let tables: [&[BlockId]; 2] = [&[7, 2, 9], &[0, 11]];
        let lens = [10usize, 6];
        let fed = [3usize, 1];
        let mut keys = vec![f16::ZERO; SLOTS * KV_WIDTH];
        let mut values = keys.clone();
        let mut contiguous = Vec::new();
        for (s, (&table, &len)) in tables.iter().zip(&lens).enumerate() {
            let (mut k, mut v) = (Vec::new(), Vec::new());
            for p in 0..len {
                let at = slot(table, p, BT, SLOTS / BT).unwrap() * KV_WIDTH;
                for i in 0..KV_WIDTH {
                    let (kx, vx) = (
                        f16::from_f32(noise(s, p * KV_WIDTH + i)),
                        f16::from_f32(noise(s + 9, p * KV_WIDTH + i)),
                    );
                    keys[at + i] = kx;
                    values[at + i] = vx;
                    k.push(kx.to_f32());
                    v.push(vx.to_f32());
                }
            }
            contiguous.push((
                Tensor::from_vec(k, (len, KV_WIDTH), &Device::Cpu).unwrap(),
                Tensor::from_vec(v, (len, KV_WIDTH), &Device::Cpu).unwrap(),
            ));
        }
        let rows: Vec<SequenceRows<'_>> = (0..2)
            .map(|s| SequenceRows {
                blocks: tables[s],
                start: lens[s] - fed[s],
                len: fed[s],
            })
            .collect();
        let step = StepLayout::new(&rows, SLOTS / BT, BT, KV_WIDTH, &Device::Cpu).unwrap();
        let n = fed.iter().sum::<usize>();
        let q: Vec<f32> = (0..n * HEADS * HD).map(|i| noise(42, i)).collect();
        let q = Tensor::from_vec(q, (n, HEADS * HD), &Device::Cpu).unwrap();
        let keys = Tensor::from_vec(keys, (SLOTS, KV_WIDTH), &Device::Cpu).unwrap();
        let values = Tensor::from_vec(values, (SLOTS, KV_WIDTH), &Device::Cpu).unwrap();
        for window in [None, Some(3), Some(1)] {
            let op = PagedAttention {
                step: &step,
                heads: HEADS,
                kv_heads: KV_HEADS,
                head_dim: HD,
                block_tokens: BT,
                scale: 0.35,
                window,
            };
            let got = op.forward(&q, &keys, &values).unwrap();
            assert_eq!(got.dims(), [n, HEADS * HD]);
            let mut row = 0;
            for (s, (k, v)) in contiguous.iter().enumerate() {
                let expected = reference(&q.narrow(0, row, fed[s]).unwrap(), k, v, 0.35, window);
                let diff = (got.narrow(0, row, fed[s]).unwrap() - expected)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    diff < 1e-5,
                    "sequence {s}, window {window:?}: off by {diff}"
                );
                row += fed[s];
            }
        }
    }

    #[test]
    fn shapes_the_kernel_cannot_take_are_errors() {
        let table: &[BlockId] = &[0];
        let rows = [SequenceRows {
            blocks: table,
            start: 0,
            len: 2,
        }];
        let step = StepLayout::new(&rows, 1, BT, KV_WIDTH, &Device::Cpu).unwrap();
        let cache = Tensor::zeros((BT, KV_WIDTH), DType::F16, &Device::Cpu).unwrap();
        let op = |heads, head_dim| PagedAttention {
            step: &step,
            heads,
            kv_heads: KV_HEADS,
            head_dim,
            block_tokens: BT,
            scale: 1.0,
            window: None,
        };
        let q = Tensor::zeros((2, HEADS * HD), DType::F32, &Device::Cpu).unwrap();
        assert!(op(HEADS, HD).forward(&q, &cache, &cache).is_ok());
        // Queries of another width, heads not a multiple of the KV heads.
        assert!(op(HEADS, HD * 2).forward(&q, &cache, &cache).is_err());
        let q3 = Tensor::zeros((2, 3 * HD), DType::F32, &Device::Cpu).unwrap();
        assert!(op(3, HD).forward(&q3, &cache, &cache).is_err());
        // A window of no position.
        let none = PagedAttention {
            window: Some(0),
            ..op(HEADS, HD)
        };
        assert!(none.forward(&q, &cache, &cache).is_err());
        // A row beyond its sequence's blocks is refused when laid out.
        let beyond = [SequenceRows {
            blocks: table,
            start: BT,
            len: 1,
        }];
        assert!(StepLayout::new(&beyond, 1, BT, KV_WIDTH, &Device::Cpu).is_err());
    }
}
