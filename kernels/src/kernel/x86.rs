//! AVX2 + FMA kernels (llama.cpp's `ggml_vec_dot_q4_0_q8_0` family, extended to
//! a register tile of up to `ROW_TILE` activation rows per weight row), with an
//! AVX-VNNI variant and an AVX-512 VNNI one.
//!
//! Blocks are taken in pairs `(2p, 2p + 1)`. One integer dot product covers
//! both: register A holds values `0..16` of block `2p` in its low 128 bits and
//! values `0..16` of block `2p + 1` in its high 128 bits, register B the same
//! for values `16..32`. Summing the products of A and of B per 32-bit lane
//! (`vpmaddubsw` ×2 + `vpaddw` + `vpmaddwd` on AVX2, two chained `vpdpbusd`
//! on AVX-VNNI) leaves block `2p`'s partial dots in lanes 0–3 and block
//! `2p + 1`'s in lanes 4–7, so one convert, one multiply by the activation
//! scales (`QuantizedActivations::dv`, already in that lane pattern) and one
//! FMA with the weight scales serve two blocks. The activations are stored
//! pair-interleaved so A and B are plain loads; Q4 weights come that way
//! naturally (a 32-byte load holds two nibble-packed blocks, low nibbles are
//! values `0..16`), Q8_0 weights take two lane permutes per pair and tile.
//! A row whose block count is odd handles its last block alone, all 8 lanes.
//!
//! Each output has two 8-lane accumulators, one for even pairs and one for
//! odd ones (within each, the pair's even block in lanes 0–3 and its odd
//! block in 4–7), added and reduced in a fixed order at the end; the tile
//! height never enters an output's arithmetic.
//!
//! The integer lane sums are exact on both paths and identical between them,
//! so the AVX2 and AVX-VNNI kernels produce the same bits: `vpmaddubsw`'s
//! saturating 16-bit pair sums never saturate here (|pair| ≤ 2·128·127 <
//! 2¹⁵ for Q8_0 with the sign moved onto x, and the two halves are widened
//! separately; 4·15·127 for the Q4 nibbles, whose two halves are added in 16
//! bits), and `vpdpbusd` sums the same four products per lane in 32 bits.
//!
//! Q4_1 multiplies the raw unsigned nibbles (no per-row sign fix-up) and
//! adds the block offset afterwards as `Σ_b min_b · s_x[b]`, where `s_x` is
//! the activation block's sum (`QuantizedActivations::s`). The signed kinds
//! (Q8_0, and Q4_0 and Q5_0 centred on their zero points 8 and 16 as they
//! are unpacked) need no offset term: AVX2 moves the weights' sign onto the
//! activations so that the unsigned operand is `|w|` (≤ 128), and the VNNI
//! kernels multiply `x + 128` by the signed weights from a sum started at
//! `-128·Σw`, computed once per block pair and shared by the tile's rows.
//! (Q5_0 once ran as Q4_0's unsigned layout with an offset term of
//! `-16·d·s_x` per block and output: centred, 1536 × 576 at eight rows
//! went from 105/99 to 91/90 µs, `cargo bench --bench matmul`.)
//!
//! The other kinds reuse these paths through their packed layouts (see
//! `q5` and `kquant`): Q5_0 and Q5_1 are Q4_0 and Q4_1 once their fifth
//! bits are added to the nibbles (Q5_1's unsigned `0..=31`, so
//! `vpmaddubsw` pair sums stay below 2·31·128 and two still fit in i16;
//! Q5_0's `-16..=15`), spread from their 32-bit words with a byte mask
//! on AVX-512 and with llama.cpp's `bytes_from_bits_32` on 256 bits; Q4_K
//! is Q4_1 and Q5_K is Q5_1 (with f32 factors). Q6_K (and
//! Q3_K) is Q8_0's path (`|w| ≤ 32`) with each lane's sum of four products
//! multiplied by its 16 weights' sub-scale before the two halves are added:
//! by `vpmaddwd` on AVX2 (the pair sums times the sub-scale instead of 1),
//! by `vpmulld` after `vpdpbusd` on VNNI, on 256 and 512 bits; the lane
//! values are exact (|sum| ≤ 2·2·32·127·128 < 2²²) and identical on every
//! kernel. (Measured on an AVX-512 VNNI machine: `vpmulld` on 512 bits
//! 5–20 % faster than `vpmaddwd` on 256, `cargo bench --bench matmul --
//! Q6_K`; per-16 f32 scales with two FMAs per pair were 5–10 % slower.)
//!
//! Weight rows are walked one at a time: streaming several rows in lockstep
//! measured much slower for matrices that do not fit in cache (it defeats the
//! hardware stream prefetcher).
//!
//! The AVX-512 kernel takes blocks four at a time (two pairs): one 64-byte
//! weight load and one `vpdpbusd` on 512 bits do the integer work of two
//! pairs, which at one activation row is what bounds the 256-bit kernels.
//! Its lanes hold exactly the two pairs' 256-bit lanes side by side, and it
//! converts, scales and accumulates them with one 512-bit FMA into a
//! register whose halves are the even-pair and odd-pair accumulators of the
//! 256-bit kernels, so it produces the same bits too. (One accumulator per
//! output took an extract and two 256-bit FMAs per four blocks: at eight
//! rows, Q8_0 49152 × 576 went from 2.85/2.90 to 2.44/2.59 ms with the
//! wide one.) Leftover pairs and an odd last block go through the 256-bit
//! AVX-VNNI code.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{
    byte_quants, fifth_bits, has_mins, kind_id, q8_arithmetic, row_tiles, signed, sub_scaled,
    vnni_unsigned, RowJob, KIND_Q4_0, KIND_Q4_1, KIND_Q5_0, KIND_Q5_1, KIND_Q6_K, KIND_Q8_0,
};
use crate::format::BLOCK;
use crate::packed::PackedMatrix;

