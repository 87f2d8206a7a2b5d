//! The non-matmul pieces of a llama block on row-major `f32` buffers. Every
//! function works row by row in a fixed order, so a token's result never
//! depends on which other tokens share the step: a greedy sequence decodes the
//! same alone and inside any batch.

use super::config::RopeStyle;

/// `out[r] = x[r] / rms(x[r]) * weight` for each row of width `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut Vec<f32>) {
    let width = weight.len();
    out.clear();
    out.resize(x.len(), 0.0);
    for (row, dst) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let scale = 1.0 / (mean_sq + eps).sqrt();
        for ((d, v), w) in dst.iter_mut().zip(row).zip(weight) {
            *d = v * scale * w;
        }
    }
}

/// `x[i] += y[i]`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// SwiGLU on a stacked `[gate | up]` row: `out = silu(gate) * up`.
pub fn swiglu(gate_up: &[f32], ffn: usize, out: &mut Vec<f32>) {
    out.clear();
    for row in gate_up.chunks_exact(2 * ffn) {
        let (gate, up) = row.split_at(ffn);
        out.extend(gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u));
    }
}

/// Precomputed rotation angles, one row of `head_dim / 2` (cos, sin) pairs per
/// position, for every position the server admits.
pub struct RopeTable {
    half: usize,
    style: RopeStyle,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f32, positions: usize, style: RopeStyle) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for i in 0..half {
                let freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
                let angle = pos as f32 * freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Self {
            half,
            style,
            cos,
            sin,
        }
    }

    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head of one token's row in place at `pos`.
    pub fn apply(&self, row: &mut [f32], pos: usize) {
        let half = self.half;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in row.chunks_exact_mut(2 * half) {
            match self.style {
                RopeStyle::Interleaved => {
                    for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * cos[i] - b * sin[i];
                        pair[1] = a * sin[i] + b * cos[i];
                    }
                }
                RopeStyle::Halves => {
                    let (lo, hi) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * cos[i] - b * sin[i];
                        hi[i] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }
}

/// Causal attention of `queries` (tokens at positions `start..start + t`)
/// over one sequence's cached keys and values for positions `0..start + t`.
///
/// * `q`: `t × heads × head_dim`; `out`: the same rows, holding only the
///   query heads of `kv` (the KV heads a call covers), so calls for disjoint `kv` ranges write disjoint slices
///   and can run in parallel. Each head's arithmetic is the same whatever the
///   range, so the split never changes a bit.
/// * `keys`, `values`: `positions × kv_heads × head_dim` (the cache layout).
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Attention for the query heads of KV heads `kv` (see [`AttentionShape`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_heads(
    shape: &AttentionShape,
    kv: std::ops::Range<usize>,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    start: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        unsafe { simd::attention(shape, kv, q, keys, values, start, out, scores) };
        return;
    }
    attention_with(shape, kv, q, keys, values, start, out, scores, dot, axpy);
}

/// The attention loop, generic over its two inner products so the portable
/// and the AVX2 build share it. Per query, per head: scores in position
/// order, a max-subtracted softmax, then the weighted sum of values — a fixed
/// order, whatever else is in the batch.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attention_with(
    shape: &AttentionShape,
    kv_range: std::ops::Range<usize>,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    start: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    dot: impl Fn(&[f32], &[f32]) -> f32,
    axpy: impl Fn(&mut [f32], f32, &[f32]),
) {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim,
    } = *shape;
    let group = heads / kv_heads;
    let kv_width = kv_heads * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let width = heads * head_dim;
    let first_head = kv_range.start * group;
    let out_width = kv_range.len() * group * head_dim;
    // The query heads sharing a KV head are done together, so each cached
    // key and value is read once per group rather than once per head.
    for (i, (q_row, out_row)) in q
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(out_width.max(1)))
        .enumerate()
    {
        let visible = start + i + 1;
        for kv in kv_range.clone() {
            let heads_of = kv * group..(kv + 1) * group;
            scores.clear();
            scores.resize(group * visible, 0.0);
            for p in 0..visible {
                let k = &keys[p * kv_width + kv * head_dim..][..head_dim];
                for (g, h) in heads_of.clone().enumerate() {
                    scores[g * visible + p] =
                        dot(&q_row[h * head_dim..(h + 1) * head_dim], k) * scale;
                }
            }
            for row in scores.chunks_exact_mut(visible) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|s| *s *= inv);
            }
            let outs = &mut out_row
                [(heads_of.start - first_head) * head_dim..(heads_of.end - first_head) * head_dim];
            outs.fill(0.0);
            for p in 0..visible {
                let v = &values[p * kv_width + kv * head_dim..][..head_dim];
                for (g, oh) in outs.chunks_exact_mut(head_dim).enumerate() {
                    axpy(oh, scores[g * visible + p], v);
                }
            }
        }
    }
}

/// A dot product with eight independent accumulators: fixed order (so
/// deterministic) and wide enough for LLVM to vectorise.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut tail = 0.0;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i];
    }
    acc.iter().sum::<f32>() + tail
}

