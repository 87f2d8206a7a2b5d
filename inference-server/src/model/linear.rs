//! Linear layers over quantized GGUF weights, applied to all tokens of a step
//! at once (`[tokens, in] -> [tokens, out]`).
//!
//! The GGML block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants
//! Q3_K to Q6_K) go through `maas-kernels`, which reads every weight block
//! once per call for all rows; anything else (Q2_K, F16, F32) falls back to
//! candle's `QMatMul`, which is correct but re-streams weights per row.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};
use maas_kernels::{PackedMatrix, QuantKind};

use super::ModelError;

/// One weight of a stacked layer: its GGUF name (for error messages), the
/// quantized tensor and an optional bias.
pub type WeightPart = (String, QTensor, Option<Vec<f32>>);

pub enum Linear {
    Packed {
        matrix: PackedMatrix,
        bias: Option<Vec<f32>>,
    },
    Candle {
        matmul: QMatMul,
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    },
}

pub(super) fn packed_kind(dtype: GgmlDType) -> Option<QuantKind> {
    match dtype {
        GgmlDType::Q4_0 => Some(QuantKind::Q4_0),
        GgmlDType::Q4_1 => Some(QuantKind::Q4_1),
        GgmlDType::Q8_0 => Some(QuantKind::Q8_0),
        GgmlDType::Q5_0 => Some(QuantKind::Q5_0),
        GgmlDType::Q5_1 => Some(QuantKind::Q5_1),
        GgmlDType::Q3K => Some(QuantKind::Q3_K),
        GgmlDType::Q4K => Some(QuantKind::Q4_K),
        GgmlDType::Q5K => Some(QuantKind::Q5_K),
        GgmlDType::Q6K => Some(QuantKind::Q6_K),
        _ => None,
    }
}

/// GGUF stores a linear weight as `[out, in]` with `in` contiguous.
pub(super) fn dims(name: &str, t: &QTensor) -> Result<(usize, usize), ModelError> {
    match t.shape().dims() {
        [rows, cols] => Ok((*rows, *cols)),
        other => Err(ModelError::tensor(
            name,
            format!("expected 2 dims, got {other:?}"),
        )),
    }
}

impl Linear {
    /// Builds one layer from several weights stacked along the output
    /// dimension (e.g. Q, K and V), so a step makes one pass over the
    /// activations instead of three. Parts must share a block format to be
    /// packed together; otherwise they are dequantized and stacked for candle.
    pub fn stacked(parts: Vec<WeightPart>) -> Result<Self, ModelError> {
        let (first_name, first, _) = parts
            .first()
            .ok_or_else(|| ModelError::tensor("linear", "no weights".to_string()))?;
        let (_, cols) = dims(first_name, first)?;
        let mut rows = 0;
        for (name, t, bias) in &parts {
            let (r, c) = dims(name, t)?;
            if c != cols {
                return Err(ModelError::tensor(
                    name,
                    format!("input width {c} differs from {first_name}'s {cols}"),
                ));
            }
            if let Some(b) = bias {
                if b.len() != r {
                    return Err(ModelError::tensor(
                        name,
                        format!("bias has {} entries for {r} outputs", b.len()),
                    ));
                }
            }
            rows += r;
        }
        let bias = if parts.iter().any(|(_, _, b)| b.is_some()) {
            let mut all = Vec::with_capacity(rows);
            for (name, t, b) in &parts {
                let (r, _) = dims(name, t)?;
                match b {
                    Some(b) => all.extend_from_slice(b),
                    None => all.extend(std::iter::repeat_n(0.0, r)),
                }
            }
            Some(all)
        } else {
            None
        };

        let dtype = first.dtype();
        if let Some(kind) =
            packed_kind(dtype).filter(|_| parts.iter().all(|(_, t, _)| t.dtype() == dtype))
        {
            let mut data = parts
                .iter()
                .map(|(name, t, _)| {
                    t.data()
                        .map_err(|e| ModelError::tensor(name, e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // A lone weight (the embedding, hundreds of MB) is packed from
            // the tensor's own bytes; only stacked parts are concatenated.
            let raw = if data.len() == 1 {
                data.remove(0)
            } else {
                data.concat().into()
            };
            let matrix = PackedMatrix::from_ggml(kind, &raw, rows, cols)
                .map_err(|e| ModelError::tensor(first_name, e.to_string()))?;
            return Ok(Self::Packed { matrix, bias });
        }

        let qtensor = if parts.len() == 1 {
            // A lone weight keeps its own format: candle has kernels for it.
            let mut parts = parts;
            parts.remove(0).1
        } else {
            let mut dense = Vec::with_capacity(parts.len());
            for (_, t, _) in &parts {
                dense.push(t.dequantize(&Device::Cpu)?);
            }
            QTensor::quantize(&Tensor::cat(&dense, 0)?, GgmlDType::F32)?
        };
        Ok(Self::Candle {
            matmul: QMatMul::from_qtensor(qtensor)?,
            rows,
            cols,
            bias,
        })
    }

    pub fn rows(&self) -> usize {
        match self {
            Self::Packed { matrix, .. } => matrix.rows(),
            Self::Candle { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Self::Packed { matrix, .. } => matrix.cols(),
            Self::Candle { cols, .. } => *cols,
        }
    }

    /// `out[m × rows] = x[m × cols] · Wᵀ (+ bias)`.
    pub fn forward(&self, x: &[f32], m: usize, out: &mut Vec<f32>) -> Result<(), ModelError> {
        let rows = self.rows();
        // Both paths write every element, so the buffer is only sized, not
        // cleared: zeroing Gemma 3's eight-row logits was an 8 MB memset
        // per step on the engine thread.
        out.resize(m * rows, 0.0);
        let bias = match self {
            Self::Packed { matrix, bias } => {
                matrix
                    .matmul(x, m, out)
                    .map_err(|e| ModelError::Forward(e.to_string()))?;
                bias
            }
            Self::Candle {
                matmul, cols, bias, ..
            } => {
                // candle's dense (F32/F16) matmul picks its blocking from the
                // row count, so a row's result would depend on its batch;
                // feeding rows one at a time keeps batching bit-exact. Its
                // quantized path already works row by row.
                let dense = matches!(matmul, QMatMul::Tensor(_) | QMatMul::TensorF16(_));
                let per_call = if dense { 1 } else { m.max(1) };
                for (xs, ys) in x
                    .chunks(per_call * cols)
                    .zip(out.chunks_mut(per_call * rows))
                {
                    let t = Tensor::from_slice(xs, (xs.len() / cols, *cols), &Device::Cpu)?;
                    let result = t.apply(matmul)?.flatten_all()?.to_vec1::<f32>()?;
                    ys.copy_from_slice(&result);
                }
                bias
            }
        };
        if let Some(bias) = bias {
            for row in out.chunks_exact_mut(rows) {
                row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
        }
        Ok(())
    }
}
