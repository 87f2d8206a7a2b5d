//! The limits hot path per request: `reserve` at admission plus `settle` at the end of
//! the response against one group (one counter) of a request limit and two token limits,
//! and `state` for the
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
use maas_filter::limits::{ensure_counter, reserve, settle, state, LimitGroup, MemoryStore, Rate};

/// Seconds since the epoch; fixed so every iteration lands in the same windows.
const NOW: u64 = 1_710_115_230;
/// Worst case reserved per request (prompt estimate + max_tokens) and what it used.
const WORST_TOKENS: u64 = 1_280;
const ACTUAL_TOKENS: u64 = 417;

fn rate(amount: u64, window_secs: u64) -> Rate {
    Rate {
        amount,
        window_secs,
    }
}

/// Requests per minute and tokens per minute and per day for one subscription, in one
/// counter. The amounts are too large to run out during a bench; every call takes the
/// admit path.
fn subscription_limits() -> LimitGroup {
    LimitGroup {
        counter_key: "sub/free".to_owned(),
        rates: vec![
            rate(u64::MAX, 60),
            rate(u64::MAX, 60),
            rate(u64::MAX, 86_400),
        ],
    }
}

fn store_with(group: &LimitGroup) -> MemoryStore {
    let store = MemoryStore::new();
    if let Err(err) = ensure_counter(&store, group) {
        eprintln!("cannot create {}: {err}", group.counter_key);
    }
    store
}

/// One request's trip through the ledger: admit, then charge what it really used.
fn admit_and_charge(store: &MemoryStore, group: &LimitGroup) {
    let wants = [(group, &[1, WORST_TOKENS, WORST_TOKENS][..])];
    if let Ok(holds) = reserve(store, NOW, black_box(&wants)) {
        for hold in holds {
            let actual = [1, ACTUAL_TOKENS, ACTUAL_TOKENS];
            let _ = black_box(settle(store, NOW, hold, &actual));
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
    group.bench_function("reserve+settle, 1 group of 3 limits", |b| {
        b.iter(|| admit_and_charge(&store, &limits))
    });

    // The key's token limit is used up: the subscription's hold is taken, then rolled
    // back.
    let tight = LimitGroup {
        counter_key: "key/abc".to_owned(),
        rates: vec![rate(u64::MAX, 60), rate(1_000, 60)],
    };
    let store = MemoryStore::new();
    for group in [&limits, &tight] {
        if let Err(err) = ensure_counter(&store, group) {
            eprintln!("cannot create {}: {err}", group.counter_key);
        }
    }
    group.bench_function("reserve denied by the 2nd of 2 groups", |b| {
        let wants = [
            (&limits, &[1, WORST_TOKENS, WORST_TOKENS][..]),
            (&tight, &[1, WORST_TOKENS][..]),
        ];
        b.iter(|| reserve(&store, NOW, black_box(&wants)).is_err())
    });

    let store = store_with(&limits);
    admit_and_charge(&store, &limits);
    group.bench_function("state for headers, 1 group of 3 limits", |b| {
        b.iter(|| black_box(state(&store, NOW, black_box(&limits))))
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
    group.bench_function("reserve+settle, 1 shared group of 3 limits", |b| {
        b.iter_custom(|iters| contended(iters, threads, || admit_and_charge(&store, &limits)))
    });

    group.finish();
}

criterion_group!(benches, single_thread, multi_thread);
criterion_main!(benches);
