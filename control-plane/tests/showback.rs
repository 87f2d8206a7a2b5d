//! Showback through the real gateway: Envoy with the filter in front of the
//! OpenAI-shaped test upstream, the control plane's sampler reading Envoy's
//! `/stats/prometheus`, usage landing in the database exactly as the
//! responses reported it, under the caller's key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

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
    let config = json!({
        "models": ["m1"],
        "subscriptions": {"team-a": {"models": ["m1"], "limits": "unlimited"}},
        "keys": [{"id": "k1", "owner": "alice", "subscription": "team-a", "sha256": KeyDigest::of(KEY).to_hex()}]
    });
    let gateway = Gateway::builder()
        .filter_config(config)
        .model("m1", upstream.addr())
        .concurrency(1)
        .start();

    let dir = std::env::temp_dir().join(format!("maas-showback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("db").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(Store::connect(&url)).unwrap();
    let admin = gateway.admin_url("");
    runtime.spawn(sampler::run(
        store.clone(),
        vec![admin],
        Duration::from_millis(200),
    ));
    // Let the sampler take its baseline before any traffic.
    std::thread::sleep(Duration::from_millis(500));

    let auth = format!("Bearer {KEY}");
    let mut expected = Usage::default();
    for (prompt, completion) in [(11, 7), (20, 3)] {
        let (p, c) = (prompt.to_string(), completion.to_string());
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
        expected.requests += 1;
        expected.prompt_tokens += prompt;
        expected.completion_tokens += completion;
    }

    let rows = eventually(Duration::from_secs(15), || {
        let rows = runtime
            .block_on(store.usage(0, i64::MAX))
            .map_err(|e| e.to_string())?;
        match rows.as_slice() {
            [UsageRow { usage, .. }] if *usage == expected => Ok(rows),
            _ => Err(format!("usage so far: {rows:?}, waiting for {expected:?}")),
        }
    });
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
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
}
