//! Token holders: `jwt_authn` verified the token, the filter maps its groups
//! to a subscription.

use super::*;

fn harness() -> Harness {
    harness_with(|_| {})
}

/// `free` is for students and allows each holder 1 request a minute;
/// `change` adjusts the configuration further.
fn harness_with(change: impl FnOnce(&mut serde_json::Value)) -> Harness {
    let mut v = config_json();
    v["oidc"] = serde_json::json!({});
    v["subscriptions"]["free"]["groups"] = serde_json::json!(["students"]);
    v["subscriptions"]["metered"]["groups"] = serde_json::json!(["ml-team", "students"]);
    v["subscriptions"]["free"]["key_limits"] = serde_json::json!({"requests": ["1/min"]});
    change(&mut v);
    Harness::with_config(Config::from_json(v.to_string().as_bytes()).unwrap())
}

/// Envoy's pairs encoding of a list of strings.
fn list(items: &[&str]) -> Vec<u8> {
    let mut out = (items.len() as u32).to_le_bytes().to_vec();
    for i in items {
        out.extend_from_slice(&(i.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    for i in items {
        out.extend_from_slice(i.as_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out
}

fn verified(h: &Harness, sub: &str, groups: &[&str]) {
    let mut c = h.host.claims.borrow_mut();
    c.insert("sub".into(), sub.as_bytes().to_vec());
    c.insert("groups".into(), list(groups));
}

const CHAT: &str = r#"{"model":"m1","max_tokens":10,"messages":[]}"#;

fn token_chat(h: &Harness) -> Stream {
    h.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer eyJhbGciOi.verified.by-envoy")],
        CHAT,
    )
}

#[test]
fn a_verified_token_uses_the_first_subscription_its_groups_map_to() {
    let h = harness();
    verified(&h, "alice@example.com", &["other", "students"]);
    let mut s = token_chat(&h);
    assert!(h.replied().is_none(), "{:?}", h.replied());
    let hdr = |n: &str| h.host.request_header(n);
    assert_eq!(hdr("x-maas-subscription").as_deref(), Some("free"));
    assert_eq!(hdr("x-maas-user").as_deref(), Some("alice@example.com"));
    assert_eq!(hdr("x-maas-key-id"), None);
    assert_eq!(hdr("authorization"), None, "the token goes no further");
    h.respond_json(
        &mut s,
        200,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
    );
    let audit = h.host.audit.borrow().clone().unwrap();
    assert_eq!(audit["user"], "alice@example.com");
    assert_eq!(audit["subscription"], "free");
    assert!(audit.get("key_id").is_none_or(|v| v.is_null()));
    // The subscription's per-key limits count each user like one key.
    token_chat(&h);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 429);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("user alice@example.com"));
}

#[test]
fn a_single_string_group_claim_counts_too() {
    let h = harness();
    h.host
        .claims
        .borrow_mut()
        .insert("sub".into(), b"bob".to_vec());
    h.host
        .claims
        .borrow_mut()
        .insert("groups".into(), b"ml-team".to_vec());
    token_chat(&h);
    assert!(h.replied().is_none());
    assert_eq!(
        h.host.request_header("x-maas-subscription").as_deref(),
        Some("metered")
    );
}

#[test]
fn a_token_without_a_mapped_group_gets_403() {
    let h = harness();
    verified(&h, "mallory", &["visitors"]);
    token_chat(&h);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "no_subscription");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("mallory"));
    assert_eq!(
        h.metric("maas.auth_failures_total.reason=.=no_subscription;.;"),
        1
    );
}

#[test]
fn an_unverified_bearer_token_is_just_an_invalid_key() {
    // No claims: jwt_authn did not verify it (forged, expired, or absent).
    let h = harness();
    token_chat(&h);
    assert_eq!(h.replied().unwrap().0, 401);
    // And API keys keep working beside OIDC.
    h.chat(CHAT);
    assert!(h.replied().is_none());
}

#[test]
fn claims_are_ignored_when_oidc_is_not_configured() {
    let h = Harness::new();
    verified(&h, "alice", &["students"]);
    token_chat(&h);
    assert_eq!(h.replied().unwrap().0, 401);
}

#[test]
fn per_owner_key_limits_are_shared_by_the_owners_keys_and_token() {
    // alice has key alice-1 (in `free`) and a token.
    for (per, key_status) in [("key", None), ("owner", Some(429))] {
        let h = harness_with(|v| {
            v["subscriptions"]["free"]["key_limits_per"] = serde_json::json!(per);
        });
        verified(&h, "alice", &["students"]);
        token_chat(&h);
        assert!(h.replied().is_none(), "{per}: {:?}", h.replied());
        h.host.claims.borrow_mut().clear();
        h.chat(CHAT);
        assert_eq!(h.replied().map(|r| r.0), key_status, "{per}");
    }
}

#[test]
fn a_subject_in_the_control_planes_namespace_is_nobody() {
    // `maas:admin` is the control plane's administrator; a token claiming
    // it gets no identity (and so no key's budget or header): its bearer
    // token is then just an invalid key.
    let h = harness();
    verified(&h, "maas:admin", &["students"]);
    token_chat(&h);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(h.host.request_header("x-maas-user"), None);
}
