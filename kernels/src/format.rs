//! The GGML block formats this crate reads, exactly as they appear in a GGUF
//! tensor's raw bytes (little-endian, packed): the 32-weight Q4_0/Q4_1/Q5_0/
//! Q5_1/Q8_0 blocks and the 256-weight K-quant super-blocks (ggml's `block_q3_K`,
//! `block_q4_K`, `block_q5_K`, `block_q6_K`, see `kquant`).

use std::fmt;

use half::f16;

/// Weights per GGML block of the 32-weight kinds, and per sub-block of the
/// K-quants: the unit of the packed layout and of activation quantization.
pub const BLOCK: usize = 32;

/// Weights per K-quant super-block (ggml's `QK_K`).
pub const SUPER_BLOCK: usize = 256;

/// A GGML quantization format.
// Named as ggml and GGUF tools spell them (`Q4_K`), like `Q4_0`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantKind {
    /// `f16 d; [u8; 16] qs` — weight = (nibble - 8) * d.
    Q4_0,
    /// `f16 d; f16 m; [u8; 16] qs` — weight = nibble * d + m.
    Q4_1,
    /// `f16 d; [i8; 32] qs` — weight = q * d.
    Q8_0,
    /// `f16 d; [u8; 4] qh; [u8; 16] qs` — weight = (q5 - 16) * d, the
    /// nibbles as Q4_0's with bit `j` of `qh` as weight `j`'s fifth bit.
    Q5_0,
    /// `f16 d; f16 m; [u8; 4] qh; [u8; 16] qs` — weight = q5 * d + m.
    Q5_1,
    /// `[u8; 32] hmask; [u8; 64] qs; [u8; 12] scales; f16 d` — per 16
    /// weights a 6-bit scale `sc`: weight = (q3 - 4) * d·(sc - 32), the two
    /// low bits of `q3` in `qs`, the third in `hmask`.
    Q3_K,
    /// `f16 d, dmin; [u8; 12] scales; [u8; 128] qs` — per 32 weights a 6-bit
    /// scale `sc` and min `mn`: weight = nibble * d·sc - dmin·mn.
    Q4_K,
    /// Q4_K plus `[u8; 32] qh` (before `qs`), the fifth bit of each quant.
    Q5_K,
    /// `[u8; 128] ql; [u8; 64] qh; [i8; 16] scales; f16 d` — per 16 weights
    /// an 8-bit scale: weight = (q6 - 32) * d·sc.
    Q6_K,
}

