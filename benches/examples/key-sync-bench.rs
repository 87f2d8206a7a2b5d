//! Key sync at scale (`make bench`, via `benches/key-sync.sh`): what the
//! filter pays to hold N managed keys (default 100,000), and how fast a
//! revocation reaches it.
//!
//! 1. Seeds a control plane database with N keys of one subscription
//!    (in-process, on tmpfs when there is one: this measures the gateway,
//!    not the disk).
//! 2. Starts the real control plane on it, and two Envoys with the release
//!    filter, one worker each: `baseline` with no control plane, `synced`
//!    syncing from it every 250 ms (the default).
//! 3. Measures the first full sync (wall time until the filter reports it
//!    applied, the answer's size), Envoy's resident memory of both (the
//!    difference is what the keys cost), Envoy's CPU time while idle for a
//!    while (the steady refresh cost: a 304 every interval), a key's first
//!    request (no lookup needed), and R revocations: `DELETE` through the
//!    control plane's API, then `GET /v1/models` with the key every
//!    millisecond until the first 401.
//!
//! Environment: KEYS (100000), REVOCATIONS (50), IDLE_SECS (10).

// A bench, not shipped code: a failed setup ends the run at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use maas_benches::inference::percentile;
use maas_control_plane::apikey;
use maas_control_plane::store::{KeyRow, Store, SubscriptionRow};
use maas_testkit::{
    eventually, prometheus, ControlPlaneLaunch, ControlPlaneProcess, Gateway, MockUpstream,
    Restartable,
};
use serde_json::json;

const MODEL: &str = "bench-model";
const SYNC_INTERVAL_MS: u64 = 250;
/// The filter's default `sync_page_keys`.
const PAGE_KEYS: u64 = 2000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (resident KiB, CPU seconds) of a process, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may hold spaces: utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (rss, ticks as f64 / hz)
}

