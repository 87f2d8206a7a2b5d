//! Per-call 8-bit quantization of the activations (llama.cpp's Q8_0/Q8_1
//! activation formats, kept as separate arrays).
//!
//! Invariant: a row's quantized form depends only on that row's values — never
//! on `m`, on the other rows or on the thread split — which is the first half of
//! the crate's determinism guarantee (the kernels provide the second half).

use crate::format::BLOCK;
use crate::team;

/// Below this many activation values, quantizing on the calling thread is
/// cheaper than handing work to the pool.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// `m` activation rows quantized per 32-value block to `i8` in `[-127, 127]`.
///
/// Layout of `q` ("pair-interleaved", see `half_offsets`): within a row,
/// blocks `2p` and `2p + 1` occupy bytes `64p .. 64p + 64` as
/// `[2p: 0..16][2p+1: 0..16][2p: 16..32][2p+1: 16..32]`, so one 32-byte load
/// gives the same half of two consecutive blocks (the x86 kernel reduces two
/// blocks with one integer dot product that way). An odd row's last block
/// stays in natural order. With `quads` (the AVX-512 kernel's layout), each
/// group of four blocks `4k .. 4k + 4` also swaps its middle 32 bytes, so the
/// same half of all four blocks is one 64-byte load.
pub(crate) struct QuantizedActivations {
    /// Blocks per row.
    pub(crate) nb: usize,
    /// `q[row * nb * 32 ..]`: the row's quantized values, pair-interleaved.
    pub(crate) q: Vec<i8>,
    /// `d[row * nb + b]`: the block's scale, `max|x| / 127`.
    pub(crate) d: Vec<f32>,
    /// `s[row * nb + b]`: `d * sum(q)`, the block's (quantized) sum, which
    /// Q4_1's per-block minimum multiplies.
    pub(crate) s: Vec<f32>,
    /// `dv[(row * pairs + p) * 8 ..]` with `pairs = nb.div_ceil(2)`: block
    /// `2p`'s `d` four times then block `2p + 1`'s four times, the lane pattern
    /// of the x86 kernel's paired dot products (an odd row's last block: its
    /// `d` eight times).
    pub(crate) dv: Vec<f32>,
    /// `q` with 128 added (each byte's top bit flipped), as unsigned bytes in
    /// `1..=255`, same layout; empty unless asked for (`new`'s `unsigned`).
    /// The AVX-VNNI Q8_0 kernel multiplies these by the signed weights.
    pub(crate) qu: Vec<u8>,
    /// Whether `q` (and `qu`) are in the four-block layout.
    pub(crate) quads: bool,
}

/// Offsets within a row of `q` of block `b`'s values `0..16` and `16..32`
/// (see `QuantizedActivations`' layout).
#[inline(always)]
pub(crate) fn half_offsets(nb: usize, b: usize, quads: bool) -> (usize, usize) {
    let lo = (b & !1) * BLOCK + (b & 1) * (BLOCK / 2);
    let (lo, hi) = if (b | 1) < nb {
        (lo, lo + BLOCK)
    } else {
        (lo, lo + BLOCK / 2)
    };
    if quads && b < nb / 4 * 4 {
        (quad_swap(lo), quad_swap(hi))
    } else {
        (lo, hi)
    }
}

/// Where byte offset `o` of the pair layout lands in the four-block layout:
/// bytes 32..64 and 64..96 of each 128-byte group trade places.
#[inline(always)]
fn quad_swap(o: usize) -> usize {
    match o % 128 {
        32..64 => o + 32,
        64..96 => o - 32,
        _ => o,
    }
}

impl QuantizedActivations {
    /// Quantizes `x` (`m × cols`, row-major, `cols` a multiple of 32), and
    /// fills `qu` if `unsigned`; `quads` picks the four-block layout.
    pub(crate) fn new(x: &[f32], m: usize, cols: usize, unsigned: bool, quads: bool) -> Self {
        let nb = cols / BLOCK;
        let mut q = vec![0i8; m * cols];
        let mut d = vec![0f32; m * nb];
        let mut s = vec![0f32; m * nb];
        let pairs = nb.div_ceil(2);
        let mut dv = vec![0f32; m * pairs * 8];
        if nb == 0 {
            let qu = Vec::new();
            return Self {
                nb,
                q,
                d,
                s,
                dv,
                qu,
                quads,
            };
        }
        let quantize = block_quantizer();
        if m * cols >= PARALLEL_MIN_VALUES {
            let mut rows: Vec<_> = x
                .chunks_exact(cols)
                .zip(q.chunks_exact_mut(cols))
                .zip(d.chunks_exact_mut(nb).zip(s.chunks_exact_mut(nb)))
                .zip(dv.chunks_exact_mut(pairs * 8))
                .collect();
            team::for_each_mut(&mut rows, |(((x, q), (d, s)), dv)| {
                quantize_row(quantize, x, q, d, s, dv)
            });
        } else {
            x.chunks_exact(cols)
                .zip(q.chunks_exact_mut(cols))
                .zip(d.chunks_exact_mut(nb).zip(s.chunks_exact_mut(nb)))
                .zip(dv.chunks_exact_mut(pairs * 8))
                .for_each(|(((x, q), (d, s)), dv)| quantize_row(quantize, x, q, d, s, dv));
        }
        if quads {
            for row in q.chunks_exact_mut(cols) {
                for group in row.chunks_exact_mut(4 * BLOCK) {
                    let (first, rest) = group.split_at_mut(2 * BLOCK);
                    first[BLOCK..].swap_with_slice(&mut rest[..BLOCK]);
                }
            }
        }
        let qu = if unsigned {
            q.iter().map(|&v| v as u8 ^ 0x80).collect()
        } else {
            Vec::new()
        };
        Self {
            nb,
            q,
            d,
            s,
            dv,
            qu,
            quads,
        }
    }

