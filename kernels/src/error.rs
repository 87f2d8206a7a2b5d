//! Errors returned by the kernels. Every variant is a caller mistake (a shape
//! or length that does not match); the kernels themselves cannot fail.

use crate::format::QuantKind;

/// A shape or buffer-length mismatch detected before any work is done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A row must be a whole number of the format's blocks (32 weights, 256
    /// for the K-quants).
    #[error("column count {cols} is not a multiple of the {block}-weight block size")]
    ColsNotBlockMultiple { cols: usize, block: usize },

    /// `rows * cols` (or the byte size derived from it) does not fit in `usize`.
    #[error("a {rows}x{cols} matrix is too large to address")]
    SizeOverflow { rows: usize, cols: usize },

    /// The raw GGML tensor bytes do not match the declared shape.
    #[error("a {kind} matrix of {rows}x{cols} needs {expected} bytes, got {actual}")]
    RawLength {
        kind: QuantKind,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },

    /// The activation slice is not `m * cols` long.
    #[error("activations hold {actual} values, expected {expected} ({m} rows x {cols} cols)")]
    InputLength {
        m: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },

    /// The output slice has the wrong length for the requested result.
    #[error("output holds {actual} values, expected {expected}")]
    OutputLength { expected: usize, actual: usize },

    /// `dequantize_row` was asked for a row the matrix does not have.
    #[error("row {row} is out of range for a matrix with {rows} rows")]
    RowOutOfRange { row: usize, rows: usize },
}
