// TEMPORARY timing scratch (removed before hand-off).
use half::f16;
use maas_kernels::{PackedMatrix, QuantKind};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::var("T")
        .ok()
        .map(|s| s.parse().unwrap())
        .unwrap_or(2);
    let inside = std::env::var("INSIDE").is_ok();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    if inside {
        pool.install(body)
    } else {
        body()
    }
}
fn body() {
    let args: Vec<String> = std::env::args().collect();
    let only_kind = args.get(1).cloned();
    let only_m: Option<usize> = args.get(2).map(|s| s.parse().unwrap());
    let mut state = 0x1234_5678u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (kind, rows, cols) in [
        (QuantKind::Q4_1, 1536, 576),
        (QuantKind::Q4_0, 1536, 576),
        (QuantKind::Q8_0, 49152, 576),
    ] {
        if let Some(k) = &only_kind {
            if *k != kind.to_string() {
                continue;
            }
        }
        let blocks = rows * cols / 32;
        let mut raw = Vec::new();
        for _ in 0..blocks {
            raw.extend_from_slice(&f16::from_f32(0.01).to_le_bytes());
            if kind == QuantKind::Q4_1 {
                raw.extend_from_slice(&f16::from_f32(-0.08).to_le_bytes());
            }
            let q = if kind == QuantKind::Q8_0 { 32 } else { 16 };
            for _ in 0..q {
                raw.push(next() as u8);
            }
        }
        let w = PackedMatrix::from_ggml(kind, &raw, rows, cols).unwrap();
        for m in [1usize, 2, 4, 8, 16, 64] {
            if let Some(om) = only_m {
                if om != m {
                    continue;
                }
            }
            let x: Vec<f32> = (0..m * cols)
                .map(|_| (next() % 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let mut out = vec![0.0; m * rows];
            let iters = (200_000_000 / (rows * cols * m)).max(20);
            w.matmul(&x, m, &mut out).unwrap();
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..iters {
                    w.matmul(&x, m, &mut out).unwrap();
                }
                best = best.min(t.elapsed().as_secs_f64() / iters as f64);
            }
            let pairs = (rows * cols / 32 * m) as f64;
            println!(
                "{kind} {rows}x{cols} m={m:3}: {:9.1} us  {:.2} ns/pair  ratio-to-m1 later",
                best * 1e6,
                best * 1e9 / pairs
            );
        }
    }
}
