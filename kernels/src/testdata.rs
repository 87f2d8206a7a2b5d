//! Seeded random GGML tensors and activations for the unit tests.

use half::f16;

use crate::format::{QuantKind, BLOCK};

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
    let blocks = rows * cols / BLOCK;
    let mut raw = Vec::with_capacity(blocks * kind.block_bytes());
    for _ in 0..blocks {
        let d = rng.uniform(0.002, 0.03);
        raw.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        if kind == QuantKind::Q4_1 {
            // Typical Q4_1 blocks span [m, m + 15d] around zero.
            let m = -d * rng.uniform(5.0, 10.0);
            raw.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        }
        for _ in 0..kind.quant_bytes() {
            raw.push(rng.next_u64() as u8);
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