/// Calls `$walk::<K, H>` with the layout constant of `$kind` and whether
/// its block scales and mins are f16 (`H`; only Q4_K and Q5_K, in the
/// Q4_1 and Q5_1 layouts, have f32 ones).
macro_rules! by_layout {
    ($walk:ident, $kind:expr, $job:expr) => {
        match (kind_id($kind), $kind.half_scales()) {
            (KIND_Q4_0, _) => $walk::<KIND_Q4_0, true>($job),
            (KIND_Q4_1, true) => $walk::<KIND_Q4_1, true>($job),
            (KIND_Q4_1, false) => $walk::<KIND_Q4_1, false>($job),
            (KIND_Q8_0, _) => $walk::<KIND_Q8_0, true>($job),
            (KIND_Q5_0, _) => $walk::<KIND_Q5_0, true>($job),
            (KIND_Q5_1, true) => $walk::<KIND_Q5_1, true>($job),
            (KIND_Q5_1, false) => $walk::<KIND_Q5_1, false>($job),
            _ => $walk::<KIND_Q6_K, true>($job),
        }
    };
}

/// Fills one chunk's outputs with the AVX2 kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
pub(crate) unsafe fn compute_rows(job: &RowJob<'_>) {
    by_layout!(walk_avx2, job.w.kind, job)
}

/// Fills one chunk's outputs with the AVX-VNNI kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-VNNI.
pub(crate) unsafe fn compute_rows_vnni(job: &RowJob<'_>) {
    if unsigned_missing(job) {
        // Quantized without the unsigned copy: the AVX2 kernel gives the same
        // bits without it.
        return compute_rows(job);
    }
    by_layout!(walk_vnni, job.w.kind, job)
}

/// Whether the activations lack the unsigned copy `qu` that the VNNI
/// kernels multiply signed weights by (Q8_0's, Q6_K's).
fn unsigned_missing(job: &RowJob<'_>) -> bool {
    vnni_unsigned(kind_id(job.w.kind)) && job.x.qu.len() != job.x.q.len()
}

/// Fills one chunk's outputs with the AVX-512 VNNI kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-VNNI, AVX-512 F/BW and AVX-512
/// VNNI.
pub(crate) unsafe fn compute_rows_avx512(job: &RowJob<'_>) {
    // Activations not made for this kernel (the pair layout, or signed
    // weights without the unsigned copy) go to the 256-bit kernel, which
    // reads them.
    if !job.x.quads || unsigned_missing(job) {
        debug_assert!(
            !job.x.quads,
            "four-block activations need the AVX-512 kernel"
        );
        return compute_rows_vnni(job);
    }
    by_layout!(walk_512, job.w.kind, job)
}

