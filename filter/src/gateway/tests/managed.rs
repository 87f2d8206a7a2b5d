//! Keys minted by the control plane: found in shared data after a sync,
//! looked up once when never seen, refused once revoked.

use super::*;
use crate::auth::key_sync;
use crate::auth::managed_keys::{parse_sync, salted_digest};

const SALT: [u8; 16] = [9; 16];
const ID: &str = "abcdefgh2345";
const SECRET: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcd";

fn managed_key() -> String {
    format!("sk-maas-{ID}-{SECRET}")
}

fn key_json(revoked: bool, version: u64) -> serde_json::Value {
    serde_json::json!({
        "id": ID, "owner": "erin", "subscription": "team-a",
        "salt": crate::auth::keys::encode_hex(&SALT),
        "sha256": salted_digest(&SALT, ID, SECRET).to_hex(),
        "revoked": revoked, "version": version
    })
}

fn team_a() -> serde_json::Value {
    serde_json::json!({
        "name": "team-a", "models": ["m1", "not-routed-here"],
        "limits": {"tokens": ["500/min"]},
        "key_limits": {"requests": ["2/min"]}
    })
}

fn harness() -> Harness {
    let mut v = config_json();
    v["control_plane"] = serde_json::json!({
        "cluster": "maas-control-plane", "token": "gw-token",
        "lookups_per_second": 2, "negative_cache_ms": 5000
    });
    Harness::with_config(Config::from_json(v.to_string().as_bytes()).unwrap())
}

impl Harness {
    /// Applies a sync answer as the root context would, and rebuilds the
    /// policy the next request starts with.
    fn sync(&self, body: serde_json::Value) {
        let delta = parse_sync(body.to_string().as_bytes()).unwrap();
        let key_sync::Applied::Synced(state) =
            key_sync::apply(&self.host.store, &delta, self.host.now_ms.get()).unwrap()
        else {
            panic!("refused as another store");
        };
        let synced = key_sync::read_subscriptions(&self.host.store).unwrap();
        let policy = Policy::with_synced(&self.config, state, &synced, &mut |w| panic!("{w}"));
        *self.policy.borrow_mut() = Rc::new(policy);
    }

    /// Request headers with the managed key, through `on_request_headers`,
    /// which holds them while it asks the control plane; the stream returned
    /// plays the rest.
    fn held(&self, method: &str, path: &str, end_of_stream: bool) -> Stream {
        *self.host.request_headers.borrow_mut() = vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            ("authorization".into(), format!("Bearer {}", managed_key())),
        ];
        let mut s = self.stream();
        assert_eq!(s.on_request_headers(&self.host, end_of_stream), Flow::Pause);
        s
    }

    fn managed_chat(&self, body: &str) -> Stream {
        self.request(
            "POST",
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {}", managed_key()))],
            body,
        )
    }
}

const CHAT: &str = r#"{"model":"m1","max_tokens":10,"messages":[]}"#;

#[test]
fn a_synced_key_is_admitted_under_its_synced_subscription() {
    let h = harness();
    h.sync(serde_json::json!({"version": 3, "full": true,
        "subscriptions": [team_a()], "keys": [key_json(false, 2)]}));
    let mut s = h.managed_chat(CHAT);
    assert!(h.replied().is_none(), "{:?}", h.replied());
    assert!(
        h.host.lookups.borrow().is_empty(),
        "no lookup for a synced key"
    );
    let hdr = |n: &str| h.host.request_header(n);
    assert_eq!(hdr("x-maas-key-id").as_deref(), Some(ID));
    assert_eq!(hdr("x-maas-user").as_deref(), Some("erin"));
    assert_eq!(hdr("x-maas-subscription").as_deref(), Some("team-a"));
    assert!(h.host.store.get("maas/sub/team-a/t60").unwrap().is_some());
    h.respond_json(
        &mut s,
        200,
        r#"{"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
    );
    assert_eq!(
        h.metric("maas.total_tokens_total.subscription=.=team-a;.;model=.=m1;.;"),
        12
    );
    // The per-key template applies to this key alone: 2 requests a minute.
    h.managed_chat(CHAT);
    assert!(h.replied().is_none());
    h.managed_chat(CHAT);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 429);
    assert!(body["error"]["message"].as_str().unwrap().contains(ID));
}

#[test]
fn a_revocation_synced_later_refuses_the_key_and_an_older_lookup_cannot_undo_it() {
    let h = harness();
    h.sync(serde_json::json!({"version": 3, "full": true,
        "subscriptions": [team_a()], "keys": [key_json(false, 2)]}));
    h.sync(serde_json::json!({"version": 4, "keys": [key_json(true, 4)]}));
    h.managed_chat(CHAT);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(h.metric("maas.auth_failures_total.reason=.=revoked;.;"), 1);
    let stale = serde_json::json!({"version": 0, "keys": [key_json(false, 2)]});
    let delta = parse_sync(stale.to_string().as_bytes()).unwrap();
    key_sync::record_lookup(&h.host.store, ID, delta.keys.first(), 0).unwrap();
    h.managed_chat(CHAT);
    assert_eq!(h.replied().unwrap().0, 401, "still revoked");
}

