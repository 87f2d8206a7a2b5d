//! The GGML block formats this crate reads, exactly as they appear in a GGUF
//! tensor's raw bytes (little-endian, packed, 32 weights per block).

use std::fmt;

/// Weights per GGML block, for every kind handled here.
pub const BLOCK: usize = 32;

/// A GGML quantization format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantKind {
    /// `f16 d; [u8; 16] qs` — weight = (nibble - 8) * d.
    Q4_0,
    /// `f16 d; f16 m; [u8; 16] qs` — weight = nibble * d + m.
    Q4_1,
    /// `f16 d; [i8; 32] qs` — weight = q * d.
    Q8_0,
}

impl QuantKind {
    /// Size in bytes of one raw GGML block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of packed quants per block (the block minus its f16 header).
    pub(crate) const fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 16,
            Self::Q8_0 => 32,
        }
    }

    /// Size of the f16 header (scale, and min for Q4_1) that precedes the quants.
    pub(crate) const fn header_bytes(self) -> usize {
        self.block_bytes() - self.quant_bytes()
    }

    /// Maps a GGUF tensor type id (`ggml_type`) to a kind this crate handles.
    pub const fn from_ggml_type(id: u32) -> Option<Self> {
        match id {
            2 => Some(Self::Q4_0),
            3 => Some(Self::Q4_1),
            8 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// The GGUF tensor type id (`ggml_type`) of this kind.
    pub const fn ggml_type(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
        }
    }
}

impl fmt::Display for QuantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_type_ids_round_trip() {
        for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
            assert_eq!(QuantKind::from_ggml_type(kind.ggml_type()), Some(kind));
        }
        // F32, F16 and the k-quants are not handled here.
        for id in [0, 1, 12, 14] {
            assert_eq!(QuantKind::from_ggml_type(id), None);
        }
    }
}