/// Pairs `0 .. 2·(pairs / 2)` of a tile, four blocks per step on 512 bits,
/// accumulated exactly as the 256-bit loop would (see the module docs).
/// Returns the first pair left for the 256-bit loop.
///
/// # Safety
/// As for `tile`, with the features of `compute_rows_avx512`; `xq`/`xd` as
/// `tile` sets them up (unsigned activations for Q8_0 and Q6_K).
#[target_feature(enable = "avx2,fma,f16c,avxvnni,avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)] // the row's arrays, then the tile's
unsafe fn quads<const K: u8, const H: bool, const R: usize>(
    quants: *const u8,
    high: *const u32,
    subs: *const i8,
    scales: *const u8,
    pairs: usize,
    xq: &[*const i8; R],
    xd: &[*const f32; R],
    even: &mut [__m256; R],
    odd: &mut [__m256; R],
) -> usize {
    let zero = _mm512_setzero_si512();
    // Low half: the even pairs' accumulator; high half: the odd pairs'.
    let mut acc: [__m512; R] = std::array::from_fn(|r| {
        let low = _mm512_castpd256_pd512(_mm256_castps_pd(even[r]));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(low, _mm256_castps_pd(odd[r])))
    });
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let quads = pairs / 2;
    for q in 0..quads {
        let b = 4 * q;
        // 128-bit lanes: [A(b, b+1) lo, hi, A(b+2, b+3) lo, hi] and the
        // same for B, as two pairs' 256-bit operands side by side.
        let (wa, wb) = if byte_quants(K) {
            let z0 = _mm512_loadu_si512(quants.add(b * 32).cast());
            let z1 = _mm512_loadu_si512(quants.add(b * 32 + 64).cast());
            (
                _mm512_shuffle_i64x2::<0b10_00_10_00>(z0, z1),
                _mm512_shuffle_i64x2::<0b11_01_11_01>(z0, z1),
            )
        } else {
            let packed = _mm512_loadu_si512(quants.add(b * 16).cast());
            let low = _mm512_set1_epi8(0x0F);
            let wa = _mm512_and_si512(packed, low);
            let wb = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low);
            let sixteen = _mm512_set1_epi8(16);
            if fifth_bits(K) && signed(K) {
                // Q5_0 centred: `nibble + 16·bit - 16`, i.e. 16 taken off
                // where the fifth bit is clear.
                let (ka, kb) = fifth_bit_masks(high.add(b));
                (
                    _mm512_mask_sub_epi8(wa, !ka, wa, sixteen),
                    _mm512_mask_sub_epi8(wb, !kb, wb, sixteen),
                )
            } else if fifth_bits(K) {
                let (ka, kb) = fifth_bit_masks(high.add(b));
                (
                    _mm512_mask_add_epi8(wa, ka, wa, sixteen),
                    _mm512_mask_add_epi8(wb, kb, wb, sixteen),
                )
            } else if signed(K) {
                // Q4_0 centred.
                let eight = _mm512_set1_epi8(8);
                (_mm512_sub_epi8(wa, eight), _mm512_sub_epi8(wb, eight))
            } else {
                (wa, wb)
            }
        };
        // The signed kinds: unsigned activations (x + 128) against signed
        // weights, the sum starting at -128·Σw per lane (as in the 256-bit
        // VNNI kernel); Q6_K keeps halves A and B apart for their
        // sub-scales.
        let c = _mm512_set1_epi8(-128);
        let (init, init_b) = if q8_arithmetic(K) {
            let sum = _mm512_dpbusd_epi32(zero, c, wa);
            (
                _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(sum, c, wb)),
                zero,
            )
        } else if sub_scaled(K) {
            (
                _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, c, wa)),
                _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, c, wb)),
            )
        } else {
            (zero, zero)
        };
        // Q6_K: the sub-scales of the four blocks' halves A and B, one per
        // 32-bit lane of the operand they scale.
        let (sub_a, sub_b) = if sub_scaled(K) {
            let eight = _mm512_cvtepi8_epi32(_mm_loadl_epi64(subs.add(2 * b).cast()));
            (
                _mm512_permutexvar_epi32(
                    _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6),
                    eight,
                ),
                _mm512_permutexvar_epi32(
                    _mm512_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7),
                    eight,
                ),
            )
        } else {
            (zero, zero)
        };
        let four = if H {
            _mm_cvtph_ps(_mm_loadl_epi64(scales.add(2 * b).cast()))
        } else {
            _mm_loadu_ps(scales.add(4 * b).cast())
        };
        let dw = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(four));
        for r in 0..R {
            // The four-block layout: one load per half of all four blocks.
            let xa = _mm512_loadu_si512(xq[r].add(b * BLOCK).cast());
            let xb = _mm512_loadu_si512(xq[r].add(b * BLOCK + 64).cast());
            let dot = if q8_arithmetic(K) {
                _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, xa, wa), xb, wb)
            } else if sub_scaled(K) {
                // Per lane, sub-scale × the exact sum of four products: the
                // integer `vpmaddwd` computes on 256 bits.
                let a = _mm512_dpbusd_epi32(init, xa, wa);
                let b = _mm512_dpbusd_epi32(init_b, xb, wb);
                _mm512_add_epi32(_mm512_mullo_epi32(a, sub_a), _mm512_mullo_epi32(b, sub_b))
            } else {
                _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, wa, xa), wb, xb)
            };
            let dx = _mm512_loadu_ps(xd[r].add(2 * q * 8));
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), dx), dw, acc[r]);
        }
    }
    for r in 0..R {
        even[r] = _mm512_castps512_ps256(acc[r]);
        odd[r] = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[r])));
    }
    2 * quads
}

/// The fifth bits of blocks `b .. b + 4` (the words at `high`) as byte
/// masks over `quads`' operands A and B: A holds values `0..16` of each
/// block (bits `0..16` of its word), B values `16..32`.
///
/// # Safety
/// As for `quads`; `high` valid for four reads.
#[target_feature(enable = "avx2,fma,f16c,avxvnni,avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn fifth_bit_masks(high: *const u32) -> (__mmask64, __mmask64) {
    let words = _mm_loadu_si128(high.cast());
    // The low halves of the four words, then the high halves.
    let halves = _mm_shuffle_epi8(
        words,
        _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15),
    );
    (
        _mm_cvtsi128_si64(halves) as u64,
        _mm_extract_epi64::<1>(halves) as u64,
    )
}

