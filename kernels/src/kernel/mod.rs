//! The batched matmul: quantize the activations once, split the weight rows
//! into chunks for the compute team (`crate::team`), and run a register-tiled
//! kernel on each.
//!
//! Determinism: every output element `(i, n)` is produced by one call to a tile
//! kernel that walks the blocks of weight row `n` in order with its own
//! accumulators, and whose per-element arithmetic does not depend on the tile
//! height. Tile shapes, chunk boundaries and threads therefore only decide *where*
//! an element is computed, never *how*, so a row of `x` yields the same bits
//! alone or inside any batch. The backend (AVX2 or portable) is chosen once per
//! process; the two backends are not bit-identical to each other. Within the
//! AVX2 backend, AVX-VNNI's `vpdpbusd` replaces `vpmaddubsw` + `vpmaddwd` where
//! the CPU has it, and AVX-512 VNNI takes four blocks per step where it has
//! that too; the integer dot products are exact either way and the float
//! steps are the same, so the three x86 kernels give the same bits (the tests
//! check this).

mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use crate::activation::QuantizedActivations;
use crate::format::QuantKind;
use crate::packed::PackedMatrix;
use crate::team;

/// The instruction set the kernels run on, detected once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// x86-64 with AVX2, FMA and F16C: 32-byte integer dot products per block
    /// pair, with AVX-VNNI's `vpdpbusd` where the CPU has it (same bits).
    Avx2,
    /// Plain Rust for any other CPU; LLVM vectorizes it for the baseline target.
    Portable,
}

/// The backend every `matmul` in this process uses.
pub fn backend() -> Backend {
    static DETECTED: OnceLock<Backend> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

fn detect() -> Backend {
    #[cfg(target_arch = "x86_64")]
    {
        // F16C widens the packed f16 block scales; every AVX2 CPU has it.
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Backend::Avx2;
        }
    }
    Backend::Portable
}

/// The instructions the matmuls run on in this process, for logs and health
/// reports: `backend()` refined by the optional extensions the kernels use.
pub fn instruction_set() -> &'static str {
    match kernel_for(backend()) {
        Kernel::Avx512Vnni => "AVX-512 VNNI",
        Kernel::AvxVnni => "AVX-VNNI",
        Kernel::Avx2 => "AVX2",
        Kernel::Portable => "portable",
    }
}

/// The kernel `compute_rows` runs: the public `Backend`, refined by optional
/// instructions within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AVX2 + FMA.
    Avx2,
    /// AVX2 + FMA with AVX-VNNI's 256-bit `vpdpbusd` for the integer dots.
    AvxVnni,
    /// AvxVnni with AVX-512 VNNI doing four blocks per step (same bits).
    Avx512Vnni,
    /// Plain Rust.
    Portable,
}

impl Kernel {
    /// Whether the kernel wants `QuantizedActivations::qu` for `kind`: the
    /// VNNI kernels multiply signed weights by unsigned activations.
    pub(crate) fn unsigned_activations(self, kind: QuantKind) -> bool {
        matches!(self, Kernel::AvxVnni | Kernel::Avx512Vnni) && vnni_unsigned(kind_id(kind))
    }

    /// Whether the kernel wants the activations in the four-block layout.
    pub(crate) fn quad_activations(self) -> bool {
        self == Kernel::Avx512Vnni
    }
}

/// The kernel for `backend` on this CPU, detected once per process.
pub(crate) fn kernel_for(backend: Backend) -> Kernel {
    match backend {
        Backend::Avx2 => {
            static KERNEL: OnceLock<Kernel> = OnceLock::new();
            *KERNEL.get_or_init(|| match (detect_vnni(), detect_avx512_vnni()) {
                (true, true) => Kernel::Avx512Vnni,
                (true, false) => Kernel::AvxVnni,
                _ => Kernel::Avx2,
            })
        }
        Backend::Portable => Kernel::Portable,
    }
}