#[test]
fn a_wrong_secret_for_a_known_id_is_refused() {
    let h = harness();
    h.sync(serde_json::json!({"version": 3, "full": true,
        "subscriptions": [team_a()], "keys": [key_json(false, 2)]}));
    let forged = format!("sk-maas-{ID}-{}", "x".repeat(40));
    h.request("GET", "/v1/models", &[("x-api-key", &forged)], "");
    assert_eq!(h.replied().unwrap().0, 401);
    assert!(h.host.lookups.borrow().is_empty());
}

#[test]
fn a_never_seen_key_is_held_looked_up_once_and_then_admitted() {
    let h = harness();
    h.sync(serde_json::json!({"version": 3, "full": true, "subscriptions": [team_a()]}));
    *h.host.request_body.borrow_mut() = CHAT.as_bytes().to_vec();
    let mut s = h.held("POST", "/v1/chat/completions", false);
    assert_eq!(*h.host.lookups.borrow(), [ID]);
    // The body arrives while the control plane is being asked.
    assert_eq!(s.on_request_body(&h.host, CHAT.len(), true), Flow::Buffer);
    assert_eq!(h.host.resumed.get(), 0);
    let answer = serde_json::json!({"version": 0, "keys": [key_json(false, 5)],
        "subscriptions": [team_a()]});
    s.on_key_lookup(&h.host, Some(200), answer.to_string().as_bytes());
    assert!(h.replied().is_none(), "{:?}", h.replied());
    assert_eq!(h.host.resumed.get(), 1, "the held request goes on");
    assert_eq!(h.host.request_header("x-maas-model").as_deref(), Some("m1"));
    h.assert_admitted("m1");
    assert_eq!(h.metric("maas.key_lookups_total.result=.=found;.;"), 1);
    // Stored: the next request needs no lookup.
    h.managed_chat(CHAT);
    assert!(h.replied().is_none());
    assert_eq!(h.host.lookups.borrow().len(), 1);
}

#[test]
fn a_key_of_a_subscription_not_yet_synced_uses_the_lookups_copy() {
    let h = harness();
    let mut s = h.held("GET", "/v1/models", true);
    let answer = serde_json::json!({"version": 0, "keys": [key_json(false, 5)],
        "subscriptions": [team_a()]});
    s.on_key_lookup(&h.host, Some(200), answer.to_string().as_bytes());
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["id"], "m1", "only the models routed here");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    // Until the sync brings the subscription, each request asks again
    // rather than refusing a valid key.
    let mut s = h.request("GET", "/v1/models", &[("x-api-key", &managed_key())], "");
    assert!(h.replied().is_none(), "held, not refused");
    assert_eq!(h.host.lookups.borrow().len(), 2);
    s.on_key_lookup(&h.host, Some(200), answer.to_string().as_bytes());
    assert_eq!(h.replied().unwrap().0, 200);
}

#[test]
fn an_unknown_key_is_refused_and_remembered() {
    let h = harness();
    let mut s = h.held("GET", "/v1/models", true);
    s.on_key_lookup(&h.host, Some(404), b"{}");
    assert_eq!(h.replied().unwrap().0, 401);
    h.request("GET", "/v1/models", &[("x-api-key", &managed_key())], "");
    assert_eq!(h.replied().unwrap().0, 401);
    assert_eq!(
        h.host.lookups.borrow().len(),
        1,
        "the absence was remembered"
    );
    assert_eq!(h.metric("maas.key_lookups_total.result=.=absent;.;"), 1);
}

#[test]
fn an_unreachable_control_plane_gets_503_and_lookups_are_bounded() {
    let h = harness();
    let mut s = h.held("GET", "/v1/models", true);
    s.on_key_lookup(&h.host, None, b"");
    let (status, headers, body) = h.replied().unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "key_lookup_unavailable");
    assert!(headers.iter().any(|(k, v)| k == "retry-after" && v == "1"));
    // Two lookups a second for the whole gateway: the third id is refused
    // without a call.
    for id in ["bbbbbbbbbbbb", "cccccccccccc"] {
        let key = format!("sk-maas-{id}-{SECRET}");
        h.request("GET", "/v1/models", &[("x-api-key", &key)], "");
    }
    assert_eq!(h.host.lookups.borrow().len(), 2);
    assert_eq!(h.metric("maas.key_lookups_total.result=.=throttled;.;"), 1);
    assert_eq!(h.replied().unwrap().0, 401);
    h.host.lookups_fail.set(true);
    h.host.now_ms.set(h.host.now_ms.get() + 1000);
    h.request("GET", "/v1/models", &[("x-api-key", &managed_key())], "");
    assert_eq!(h.replied().unwrap().0, 503, "the call could not be made");
}