/// Defines a walk over a chunk's weight rows and the tile function it calls,
/// compiled for `$features`, with `tile`'s `V` (AVX-VNNI) and `W` (AVX-512)
/// switches. Each tile height is its own function (not inlined into the
/// walk) so that its register allocation is its own.
macro_rules! kernel_variant {
    ($walk:ident, $tile:ident, $features:literal, $v:literal, $w:literal) => {
        /// # Safety
        /// The CPU must support the features this function is compiled for.
        #[target_feature(enable = $features)]
        unsafe fn $walk<const K: u8, const H: bool>(job: &RowJob<'_>) {
            debug_assert_eq!(job.w.scales.is_half(), H);
            let ahead = rows_ahead(job);
            for n in 0..ahead {
                prefetch_row::<K, H>(job, n);
            }
            for n in 0..job.rows {
                prefetch_row::<K, H>(job, n + ahead);
                for (i0, rows) in row_tiles(job.m) {
                    match rows {
                        4 => $tile::<K, H, 4>(job, n, i0),
                        3 => $tile::<K, H, 3>(job, n, i0),
                        2 => $tile::<K, H, 2>(job, n, i0),
                        _ => $tile::<K, H, 1>(job, n, i0),
                    }
                }
            }
        }

        /// # Safety
        /// As for `tile`, with the features this function is compiled for.
        #[target_feature(enable = $features)]
        #[inline(never)]
        unsafe fn $tile<const K: u8, const H: bool, const R: usize>(
            job: &RowJob<'_>,
            n: usize,
            i0: usize,
        ) {
            tile::<K, H, $v, $w, R>(job, n, i0)
        }
    };
}

/// How far ahead of its tiles a walk asks for the weight rows it will
/// read, in bytes of quants. The hardware prefetchers alone kept one
/// stream's decode step near two thirds of the memory bandwidth (Gemma 3's
/// 178 MB head took 7.8 ms at m = 1). In the server, 4 KB ahead beat 1 KB
/// and 16 KB (`benches/inference.sh`, one stream: Gemma 3 75 / 94 / 91
/// tokens/s, Q6_K 161 / 219 / 207).
const PREFETCH_BYTES: usize = 4096;

/// The weight rows a walk asks for ahead of the one it computes.
fn rows_ahead(job: &RowJob<'_>) -> usize {
    let row_bytes = job.w.blocks_per_row() * job.w.kind.quant_bytes();
    (PREFETCH_BYTES / row_bytes.max(1)).max(1)
}

/// Where one weight row's arrays start, as raw pointers so the block loops
/// carry no bounds checks. The arrays a kind lacks are empty and are not
/// offset.
struct RowArrays {
    quants: *const u8,
    scales: *const u8,
    mins: *const u8,
    high: *const u32,
    subs: *const i8,
}

impl RowArrays {
    /// # Safety
    /// `row < w.rows`, and `K` is `w.kind`'s layout.
    #[inline(always)]
    unsafe fn of<const K: u8>(w: &PackedMatrix, row: usize) -> Self {
        let nb = w.blocks_per_row();
        Self {
            quants: w.quants.as_ptr().add(row * nb * w.kind.quant_bytes()),
            scales: w.scales.ptr_at(row * nb),
            mins: w.mins.ptr_at(if has_mins(K) { row * nb } else { 0 }),
            high: w
                .high_bits
                .as_ptr()
                .add(if fifth_bits(K) { row * nb } else { 0 }),
            subs: w
                .sub_scales
                .as_ptr()
                .add(if sub_scaled(K) { row * nb * 2 } else { 0 }),
        }
    }
}

/// Asks the caches for every array of weight row `n0 + n`, if it is this
/// chunk's.
///
/// # Safety
/// `job` as `tile` takes it.
#[inline(always)]
unsafe fn prefetch_row<const K: u8, const H: bool>(job: &RowJob<'_>, n: usize) {
    if n >= job.rows {
        return;
    }
    let nb = job.w.blocks_per_row();
    let arrays = RowArrays::of::<K>(job.w, job.n0 + n);
    let factor_bytes = if H { 2 } else { 4 };
    prefetch_lines(arrays.quants, nb * job.w.kind.quant_bytes());
    prefetch_lines(arrays.scales, nb * factor_bytes);
    if has_mins(K) {
        prefetch_lines(arrays.mins, nb * factor_bytes);
    }
    if fifth_bits(K) {
        prefetch_lines(arrays.high.cast(), nb * 4);
    }
    if sub_scaled(K) {
        prefetch_lines(arrays.subs.cast(), nb * 2);
    }
}

