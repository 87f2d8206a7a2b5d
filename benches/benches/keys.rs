//! Key lookup on the request path: SHA-256 of the presented key plus one
//! hash-map probe, against 10 and 100,000 configured keys. Baseline in the
//! same run: the SHA-256 alone, which the lookup cannot avoid.

// A bench, not shipped code: a failed setup ends the run at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use maas_filter::auth::keys::KeyDigest;
use maas_filter::config::Config;

fn config_with_keys(n: usize) -> Config {
    let keys: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("k{i}"),
                "owner": format!("user{i}@example.com"),
                "subscription": "free",
                "sha256": KeyDigest::of(&format!("sk-maas-bench-{i:08}")).to_hex(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "models": ["m1"],
        "subscriptions": {"free": {"models": ["m1"], "limits": "unlimited"}},
        "keys": keys,
    });
    match Config::from_json(doc.to_string().as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_lookup");
    group.bench_function("baseline_sha256_only", |b| {
        b.iter(|| KeyDigest::of(black_box("sk-maas-bench-00004242")))
    });
    for n in [10, 100_000] {
        let config = config_with_keys(n);
        let hit = format!("sk-maas-bench-{:08}", n / 2);
        group.bench_function(format!("authenticate_hit_{n}_keys"), |b| {
            b.iter(|| config.keys.authenticate(black_box(&hit), 0).is_ok())
        });
        group.bench_function(format!("authenticate_miss_{n}_keys"), |b| {
            b.iter(|| {
                config
                    .keys
                    .authenticate(black_box("sk-maas-nope"), 0)
                    .is_err()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
