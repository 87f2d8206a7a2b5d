//! The non-matmul pieces of a llama block on row-major `f32` buffers. Every
//! function works row by row in a fixed order, so a token's result never
//! depends on which other tokens share the step: a greedy sequence decodes the
//! same alone and inside any batch.

use half::f16;
use maas_kernels::team;

use super::cache::KvBlocks;
use super::config::{RopeParams, RopeStyle};

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

/// [`rms_norm`] in place: each `weight.len()`-wide slice of `x` (one head's
/// query or key, for the per-head norms of Qwen 3 and Gemma 3).
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for row in x.chunks_exact_mut(width) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let scale = 1.0 / (mean_sq + eps).sqrt();
        row.iter_mut()
            .zip(weight)
            .for_each(|(v, w)| *v = *v * scale * w);
    }
}

/// `x[i] *= by`.
pub fn scale(x: &mut [f32], by: f32) {
    x.iter_mut().for_each(|v| *v *= by);
}

/// `cap · tanh(x / cap)`: Gemma's final logit soft-capping.
pub fn softcap(x: &mut [f32], cap: f32) {
    x.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
}

/// `x[i] += y[i]`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// SwiGLU on a stacked `[gate | up]` row: `out = silu(gate) * up`.
pub fn swiglu(gate_up: &[f32], ffn: usize, out: &mut Vec<f32>) {
    gated(gate_up, ffn, out, |g| g / (1.0 + (-g).exp()));
}

/// GELU-gated MLP on a stacked `[gate | up]` row: `out = gelu(gate) * up`,
/// with GELU's tanh approximation (Gemma's `gelu_pytorch_tanh`, ggml's
/// `gelu`), written as `g · σ(2u)`: `(1 + tanh u) / 2` is `1 / (1 + e^{-2u})`,
/// and one libm `expf` costs a third of a `tanhf` (which was 6 % of a
/// Gemma 3 step at 8 streams).
pub fn geglu(gate_up: &[f32], ffn: usize, out: &mut Vec<f32>) {
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
    gated(gate_up, ffn, out, |g| {
        let twice_inner = TWO_SQRT_2_OVER_PI * (g + 0.044715 * g * g * g);
        g / (1.0 + (-twice_inner).exp())
    });
}

/// Values per parallel part of a gated activation, at least: its libm
/// `exp`/`tanh` cost tens of nanoseconds each, so a part this size is worth
/// a hand-off to the compute team.
const GATED_PART: usize = 512;

/// `out[r][j] = act(gate[r][j]) · up[r][j]` over the rows of `[gate | up]`,
/// split evenly over the compute team (on one thread, the activation was
/// 5 % of a Gemma 3 step, serial between two matmuls).
fn gated(gate_up: &[f32], ffn: usize, out: &mut Vec<f32>, act: impl Fn(f32) -> f32 + Sync) {
    let len = gate_up.len() / 2;
    out.clear();
    out.resize(len, 0.0);
    if ffn == 0 {
        return;
    }
    let parts = (len / GATED_PART).clamp(1, team::threads());
    let part_len = len.div_ceil(parts);
    team::for_each_chunk_mut(out, part_len, |c, mut part| {
        // The part, row by row: runs of one row's gate and up halves.
        let mut k = c * part_len;
        while !part.is_empty() {
            let (row, j) = (k / ffn, k % ffn);
            let run = (ffn - j).min(part.len());
            let gate = &gate_up[row * 2 * ffn + j..][..run];
            let up = &gate_up[row * 2 * ffn + ffn + j..][..run];
            let (head, rest) = part.split_at_mut(run);
            for ((o, &g), &u) in head.iter_mut().zip(gate).zip(up) {
                *o = act(g) * u;
            }
            part = rest;
            k += run;
        }
    });
}

/// The rotation frequency of each of a head's `head_dim / 2` pairs, as
/// llama.cpp's `ggml_rope_ext` computes it: `scale · base^(-2i/d) / factor[i]`
/// (`factors`: Llama 3.x's `rope_freqs.weight`, one per pair).
pub fn rope_frequencies(head_dim: usize, params: RopeParams, factors: Option<&[f32]>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let factor = factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
            params.scale / (params.base.powf((2 * i) as f32 / head_dim as f32) * factor)
        })
        .collect()
}

