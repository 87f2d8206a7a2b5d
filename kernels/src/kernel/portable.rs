//! Portable kernel: the same row tiles and per-block integer dot products as
//! the AVX2 kernel, in plain Rust for CPUs without AVX2/FMA or other arches.
//! Each output accumulates `d_w · d_x · isum` block by block in order (one
//! accumulator, so not bit-identical to the AVX2 kernel; Q6_K's `isum`
//! weights its two 16-weight halves by their sub-scales), then adds the offset term
//! `Σ_b min_b · s_x[b]` of the layouts with stored mins as the AVX2 kernel does.

use super::{row_tiles, RowJob, ROW_TILE};
use crate::format::BLOCK;

/// Fills one chunk's outputs.
pub(crate) fn compute_rows(job: &RowJob<'_>) {
    for n in 0..job.rows {
        for (i0, rows) in row_tiles(job.m) {
            tile(job, n, i0, rows);
        }
    }
}

/// Computes the outputs for weight row `n0 + n` (chunk-local `n`) and
/// activation rows `i0 .. i0 + rows`.
fn tile(job: &RowJob<'_>, n: usize, i0: usize, rows: usize) {
    let (w, x) = (job.w, job.x);
    let nb = x.nb;
    let row = job.n0 + n;
    let mut acc = [0f32; ROW_TILE];

    for b in 0..nb {
        let idx = row * nb + b;
        let weights = w.block_values(idx);
        let (w_lo, w_hi) = weights.split_at(BLOCK / 2);
        let spb = w.kind.sub_scales_per_block();
        let sub = &w.sub_scales[spb * idx..][..spb];
        for (r, acc) in acc.iter_mut().enumerate().take(rows) {
            let xi = (i0 + r) * nb + b;
            let (lo, hi) = x.block_halves(i0 + r, b);
            let dot = |w: &[i8], x: &[i8]| -> i32 {
                w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum()
            };
            let isum = match sub {
                [a, b] => *a as i32 * dot(w_lo, lo) + *b as i32 * dot(w_hi, hi),
                _ => dot(w_lo, lo) + dot(w_hi, hi),
            };
            *acc += w.scales.get(idx) * x.d[xi] * isum as f32;
        }
    }

    for (r, acc) in acc.iter().enumerate().take(rows) {
        let xs = &x.s[(i0 + r) * nb..][..nb];
        // The stored min of the unsigned kinds, per block.
        let offset = if w.kind.has_mins() {
            let mins = (row * nb..).map(|i| w.mins.get(i));
            mins.zip(xs).map(|(m, s)| m * s).sum::<f32>()
        } else {
            0.0
        };
        // SAFETY: `(i0 + r, row)` is in the matrix (`row_tiles`, the
        // chunk's rows) and this chunk's alone (see `Output`).
        unsafe { job.out.set(i0 + r, row, acc + offset) };
    }
}
