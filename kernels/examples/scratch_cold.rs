// TEMPORARY timing scratch (removed before hand-off): weights streamed from DRAM.
use half::f16;
use maas_kernels::{PackedMatrix, QuantKind};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::var("T")
        .ok()
        .map(|s| s.parse().unwrap())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let inside = std::env::var("INSIDE").is_ok();
    let run = || {
        let mut state = 0x1234_5678u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (kind, rows, cols, copies) = (QuantKind::Q4_1, 1536, 576, 128);
        let ws: Vec<PackedMatrix> = (0..copies)
            .map(|_| {
                let blocks = rows * cols / 32;
                let mut raw = Vec::new();
                for _ in 0..blocks {
                    raw.extend_from_slice(&f16::from_f32(0.01).to_le_bytes());
                    raw.extend_from_slice(&f16::from_f32(-0.08).to_le_bytes());
                    for _ in 0..16 {
                        raw.push(next() as u8);
                    }
                }
                PackedMatrix::from_ggml(kind, &raw, rows, cols).unwrap()
            })
            .collect();
        for m in [1usize, 2, 4, 8, 16] {
            let x: Vec<f32> = (0..m * cols)
                .map(|_| (next() % 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let mut out = vec![0.0; m * rows];
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for w in &ws {
                    w.matmul(&x, m, &mut out).unwrap();
                }
                best = best.min(t.elapsed().as_secs_f64() / copies as f64);
            }
            println!(
                "cold {kind} {rows}x{cols} m={m:3}: {:8.1} us per matrix",
                best * 1e6
            );
        }
    };
    if inside {
        pool.install(run)
    } else {
        run()
    }
}
