use proptest::prelude::*;

use super::*;
use crate::error::KernelError;
use crate::format::QuantKind;
use crate::reference::reference_matmul;
use crate::testdata::{random_activations, random_ggml};

const KINDS: [QuantKind; 3] = [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0];

/// The backends this machine can run.
fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Portable];
    if detect() == Backend::Avx2 {
        all.push(Backend::Avx2);
    }
    all
}

fn matrix(kind: QuantKind, rows: usize, cols: usize, seed: u64) -> PackedMatrix {
    PackedMatrix::from_ggml(kind, &random_ggml(kind, rows, cols, seed), rows, cols).unwrap()
}

fn run(w: &PackedMatrix, backend: Backend, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * w.rows()];
    w.matmul_on(backend, x, m, &mut out).unwrap();
    out
}

/// Like `run` but with an explicit chunk size.
fn run_split(w: &PackedMatrix, backend: Backend, x: &[f32], m: usize, chunk: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * w.rows()];
    let quantized = QuantizedActivations::new(x, m, w.cols());
    matmul_split(w, &quantized, m, &mut out, backend, chunk);
    out
}

fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let diff: f32 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let norm: f32 = want.iter().map(|b| b * b).sum();
    (diff / norm).sqrt()
}

/// Norm of the output that uncorrelated `x` and `w` of these row norms would
/// typically give (`|x_i|·|w_j|/√k` per element). Random test matrices make
/// some outputs cancel to near zero, so a few-element output's own norm is no
/// yardstick for the 8-bit quantization error; this floor is.
fn typical_norm(w: &[f32], x: &[f32], cols: usize) -> f32 {
    let norms = |v: &[f32]| -> Vec<f32> {
        v.chunks_exact(cols)
            .map(|r| r.iter().map(|a| a * a).sum())
            .collect()
    };
    let (wn, xn) = (norms(w), norms(x));
    let sum: f32 = xn.iter().flat_map(|x| wn.iter().map(move |w| x * w)).sum();
    (sum / cols as f32).sqrt()
}

/// Checks `got` against the f32 reference on the dequantized weights: the error
/// relative to the larger of the true and the typical output norm.
fn check_numerics(kind: QuantKind, rows: usize, cols: usize, ms: &[usize], x: &[f32], limit: f32) {
    let w = matrix(kind, rows, cols, (rows * cols) as u64);
    let dense = w.dequantize();
    for &m in ms {
        let x = &x[..m * cols];
        let want = reference_matmul(&dense, rows, cols, x, m);
        let want_norm: f32 = want.iter().map(|b| b * b).sum::<f32>().sqrt();
        let scale = want_norm.max(typical_norm(&dense, x, cols));
        for backend in backends() {
            let got = run(&w, backend, x, m);
            let err = relative_error(&got, &want) * want_norm / scale;
            assert!(
                err < limit,
                "{kind} {rows}x{cols} m={m} {backend:?}: relative error {err}"
            );
        }
    }
}

#[test]
fn matches_f32_reference_on_dequantized_weights() {
    const MS: [usize; 8] = [1, 2, 3, 7, 8, 9, 16, 33];
    for kind in KINDS {
        for cols in [32, 576, 1536] {
            let x = random_activations(33, cols, cols as u64, false);
            for rows in [1, 5, 192, 576] {
                check_numerics(kind, rows, cols, &MS, &x, 1e-2);
            }
        }
    }
}

/// Outliers inflate a block's scale and so the error of its other values;
/// the bound loosens accordingly (llama.cpp's Q8 activations behave the same).
#[test]
fn tolerates_activation_outliers() {
    for kind in KINDS {
        let x = random_activations(9, 576, 5, true);
        check_numerics(kind, 192, 576, &[1, 9], &x, 3e-2);
    }
}

#[test]
fn backends_agree_to_rounding() {
    if detect() != Backend::Avx2 {
        return;
    }
    for kind in KINDS {
        let w = matrix(kind, 67, 576, 7);
        let x = random_activations(5, 576, 8, true);
        let simd = run(&w, Backend::Avx2, &x, 5);
        let portable = run(&w, Backend::Portable, &x, 5);
        let err = relative_error(&simd, &portable);
        assert!(err < 1e-5, "{kind}: backends differ by {err}");
    }
}

#[test]
fn all_zero_activations_give_zero() {
    for kind in KINDS {
        let w = matrix(kind, 9, 64, 3);
        for backend in backends() {
            assert!(run(&w, backend, &[0.0; 3 * 64], 3)
                .iter()
                .all(|&v| v == 0.0));
        }
    }
}

#[test]
fn empty_batch_and_empty_matrix_are_fine() {
    let w = matrix(QuantKind::Q4_0, 4, 64, 1);
    w.matmul(&[], 0, &mut []).unwrap();
    let empty = PackedMatrix::from_ggml(QuantKind::Q8_0, &[], 0, 64).unwrap();
    empty.matmul(&[1.0; 64], 1, &mut []).unwrap();
}

#[test]
fn shape_mismatches_are_errors() {
    let w = matrix(QuantKind::Q4_1, 3, 64, 1);
    let mut out = vec![0.0; 6];
    assert_eq!(
        w.matmul(&[0.0; 127], 2, &mut out),
        Err(KernelError::InputLength {
            m: 2,
            cols: 64,
            expected: 128,
            actual: 127
        })
    );
    assert_eq!(
        w.matmul(&[0.0; 128], 2, &mut out[..5]),
        Err(KernelError::OutputLength {
            expected: 6,
            actual: 5
        })
    );
    assert_eq!(
        w.matmul(&[], usize::MAX, &mut out),
        Err(KernelError::SizeOverflow {
            rows: usize::MAX,
            cols: 64
        })
    );
}

#[test]
fn thread_count_does_not_change_bits() {
    // Big enough that the automatic split gives several chunks.
    let w = matrix(QuantKind::Q8_0, 2048, 576, 11);
    let x = random_activations(5, 576, 12, true);
    let in_pool = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| run(&w, backend(), &x, 5))
    };
    let one = in_pool(1);
    let three = in_pool(3);
    assert_eq!(bits(&one), bits(&three));
}

#[test]
fn small_matrices_run_as_one_chunk() {
    assert!(chunk_rows(192, 576, 1, 16) >= 192);
    let big = chunk_rows(49152, 576, 1, 2);
    assert!(big < 49152 && big % 4 == 0);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A row's output is the same bits alone or at any position of any batch,
    /// under any chunk split, and in every register-tile position.
    #[test]
    fn row_result_is_independent_of_batch(
        kind in prop::sample::select(KINDS.to_vec()),
        rows in 1usize..40,
        cols in prop::sample::select(vec![32usize, 96, 576]),
        m in 1usize..=40,
        position in any::<prop::sample::Index>(),
        chunk in prop::sample::select(vec![1usize, 3, 4, 7, 64]),
        seed in any::<u64>(),
    ) {
        let w = matrix(kind, rows, cols, seed);
        let position = position.index(m);
        let row = random_activations(1, cols, seed ^ 1, true);
        let mut batch = random_activations(m, cols, seed ^ 2, true);
        batch[position * cols..(position + 1) * cols].copy_from_slice(&row);
        for backend in backends() {
            let alone = run(&w, backend, &row, 1);
            let batched = run_split(&w, backend, &batch, m, chunk);
            prop_assert_eq!(
                bits(&alone),
                bits(&batched[position * rows..(position + 1) * rows])
            );
        }
    }
}
