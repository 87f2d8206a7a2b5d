//! Repacking of ggml's 256-weight K-quant super-blocks into the 32-weight
//! blocks `PackedMatrix` streams.
//!
//! A K-quant super-block is, numerically, eight 32-weight blocks that share
//! the f16 `d` (and `dmin`) and carry small integer scales per block (per 16
//! weights for Q3_K and Q6_K). Repacking rewrites the quants into the layout the
//! kernels already read, so every K-quant runs through the existing batched
//! tiles and the activations keep their per-32 Q8 quantization:
//! - Q4_K → Q4_1's layout (nibble-packed, byte `j` = values `j` and `j + 16`),
//!   the f32 scale `d·sc` and min `-dmin·mn` per block: Q4_1's arithmetic;
//! - Q5_K → Q5_1's layout (Q4_1's nibbles plus a 32-bit word whose bit `j`
//!   is weight `j`'s fifth bit), the f32 scale and min as for Q4_K: Q5_1's
//!   arithmetic, 7 bits per weight where a byte per weight took 10;
//! - Q6_K → one signed byte per weight (`q6 - 32`, `-32..=31`), `d` per
//!   block and the two 8-bit sub-scales as they are; Q3_K → the same layout
//!   (`q3 - 4` and sub-scales `sc - 32`): the kernels fold the sub-scales
//!   into the integer dot product (`vpmaddwd` by the scale instead of by 1),
//!   so a block costs what a Q8_0 block costs on AVX2, where one f32 scale
//!   per 16 weights would cost a second convert-multiply-add per block.
//!
//! Because the per-block min multiplies the sum of a 32-value activation
//! block, the per-32 activation sums (`QuantizedActivations::s`) cover the
//! Q4_K/Q5_K min terms; Q6_K has no min (its offset of 32 is folded into the
//! signed quants, as is Q3_K's of 4), so ggml's per-256 `block_q8_K` with
//! 16-value `bsums` is not needed. (Q2_K is not handled: its mins are per 16
//! weights, which would need those 16-value activation sums.)
//!
//! Invariant: every product `d·sc`, `dmin·mn` and `q·(d·sc)` is exact in f32
//! (an 11-bit f16 significand times integers of at most 8 bits), so the packed
//! form dequantizes to the same bits as ggml's `dequantize_row_q*_K`.

use crate::format::{f16_at, QuantKind, BLOCK, SUPER_BLOCK};
use crate::packed::PackedMatrix;

/// 32-weight blocks per super-block.
const SUB_BLOCKS: usize = SUPER_BLOCK / BLOCK;

/// Appends one raw super-block of `w.kind` (`kind.block_bytes()` long) to
/// `w`'s packed arrays as eight blocks.
pub(crate) fn repack_super_block(raw: &[u8], w: &mut PackedMatrix) {
    let kind = w.kind;
    debug_assert_eq!(raw.len(), kind.block_bytes());
    let values: [i8; SUPER_BLOCK] = std::array::from_fn(|p| quant(kind, raw, p));
    match kind {
        QuantKind::Q6_K => {
            // ql(128) qh(64) scales(16) d.
            for _ in 0..SUB_BLOCKS {
                w.scales.push_f16_at(raw, 208);
            }
            w.sub_scales
                .extend(raw[192..208].iter().map(|&sc| sc as i8));
        }
        QuantKind::Q3_K => {
            // hmask(32) qs(64) scales(12) d.
            for _ in 0..SUB_BLOCKS {
                w.scales.push_f16_at(raw, 108);
            }
            w.sub_scales
                .extend(q3_scales(&raw[96..108]).map(|sc| sc - 32));
        }
        _ => {
            // d, dmin, scales(12), [qh(32)], qs.
            let (d, dmin) = (f16_at(raw, 0), f16_at(raw, 2));
            for j in 0..SUB_BLOCKS {
                let (sc, mn) = scale_min(&raw[4..16], j);
                w.scales.push_f32(d * sc as f32);
                w.mins.push_f32(-(dmin * mn as f32));
            }
        }
    }
    for block in values.chunks_exact(BLOCK) {
        if matches!(kind, QuantKind::Q4_K | QuantKind::Q5_K) {
            let (lo, hi) = block.split_at(BLOCK / 2);
            w.quants.extend(
                lo.iter()
                    .zip(hi)
                    .map(|(&l, &h)| (l as u8 & 0x0F) | (h as u8) << 4),
            );
            if kind == QuantKind::Q5_K {
                let word = (block.iter().enumerate())
                    .fold(0u32, |word, (j, &v)| word | u32::from(v as u8 >> 4) << j);
                w.high_bits.push(word);
            }
        } else {
            w.quants.extend(block.iter().map(|&v| v as u8));
        }
    }
}

