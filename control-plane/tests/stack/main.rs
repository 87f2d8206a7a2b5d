//! End to end over the real stack (Envoy + filter + inference server +
//! control plane), each scenario once on SQLite and once on the PostgreSQL
//! server `MAAS_TEST_POSTGRES_URL` names (`make test` starts one; without it
//! the PostgreSQL scenarios fail, saying so).
//!
//! What a user would check: a key minted through the API works at once; its
//! streamed usage is charged to its subscription and shows in `/v1/usage`;
//! revocation and expiry take effect within the sync bound, and so does the
//! revocation a subscription's change of groups makes; subscriptions
//! fence models; callers cannot touch each other's keys; forged or expired
//! tokens are refused; bad input changes nothing; and the gateway keeps
//! serving the keys it knows while the control plane is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;
#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use harness::{Backend, Stack, MODEL, OTHER_MODEL, SYNC_INTERVAL_MS};
use maas_testkit::{eventually, prometheus, Restartable};
use serde_json::{json, Value};
use support::{now, token, token_with, FORGER_KEY, ISSUER_KEY};

/// Revocation reaches the gateway within one sync interval plus the call;
/// the tests allow generous slack for a loaded CI box (the measured figure
/// is in BENCHMARKS.md).
const REVOCATION_BOUND: Duration = Duration::from_secs(5);

macro_rules! on_each_backend {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $scenario() { super::$scenario(super::Backend::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $scenario() { super::$scenario(super::Backend::Postgres) } )*
        }
    };
}

on_each_backend!(
    self_service_keys_work_at_once_and_are_accounted_and_revoked,
    a_group_leaving_a_subscription_ends_its_keys_at_the_gateway,
    subscriptions_and_owners_fence_keys_and_models,
    bad_input_gets_400_and_changes_nothing,
    oidc_tokens_on_model_traffic,
    the_gateway_outlives_the_control_plane,
);