    /// Block `b` of `row`: its quantized values `0..16` and `16..32`.
    pub(crate) fn block_halves(&self, row: usize, b: usize) -> (&[i8], &[i8]) {
        let (lo, hi) = half_offsets(self.nb, b, self.quads);
        let q = &self.q[row * self.nb * BLOCK..];
        (&q[lo..][..BLOCK / 2], &q[hi..][..BLOCK / 2])
    }
}

/// Quantizes one activation row, block by block with `quantize`, into the
/// pair-interleaved layout.
fn quantize_row(
    quantize: BlockQuantizer,
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
    dv: &mut [f32],
) {
    let nb = d.len();
    let mut block = [0i8; BLOCK];
    for (b, (x, (d, s))) in x
        .chunks_exact(BLOCK)
        .zip(d.iter_mut().zip(s.iter_mut()))
        .enumerate()
    {
        quantize(x, &mut block, d, s);
        let (lo, hi) = half_offsets(nb, b, false);
        q[lo..lo + BLOCK / 2].copy_from_slice(&block[..BLOCK / 2]);
        q[hi..hi + BLOCK / 2].copy_from_slice(&block[BLOCK / 2..]);
    }
    for (p, lanes) in dv.chunks_exact_mut(8).enumerate() {
        let first = d[2 * p];
        let second = d.get(2 * p + 1).copied().unwrap_or(first);
        lanes[..4].fill(first);
        lanes[4..].fill(second);
    }
}

/// Quantizes one 32-value block into `q`, its scale `d` and sum `s`.
type BlockQuantizer = fn(&[f32], &mut [i8], &mut f32, &mut f32);

/// The block quantizer for this CPU, looked up once per matmul rather than
/// per block: the AVX2 one where the kernels' backend is AVX2, else the
/// portable one (same bits).
fn block_quantizer() -> BlockQuantizer {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel::backend() == crate::kernel::Backend::Avx2 {
        // SAFETY: `Backend::Avx2` is only detected with AVX2 and FMA present.
        return |x, q, d, s| unsafe { x86::quantize_block(x, q, d, s) };
    }
    quantize_block_portable
}

