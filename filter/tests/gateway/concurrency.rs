//! Many clients at once on two Envoy worker threads: counters are updated
//! with compare-and-swap on shared data, so no admission and no charge is
//! lost or doubled.

use crate::support::*;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[test]
fn concurrent_requests_are_counted_exactly() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 40;
    const REQUEST_LIMIT: u64 = 250;
    let mut c = base_config();
    c["subscriptions"]["free"]["limits"] =
        json!({"requests": [format!("{REQUEST_LIMIT}/day")], "tokens": ["100000000/day"]});
    let s = Arc::new(Stack::start_with_workers(c, 2));
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (s, ok, limited) = (Arc::clone(&s), Arc::clone(&ok), Arc::clone(&limited));
            std::thread::spawn(move || {
                for _ in 0..PER_THREAD {
                    let r = s.chat(
                        FREE_KEY,
                        &chat_body("m1", 8),
                        &[
                            ("x-mock-prompt-tokens", "5"),
                            ("x-mock-completion-tokens", "7"),
                        ],
                    );
                    match r.status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected {other}: {}", r.text()),
                    };
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (ok, limited) = (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed));
    assert_eq!(ok, REQUEST_LIMIT, "exactly the limit was admitted");
    assert_eq!(limited, THREADS * PER_THREAD - REQUEST_LIMIT);
    assert_eq!(s.upstream.requests().len() as u64, REQUEST_LIMIT);
    let labels = [("subscription", "free"), ("model", "m1")];
    assert_eq!(
        s.metric("maas_total_tokens_total", &labels),
        (REQUEST_LIMIT * 12) as f64
    );
    assert_eq!(
        s.metric(
            "maas_requests_total",
            &[("subscription", "free"), ("outcome", "ok")]
        ),
        REQUEST_LIMIT as f64
    );
    assert_eq!(
        s.metric(
            "maas_requests_total",
            &[("subscription", "free"), ("outcome", "rate_limited")]
        ),
        limited as f64
    );
}
