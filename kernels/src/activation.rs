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
        if m * cols >= PARALLEL_MIN_VALUES {
            let mut rows: Vec<_> = x
                .chunks_exact(cols)
                .zip(q.chunks_exact_mut(cols))
                .zip(d.chunks_exact_mut(nb).zip(s.chunks_exact_mut(nb)))
                .zip(dv.chunks_exact_mut(pairs * 8))
                .collect();
            team::for_each_mut(&mut rows, |(((x, q), (d, s)), dv)| {
                quantize_row(x, q, d, s, dv)
            });
        } else {
            x.chunks_exact(cols)
                .zip(q.chunks_exact_mut(cols))
                .zip(d.chunks_exact_mut(nb).zip(s.chunks_exact_mut(nb)))
                .zip(dv.chunks_exact_mut(pairs * 8))
                .for_each(|(((x, q), (d, s)), dv)| quantize_row(x, q, d, s, dv));
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

/// Quantizes one activation row, block by block, into the pair-interleaved
/// layout.
fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32], dv: &mut [f32]) {
    let nb = d.len();
    let mut block = [0i8; BLOCK];
    for (b, (x, (d, s))) in x
        .chunks_exact(BLOCK)
        .zip(d.iter_mut().zip(s.iter_mut()))
        .enumerate()
    {
        quantize_block(x, &mut block, d, s);
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

#[cfg(test)]
mod tests {
    use super::*;

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
