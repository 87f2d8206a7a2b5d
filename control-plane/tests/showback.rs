//! Showback through the real gateway: Envoy with the filter in front of the
//! OpenAI-shaped test upstream, the control plane's sampler reading Envoy's
//! `/stats/prometheus`, usage landing in the database exactly as the
//! responses reported it, under the caller's key. And two replicas' samplers
//! on one PostgreSQL database, reading one (fake) Envoy admin endpoint: the
//! usage is added once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use maas_control_plane::showback::gateways::Gateways;
use maas_control_plane::showback::sampler;
use maas_control_plane::showback::Usage;
use maas_control_plane::store::{Store, UsageRow};
use maas_filter::auth::keys::KeyDigest;
use maas_testkit::{eventually, Gateway, MockUpstream};
use serde_json::json;

const KEY: &str = "sk-test-showback-1";

#[test]
fn usage_sampled_from_the_gateway_equals_what_the_responses_reported() {
    let upstream = MockUpstream::start();
    let gateway = showback_gateway(&upstream);
    let sampled = Sampled::sqlite("maas-showback");
    sampled.sampler(&gateway);
    let (runtime, store) = (&sampled.runtime, &sampled.store);
    sampled.await_baseline();

    let mut expected = Usage::default();
    for (prompt, completion) in [(11, 7), (20, 3)] {
        chat(&gateway, prompt, completion);
        expected.requests += 1;
        expected.prompt_tokens += prompt;
        expected.completion_tokens += completion;
    }

    await_usage(runtime, store, expected);
    let rows = runtime.block_on(store.usage(0, i64::MAX)).unwrap();
    assert_eq!(rows[0].subscription, "team-a");
    assert_eq!(rows[0].model, "m1");
    // Per key: the filter's `key` label, through Envoy's stats tags. k1 is
    // a key of the gateway's configuration, not one this store minted, so
    // it has no owner here.
    let detail = runtime.block_on(store.usage_detail(0, i64::MAX)).unwrap();
    let keys: Vec<(&str, &str, Usage)> = detail
        .iter()
        .map(|d| (d.key.as_str(), d.owner.as_str(), d.usage))
        .collect();
    assert_eq!(keys, [("k1", "", expected)]);
}

/// One completion through `gateway` whose upstream reports `prompt` and
/// `completion` tokens.
fn chat(gateway: &Gateway, prompt: u64, completion: u64) {
    let (p, c) = (prompt.to_string(), completion.to_string());
    let auth = format!("Bearer {KEY}");
    let r = gateway.post_json(
        "/v1/chat/completions",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("x-mock-prompt-tokens", p.as_str()),
            ("x-mock-completion-tokens", c.as_str()),
        ],
        &json!({"model": "m1", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], prompt);
}

/// A gateway with key `KEY` of subscription team-a on m1, at `upstream`.
fn showback_gateway(upstream: &MockUpstream) -> Gateway {
    let config = json!({
        "models": ["m1"],
        "subscriptions": {"team-a": {"models": ["m1"], "limits": "unlimited"}},
        "keys": [{"id": "k1", "owner": "alice", "subscription": "team-a", "sha256": KeyDigest::of(KEY).to_hex()}]
    });
    Gateway::builder()
        .filter_config(config)
        .model("m1", upstream.addr())
        .concurrency(1)
        .start()
}

/// A store on a SQLite file of its own, and the runtime samplers of it
/// run on; the file is removed on drop.
struct Sampled {
    runtime: tokio::runtime::Runtime,
    store: Store,
    dir: std::path::PathBuf,
}

