//! The limits hot path per request: `reserve` at admission plus `settle` at the end of
//! the response against one request limit and two token limits, and `state` for the
//! rate-limit headers, all on `MemoryStore` (one mutex over a map, like Envoy's shared
//! data). The baseline in the same run is the least a shared counter can cost: one
//! unconditional increment of a `Mutex<HashMap>` entry. Each path is measured on one
//! thread and with several threads hitting the same counters.
//!
//! Run: `cargo bench -p maas-benches --bench limits`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use maas_filter::limits::{ensure_counter, reserve, settle, state, Limit, MemoryStore, Rate};

/// Seconds since the epoch; fixed so every iteration lands in the same windows.
const NOW: u64 = 1_710_115_230;
/// Worst case reserved per request (prompt estimate + max_tokens) and what it used.
const WORST_TOKENS: u64 = 1_280;
const ACTUAL_TOKENS: u64 = 417;

fn limit(key: &str, amount: u64, window_secs: u64) -> Limit {
    Limit {
        counter_key: key.to_owned(),
        rate: Rate {
            amount,
            window_secs,
        },
    }
}

/// Requests per minute and tokens per minute and per day for one subscription. The
/// amounts are too large to run out during a bench; every call takes the admit path.
fn subscription_limits() -> [Limit; 3] {
    [
        limit("sub/free/rpm", u64::MAX, 60),
        limit("sub/free/tpm", u64::MAX, 60),
        limit("sub/free/tpd", u64::MAX, 86_400),
    ]
}

fn store_with(limits: &[Limit]) -> MemoryStore {
    let store = MemoryStore::new();
    for limit in limits {
        if let Err(err) = ensure_counter(&store, &limit.counter_key) {
            eprintln!("cannot create {}: {err}", limit.counter_key);
        }
    }
    store
}

/// One request's trip through the ledger: admit, then charge what it really used.
fn admit_and_charge(store: &MemoryStore, limits: &[Limit; 3]) {
    let [rpm, tpm, tpd] = limits;
    let wants = [(rpm, 1), (tpm, WORST_TOKENS), (tpd, WORST_TOKENS)];
    if let Ok(holds) = reserve(store, NOW, black_box(&wants)) {
        for (hold, actual) in holds.into_iter().zip([1, ACTUAL_TOKENS, ACTUAL_TOKENS]) {
            let _ = black_box(settle(store, NOW, hold, actual));
        }
    }
}

fn increment(counters: &Mutex<HashMap<String, u64>>, key: &str) {
    if let Ok(mut counters) = counters.lock() {
        if let Some(count) = counters.get_mut(key) {
            *count = count.wrapping_add(1);
        }
    }
}

fn baseline_counters() -> Mutex<HashMap<String, u64>> {
    Mutex::new(HashMap::from([("sub/free/rpm".to_owned(), 0)]))
}

fn threads() -> usize {
    thread::available_parallelism().map_or(4, |n| n.get().clamp(2, 8))
}

/// Runs `iters` calls of `op` split over `threads` threads and returns the wall time,
/// so the figure is the time per call with the others contending.
fn contended(iters: u64, threads: usize, op: impl Fn() + Sync) -> Duration {
    let per_thread = iters.div_ceil(threads as u64);
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..per_thread {
                    op();
                }
            });
        }
    });
    started.elapsed()
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits");

    let counters = baseline_counters();
    group.bench_function("baseline: mutex hashmap increment", |b| {
        b.iter(|| increment(&counters, black_box("sub/free/rpm")))
    });

    let limits = subscription_limits();
    let store = store_with(&limits);
    group.bench_function("reserve+settle, 3 limits", |b| {
        b.iter(|| admit_and_charge(&store, &limits))
    });

    // The second limit is used up: the first hold is taken, then rolled back.
    let tight = [
        limit("key/abc/rpm", u64::MAX, 60),
        limit("key/abc/tpm", 1_000, 60),
        limit("key/abc/tpd", u64::MAX, 86_400),
    ];
    let store = store_with(&tight);
    group.bench_function("reserve denied by 2nd of 3 limits", |b| {
        let [rpm, tpm, tpd] = &tight;
        let wants = [(rpm, 1), (tpm, WORST_TOKENS), (tpd, WORST_TOKENS)];
        b.iter(|| reserve(&store, NOW, black_box(&wants)).is_err())
    });

    let store = store_with(&limits);
    admit_and_charge(&store, &limits);
    group.bench_function("state for headers, 3 limits", |b| {
        b.iter(|| {
            for limit in &limits {
                let _ = black_box(state(&store, NOW, black_box(limit)));
            }
        })
    });

    group.finish();
}

fn multi_thread(c: &mut Criterion) {
    let threads = threads();
    let mut group = c.benchmark_group(format!("limits, {threads} threads"));

    let counters = baseline_counters();
    group.bench_function("baseline: mutex hashmap increment", |b| {
        b.iter_custom(|iters| {
            contended(iters, threads, || {
                increment(&counters, black_box("sub/free/rpm"))
            })
        })
    });

    let limits = subscription_limits();
    let store = store_with(&limits);
    group.bench_function("reserve+settle, 3 shared limits", |b| {
        b.iter_custom(|iters| contended(iters, threads, || admit_and_charge(&store, &limits)))
    });

    group.finish();
}

criterion_group!(benches, single_thread, multi_thread);
criterion_main!(benches);