/// Prefetches the cache lines of `bytes` bytes at `p` into L1.
#[inline(always)]
unsafe fn prefetch_lines(p: *const u8, bytes: usize) {
    // Prefetches do not fault, but the pointer arithmetic must stay in the
    // allocation: every line start below is inside `p .. p + bytes`.
    if bytes == 0 {
        return;
    }
    let mut offset = 0;
    while offset < bytes {
        _mm_prefetch::<_MM_HINT_T0>(p.add(offset).cast());
        offset += 64;
    }
    _mm_prefetch::<_MM_HINT_T0>(p.add(bytes - 1).cast());
}

kernel_variant!(walk_avx2, tile_avx2, "avx2,fma,f16c", false, false);
kernel_variant!(walk_vnni, tile_vnni, "avx2,fma,f16c,avxvnni", true, false);
kernel_variant!(
    walk_512,
    tile_512,
    "avx2,fma,f16c,avxvnni,avx512f,avx512bw,avx512vnni",
    true,
    true
);

/// Computes the outputs for weight row `n0 + n` (chunk-local `n`) and
/// activation rows `i0 .. i0 + R`; `H`: the row's scales and mins are f16.
///
/// # Safety
/// The target features of the calling `tile_*` (`V`: AVX-VNNI; `W`: AVX-512
/// VNNI too, which implies `V`); weight row `n0 + n` and
/// activation rows `i0 .. i0 + R` must exist, with `n < job.rows` (so the
/// outputs are this chunk's). `compute_rows`' caller guarantees the ranges; the array
/// lengths are fixed by `PackedMatrix::from_ggml` and
/// `QuantizedActivations::new`.
#[inline(always)]
unsafe fn tile<const K: u8, const H: bool, const V: bool, const W: bool, const R: usize>(
    job: &RowJob<'_>,
    n: usize,
    i0: usize,
) {
    let (w, x, m) = (job.w, job.x, job.m);
    let nb = x.nb;
    let pairs = nb / 2;
    let row = job.n0 + n;
    debug_assert!(row < w.rows && i0 + R <= m && n < job.rows);
    debug_assert!(x.dv.len() == m * nb.div_ceil(2) * 8);

    let arrays = RowArrays::of::<K>(w, row);
    let (quants, scales, high, subs) = (arrays.quants, arrays.scales, arrays.high, arrays.subs);
    // The VNNI Q8_0 and Q6_K paths read the unsigned copy `qu` (see `Q8_0
    // on VNNI` below); `compute_rows_vnni` checked that it is there.
    let unsigned = V && vnni_unsigned(K);
    let base = if unsigned {
        x.qu.as_ptr().cast::<i8>()
    } else {
        x.q.as_ptr()
    };
    let mut xq = [base; R];
    let mut xd = [x.dv.as_ptr(); R];
    for r in 0..R {
        xq[r] = xq[r].add((i0 + r) * nb * BLOCK);
        xd[r] = xd[r].add((i0 + r) * nb.div_ceil(2) * 8);
    }

    let mut even = [_mm256_setzero_ps(); R];
    let mut odd = [_mm256_setzero_ps(); R];
    let first = if W {
        quads::<K, H, R>(
            quants, high, subs, scales, pairs, &xq, &xd, &mut even, &mut odd,
        )
    } else {
        0
    };
    // `first` is even: pairs alternate between the two accumulators.
    let blocks = (quants, high, subs, scales);
    let mut p = first;
    while p + 1 < pairs {
        pair::<K, H, V, R>(blocks, p, &xq, &xd, &mut even);
        pair::<K, H, V, R>(blocks, p + 1, &xq, &xd, &mut odd);
        p += 2;
    }
    if p < pairs {
        pair::<K, H, V, R>(blocks, p, &xq, &xd, &mut even);
    }
    if !nb.is_multiple_of(2) {
        // Only the 32-weight kinds get here: a K-quant row has 8k blocks.
        debug_assert!(!sub_scaled(K));
        let b = nb - 1;
        let (weights, signs) = unpack_single::<K>(quants, high, b);
        let init = if unsigned {
            let c = _mm256_set1_epi8(-128);
            let sum = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), c, signs);
            _mm256_sub_epi32(_mm256_setzero_si256(), sum)
        } else {
            _mm256_setzero_si256()
        };
        let dw = _mm256_set1_ps(factor::<H>(scales, b));
        for r in 0..R {
            let xv = _mm256_loadu_si256(xq[r].add(b * BLOCK).cast());
            let dot = if unsigned {
                _mm256_dpbusd_avx_epi32(init, xv, signs)
            } else if signed(K) {
                dot_single::<V>(weights, _mm256_sign_epi8(xv, signs))
            } else {
                dot_single::<V>(weights, xv)
            };
            let dx = _mm256_loadu_ps(xd[r].add(pairs * 8));
            even[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), dx), dw, even[r]);
        }
    }

    for (r, (even, odd)) in even.iter().zip(&odd).enumerate() {
        let mut v = hsum(_mm256_add_ps(*even, *odd));
        // The offset term of the unsigned layouts, Σ_b min_b · s_x[b], a dot
        // product over blocks.
        if has_mins(K) {
            v += dot_factors::<H>(arrays.mins, x.s.as_ptr().add((i0 + r) * nb), nb);
        }
        job.out.set(i0 + r, row, v);
    }
}

