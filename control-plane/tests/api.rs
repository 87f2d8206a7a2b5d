//! The self-service API over real HTTP: the control plane's router on a
//! loopback port with a SQLite database in a temp dir, called with the admin
//! token and with OIDC tokens from the local test issuer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use maas_control_plane::api::admission;
use maas_testkit::request;
use serde_json::json;
use support::*;

#[test]
fn a_developer_mints_lists_and_revokes_their_own_key() {
    let cp = setup();
    let alice = token("alice", &["team-a"]);
    let r = cp.call(
        "POST",
        "/maas-api/v1/api-keys",
        Some(&alice),
        Some(&json!({"name": "laptop", "subscription": "team-a", "expires_in": "30d", "labels": {"env": "dev"}})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // The answer carries the key: no cache may keep it.
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let created = r.json();
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with(&format!("sk-maas-{}-", created["id"].as_str().unwrap())));
    assert_eq!(created["owner"], "alice");
    assert_eq!(created["status"], "active");
    let expires = created["expires_at"].as_i64().unwrap() - created["created_at"].as_i64().unwrap();
    assert_eq!(expires, 30 * 86_400);

    let listed = cp
        .call("GET", "/maas-api/v1/api-keys", Some(&alice), None)
        .json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&key[20..]),
        "listings never carry the secret"
    );
    assert!(listed["data"][0].get("key").is_none() && listed["data"][0].get("hash").is_none());

    let id = created["id"].as_str().unwrap();
    let r = cp.revoke(id, &alice);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");
}

#[test]
fn callers_stay_inside_their_groups_and_their_own_keys() {
    let cp = setup();
    let alice = token("alice", &["team-a"]);
    let bob = token("bob", &["team-b"]);
    // Alice may not mint on team-b's subscription.
    let r = cp.call(
        "POST",
        "/maas-api/v1/api-keys",
        Some(&alice),
        Some(&json!({"name": "x", "subscription": "team-b"})),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "forbidden");
    // She sees only the subscriptions her groups allow.
    let subs = cp
        .call("GET", "/maas-api/v1/subscriptions", Some(&alice), None)
        .json();
    let names: Vec<&str> = subs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-a"]);

    let bobs = cp
        .call(
            "POST",
            "/maas-api/v1/api-keys",
            Some(&bob),
            Some(&json!({"name": "ci", "subscription": "team-b"})),
        )
        .json();
    let id = bobs["id"].as_str().unwrap();
    // Alice can neither list nor revoke Bob's key; it reads as absent.
    assert_eq!(
        cp.call("GET", "/maas-api/v1/api-keys?owner=bob", Some(&alice), None)
            .status,
        403
    );
    let r = cp.revoke(id, &alice);
    assert_eq!(r.status, 404, "{}", r.text());
    // The administrator sees and may revoke everything.
    let all = cp
        .call("GET", "/maas-api/v1/api-keys", Some(ADMIN), None)
        .json();
    assert_eq!(all["data"].as_array().unwrap().len(), 1);
    assert_eq!(cp.revoke(id, ADMIN).status, 200);
    // Only administrators change subscriptions.
    let r = cp.call(
        "PUT",
        "/maas-api/v1/subscriptions/team-a",
        Some(&alice),
        Some(&json!({"name": "team-a", "models": ["m"], "limits": "unlimited"})),
    );
    assert_eq!(r.status, 403);
}