#[test]
fn without_a_control_plane_managed_keys_are_simply_unknown() {
    let h = Harness::new();
    h.request("GET", "/v1/models", &[("x-api-key", &managed_key())], "");
    assert_eq!(h.replied().unwrap().0, 401);
    assert!(h.host.lookups.borrow().is_empty());
}

#[test]
fn trailers_cannot_release_a_request_held_for_its_key() {
    let h = harness();
    let mut s = h.held("POST", "/v1/chat/completions", false);
    assert_eq!(s.on_request_body(&h.host, 10, false), Flow::Buffer);
    assert_eq!(s.on_request_trailers(&h.host), Flow::Pause);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "unsupported_trailers");
    // The answer arriving later changes nothing.
    let answer = serde_json::json!({"version": 0, "keys": [key_json(false, 5)],
        "subscriptions": [team_a()]});
    s.on_key_lookup(&h.host, Some(200), answer.to_string().as_bytes());
    assert_eq!(h.host.resumed.get(), 0);
    assert_eq!(h.replied().unwrap().0, 400);
}

#[test]
fn a_lookup_answer_older_than_the_stored_record_does_not_admit() {
    let h = harness();
    h.sync(serde_json::json!({"version": 3, "full": true, "subscriptions": [team_a()]}));
    let mut s = h.held("GET", "/v1/models", true);
    // The sync brings the revocation while the lookup is in flight.
    h.sync(serde_json::json!({"version": 4, "keys": [key_json(true, 4)]}));
    let stale = serde_json::json!({"version": 0, "keys": [key_json(false, 2)]});
    s.on_key_lookup(&h.host, Some(200), stale.to_string().as_bytes());
    assert_eq!(h.replied().unwrap().0, 401);
}

/// A second key of erin's, in the same subscription.
const ID2: &str = "bcdefgh23456";

fn second_key_json() -> serde_json::Value {
    let mut k = key_json(false, 3);
    k["id"] = serde_json::json!(ID2);
    k["sha256"] = serde_json::json!(salted_digest(&SALT, ID2, SECRET).to_hex());
    k
}

#[test]
fn key_limits_count_each_key_or_each_owners_keys_together() {
    // team-a's key_limits allow 2 requests a minute. Erin sends two on her
    // first key and one on her second.
    for (per, second_key_status) in [("key", None), ("owner", Some(429))] {
        let h = harness();
        let mut sub = team_a();
        sub["key_limits_per"] = serde_json::json!(per);
        h.sync(
            serde_json::json!({"version": 3, "full": true, "subscriptions": [sub],
            "keys": [key_json(false, 2), second_key_json()]}),
        );
        h.managed_chat(CHAT);
        h.managed_chat(CHAT);
        assert!(h.replied().is_none(), "{per}: {:?}", h.replied());
        let second = format!("sk-maas-{ID2}-{SECRET}");
        h.request(
            "POST",
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {second}"))],
            CHAT,
        );
        let replied = h.replied();
        assert_eq!(replied.as_ref().map(|r| r.0), second_key_status, "{per}");
        if let Some((_, _, body)) = replied {
            // The owner's budget, named as hers.
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("user erin"), "{message}");
        }
    }
}

#[test]
fn a_key_whose_owner_could_not_be_a_header_is_refused() {
    // Stored before the control plane validated owners: refused, never
    // sent upstream as `x-maas-user`.
    let h = harness();
    let mut key = key_json(false, 2);
    key["owner"] = serde_json::json!("erin\r\nx-maas-subscription: gold");
    h.sync(serde_json::json!({"version": 3, "full": true,
        "subscriptions": [team_a()], "keys": [key]}));
    h.managed_chat(CHAT);
    assert_eq!(h.replied().unwrap().0, 401);
    assert_eq!(h.host.request_header("x-maas-user"), None);
}

#[test]
fn a_configured_key_follows_its_subscriptions_key_limits_as_synced() {
    // The configuration's "free" has no key_limits; the control plane's
    // "free" allows each key one request a minute.
    let h = harness();
    h.sync(
        serde_json::json!({"version": 3, "full": true, "keys": [], "subscriptions": [{
            "name": "free", "models": ["m1"], "limits": {"requests": ["3/min"]},
            "key_limits": {"requests": ["1/min"]}
        }]}),
    );
    let mut first = h.chat(CHAT);
    assert!(h.replied().is_none(), "{:?}", h.replied());
    h.respond_json(
        &mut first,
        200,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
    );
    h.chat(CHAT);
    let (status, _, body) = h.replied().expect("refused by the synced key_limits");
    assert_eq!(status, 429, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("key alice-1"), "{message}");
}
