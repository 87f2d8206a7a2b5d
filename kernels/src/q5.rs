//! Repacking of ggml's 32-weight Q5_0 / Q5_1 blocks (`f16 d; [f16 m;]
//! [u8; 4] qh; [u8; 16] qs`), which llama.cpp writes for the matrices of a
//! K-quant model whose rows are not whole 256-weight super-blocks (its
//! fallback for Q4_K is Q5_0, for Q5_K Q5_1; e.g. every 576-wide matrix of
//! SmolLM2 and every 640-wide one of Gemma 3 270M).
//!
//! Both keep their bytes as they are: the scale (and Q5_1's min), the
//! 32-bit word of fifth bits, the nibbles in Q4 order. The kernels spread
//! the fifth bits per block (a byte mask on AVX-512, llama.cpp's
//! `bytes_from_bits_32` on AVX2) onto the nibbles: Q5_1's unsigned `q5` in
//! `0..=31` gets its stored min `m` added afterwards as Q4_1's nibbles do,
//! Q5_0's is centred to `q5 - 16` and multiplied as a signed value, as
//! Q8_0's bytes are. So their weights take their GGUF size in memory, and
//! dequantize to exactly ggml's values (`(q - 16)·d` and `q·d + m`).

use crate::format::QuantKind;
use crate::packed::PackedMatrix;

/// Appends one raw Q5_0 or Q5_1 block (`w.kind`) to `w`'s packed arrays.
pub(crate) fn repack_block(raw: &[u8], w: &mut PackedMatrix) {
    debug_assert_eq!(raw.len(), w.kind.block_bytes());
    w.scales.push_f16_at(raw, 0);
    let at = if w.kind == QuantKind::Q5_1 {
        w.mins.push_f16_at(raw, 2);
        4
    } else {
        2
    };
    let qh = u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    w.high_bits.push(qh);
    w.quants.extend_from_slice(&raw[at + 4..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::f16_at;
    use crate::testdata::assert_repack_is_exact;

    /// ggml's `dequantize_row_q5_0` / `_q5_1` for one block, transcribed
    /// loop for loop, as an independent yardstick for the repacking.
    fn ggml_block(kind: QuantKind, x: &[u8]) -> Vec<f32> {
        let (d, m, at) = match kind {
            QuantKind::Q5_1 => (f16_at(x, 0), f16_at(x, 2), 4),
            _ => (f16_at(x, 0), 0.0, 2),
        };
        let qh = u32::from_le_bytes([x[at], x[at + 1], x[at + 2], x[at + 3]]);
        let qs = &x[at + 4..];
        let mut y = vec![0f32; 32];
        for j in 0..16 {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = ((qs[j] & 0x0F) | xh_0) as i32;
            let x1 = ((qs[j] >> 4) | xh_1) as i32;
            if kind == QuantKind::Q5_1 {
                y[j] = x0 as f32 * d + m;
                y[j + 16] = x1 as f32 * d + m;
            } else {
                y[j] = (x0 - 16) as f32 * d;
                y[j + 16] = (x1 - 16) as f32 * d;
            }
        }
        y
    }

    #[test]
    fn repacking_round_trips_bit_exactly() {
        for kind in [QuantKind::Q5_0, QuantKind::Q5_1] {
            let shapes = [(1, 32), (3, 96), (4, 576)];
            assert_repack_is_exact(kind, &shapes, |x| ggml_block(kind, x));
        }
    }
}