#[test]
fn missing_forged_and_expired_credentials_get_401() {
    let cp = setup();
    let forged = token_with(FORGER_KEY, "mallory", &["maas-admins"], now() + 600);
    let expired = token_with(ISSUER_KEY, "alice", &["team-a"], now() - 3600);
    for bearer in [
        None,
        Some("wrong-admin-token"),
        Some(forged.as_str()),
        Some(expired.as_str()),
    ] {
        let r = cp.call("GET", "/maas-api/v1/api-keys", bearer, None);
        assert_eq!(r.status, 401, "{bearer:?}: {}", r.text());
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // An admin-group token administers.
    let admin = token("carol", &["maas-admins"]);
    assert_eq!(
        cp.call("GET", "/maas-api/v1/api-keys", Some(&admin), None)
            .status,
        200
    );
}

#[test]
fn bad_input_gets_400_and_changes_nothing() {
    let cp = setup();
    let alice = token("alice", &["team-a"]);
    let post = |body: &str| {
        request(
            "POST",
            &format!("http://{}/maas-api/v1/api-keys", cp.addr),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {alice}")),
            ],
            Some(body.as_bytes()),
        )
    };
    for (body, needle) in [
        ("{\"name\": ", "request body"),
        (
            r#"{"name": "x", "subscription": "team-a", "expires_in": "-5d"}"#,
            "expires_in",
        ),
        (
            r#"{"name": "x", "subscription": "team-a", "expires_in": "10y"}"#,
            "expires_in",
        ),
        (r#"{"name": "", "subscription": "team-a"}"#, "name"),
        (
            r#"{"name": "x", "subscription": "team-a", "colour": "red"}"#,
            "colour",
        ),
        // Not settled by the last one, as a map would.
        (
            r#"{"name": "x", "subscription": "team-a", "labels": {"env": "dev", "env": "prod"}}"#,
            "duplicate field `env`",
        ),
        // PostgreSQL refuses a NUL in text: looked up, it was a 503.
        (
            r#"{"name": "x", "subscription": "team-a\u0000"}"#,
            "subscription",
        ),
        (
            r#"{"name": "x", "subscription": "team-a", "labels": {"env": "d\u0000"}}"#,
            "labels",
        ),
    ] {
        let r = post(body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{body}: {}",
            r.text()
        );
    }
    for (spec, needle) in [
        (
            json!({"name": "x'; DROP TABLE api_keys; --", "models": ["m"], "limits": "unlimited"}),
            "not a valid name",
        ),
        (
            json!({"name": "neg", "models": ["m"], "limits": {"tokens": ["-5/min"]}}),
            "limits.tokens[0]",
        ),
    ] {
        let name = spec["name"].as_str().unwrap();
        let path = format!(
            "/maas-api/v1/subscriptions/{}",
            name.replace(' ', "%20")
                .replace('\'', "%27")
                .replace(';', "%3B")
        );
        let r = cp.call("PUT", &path, Some(ADMIN), Some(&spec));
        assert_eq!(r.status, 400, "{spec}: {}", r.text());
        assert!(r.text().contains(needle), "{}", r.text());
    }
    // Control characters in a path or a query string: no id, name or
    // owner has one.
    for (method, path) in [
        ("DELETE", "/maas-api/v1/api-keys/k%00"),
        ("GET", "/maas-api/v1/api-keys?owner=al%00ice"),
        ("PUT", "/maas-api/v1/prices/m%1F"),
    ] {
        let r = cp.call(method, path, Some(ADMIN), Some(&json!({})));
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains("control characters"), "{}", r.text());
    }
    // Nothing was created by any of it.
    assert!(cp.all_keys().is_empty());
    let subs = cp
        .call("GET", "/maas-api/v1/subscriptions", Some(ADMIN), None)
        .json();
    assert_eq!(subs["data"].as_array().unwrap().len(), 2);
}

/// What axum itself refuses (a query string, a path segment or a body it
/// cannot read, a method the path does not serve) gets the API's error
/// shape too, not a `text/plain` or empty body.
#[test]
fn requests_axum_refuses_get_the_api_error_shape() {
    let cp = setup();
    let url = |path: &str| format!("http://{}{path}", cp.addr);
    let admin = format!("Bearer {ADMIN}");
    let gateway = format!("Bearer {GATEWAY}");
    let big = vec![b' '; 2 * 1024 * 1024 + 1];
    /// A request and the refusal it gets: status, `code`, a word of the message.
    struct Case<'a> {
        method: &'a str,
        path: &'a str,
        bearer: &'a str,
        body: Option<&'a [u8]>,
        refusal: (u16, &'a str, &'a str),
    }
    let case = |method, path, bearer, body, refusal| Case {
        method,
        path,
        bearer,
        body,
        refusal,
    };
    let cases = [
        case(
            "GET",
            "/maas-api/v1/api-keys?owner=a&owner=b",
            &admin,
            None,
            (400, "invalid_value", "owner"),
        ),
        case(
            "GET",
            "/maas-api/v1/sync?since=-1",
            &gateway,
            None,
            (400, "invalid_value", "since"),
        ),
        case(
            "GET",
            "/maas-api/v1/sync/keys/%FF",
            &gateway,
            None,
            (400, "invalid_value", "path"),
        ),
        case(
            "DELETE",
            "/maas-api/v1/api-keys/%FF",
            &admin,
            None,
            (400, "invalid_value", "path"),
        ),
        case(
            "PATCH",
            "/maas-api/v1/api-keys",
            &admin,
            Some(b"{}"),
            (405, "method_not_allowed", "method"),
        ),
        case(
            "POST",
            "/maas-api/v1/sync",
            &gateway,
            None,
            (405, "method_not_allowed", "method"),
        ),
        case(
            "POST",
            "/maas-api/v1/api-keys",
            &admin,
            Some(&big),
            (413, "body_too_large", "length limit"),
        ),
    ];
    for Case {
        method,
        path,
        bearer,
        body,
        refusal: (status, code, needle),
    } in cases
    {
        let r = request(
            method,
            &url(path),
            &[
                ("authorization", bearer),
                ("content-type", "application/json"),
            ],
            body,
        );
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{method} {path}"
        );
        let error = &r.json()["error"];
        assert_eq!(error["code"], code, "{method} {path}: {error}");
        assert_eq!(error["type"], "invalid_request_error", "{method} {path}");
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{method} {path}: {error}"
        );
        if status == 405 {
            assert!(r.header("allow").is_some(), "{method} {path}: no Allow");
        }
    }
    // The PATCH asked to list nothing and the oversized POST minted nothing.
    assert!(cp.all_keys().is_empty());
}

