//! Per-call 8-bit quantization of the activations (llama.cpp's Q8_0/Q8_1
//! activation formats, kept as separate arrays).
//!
//! Invariant: a row's quantized form depends only on that row's values — never
//! on `m`, on the other rows or on the thread split — which is the first half of
//! the crate's determinism guarantee (the kernels provide the second half).

use rayon::prelude::*;

use crate::format::BLOCK;

/// Below this many activation values, quantizing on the calling thread is
/// cheaper than handing work to the pool.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// `m` activation rows quantized per 32-value block to `i8` in `[-127, 127]`.
pub(crate) struct QuantizedActivations {
    /// Blocks per row.
    pub(crate) nb: usize,
    /// `q[(row * nb + b) * 32 ..]`: the block's quantized values.
    pub(crate) q: Vec<i8>,
    /// `d[row * nb + b]`: the block's scale, `max|x| / 127`.
    pub(crate) d: Vec<f32>,
    /// `s[row * nb + b]`: `d * sum(q)`, the block's (quantized) sum, which
    /// Q4_1's per-block minimum multiplies.
    pub(crate) s: Vec<f32>,
}

impl QuantizedActivations {
    /// Quantizes `x` (`m × cols`, row-major, `cols` a multiple of 32).
    pub(crate) fn new(x: &[f32], m: usize, cols: usize) -> Self {
        let nb = cols / BLOCK;
        let mut q = vec![0i8; m * cols];
        let mut d = vec![0f32; m * nb];
        let mut s = vec![0f32; m * nb];
        if nb == 0 {
            return Self { nb, q, d, s };
        }
        if m * cols >= PARALLEL_MIN_VALUES {
            x.par_chunks_exact(cols)
                .zip(q.par_chunks_exact_mut(cols))
                .zip(d.par_chunks_exact_mut(nb).zip(s.par_chunks_exact_mut(nb)))
                .for_each(|((x, q), (d, s))| quantize_row(x, q, d, s));
        } else {
            x.chunks_exact(cols)
                .zip(q.chunks_exact_mut(cols))
                .zip(d.chunks_exact_mut(nb).zip(s.chunks_exact_mut(nb)))
                .for_each(|((x, q), (d, s))| quantize_row(x, q, d, s));
        }
        Self { nb, q, d, s }
    }
}

/// Quantizes one activation row, block by block.
fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let blocks = x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK));
    for ((x, q), (d, s)) in blocks.zip(d.iter_mut().zip(s.iter_mut())) {
        quantize_block(x, q, d, s);
    }
}

/// Quantizes one 32-value block. Rounds half away from zero with a plain add
/// and truncating cast (no libm `roundf` call on baseline x86-64).
#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [i8], d: &mut f32, s: &mut f32) {
    let amax = x.iter().fold(0f32, |acc, v| acc.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (dst, &v) in q.iter_mut().zip(x) {
        let r = v * inv;
        // The clamp guards against `amax * (1 / scale)` rounding a hair past 127.
        let qi = ((r + 0.5f32.copysign(r)) as i32).clamp(-127, 127);
        sum += qi;
        *dst = qi as i8;
    }
    *d = scale;
    *s = scale * sum as f32;
}