/// Rotary position embedding for positions `0..positions`: each pair's
/// frequency; the angles' cos and sin are computed per step for that step's
/// positions ([`RopeAngles`]) rather than tabulated for every position the
/// server admits, which would cost `positions × head_dim × 4` bytes per
/// table resident for the process's life (64 MB for Gemma 3's two at its
/// 32k context) to save a few microseconds a step. The arithmetic is the
/// table's (`pos as f32 * freq`, then `cos`, `sin`), so the bits are too.
pub struct Rope {
    style: RopeStyle,
    freqs: Vec<f32>,
    positions: usize,
}

impl Rope {
    /// Pairs rotating at `freqs` (see [`rope_frequencies`]), for
    /// `positions` positions.
    pub fn new(freqs: &[f32], positions: usize, style: RopeStyle) -> Self {
        Self {
            style,
            freqs: freqs.to_vec(),
            positions,
        }
    }

    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Appends the cos and sin of every pair's angle at `pos`.
    fn push_angles(&self, pos: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        for &freq in &self.freqs {
            let angle = pos as f32 * freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }

    /// The cos and sin tables for every position (`positions × half`,
    /// row-major) and `half`: the device path keeps them in device memory.
    pub fn tables(&self) -> (Vec<f32>, Vec<f32>, usize) {
        let len = self.positions * self.freqs.len();
        let (mut cos, mut sin) = (Vec::with_capacity(len), Vec::with_capacity(len));
        for pos in 0..self.positions {
            self.push_angles(pos, &mut cos, &mut sin);
        }
        (cos, sin, self.freqs.len())
    }

    /// Rotates every head of one token's row in place by the angles of its
    /// position (a row of [`RopeAngles`] filled by this rope).
    pub fn apply(&self, row: &mut [f32], (cos, sin): (&[f32], &[f32])) {
        let half = self.freqs.len();
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

/// One step's rotation angles: a row of `half` cos and sin values per token.
#[derive(Default)]
pub struct RopeAngles {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeAngles {
    /// The angles of `rope` at each of `positions`, in order.
    pub fn fill(&mut self, rope: &Rope, positions: &[usize]) {
        self.half = rope.freqs.len();
        self.cos.clear();
        self.sin.clear();
        for &pos in positions {
            rope.push_angles(pos, &mut self.cos, &mut self.sin);
        }
    }

    /// Token `i`'s row, as [`Rope::apply`] takes it.
    pub fn row(&self, i: usize) -> (&[f32], &[f32]) {
        let range = i * self.half..(i + 1) * self.half;
        (&self.cos[range.clone()], &self.sin[range])
    }
}

/// Causal attention of `queries` (tokens at positions `start..start + t`)
/// over one sequence's cached keys and values for positions `0..start + t`.
///
/// * `q`: `t × heads × head_dim`; `out`: the same rows, holding only the
///   query heads of `kv` (the KV heads a call covers), so calls for disjoint `kv` ranges write disjoint slices
///   and can run in parallel. Each head's arithmetic is the same whatever the
///   range, so the split never changes a bit.
/// * `kv`: the sequence's cached keys and values, in blocks of
///   `positions × kv_heads × head_dim` (the cache layout).
/// * `scale` multiplies the scores; `window`, when set, limits each query to
///   the last `window` positions, itself included (sliding-window layers).
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub window: Option<usize>,
}

/// Attention for the query heads of KV heads `kv` (see [`AttentionShape`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_heads(
    shape: &AttentionShape,
    kv: std::ops::Range<usize>,
    q: &[f32],
    cache: KvBlocks<'_>,
    start: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        unsafe { simd::attention(shape, kv, q, cache, start, out, scores) };
        return;
    }
    attention_with(shape, kv, q, cache, start, out, scores, &Portable);
}

/// One KV head's cached keys or values for positions `0..visible`:
/// `data` starts at the head's first element and holds one position every
/// `stride` values.
#[derive(Clone, Copy)]
struct HeadRows<'a> {
    data: &'a [f16],
    stride: usize,
    head_dim: usize,
    visible: usize,
}

