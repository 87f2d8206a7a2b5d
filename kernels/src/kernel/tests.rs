use proptest::prelude::*;

use super::*;
use crate::error::KernelError;
use crate::format::QuantKind;
use crate::reference::reference_matmul;
use crate::testdata::{random_activations, random_ggml};

const KINDS: [QuantKind; 9] = QuantKind::ALL;

/// SmolLM2's hidden size for the 32-weight kinds; the K-quants need whole
/// 256-weight super-blocks, so the nearest such width.
fn model_cols(kind: QuantKind) -> usize {
    if kind.block_weights() == 32 {
        576
    } else {
        768
    }
}

/// The widths of `candidates` that `kind` can hold.
fn widths(kind: QuantKind, candidates: &[usize]) -> Vec<usize> {
    let block = kind.block_weights();
    candidates
        .iter()
        .copied()
        .filter(|c| c.is_multiple_of(block))
        .collect()
}

/// The kernels this machine can run.
fn kernels() -> Vec<Kernel> {
    let mut all = vec![Kernel::Portable];
    if detect() == Backend::Avx2 {
        all.push(Kernel::Avx2);
        if detect_vnni() {
            all.push(Kernel::AvxVnni);
            if detect_avx512_vnni() {
                all.push(Kernel::Avx512Vnni);
            }
        }
    }
    all
}

fn matrix(kind: QuantKind, rows: usize, cols: usize, seed: u64) -> PackedMatrix {
    PackedMatrix::from_ggml(kind, &random_ggml(kind, rows, cols, seed), rows, cols).unwrap()
}

fn run(w: &PackedMatrix, kernel: Kernel, x: &[f32], m: usize) -> Vec<f32> {
    let chunk = chunk_rows(w.rows, w.cols, m, rayon::current_num_threads());
    run_split(w, kernel, x, m, chunk)
}

/// Like `run` but with an explicit chunk size.
fn run_split(w: &PackedMatrix, kernel: Kernel, x: &[f32], m: usize, chunk: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * w.rows()];
    let unsigned = kernel.unsigned_activations(w.kind());
    let quads = kernel.quad_activations();
    let quantized = QuantizedActivations::new(x, m, w.cols(), unsigned, quads);
    matmul_split(w, &quantized, m, &mut out, kernel, chunk);
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
        for kernel in kernels() {
            let got = run(&w, kernel, x, m);
            let err = relative_error(&got, &want) * want_norm / scale;
            assert!(
                err < limit,
                "{kind} {rows}x{cols} m={m} {kernel:?}: relative error {err}"
            );
        }
    }
}