impl QuantKind {
    /// Every kind, in `ggml_type` order.
    pub const ALL: [Self; 9] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// Size in bytes of one raw GGML block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// Weights per raw GGML block: a row's `cols` must be a multiple of it.
    pub const fn block_weights(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => BLOCK,
            Self::Q3_K | Self::Q4_K | Self::Q5_K | Self::Q6_K => SUPER_BLOCK,
        }
    }

    /// Whether this is a 256-weight K-quant.
    pub(crate) const fn is_k_quant(self) -> bool {
        self.block_weights() == SUPER_BLOCK
    }

    /// Bytes of packed quants per 32 weights: nibbles for the 4-bit kinds
    /// and the 5-bit ones (whose fifth bits are kept apart, see
    /// `has_high_bits`), one byte per weight for the others (see
    /// `PackedMatrix`).
    pub(crate) const fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q4_K | Self::Q5_0 | Self::Q5_1 | Self::Q5_K => 16,
            Self::Q8_0 | Self::Q3_K | Self::Q6_K => 32,
        }
    }

    /// Whether the packed form keeps a 32-bit word of fifth bits per block
    /// next to the nibbles (Q5_0, Q5_1 as GGML stores it; Q5_K repacked so):
    /// the kernels spread it per block.
    pub(crate) const fn has_high_bits(self) -> bool {
        matches!(self, Self::Q5_0 | Self::Q5_1 | Self::Q5_K)
    }

    /// The zero point of the kinds without a stored min: a Q4_0 weight is
    /// `(q - 8)·d`, a Q5_0 one `(q - 16)·d`. The kernels multiply the
    /// centred `q - zero point` (signed, as Q8_0's bytes), so these kinds
    /// need no offset term.
    pub(crate) const fn zero_point(self) -> Option<i8> {
        match self {
            Self::Q4_0 => Some(8),
            Self::Q5_0 => Some(16),
            _ => None,
        }
    }

    /// Whether `PackedMatrix` copies the raw quants as they are (otherwise
    /// `q5` or `kquant` repacks them).
    pub(crate) const fn copies_quants(self) -> bool {
        matches!(self, Self::Q4_0 | Self::Q4_1 | Self::Q8_0)
    }

    /// Size of the f16 header (scale, and min for Q4_1) that precedes the
    /// quants of a copied block (see `copies_quants`).
    pub(crate) const fn header_bytes(self) -> usize {
        self.block_bytes() - self.quant_bytes()
    }

    /// Packed 8-bit sub-scales per 32 weights: Q3_K's and Q6_K's, one per 16.
    pub(crate) const fn sub_scales_per_block(self) -> usize {
        match self {
            Self::Q3_K | Self::Q6_K => 2,
            _ => 0,
        }
    }

    /// Whether the packed block scale (and min) is a GGML f16 field as it is,
    /// so the packed form keeps it in 16 bits: every kind but Q4_K and
    /// Q5_K, whose per-block factors `d·sc` and `-dmin·mn` need an f32 (an
    /// 11-bit significand times a 6-bit integer).
    pub(crate) const fn half_scales(self) -> bool {
        !matches!(self, Self::Q4_K | Self::Q5_K)
    }

    /// Whether the packed form stores a per-block additive min.
    pub(crate) const fn has_mins(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1 | Self::Q4_K | Self::Q5_K)
    }

    /// Maps a GGUF tensor type id (`ggml_type`) to a kind this crate handles.
    pub const fn from_ggml_type(id: u32) -> Option<Self> {
        match id {
            2 => Some(Self::Q4_0),
            3 => Some(Self::Q4_1),
            6 => Some(Self::Q5_0),
            7 => Some(Self::Q5_1),
            8 => Some(Self::Q8_0),
            11 => Some(Self::Q3_K),
            12 => Some(Self::Q4_K),
            13 => Some(Self::Q5_K),
            14 => Some(Self::Q6_K),
            _ => None,
        }
    }

    /// The GGUF tensor type id (`ggml_type`) of this kind.
    pub const fn ggml_type(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
        }
    }
}

/// The little-endian f16 field at byte `at` of a raw block, as f32.
pub(crate) fn f16_at(raw: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([raw[at], raw[at + 1]]).to_f32()
}

impl fmt::Display for QuantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_type_ids_round_trip() {
        for kind in QuantKind::ALL {
            assert_eq!(QuantKind::from_ggml_type(kind.ggml_type()), Some(kind));
        }
        // F32, F16, Q8_1, Q2_K and Q8_K are not handled here.
        for id in [0, 1, 9, 10, 15] {
            assert_eq!(QuantKind::from_ggml_type(id), None);
        }
    }

    /// ggml's `static_assert`s on the block sizes.
    #[test]
    fn k_quant_block_sizes_match_ggml() {
        // d + dmin + scales + qs (+ qh for Q5_K).
        assert_eq!(QuantKind::Q4_K.block_bytes(), 2 + 2 + 12 + 128);
        assert_eq!(QuantKind::Q5_K.block_bytes(), 2 + 2 + 12 + 32 + 128);
        // ql + qh + scales + d.
        assert_eq!(QuantKind::Q6_K.block_bytes(), 128 + 64 + 16 + 2);
        // hmask + qs + scales + d.
        assert_eq!(QuantKind::Q3_K.block_bytes(), 32 + 64 + 12 + 2);
    }
}