impl HeadRows<'_> {
    fn row(&self, p: usize) -> &[f16] {
        &self.data[p * self.stride..][..self.head_dim]
    }
}

/// The two inner loops of attention for one KV head and the query heads
/// that share it, over one run of contiguous positions (a block, or the
/// part of it a query sees).
trait AttentionInner {
    /// `scores[g · stride + p] = scale · q_g · k_p`.
    fn scores(&self, q: &[f32], keys: HeadRows<'_>, scale: f32, scores: &mut [f32], stride: usize);
    /// `out_g += Σ_p scores[g · stride + p] · v_p`, positions in order.
    fn weighted_sum(&self, scores: &[f32], stride: usize, values: HeadRows<'_>, out: &mut [f32]);
}

/// Scalar loops LLVM vectorises for the baseline target.
struct Portable;

impl AttentionInner for Portable {
    fn scores(&self, q: &[f32], keys: HeadRows<'_>, scale: f32, scores: &mut [f32], stride: usize) {
        for p in 0..keys.visible {
            let k = keys.row(p);
            for (g, qh) in q.chunks_exact(keys.head_dim).enumerate() {
                scores[g * stride + p] = dot(qh, k) * scale;
            }
        }
    }

    fn weighted_sum(&self, scores: &[f32], stride: usize, values: HeadRows<'_>, out: &mut [f32]) {
        for p in 0..values.visible {
            let v = values.row(p);
            for (g, oh) in out.chunks_exact_mut(values.head_dim).enumerate() {
                axpy(oh, scores[g * stride + p], v);
            }
        }
    }
}

/// The attention loop, generic over its two inner loops so the portable
/// and the AVX2 build share it. Per query, per head: scores in position
/// order, a max-subtracted softmax, then the weighted sum of values — a fixed
/// order, whatever else is in the batch, and whatever the blocks: each
/// block's run adds its positions in order to the same accumulators, so a
/// paged cache gives the bits a contiguous one does.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attention_with(
    shape: &AttentionShape,
    kv_range: std::ops::Range<usize>,
    q: &[f32],
    cache: KvBlocks<'_>,
    start: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
    inner: &impl AttentionInner,
) {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim,
        scale,
        window,
    } = *shape;
    let group = heads / kv_heads;
    let kv_width = kv_heads * head_dim;
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
        let end = start + i + 1;
        // A sliding window hides the oldest positions: the rows start later.
        let first = window.map_or(0, |w| end.saturating_sub(w));
        let visible = end - first;
        for kv in kv_range.clone() {
            let heads_of = kv * group..(kv + 1) * group;
            scores.clear();
            scores.resize(group * visible, 0.0);
            let q_group = &q_row[heads_of.start * head_dim..heads_of.end * head_dim];
            let head = (kv, head_dim, kv_width);
            let runs = |data| runs(cache.blocks, cache.block_tokens, data, first..end, head);
            for (offset, keys) in runs(cache.keys) {
                inner.scores(q_group, keys, scale, &mut scores[offset..], visible);
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
            for (offset, values) in runs(cache.values) {
                inner.weighted_sum(&scores[offset..], visible, values, outs);
            }
        }
    }
}

/// The runs of contiguous positions of `visible` in a sequence's blocks,
/// for KV head `kv` of `data` (the layer's keys or values, `kv_width`
/// values a position): (offset from `visible.start`, the head's rows).
fn runs<'c>(
    blocks: &'c [u32],
    block_tokens: usize,
    data: &'c [f16],
    visible: std::ops::Range<usize>,
    (kv, head_dim, kv_width): (usize, usize, usize),
) -> impl Iterator<Item = (usize, HeadRows<'c>)> + 'c {
    let bt = block_tokens;
    (visible.start / bt..visible.end.div_ceil(bt)).map(move |b| {
        let from = visible.start.max(b * bt);
        let to = visible.end.min((b + 1) * bt);
        let at = (blocks[b] as usize * bt + from - b * bt) * kv_width + kv * head_dim;
        let rows = HeadRows {
            data: &data[at..],
            stride: kv_width,
            head_dim,
            visible: to - from,
        };
        (from - visible.start, rows)
    })
}

/// A dot product with eight independent accumulators: fixed order (so
/// deterministic) and wide enough for LLVM to vectorise.
fn dot(a: &[f32], b: &[f16]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l].to_f32();
        }
    }
    let mut tail = 0.0;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i].to_f32();
    }
    acc.iter().sum::<f32>() + tail
}