/// Block pair `p` of a weight row (`(quants, high, subs, scales)` as
/// `RowArrays` gives them) against the tile's rows, into `acc`.
///
/// # Safety
/// As for `tile`, whose features the caller has; `p < nb / 2`.
#[inline(always)]
unsafe fn pair<const K: u8, const H: bool, const V: bool, const R: usize>(
    (quants, high, subs, scales): (*const u8, *const u32, *const i8, *const u8),
    p: usize,
    xq: &[*const i8; R],
    xd: &[*const f32; R],
    acc: &mut [__m256; R],
) {
    let unsigned = V && vnni_unsigned(K);
    let spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    let b = 2 * p;
    let (wa, wb, sa, sb) = unpack_pair::<K, V>(quants, high, b);
    // The signed kinds on VNNI: the activations come as x + 128
    // (unsigned) and the weights signed, so the sum starts at -128·Σw
    // per lane, computed once per tile (exact: |128·Σw| ≤ 2¹⁷ over a
    // lane's 8 weights); Q6_K keeps halves A and B apart.
    let zero = _mm256_setzero_si256();
    let c = _mm256_set1_epi8(-128);
    let (init, init_b) = if unsigned && sub_scaled(K) {
        (
            _mm256_sub_epi32(zero, _mm256_dpbusd_avx_epi32(zero, c, sa)),
            _mm256_sub_epi32(zero, _mm256_dpbusd_avx_epi32(zero, c, sb)),
        )
    } else if unsigned {
        let sum = _mm256_dpbusd_avx_epi32(zero, c, sa);
        (
            _mm256_sub_epi32(zero, _mm256_dpbusd_avx_epi32(sum, c, sb)),
            zero,
        )
    } else {
        (zero, zero)
    };
    // Q6_K: the sub-scales of halves A and B in A's and B's lane
    // pattern, as i16 pairs for `vpmaddwd` or, on VNNI, as i32 lanes.
    let (sub_a, sub_b) = if sub_scaled(K) {
        sub_scales_pair::<V>(subs.add(2 * b))
    } else {
        (zero, zero)
    };
    // [d_w(b) ×4, d_w(b+1) ×4]: one 4-byte load and a convert (or one
    // 8-byte load) and a lane permute.
    let two = if H {
        let halves = std::ptr::read_unaligned(scales.add(2 * b).cast::<i32>());
        _mm_cvtph_ps(_mm_cvtsi32_si128(halves))
    } else {
        let singles = std::ptr::read_unaligned(scales.add(4 * b).cast::<i64>());
        _mm_castsi128_ps(_mm_cvtsi64_si128(singles))
    };
    let dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), spread);
    for r in 0..R {
        let xa = _mm256_loadu_si256(xq[r].add(b * BLOCK).cast());
        let xb = _mm256_loadu_si256(xq[r].add(b * BLOCK + 32).cast());
        let dot = if unsigned && sub_scaled(K) {
            let a = _mm256_dpbusd_avx_epi32(init, xa, sa);
            let b = _mm256_dpbusd_avx_epi32(init_b, xb, sb);
            _mm256_add_epi32(_mm256_mullo_epi32(a, sub_a), _mm256_mullo_epi32(b, sub_b))
        } else if unsigned {
            let a = _mm256_dpbusd_avx_epi32(init, xa, sa);
            _mm256_dpbusd_avx_epi32(a, xb, sb)
        } else if sub_scaled(K) {
            let a = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(xa, sa));
            let b = _mm256_maddubs_epi16(wb, _mm256_sign_epi8(xb, sb));
            _mm256_add_epi32(_mm256_madd_epi16(a, sub_a), _mm256_madd_epi16(b, sub_b))
        } else if signed(K) {
            let (xa, xb) = (_mm256_sign_epi8(xa, sa), _mm256_sign_epi8(xb, sb));
            dot_pair::<K, V>(wa, xa, wb, xb)
        } else {
            dot_pair::<K, V>(wa, xa, wb, xb)
        };
        // (dot · d_x) · d_w: the activation scales are a full-width load
        // already in the lane pattern, the weight scales are shared by
        // the tile.
        let dx = _mm256_loadu_ps(xd[r].add(p * 8));
        acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), dx), dw, acc[r]);
    }
}