/// `out += w * v`.
fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
    out.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
}

/// AVX2/FMA inner products for attention, chosen at run time: the release
/// build targets baseline x86-64, where attention would run four lanes wide
/// without fused multiply-adds.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::AttentionShape;

    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE
            .get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attention(
        shape: &AttentionShape,
        kv: std::ops::Range<usize>,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        start: usize,
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        super::attention_with(
            shape,
            kv,
            q,
            keys,
            values,
            start,
            out,
            scores,
            |a, b| unsafe { dot(a, b) },
            |o, w, v| unsafe { axpy(o, w, v) },
        );
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let lanes = n / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < lanes {
            // SAFETY: i + 8 <= lanes <= both lengths.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                )
            };
            acc = _mm256_fmadd_ps(x, y, acc);
            i += 8;
        }
        let hi = _mm256_extractf128_ps(acc, 1);
        let quad = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        let mut sum = _mm_cvtss_f32(one);
        for j in lanes..n {
            sum += a[j] * b[j];
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy(out: &mut [f32], w: f32, v: &[f32]) {
        let n = out.len().min(v.len());
        let lanes = n / 8 * 8;
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i < lanes {
            // SAFETY: i + 8 <= lanes <= both lengths.
            unsafe {
                let o = out.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    o,
                    _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.as_ptr().add(i)), _mm256_loadu_ps(o)),
                );
            }
            i += 8;
        }
        for j in lanes..n {
            out[j] += w * v[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_scales_rows_independently() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0];
        let mut out = Vec::new();
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let r0 = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r0).abs() < 1e-6 && (out[1] - 8.0 / r0).abs() < 1e-6);
        assert!((out[4] - 1.0).abs() < 1e-6 && (out[5] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            let table = RopeTable::new(4, 10_000.0, 8, style);
            let mut row = vec![1.0, 2.0, 3.0, 4.0];
            table.apply(&mut row, 0);
            assert_eq!(row, vec![1.0, 2.0, 3.0, 4.0]);
            table.apply(&mut row, 5);
            let norm: f32 = row.iter().map(|v| v * v).sum();
            assert!((norm - 30.0).abs() < 1e-4, "{style:?}: {norm}");
        }
    }

    #[test]
    fn interleaved_rope_rotates_adjacent_pairs() {
        let table = RopeTable::new(2, 1.0, 2, RopeStyle::Interleaved);
        let mut row = vec![1.0, 0.0];
        table.apply(&mut row, 1);
        assert!((row[0] - 1f32.cos()).abs() < 1e-6 && (row[1] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let shape = AttentionShape {
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
        };
        let mut out = vec![0.0; 4];
        attention_heads(
            &shape,
            0..shape.kv_heads,
            &[1.0, 0.0, 0.0, 1.0],
            &[5.0, 5.0],
            &[7.0, -1.0],
            0,
            &mut out,
            &mut Vec::new(),
        );
        assert_eq!(out, vec![7.0, -1.0, 7.0, -1.0]);
    }

    #[test]
    fn attention_is_causal_within_a_chunk() {
        let shape = AttentionShape {
            heads: 1,
            kv_heads: 1,
            head_dim: 1,
        };
        // Two queries; the first must ignore the second position's value.
        let mut out = vec![0.0; 2];
        attention_heads(
            &shape,
            0..shape.kv_heads,
            &[1.0, 1.0],
            &[0.0, 0.0],
            &[2.0, 4.0],
            0,
            &mut out,
            &mut Vec::new(),
        );
        assert_eq!(out[0], 2.0);
        assert!((out[1] - 3.0).abs() < 1e-6);
    }

    #[test]
    fn attention_split_by_kv_head_gives_the_same_bits() {
        let shape = AttentionShape {
            heads: 6,
            kv_heads: 3,
            head_dim: 16,
        };
        let (positions, width, kv_width) = (11, 6 * 16, 3 * 16);
        let wave = |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<f32>>();
        let (q, keys, values) = (
            wave(width, 0.37),
            wave(positions * kv_width, 0.11),
            wave(positions * kv_width, 0.23),
        );
        let mut whole = vec![0.0; width];
        attention_heads(
            &shape,
            0..shape.kv_heads,
            &q,
            &keys,
            &values,
            positions - 1,
            &mut whole,
            &mut Vec::new(),
        );
        let mut split = vec![0.0; width];
        for (kv, out) in split.chunks_exact_mut(width / 3).enumerate() {
            attention_heads(
                &shape,
                kv..kv + 1,
                &q,
                &keys,
                &values,
                positions - 1,
                out,
                &mut Vec::new(),
            );
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&whole), bits(&split));
    }

    #[test]
    fn swiglu_multiplies_silu_gate_by_up() {
        let mut out = Vec::new();
        swiglu(&[0.0, 2.0, 3.0, 5.0], 2, &mut out);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 / (1.0 + (-2f32).exp()) * 5.0).abs() < 1e-6);
    }
}