/// `out += w * v`.
fn axpy(out: &mut [f32], w: f32, v: &[f16]) {
    out.iter_mut()
        .zip(v)
        .for_each(|(o, v)| *o += w * v.to_f32());
}

/// AVX2/FMA inner products for attention, chosen at run time: the release
/// build targets baseline x86-64, where attention would run four lanes wide
/// without fused multiply-adds, and convert the f16 cache one value at a
/// time instead of eight per F16C instruction.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use half::f16;

    use super::{AttentionShape, HeadRows, KvBlocks};

    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attention(
        shape: &AttentionShape,
        kv: std::ops::Range<usize>,
        q: &[f32],
        cache: KvBlocks<'_>,
        start: usize,
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        super::attention_with(shape, kv, q, cache, start, out, scores, &Avx2);
    }

    /// AVX2/FMA inner loops. For 64-dimensional heads (SmolLM2, Llama-style
    /// small models) the query and the output stay in registers: scores come
    /// four positions at a time with one shuffle-and-add reduction for the
    /// four, and the weighted sum accumulates a head's 64 outputs in eight
    /// registers instead of loading and storing them per position. Heads
    /// that are multiples of 16 (Gemma 3's 256) take four positions at a
    /// time with the query read from L1, and multiples of 64 sum values 64
    /// outputs at a time; other sizes use the portable loops with AVX2 dots.
    struct Avx2;

    const D: usize = 64;

    impl super::AttentionInner for Avx2 {
        fn scores(
            &self,
            q: &[f32],
            keys: HeadRows<'_>,
            scale: f32,
            scores: &mut [f32],
            stride: usize,
        ) {
            let (head_dim, visible) = (keys.head_dim, keys.visible);
            assert!(visible == 0 || keys.data.len() >= (visible - 1) * keys.stride + head_dim);
            for (g, qh) in q.chunks_exact(head_dim).enumerate() {
                let row = &mut scores[g * stride..][..visible];
                // SAFETY: AVX2/FMA are present (this type is only used from
                // `attention`); the asserts above bound every key read.
                unsafe {
                    if head_dim == D {
                        scores_64(qh, keys.data, keys.stride, scale, row);
                    } else if head_dim % 16 == 0 {
                        scores_wide(qh, keys.data, keys.stride, scale, row);
                    } else {
                        for (p, s) in row.iter_mut().enumerate() {
                            *s = dot(qh, keys.row(p)) * scale;
                        }
                    }
                }
            }
        }

        fn weighted_sum(
            &self,
            scores: &[f32],
            stride: usize,
            values: HeadRows<'_>,
            out: &mut [f32],
        ) {
            let (head_dim, visible) = (values.head_dim, values.visible);
            assert!(visible == 0 || values.data.len() >= (visible - 1) * values.stride + head_dim);
            for (g, oh) in out.chunks_exact_mut(head_dim).enumerate() {
                let weights = &scores[g * stride..][..visible];
                // SAFETY: as in `scores`; the assert bounds every value read.
                unsafe {
                    if head_dim % D == 0 {
                        // Wider heads (Gemma 3's 256) a 64-wide slice at a
                        // time: each output still sums its positions in
                        // order, as `axpy` would.
                        for (c, slice) in oh.chunks_exact_mut(D).enumerate() {
                            weighted_sum_64(weights, &values.data[c * D..], values.stride, slice);
                        }
                    } else {
                        for (p, w) in weights.iter().enumerate() {
                            axpy(oh, *w, values.row(p));
                        }
                    }
                }
            }
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C; `q.len() == 64`; key `p` (64 values at `p · stride`)
    /// exists for every `p < row.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_64(q: &[f32], keys: &[f16], stride: usize, scale: f32, row: &mut [f32]) {
        debug_assert_eq!(q.len(), D);
        let qv: [__m256; 8] =
            std::array::from_fn(|j| unsafe { _mm256_loadu_ps(q.as_ptr().add(8 * j)) });
        let dot8 = |k: *const f16| unsafe {
            // Two chains, summed once: the same order for every position.
            let mut a = _mm256_mul_ps(qv[0], load8(k));
            let mut b = _mm256_mul_ps(qv[1], load8(k.add(8)));
            for j in (2..8).step_by(2) {
                a = _mm256_fmadd_ps(qv[j], load8(k.add(8 * j)), a);
                b = _mm256_fmadd_ps(qv[j + 1], load8(k.add(8 * j + 8)), b);
            }
            _mm256_add_ps(a, b)
        };
        let base = keys.as_ptr();
        let scale4 = _mm_set1_ps(scale);
        let mut p = 0;
        while p + 4 <= row.len() {
            let s0 = dot8(base.add(p * stride));
            let s1 = dot8(base.add((p + 1) * stride));
            let s2 = dot8(base.add((p + 2) * stride));
            let s3 = dot8(base.add((p + 3) * stride));
            _mm_storeu_ps(
                row.as_mut_ptr().add(p),
                _mm_mul_ps(sum4([s0, s1, s2, s3]), scale4),
            );
            p += 4;
        }
        while p < row.len() {
            *row.get_unchecked_mut(p) = sum1(dot8(base.add(p * stride))) * scale;
            p += 1;
        }
    }

    /// `scores_64` for any head size that is a multiple of 16 (Gemma 3's
    /// 256): too wide to keep the query in registers, so it is read from L1
    /// once per four positions, each position with two chains of FMAs (one
    /// long chain per position was latency-bound, a quarter of the speed).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `q.len() % 16 == 0`; key `p` (`q.len()` values at
    /// `p · stride`) exists for every `p < row.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_wide(q: &[f32], keys: &[f16], stride: usize, scale: f32, row: &mut [f32]) {
        debug_assert_eq!(q.len() % 16, 0);
        let base = keys.as_ptr();
        let mut p = 0;
        while p + 4 <= row.len() {
            let sums = sum4(dots_wide::<4>(q, base.add(p * stride), stride));
            _mm_storeu_ps(
                row.as_mut_ptr().add(p),
                _mm_mul_ps(sums, _mm_set1_ps(scale)),
            );
            p += 4;
        }
        while p < row.len() {
            let [s] = dots_wide::<1>(q, base.add(p * stride), stride);
            *row.get_unchecked_mut(p) = sum1(s) * scale;
            p += 1;
        }
    }

    /// The lane sums of four positions' eight-lane dots, `[Σs0, Σs1, Σs2,
    /// Σs3]`, in one reduction; each in the order `sum1` takes.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn sum4([s0, s1, s2, s3]: [__m256; 4]) -> __m128 {
        let h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
    }

    /// The lane sum of one position's eight-lane dot, as `sum4` sums each.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn sum1(s: __m256) -> f32 {
        let h = _mm256_hadd_ps(s, s);
        let h = _mm256_hadd_ps(h, h);
        _mm_cvtss_f32(_mm_add_ps(
            _mm256_castps256_ps128(h),
            _mm256_extractf128_ps(h, 1),
        ))
    }

    /// `q` against the `N` keys at `keys + i · stride`, as eight-lane sums:
    /// per key, chain a takes the even eight-value pieces and chain b the
    /// odd ones, added once at the end.
    ///
    /// # Safety
    /// As for `scores_wide`, for the `N` keys.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dots_wide<const N: usize>(q: &[f32], keys: *const f16, stride: usize) -> [__m256; N] {
        let mut a = [_mm256_setzero_ps(); N];
        let mut b = [_mm256_setzero_ps(); N];
        for j in (0..q.len()).step_by(16) {
            let qa = _mm256_loadu_ps(q.as_ptr().add(j));
            let qb = _mm256_loadu_ps(q.as_ptr().add(j + 8));
            for i in 0..N {
                let k = keys.add(i * stride + j);
                a[i] = _mm256_fmadd_ps(qa, load8(k), a[i]);
                b[i] = _mm256_fmadd_ps(qb, load8(k.add(8)), b[i]);
            }
        }
        std::array::from_fn(|i| _mm256_add_ps(a[i], b[i]))
    }

    /// `out += Σ_p weights[p] · v_p`, in position order: starting from
    /// `out` rather than zero, a run of positions continues the previous
    /// block's sums exactly as one longer run would.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `out.len() == 64`; value `p` (64 values at
    /// `p · stride`) exists for every `p < weights.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_sum_64(weights: &[f32], values: &[f16], stride: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), D);
        let mut acc: [__m256; 8] =
            std::array::from_fn(|j| unsafe { _mm256_loadu_ps(out.as_ptr().add(8 * j)) });
        let base = values.as_ptr();
        for (p, w) in weights.iter().enumerate() {
            let wv = _mm256_set1_ps(*w);
            let v = base.add(p * stride);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(wv, load8(v.add(8 * j)), *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), *a);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        let lanes = n / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < lanes {
            // SAFETY: i + 8 <= lanes <= both lengths.
            let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i)), load8(b.as_ptr().add(i))) };
            acc = _mm256_fmadd_ps(x, y, acc);
            i += 8;
        }
        let hi = _mm256_extractf128_ps(acc, 1);
        let quad = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        let mut sum = _mm_cvtss_f32(one);
        for j in lanes..n {
            sum += a[j] * b[j].to_f32();
        }
        sum
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy(out: &mut [f32], w: f32, v: &[f16]) {
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
                    _mm256_fmadd_ps(wv, load8(v.as_ptr().add(i)), _mm256_loadu_ps(o)),
                );
            }
            i += 8;
        }
        for j in lanes..n {
            out[j] += w * v[j].to_f32();
        }
    }

    /// Eight f16 values at `p` as f32 (exact).
    ///
    /// # Safety
    /// F16C; `p` valid for eight reads.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cache::KvBlocks;

    /// The cache's f16 form of `v`.
    fn halves(v: &[f32]) -> Vec<f16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

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
            let params = RopeParams {
                base: 10_000.0,
                scale: 1.0,
            };
            let rope = Rope::new(&rope_frequencies(4, params, None), 8, style);
            let mut angles = RopeAngles::default();
            angles.fill(&rope, &[0, 5]);
            let mut row = vec![1.0, 2.0, 3.0, 4.0];
            rope.apply(&mut row, angles.row(0));
            assert_eq!(row, vec![1.0, 2.0, 3.0, 4.0]);
            rope.apply(&mut row, angles.row(1));
            let norm: f32 = row.iter().map(|v| v * v).sum();
            assert!((norm - 30.0).abs() < 1e-4, "{style:?}: {norm}");
        }
    }

    /// The per-step angles are the device path's table rows, bit for bit.
    #[test]
    fn step_angles_are_the_table_rows() {
        let params = RopeParams {
            base: 10_000.0,
            scale: 1.0,
        };
        let rope = Rope::new(&rope_frequencies(8, params, None), 16, RopeStyle::Halves);
        let (cos, sin, half) = rope.tables();
        let mut angles = RopeAngles::default();
        angles.fill(&rope, &[3, 15]);
        for (i, pos) in [3, 15].into_iter().enumerate() {
            let range = pos * half..(pos + 1) * half;
            assert_eq!(angles.row(i), (&cos[range.clone()], &sin[range]));
        }
    }

    #[test]
    fn interleaved_rope_rotates_adjacent_pairs() {
        let rope = Rope::new(&[1.0], 2, RopeStyle::Interleaved);
        let mut angles = RopeAngles::default();
        angles.fill(&rope, &[1]);
        let mut row = vec![1.0, 0.0];
        rope.apply(&mut row, angles.row(0));
        assert!((row[0] - 1f32.cos()).abs() < 1e-6 && (row[1] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let shape = AttentionShape {
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
            scale: 1.0 / 2f32.sqrt(),
            window: None,
        };
        let mut out = vec![0.0; 4];
        attention_heads(
            &shape,
            0..shape.kv_heads,
            &[1.0, 0.0, 0.0, 1.0],
            KvBlocks::contiguous(
                &halves(&[5.0, 5.0]),
                &halves(&[7.0, -1.0]),
                shape.kv_heads * shape.head_dim,
            ),
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
            scale: 1.0,
            window: None,
        };
        // Two queries; the first must ignore the second position's value.
        let mut out = vec![0.0; 2];
        attention_heads(
            &shape,
            0..shape.kv_heads,
            &[1.0, 1.0],
            KvBlocks::contiguous(
                &halves(&[0.0, 0.0]),
                &halves(&[2.0, 4.0]),
                shape.kv_heads * shape.head_dim,
            ),
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
            scale: 0.25,
            window: Some(5),
        };
        let (positions, width, kv_width) = (11, 6 * 16, 3 * 16);
        let wave = |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<f32>>();
        let (q, keys, values) = (
            wave(width, 0.37),
            halves(&wave(positions * kv_width, 0.11)),
            halves(&wave(positions * kv_width, 0.23)),
        );
        let mut whole = vec![0.0; width];
        attention_heads(
            &shape,
            0..shape.kv_heads,
            &q,
            KvBlocks::contiguous(&keys, &values, kv_width),
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
                KvBlocks::contiguous(&keys, &values, kv_width),
                positions - 1,
                out,
                &mut Vec::new(),
            );
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&whole), bits(&split));
    }

    /// The AVX2 loops (registers-resident for 64-dimensional heads, four
    /// positions at a time for multiples of 16, plain otherwise) agree with
    /// the portable ones.
    #[test]
    fn simd_attention_matches_the_portable_loops() {
        for head_dim in [64, 48, 256, 80] {
            let shape = AttentionShape {
                heads: 9,
                kv_heads: 3,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
                window: Some(9),
            };
            let (t, start) = (3, 14);
            let positions = start + t;
            let (width, kv_width) = (9 * head_dim, 3 * head_dim);
            let wave =
                |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<f32>>();
            let (q, k, v) = (
                wave(t * width, 0.37),
                halves(&wave(positions * kv_width, 0.11)),
                halves(&wave(positions * kv_width, 0.23)),
            );
            let (mut portable, mut fast) = (vec![0.0; t * width], vec![0.0; t * width]);
            let s = start;
            attention_with(
                &shape,
                0..3,
                &q,
                KvBlocks::contiguous(&k, &v, kv_width),
                s,
                &mut portable,
                &mut vec![],
                &Portable,
            );
            attention_heads(
                &shape,
                0..3,
                &q,
                KvBlocks::contiguous(&k, &v, kv_width),
                s,
                &mut fast,
                &mut vec![],
            );
            for (a, b) in portable.iter().zip(&fast) {
                assert!((a - b).abs() < 1e-5, "head_dim {head_dim}: {a} vs {b}");
            }
        }
    }

    /// A sequence's blocks scattered through the memory (a paged cache)
    /// give the same bits as the same positions laid out in one run, for
    /// prefill rows and decode, with and without a window that starts
    /// mid-block, on whichever inner loops this CPU runs.
    #[test]
    fn paged_attention_gives_the_bits_of_a_contiguous_cache() {
        for (head_dim, window) in [(64, None), (64, Some(7)), (16, None), (256, Some(13))] {
            let shape = AttentionShape {
                heads: 4,
                kv_heads: 2,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
                window,
            };
            let (bt, kv_width, width) = (4, 2 * head_dim, 4 * head_dim);
            let wave =
                |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<f32>>();
            for (start, t) in [(0, 19), (18, 1), (9, 3)] {
                let positions = start + t;
                let (k, v) = (
                    halves(&wave(positions * kv_width, 0.11)),
                    halves(&wave(positions * kv_width, 0.23)),
                );
                // Block i of the sequence lives at memory block `table[i]`.
                let table: Vec<u32> = (0..positions.div_ceil(bt) as u32)
                    .map(|b| 11 - 2 * b)
                    .collect();
                let blocks = 12;
                let (mut pk, mut pv) = (
                    vec![f16::ZERO; blocks * bt * kv_width],
                    vec![f16::ZERO; blocks * bt * kv_width],
                );
                for p in 0..positions {
                    let at = (table[p / bt] as usize * bt + p % bt) * kv_width;
                    pk[at..at + kv_width].copy_from_slice(&k[p * kv_width..][..kv_width]);
                    pv[at..at + kv_width].copy_from_slice(&v[p * kv_width..][..kv_width]);
                }
                let paged = KvBlocks {
                    keys: &pk,
                    values: &pv,
                    blocks: &table,
                    block_tokens: bt,
                };
                let q = wave(t * width, 0.37);
                let (mut a, mut b) = (vec![0.0; t * width], vec![0.0; t * width]);
                let flat = KvBlocks::contiguous(&k, &v, kv_width);
                attention_heads(&shape, 0..2, &q, flat, start, &mut a, &mut vec![]);
                attention_heads(&shape, 0..2, &q, paged, start, &mut b, &mut vec![]);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&a),
                    bits(&b),
                    "head_dim {head_dim}, window {window:?}, start {start}"
                );
            }
        }
    }

    #[test]
    fn a_sliding_window_hides_positions_older_than_the_window() {
        let shape = AttentionShape {
            heads: 1,
            kv_heads: 1,
            head_dim: 1,
            scale: 1.0,
            window: Some(2),
        };
        // Zero keys: uniform weights over what is visible. The third query
        // (position 2) sees positions 1 and 2 only.
        let mut out = vec![0.0; 3];
        attention_heads(
            &shape,
            0..1,
            &[1.0, 1.0, 1.0],
            KvBlocks::contiguous(
                &halves(&[0.0; 3]),
                &halves(&[2.0, 4.0, 8.0]),
                shape.kv_heads * shape.head_dim,
            ),
            0,
            &mut out,
            &mut Vec::new(),
        );
        assert_eq!(out, vec![2.0, 3.0, 6.0]);
    }

    #[test]
    fn rope_frequencies_apply_scale_and_per_pair_factors() {
        let params = RopeParams {
            base: 10_000.0,
            scale: 0.5,
        };
        let f = rope_frequencies(4, params, Some(&[1.0, 4.0]));
        assert!((f[0] - 0.5).abs() < 1e-7);
        assert!((f[1] - 0.5 / (100.0 * 4.0)).abs() < 1e-9);
    }

    #[test]
    fn geglu_uses_the_tanh_approximation() {
        let mut out = Vec::new();
        geglu(&[1.0, -3.0, 2.0, 1.0], 2, &mut out);
        // gelu_tanh(1) = 0.841192, gelu_tanh(-3) = -0.003637
        assert!((out[0] - 0.841_192 * 2.0).abs() < 1e-5, "{}", out[0]);
        assert!((out[1] + 0.003_637).abs() < 1e-5, "{}", out[1]);
        // The sigmoid form against the tanh one, out to where e^{-2u}
        // overflows (a gate of -1e4 or -1e30 is -0, not NaN).
        let gates: Vec<f32> = (-400..=400)
            .map(|i| i as f32 * 0.05)
            .chain([-1e30, -1e4, -60.0, 60.0, 1e4, 1e30])
            .collect();
        let gate_up: Vec<f32> = gates
            .iter()
            .copied()
            .chain(gates.iter().map(|_| 1.0))
            .collect();
        geglu(&gate_up, gates.len(), &mut out);
        for (&g, &got) in gates.iter().zip(&out) {
            let inner = 0.797_884_6 * (g + 0.044715 * g * g * g);
            let want = 0.5 * g * (1.0 + f64::from(inner).tanh() as f32);
            assert!(got.is_finite(), "gelu({g}) = {got}");
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "gelu({g}) = {got}, want {want}"
            );
        }
    }

    /// Split over the team or not, every value is its own row's.
    #[test]
    fn gated_activations_split_over_threads_keep_each_row_apart() {
        let (rows, ffn) = (3, 700);
        let gate_up: Vec<f32> = (0..rows * 2 * ffn)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let mut out = Vec::new();
        swiglu(&gate_up, ffn, &mut out);
        assert_eq!(out.len(), rows * ffn);
        for (r, row) in gate_up.chunks_exact(2 * ffn).enumerate() {
            for j in 0..ffn {
                let (g, u) = (row[j], row[ffn + j]);
                assert_eq!(out[r * ffn + j], g / (1.0 + (-g).exp()) * u, "{r} {j}");
            }
        }
    }

    #[test]
    fn swiglu_multiplies_silu_gate_by_up() {
        let mut out = Vec::new();
        swiglu(&[0.0, 2.0, 3.0, 5.0], 2, &mut out);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 / (1.0 + (-2f32).exp()) * 5.0).abs() < 1e-6);
    }
}
