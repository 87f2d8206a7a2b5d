//! Batched quantized matmul vs the naive f32 reference, on SmolLM2-135M shapes.
//!
//! `cargo bench -p maas-kernels --bench matmul`. What matters is the ratios:
//! kernel vs reference in the same run, m = 8 vs m = 1 (batching gain), and
//! each repacked kind vs Q4_1 on the same shape (they run as 32-weight
//! blocks: Q4_K in Q4_1's layout, Q5_0/Q5_1 as nibbles plus fifth bits
//! spread per block, Q5_K/Q6_K in Q8_0's byte layout).

// A bench binary, not library code: failing to build its fixed input is a bug
// in the bench and should stop it.
#![allow(clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use maas_kernels::{reference_matmul, PackedMatrix, QuantKind};

/// Deterministic pseudo-random bytes (no RNG dependency needed for a bench).
fn noise(len: usize, seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed | 1;
    (0..len).map(move |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    })
}

fn ggml_bytes(kind: QuantKind, rows: usize, cols: usize) -> Vec<u8> {
    let blocks = rows * cols / kind.block_weights();
    let mut raw = Vec::with_capacity(blocks * kind.block_bytes());
    let mut bytes = noise(blocks * kind.block_bytes(), 42);
    let half = |v: f32| f16::from_f32(v).to_le_bytes();
    for _ in 0..blocks {
        // The f16 header fields (Q6_K's `d` is a trailer), then noise for
        // the quants and the K-quants' integer scales.
        let (head, tail): (Vec<u8>, Vec<u8>) = match kind {
            QuantKind::Q4_1 | QuantKind::Q5_1 => ([half(0.01), half(-0.08)].concat(), vec![]),
            QuantKind::Q4_K | QuantKind::Q5_K => ([half(0.0003), half(0.002)].concat(), vec![]),
            QuantKind::Q6_K => (vec![], half(0.0002).to_vec()),
            QuantKind::Q3_K => (vec![], half(0.0005).to_vec()),
            _ => (half(0.01).to_vec(), vec![]),
        };
        let quants = kind.block_bytes() - head.len() - tail.len();
        raw.extend(head);
        raw.extend(bytes.by_ref().take(quants).map(|v| v as u8));
        raw.extend(tail);
    }
    raw
}

fn activations(m: usize, cols: usize) -> Vec<f32> {
    noise(m * cols, 7)
        .map(|v| (v % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

fn packed(kind: QuantKind, rows: usize, cols: usize) -> PackedMatrix {
    match PackedMatrix::from_ggml(kind, &ggml_bytes(kind, rows, cols), rows, cols) {
        Ok(w) => w,
        Err(e) => panic!("bench matrix: {e}"),
    }
}

/// Batch sizes for the kernel: decode steps at 1–16 concurrent sequences.
const BATCHES: [usize; 4] = [1, 4, 8, 16];

/// The f32 reference is slow; two batch sizes show its scaling.
const REFERENCE_BATCHES: [usize; 2] = [1, 8];

fn short_group<'a>(
    c: &'a mut Criterion,
    name: String,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

/// One matrix, called repeatedly: it stays in cache (L2 for the Q4 shapes).
fn bench_shape(c: &mut Criterion, kind: QuantKind, rows: usize, cols: usize) {
    let w = packed(kind, rows, cols);
    let dense = w.dequantize();
    let mut group = short_group(c, format!("{kind}_{rows}x{cols}"));
    for m in BATCHES {
        let x = activations(m, cols);
        let mut out = vec![0.0; m * rows];
        // Rows per second is the batching figure of merit.
        group.throughput(Throughput::Elements(m as u64));
        group.bench_with_input(BenchmarkId::new("kernel", m), &m, |b, &m| {
            b.iter(|| w.matmul(black_box(&x), m, &mut out))
        });
        if REFERENCE_BATCHES.contains(&m) {
            group.bench_with_input(BenchmarkId::new("reference_f32", m), &m, |b, &m| {
                b.iter(|| reference_matmul(&dense, rows, cols, black_box(&x), m))
            });
        }
    }
    group.finish();
}

/// A decode step streams every layer's weights from DRAM (SmolLM2-135M's
/// quantized weights are several times the L3), so cycle through enough
/// copies of the matrix that none is still cached when its turn comes.
fn bench_cold(c: &mut Criterion, kind: QuantKind, rows: usize, cols: usize, copies: usize) {
    let ws: Vec<PackedMatrix> = (0..copies).map(|_| packed(kind, rows, cols)).collect();
    let mut group = short_group(c, format!("{kind}_{rows}x{cols}_cold"));
    for m in BATCHES {
        let x = activations(m, cols);
        let mut out = vec![0.0; m * rows];
        group.throughput(Throughput::Elements(m as u64));
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("kernel", m), &m, |b, &m| {
            b.iter(|| {
                next = (next + 1) % ws.len();
                ws[next].matmul(black_box(&x), m, &mut out)
            })
        });
    }
    group.finish();
}

fn matmul(c: &mut Criterion) {
    eprintln!("kernel backend: {:?}", maas_kernels::backend());
    // MLP up/gate (1536 × 576) and down (576 × 1536) projections.
    bench_shape(c, QuantKind::Q4_1, 1536, 576);
    bench_shape(c, QuantKind::Q4_1, 576, 1536);
    // 64 copies: 35 MB of Q4_1, past this machine's 32 MB L3.
    bench_cold(c, QuantKind::Q4_1, 1536, 576, 64);
    // Tied embedding used as the LM head: 49152 × 576.
    bench_shape(c, QuantKind::Q8_0, 49152, 576);
    // Gemma 3 270M's tied head, 262144 × 640 (178 MB, past any L3 alone):
    // short rows of 20 blocks, most of its file and of its decode step.
    bench_cold(c, QuantKind::Q8_0, 262_144, 640, 1);
    // llama.cpp writes Q5_0 (for Q4_K) and Q5_1 (for Q5_K) where a row is
    // not whole 256-weight super-blocks, e.g. SmolLM2's up/gate projections.
    bench_shape(c, QuantKind::Q5_0, 1536, 576);
    bench_shape(c, QuantKind::Q5_1, 1536, 576);
    // ... and streamed from DRAM, as a decode step reads them, beside Q4_1's
    // and Q8_0's copies above and below (64 copies: 39–42 MB of Q5).
    for kind in [QuantKind::Q5_0, QuantKind::Q5_1, QuantKind::Q8_0] {
        bench_cold(c, kind, 1536, 576, 64);
    }
    // K-quants need whole 256-weight rows, which of SmolLM2's matrices only
    // the MLP down projection (576 × 1536) has; Q4_1 above is the baseline.
    for kind in [
        QuantKind::Q3_K,
        QuantKind::Q4_K,
        QuantKind::Q5_K,
        QuantKind::Q6_K,
    ] {
        bench_shape(c, kind, 576, 1536);
    }
    // Streamed from DRAM: 32 copies of 1536 × 1536 (Q4_K: 57 MB).
    for kind in [QuantKind::Q4_1, QuantKind::Q4_K, QuantKind::Q6_K] {
        bench_cold(c, kind, 1536, 1536, 32);
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