#[test]
fn the_gateway_syncs_keys_incrementally() {
    let cp = setup();
    let full = cp.call("GET", "/maas-api/v1/sync", Some(GATEWAY), None);
    assert_eq!(full.status, 200, "{}", full.text());
    let full = full.json();
    assert_eq!(full["full"], true);
    let store = full["store"].as_str().unwrap().to_string();
    assert_eq!(store.len(), 32, "the database's id");
    assert_eq!(full["subscriptions"].as_array().unwrap().len(), 2);
    let v0 = full["version"].as_u64().unwrap();

    // Nothing changed: 304, still naming the database.
    let unchanged = cp.call(
        "GET",
        &format!("/maas-api/v1/sync?since={v0}"),
        Some(GATEWAY),
        None,
    );
    assert_eq!(unchanged.status, 304);
    assert_eq!(unchanged.header("x-maas-store"), Some(store.as_str()));

    let alice = token("alice", &["team-a"]);
    let created = cp
        .call(
            "POST",
            "/maas-api/v1/api-keys",
            Some(&alice),
            Some(&json!({"name": "k", "subscription": "team-a"})),
        )
        .json();
    let delta = cp
        .call(
            "GET",
            &format!("/maas-api/v1/sync?since={v0}"),
            Some(GATEWAY),
            None,
        )
        .json();
    assert_eq!(delta["full"], false);
    assert!(delta["subscriptions"].as_array().unwrap().is_empty());
    let keys = delta["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], created["id"]);
    assert_eq!(keys[0]["revoked"], false);
    assert_eq!(keys[0]["sha256"].as_str().unwrap().len(), 64);
    assert!(!delta
        .to_string()
        .contains(&created["key"].as_str().unwrap()[20..]));

    // The gateway filter's own parser reads this response, and the minted
    // plaintext verifies against the digest it carries.
    let parsed = maas_filter::auth::managed_keys::parse_sync(delta.to_string().as_bytes()).unwrap();
    // The owner travels with the key: the gateway's `x-maas-user`, and its
    // counter under `key_limits_per: "owner"`.
    assert_eq!(parsed.keys[0].owner, "alice");
    let plaintext = created["key"].as_str().unwrap();
    let presented = maas_filter::auth::managed_keys::parse(plaintext).unwrap();
    assert!(parsed.keys[0].verify(&presented));
    let record =
        maas_filter::auth::managed_keys::ManagedKey::decode(&parsed.keys[0].encode()).unwrap();
    assert!(record.verify(&presented) && record.subscription == "team-a" && !record.revoked);

    let v1 = delta["version"].as_u64().unwrap();
    let id = created["id"].as_str().unwrap();
    cp.revoke(id, &alice);
    let revoked = cp
        .call(
            "GET",
            &format!("/maas-api/v1/sync?since={v1}"),
            Some(GATEWAY),
            None,
        )
        .json();
    assert_eq!(revoked["keys"][0]["revoked"], true);
    assert!(revoked["keys"][0]["version"].as_u64().unwrap() > keys[0]["version"].as_u64().unwrap());

    // One key on demand, with its subscription, for a gateway that has
    // never seen it.
    let one = cp.call(
        "GET",
        &format!("/maas-api/v1/sync/keys/{id}"),
        Some(GATEWAY),
        None,
    );
    assert_eq!(one.status, 200, "{}", one.text());
    let one = maas_filter::auth::managed_keys::parse_sync(one.text().as_bytes()).unwrap();
    assert_eq!((one.version, one.keys.len()), (0, 1));
    assert!(one.keys[0].revoked && one.keys[0].verify(&presented));
    assert_eq!(one.subscriptions[0]["name"], "team-a");
    let absent = cp.call(
        "GET",
        "/maas-api/v1/sync/keys/aaaaaaaaaaaa",
        Some(GATEWAY),
        None,
    );
    assert_eq!(absent.status, 404);
    assert_eq!(
        cp.call(
            "GET",
            &format!("/maas-api/v1/sync/keys/{id}"),
            Some(&alice),
            None
        )
        .status,
        401
    );

    // A version the store never reached (a reset database): everything again.
    let reset = cp
        .call("GET", "/maas-api/v1/sync?since=999999", Some(GATEWAY), None)
        .json();
    assert_eq!(reset["full"], true);
    // Only the gateway (or an administrator) reads the key set.
    assert_eq!(
        cp.call("GET", "/maas-api/v1/sync", Some(&alice), None)
            .status,
        401
    );
}

#[test]
fn a_database_restored_from_a_backup_answers_a_gateway_with_a_full_resync() {
    let cp = setup();
    let alice = token("alice", &["team-a"]);
    let sync = |cp: &ControlPlane, query: &str| {
        let r = cp.call(
            "GET",
            &format!("/maas-api/v1/sync?{query}"),
            Some(GATEWAY),
            None,
        );
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        r.json()
    };
    let backup = cp.backup();
    let leaked = cp.mint(&alice, json!({"name": "leaked", "subscription": "team-a"}));
    assert_eq!(leaked.status, 201, "{}", leaked.text());
    let seen = sync(&cp, "since=0");
    let (version, mark) = (
        seen["version"].as_u64().unwrap(),
        seen["mark"].as_str().unwrap().to_string(),
    );
    assert_eq!(mark.len(), 16, "{seen}");

    // The database is restored from the backup taken before the key: same
    // id, and its next changes reuse the versions the gateway has seen.
    drop(cp);
    let restored = ControlPlane::restore(&backup);
    for n in 0..3 {
        let r = restored.mint(
            &alice,
            json!({"name": format!("after-{n}"), "subscription": "team-a"}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let answer = sync(&restored, &format!("since={version}&mark={mark}"));
    assert_eq!(
        answer["store"], seen["store"],
        "the restored database keeps its id"
    );
    assert_eq!(answer["full"], true, "{answer}");
    let ids: Vec<&str> = answer["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(
        !ids.contains(&seen["keys"][0]["id"].as_str().unwrap()),
        "the lost key is not served"
    );
    // Without the mark (a gateway before it) the versions looked like its own.
    assert_eq!(sync(&restored, &format!("since={version}"))["full"], false);

    // The mark of the version reached goes on to the next call, incremental.
    let next = format!(
        "since={}&mark={}",
        answer["version"],
        answer["mark"].as_str().unwrap()
    );
    assert_eq!(
        restored
            .call(
                "GET",
                &format!("/maas-api/v1/sync?{next}"),
                Some(GATEWAY),
                None
            )
            .status,
        304
    );
    let r = restored.call(
        "GET",
        "/maas-api/v1/sync?since=1&mark=xyz",
        Some(GATEWAY),
        None,
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("invalid_value")),
        "{}",
        r.text()
    );
}

#[test]
fn usage_is_summed_per_subscription_and_model_through_the_callers_own_keys() {
    use maas_control_plane::store::UsageRow;
    let cp = setup();
    let row = UsageRow::new;
    let bucket =
        maas_control_plane::showback::sampler::bucket_start(maas_control_plane::time::unix_now());
    let alice = token("alice", &["team-a"]);
    let key = cp.mint(&alice, json!({"name": "k", "subscription": "team-a"}));
    assert_eq!(key.status, 201, "{}", key.text());
    let key = key.json()["id"].as_str().unwrap().to_string();
    cp.add_usage(&[
        row("team-a", "smollm2-135m-instruct", 3, 100, 40).through_key(&key),
        row("team-b", "other-model", 1, 9, 1),
        // Through no key: not Alice's to see.
        row("team-a", "smollm2-135m-instruct", 2, 50, 0),
    ]);
    cp.add_usage(&[row("team-a", "smollm2-135m-instruct", 1, 10, 5).through_key(&key)]);

    let mine = cp
        .call("GET", "/maas-api/v1/usage", Some(&alice), None)
        .json();
    assert_eq!(
        mine["data"],
        // The original fields, and (no price set) no cost.
        json!([{"subscription": "team-a", "model": "smollm2-135m-instruct", "requests": 4,
                "prompt_tokens": 110, "completion_tokens": 45, "total_tokens": 155,
                "cost": null, "unpriced_tokens": 155, "price": null}])
    );
    let all = cp
        .call("GET", "/maas-api/v1/usage", Some(ADMIN), None)
        .json();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    assert_eq!(all["data"][0]["requests"], 6);
    // A range before the usage is empty; a reversed one is refused.
    let before = cp
        .call(
            "GET",
            &format!(
                "/maas-api/v1/usage?from={}&to={bucket}",
                bucket - 30 * 86_400
            ),
            Some(ADMIN),
            None,
        )
        .json();
    assert!(before["data"].as_array().unwrap().is_empty());
    let r = cp.call("GET", "/maas-api/v1/usage?from=10&to=5", Some(ADMIN), None);
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn unknown_and_forbidden_subscriptions_answer_alike() {
    let cp = setup();
    let alice = token("alice", &["team-a"]);
    // team-b exists but is not alice's; nope does not exist.
    let forbidden = cp.mint(&alice, json!({"name": "x", "subscription": "team-b"}));
    let unknown = cp.mint(&alice, json!({"name": "x", "subscription": "nope"}));
    assert_eq!(forbidden.status, 403, "{}", forbidden.text());
    assert_eq!(unknown.status, forbidden.status);
    assert_eq!(unknown.text(), forbidden.text());
    assert!(!forbidden.text().contains("team-b"), "{}", forbidden.text());
    // An administrator, who sees every subscription, is told which is wrong.
    let r = cp.mint(ADMIN, json!({"name": "x", "subscription": "nope"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("unknown subscription"), "{}", r.text());
}

#[test]
fn an_owner_holds_at_most_max_keys_per_owner_live_keys() {
    let cp = setup();
    let r = cp.subscription(
        json!({"name": "capped", "models": ["m"], "limits": "unlimited",
        "groups": ["team-a"], "max_keys_per_owner": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let alice = token("alice", &["team-a"]);
    let body = json!({"name": "k", "subscription": "capped"});
    let first = cp.mint(&alice, body.clone());
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(cp.mint(&alice, body.clone()).status, 201);
    let refused = cp.mint(&alice, body.clone());
    assert_eq!(refused.status, 409, "{}", refused.text());
    let error = &refused.json()["error"];
    assert_eq!(error["code"], "too_many_keys");
    assert_eq!(error["type"], "invalid_request_error");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("max_keys_per_owner") && message.contains('2'),
        "{message}"
    );
    // An administrator minting for alice counts against her cap too; bob
    // has his own.
    let r = cp.mint(
        ADMIN,
        json!({"name": "k", "subscription": "capped", "owner": "alice"}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let r = cp.mint(
        ADMIN,
        json!({"name": "k", "subscription": "capped", "owner": "bob"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // A revoked key frees its place.
    let id = first.json()["id"].as_str().unwrap().to_string();
    let r = cp.revoke(&id, &alice);
    assert_eq!(r.status, 200);
    assert_eq!(cp.mint(&alice, body).status, 201);
}

/// Revoking frees a place among the live keys, not among the day's mints:
/// minting and revoking in a loop stops at `--max-keys-minted-per-day`
/// (429, and nothing stored), counted over every subscription; an
/// administrator provisioning keys is not bound.
#[test]
fn minting_and_revoking_in_a_loop_stops_at_the_daily_bound() {
    let cp = setup_with(Settings {
        max_keys_minted_per_day: 3,
        ..Settings::default()
    });
    let alice = token("alice", &["team-a", "team-b"]);
    for subscription in ["team-a", "team-b", "team-a"] {
        let r = cp.mint(&alice, json!({"name": "k", "subscription": subscription}));
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(cp.revoke(&id, &alice).status, 200);
    }
    let refused = cp.mint(&alice, json!({"name": "k", "subscription": "team-b"}));
    assert_eq!(refused.status, 429, "{}", refused.text());
    let error = &refused.json()["error"];
    assert_eq!(error["code"], "too_many_mints", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("24 hours"),
        "{error}"
    );
    assert_eq!(cp.all_keys().len(), 3, "the refused mint stored nothing");
    // Bob has his own bound; the administrator none.
    let bob = token("bob", &["team-a"]);
    assert_eq!(
        cp.mint(&bob, json!({"name": "k", "subscription": "team-a"}))
            .status,
        201
    );
    let r = cp.mint(
        ADMIN,
        json!({"name": "k", "subscription": "team-a", "owner": "alice"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn an_administrator_names_only_owners_a_token_subject_could_be() {
    let cp = setup();
    for owner in ["bob\r\nx-maas-subscription: gold", "", "maas:admin"] {
        let r = cp.mint(
            ADMIN,
            json!({"name": "k", "subscription": "team-a", "owner": owner}),
        );
        assert_eq!(r.status, 400, "{owner:?}: {}", r.text());
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("owner:"),
            "{}",
            r.text()
        );
    }
    assert!(cp.all_keys().is_empty());
}

#[test]
fn a_token_whose_subject_is_admin_is_not_the_administrator() {
    let cp = setup();
    let own = cp
        .mint(ADMIN, json!({"name": "ops", "subscription": "team-a"}))
        .json();
    assert_eq!(own["owner"], "maas:admin");
    let id = own["id"].as_str().unwrap();

    let impostor = token("admin", &["team-a"]);
    // An ordinary user: none of the administrator's keys are theirs.
    let listed = cp
        .call("GET", "/maas-api/v1/api-keys", Some(&impostor), None)
        .json();
    assert!(listed["data"].as_array().unwrap().is_empty(), "{listed}");
    let r = cp.call(
        "GET",
        "/maas-api/v1/api-keys?owner=maas:admin",
        Some(&impostor),
        None,
    );
    assert_eq!(r.status, 403);
    let r = cp.revoke(id, &impostor);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = cp.subscription_as(
        &impostor,
        json!({"name": "team-a", "models": ["m"], "limits": "unlimited"}),
    );
    assert_eq!(r.status, 403);
    // Its own key is its own, under its own name.
    let r = cp.mint(&impostor, json!({"name": "k", "subscription": "team-a"}));
    assert_eq!(r.json()["owner"], "admin");
    // Claiming the administrator's identity outright is no token at all.
    let r = cp.call(
        "GET",
        "/maas-api/v1/api-keys",
        Some(&token("maas:admin", &["maas-admins"])),
        None,
    );
    assert_eq!(r.status, 401);
    // The administrator's key is untouched.
    let all = cp
        .call(
            "GET",
            "/maas-api/v1/api-keys?owner=maas:admin",
            Some(ADMIN),
            None,
        )
        .json();
    assert_eq!(all["data"][0]["status"], "active");
}

/// A body trickled in (one that never completes) is answered 408 once the
/// control plane's wait for it ends, not held open for as long as the
/// client likes: through Envoy each such request holds one of a cluster's
/// connections.
#[test]
fn a_body_that_never_completes_gets_408() {
    use std::io::{Read, Write};
    let cp = setup();
    let alice = token("alice", &["team-a"]);
    let mut conn = std::net::TcpStream::connect(cp.addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let body = br#"{"name": "slow", "subscription": "team-a"}"#;
    write!(
        conn,
        "POST /maas-api/v1/api-keys HTTP/1.1\r\nhost: cp\r\nauthorization: Bearer {alice}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len() + 1
    )
    .unwrap();
    // All but the last byte promised: the server waits for it.
    conn.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let json = &answer[answer.find("\r\n\r\n").expect("a body") + 4..];
    let error: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");
    assert!(cp.all_keys().is_empty());
}

/// A request of `bearer`'s whose body never completes: it runs (holding
/// its place) until the socket is dropped or the body wait ends (10 s).
fn slow_mint(cp: &ControlPlane, bearer: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(cp.addr).unwrap();
    write!(
        conn,
        "POST /maas-api/v1/api-keys HTTP/1.1\r\nhost: cp\r\nauthorization: Bearer {bearer}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    )
    .unwrap();
    conn
}

/// Requests held open by [`slow_mint`], each with its caller's token.
struct Held<'a> {
    cp: &'a ControlPlane,
    requests: Vec<(String, std::net::TcpStream)>,
}

impl<'a> Held<'a> {
    fn new(cp: &'a ControlPlane, bearers: &[&str]) -> Self {
        let requests = bearers
            .iter()
            .map(|b| (b.to_string(), slow_mint(cp, b)))
            .collect();
        Self { cp, requests }
    }

    /// Sends again each held request that was answered. One the server
    /// read while a probe of the test's held the caller's last place was
    /// refused (429), or one that waited in vain while a probe held the
    /// last place of all (503), as it should be; the test wants it held.
    fn keep_held(&mut self) {
        use std::io::Read;
        for (bearer, conn) in &mut self.requests {
            conn.set_nonblocking(true).unwrap();
            let mut answer = [0; 12];
            let read = conn.read(&mut answer);
            conn.set_nonblocking(false).unwrap();
            match read {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(n) if [&b"HTTP/1.1 429"[..], b"HTTP/1.1 503"].contains(&&answer[..n]) => {
                    *conn = slow_mint(self.cp, bearer);
                }
                other => panic!(
                    "a held request was answered {:?} ({other:?})",
                    String::from_utf8_lossy(&answer)
                ),
            }
        }
    }
}

/// `GET /maas-api/v1/api-keys` as `bearer`: its status and Retry-After.
fn list_status(cp: &ControlPlane, bearer: &str) -> (u16, Option<String>) {
    let r = cp.call("GET", "/maas-api/v1/api-keys", Some(bearer), None);
    (r.status, r.header("retry-after").map(str::to_string))
}

/// One user holding many requests open (a script, a year's report) cannot
/// take every database connection from the others, nor from the gateways'
/// key sync, which carries every revocation.
#[test]
fn a_caller_holding_requests_open_leaves_the_others_and_the_sync_their_share() {
    let cp = setup();
    let alice = token("alice", &["team-a"]);
    let bob = token("bob", &["team-b"]);
    let mut held = Held::new(&cp, &[alice.as_str(); admission::PER_CALLER_AT_ONCE]);
    // Once all four run, her fifth is refused at once, with when to retry.
    let refused = maas_testkit::eventually(Duration::from_secs(5), || {
        held.keep_held();
        let r = cp.call("GET", "/maas-api/v1/api-keys", Some(&alice), None);
        match r.status {
            429 => Ok(r),
            other => Err(format!("{other}")),
        }
    });
    assert_eq!(refused.json()["error"]["code"], "too_many_requests");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(list_status(&cp, &bob).0, 200);
    let sync = cp.call("GET", "/maas-api/v1/sync", Some(GATEWAY), None);
    assert_eq!(sync.status, 200, "{}", sync.text());
    // Her requests end (the sockets close): her places come back.
    drop(held);
    maas_testkit::eventually(Duration::from_secs(5), || match list_status(&cp, &alice) {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

#[test]
fn when_every_callers_place_is_taken_a_request_waits_then_gets_503_and_the_sync_goes_on() {
    let cp = setup_with(Settings {
        admission: (2, 4, Duration::from_millis(300)),
        ..Settings::default()
    });
    let (alice, bob, carol) = (
        token("alice", &["team-a"]),
        token("bob", &["team-b"]),
        token("carol", &["team-a"]),
    );
    let mut held = Held::new(&cp, &[&alice, &bob]);
    let busy = maas_testkit::eventually(Duration::from_secs(5), || {
        held.keep_held();
        match list_status(&cp, &carol) {
            (503, retry) => Ok(retry),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(busy.as_deref(), Some("1"));
    let sync = cp.call("GET", "/maas-api/v1/sync", Some(GATEWAY), None);
    assert_eq!(sync.status, 200, "{}", sync.text());
    drop(held);
    maas_testkit::eventually(Duration::from_secs(5), || match list_status(&cp, &carol) {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

/// The usage page is shown in no other site's frame (clickjacking), and
/// like every answer is neither cached nor sniffed.
#[test]
fn the_page_refuses_to_be_framed() {
    let cp = setup();
    let r = cp.call("GET", "/maas-api/ui", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let policy = r.header("content-security-policy").unwrap();
    for directive in [
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
}