/// The bound: activations are quantized to 8 bits per 32 values (step
/// `max|x|/127`, error uniform within ±half a step), so each product carries
/// a relative error of about `1/(127·√3)·(max|x|/rms x)` ≈ 0.4 % for these
/// uniform activations, and the errors of a row's products are independent,
/// so the output's relative error is of the same order; 1 % leaves margin.
/// The weights' own quantization does not enter: the reference uses the same
/// dequantized weights.
#[test]
fn matches_f32_reference_on_dequantized_weights() {
    const MS: [usize; 8] = [1, 2, 3, 7, 8, 9, 16, 33];
    for kind in KINDS {
        // Rows 1, 5 and 192 are not multiples of the row tile or the chunk.
        for cols in widths(kind, &[32, 96, 256, 576, 768, 1536]) {
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
        let cols = model_cols(kind);
        let x = random_activations(9, cols, 5, true);
        check_numerics(kind, 192, cols, &[1, 9], &x, 3e-2);
    }
}

#[test]
fn backends_agree_to_rounding() {
    if detect() != Backend::Avx2 {
        return;
    }
    for kind in KINDS {
        let cols = model_cols(kind);
        let w = matrix(kind, 67, cols, 7);
        let x = random_activations(5, cols, 8, true);
        let simd = run(&w, Kernel::Avx2, &x, 5);
        let portable = run(&w, Kernel::Portable, &x, 5);
        let err = relative_error(&simd, &portable);
        assert!(err < 1e-5, "{kind}: backends differ by {err}");
    }
}

/// The AVX-VNNI kernel computes the same exact integer lane sums as the AVX2
/// one, so the two give the same bits (odd and even block counts, every tile
/// height).
#[test]
fn vnni_and_avx2_kernels_agree_bitwise() {
    if !kernels().contains(&Kernel::AvxVnni) {
        return;
    }
    for kind in KINDS {
        // Block counts 1, 2, 3, 4, 5, 7, 18, 48: every mix of quads, a
        // leftover pair and an odd last block (K-quants: 8, 16, 24, 48).
        for cols in widths(kind, &[32, 64, 96, 128, 160, 224, 256, 512, 576, 768, 1536]) {
            let w = matrix(kind, 37, cols, cols as u64);
            let x = random_activations(17, cols, 9, true);
            for m in [1, 2, 5, 8, 9, 17] {
                let x = &x[..m * cols];
                let avx2 = bits(&run(&w, Kernel::Avx2, x, m));
                assert_eq!(
                    avx2,
                    bits(&run(&w, Kernel::AvxVnni, x, m)),
                    "{kind} {cols} {m}"
                );
                if kernels().contains(&Kernel::Avx512Vnni) {
                    assert_eq!(
                        avx2,
                        bits(&run(&w, Kernel::Avx512Vnni, x, m)),
                        "{kind} {cols} {m} avx-512"
                    );
                }
                // Without the unsigned copy the VNNI entry falls back to AVX2
                // (and so does AVX-512 VNNI without the four-block layout).
                let mut out = vec![f32::NAN; m * w.rows()];
                let plain = QuantizedActivations::new(x, m, cols, false, false);
                matmul_split(&w, &plain, m, &mut out, Kernel::AvxVnni, 5);
                assert_eq!(avx2, bits(&out), "{kind} {cols} {m} without qu");
                if kernels().contains(&Kernel::Avx512Vnni) {
                    matmul_split(&w, &plain, m, &mut out, Kernel::Avx512Vnni, 5);
                    assert_eq!(avx2, bits(&out), "{kind} {cols} {m} avx-512 without qu");
                }
            }
        }
    }
}

/// Extreme integer operands: Q8_0 weights of -128 and 127 against activations
/// quantized to ±127, where a saturating or wrapping sum would show.
#[test]
fn extreme_values_match_reference() {
    let cols = 96;
    let mut raw = Vec::new();
    for b in 0..cols / 32 {
        raw.extend(half::f16::from_f32(0.5).to_le_bytes());
        raw.extend((0..32).map(|j| if (j + b) % 3 == 0 { 0x80u8 } else { 0x7F }));
    }
    let w = PackedMatrix::from_ggml(QuantKind::Q8_0, &raw, 1, cols).unwrap();
    let dense = w.dequantize();
    // Row 0 matches every weight's sign (all products +127·128 or +127·127),
    // row 1 is all +1.
    let mut x: Vec<f32> = (0..cols)
        .map(|j| {
            if (j % 32 + j / 32) % 3 == 0 {
                -1.0
            } else {
                1.0
            }
        })
        .collect();
    x.extend([1.0; 96]);
    let want = reference_matmul(&dense, 1, cols, &x, 2);
    for kernel in kernels() {
        let got = run(&w, kernel, &x, 2);
        assert!(
            relative_error(&got, &want) < 1e-5,
            "{kernel:?}: {got:?} vs {want:?}"
        );
    }
}

/// Extreme 5- and 6-bit operands, where an i16 pair sum would saturate
/// first: every Q5_0, Q5_1 and Q5_K quant 31 and Q6_K quants of -32 and 31
/// (with scales of ±127 and -128), against activations carrying each
/// weight's sign (all products of one sign, at the largest magnitude) and
/// against all +1.
#[test]
fn extreme_five_and_six_bit_blocks_match_reference() {
    let d = half::f16::from_f32(0.001).to_le_bytes();
    let mut q5 = [d, d].concat();
    q5.extend([0xFF; 176 - 4]);
    let mut q6: Vec<u8> = (0..192)
        .map(|i| if i % 3 == 0 { 0x00 } else { 0xFF })
        .collect();
    q6.extend((0..16).map(|i| [0x7Fu8, 0x81, 0x80][i % 3]));
    q6.extend(d);
    // Eight 32-weight blocks (256 weights, as one K-quant super-block).
    let q5_0 = [d.to_vec(), vec![0xFF; 20]].concat().repeat(8);
    let q5_1 = [d.to_vec(), d.to_vec(), vec![0xFF; 20]].concat().repeat(8);
    for (kind, block) in [
        (QuantKind::Q5_0, q5_0),
        (QuantKind::Q5_1, q5_1),
        (QuantKind::Q5_K, q5),
        (QuantKind::Q6_K, q6),
    ] {
        let raw = [block.clone(), block].concat();
        let w = PackedMatrix::from_ggml(kind, &raw, 1, 512).unwrap();
        let dense = w.dequantize();
        let mut x: Vec<f32> = dense.iter().map(|v| v.signum()).collect();
        x.extend([1.0; 512]);
        let want = reference_matmul(&dense, 1, 512, &x, 2);
        for kernel in kernels() {
            let got = run(&w, kernel, &x, 2);
            assert!(
                relative_error(&got, &want) < 1e-5,
                "{kind} {kernel:?}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn all_zero_activations_give_zero() {
    for kind in KINDS {
        let cols = 2 * kind.block_weights();
        let w = matrix(kind, 9, cols, 3);
        for kernel in kernels() {
            let out = run(&w, kernel, &vec![0.0; 3 * cols], 3);
            assert!(out.iter().all(|&v| v == 0.0), "{kind} {kernel:?}");
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
        pool.install(|| {
            let mut out = vec![f32::NAN; 5 * w.rows()];
            w.matmul(&x, 5, &mut out).unwrap();
            out
        })
    };
    let one = in_pool(1);
    let three = in_pool(3);
    assert_eq!(bits(&one), bits(&three));
}

#[test]
fn small_matrices_run_as_one_chunk() {
    assert!(chunk_rows(192, 576, 1, 16) >= 192);
    let big = chunk_rows(49152, 576, 1, 2);
    assert!(big < 49152 && big.is_multiple_of(4));
}

/// Batched matmuls split into equal chunks, the same number per thread.
#[test]
fn batched_chunks_are_even_across_threads() {
    for (n, cols, m, threads) in [
        (576, 576, 8, 2),
        (960, 576, 8, 2),
        (3072, 576, 8, 2),
        (576, 1536, 16, 2),
        (49152, 576, 8, 4),
        (960, 576, 16, 3),
    ] {
        let rows = chunk_rows(n, cols, m, threads);
        let chunks = n.div_ceil(rows);
        assert!(rows < n, "{n}x{cols} m={m}: one chunk");
        assert!(
            chunks.is_multiple_of(threads),
            "{n}x{cols} m={m}: {chunks} chunks"
        );
        assert!(
            n - (chunks - 1) * rows > rows / 2,
            "{n}x{cols} m={m}: short last chunk"
        );
    }
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
        blocks in prop::sample::select(vec![1usize, 2, 3, 5, 18]),
        m in 1usize..=40,
        position in any::<prop::sample::Index>(),
        chunk in prop::sample::select(vec![1usize, 3, 4, 7, 64]),
        seed in any::<u64>(),
    ) {
        let cols = blocks * kind.block_weights();
        let w = matrix(kind, rows, cols, seed);
        let position = position.index(m);
        let row = random_activations(1, cols, seed ^ 1, true);
        let mut batch = random_activations(m, cols, seed ^ 2, true);
        batch[position * cols..(position + 1) * cols].copy_from_slice(&row);
        for kernel in kernels() {
            let alone = run(&w, kernel, &row, 1);
            let batched = run_split(&w, kernel, &batch, m, chunk);
            prop_assert_eq!(
                bits(&alone),
                bits(&batched[position * rows..(position + 1) * rows])
            );
        }
    }
}