fn main() {
    let n = env_or("KEYS", 100_000) as usize;
    let revocations = env_or("REVOCATIONS", 50) as usize;
    let idle = Duration::from_secs(env_or("IDLE_SECS", 10));
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("maas-key-sync-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("maas.db").display());

    eprintln!("==> seeding {n} keys into {url}");
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys: Vec<(String, String)> = rt.block_on(async {
        let store = Store::connect(&url).await.unwrap();
        let spec = json!({"name": "bench", "models": [MODEL], "limits": "unlimited"});
        store
            .put_subscription(
                &SubscriptionRow {
                    name: "bench".into(),
                    spec,
                    created_at: 0,
                    updated_at: 0,
                    version: 0,
                },
                "bench",
            )
            .await
            .unwrap();
        let mut kept = Vec::new();
        for i in 0..n {
            let minted = apikey::mint().unwrap();
            let row = KeyRow {
                id: minted.id.clone(),
                owner: format!("user-{}", i % 1000),
                subscription: "bench".into(),
                name: format!("key-{i}"),
                labels: Default::default(),
                salt: minted.digest.salt_hex(),
                hash: minted.digest.hash_hex(),
                created_at: 0,
                expires_at: None,
                revoked_at: None,
                version: 0,
            };
            store.insert_key(&row, "bench").await.unwrap();
            if kept.len() <= revocations && i % (n / (revocations + 1)).max(1) == 0 {
                kept.push((minted.id, minted.plaintext));
            }
            if (i + 1) % 20_000 == 0 {
                eprintln!("    {} keys", i + 1);
            }
        }
        store.close().await;
        kept
    });
    eprintln!("    seeded in {:.1} s", started.elapsed().as_secs_f64());

    let mut cp = ControlPlaneProcess::launch(&ControlPlaneLaunch {
        data_dir: dir.join("cp"),
        database_url: Some(url.clone()),
        ..ControlPlaneLaunch::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // One answer with every key, for its size per key.
    let sync_answer = maas_testkit::request(
        "GET",
        &cp.url("/maas-api/v1/sync?since=0&limit=50000"),
        &[("authorization", &format!("Bearer {}", cp.gateway_token()))],
        None,
    );
    let answer_bytes = sync_answer.body.len();

    let upstream = MockUpstream::start();
    let config = |control_plane: Option<&ControlPlaneProcess>| {
        let mut c = json!({"models": [MODEL], "subscriptions": {}});
        if let Some(cp) = control_plane {
            c["control_plane"] = json!({"cluster": "maas-control-plane",
                "token": cp.gateway_token(), "sync_interval_ms": SYNC_INTERVAL_MS,
                "sync_page_keys": PAGE_KEYS, "timeout_ms": 30000});
        }
        c
    };
    let baseline = Gateway::builder()
        .filter_config(config(None))
        .model(MODEL, upstream.addr())
        .start();
    let t0 = Instant::now();
    let synced = Gateway::builder()
        .filter_config(config(Some(&cp)))
        .model(MODEL, upstream.addr())
        .control_plane(cp.addr())
        .ready_timeout(Duration::from_secs(120))
        .start();
    // Caught up: the first "nothing changed" comes after the last page.
    let pages = eventually(Duration::from_secs(300), || {
        let stats = synced.admin_get("/stats/prometheus");
        let count = |result| {
            prometheus::metric(&stats, "maas_key_syncs_total", &[("result", result)]).unwrap_or(0.0)
        };
        if count("not_modified") >= 1.0 {
            Ok(count("changed"))
        } else {
            Err("the full sync has not completed".to_string())
        }
    });
    let full_sync = t0.elapsed();

    // Idle: only the periodic 304s.
    std::thread::sleep(Duration::from_secs(1));
    let (_, cpu_base_0) = usage(baseline.pid());
    let (_, cpu_sync_0) = usage(synced.pid());
    std::thread::sleep(idle);
    let (rss_base, cpu_base_1) = usage(baseline.pid());
    let (rss_sync, cpu_sync_1) = usage(synced.pid());
    let idle_base_ms = (cpu_base_1 - cpu_base_0) * 1000.0 / idle.as_secs_f64();
    let idle_sync_ms = (cpu_sync_1 - cpu_sync_0) * 1000.0 / idle.as_secs_f64();

    let stats = synced.admin_get("/stats/prometheus");
    let lookups_before =
        prometheus::metric(&stats, "maas_key_lookups_total", &[("result", "found")]).unwrap_or(0.0);
    let (probe_id, probe) = keys.last().cloned().unwrap();
    let auth = format!("Bearer {probe}");
    let t = Instant::now();
    let first = synced.request("GET", "/v1/models", &[("authorization", &auth)], None);
    let first_request = t.elapsed();
    assert_eq!(first.status, 200, "{}", first.text());
    let lookups_after = prometheus::metric(
        &synced.admin_get("/stats/prometheus"),
        "maas_key_lookups_total",
        &[("result", "found")],
    )
    .unwrap_or(0.0);

    let admin = cp.admin_token();
    let mut latencies = Vec::with_capacity(revocations);
    // Each revocation is noticed right after a sync; starting the next one
    // at once would always land at the start of an interval (the worst
    // case). A pseudo-random pause spreads them over the sync cycle.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for (id, key) in keys
        .iter()
        .filter(|(id, _)| *id != probe_id)
        .take(revocations)
    {
        let auth = format!("Bearer {key}");
        let ok = synced.request("GET", "/v1/models", &[("authorization", &auth)], None);
        assert_eq!(ok.status, 200);
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis((seed >> 33) % (2 * SYNC_INTERVAL_MS)));
        let r = cp.call(
            "DELETE",
            &format!("/maas-api/v1/api-keys/{id}"),
            &admin,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let t = Instant::now();
        loop {
            let r = synced.request("GET", "/v1/models", &[("authorization", &auth)], None);
            if r.status == 401 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "revocation not applied"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    cp.terminate();

    println!("\nKey sync with {n} managed keys (sync interval {SYNC_INTERVAL_MS} ms, one Envoy worker)\n");
    println!("| measure | value |");
    println!("|---|---|");
    let answer_keys = n.min(50_000);
    println!(
        "| sync answer size | {:.0} B/key ({:.1} MB for {answer_keys} keys) |",
        answer_bytes as f64 / answer_keys as f64,
        answer_bytes as f64 / 1e6
    );
    println!(
        "| first full sync, Envoy start → caught up ({pages} pages of {PAGE_KEYS} keys) | {:.2} s |",
        full_sync.as_secs_f64()
    );
    println!(
        "| Envoy RSS: baseline (no control plane) / synced | {:.1} MiB / {:.1} MiB |",
        rss_base as f64 / 1024.0,
        rss_sync as f64 / 1024.0
    );
    println!(
        "| memory per key (RSS difference / keys) | {:.0} B |",
        (rss_sync.saturating_sub(rss_base)) as f64 * 1024.0 / n as f64
    );
    println!(
        "| idle CPU: baseline / synced (ms per s, over {} s) | {idle_base_ms:.2} / {idle_sync_ms:.2} |",
        idle.as_secs()
    );
    println!(
        "| a synced key's first request | {:.2} ms, {} lookups |",
        first_request.as_secs_f64() * 1000.0,
        lookups_after - lookups_before
    );
    if !latencies.is_empty() {
        println!(
            "| DELETE → first 401, {} revocations: p50 / p90 / p99 / max | {:.0} / {:.0} / {:.0} / {:.0} ms |",
            latencies.len(),
            percentile(&latencies, 50.0),
            percentile(&latencies, 90.0),
            percentile(&latencies, 99.0),
            latencies.last().copied().unwrap_or_default()
        );
        println!(
            "| p99 / sync interval; p99 / 1 s target | {:.2}; {:.2} |",
            percentile(&latencies, 99.0) / SYNC_INTERVAL_MS as f64,
            percentile(&latencies, 99.0) / 1000.0
        );
    }
    drop(synced);
    drop(baseline);
    let _ = std::fs::remove_dir_all(&dir);
}
