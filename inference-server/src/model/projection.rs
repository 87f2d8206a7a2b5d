//! Several weights that read the same input, applied as one layer whose
//! output row is their outputs side by side (`[q | k | v]`, `[gate | up]`).
//!
//! When every part has the same block format our kernels pack, the parts are
//! stacked into one packed matrix: one pass over the activations. Otherwise
//! (mixed formats, as in llama.cpp's Q4_K_M files, or one our kernels do not pack) each part
//! stays a separate [`Linear`] in its own GGUF format, run one after the
//! other: stacking them would mean dequantizing to F32, several times the
//! memory and bandwidth of the quantized weights.

use super::linear::{packed_kind, Linear, WeightPart};
use super::ModelError;

pub enum Projection {
    Fused(Linear),
    Split(Vec<Linear>),
}

impl Projection {
    pub fn new(parts: Vec<WeightPart>) -> Result<Self, ModelError> {
        let dtype = parts.first().map(|(_, t, _)| t.dtype());
        let packable = dtype.is_some_and(|d| {
            packed_kind(d).is_some() && parts.iter().all(|(_, t, _)| t.dtype() == d)
        });
        if packable || parts.len() == 1 {
            return Linear::stacked(parts).map(Self::Fused);
        }
        let split = parts
            .into_iter()
            .map(|part| Linear::stacked(vec![part]))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(cols) = split.first().map(Linear::cols) {
            if let Some(bad) = split.iter().position(|l| l.cols() != cols) {
                return Err(ModelError::tensor(
                    "projection",
                    format!(
                        "part {bad} has input width {}, not {cols}",
                        split[bad].cols()
                    ),
                ));
            }
        }
        Ok(Self::Split(split))
    }

    pub fn rows(&self) -> usize {
        match self {
            Self::Fused(l) => l.rows(),
            Self::Split(parts) => parts.iter().map(Linear::rows).sum(),
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Self::Fused(l) => l.cols(),
            Self::Split(parts) => parts.first().map_or(0, Linear::cols),
        }
    }

    /// `out[m × rows] = x[m × cols] · Wᵀ (+ bias)`, the parts' outputs side
    /// by side in each row; `part` is scratch for a split projection.
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        out: &mut Vec<f32>,
        part: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let parts = match self {
            Self::Fused(l) => return l.forward(x, m, out),
            Self::Split(parts) => parts,
        };
        let width = self.rows();
        out.clear();
        out.resize(m * width, 0.0);
        let mut offset = 0;
        for linear in parts {
            let rows = linear.rows();
            linear.forward(x, m, part)?;
            for (dst, src) in out.chunks_exact_mut(width).zip(part.chunks_exact(rows)) {
                dst[offset..offset + rows].copy_from_slice(src);
            }
            offset += rows;
        }
        Ok(())
    }
}