/// Quantizes one 32-value block in plain Rust, the definition the AVX2
/// version follows step for step (same bits for any input, NaN included).
/// Rounds half away from zero with a plain add and truncating cast (no libm
/// `roundf` call on baseline x86-64). A NaN value cannot be written in
/// 8 bits and counts as 0 (the cast's saturation); a block whose scale
/// would be subnormal (|x| below ~1e-36, far below any weight's
/// resolution) becomes zeros, as the reciprocal of such a scale overflows.
fn quantize_block_portable(x: &[f32], q: &mut [i8], d: &mut f32, s: &mut f32) {
    let amax = x.iter().fold(0f32, |acc, v| acc.max(v.abs()));
    let scale = amax / 127.0;
    let inv = reciprocal(scale);
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

/// `1 / scale`, or 0 where that is not finite (a zero or subnormal scale).
fn reciprocal(scale: f32) -> f32 {
    if scale >= f32::MIN_POSITIVE {
        1.0 / scale
    } else {
        0.0
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::format::BLOCK;

    /// `quantize_block_portable` on 256 bits: the same max, scale, products,
    /// rounding and clamp, so the same bits (the block was a fifth of the
    /// serial work between the matmuls of a batched step as scalar code).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_block(x: &[f32], q: &mut [i8], d: &mut f32, s: &mut f32) {
        assert!(x.len() == BLOCK && q.len() == BLOCK);
        let p = x.as_ptr();
        let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(p.add(i)));
        let sign = _mm256_set1_ps(-0.0);
        // `f32::max` ignores a NaN operand; `maxps` returns its second
        // operand when either is NaN, so the running max goes second.
        let amax = v.iter().fold(_mm256_setzero_ps(), |acc, &vi| {
            _mm256_max_ps(_mm256_andnot_ps(sign, vi), acc)
        });
        let four = _mm_max_ps(
            _mm256_castps256_ps128(amax),
            _mm256_extractf128_ps::<1>(amax),
        );
        let two = _mm_max_ps(four, _mm_movehl_ps(four, four));
        let amax = _mm_cvtss_f32(_mm_max_ss(two, _mm_movehdup_ps(two)));
        let scale = amax / 127.0;
        let inv = _mm256_set1_ps(super::reciprocal(scale));
        let (half, top, bottom) = (
            _mm256_set1_ps(0.5),
            _mm256_set1_epi32(127),
            _mm256_set1_epi32(-127),
        );
        let ints = v.map(|vi| {
            let r = _mm256_mul_ps(vi, inv);
            // NaN to 0, as the portable cast does (`cvttps` gives i32::MIN).
            let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
            let away = _mm256_or_ps(half, _mm256_and_ps(r, sign));
            let t = _mm256_cvttps_epi32(_mm256_add_ps(r, away));
            _mm256_max_epi32(_mm256_min_epi32(t, top), bottom)
        });
        let total = _mm256_add_epi32(
            _mm256_add_epi32(ints[0], ints[1]),
            _mm256_add_epi32(ints[2], ints[3]),
        );
        let four = _mm_add_epi32(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256::<1>(total),
        );
        let two = _mm_add_epi32(four, _mm_unpackhi_epi64(four, four));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(two, _mm_shuffle_epi32::<1>(two)));
        // The packs work per 128-bit lane: 4-byte groups come out as
        // [v0 0..4, v1 0..4, v2 0..4, v3 0..4, v0 4..8, v1 4..8, ...].
        let words = _mm256_packs_epi16(
            _mm256_packs_epi32(ints[0], ints[1]),
            _mm256_packs_epi32(ints[2], ints[3]),
        );
        let bytes = _mm256_permutevar8x32_epi32(words, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr().cast(), bytes);
        *d = scale;
        *s = scale * sum as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 block quantizer gives the portable one's bits: random
    /// blocks, ties at ±0.5 steps, zeros, a NaN-free extreme block.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_and_portable_blocks_agree() {
        // The AVX2 block runs wherever AVX2 and FMA are (the CI's CPUs all
        // have them), whichever kernel the matmuls chose.
        assert!(
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            "this test needs AVX2 and FMA"
        );
        let mut blocks: Vec<Vec<f32>> = (0..200u32)
            .map(|seed| {
                (0..BLOCK as u32)
                    .map(|i| {
                        let h = seed.wrapping_mul(2_654_435_761).wrapping_add(i * 40_503) % 20_001;
                        (h as f32 - 10_000.0) * (1.0 + seed as f32) * 1e-3
                    })
                    .collect()
            })
            .collect();
        // 127 at the max makes every k + 0.5 a tie before the rounding.
        blocks.push((0..BLOCK).map(|i| i as f32 - 15.5).collect());
        blocks.push(
            (0..BLOCK)
                .map(|i| if i == 0 { 127.0 } else { i as f32 + 0.5 })
                .collect(),
        );
        blocks.push(vec![0.0; BLOCK]);
        blocks.push(
            (0..BLOCK)
                .map(|i| if i % 2 == 0 { f32::MAX } else { -1e30 })
                .collect(),
        );
        // NaN (counted as 0), a subnormal scale's block (zeros), and the
        // smallest normal one.
        blocks.push(
            (0..BLOCK)
                .map(|i| if i == 1 { f32::NAN } else { i as f32 })
                .collect(),
        );
        blocks.push(
            (0..BLOCK)
                .map(|i| [1e-40, 0.0, -1e-40, 3e-38][i % 4])
                .collect(),
        );
        blocks.push(
            (0..BLOCK)
                .map(|i| (i as f32 - 16.0) * f32::MIN_POSITIVE * 127.0 / 16.0)
                .collect(),
        );
        for x in &blocks {
            let (mut q1, mut d1, mut s1) = ([0i8; BLOCK], 0f32, 0f32);
            let (mut q2, mut d2, mut s2) = ([0i8; BLOCK], 0f32, 0f32);
            quantize_block_portable(x, &mut q1, &mut d1, &mut s1);
            // SAFETY: the backend check above found AVX2 and FMA.
            unsafe { x86::quantize_block(x, &mut q2, &mut d2, &mut s2) };
            assert_eq!(
                (q1, d1.to_bits(), s1.to_bits()),
                (q2, d2.to_bits(), s2.to_bits()),
                "{x:?}"
            );
        }
    }

    /// The four-block layout holds the same blocks as the pair layout, and
    /// `block_halves` finds them in either (every block count up to 11).
    #[test]
    fn both_layouts_hold_the_same_blocks() {
        for nb in 1..=11 {
            let cols = nb * BLOCK;
            let x: Vec<f32> = (0..2 * cols)
                .map(|i| ((i * 37) % 101) as f32 - 50.0)
                .collect();
            let pairs = QuantizedActivations::new(&x, 2, cols, true, false);
            let quads = QuantizedActivations::new(&x, 2, cols, true, true);
            for row in 0..2 {
                for b in 0..nb {
                    assert_eq!(
                        pairs.block_halves(row, b),
                        quads.block_halves(row, b),
                        "{nb} {b}"
                    );
                }
            }
            let flipped: Vec<u8> = quads.q.iter().map(|&v| v as u8 ^ 0x80).collect();
            assert_eq!(quads.qu, flipped);
            if nb >= 4 {
                assert_ne!(pairs.q, quads.q, "{nb}: a full group is rearranged");
            }
        }
    }
}