/// The sync API hands every key's digest and every subscription to the
/// gateways, through their own cluster; on the public listener it does not
/// exist, however the path is spelled, even with the gateway's token.
#[test]
fn the_sync_api_is_not_served_on_the_public_listener() {
    let s = Stack::start(Backend::Sqlite, false);
    let token = s.cp.gateway_token();
    let direct = s.cp.call("GET", "/maas-api/v1/sync?since=0", &token, None);
    assert_eq!(
        direct.status,
        200,
        "the gateway's own route: {}",
        direct.text()
    );
    for path in [
        "/maas-api/v1/sync?since=0",
        "/maas-api/v1/sync",
        "/maas-api/v1/sync/keys/abc",
        "/maas-api//v1/sync?since=0",
        "/maas-api/v1/./sync?since=0",
        "/maas-api/v1/x/../sync?since=0",
    ] {
        let r = s.api("GET", path, &token, None);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unknown_url", "{path}");
    }
    // Spellings Envoy does not normalise reach the control plane, which
    // has no such route either.
    for path in ["/maas-api/v1/%73ync?since=0", "/maas-api/v1/SYNC?since=0"] {
        let r = s.api("GET", path, &token, None);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    // The rest of the API still answers through the gateway.
    let r = s.api("GET", "/maas-api/v1/subscriptions", &s.admin, None);
    assert_eq!(r.status, 200, "{}", r.text());
}

fn usage_of(v: &Value) -> (u64, u64) {
    (
        v["prompt_tokens"].as_u64().unwrap(),
        v["completion_tokens"].as_u64().unwrap(),
    )
}

fn self_service_keys_work_at_once_and_are_accounted_and_revoked(backend: Backend) {
    let s = Stack::start(backend, true);
    let alice = token("alice", &["team-a"]);
    let minted = s.mint(&alice, json!({"name": "laptop", "subscription": "team-a"}));
    let key = minted["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-maas-"));

    // At once: the gateway has never seen the key and asks for it.
    let first = s.chat(&key, MODEL, false);
    assert_eq!(first.status, 200, "{}", first.text());
    let body = first.json();
    let mut expected = usage_of(&body["usage"]);

    // Streamed, charged to team-a.
    let streamed = s.chat(&key, MODEL, true);
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    let events = streamed.sse_data();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .find(|e| e["usage"].is_object())
        .expect("the stream carries usage")["usage"]
        .clone();
    let (p, c) = usage_of(&usage);
    expected = (expected.0 + p, expected.1 + c);
    let stats = s.stats();
    let charged = prometheus::metric(
        &stats,
        "maas_total_tokens_total",
        &[("subscription", "team-a"), ("model", MODEL)],
    );
    assert_eq!(charged, Some((expected.0 + expected.1) as f64));

    // Showback: /v1/usage equals the sum of the responses' usage.
    eventually(Duration::from_secs(15), || {
        let u = s.api("GET", "/maas-api/v1/usage", &alice, None).json();
        let row = u["data"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["subscription"] == "team-a"))
            .cloned()
            .ok_or_else(|| format!("no team-a usage yet: {u}"))?;
        let got = (usage_of(&row), row["requests"].as_u64().unwrap());
        if got == (expected, 2) {
            Ok(())
        } else {
            Err(format!("usage {got:?}, want {expected:?} over 2 requests"))
        }
    });

    // Revoked: refused within the sync bound.
    let id = minted["id"].as_str().unwrap();
    let r = s.api(
        "DELETE",
        &format!("/maas-api/v1/api-keys/{id}"),
        &alice,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let took = s.until_status(&key, 401, REVOCATION_BOUND);
    eprintln!("DELETE → first 401: {took:?} (sync interval {SYNC_INTERVAL_MS} ms)");
    let refused = s.chat(&key, MODEL, false);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"]["code"], "invalid_api_key");

    // Expired: a key minted with a short lifetime works, then stops. (Its
    // creation time is in whole seconds, so 6 s is 5 to 6 s: room for the
    // first answer on a loaded machine.)
    let short = s.mint(
        &alice,
        json!({"name": "short", "subscription": "team-a", "expires_in": "6s"}),
    );
    let short_key = short["key"].as_str().unwrap();
    assert_eq!(s.chat(short_key, MODEL, false).status, 200);
    s.until_status(short_key, 401, Duration::from_secs(15));
    let stats = s.stats();
    assert!(
        prometheus::metric(&stats, "maas_auth_failures_total", &[("reason", "expired")])
            .is_some_and(|n| n >= 1.0),
        "{stats}"
    );
}