fn detect_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX-512 F/BW/VNNI, used on top of AVX-VNNI (whose 256-bit code handles
/// the tails); a CPU with one but not the other keeps the 256-bit kernel.
fn detect_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Chunks below this much work (weights × (activation rows + 2), a rough count
/// of multiply-adds plus the cost of streaming the weights; 2²⁰ is about
/// 10–20 µs on one AVX2 core) run on one thread: handing work to the pool
/// from outside it costs several microseconds, more on a loaded machine. Below
/// it, SmolLM2's 576×576 and smaller projections run inline at m = 1.
const MIN_CHUNK_WORK: usize = 1 << 20;

/// Work (as `MIN_CHUNK_WORK` counts it) per chunk of a one- or two-row
/// matmul, at least: about 3–5 µs, worth a hand-off to a spinning worker.
/// Such a matmul is split into that many equal chunks, at most one per
/// thread.
const EVEN_SPLIT_WORK: usize = 1 << 18;

/// Chunks per pool thread when there is enough work, so a slow thread (or one
/// busy with something else) does not hold up the whole call.
const CHUNKS_PER_THREAD: usize = 4;

/// Computes `out = x · Wᵀ` for already-validated shapes: quantizes `x`
/// once, then runs the kernel.
pub(crate) fn matmul(w: &PackedMatrix, x: &[f32], m: usize, out: &mut [f32], backend: Backend) {
    let kernel = kernel_for(backend);
    let unsigned = kernel.unsigned_activations(w.kind);
    let quads = kernel.quad_activations();
    let x = QuantizedActivations::new(x, m, w.cols, unsigned, quads);
    let chunk_rows = chunk_rows(w.rows, w.cols, m, team::threads());
    matmul_split(w, &x, m, out, kernel, chunk_rows);
}

/// `matmul` with an explicit chunk size (tests use odd ones to prove the split
/// does not change results).
pub(crate) fn matmul_split(
    w: &PackedMatrix,
    x: &QuantizedActivations,
    m: usize,
    out: &mut [f32],
    kernel: Kernel,
    chunk_rows: usize,
) {
    let n = w.rows;
    if m == 0 || n == 0 {
        return;
    }
    assert_eq!(out.len(), m * n, "matmul output of the wrong size");
    let chunk_rows = chunk_rows.max(1);
    // Each chunk writes its own columns of every output row, in place (a
    // transposed buffer copied back afterwards was serial work between the
    // matmuls of a batched step).
    let out = Output {
        ptr: out.as_mut_ptr(),
        len: out.len(),
        stride: n,
    };
    if chunk_rows >= n {
        compute_rows(w, x, m, 0..n, out, kernel);
    } else {
        team::for_each(n.div_ceil(chunk_rows), |c| {
            let n0 = c * chunk_rows;
            compute_rows(w, x, m, n0..n.min(n0 + chunk_rows), out, kernel)
        });
    }
}

/// The `m × n` output of a matmul as the chunks share it: output `(i, j)`
/// (activation row `i`, weight row `j`) at `ptr + i · stride + j`. Each
/// chunk writes only the columns of its own weight rows, so no two write
/// the same element; `matmul_split` holds the `&mut` borrow of the buffer
/// until every chunk has returned.
#[derive(Clone, Copy)]
pub(crate) struct Output {
    ptr: *mut f32,
    len: usize,
    stride: usize,
}

// SAFETY: see `Output`: the chunks on other threads write disjoint elements
// of a buffer that outlives them.
unsafe impl Send for Output {}
// SAFETY: as above.
unsafe impl Sync for Output {}

impl Output {
    /// Writes output `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must be inside the matrix, and no other thread may write it.
    #[inline(always)]
    pub(crate) unsafe fn set(self, i: usize, j: usize, value: f32) {
        let at = i * self.stride + j;
        debug_assert!(j < self.stride && at < self.len);
        *self.ptr.add(at) = value;
    }
}

/// Weight rows per parallel chunk: big enough to amortize scheduling, small
/// enough to give every thread several chunks, and equal, a whole number of
/// them per thread, so that no thread is left waiting at the end of a
/// matmul for the other's extra chunk (at 8 streams on 2 threads, the
/// uneven split of the former sizing, e.g. 182 + 182 rows against 182 + 30
/// for a 576-row projection, kept a thread spinning for a quarter of the
/// step).
fn chunk_rows(n: usize, cols: usize, m: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let work = n * (cols * (m + 2)).max(1);
    // Decoding one or two streams, a matmul is tens of microseconds: one
    // equal chunk per thread (the threshold split 960 rows 607/353).
    if m <= 2 {
        let chunks = (work / EVEN_SPLIT_WORK).clamp(1, threads);
        return n.div_ceil(chunks);
    }
    // Bigger batches keep several chunks per thread, which absorbs a thread
    // the OS takes away.
    let chunks = (work / MIN_CHUNK_WORK).min(threads * CHUNKS_PER_THREAD);
    if chunks < threads {
        return n.div_ceil(chunks.max(1));
    }
    n.div_ceil(chunks - chunks % threads)
}

/// Fills the columns `rows` (weight rows) of `out` for all `m` rows.
fn compute_rows(
    w: &PackedMatrix,
    x: &QuantizedActivations,
    m: usize,
    rows: std::ops::Range<usize>,
    out: Output,
    kernel: Kernel,
) {
    debug_assert!(rows.end <= w.rows && out.len == m * w.rows);
    let job = RowJob {
        w,
        x,
        m,
        n0: rows.start,
        rows: rows.len(),
        out,
    };
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            // SAFETY: `Kernel::Avx2` comes from `Backend::Avx2`, which `detect`
            // only produces after confirming AVX2, FMA and F16C at runtime (tests
            // construct both the same way).
            unsafe { x86::compute_rows(&job) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => {
            // SAFETY: as above, and `kernel_for` only picks it after
            // `detect_vnni` confirmed AVX-VNNI (tests likewise).
            unsafe { x86::compute_rows_vnni(&job) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => {
            // SAFETY: as above, and `kernel_for` only picks it after
            // `detect_avx512_vnni` confirmed AVX-512 F/BW/VNNI too.
            unsafe { x86::compute_rows_avx512(&job) }
        }
        _ => portable::compute_rows(&job),
    }
}

/// One chunk of work: weight rows `n0 .. n0 + rows`, all `m` activation
/// rows, written into those columns of `out`.
pub(crate) struct RowJob<'a> {
    pub(crate) w: &'a PackedMatrix,
    pub(crate) x: &'a QuantizedActivations,
    pub(crate) m: usize,
    pub(crate) n0: usize,
    pub(crate) rows: usize,
    pub(crate) out: Output,
}

/// Activation rows per register tile: each unpacked weight block pair and its
/// scales are shared by this many rows (one 8-lane accumulator per row, see
/// `x86`). Eight rows fit the register file too but measured no faster (the
/// pair unpack is a handful of instructions, and eight rows spill a little).
pub(crate) const ROW_TILE: usize = 4;

/// The register tiles covering `m` activation rows: `(first row, rows)` with
/// `rows` in `1..=ROW_TILE`.
pub(crate) fn row_tiles(m: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..m)
        .step_by(ROW_TILE)
        .map(move |i0| (i0, (m - i0).min(ROW_TILE)))
}

/// The packed layout as a const-generic parameter (enums cannot be one on
/// stable), so each kernel is compiled once per layout with the branches
/// folded away. Q4_K packs into Q4_1's layout and runs as `KIND_Q4_1`, Q5_K
/// into Q5_1's, Q3_K into Q6_K's.
/// Nibbles centred on 8 (`-8..=7` once unpacked): Q8_0's arithmetic.
pub(crate) const KIND_Q4_0: u8 = 0;
/// Unsigned nibbles and a stored min per block.
pub(crate) const KIND_Q4_1: u8 = 1;
pub(crate) const KIND_Q8_0: u8 = 2;
/// Signed bytes (`-32..=31`), a scale per block and an 8-bit sub-scale per
/// 16 weights.
pub(crate) const KIND_Q6_K: u8 = 4;
/// Q4 nibbles plus a word of fifth bits per block, centred on 16
/// (`-16..=15`) once spread: Q8_0's arithmetic, as Q4_0.
pub(crate) const KIND_Q5_0: u8 = 5;
/// Q5_0's layout, unsigned (`0..=31`), with a stored min per block: Q4_1's
/// arithmetic.
pub(crate) const KIND_Q5_1: u8 = 6;

/// The kernel layout `kind` is packed in.
pub(crate) const fn kind_id(kind: QuantKind) -> u8 {
    match kind {
        QuantKind::Q4_0 => KIND_Q4_0,
        QuantKind::Q4_1 | QuantKind::Q4_K => KIND_Q4_1,
        QuantKind::Q8_0 => KIND_Q8_0,
        QuantKind::Q5_0 => KIND_Q5_0,
        QuantKind::Q5_1 | QuantKind::Q5_K => KIND_Q5_1,
        QuantKind::Q3_K | QuantKind::Q6_K => KIND_Q6_K,
    }
}

/// One byte per weight (otherwise two nibbles per byte).
pub(crate) const fn byte_quants(k: u8) -> bool {
    matches!(k, KIND_Q8_0 | KIND_Q6_K)
}

/// A word of fifth bits per block on top of the nibbles.
pub(crate) const fn fifth_bits(k: u8) -> bool {
    matches!(k, KIND_Q5_0 | KIND_Q5_1)
}

/// Signed weights (otherwise unsigned, with a stored min per block).
pub(crate) const fn signed(k: u8) -> bool {
    matches!(k, KIND_Q8_0 | KIND_Q6_K | KIND_Q4_0 | KIND_Q5_0)
}

/// Q8_0's arithmetic: signed weights without sub-scales, multiplied by
/// unsigned activations on VNNI (Q4_0 and Q5_0 once unpacked and centred).
pub(crate) const fn q8_arithmetic(k: u8) -> bool {
    matches!(k, KIND_Q8_0 | KIND_Q4_0 | KIND_Q5_0)
}

/// A stored min per block (otherwise signed weights and no offset).
pub(crate) const fn has_mins(k: u8) -> bool {
    matches!(k, KIND_Q4_1 | KIND_Q5_1)
}

/// An 8-bit sub-scale per 16 weights, applied in the integer dot product.
pub(crate) const fn sub_scaled(k: u8) -> bool {
    k == KIND_Q6_K
}

/// Signed weights that the VNNI kernels multiply by unsigned activations
/// (`x + 128`, `QuantizedActivations::qu`), the sum starting at `-128·Σw`:
/// `vpdpbusd` takes its unsigned operand first.
pub(crate) const fn vnni_unsigned(k: u8) -> bool {
    q8_arithmetic(k) || sub_scaled(k)
}
