//! `PackedMatrix`: a GGML weight matrix repacked once at load into the layout
//! the kernels stream.
//!
//! Layout (all arrays row-major over `(row, block)`, `nb = cols / 32`; the
//! K-quants' 256-weight super-blocks become eight such blocks, see `kquant`):
//! - `scales[row * nb + b]`: the block's scale, the GGML f16 as it is (the
//!   kernels widen two or four per step with one F16C convert, shared by the
//!   row tile), or an f32 for Q4_K and Q5_K, whose `d·sc` needs one (see
//!   `BlockFactors`); for Q3_K and Q6_K the super-block's `d`, repeated for
//!   its eight blocks;
//! - `sub_scales[(row * nb + b) * 2 ..]`: Q3_K's and Q6_K's 8-bit scales of the block's
//!   two 16-weight halves, kept as integers so the kernels apply them inside
//!   the integer dot product (empty for the other kinds);
//! - `mins[row * nb + b]`: the additive min of Q4_1 and Q5_1 (`m`), Q4_K and Q5_K
//!   (`-dmin·mn`), stored the same way (empty otherwise);
//! - `high_bits[row * nb + b]`: Q5_0's and Q5_1's fifth bits as GGML stores
//!   them, and Q5_K's in the same order (bit `j` for weight `j`; empty for
//!   the other kinds);
//! - `quants[(row * nb + b) * quant_bytes ..]`: 16 nibble-packed bytes for
//!   Q4_0/Q4_1/Q4_K and Q5_0/Q5_1/Q5_K's low four bits, in GGML's Q4 order
//!   (byte `j` holds weight `j` low and weight `j + 16` high); 32 bytes, one
//!   per weight, otherwise: `i8` for Q8_0, Q3_K (`q3 - 4`) and Q6_K
//!   (`q6 - 32`).
//!
//! So Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 take exactly their GGUF bytes in
//! memory.
//!
//! Splitting headers from quants keeps every quant block 16- or 32-byte strided,
//! which lets the SIMD loads stay inside one cache line.

use crate::error::KernelError;
use crate::factors::BlockFactors;
use crate::format::{QuantKind, BLOCK};
use crate::kernel::{self, Backend};
use crate::{kquant, q5};

/// A quantized `rows × cols` weight matrix (`rows` output features, `cols`
/// input features), immutable after load and therefore `Send + Sync`.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub(crate) kind: QuantKind,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) scales: BlockFactors,
    pub(crate) mins: BlockFactors,
    pub(crate) sub_scales: Vec<i8>,
    pub(crate) high_bits: Vec<u32>,
    pub(crate) quants: Vec<u8>,
}

impl PackedMatrix {
    /// Repacks a GGML tensor's raw bytes. `raw` must hold exactly
    /// `rows * cols / kind.block_weights()` blocks of `kind`, each row's
    /// blocks contiguous (the GGUF tensor data as is).
    pub fn from_ggml(
        kind: QuantKind,
        raw: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        let block = kind.block_weights();
        if !cols.is_multiple_of(block) {
            return Err(KernelError::ColsNotBlockMultiple { cols, block });
        }
        let overflow = KernelError::SizeOverflow { rows, cols };
        let raw_blocks = rows.checked_mul(cols / block).ok_or(overflow.clone())?;
        let expected = raw_blocks.checked_mul(kind.block_bytes()).ok_or(overflow)?;
        if raw.len() != expected {
            return Err(KernelError::RawLength {
                kind,
                rows,
                cols,
                expected,
                actual: raw.len(),
            });
        }

        let blocks = rows * (cols / BLOCK);
        let mut w = Self {
            kind,
            rows,
            cols,
            scales: BlockFactors::with_capacity(kind.half_scales(), blocks),
            mins: BlockFactors::with_capacity(
                kind.half_scales(),
                if kind.has_mins() { blocks } else { 0 },
            ),
            sub_scales: Vec::with_capacity(blocks * kind.sub_scales_per_block()),
            high_bits: Vec::with_capacity(if kind.has_high_bits() { blocks } else { 0 }),
            quants: Vec::with_capacity(blocks * kind.quant_bytes()),
        };
        for block in raw.chunks_exact(kind.block_bytes()) {
            if kind.is_k_quant() {
                kquant::repack_super_block(block, &mut w);
                continue;
            }
            if !kind.copies_quants() {
                q5::repack_block(block, &mut w);
                continue;
            }
            w.scales.push_f16_at(block, 0);
            if kind == QuantKind::Q4_1 {
                w.mins.push_f16_at(block, 2);
            }
            w.quants.extend_from_slice(&block[kind.header_bytes()..]);
        }
        Ok(w)
    }

    /// The quantization format the matrix was loaded from.
    pub fn kind(&self) -> QuantKind {
        self.kind
    }

    /// Output features (weight rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (weights per row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the packed weights occupy in memory (their arrays' lengths).
    pub fn resident_bytes(&self) -> usize {
        self.scales.bytes()
            + self.mins.bytes()
            + self.sub_scales.len()
            + 4 * self.high_bits.len()
            + self.quants.len()
    }