impl Sampled {
    fn sqlite(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("db").display());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let store = runtime.block_on(Store::connect(&url)).unwrap();
        Self {
            runtime,
            store,
            dir,
        }
    }

    /// A sampler of `gateway`'s counters every 200 ms, as a control plane
    /// runs one.
    fn sampler(&self, gateway: &Gateway) -> tokio::task::JoinHandle<()> {
        self.runtime.spawn(sampler::run(
            self.store.clone(),
            Gateways::new(vec![gateway.admin_url("")]).unwrap(),
            Duration::from_millis(200),
        ))
    }

    /// Waits until a sampler has stored its first reading of the gateway:
    /// the baseline, which counts nothing, so traffic before it would not
    /// be counted. (On SQLite the lease is always granted.)
    fn await_baseline(&self) {
        eventually(Duration::from_secs(15), || {
            self.runtime.block_on(async {
                let mut lease = self.store.try_sampler_lease().await;
                match lease.as_mut().map(Option::as_mut) {
                    Ok(Some(lease)) => match lease.baselines().await {
                        Ok(stored) if !stored.is_empty() => Ok(()),
                        Ok(_) => Err("no reading stored yet".to_owned()),
                        Err(e) => Err(e.to_string()),
                    },
                    Ok(None) => Err("the lease is held".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            })
        });
    }
}

impl Drop for Sampled {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until the store holds exactly `expected` in all.
fn await_usage(runtime: &tokio::runtime::Runtime, store: &Store, expected: Usage) {
    eventually(Duration::from_secs(15), || {
        let rows = runtime
            .block_on(store.usage(0, i64::MAX))
            .map_err(|e| e.to_string())?;
        match rows.as_slice() {
            [UsageRow { usage, .. }] if *usage == expected => Ok(()),
            _ => Err(format!("usage so far: {rows:?}, waiting for {expected:?}")),
        }
    });
}

/// The control plane restarts (or another replica takes over) while the
/// gateway serves: the next sampler counts on from the last stored reading,
/// so what was used while nobody sampled is counted, once.
#[test]
fn usage_made_while_no_sampler_ran_is_counted_by_the_next() {
    let upstream = MockUpstream::start();
    let gateway = showback_gateway(&upstream);
    let sampled = Sampled::sqlite("maas-showback-resume");
    let (runtime, store) = (&sampled.runtime, &sampled.store);
    let sampler = || sampled.sampler(&gateway);
    let first = sampler();
    sampled.await_baseline();
    chat(&gateway, 11, 7);
    let mut expected = Usage {
        requests: 1,
        prompt_tokens: 11,
        completion_tokens: 7,
    };
    await_usage(runtime, store, expected);

    first.abort();
    chat(&gateway, 20, 3);
    expected += Usage {
        requests: 1,
        prompt_tokens: 20,
        completion_tokens: 3,
    };
    // Up for longer than the new sampler: before, its first reading was
    // taken as the baseline, and the 23 tokens above were never counted.
    let second = sampler();
    await_usage(runtime, store, expected);
    // And counted once: more readings add nothing.
    std::thread::sleep(Duration::from_millis(600));
    await_usage(runtime, store, expected);
    second.abort();
}

/// An Envoy admin endpoint that serves one prompt-token counter (set by the
/// test) from a process up for a day, on a loopback port; it serves until
/// the test process ends.
struct FakeAdmin {
    url: String,
    prompt_tokens: Arc<AtomicU64>,
}

impl FakeAdmin {
    fn start(prompt_tokens: u64) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counter = Arc::new(AtomicU64::new(prompt_tokens));
        let served = Arc::clone(&counter);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!(
                    "envoy_server_uptime 86400\n\
                     maas_prompt_tokens_total{{subscription=\"team-a\",model=\"m1\"}} {}\n",
                    served.load(Ordering::SeqCst)
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            url,
            prompt_tokens: counter,
        }
    }

    fn add(&self, tokens: u64) {
        self.prompt_tokens.fetch_add(tokens, Ordering::SeqCst);
    }
}

/// Needs a PostgreSQL server (`MAAS_TEST_POSTGRES_URL`, as the store suite).
#[test]
fn two_replicas_on_one_database_add_usage_once_and_one_takes_over_when_the_other_dies() {
    let root = maas_testkit::postgres::postgres_server();
    let url = format!("{root}/maas_showback_replicas_{}", std::process::id());
    sqlx::any::install_default_drivers();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    use sqlx::migrate::MigrateDatabase as _;
    runtime.block_on(sqlx::Any::create_database(&url)).unwrap();
    // Each replica has its own pool, as two processes would.
    let connect = || runtime.block_on(Store::connect(&url)).unwrap();
    let (replica_a, replica_b, reader) = (connect(), connect(), connect());
    let locks = runtime.block_on(sqlx::AnyPool::connect(&url)).unwrap();
    // The backend holding the sampler's advisory lock, if any.
    let holder = || -> Option<i32> {
        runtime
            .block_on(
                sqlx::query_scalar::<_, i32>(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                )
                .fetch_optional(&locks),
            )
            .unwrap()
    };
    let prompt_tokens = || -> u64 {
        let rows = runtime.block_on(reader.usage(0, i64::MAX)).unwrap();
        rows.iter().map(|r| r.usage.prompt_tokens).sum()
    };
    let admin = FakeAdmin::start(1_000);
    // The same gateway given to both replicas, as every replica's
    // --envoy-admin would list it.
    let gateways = || Gateways::new(vec![admin.url.clone()]).unwrap();
    let interval = Duration::from_millis(100);
    let settle = Duration::from_millis(600);

    let a = runtime.spawn(sampler::run(replica_a, gateways(), interval));
    let first = eventually(Duration::from_secs(10), || {
        holder().ok_or_else(|| "nobody holds the sampler lease yet".to_string())
    });
    // a's first reading stored: its baseline, before any usage.
    eventually(Duration::from_secs(10), || {
        let stored: i64 = runtime
            .block_on(sqlx::query_scalar("SELECT COUNT(*) FROM sampler_gateways").fetch_one(&locks))
            .map_err(|e| e.to_string())?;
        if stored == 1 {
            Ok(())
        } else {
            Err(format!("{stored} readings stored"))
        }
    });
    let b = runtime.spawn(sampler::run(replica_b, gateways(), interval));
    std::thread::sleep(settle);

    admin.add(100);
    eventually(Duration::from_secs(10), || match prompt_tokens() {
        100 => Ok(()),
        n => Err(format!("{n} prompt tokens so far")),
    });
    std::thread::sleep(settle);
    assert_eq!(prompt_tokens(), 100, "counted once, not once per replica");
    assert_eq!(holder(), Some(first));

    // The sampling replica dies: its session, and with it the lock, ends.
    // Usage made before the other replica takes over is counted by it, from
    // the last stored reading.
    a.abort();
    admin.add(50);
    eventually(Duration::from_secs(10), || match holder() {
        Some(pid) if pid != first => Ok(()),
        other => Err(format!("the lease is held by {other:?}")),
    });
    eventually(Duration::from_secs(10), || match prompt_tokens() {
        150 => Ok(()),
        n => Err(format!("{n} prompt tokens so far")),
    });
    std::thread::sleep(settle);
    assert_eq!(prompt_tokens(), 150);

    b.abort();
    drop(runtime);
    let cleanup = tokio::runtime::Runtime::new().unwrap();
    cleanup
        .block_on(sqlx::Any::force_drop_database(&url))
        .unwrap();
}