/// Q6_K's sub-scales `[a(b), b(b), a(b+1), b(b+1)]` at `s` for halves A
/// and B of the block pair: `a(b)` in every lane of the low 128 bits and
/// `a(b+1)` in the high ones, and the same for B; as i32 lanes if `V` (the
/// VNNI kernels' `vpmulld`), else as the i16 multipliers of `vpmaddwd`.
///
/// # Safety
/// AVX2 must be available and `s` valid for four reads.
#[inline(always)]
unsafe fn sub_scales_pair<const V: bool>(s: *const i8) -> (__m256i, __m256i) {
    let word = _mm_cvtsi32_si128(std::ptr::read_unaligned(s.cast::<i32>()));
    if V {
        let four = _mm256_cvtepi8_epi32(word);
        return (
            _mm256_permutevar8x32_epi32(four, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)),
            _mm256_permutevar8x32_epi32(four, _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3)),
        );
    }
    let four = _mm_cvtepi8_epi16(word);
    let both = _mm256_broadcastsi128_si256(four);
    // i16 `k` of `four` is bytes 2k, 2k + 1: A takes i16 0 (low 128 bits)
    // and 2 (high), B i16 1 and 3.
    let a = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, //
        4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5,
    );
    let b = _mm256_setr_epi8(
        2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, //
        6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7,
    );
    (_mm256_shuffle_epi8(both, a), _mm256_shuffle_epi8(both, b))
}

/// Blocks `b` and `b + 1` of a weight row as the unsigned operands `(A, B)`
/// of the paired dot product, plus the signed values `(A, B)` of the signed
/// layouts, whose signs go onto the activations (for Q8_0 on VNNI,
/// the signed values are the operands and the unsigned ones are not
/// computed).
///
/// # Safety
/// AVX2 must be available; `b + 1` must be a block of the row at `quants`
/// (and at `high`, for Q5_0 and Q5_1).
#[inline(always)]
unsafe fn unpack_pair<const K: u8, const V: bool>(
    quants: *const u8,
    high: *const u32,
    b: usize,
) -> (__m256i, __m256i, __m256i, __m256i) {
    let (sa, sb) = if byte_quants(K) {
        let first = _mm256_loadu_si256(quants.add(b * 32).cast());
        let second = _mm256_loadu_si256(quants.add(b * 32 + 32).cast());
        (
            _mm256_permute2x128_si256(first, second, 0x20),
            _mm256_permute2x128_si256(first, second, 0x31),
        )
    } else {
        // Two nibble-packed blocks: byte j of a block holds values j (low
        // nibble) and j + 16 (high nibble).
        let packed = _mm256_loadu_si256(quants.add(b * 16).cast());
        let low = _mm256_set1_epi8(0x0F);
        let wa = _mm256_and_si256(packed, low);
        let wb = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
        let (ha, hb) = if fifth_bits(K) {
            fifth_bits_pair(high.add(b))
        } else {
            (_mm256_setzero_si256(), _mm256_setzero_si256())
        };
        (nibble_values::<K>(wa, ha), nibble_values::<K>(wb, hb))
    };
    // VNNI multiplies the signed kinds' values directly (Q6_K's too, see
    // `pair`); AVX2 multiplies their magnitudes by the activations with
    // the weights' signs moved onto them.
    if signed(K) && !(V && q8_arithmetic(K)) {
        return (_mm256_sign_epi8(sa, sa), _mm256_sign_epi8(sb, sb), sa, sb);
    }
    (sa, sb, sa, sb)
}

/// Nibbles (`0..=15` per byte) as the kernels multiply them: Q5_1's with 16
/// added where the fifth bit is set, Q5_0's centred (16 taken off where it
/// is clear), Q4_0's centred on 8, Q4_1's as they are. `set`: the fifth
/// bits as bytes 0xFF or 0 (`bits_to_bytes`), read only for the Q5 kinds.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn nibble_values<const K: u8>(nibbles: __m256i, set: __m256i) -> __m256i {
    let sixteen = _mm256_set1_epi8(16);
    match (fifth_bits(K), signed(K)) {
        (true, true) => _mm256_sub_epi8(nibbles, _mm256_andnot_si256(set, sixteen)),
        (true, false) => _mm256_or_si256(nibbles, _mm256_and_si256(set, sixteen)),
        (false, true) => _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8)),
        (false, false) => nibbles,
    }
}

/// The fifth bits of blocks `b` and `b + 1` (the words at `high`) in the
/// pair layout of `unpack_pair`, as bytes 0xFF (set) or 0 (clear): A holds
/// bits `0..16` of each block, B bits `16..32` (llama.cpp's
/// `bytes_from_bits_32`, with the bytes picked for the pair).
///
/// # Safety
/// AVX2 must be available and `high` valid for two reads.
#[inline(always)]
unsafe fn fifth_bits_pair(high: *const u32) -> (__m256i, __m256i) {
    let both = _mm256_set1_epi64x(std::ptr::read_unaligned(high.cast::<i64>()));
    // Byte `k` of a word covers weights `8k .. 8k + 8`; block `b`'s word is
    // bytes 0–3 of each 64-bit lane, block `b + 1`'s bytes 4–7. Each 8-byte
    // run of a mask repeats the index of the byte it copies.
    const RUN: i64 = 0x0101_0101_0101_0101;
    let pick_a = _mm256_setr_epi64x(0, RUN, 4 * RUN, 5 * RUN);
    let pick_b = _mm256_setr_epi64x(2 * RUN, 3 * RUN, 6 * RUN, 7 * RUN);
    (
        bits_to_bytes(_mm256_shuffle_epi8(both, pick_a)),
        bits_to_bytes(_mm256_shuffle_epi8(both, pick_b)),
    )
}

