//! Limits shared by many gateways: two Envoy processes, each with the
//! release filter, share one `maas-limiter` whose counters live in one
//! Redis, in front of the real inference server with SmolLM2. A
//! subscription's global token limit holds across both gateways, survives a
//! limiter restart, and an unreachable limiter fails closed.

// Test code may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};

use maas_filter::config::Config;
use maas_filter::limits::global_limits::limitador_limits;
use std::time::Duration;

use maas_ratelimit_proto::{Code, RateLimitDescriptor, RateLimitRequest};
use maas_testkit::{
    eventually, Gateway, InferenceServer, LimiterLaunch, LimiterProcess, MockUpstream,
    RedisProcess, Restartable,
};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";
const KEY: &str = "sk-shared-team-key";
/// Small enough that a handful of short completions reach it.
const TOKEN_LIMIT: u64 = 600;

fn filter_config() -> Value {
    json!({
        "models": [MODEL],
        // Generous for a loaded two-core CI machine; production keeps 20 ms.
        "limiter": {"cluster": "limitador", "domain": "maas-e2e", "timeout_ms": 2000},
        "subscriptions": {
            "shared": {
                "models": [MODEL],
                "limits": {"tokens": [{"rate": format!("{TOKEN_LIMIT}/hour"), "mode": "global"}]}
            }
        },
        "keys": [{
            "id": "team-1", "owner": "team", "subscription": "shared",
            "sha256": maas_filter::auth::keys::KeyDigest::of(KEY).to_hex()
        }]
    })
}

fn chat(gateway: &Gateway) -> maas_testkit::Response {
    gateway.post_json(
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {KEY}"))],
        &chat_body(),
    )
}

const CHAT_MAX_TOKENS: u64 = 12;

fn chat_body() -> Value {
    json!({
        "model": MODEL,
        "max_tokens": CHAT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "Name a colour."}]
    })
}

/// What the gateway holds for a [`chat`] while it runs: its prompt's bound
/// (a token per byte of body) and its `max_tokens`.
fn chat_worst_case() -> u64 {
    chat_body().to_string().len() as u64 + CHAT_MAX_TOKENS
}

/// Redis and a limiter on it, with the limits file rendered from `config`
/// (in a folder of its own, `name`).
fn start_limiter(config: &Value, name: &str) -> (RedisProcess, LimiterProcess) {
    let parsed = Config::from_json(config.to_string().as_bytes()).unwrap();
    let dir = tempfile_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let limits = dir.join("limits.yaml");
    std::fs::write(
        &limits,
        limitador_limits("maas-e2e", parsed.subscriptions.iter().map(|s| &**s)),
    )
    .unwrap();
    let redis = RedisProcess::start().unwrap();
    let limiter = LimiterProcess::launch(&LimiterLaunch::new(&limits).with_redis(&redis)).unwrap();
    (redis, limiter)
}

/// A gateway on the mock upstream with its limiter.
fn gateway_on(config: Value, upstream: &MockUpstream, limiter: &LimiterProcess) -> Gateway {
    Gateway::builder()
        .filter_config(config)
        .model(MODEL, upstream.addr())
        .limiter(limiter.addr())
        .start()
}

/// Whether the team key's global token limit would admit `hits` more
/// tokens now (checked, not counted).
fn tokens_check(limiter: &LimiterProcess, hits: u64) -> Code {
    let descriptor = RateLimitDescriptor::new([
        ("subscription", "shared"),
        ("key", "team-1"),
        ("quantity", "tokens"),
        ("model", MODEL),
    ]);
    let request = RateLimitRequest::new("maas-e2e", vec![descriptor], hits as u32);
    limiter
        .client()
        .check_rate_limit(&request)
        .unwrap()
        .overall_code()
}