/// A key minted through a group stops working at the gateway once that
/// group leaves its subscription; a key minted through a group that stays
/// goes on working.
fn a_group_leaving_a_subscription_ends_its_keys_at_the_gateway(backend: Backend) {
    let s = Stack::start(backend, false);
    let team_a = |groups: &[&str]| {
        json!({"name": "team-a", "models": [MODEL], "limits": {"tokens": ["100000/min"]},
               "groups": groups})
    };
    let put = |spec: Value| {
        let r = s.api(
            "PUT",
            "/maas-api/v1/subscriptions/team-a",
            &s.admin,
            Some(&spec),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    put(team_a(&["team-a", "team-a-ci"]));
    let alice = token("alice", &["team-a"]);
    let ci = token("ci-bot", &["team-a-ci"]);
    let leaving = s.mint(&alice, json!({"name": "laptop", "subscription": "team-a"}));
    let staying = s.mint(&ci, json!({"name": "ci", "subscription": "team-a"}));
    let (leaving, staying) = (
        leaving["key"].as_str().unwrap(),
        staying["key"].as_str().unwrap(),
    );
    assert_eq!(s.chat(leaving, MODEL, false).status, 200);
    assert_eq!(s.chat(staying, MODEL, false).status, 200);

    put(team_a(&["team-a-ci"]));
    let took = s.until_status(leaving, 401, REVOCATION_BOUND);
    eprintln!("groups changed → first 401: {took:?} (sync interval {SYNC_INTERVAL_MS} ms)");
    assert_eq!(s.chat(leaving, MODEL, false).status, 401);
    assert_eq!(
        s.chat(staying, MODEL, false).status,
        200,
        "team-a-ci stayed"
    );
}

fn subscriptions_and_owners_fence_keys_and_models(backend: Backend) {
    let s = Stack::start(backend, false);
    let alice = token("alice", &["team-a"]);
    let bob = token("bob", &["team-b"]);
    let a = s.mint(&alice, json!({"name": "a", "subscription": "team-a"}));
    let a_key = a["key"].as_str().unwrap();

    // A key of team-a on a model only team-b may use.
    let r = s.chat(a_key, OTHER_MODEL, false);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let listed = s
        .gateway
        .request("GET", "/v1/models", &[("x-api-key", a_key)], None)
        .json();
    assert_eq!(
        listed["data"],
        json!([{"id": MODEL, "object": "model", "created": 0, "owned_by": "maas"}])
    );

    // Bob may not mint for team-a, nor see or revoke Alice's key.
    let r = s.api(
        "POST",
        "/maas-api/v1/api-keys",
        &bob,
        Some(&json!({"name": "x", "subscription": "team-a"})),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = s.api("GET", "/maas-api/v1/api-keys?owner=alice", &bob, None);
    assert_eq!(r.status, 403);
    let mine = s.api("GET", "/maas-api/v1/api-keys", &bob, None).json();
    assert_eq!(mine["data"], json!([]));
    let id = a["id"].as_str().unwrap();
    let r = s.api("DELETE", &format!("/maas-api/v1/api-keys/{id}"), &bob, None);
    assert_eq!(r.status, 404);
    assert_eq!(
        s.chat(a_key, MODEL, false).status,
        200,
        "still Alice's and working"
    );

    // Forged and expired tokens get nothing from the API.
    let forged = token_with(FORGER_KEY, "alice", &["team-a"], now() + 600);
    let expired = token_with(ISSUER_KEY, "alice", &["team-a"], now() - 120);
    for bad in [&forged, &expired] {
        let r = s.api("GET", "/maas-api/v1/api-keys", bad, None);
        assert_eq!(r.status, 401, "{}", r.text());
    }
}

fn bad_input_gets_400_and_changes_nothing(backend: Backend) {
    let s = Stack::start(backend, false);
    let admin = s.admin.clone();
    let before_keys = s.api("GET", "/maas-api/v1/api-keys", &admin, None).json();
    let before_subs = s
        .api("GET", "/maas-api/v1/subscriptions", &admin, None)
        .json();
    let cases: Vec<(&str, &str, &str)> = vec![
        ("POST", "/maas-api/v1/api-keys", "{not json"),
        (
            "POST",
            "/maas-api/v1/api-keys",
            r#"{"name": "k", "subscription": "no-such-subscription"}"#,
        ),
        (
            "POST",
            "/maas-api/v1/api-keys",
            r#"{"name": "k'; DROP TABLE api_keys; --", "subscription": "team-a'--"}"#,
        ),
        (
            "PUT",
            "/maas-api/v1/subscriptions/team-c",
            r#"{"name": "team-c", "models": ["m"], "limits": {"tokens": ["-5/min"]}}"#,
        ),
        (
            "PUT",
            "/maas-api/v1/subscriptions/x'%3B%20DROP%20TABLE%20subscriptions",
            r#"{"name": "x'; DROP TABLE subscriptions", "models": ["m"], "limits": "unlimited"}"#,
        ),
    ];
    let auth = format!("Bearer {admin}");
    for (method, path, body) in cases {
        let r = s.gateway.request(
            method,
            path,
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        let message = r.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!message.is_empty(), "{}", r.text());
    }
    assert_eq!(
        s.api("GET", "/maas-api/v1/api-keys", &admin, None).json(),
        before_keys
    );
    assert_eq!(
        s.api("GET", "/maas-api/v1/subscriptions", &admin, None)
            .json(),
        before_subs
    );

    // And on the model side: malformed JSON with a valid key.
    let key = s.mint(&admin, json!({"name": "k", "subscription": "team-a"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = format!("Bearer {key}");
    let r = s.gateway.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        Some(b"{\"model\": "),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

fn oidc_tokens_on_model_traffic(backend: Backend) {
    let s = Stack::start(backend, false);
    // Envoy's jwt_authn verifies the token; the filter maps its group.
    let alice = token("alice", &["other", "team-a"]);
    let r = s.chat(&alice, MODEL, false);
    assert_eq!(r.status, 200, "{}", r.text());
    let stats = s.stats();
    assert!(prometheus::metric(
        &stats,
        "maas_total_tokens_total",
        &[("subscription", "team-a"), ("model", MODEL)]
    )
    .is_some_and(|n| n > 0.0));

    // Verified, but no group with a subscription.
    let carol = token("carol", &["visitors"]);
    let r = s.chat(&carol, MODEL, false);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "no_subscription");

    // Forged or expired: no verified identity, and not an API key either.
    let forged = token_with(FORGER_KEY, "alice", &["team-a"], now() + 600);
    let expired = token_with(ISSUER_KEY, "alice", &["team-a"], now() - 120);
    for bad in [&forged, &expired] {
        let r = s.chat(bad, MODEL, false);
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }

    // A valid token counts only in `Authorization`: in the query string
    // (Envoy's default also reads `access_token` there) it would go on to
    // the model's servers with the path.
    let r = s.gateway.post_json(
        &format!("/v1/chat/completions?access_token={alice}"),
        &[],
        &json!({"model": MODEL, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hello."}]}),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "missing_api_key", "{}", r.text());
}

fn the_gateway_outlives_the_control_plane(backend: Backend) {
    let mut s = Stack::start(backend, false);
    let admin = s.admin.clone();
    let keep = s.mint(
        &admin,
        json!({"name": "keep", "subscription": "team-a", "owner": "dana"}),
    );
    let drop_later = s.mint(
        &admin,
        json!({"name": "drop", "subscription": "team-a", "owner": "dana"}),
    );
    let (keep_key, drop_key) = (
        keep["key"].as_str().unwrap().to_string(),
        drop_later["key"].as_str().unwrap().to_string(),
    );
    // Both known to the gateway (synced or looked up).
    s.until_status(&keep_key, 200, REVOCATION_BOUND);
    s.until_status(&drop_key, 200, REVOCATION_BOUND);

    s.cp.kill();
    // Known keys keep working while the control plane is down.
    std::thread::sleep(Duration::from_millis(3 * SYNC_INTERVAL_MS));
    let r = s.chat(&keep_key, MODEL, false);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.stats());
    let r = s.api("GET", "/maas-api/v1/subscriptions", &admin, None);
    assert_eq!(r.status, 503, "the API route has no upstream: {}", r.text());
    // The filter reports how stale its key set is.
    eventually(Duration::from_secs(10), || {
        let age = prometheus::metric(&s.stats(), "maas_key_sync_age_seconds", &[]);
        match age {
            Some(a) if a >= 1.0 => Ok(()),
            other => Err(format!("sync age {other:?}")),
        }
    });
    let stats = s.stats();
    assert!(
        prometheus::metric(&stats, "maas_key_syncs_total", &[("result", "failed")])
            .is_some_and(|n| n >= 1.0),
        "{stats}"
    );

    // Back on the same port and database: it catches up.
    s.cp.restart().unwrap();
    let id = drop_later["id"].as_str().unwrap();
    let r = s.api(
        "DELETE",
        &format!("/maas-api/v1/api-keys/{id}"),
        &admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    s.until_status(&drop_key, 401, REVOCATION_BOUND);
    assert_eq!(s.chat(&keep_key, MODEL, false).status, 200);
    eventually(Duration::from_secs(10), || {
        match prometheus::metric(&s.stats(), "maas_key_sync_age_seconds", &[]) {
            Some(a) if a < 1.0 => Ok(()),
            other => Err(format!("sync age {other:?}")),
        }
    });
}
