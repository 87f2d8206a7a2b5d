//! Plain f32 matmul: the numerical yardstick for tests and the baseline for
//! benches. Deliberately naive (one dot product per output, in order).

/// `out (m × rows) = x (m × cols) · wᵀ`, with `w` as `rows × cols` row-major.
/// Shapes are the caller's responsibility; it is not for production use.
pub fn reference_matmul(w: &[f32], rows: usize, cols: usize, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * rows];
    if cols == 0 {
        return out;
    }
    for (x_row, out_row) in x
        .chunks_exact(cols)
        .take(m)
        .zip(out.chunks_exact_mut(rows.max(1)))
    {
        for (o, w_row) in out_row.iter_mut().zip(w.chunks_exact(cols)) {
            *o = x_row.iter().zip(w_row).map(|(a, b)| a * b).sum();
        }
    }
    out
}
