//! How long a key's access lasts, over real HTTP: a key minted through an
//! OIDC group is revoked (and the gateways told by sync) when an
//! administrator takes that group off its subscription, and with a maximum
//! key lifetime no key outlives it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use maas_filter::auth::managed_keys::{parse, parse_sync};
use serde_json::{json, Value};
use support::*;

const MODEL: &str = "smollm2-135m-instruct";

fn shared(groups: &[&str]) -> Value {
    json!({"name": "shared", "models": [MODEL], "limits": "unlimited", "groups": groups})
}

fn minted(r: maas_testkit::Response) -> Value {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// `bearer`'s own keys, by id, with their status.
fn statuses(cp: &ControlPlane, bearer: &str) -> Vec<(String, String)> {
    let listed = cp.call("GET", "/maas-api/v1/api-keys", Some(bearer), None);
    assert_eq!(listed.status, 200, "{}", listed.text());
    listed.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let s = |f: &str| k[f].as_str().unwrap().to_string();
            (s("id"), s("status"))
        })
        .collect()
}

fn sync(cp: &ControlPlane, since: u64) -> maas_testkit::Response {
    cp.call(
        "GET",
        &format!("/maas-api/v1/sync?since={since}"),
        Some(GATEWAY),
        None,
    )
}

#[test]
fn a_key_minted_through_a_group_the_subscription_drops_is_revoked_and_synced() {
    let cp = setup();
    assert_eq!(cp.subscription(shared(&["group-a", "group-b"])).status, 200);
    let alice = token("alice", &["group-a"]);
    let bob = token("bob", &["group-b"]);
    let a = minted(cp.mint(&alice, json!({"name": "a", "subscription": "shared"})));
    let b = minted(cp.mint(&bob, json!({"name": "b", "subscription": "shared"})));
    // An administrator's mint for someone: no group gave it, none takes it.
    let by_admin = minted(cp.mint(
        ADMIN,
        json!({"name": "svc", "subscription": "shared", "owner": "dave"}),
    ));
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let v0 = sync(&cp, 0).json()["version"].as_u64().unwrap();

    // group-a leaves the subscription.
    let r = cp.subscription(shared(&["group-b"]));
    assert_eq!(r.status, 200, "{}", r.text());

    assert_eq!(
        statuses(&cp, &alice),
        [(a_id.to_string(), "revoked".into())]
    );
    assert_eq!(statuses(&cp, &bob), [(b_id.to_string(), "active".into())]);
    let dave = cp
        .all_keys()
        .into_iter()
        .find(|k| k["id"] == by_admin["id"])
        .unwrap();
    assert_eq!(dave["status"], "active");

    // The gateways learn it by sync, as they learn an owner's revocation:
    // Alice's key comes back revoked; Bob's is not in the delta, unchanged.
    let delta = sync(&cp, v0);
    assert_eq!(delta.status, 200, "{}", delta.text());
    let delta = parse_sync(delta.text().as_bytes()).unwrap();
    let keys: Vec<(&str, bool)> = delta
        .keys
        .iter()
        .map(|k| (k.id.as_str(), k.revoked))
        .collect();
    assert_eq!(keys, [(a_id, true)]);
    // Bob's key still verifies, unrevoked, where a gateway asks for it.
    let one = cp.call(
        "GET",
        &format!("/maas-api/v1/sync/keys/{b_id}"),
        Some(GATEWAY),
        None,
    );
    let one = parse_sync(one.text().as_bytes()).unwrap();
    let presented = parse(b["key"].as_str().unwrap()).unwrap();
    assert!(!one.keys[0].revoked && one.keys[0].verify(&presented));

    // Audited as a revocation by the administrator, saying why.
    let audit = cp.runtime.block_on(cp.store.audit(5)).unwrap();
    let revocation = audit
        .iter()
        .find(|e| e.action == "key.revoke" && e.target == a_id)
        .unwrap();
    assert_eq!(revocation.actor, "maas:admin");
    assert!(revocation.detail["reason"].is_string());

    // Alice can mint there no more; giving group-a back revives nothing.
    let r = cp.mint(&alice, json!({"name": "again", "subscription": "shared"}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(cp.subscription(shared(&["group-a", "group-b"])).status, 200);
    assert_eq!(
        statuses(&cp, &alice),
        [(a_id.to_string(), "revoked".into())]
    );
}

#[test]
fn a_key_minted_through_two_groups_survives_losing_one() {
    let cp = setup();
    assert_eq!(cp.subscription(shared(&["group-a", "group-b"])).status, 200);
    let carol = token("carol", &["group-a", "group-b", "unrelated"]);
    let c = minted(cp.mint(&carol, json!({"name": "c", "subscription": "shared"})));
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(
        cp.runtime.block_on(cp.store.key_via_groups(&id)).unwrap(),
        Some(Some(vec!["group-a".to_string(), "group-b".to_string()]))
    );
    assert_eq!(cp.subscription(shared(&["group-b"])).status, 200);
    assert_eq!(statuses(&cp, &carol), [(id.clone(), "active".into())]);
    assert_eq!(cp.subscription(shared(&[])).status, 200);
    assert_eq!(statuses(&cp, &carol), [(id, "revoked".into())]);
}

#[test]
fn the_maximum_key_lifetime_caps_expires_in_and_fills_it_in() {
    let cp = setup_with(Settings {
        max_key_lifetime: Some("30d".parse().unwrap()),
        ..Settings::default()
    });
    let alice = token("alice", &["team-a"]);
    let lifetime =
        |k: &Value| k["expires_at"].as_i64().unwrap() - k["created_at"].as_i64().unwrap();

    // Without expires_in: the maximum.
    let k = minted(cp.mint(&alice, json!({"name": "default", "subscription": "team-a"})));
    assert_eq!(lifetime(&k), 30 * 86_400);
    // Shorter, or exactly it: as asked.
    for (asked, secs) in [(json!("7d"), 7 * 86_400), (json!(2_592_000), 30 * 86_400)] {
        let body = json!({"name": "short", "subscription": "team-a", "expires_in": asked});
        assert_eq!(lifetime(&minted(cp.mint(&alice, body))), secs);
    }
    // Longer: refused, naming the field and the maximum; administrators too.
    for bearer in [alice.as_str(), ADMIN] {
        let body = json!({"name": "long", "subscription": "team-a", "expires_in": "31d"});
        let r = cp.mint(bearer, body);
        assert_eq!(r.status, 400, "{}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.starts_with("expires_in: 31d is longer") && message.contains("(30d)"),
            "{message}"
        );
    }
    assert_eq!(cp.all_keys().len(), 3, "the refused mints made nothing");
}

#[test]
fn without_a_maximum_keys_live_as_before() {
    let cp = setup();
    let alice = token("alice", &["team-a"]);
    let k = minted(cp.mint(&alice, json!({"name": "forever", "subscription": "team-a"})));
    assert_eq!(k["expires_at"], Value::Null);
    let body = json!({"name": "year", "subscription": "team-a", "expires_in": "366d"});
    assert_eq!(minted(cp.mint(&alice, body))["status"], "active");
}