#[test]
fn a_global_token_limit_holds_across_two_gateways_and_a_limiter_restart() {
    let config = filter_config();
    let (redis, mut limiter) = start_limiter(&config, "shared");
    let server = InferenceServer::start(&[]);
    let gateways: Vec<Gateway> = (0..2)
        .map(|_| {
            Gateway::builder()
                .filter_config(config.clone())
                .model(MODEL, server.addr())
                .limiter(limiter.addr())
                .concurrency(2)
                .start()
        })
        .collect();

    // Both gateways spend the one budget at the same time until each is
    // refused a few times in a row, 100 ms apart, and the limiter confirms
    // that one more request's worst case does not fit.
    let admitted_tokens = AtomicU64::new(0);
    let admitted: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = gateways
            .iter()
            .map(|gateway| {
                let admitted_tokens = &admitted_tokens;
                let limiter = &limiter;
                scope.spawn(move || {
                    let (mut count, mut refusals) = (0u64, 0);
                    for _ in 0..60 {
                        let r = chat(gateway);
                        match r.status {
                            200 => {
                                let used = r.json()["usage"]["total_tokens"].as_u64().unwrap();
                                admitted_tokens.fetch_add(used, Ordering::SeqCst);
                                count += 1;
                                refusals = 0;
                            }
                            429 => {
                                let body = r.json();
                                assert_eq!(body["error"]["type"], "tokens", "{body}");
                                // A request that just ended may still hold
                                // its worst case for a moment (its commit
                                // goes out from the root context's next
                                // tick): a refusal counts when it persists,
                                // and once this gateway's own requests are
                                // committed the limiter confirms it.
                                refusals += 1;
                                if refusals < 3 {
                                    std::thread::sleep(Duration::from_millis(100));
                                    continue;
                                }
                                await_settled(gateway, count);
                                if tokens_check(limiter, chat_worst_case()) == Code::OverLimit {
                                    break;
                                }
                                refusals = 0;
                            }
                            other => panic!("unexpected {other}: {}", r.text()),
                        }
                    }
                    count
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = admitted_tokens.load(Ordering::SeqCst);
    eprintln!("admitted per gateway {admitted:?}, {total} tokens of {TOKEN_LIMIT}");
    // Both stopped because the budget is spent, not after their 60 tries.
    assert_eq!(
        tokens_check(&limiter, chat_worst_case()),
        Code::OverLimit,
        "budget left after {total} tokens"
    );
    assert!(
        admitted.iter().all(|&n| n > 0),
        "both gateways served: {admitted:?}"
    );
    // Reserve/Commit holds every request's worst case while it runs, so
    // the sum never passes the limit (the issue allows one request's
    // overshoot per replica; reservations need none).
    assert!(
        total <= TOKEN_LIMIT,
        "{total} tokens admitted over {TOKEN_LIMIT}"
    );
    // And the budget was really spent, not refused early: what is left is
    // less than one request's worst case.
    assert!(
        total > TOKEN_LIMIT / 2,
        "only {total} of {TOKEN_LIMIT} admitted"
    );
    for g in &gateways {
        let ok = g.metric("maas_limiter_calls_total", &[("result", "ok")]);
        assert!(ok.unwrap_or(0.0) > 0.0, "{}", g.prometheus());
    }

    // The counter lives in Redis: a restarted limiter still refuses.
    limiter.restart().unwrap();
    for g in &gateways {
        let r = chat(g);
        assert_eq!(r.status, 429, "after the limiter restart: {}", r.text());
    }

    // A limiter that is down fails closed (the default failure mode).
    limiter.kill();
    let r = chat(&gateways[0]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "limiter_unavailable");
    drop(redis);
}

/// Waits until `gateway` has committed the usage of `requests` admitted
/// requests at the limiter (a restarted limiter may take a while to
/// answer: 20 s).
fn await_settled(gateway: &Gateway, requests: u64) {
    eventually(Duration::from_secs(20), || {
        match gateway.metric("maas_limiter_calls_total", &[("result", "settled")]) {
            Some(n) if n >= requests as f64 => Ok(()),
            other => Err(format!(
                "{other:?} of {requests} settled:\n{}",
                gateway.prometheus()
            )),
        }
    });
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("maas-global-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `limiter.cluster` Envoy does not have is a refusal (the default failure
/// mode), request after request: the worker's VM must not abort on it.
#[test]
fn a_limiter_cluster_missing_from_envoy_fails_closed_without_killing_the_filter() {
    let upstream = maas_testkit::MockUpstream::start();
    let gateway = Gateway::builder()
        .filter_config(filter_config())
        .model(MODEL, upstream.addr())
        .start();
    for _ in 0..3 {
        let r = chat(&gateway);
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "limiter_unavailable");
    }
    // Each answer is the filter's own JSON (a VM that aborted would leave
    // Envoy's bare 503), and each refusal is counted.
    let failed = gateway.metric("maas_limiter_calls_total", &[("result", "failed")]);
    assert_eq!(failed, Some(3.0), "{}", gateway.prometheus());
    assert_eq!(upstream.requests().len(), 0, "nothing reached the model");
}

/// The outage tests' limit: room for several requests.
const OUTAGE_LIMIT: u64 = 2_000;

/// The outage tests' configuration: holds that outlast the model's answer
/// (3 s), which a request may not outlive.
fn outage_config() -> Value {
    let mut config = filter_config();
    config["subscriptions"]["shared"]["limits"]["tokens"][0]["rate"] =
        json!(format!("{OUTAGE_LIMIT}/hour"));
    config["limiter"]["reservation_ttl_ms"] = json!(OUTAGE_HOLD_MS);
    // (A hold must outlive the admission's two limiter calls; a loaded
    // two-core machine needs the second.)
    config["limiter"]["timeout_ms"] = json!(1_000);
    config
}

/// How long the outage tests' holds last: their request (3 s at the model)
/// runs within what is left of the hold after its commit's way (`timeout_ms`
/// and a tick) on a loaded machine.
const OUTAGE_HOLD_MS: u64 = 6_000;

/// One request admitted while the limiter is up, whose model answers three
/// seconds later, when the limiter is gone. Returns the tokens the gateway
/// charged it, once its settlement has failed and waits.
fn settle_into_an_outage(gateway: &Gateway, limiter: &mut LimiterProcess) -> u64 {
    let answer = std::thread::scope(|scope| {
        let request = scope.spawn(|| {
            gateway.request(
                "POST",
                "/v1/chat/completions",
                &[
                    ("authorization", &format!("Bearer {KEY}")),
                    ("content-type", "application/json"),
                    ("x-mock-delay-ms", "3000"),
                    ("x-mock-completion-tokens", "40"),
                ],
                Some(
                    json!({"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
                        .to_string()
                        .as_bytes(),
                ),
            )
        });
        eventually(Duration::from_secs(10), || {
            match gateway.metric("maas_limiter_calls_total", &[("result", "ok")]) {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("not admitted by the limiter yet: {other:?}")),
            }
        });
        limiter.kill();
        request.join().unwrap()
    });
    assert_eq!(answer.status, 200, "{}", answer.text());
    let charged = gateway.await_access_log(1)[0]["total_tokens"]
        .as_u64()
        .unwrap();
    assert!(charged > 40, "charged {charged}");
    eventually(Duration::from_secs(10), || {
        match gateway.metric("maas_limiter_calls_total", &[("result", "settle_retry")]) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("no failed settlement yet: {other:?}")),
        }
    });
    charged
}

/// Restarts the limiter and waits for the waiting settlement; then the
/// limiter counts exactly what the gateway charged.
fn assert_counted_when_the_limiter_returns(
    gateway: &Gateway,
    limiter: &mut LimiterProcess,
    charged: u64,
) {
    limiter.restart().unwrap();
    await_settled(gateway, 1);
    // (A check counts what was committed, not what is held.)
    assert_eq!(tokens_check(limiter, OUTAGE_LIMIT - charged), Code::Ok);
    assert_eq!(
        tokens_check(limiter, OUTAGE_LIMIT - charged + 1),
        Code::OverLimit
    );
}

/// A request that ends while the limiter is down still has its usage
/// counted globally: its settlement waits in the filter and is sent again
/// until the restarted limiter takes it. Without that, the usage would be
/// lost (its hold expiring) and later requests could pass the limit by it.
#[test]
fn usage_settled_while_the_limiter_is_down_is_counted_when_it_returns() {
    let config = outage_config();
    let (redis, mut limiter) = start_limiter(&config, "settle-outage");
    let upstream = MockUpstream::start();
    let gateway = gateway_on(config, &upstream, &limiter);
    let charged = settle_into_an_outage(&gateway, &mut limiter);
    assert_counted_when_the_limiter_returns(&gateway, &mut limiter, charged);
    drop(redis);
}

/// A configuration pushed while a settlement waits (a new key, a reload, a
/// new WasmPlugin) ends the filter context that holds it. Envoy asks that
/// context to end once its requests are drained; the usage it still has to
/// deliver is nobody else's, so it lives on until the limiter takes it.
#[test]
fn usage_waiting_when_the_configuration_is_replaced_is_still_counted() {
    let config = outage_config();
    let (redis, mut limiter) = start_limiter(&config, "settle-reload");
    let upstream = MockUpstream::start();
    let mut gateway = Gateway::builder()
        .filter_config(config.clone())
        .model(MODEL, upstream.addr())
        .limiter(limiter.addr())
        .log_level("info")
        .reloadable()
        .start();
    let charged = settle_into_an_outage(&gateway, &mut limiter);

    let mut replaced = config;
    replaced["keys"].as_array_mut().unwrap().push(json!({
        "id": "team-2", "owner": "team", "subscription": "shared",
        "sha256": maas_filter::auth::keys::KeyDigest::of("sk-second-key").to_hex()
    }));
    gateway.replace_filter_config(replaced);
    // Envoy drains the old filter chain for a second, then ends the old
    // configuration's context, which holds the waiting settlement.
    eventually(Duration::from_secs(20), || {
        let log = gateway.envoy_log();
        if log.contains("configuration replaced; delivering its 1 waiting settlements") {
            Ok(())
        } else {
            Err(format!(
                "the replaced configuration has not ended with its settlement waiting:\n{log}"
            ))
        }
    });
    assert_counted_when_the_limiter_returns(&gateway, &mut limiter, charged);
    // And then it ends, its last settlement delivered.
    eventually(Duration::from_secs(10), || {
        if gateway
            .envoy_log()
            .contains("settlements are delivered; it ends")
        {
            Ok(())
        } else {
            Err("the replaced configuration lives on".to_owned())
        }
    });
    // The new configuration serves: its new key is known (and the limiter
    // admits it).
    let r = gateway.post_json(
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-second-key")],
        &json!({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    drop(redis);
}

/// A request may not outlive its global hold: once the hold ends the
/// limiter admits others against the budget it held, so a generation still
/// running would overshoot the limit. The filter sets the request's
/// timeout to the hold's end; Envoy ends the request there (504), and the
/// limiter counts what it is charged: its whole reservation, since a whole
/// answer comes only once complete, so the model may have generated all of
/// it unseen.
#[test]
fn a_request_ends_when_its_global_hold_does() {
    let mut config = filter_config();
    config["limiter"]["reservation_ttl_ms"] = json!(3_000);
    // (A hold must outlive the admission's two limiter calls; a loaded
    // two-core machine needs the second.) The request may run for what is
    // left of the hold less its commit's way: under 2 s.
    config["limiter"]["timeout_ms"] = json!(1_000);
    let (redis, limiter) = start_limiter(&config, "hold-deadline");
    let upstream = MockUpstream::start();
    let gateway = gateway_on(config, &upstream, &limiter);
    let body =
        json!({"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let started = std::time::Instant::now();
    let answer = gateway.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/json"),
            // Past the hold, well within the route's own 600 s.
            ("x-mock-delay-ms", "8000"),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the request ran on past its hold: {:?}",
        started.elapsed()
    );
    let log = &gateway.await_access_log(1)[0];
    assert_eq!(log["usage"], "reserved", "{log}");
    let charged = body.len() as u64 + 50;
    assert_eq!(log["total_tokens"].as_u64(), Some(charged), "{log}");
    // The limiter counts the charge, committed.
    await_settled(&gateway, 1);
    assert_eq!(tokens_check(&limiter, TOKEN_LIMIT - charged), Code::Ok);
    assert_eq!(
        tokens_check(&limiter, TOKEN_LIMIT - charged + 1),
        Code::OverLimit
    );
    drop(redis);
}
