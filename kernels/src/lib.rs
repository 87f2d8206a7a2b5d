//! Batched quantized matrix kernels for GGML Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0
//! weights and the Q3_K / Q4_K / Q5_K / Q6_K K-quants (repacked into
//! 32-weight blocks).
//!
//! `PackedMatrix::matmul` computes `x · Wᵀ` for a batch of activation rows
//! (continuous-batching decode steps, prefill chunks) while reading each
//! weight block once per call: activations are quantized to 8 bits per block
//! (llama.cpp's Q8_0/Q8_1 scheme), every unpacked weight block is used for a
//! register tile of rows, and weight rows are split across the current compute
//! `team::Team` (rayon's global pool outside one).
//!
//! Guarantee: the output for a row of `x` is bit-identical regardless of the
//! batch it is in (size, neighbours, position) and of the thread split. AVX2 +
//! FMA + F16C is detected at run time (`backend()`), refined to AVX-VNNI or
//! AVX-512 VNNI when present (the same bits on all three); other CPUs use a
//! portable kernel.

mod activation;
mod error;
mod factors;
mod format;
mod kernel;
mod kquant;
mod packed;
mod q5;
mod reference;
pub mod team;
#[cfg(test)]
mod testdata;

pub use error::KernelError;
pub use format::{QuantKind, BLOCK, SUPER_BLOCK};
pub use kernel::{backend, instruction_set, Backend};
pub use packed::PackedMatrix;
pub use reference::reference_matmul;