/// Block `j`'s 6-bit scale and min from Q4_K/Q5_K's 12 packed bytes (ggml's
/// `get_scale_min_k4`): blocks 0–3 use the low 6 bits of bytes `j` and
/// `j + 4`; blocks 4–7 take their low 4 bits from byte `j + 4` and their top
/// 2 bits from the spare top bits of bytes `j - 4` and `j`.
fn scale_min(packed: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0F) | (packed[j - 4] >> 6) << 4,
            (packed[j + 4] >> 4) | (packed[j] >> 6) << 4,
        )
    }
}

/// Q3_K's sixteen 6-bit scales (of 16 weights each) from their 12 packed
/// bytes: the low 4 bits of scales `0..8` are the low nibbles of bytes
/// `0..8` and those of `8..16` the high nibbles; the top 2 bits of scale `g`
/// are bits `2·(g / 4)` of byte `8 + g % 4`.
fn q3_scales(packed: &[u8]) -> [i8; 16] {
    std::array::from_fn(|g| {
        let low = (packed[g % 8] >> (4 * (g / 8))) & 0x0F;
        let high = (packed[8 + g % 4] >> (2 * (g / 4))) & 3;
        (low | high << 4) as i8
    })
}

/// The integer quant of weight `p` (`0..256`) of a raw super-block, as the
/// packed form stores it: `q3 - 4` (Q3_K), the nibble (Q4_K), the 5-bit
/// value (Q5_K) or `q6 - 32` (Q6_K). Only called for K-quants.
fn quant(kind: QuantKind, raw: &[u8], p: usize) -> i8 {
    match kind {
        QuantKind::Q3_K => {
            // Each 128-weight half: qs bytes 32·half + l hold four 32-weight
            // runs in their bit pairs, hmask byte l their third bits (a set
            // bit means no -4), bit 4·half + run.
            let (half, r) = (p / 128, p % 128);
            let (run, l) = (r / 32, r % 32);
            let low = (raw[32 + 32 * half + l] >> (2 * run)) & 3;
            let high = (raw[l] >> (4 * half + run)) & 1;
            (low as i8) - if high == 0 { 4 } else { 0 }
        }
        QuantKind::Q6_K => {
            // Each 128-weight half: ql bytes l and l + 32 give four 32-weight
            // runs (low nibbles, then high), qh byte l their top two bits.
            let (half, r) = (p / 128, p % 128);
            let (run, l) = (r / 32, r % 32);
            let ql = raw[64 * half + 32 * (run & 1) + l];
            let low = if run < 2 { ql & 0x0F } else { ql >> 4 };
            let high = (raw[128 + 32 * half + l] >> (2 * run)) & 3;
            (low | high << 4) as i8 - 32
        }
        _ => {
            // Each 64-weight chunk: 32 qs bytes, low nibbles then high.
            let qs = if kind == QuantKind::Q5_K { 48 } else { 16 };
            let (chunk, r) = (p / 64, p % 64);
            let byte = raw[qs + 32 * chunk + r % 32];
            let low = if r < 32 { byte & 0x0F } else { byte >> 4 };
            if kind == QuantKind::Q5_K {
                // qh byte `l` holds bit `p / 32` of weight `p`'s fifth bit.
                let high = (raw[16 + p % 32] >> (p / 32)) & 1;
                (low | high << 4) as i8
            } else {
                low as i8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::testdata::assert_repack_is_exact;

    /// One block of ggml's `dequantize_row_q{3,4,5,6}_K`, transcribed loop
    /// for loop (and checked against candle-core 0.11.1's `k_quants.rs`), as
    /// an independent yardstick for the repacking.
    fn ggml_block(kind: QuantKind, x: &[u8]) -> Vec<f32> {
        match kind {
            QuantKind::Q3_K => ggml_q3_k(x),
            QuantKind::Q6_K => ggml_q6_k(x),
            _ => ggml_q4_q5_k(kind, x),
        }
    }

    fn ggml_q6_k(x: &[u8]) -> Vec<f32> {
        let (ql, qh, sc, d) = (&x[..128], &x[128..192], &x[192..208], f16_at(x, 208));
        let mut out = vec![0f32; SUPER_BLOCK];
        for n in 0..2 {
            let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
            let y = &mut out[128 * n..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                let s = |i: usize| d * sc[i] as i8 as f32;
                y[l] = s(is) * q1 as f32;
                y[l + 32] = s(is + 2) * q2 as f32;
                y[l + 64] = s(is + 4) * q3 as f32;
                y[l + 96] = s(is + 6) * q4 as f32;
            }
        }
        out
    }

    fn ggml_q4_q5_k(kind: QuantKind, x: &[u8]) -> Vec<f32> {
        let mut y = Vec::with_capacity(SUPER_BLOCK);
        let (d, min, scales) = (f16_at(x, 0), f16_at(x, 2), &x[4..16]);
        let (qh, qs) = if kind == QuantKind::Q5_K {
            (&x[16..48], &x[48..])
        } else {
            (&x[..0], &x[16..])
        };
        let (mut u1, mut u2) = (1u8, 2u8);
        for j in 0..4 {
            let q = &qs[32 * j..][..32];
            let (sc, m) = super::scale_min(scales, 2 * j);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = super::scale_min(scales, 2 * j + 1);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            let bit = |l: usize, u: u8| {
                if qh.get(l).is_some_and(|b| b & u != 0) {
                    16.0
                } else {
                    0.0
                }
            };
            for (l, q) in q.iter().enumerate() {
                y.push(d1 * ((q & 0xF) as f32 + bit(l, u1)) - m1);
            }
            for (l, q) in q.iter().enumerate() {
                y.push(d2 * ((q >> 4) as f32 + bit(l, u2)) - m2);
            }
            u1 <<= 2;
            u2 <<= 2;
        }
        y
    }

    /// With ggml's in-place unpacking of the twelve scale bytes into sixteen.
    fn ggml_q3_k(x: &[u8]) -> Vec<f32> {
        const KMASK1: u32 = 0x0303_0303;
        const KMASK2: u32 = 0x0f0f_0f0f;
        let (hm, q, d_all) = (&x[..32], &x[32..96], f16_at(x, 108));
        let word = |i: usize| {
            u32::from_le_bytes([x[96 + 4 * i], x[97 + 4 * i], x[98 + 4 * i], x[99 + 4 * i]])
        };
        let mut aux = [word(0), word(1), word(2), 0];
        let tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
        aux[3] = ((aux[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
        aux[0] = (aux[0] & KMASK2) | ((tmp & KMASK1) << 4);
        aux[1] = (aux[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
        let scales: Vec<i8> = aux
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .map(|b| b as i8)
            .collect();
        let mut y = vec![0f32; SUPER_BLOCK];
        let (mut is, mut m, mut at) = (0, 1u8, 0);
        for n in 0..2 {
            let q = &q[32 * n..];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let dl = d_all * (scales[is] as f32 - 32.0);
                    is += 1;
                    for l in 16 * half..16 * half + 16 {
                        let minus = if hm[l] & m != 0 { 0 } else { 4 };
                        y[at] = dl * (((q[l] >> shift) & 3) as i8 - minus) as f32;
                        at += 1;
                    }
                }
                m <<= 1;
            }
        }
        y
    }

    /// The packed form dequantizes to exactly ggml's values, for several
    /// rows of several super-blocks (so row and block order are checked too).
    #[test]
    fn repacking_round_trips_bit_exactly() {
        for kind in [
            QuantKind::Q3_K,
            QuantKind::Q4_K,
            QuantKind::Q5_K,
            QuantKind::Q6_K,
        ] {
            let shapes = [(1, 256), (3, 768), (5, 512)];
            assert_repack_is_exact(kind, &shapes, |x| ggml_block(kind, x));
        }
    }

    /// A hand-built Q4_K super-block: block 5 (its scale and min in the split
    /// 4 + 2 bit encoding) with distinct nibbles.
    #[test]
    fn decodes_high_scale_bits_of_q4_k() {
        let mut raw = vec![0u8; QuantKind::Q4_K.block_bytes()];
        raw[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        raw[2..4].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        // Block 5: sc = 0b11_0110 (54), mn = 0b10_1001 (41).
        raw[4 + 9] = 0b1001_0110;
        raw[4 + 1] = 0b1100_0000;
        raw[4 + 5] = 0b1000_0000;
        // Block 5 is the high nibbles of chunk 2 (qs bytes 64..96).
        raw[16 + 64] = 0x30;
        let w = PackedMatrix::from_ggml(QuantKind::Q4_K, &raw, 1, 256)
            .unwrap()
            .dequantize();
        assert_eq!(w[160], 3.0 * 0.5 * 54.0 - 0.25 * 41.0);
        assert_eq!(w[161], -0.25 * 41.0);
    }
}
