//! `BlockFactors`: one float per packed block (its scale, or its min), kept
//! in 16 bits when the GGML format's own field is an f16 and in 32 bits when
//! it is a product that needs them (Q4_K's and Q5_K's `d·sc`, `-dmin·mn`).
//!
//! Invariant: `get` returns exactly the f32 the kernels multiply by; f16 to
//! f32 is exact, so a half factor gives the same bits as the widened one the
//! packed form used to store, at half the memory and bandwidth.

use half::f16;

use crate::format::f16_at;

#[derive(Debug, Clone)]
pub(crate) enum BlockFactors {
    /// The GGML field as it is.
    Half(Vec<f16>),
    /// A product of GGML fields, exact in f32.
    Single(Vec<f32>),
}

impl BlockFactors {
    /// Room for `len` factors, in 16 bits if `half`.
    pub(crate) fn with_capacity(half: bool, len: usize) -> Self {
        if half {
            Self::Half(Vec::with_capacity(len))
        } else {
            Self::Single(Vec::with_capacity(len))
        }
    }

    /// Appends the little-endian f16 field at byte `at` of a raw block.
    pub(crate) fn push_f16_at(&mut self, raw: &[u8], at: usize) {
        match self {
            Self::Half(v) => v.push(f16::from_le_bytes([raw[at], raw[at + 1]])),
            Self::Single(v) => v.push(f16_at(raw, at)),
        }
    }

    /// Appends a factor that needs f32: only `Single` factors are built
    /// from such products (see `QuantKind::half_scales`).
    pub(crate) fn push_f32(&mut self, value: f32) {
        debug_assert!(!self.is_half(), "an f32 product in f16 factors");
        match self {
            Self::Half(v) => v.push(f16::from_f32(value)),
            Self::Single(v) => v.push(value),
        }
    }

    /// Factor `idx`, as the kernels multiply by it.
    pub(crate) fn get(&self, idx: usize) -> f32 {
        match self {
            Self::Half(v) => v[idx].to_f32(),
            Self::Single(v) => v[idx],
        }
    }

    /// The first byte of factor `idx`, for the SIMD kernels (which know the
    /// width from the layout they were compiled for).
    ///
    /// # Safety
    /// `idx` must be at most the number of factors.
    pub(crate) unsafe fn ptr_at(&self, idx: usize) -> *const u8 {
        match self {
            Self::Half(v) => v.as_ptr().add(idx).cast(),
            Self::Single(v) => v.as_ptr().add(idx).cast(),
        }
    }

    /// Whether the factors are stored in 16 bits.
    pub(crate) fn is_half(&self) -> bool {
        matches!(self, Self::Half(_))
    }

    /// Bytes the factors occupy.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Half(v) => v.len() * 2,
            Self::Single(v) => v.len() * 4,
        }
    }
}