/// Byte `i` of `bytes` (each a copy of the byte holding its bit) becomes
/// 0xFF if its bit `i % 8` is set, else 0.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn bits_to_bytes(bytes: __m256i) -> __m256i {
    // Every bit but bit `i % 8` set: all ones exactly when that bit was.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi8(-1))
}

/// Block `b` alone, in natural order: the unsigned operand and the values
/// (signed for the signed layouts).
///
/// # Safety
/// AVX2 must be available; `b` must be a block of the row at `quants` (and
/// at `high`, for Q5_0 and Q5_1).
#[inline(always)]
unsafe fn unpack_single<const K: u8>(
    quants: *const u8,
    high: *const u32,
    b: usize,
) -> (__m256i, __m256i) {
    let q = if byte_quants(K) {
        _mm256_loadu_si256(quants.add(b * 32).cast())
    } else {
        let packed = _mm_loadu_si128(quants.add(b * 16).cast());
        let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
        let nibbles = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
        let set = if fifth_bits(K) {
            // Byte `i / 8` of the word for weight `i`, as in `fifth_bits_pair`.
            const RUN: i64 = 0x0101_0101_0101_0101;
            let pick = _mm256_setr_epi64x(0, RUN, 2 * RUN, 3 * RUN);
            let word = _mm256_set1_epi32(std::ptr::read_unaligned(high.add(b)) as i32);
            bits_to_bytes(_mm256_shuffle_epi8(word, pick))
        } else {
            _mm256_setzero_si256()
        };
        nibble_values::<K>(nibbles, set)
    };
    if signed(K) {
        (_mm256_sign_epi8(q, q), q)
    } else {
        (q, q)
    }
}

/// Per 32-bit lane: the sum of the four byte products of `wa·xa` plus those of
/// `wb·xb` (`w` unsigned, `x` signed), exactly.
///
/// # Safety
/// AVX2, and AVX-VNNI if `V`.
#[inline(always)]
unsafe fn dot_pair<const K: u8, const V: bool>(
    wa: __m256i,
    xa: __m256i,
    wb: __m256i,
    xb: __m256i,
) -> __m256i {
    if V {
        let a = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), wa, xa);
        _mm256_dpbusd_avx_epi32(a, wb, xb)
    } else {
        let ones = _mm256_set1_epi16(1);
        let a = _mm256_maddubs_epi16(wa, xa);
        let b = _mm256_maddubs_epi16(wb, xb);
        if byte_quants(K) {
            // Pair sums up to 2·128·127: widen each before adding.
            _mm256_add_epi32(_mm256_madd_epi16(a, ones), _mm256_madd_epi16(b, ones))
        } else {
            // Nibble pair sums are at most 2·15·127 (Q5's 2·31·127, the
            // centred kinds' 2·16·127); two of them fit in i16.
            _mm256_madd_epi16(_mm256_add_epi16(a, b), ones)
        }
    }
}

/// Per 32-bit lane: the sum of the four byte products of `w·x`, exactly.
///
/// # Safety
/// AVX2, and AVX-VNNI if `V`.
#[inline(always)]
unsafe fn dot_single<const V: bool>(w: __m256i, x: __m256i) -> __m256i {
    if V {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }
}

/// Factor `i` of the block factors at `a` (f16 if `H`, else f32), widened.
///
/// # Safety
/// F16C must be available and `a` valid for factor `i`.
#[inline(always)]
unsafe fn factor<const H: bool>(a: *const u8, i: usize) -> f32 {
    if H {
        let half = std::ptr::read_unaligned(a.add(2 * i).cast::<u16>());
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(half))))
    } else {
        std::ptr::read_unaligned(a.add(4 * i).cast::<f32>())
    }
}

/// `Σ a[i] · b[i]` over `len` values, eight lanes then the tail, in a fixed
/// order; `a` are block factors (f16 if `H`, widened exactly, else f32).
///
/// # Safety
/// AVX2, FMA and F16C must be available and both pointers valid for `len`
/// reads.
#[inline(always)]
unsafe fn dot_factors<const H: bool>(a: *const u8, b: *const f32, len: usize) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= len {
        let eight = if H {
            _mm256_cvtph_ps(_mm_loadu_si128(a.add(2 * i).cast()))
        } else {
            _mm256_loadu_ps(a.add(4 * i).cast())
        };
        acc = _mm256_fmadd_ps(eight, _mm256_loadu_ps(b.add(i)), acc);
        i += 8;
    }
    let mut sum = hsum(acc);
    while i < len {
        sum += factor::<H>(a, i) * *b.add(i);
        i += 1;
    }
    sum
}

/// Sums the eight lanes in a fixed order.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}
