//! AVX2 + FMA kernel (llama.cpp's `ggml_vec_dot_q4_0_q8_0` family, extended to
//! a register tile of up to `ROW_TILE` activation rows per weight row).
//!
//! Per block: the weight block is unpacked once into 32 bytes, then for each
//! activation row `_mm256_maddubs_epi16` + `_mm256_madd_epi16` give eight exact
//! `i32` partial dots, which are converted, scaled by the activation block's
//! `d` and fused-multiply-added with the weight block's `d` into that output's
//! accumulator. Integer sums cannot overflow: |pair| ≤ 2·128·127 < 2¹⁵ for
//! Q8_0, 2·15·127 for Q4 nibbles.
//!
//! Each output has two 8-lane accumulators, one for even and one for odd
//! blocks, so even a single row has two independent FMA chains; they are added
//! and reduced in a fixed order at the end. The tile height never enters an
//! output's arithmetic.
//!
//! Both Q4 kinds multiply the raw unsigned nibbles (no per-row sign fix-up)
//! and add the block offset afterwards as `Σ_b min_b · s_x[b]`, where `s_x` is
//! the activation block's sum (`QuantizedActivations::s`): Q4_1's `min` is
//! stored, Q4_0's is `-8·d`. Q8_0 moves the weights' sign onto the activations
//! so that maddubs sees `|w|` as its unsigned operand.
//!
//! Weight rows are walked one at a time: streaming several rows in lockstep
//! measured much slower for matrices that do not fit in cache (it defeats the
//! hardware stream prefetcher).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{row_tiles, RowJob, KIND_Q4_0, KIND_Q4_1, KIND_Q8_0};
use crate::format::{QuantKind, BLOCK};

/// Fills `dst` for one chunk.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
pub(crate) unsafe fn compute_rows(job: &RowJob<'_>, dst: &mut [f32]) {
    match job.w.kind {
        QuantKind::Q4_0 => walk::<KIND_Q4_0>(job, dst),
        QuantKind::Q4_1 => walk::<KIND_Q4_1>(job, dst),
        QuantKind::Q8_0 => walk::<KIND_Q8_0>(job, dst),
    }
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
unsafe fn walk<const K: u8>(job: &RowJob<'_>, dst: &mut [f32]) {
    for n in 0..dst.len() / job.m {
        for (i0, rows) in row_tiles(job.m) {
            match rows {
                4 => tile::<K, 4>(job, n, i0, dst),
                3 => tile::<K, 3>(job, n, i0, dst),
                2 => tile::<K, 2>(job, n, i0, dst),
                _ => tile::<K, 1>(job, n, i0, dst),
            }
        }
    }
}

/// Pointers to one weight row and a tile of `R` activation rows.
struct Operands<const R: usize> {
    scales: *const f32,
    mins: *const f32,
    quants: *const u8,
    xq: [*const i8; R],
    xd: [*const f32; R],
    xs: [*const f32; R],
}

/// Computes the outputs for weight row `n0 + n` (chunk-local `n`) and
/// activation rows `i0 .. i0 + R`.
///
/// # Safety
/// AVX2 and FMA must be available; weight row `n0 + n` and activation rows
/// `i0 .. i0 + R` must exist and `dst` must be `[rows][m]` with `n < rows`.
/// `compute_rows`' caller guarantees the ranges; the array lengths are fixed by
/// `PackedMatrix::from_ggml` and `QuantizedActivations::new`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const K: u8, const R: usize>(
    job: &RowJob<'_>,
    n: usize,
    i0: usize,
    dst: &mut [f32],
) {
    let (w, x, m) = (job.w, job.x, job.m);
    let nb = x.nb;
    let row = job.n0 + n;
    debug_assert!(row < w.rows && i0 + R <= m && (n + 1) * m <= dst.len());

    // Raw pointers so the block loop carries no bounds checks.
    let mut ops = Operands::<R> {
        scales: w.scales.as_ptr().add(row * nb),
        mins: w.mins.as_ptr(),
        quants: w.quants.as_ptr().add(row * nb * w.kind.quant_bytes()),
        xq: [x.q.as_ptr(); R],
        xd: [x.d.as_ptr(); R],
        xs: [x.s.as_ptr(); R],
    };
    if K == KIND_Q4_1 {
        ops.mins = ops.mins.add(row * nb);
    }
    for r in 0..R {
        ops.xq[r] = ops.xq[r].add((i0 + r) * nb * BLOCK);
        ops.xd[r] = ops.xd[r].add((i0 + r) * nb);
        ops.xs[r] = ops.xs[r].add((i0 + r) * nb);
    }

    let mut even = [_mm256_setzero_ps(); R];
    let mut odd = [_mm256_setzero_ps(); R];
    let mut b = 0;
    while b + 2 <= nb {
        accumulate_block::<K, R>(&ops, b, &mut even);
        accumulate_block::<K, R>(&ops, b + 1, &mut odd);
        b += 2;
    }
    if b < nb {
        accumulate_block::<K, R>(&ops, b, &mut even);
    }

    let out = dst.as_mut_ptr().add(n * m + i0);
    for r in 0..R {
        let mut v = hsum(_mm256_add_ps(even[r], odd[r]));
        // The Q4 offset term Σ_b min_b · s_x[b], a dot product over blocks;
        // Q4_0's min is -8·d, and scaling by -8 is exact.
        if K == KIND_Q4_1 {
            v += dot_f32(ops.mins, ops.xs[r], nb);
        } else if K == KIND_Q4_0 {
            v += -8.0 * dot_f32(ops.scales, ops.xs[r], nb);
        }
        *out.add(r) = v;
    }
}

/// Adds block `b`'s contribution for every row of the tile to `acc`.
///
/// # Safety
/// As for `tile`, and `b < nb`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn accumulate_block<const K: u8, const R: usize>(
    ops: &Operands<R>,
    b: usize,
    acc: &mut [__m256; R],
) {
    // Q4 nibbles stay unsigned (0..=15) and are maddubs' unsigned operand as
    // they are; Q8_0 weights go in as |w| with their sign moved onto x.
    let (weights, signs) = if K == KIND_Q8_0 {
        let q = _mm256_loadu_si256(ops.quants.add(b * 32).cast());
        (_mm256_sign_epi8(q, q), q)
    } else {
        let packed = _mm_loadu_si128(ops.quants.add(b * 16).cast());
        let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
        (_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), both)
    };
    let dw = _mm256_broadcast_ss(&*ops.scales.add(b));
    let ones = _mm256_set1_epi16(1);
    for (r, acc) in acc.iter_mut().enumerate() {
        let xv = _mm256_loadu_si256(ops.xq[r].add(b * BLOCK).cast());
        let xv = if K == KIND_Q8_0 {
            _mm256_sign_epi8(xv, signs)
        } else {
            xv
        };
        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(weights, xv), ones);
        // (dot · d_x) · d_w: both scales arrive as broadcast loads, which cost
        // no shuffle (d_w · d_x first would be a scalar product plus a register
        // broadcast per output).
        let dx = _mm256_broadcast_ss(&*ops.xd[r].add(b));
        *acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), dx), dw, *acc);
    }
}

/// `Σ a[i] · b[i]` over `len` values, eight lanes then the tail, in a fixed
/// order.
///
/// # Safety
/// AVX2 and FMA must be available and both pointers valid for `len` reads.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_f32(a: *const f32, b: *const f32, len: usize) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= len {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc);
        i += 8;
    }
    let mut sum = hsum(acc);
    while i < len {
        sum += *a.add(i) * *b.add(i);
        i += 1;
    }
    sum
}

/// Sums the eight lanes in a fixed order.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}