    /// Blocks per row.
    pub(crate) fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }

    /// `out (m × rows, row-major) = x (m × cols, row-major) · Wᵀ`.
    ///
    /// Activations are quantized to 8 bits per 32-value block, once per call.
    /// The result for a row of `x` is bit-identical whatever the other rows,
    /// its position, `m` or the thread split. Runs on the current compute team
    /// (`crate::team`), or rayon's global pool outside one.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), KernelError> {
        self.matmul_on(kernel::backend(), x, m, out)
    }

    /// `matmul` on an explicit backend, so tests can cover both.
    pub(crate) fn matmul_on(
        &self,
        backend: Backend,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let cols = self.cols;
        let expected_in = m
            .checked_mul(cols)
            .ok_or(KernelError::SizeOverflow { rows: m, cols })?;
        if x.len() != expected_in {
            return Err(KernelError::InputLength {
                m,
                cols,
                expected: expected_in,
                actual: x.len(),
            });
        }
        let expected_out = m.checked_mul(self.rows).ok_or(KernelError::SizeOverflow {
            rows: m,
            cols: self.rows,
        })?;
        if out.len() != expected_out {
            return Err(KernelError::OutputLength {
                expected: expected_out,
                actual: out.len(),
            });
        }
        kernel::matmul(self, x, m, out, backend);
        Ok(())
    }

    /// Dequantizes one row into `out` (`cols` long), e.g. for an embedding lookup.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if row >= self.rows {
            return Err(KernelError::RowOutOfRange {
                row,
                rows: self.rows,
            });
        }
        if out.len() != self.cols {
            return Err(KernelError::OutputLength {
                expected: self.cols,
                actual: out.len(),
            });
        }
        self.fill_row(row, out);
        Ok(())
    }

    /// Dequantizes the whole matrix (`rows × cols`, row-major).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        if self.cols > 0 {
            for (row, dst) in out.chunks_exact_mut(self.cols).enumerate() {
                self.fill_row(row, dst);
            }
        }
        out
    }

    /// Dequantizes `row` into `out`; the caller has checked both bounds.
    fn fill_row(&self, row: usize, out: &mut [f32]) {
        let nb = self.blocks_per_row();
        for (b, dst) in out.chunks_exact_mut(BLOCK).enumerate() {
            let idx = row * nb + b;
            let d = self.scales.get(idx);
            let q = self.block_values(idx);
            for (j, (w, &q)) in dst.iter_mut().zip(&q).enumerate() {
                *w = match self.kind {
                    // ggml's order: (d · sc) · q, both products exact.
                    QuantKind::Q3_K | QuantKind::Q6_K => {
                        q as f32 * (d * self.sub_scales[2 * idx + j / (BLOCK / 2)] as f32)
                    }
                    kind if kind.has_mins() => q as f32 * d + self.mins.get(idx),
                    // Q4_0 and Q5_0's `q` is already centred.
                    _ => q as f32 * d,
                };
            }
        }
    }

    /// Block `idx`'s 32 quants as the kernels multiply them: Q4_1's nibbles
    /// unsigned (`0..=15`), Q5_1's with their fifth bits (`0..=31`; the min
    /// is applied separately), Q4_0's and Q5_0's centred on their zero
    /// point (`-8..=7`, `-16..=15`), the byte layouts as stored.
    pub(crate) fn block_values(&self, idx: usize) -> [i8; BLOCK] {
        let qb = self.kind.quant_bytes();
        let qs = &self.quants[idx * qb..][..qb];
        let mut values = [0i8; BLOCK];
        if qb == BLOCK {
            for (v, &q) in values.iter_mut().zip(qs) {
                *v = q as i8;
            }
        } else {
            let (lo, hi) = values.split_at_mut(BLOCK / 2);
            for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
                *lo = (q & 0x0F) as i8;
                *hi = (q >> 4) as i8;
            }
        }
        if let Some(&high) = self.high_bits.get(idx) {
            for (j, v) in values.iter_mut().enumerate() {
                *v |= (((high >> j) & 1) << 4) as i8;
            }
        }
        if let Some(zero) = self.kind.zero_point() {
            for v in &mut values {
                *v -= zero;
            }
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    /// Nibble bytes whose low nibble counts up and high nibble counts down:
    /// weight j has nibble j, weight j + 16 has nibble 15 - j.
    fn ramp_nibbles() -> Vec<u8> {
        (0u8..16).map(|j| j | ((15 - j) << 4)).collect()
    }

    fn dequantized(kind: QuantKind, block: &[u8]) -> Vec<f32> {
        PackedMatrix::from_ggml(kind, block, 1, 32)
            .unwrap()
            .dequantize()
    }

    #[test]
    fn dequantizes_hand_built_q4_0_block() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend(ramp_nibbles());
        let w = dequantized(QuantKind::Q4_0, &block);
        // (nibble - 8) * 0.5
        assert_eq!(&w[..4], &[-4.0, -3.5, -3.0, -2.5]);
        assert_eq!(w[15], 3.5);
        assert_eq!(&w[16..18], &[3.5, 3.0]);
        assert_eq!(w[31], -4.0);
    }

    #[test]
    fn dequantizes_hand_built_q4_1_block() {
        let mut block = f16_bytes(0.25).to_vec();
        block.extend(f16_bytes(-1.5));
        block.extend(ramp_nibbles());
        let w = dequantized(QuantKind::Q4_1, &block);
        // nibble * 0.25 - 1.5
        assert_eq!(&w[..3], &[-1.5, -1.25, -1.0]);
        assert_eq!(w[15], 2.25);
        assert_eq!(w[16], 2.25);
        assert_eq!(w[31], -1.5);
    }

    #[test]
    fn dequantizes_hand_built_q8_0_block() {
        let mut block = f16_bytes(0.125).to_vec();
        // -128, -120, ..., 120 as two's-complement bytes.
        block.extend((0..32).map(|j| (j * 8 - 128) as i8 as u8));
        let w = dequantized(QuantKind::Q8_0, &block);
        assert_eq!(&w[..3], &[-16.0, -15.0, -14.0]);
        assert_eq!(w[16], 0.0);
        assert_eq!(w[31], 15.0);
    }

    #[test]
    fn rows_and_blocks_keep_their_order() {
        // Two rows of two Q8_0 blocks, each block constant with its own scale.
        let mut raw = Vec::new();
        for (d, q) in [(1.0, 1i8), (2.0, 2), (3.0, 3), (4.0, -4)] {
            raw.extend(f16_bytes(d));
            raw.extend([q as u8; 32]);
        }
        let w = PackedMatrix::from_ggml(QuantKind::Q8_0, &raw, 2, 64).unwrap();
        let mut row = vec![0.0; 64];
        w.dequantize_row(1, &mut row).unwrap();
        assert_eq!(
            (row[0], row[31], row[32], row[63]),
            (9.0, 9.0, -16.0, -16.0)
        );
        let all = w.dequantize();
        assert_eq!((all[0], all[32], all[64]), (1.0, 4.0, 9.0));
    }

    #[test]
    fn rejects_bad_shapes() {
        let kind = QuantKind::Q4_0;
        assert_eq!(
            PackedMatrix::from_ggml(kind, &[0; 18], 1, 33).unwrap_err(),
            KernelError::ColsNotBlockMultiple {
                cols: 33,
                block: 32
            }
        );
        assert_eq!(
            PackedMatrix::from_ggml(kind, &[0; 35], 1, 64).unwrap_err(),
            KernelError::RawLength {
                kind,
                rows: 1,
                cols: 64,
                expected: 36,
                actual: 35
            }
        );
        assert_eq!(
            PackedMatrix::from_ggml(kind, &[], usize::MAX, 64).unwrap_err(),
            KernelError::SizeOverflow {
                rows: usize::MAX,
                cols: 64
            }
        );
    }

    #[test]
    fn k_quants_need_whole_super_blocks() {
        assert_eq!(
            PackedMatrix::from_ggml(QuantKind::Q6_K, &[0; 210], 1, 576).unwrap_err(),
            KernelError::ColsNotBlockMultiple {
                cols: 576,
                block: 256
            }
        );
        let w = PackedMatrix::from_ggml(QuantKind::Q5_K, &[0; 2 * 176], 1, 512).unwrap();
        assert_eq!((w.rows(), w.cols(), w.blocks_per_row()), (1, 512, 16));
    }

    #[test]
    fn dequantize_row_checks_bounds() {
        let w = PackedMatrix::from_ggml(QuantKind::Q4_1, &[0; 40], 2, 32).unwrap();
        assert_eq!(
            w.dequantize_row(2, &mut [0.0; 32]),
            Err(KernelError::RowOutOfRange { row: 2, rows: 2 })
        );
        assert_eq!(
            w.dequantize_row(0, &mut [0.0; 31]),
            Err(KernelError::OutputLength {
                expected: 32,
                actual: 31
            })
        );
    }

    /// The f16 kinds keep GGML's bytes per block; Q4_K keeps f32 factors.
    #[test]
    fn resident_bytes_match_the_ggml_blocks() {
        let q4_1 = PackedMatrix::from_ggml(QuantKind::Q4_1, &[0; 40], 2, 32).unwrap();
        assert_eq!(q4_1.resident_bytes(), 40);
        let q8_0 = PackedMatrix::from_ggml(QuantKind::Q8_0, &[0; 34], 1, 32).unwrap();
        assert_eq!(q8_0.resident_bytes(), 34);
        let q4_k = PackedMatrix::from_ggml(QuantKind::Q4_K, &[0; 144], 1, 256).unwrap();
        assert_eq!(q4_k.resident_bytes(), 8 * (4 + 4 + 16));
        let q5_0 = PackedMatrix::from_ggml(QuantKind::Q5_0, &[0; 22], 1, 32).unwrap();
        assert_eq!(q5_0.resident_bytes(), 22);
        let q5_1 = PackedMatrix::from_ggml(QuantKind::Q5_1, &[0; 48], 2, 32).unwrap();
        assert_eq!(q5_1.resident_bytes(), 48);
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PackedMatrix>();
    }
}
