//! Seeded random GGML tensors and activations for the unit tests.

use half::f16;

use crate::format::QuantKind;
use crate::packed::PackedMatrix;

/// xorshift64*: tiny, seedable, good enough for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }
}

/// Raw GGML bytes for a random `rows × cols` matrix of `kind`, with scales in
/// the range real checkpoints use and every quant value possible (incl. -128).
pub(crate) fn random_ggml(kind: QuantKind, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let blocks = rows * cols / kind.block_weights();
    let mut raw = Vec::with_capacity(blocks * kind.block_bytes());
    let half = |raw: &mut Vec<u8>, v: f32| raw.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    for _ in 0..blocks {
        let start = raw.len();
        // Super-block scales are divided by the 6- or 8-bit block scales.
        let d = match kind {
            QuantKind::Q4_K | QuantKind::Q5_K => rng.uniform(0.002, 0.03) / 32.0,
            QuantKind::Q6_K => rng.uniform(0.002, 0.03) / 64.0,
            QuantKind::Q3_K => rng.uniform(0.002, 0.03) / 16.0,
            _ => rng.uniform(0.002, 0.03),
        };
        // Q3_K and Q6_K keep `d` after the quants.
        let trailer = matches!(kind, QuantKind::Q3_K | QuantKind::Q6_K);
        if !trailer {
            half(&mut raw, d);
        }
        match kind {
            // Typical Q4_1 blocks span [m, m + 15d] around zero.
            QuantKind::Q4_1 => half(&mut raw, -d * rng.uniform(5.0, 10.0)),
            QuantKind::Q5_1 => half(&mut raw, -d * rng.uniform(10.0, 20.0)),
            // dmin: the 6-bit mins then reach about half the block's span.
            QuantKind::Q4_K | QuantKind::Q5_K => half(&mut raw, d * rng.uniform(4.0, 8.0)),
            _ => {}
        }
        let fixed = if trailer { 2 } else { raw.len() - start };
        for _ in 0..kind.block_bytes() - fixed {
            raw.push(rng.next_u64() as u8);
        }
        if trailer {
            half(&mut raw, d);
        }
    }
    raw
}

/// `m × cols` activations in `[-2, 2)`, with an occasional 8× outlier (as
/// residual-stream activations have) when `outliers` is set.
pub(crate) fn random_activations(m: usize, cols: usize, seed: u64, outliers: bool) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0xA5A5);
    (0..m * cols)
        .map(|_| {
            let v = rng.uniform(-2.0, 2.0);
            if outliers && rng.next_u64().is_multiple_of(97) {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

/// Asserts that random `kind` matrices of each `(rows, cols)` shape, packed,
/// dequantize to exactly the values of `ggml_block` (a transcription of
/// ggml's own dequantizer, applied to each raw block).
pub(crate) fn assert_repack_is_exact(
    kind: QuantKind,
    shapes: &[(usize, usize)],
    ggml_block: impl Fn(&[u8]) -> Vec<f32>,
) {
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for (seed, &(rows, cols)) in shapes.iter().enumerate() {
        let raw = random_ggml(kind, rows, cols, seed as u64);
        let packed = PackedMatrix::from_ggml(kind, &raw, rows, cols).unwrap();
        let want: Vec<f32> = raw
            .chunks_exact(kind.block_bytes())
            .flat_map(&ggml_block)
            .collect();
        assert_eq!(
            bits(&packed.dequantize()),
            bits(&want),
            "{kind} {rows}x{cols}"
        );
    }
}
