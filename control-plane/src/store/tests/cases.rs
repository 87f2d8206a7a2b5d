//! The cases of the suite, each written once against `&Store`.

use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use crate::store::{KeyRow, Store, StoreError, SubscriptionRow};

fn subscription(name: &str, at: i64) -> SubscriptionRow {
    SubscriptionRow {
        name: name.to_owned(),
        spec: json!({
            "models": ["llama-3-8b", "mistral-7b"],
            "limits": { "tokens_per_minute": 1000 },
            "unlimited": false,
        }),
        created_at: at,
        updated_at: at,
        version: 0,
    }
}

fn key(id: &str, owner: &str, sub: &str, created_at: i64) -> KeyRow {
    KeyRow {
        id: id.to_owned(),
        owner: owner.to_owned(),
        subscription: sub.to_owned(),
        name: format!("key {id}"),
        labels: BTreeMap::from([("team".to_owned(), "ml".to_owned())]),
        salt: format!("salt-of-{id}"),
        hash: format!("{:0>64}", id.len()),
        created_at,
        expires_at: Some(created_at + 3600),
        revoked_at: None,
        version: 0,
    }
}

pub async fn subscription_round_trip(store: &Store) {
    assert_eq!(store.get_subscription("gold").await.unwrap(), None);
    let mut gold = subscription("gold", 100);
    gold.version = store.put_subscription(&gold, "admin").await.unwrap();
    assert!(gold.version > 0);
    assert_eq!(
        store.get_subscription("gold").await.unwrap(),
        Some(gold.clone())
    );

    let silver = subscription("silver", 50);
    store.put_subscription(&silver, "admin").await.unwrap();
    let names: Vec<String> = store
        .list_subscriptions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["gold", "silver"]);
}

pub async fn upsert_bumps_version_and_keeps_created_at(store: &Store) {
    let first = store
        .put_subscription(&subscription("gold", 100), "admin")
        .await
        .unwrap();
    let mut update = subscription("gold", 999);
    update.updated_at = 200;
    update.spec = json!({ "models": ["only-this"], "unlimited": true });
    let second = store.put_subscription(&update, "admin").await.unwrap();
    assert!(second > first, "{second} > {first}");

    let got = store.get_subscription("gold").await.unwrap().unwrap();
    assert_eq!(got.created_at, 100, "created_at is kept");
    assert_eq!(got.updated_at, 200);
    assert_eq!(got.spec, update.spec);
    assert_eq!(got.version, second);
}

pub async fn key_round_trip(store: &Store) {
    store
        .put_subscription(&subscription("gold", 100), "admin")
        .await
        .unwrap();
    assert_eq!(store.get_key("k1").await.unwrap(), None);
    let mut k = key("k1", "alice", "gold", 150);
    k.labels.insert("env".to_owned(), "prod".to_owned());
    k.version = store.insert_key(&k, "alice").await.unwrap();
    assert_eq!(store.get_key("k1").await.unwrap(), Some(k.clone()));

    // NULL timestamps survive too.
    let mut forever = key("k2", "alice", "gold", 160);
    forever.expires_at = None;
    forever.labels.clear();
    forever.version = store.insert_key(&forever, "alice").await.unwrap();
    assert_eq!(store.get_key("k2").await.unwrap(), Some(forever));
}

pub async fn unknown_subscription_is_refused(store: &Store) {
    let err = store
        .insert_key(&key("k1", "alice", "nope", 1), "alice")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownSubscription(s) if s == "nope"),
        "{err:?}"
    );
    // Nothing was written, not even the version bump or an audit row.
    assert_eq!(store.get_key("k1").await.unwrap(), None);
    assert_eq!(store.changes_since(0).await.unwrap().version, 0);
    assert!(store.audit(10).await.unwrap().is_empty());
}

pub async fn duplicate_key_id_is_conflict(store: &Store) {
    store
        .put_subscription(&subscription("gold", 100), "admin")
        .await
        .unwrap();
    let original = key("k1", "alice", "gold", 1);
    store.insert_key(&original, "alice").await.unwrap();
    let before = store.changes_since(0).await.unwrap().version;

    let err = store
        .insert_key(&key("k1", "mallory", "gold", 2), "mallory")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(id) if id == "k1"),
        "{err:?}"
    );
    assert_eq!(store.get_key("k1").await.unwrap().unwrap().owner, "alice");
    assert_eq!(store.changes_since(0).await.unwrap().version, before);
}

pub async fn list_keys_by_owner(store: &Store) {
    store
        .put_subscription(&subscription("gold", 100), "admin")
        .await
        .unwrap();
    for (id, owner, at) in [("a1", "alice", 1), ("b1", "bob", 2), ("a2", "alice", 3)] {
        store
            .insert_key(&key(id, owner, "gold", at), owner)
            .await
            .unwrap();
    }
    let ids = |keys: Vec<KeyRow>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_keys(Some("alice")).await.unwrap()),
        ["a1", "a2"]
    );
    assert_eq!(ids(store.list_keys(Some("bob")).await.unwrap()), ["b1"]);
    assert!(store.list_keys(Some("carol")).await.unwrap().is_empty());
    assert_eq!(
        ids(store.list_keys(None).await.unwrap()),
        ["a1", "b1", "a2"]
    );
}

pub async fn revoke_is_idempotent(store: &Store) {
    store
        .put_subscription(&subscription("gold", 100), "admin")
        .await
        .unwrap();
    let created = store
        .insert_key(&key("k1", "alice", "gold", 1), "alice")
        .await
        .unwrap();
    assert_eq!(store.revoke_key("missing", 5, "alice").await.unwrap(), None);

    let first = store.revoke_key("k1", 500, "alice").await.unwrap().unwrap();
    assert_eq!(first.revoked_at, Some(500));
    assert!(first.version > created);
    assert_eq!(store.get_key("k1").await.unwrap(), Some(first.clone()));

    let second = store.revoke_key("k1", 600, "admin").await.unwrap().unwrap();
    assert_eq!(second, first, "second revocation changes nothing");
    assert_eq!(store.get_key("k1").await.unwrap(), Some(first.clone()));
    assert_eq!(store.changes_since(0).await.unwrap().version, first.version);
    let revokes = store
        .audit(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "key.revoke");
    assert_eq!(revokes.count(), 1);
}

pub async fn changes_since_returns_exactly_what_changed(store: &Store) {
    let empty = store.changes_since(0).await.unwrap();
    assert_eq!(empty.version, 0);
    assert!(empty.keys.is_empty() && empty.subscriptions.is_empty());

    let v_gold = store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();
    let v_temp = store
        .put_subscription(&subscription("temp", 1), "admin")
        .await
        .unwrap();
    let v_k1 = store
        .insert_key(&key("k1", "alice", "gold", 2), "alice")
        .await
        .unwrap();
    let v_k2 = store
        .insert_key(&key("k2", "bob", "gold", 3), "bob")
        .await
        .unwrap();
    assert!(
        v_gold < v_temp && v_temp < v_k1 && v_k1 < v_k2,
        "strictly increasing"
    );

    let full = store.changes_since(0).await.unwrap();
    assert_eq!(full.version, v_k2);
    assert_eq!(
        full.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["k1", "k2"]
    );
    let subs: Vec<&str> = full.subscriptions.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(subs, ["gold", "temp"]);

    // Only what came after V, and nothing at all once caught up.
    let after_k1 = store.changes_since(v_k1).await.unwrap();
    assert_eq!(
        after_k1
            .keys
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>(),
        ["k2"]
    );
    assert!(after_k1.subscriptions.is_empty());
    let caught_up = store.changes_since(full.version).await.unwrap();
    assert_eq!(caught_up.version, full.version);
    assert!(caught_up.keys.is_empty() && caught_up.subscriptions.is_empty());
    assert!(caught_up.deleted_subscriptions.is_empty());

    // A revocation and a deletion show up, and nothing else.
    let revoked = store.revoke_key("k1", 10, "alice").await.unwrap().unwrap();
    assert!(store.delete_subscription("temp", "admin").await.unwrap());
    let next = store.changes_since(full.version).await.unwrap();
    assert!(next.version > revoked.version && revoked.version > full.version);
    assert_eq!(next.keys, [revoked]);
    assert!(next.subscriptions.is_empty());
    assert_eq!(next.deleted_subscriptions, ["temp"]);

    // Re-creating a deleted subscription replaces its tombstone.
    let v_again = store
        .put_subscription(&subscription("temp", 20), "admin")
        .await
        .unwrap();
    let again = store.changes_since(next.version).await.unwrap();
    assert_eq!(again.version, v_again);
    assert_eq!(
        again
            .subscriptions
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["temp"]
    );
    assert!(again.deleted_subscriptions.is_empty());
    assert!(store
        .changes_since(0)
        .await
        .unwrap()
        .deleted_subscriptions
        .is_empty());

    // A client ahead of the store gets nothing and the store's version.
    let ahead = store.changes_since(u64::MAX).await.unwrap();
    assert_eq!(ahead.version, v_again);
    assert!(ahead.keys.is_empty() && ahead.subscriptions.is_empty());
}

pub async fn delete_subscription_refused_while_keys_exist(store: &Store) {
    store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();
    store
        .insert_key(&key("k1", "alice", "gold", 2), "alice")
        .await
        .unwrap();
    let before = store.changes_since(0).await.unwrap().version;

    let err = store
        .delete_subscription("gold", "admin")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::InUse { subscription, keys: 1 } if subscription == "gold"),
        "{err:?}"
    );
    // Revoked keys still reference it.
    store.revoke_key("k1", 3, "alice").await.unwrap();
    let err = store
        .delete_subscription("gold", "admin")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InUse { keys: 1, .. }), "{err:?}");
    assert!(store.get_subscription("gold").await.unwrap().is_some());

    store
        .put_subscription(&subscription("spare", 1), "admin")
        .await
        .unwrap();
    assert!(store.delete_subscription("spare", "admin").await.unwrap());
    assert_eq!(store.get_subscription("spare").await.unwrap(), None);
    let after = store.changes_since(0).await.unwrap().version;
    assert!(
        !store.delete_subscription("spare", "admin").await.unwrap(),
        "already gone"
    );
    assert_eq!(
        store.changes_since(0).await.unwrap().version,
        after,
        "no-op bumps nothing"
    );
    assert!(after > before);
}

pub async fn audit_rows_in_order_without_secrets(store: &Store) {
    let k = key("k1", "alice", "gold", 2);
    store
        .put_subscription(&subscription("gold", 1), "root")
        .await
        .unwrap();
    store
        .put_subscription(&subscription("gold", 1), "root")
        .await
        .unwrap();
    store.insert_key(&k, "alice").await.unwrap();
    store.revoke_key("k1", 3, "bob").await.unwrap();
    store
        .put_subscription(&subscription("spare", 1), "root")
        .await
        .unwrap();
    store.delete_subscription("spare", "root").await.unwrap();

    let log = store.audit(100).await.unwrap();
    let got: Vec<(&str, &str, &str)> = log
        .iter()
        .rev()
        .map(|a| (a.action.as_str(), a.actor.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("subscription.put", "root", "gold"),
            ("subscription.put", "root", "gold"),
            ("key.create", "alice", "k1"),
            ("key.revoke", "bob", "k1"),
            ("subscription.put", "root", "spare"),
            ("subscription.delete", "root", "spare"),
        ]
    );
    assert!(
        log.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first, strictly ordered"
    );
    assert_eq!(
        log[0].seq,
        store.changes_since(0).await.unwrap().version as i64
    );
    assert!(log.iter().all(|a| a.at > 1_600_000_000), "wall-clock time");
    assert_eq!(log[5].detail["created"], json!(true));
    assert_eq!(log[4].detail["created"], json!(false));
    assert_eq!(log[3].detail["labels"], json!({ "team": "ml" }));

    for row in &log {
        let text = row.detail.to_string();
        assert!(
            !text.contains(&k.salt) && !text.contains(&k.hash),
            "secret in {text}"
        );
        assert!(
            !text.contains("salt") && !text.contains("hash"),
            "secret field in {text}"
        );
    }
    assert_eq!(store.audit(2).await.unwrap(), log[..2]);
}

pub async fn hostile_strings_are_stored_verbatim(store: &Store) {
    let hostile = [
        "'; DROP TABLE api_keys; --",
        "O'Brien \"quoted\" `back` \\slash",
        "名前 🚀 naïve Ünïcödé",
        "$1 ?1 :name @p %s {}",
        "tab\tnew\nline",
    ];
    for (i, s) in hostile.iter().enumerate() {
        let mut sub = subscription(s, 1);
        sub.spec = json!({ "cost_center": s, "models": [s] });
        sub.version = store.put_subscription(&sub, s).await.unwrap();
        assert_eq!(store.get_subscription(s).await.unwrap(), Some(sub));

        let mut k = key(&format!("{s}#{i}"), s, s, 10);
        k.name = s.to_string();
        k.labels = BTreeMap::from([
            (s.to_string(), s.to_string()),
            ("plain".into(), s.to_string()),
        ]);
        k.version = store.insert_key(&k, s).await.unwrap();
        assert_eq!(store.get_key(&k.id).await.unwrap(), Some(k.clone()));
        assert_eq!(store.list_keys(Some(s)).await.unwrap(), [k.clone()]);
        let audit = store.audit(1).await.unwrap();
        assert_eq!(
            (audit[0].actor.as_str(), audit[0].target.as_str()),
            (*s, k.id.as_str())
        );
    }
    // The tables are all still there.
    assert_eq!(store.list_keys(None).await.unwrap().len(), hostile.len());
    assert_eq!(
        store.list_subscriptions().await.unwrap().len(),
        hostile.len()
    );
    // A quote in a lookup is just a character, not a wildcard or a terminator.
    assert_eq!(store.get_key("' OR '1'='1").await.unwrap(), None);
}

pub async fn concurrent_inserts_get_distinct_versions(store: &Store) {
    const TASKS: usize = 6;
    const PER_TASK: usize = 5;
    store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut versions = Vec::new();
            for i in 0..PER_TASK {
                let k = key(&format!("t{t}-k{i}"), &format!("owner{t}"), "gold", 1);
                versions.push(store.insert_key(&k, "load").await.unwrap());
            }
            versions
        });
    }
    let mut all = Vec::new();
    while let Some(versions) = tasks.join_next().await {
        let versions = versions.unwrap();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "increasing within a task"
        );
        all.extend(versions);
    }
    let distinct: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), TASKS * PER_TASK, "distinct versions");

    let changes = store.changes_since(0).await.unwrap();
    assert_eq!(changes.version, *all.iter().max().unwrap());
    assert_eq!(changes.keys.len(), TASKS * PER_TASK);
    assert_eq!(store.audit(1000).await.unwrap().len(), TASKS * PER_TASK + 1);
}

pub async fn reopen_keeps_data(store: &Store, url: &str) {
    let v = store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();
    let again = Store::connect(url).await.unwrap();
    assert_eq!(
        again.identity(),
        store.identity(),
        "the id is the database's"
    );
    assert_eq!(store.identity().len(), 32);
    assert_eq!(
        again
            .get_subscription("gold")
            .await
            .unwrap()
            .unwrap()
            .version,
        v
    );
    assert_eq!(again.changes_since(0).await.unwrap().version, v);
    again.close().await;
}

pub async fn sampled_usage_is_stored_with_the_reading_it_was_counted_to(store: &Store) {
    use crate::showback::{Usage, UsageKey};
    use crate::store::{BaselineUpdate, GatewayCounters, UsageRow};
    let series = |model: &str, prompt_tokens: u64| {
        let key = UsageKey {
            subscription: "a".into(),
            model: model.into(),
            key: "k1".into(),
        };
        let usage = Usage {
            requests: 1,
            prompt_tokens,
            completion_tokens: 0,
        };
        (key, usage)
    };
    let update = |read_at: i64, uptime: u64, replace: bool, counters: Vec<(UsageKey, Usage)>| {
        BaselineUpdate {
            gateway: "http://gw:15000".into(),
            read_at,
            uptime,
            replace,
            counters,
        }
    };
    let mut lease = store.try_sampler_lease().await.unwrap().unwrap();
    assert_eq!(lease.baselines().await.unwrap(), []);
    let usage = [UsageRow::new("a", "m1", 1, 10, 0).through_key("k1")];
    lease
        .add_usage(
            60,
            &usage,
            &update(100, 5000, true, vec![series("m1", 10), series("m2", 7)]),
        )
        .await
        .unwrap();
    // An update moves the series it names and keeps the others.
    lease
        .add_usage(
            120,
            &usage,
            &update(160, 5060, false, vec![series("m1", 20)]),
        )
        .await
        .unwrap();
    let stored = lease.baselines().await.unwrap();
    let expected = GatewayCounters {
        gateway: "http://gw:15000".into(),
        read_at: 160,
        uptime: 5060,
        counters: [series("m1", 20), series("m2", 7)].into_iter().collect(),
    };
    assert_eq!(stored, [expected]);
    assert_eq!(
        store.usage(0, 1_000).await.unwrap()[0].usage.prompt_tokens,
        20
    );
    // A restart replaces every series.
    lease
        .add_usage(180, &usage, &update(200, 3, true, vec![series("m1", 10)]))
        .await
        .unwrap();
    let stored = lease.baselines().await.unwrap();
    assert_eq!(stored[0].counters, [series("m1", 10)].into_iter().collect());
    assert_eq!(stored[0].uptime, 3);
    drop(lease);
    // Another holder reads what the last one stored (PostgreSQL releases
    // the lock once it sees the session end).
    let mut next = None;
    for _ in 0..100 {
        next = store.try_sampler_lease().await.unwrap();
        if next.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut next = next.expect("the lease was not released");
    assert_eq!(next.baselines().await.unwrap(), stored);
}

pub async fn usage_adds_up_per_bucket_and_sums_over_a_range(store: &Store) {
    use crate::store::UsageRow;
    let row = UsageRow::new;
    store
        .add_usage(60, &[row("a", "m1", 1, 10, 5), row("b", "m1", 2, 20, 0)])
        .await
        .unwrap();
    // The same bucket again adds, rather than replaces.
    store
        .add_usage(60, &[row("a", "m1", 1, 1, 1)])
        .await
        .unwrap();
    store
        .add_usage(
            120,
            &[
                row("a", "m1", 4, 40, 4),
                row("a", "it's \"quoted\"", 1, 1, 1),
            ],
        )
        .await
        .unwrap();
    let all = store.usage(0, 1_000).await.unwrap();
    assert_eq!(
        all,
        vec![
            row("a", "it's \"quoted\"", 1, 1, 1),
            row("a", "m1", 6, 51, 10),
            row("b", "m1", 2, 20, 0),
        ]
    );
    // [from, to) by bucket start.
    assert_eq!(
        store.usage(60, 120).await.unwrap(),
        vec![row("a", "m1", 2, 11, 6), row("b", "m1", 2, 20, 0)]
    );
    assert!(store.usage(200, 300).await.unwrap().is_empty());
}

pub async fn changes_are_paged_without_loss(store: &Store) {
    store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();
    for (i, id) in ["p1", "p2", "p3", "p4", "p5"].iter().enumerate() {
        store
            .insert_key(&key(id, "alice", "gold", i as i64), "alice")
            .await
            .unwrap();
    }
    let mut since = 0;
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut subscriptions = Vec::new();
    loop {
        let page = store.changes_page(since, Some(2)).await.unwrap();
        assert!(page.version > since);
        pages.push(page.keys.iter().map(|k| k.id.clone()).collect());
        subscriptions.push(page.subscriptions.len());
        since = page.version;
        if pages.len() == 1 {
            // A change made between pages comes in a later page.
            store.revoke_key("p1", 10, "alice").await.unwrap();
        }
        if !page.more {
            assert!(page
                .keys
                .iter()
                .any(|k| k.id == "p1" && k.revoked_at.is_some()));
            break;
        }
    }
    assert_eq!(pages, [["p1", "p2"], ["p3", "p4"], ["p5", "p1"]]);
    assert_eq!(
        subscriptions,
        [1, 0, 0],
        "the subscription comes with the first page"
    );
    let caught_up = store.changes_page(since, Some(2)).await.unwrap();
    assert!(caught_up.keys.is_empty() && !caught_up.more);
    assert_eq!(caught_up.version, since);
}

/// A subscription changed between a page's counter read and its row reads
/// (a deterministic replay of that race: the counter read is passed in)
/// still comes with the keys that need it, at its latest state, on a full
/// sync and on later pages alike; the next sync sends it again.
pub async fn a_subscription_changed_after_the_counter_read_comes_with_its_keys(store: &Store) {
    store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();
    for (i, id) in ["k1", "k2", "k3"].iter().enumerate() {
        store
            .insert_key(&key(id, "alice", "gold", i as i64), "alice")
            .await
            .unwrap();
    }
    let upto = store.changes_since(0).await.unwrap().version;
    // Another replica updates the subscription after the counter was read.
    let mut newer = subscription("gold", 50);
    newer.spec["models"] = json!(["llama-3-8b"]);
    let v_gold = store.put_subscription(&newer, "admin").await.unwrap();
    assert!(v_gold > upto);

    let names = |c: &crate::store::Changes| -> Vec<String> {
        c.subscriptions.iter().map(|s| s.name.clone()).collect()
    };
    let full = store.changes_page_read_at(0, upto, None).await.unwrap();
    assert_eq!(full.keys.len(), 3);
    assert_eq!(
        names(&full),
        ["gold"],
        "the keys' subscription is in the page"
    );
    assert_eq!(full.subscriptions[0].spec["models"], json!(["llama-3-8b"]));
    assert_eq!((full.version, full.more), (upto, false));

    // Paged: every page still has it, and `more`/`version` follow the keys.
    let first = store.changes_page_read_at(0, upto, Some(2)).await.unwrap();
    assert_eq!((first.keys.len(), first.more), (2, true));
    assert_eq!(names(&first), ["gold"]);
    let second = store
        .changes_page_read_at(first.version, upto, Some(2))
        .await
        .unwrap();
    assert_eq!((second.keys.len(), second.more), (1, false));
    assert_eq!(second.version, upto);

    // The sync that reaches the change brings it (again) and nothing else.
    let next = store.changes_since(upto).await.unwrap();
    assert_eq!(next.version, v_gold);
    assert!(next.keys.is_empty());
    assert_eq!(names(&next), ["gold"]);
}

pub async fn key_cap_counts_live_keys_of_one_owner_in_one_subscription(store: &Store) {
    for name in ["gold", "silver"] {
        store
            .put_subscription(&subscription(name, 1), "admin")
            .await
            .unwrap();
    }
    let mint = |id: &str, owner: &str, sub: &str, at: i64| {
        let k = key(id, owner, sub, at);
        async move { store.insert_key_within(&k, "test", 2).await }
    };
    mint("a1", "alice", "gold", 100).await.unwrap();
    mint("a2", "alice", "gold", 100).await.unwrap();
    let before = store.changes_since(0).await.unwrap().version;
    let err = mint("a3", "alice", "gold", 100).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::TooManyKeys { owner, subscription, max: 2 }
            if owner == "alice" && subscription == "gold"),
        "{err:?}"
    );
    // Refused: nothing written, no version spent.
    assert_eq!(store.get_key("a3").await.unwrap(), None);
    assert_eq!(store.changes_since(0).await.unwrap().version, before);
    // Other owners and other subscriptions have their own count.
    mint("b1", "bob", "gold", 100).await.unwrap();
    mint("a4", "alice", "silver", 100).await.unwrap();
    // A revoked key no longer counts, nor does an expired one (`key`
    // expires an hour after it was made).
    store.revoke_key("a1", 200, "alice").await.unwrap();
    mint("a5", "alice", "gold", 200).await.unwrap();
    assert!(mint("a6", "alice", "gold", 200).await.is_err());
    mint("a7", "alice", "gold", 100 + 3600).await.unwrap();
    // The uncapped insert (administration, benches) is unchanged.
    store
        .insert_key(&key("a8", "alice", "gold", 100), "admin")
        .await
        .unwrap();
}

pub async fn concurrent_mints_never_exceed_the_cap(store: &Store) {
    const CAP: u64 = 3;
    const MINTS: usize = 12;
    store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..MINTS {
        let store = store.clone();
        tasks.spawn(async move {
            let k = key(&format!("k{i}"), "alice", "gold", 10);
            store.insert_key_within(&k, "alice", CAP).await
        });
    }
    let (mut minted, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => minted += 1,
            Err(StoreError::TooManyKeys { .. }) => refused += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((minted, refused), (CAP as usize, MINTS - CAP as usize));
    assert_eq!(
        store.list_keys(Some("alice")).await.unwrap().len(),
        CAP as usize
    );
}

/// `store` is at migration 3, when the administrator token acted as
/// "admin"; `url` opens it with every migration.
pub async fn keys_of_the_old_admin_identity_move_to_the_new_one(store: &Store, url: &str) {
    store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();
    for (id, owner) in [("a1", "admin"), ("b1", "bob"), ("a2", "admin")] {
        store
            .insert_key(&key(id, owner, "gold", 1), "admin")
            .await
            .unwrap();
    }
    let before = store.changes_since(0).await.unwrap().version;

    let migrated = Store::connect(url).await.unwrap();
    for id in ["a1", "a2"] {
        let k = migrated.get_key(id).await.unwrap().unwrap();
        assert_eq!(k.owner, crate::api::ADMIN_SUBJECT, "{id}");
    }
    assert_eq!(migrated.get_key("b1").await.unwrap().unwrap().owner, "bob");
    assert!(migrated.list_keys(Some("admin")).await.unwrap().is_empty());
    // Gateways learn the new owners through sync: one new version each.
    let changes = migrated.changes_since(before).await.unwrap();
    assert_eq!(changes.version, before + 2);
    let versions: Vec<(String, u64)> = changes
        .keys
        .iter()
        .map(|k| (k.id.clone(), k.version))
        .collect();
    assert_eq!(
        versions,
        [("a1".into(), before + 1), ("a2".into(), before + 2)]
    );
    // And the counter goes on from there.
    let next = migrated
        .insert_key(&key("c1", "carol", "gold", 2), "carol")
        .await
        .unwrap();
    assert_eq!(next, before + 3);
    migrated.close().await;
}

pub async fn usage_is_kept_per_key_and_detailed_per_day_with_owners(store: &Store) {
    use crate::store::{UsageDetail, UsageRow};
    store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();
    store
        .insert_key(&key("k1", "alice", "gold", 1), "admin")
        .await
        .unwrap();
    let row = UsageRow::new;
    let day = 86_400;
    store
        .add_usage(
            day + 60,
            &[
                row("gold", "m1", 1, 10, 5).through_key("k1"),
                row("gold", "m1", 1, 7, 0).through_key("static-key"),
                row("gold", "m1", 1, 1, 1),
            ],
        )
        .await
        .unwrap();
    store
        .add_usage(day + 120, &[row("gold", "m1", 2, 20, 2).through_key("k1")])
        .await
        .unwrap();
    store
        .add_usage(2 * day, &[row("gold", "m1", 1, 100, 0).through_key("k1")])
        .await
        .unwrap();
    // Per subscription and model, as before: every key together.
    assert_eq!(
        store.usage(0, 3 * day).await.unwrap(),
        vec![row("gold", "m1", 6, 138, 8)]
    );
    let detail = |d: i64, k: &str, owner: &str, usage: UsageRow| UsageDetail {
        day: d,
        subscription: "gold".into(),
        model: "m1".into(),
        key: k.into(),
        owner: owner.into(),
        usage: usage.usage,
    };
    assert_eq!(
        store.usage_detail(0, 3 * day).await.unwrap(),
        vec![
            // No key (token holders), and a key this store did not mint:
            // no owner.
            detail(day, "", "", row("", "", 1, 1, 1)),
            detail(day, "k1", "alice", row("", "", 3, 30, 7)),
            detail(day, "static-key", "", row("", "", 1, 7, 0)),
            detail(2 * day, "k1", "alice", row("", "", 1, 100, 0)),
        ]
    );
    // One owner's keys only, read as such by the database.
    assert_eq!(
        store.usage_detail_of("alice", 0, 3 * day).await.unwrap(),
        vec![
            detail(day, "k1", "alice", row("", "", 3, 30, 7)),
            detail(2 * day, "k1", "alice", row("", "", 1, 100, 0)),
        ]
    );
    assert!(store
        .usage_detail_of("bob", 0, 3 * day)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .usage_detail_of("", 0, 3 * day)
        .await
        .unwrap()
        .is_empty());
    // A limit's window: from a bucket on.
    let since = store.usage_since("gold", day + 120).await.unwrap();
    assert_eq!((since.requests, since.prompt_tokens), (3, 120));
    let none = store.usage_since("other", 0).await.unwrap();
    assert_eq!(none, crate::showback::Usage::default());
}

pub async fn prices_are_stored_in_one_currency_and_audited(store: &Store) {
    use crate::showback::price::{Micros, Price};
    let price = |model: &str, currency: &str, p: u64| Price {
        model: model.into(),
        currency: currency.into(),
        prompt: Micros(p),
        completion: Micros(2 * p),
    };
    store
        .put_price(&price("m1", "USD", 150_000), 10, "admin")
        .await
        .unwrap();
    store
        .put_price(&price("m2", "USD", 1), 10, "admin")
        .await
        .unwrap();
    // Replacing one changes it; the only model priced may change currency.
    store
        .put_price(&price("m1", "USD", 200_000), 11, "admin")
        .await
        .unwrap();
    assert_eq!(
        store.list_prices().await.unwrap(),
        vec![price("m1", "USD", 200_000), price("m2", "USD", 1)]
    );
    let other = store.put_price(&price("m3", "EUR", 1), 12, "admin").await;
    assert!(
        matches!(&other, Err(StoreError::OtherCurrency { existing, .. }) if existing == "USD"),
        "{other:?}"
    );
    assert!(store.delete_price("m2", "admin").await.unwrap());
    assert!(!store.delete_price("m2", "admin").await.unwrap());
    store
        .put_price(&price("m1", "EUR", 1), 13, "admin")
        .await
        .unwrap();
    let audit = store.audit(10).await.unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("price.put", "m1"),
            ("price.delete", "m2"),
            ("price.put", "m1"),
            ("price.put", "m2"),
            ("price.put", "m1"),
        ]
    );
}

/// Usage an older release stored (no key column) survives migration 5,
/// under no key.
pub async fn usage_before_keys_were_counted_survives_migration_5(store: &Store, url: &str) {
    sqlx::query(
        "INSERT INTO usage_buckets (bucket_start, subscription, model, requests, prompt_tokens, completion_tokens) \
         VALUES (60, 'gold', 'm1', 2, 30, 4)",
    )
    .execute(&store.pool)
    .await
    .unwrap();
    let migrated = Store::connect(url).await.unwrap();
    let detail = migrated.usage_detail(0, 120).await.unwrap();
    assert_eq!(detail.len(), 1);
    assert_eq!(
        (detail[0].key.as_str(), detail[0].usage.prompt_tokens),
        ("", 30)
    );
    // New usage lands beside it, per key.
    migrated
        .add_usage(
            60,
            &[crate::store::UsageRow::new("gold", "m1", 1, 1, 1).through_key("k9")],
        )
        .await
        .unwrap();
    assert_eq!(migrated.usage_detail(0, 120).await.unwrap().len(), 2);
    migrated.close().await;
}

fn groups(names: &[&str]) -> Vec<String> {
    names.iter().map(|g| g.to_string()).collect()
}

/// Mints `k` as the API does: checked against the subscription's current
/// version, through `via` (`None`: an administrator's mint).
async fn mint_via(store: &Store, k: &KeyRow, via: Option<&[&str]>) -> u64 {
    let version = store
        .get_subscription(&k.subscription)
        .await
        .unwrap()
        .unwrap()
        .version;
    let via = via.map(groups);
    let admission = crate::store::Admission {
        max_live: 100,
        subscription_version: version,
        via_groups: via.as_deref(),
        max_minted_per_day: None,
    };
    store
        .insert_admitted_key(k, &k.owner, &admission)
        .await
        .unwrap()
}

pub async fn a_change_of_groups_revokes_the_keys_minted_through_groups_it_drops(store: &Store) {
    let gold = subscription("gold", 100);
    let first = store
        .put_subscription_admitting(&gold, &groups(&["a", "b"]), "admin")
        .await
        .unwrap();
    assert!(first.revoked_keys.is_empty());
    let live = |id: &str, owner: &str| {
        let mut k = key(id, owner, "gold", 100);
        k.expires_at = None;
        k
    };
    mint_via(store, &live("via-a", "alice"), Some(&["a"])).await;
    mint_via(store, &live("via-b", "bob"), Some(&["b"])).await;
    mint_via(store, &live("via-ab", "carol"), Some(&["a", "b"])).await;
    // An administrator's mint for someone: no group gave it.
    mint_via(store, &live("by-admin", "dave"), None).await;
    // Minted without a record (as before migration 6).
    store
        .insert_key(&live("unrecorded", "erin"), "erin")
        .await
        .unwrap();
    // Through `a`, but expired, or revoked already: nothing to take away.
    let mut expired = key("expired-a", "alice", "gold", 100);
    expired.expires_at = Some(400);
    mint_via(store, &expired, Some(&["a"])).await;
    mint_via(store, &live("revoked-a", "alice"), Some(&["a"])).await;
    store.revoke_key("revoked-a", 300, "alice").await.unwrap();
    assert_eq!(
        store.key_via_groups("via-ab").await.unwrap(),
        Some(Some(groups(&["a", "b"])))
    );
    assert_eq!(
        store.key_via_groups("unrecorded").await.unwrap(),
        Some(None)
    );
    assert_eq!(store.key_via_groups("nope").await.unwrap(), None);
    let before = store.changes_since(0).await.unwrap().version;

    // `a` leaves the subscription.
    let mut update = subscription("gold", 100);
    update.updated_at = 500;
    let put = store
        .put_subscription_admitting(&update, &groups(&["b"]), "admin")
        .await
        .unwrap();
    assert_eq!(put.revoked_keys, ["via-a"]);
    let revoked = store.get_key("via-a").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(500));
    for id in ["via-b", "via-ab", "by-admin", "unrecorded", "expired-a"] {
        let k = store.get_key(id).await.unwrap().unwrap();
        assert_eq!(k.revoked_at, None, "{id} is kept");
    }
    assert_eq!(
        store
            .get_key("revoked-a")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(300),
        "a revoked key keeps its first revocation"
    );
    // The gateways learn it by sync, the change after the subscription's.
    let changes = store.changes_since(before).await.unwrap();
    assert_eq!(changes.version, put.version + 1);
    assert_eq!(changes.keys, std::slice::from_ref(&revoked));
    assert_eq!(revoked.version, put.version + 1);
    assert_eq!(changes.subscriptions[0].version, put.version);
    // Audited as any revocation, saying why; the put names what it revoked.
    let audit = store.audit(2).await.unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].target.as_str()),
        ("key.revoke", "via-a")
    );
    assert_eq!(audit[0].actor, "admin");
    assert_eq!(audit[0].seq, revoked.version as i64);
    assert!(audit[0].detail["reason"]
        .as_str()
        .unwrap()
        .contains("no longer admits"));
    assert_eq!(audit[1].action, "subscription.put");
    assert_eq!(audit[1].detail["revoked_keys"], json!(["via-a"]));

    // No group left: every key minted through one goes, each a change of
    // its own; keys without a record stay.
    let put = store
        .put_subscription_admitting(&update, &[], "admin")
        .await
        .unwrap();
    assert_eq!(put.revoked_keys, ["via-ab", "via-b"]);
    let changes = store.changes_since(put.version).await.unwrap();
    let versions: Vec<(&str, u64)> = changes
        .keys
        .iter()
        .map(|k| (k.id.as_str(), k.version))
        .collect();
    assert_eq!(
        versions,
        [("via-ab", put.version + 1), ("via-b", put.version + 2)]
    );
    for id in ["by-admin", "unrecorded"] {
        assert_eq!(store.get_key(id).await.unwrap().unwrap().revoked_at, None);
    }
    // Giving `a` back revokes nothing more and revives nothing.
    let put = store
        .put_subscription_admitting(&update, &groups(&["a", "b"]), "admin")
        .await
        .unwrap();
    assert!(put.revoked_keys.is_empty());
    assert!(store
        .get_key("via-a")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    // A plain put applies no group rule.
    mint_via(store, &live("via-a-2", "alice"), Some(&["a"])).await;
    store.put_subscription(&update, "seed").await.unwrap();
    assert_eq!(
        store.get_key("via-a-2").await.unwrap().unwrap().revoked_at,
        None
    );
}

pub async fn a_mint_checked_against_an_older_subscription_is_refused(store: &Store) {
    let gold = subscription("gold", 100);
    let checked = store
        .put_subscription_admitting(&gold, &groups(&["a"]), "admin")
        .await
        .unwrap()
        .version;
    // The administrator takes `a` away between the check and the write.
    store
        .put_subscription_admitting(&gold, &[], "admin")
        .await
        .unwrap();
    let before = store.changes_since(0).await.unwrap().version;
    let via = groups(&["a"]);
    let admission = crate::store::Admission {
        max_live: 10,
        subscription_version: checked,
        via_groups: Some(&via),
        max_minted_per_day: None,
    };
    let err = store
        .insert_admitted_key(&key("k1", "alice", "gold", 100), "alice", &admission)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::SubscriptionChanged(s) if s == "gold"),
        "{err:?}"
    );
    assert_eq!(store.get_key("k1").await.unwrap(), None);
    assert_eq!(store.changes_since(0).await.unwrap().version, before);
}

/// Keys an older release minted have no record of their groups after
/// migration 6, and a change of groups leaves them alone.
pub async fn keys_from_before_migration_6_survive_a_change_of_groups(store: &Store, url: &str) {
    store
        .put_subscription(&subscription("gold", 1), "admin")
        .await
        .unwrap();
    store
        .insert_key(&key("old", "alice", "gold", 1), "alice")
        .await
        .unwrap();
    let migrated = Store::connect(url).await.unwrap();
    assert_eq!(migrated.key_via_groups("old").await.unwrap(), Some(None));
    let put = migrated
        .put_subscription_admitting(&subscription("gold", 1), &[], "admin")
        .await
        .unwrap();
    assert!(put.revoked_keys.is_empty());
    assert_eq!(
        migrated.get_key("old").await.unwrap().unwrap().revoked_at,
        None
    );
    migrated.close().await;
}

/// The daily mint bound counts one owner's keys created in the 24 hours
/// before the new one, in every subscription, revoked ones included; an
/// older key does not count, nor another owner's.
pub async fn the_daily_mint_bound_counts_the_owners_last_24_hours(store: &Store) {
    let now = 10 * 86_400;
    let mut versions = BTreeMap::new();
    for name in ["gold", "silver"] {
        store
            .put_subscription(&subscription(name, 100), "admin")
            .await
            .unwrap();
        let row = store.get_subscription(name).await.unwrap().unwrap();
        versions.insert(name, row.version);
    }
    // Mints key `id` for `owner` in `sub` at `at` through group `g`, at
    // most 2 a day.
    let via = groups(&["g"]);
    let via = &via;
    let mint = move |id: &'static str, owner: &'static str, sub: &'static str, at: i64| {
        let admission = crate::store::Admission {
            max_live: 100,
            subscription_version: versions[sub],
            via_groups: Some(via),
            max_minted_per_day: Some(2),
        };
        async move {
            store
                .insert_admitted_key(&key(id, owner, sub, at), owner, &admission)
                .await
        }
    };
    // 25 hours ago: outside the window of every mint below.
    mint("old", "alice", "gold", now - 90_000).await.unwrap();
    // An administrator's key for alice (no groups recorded) counts not.
    store
        .insert_key(&key("given", "alice", "gold", now - 90), "admin")
        .await
        .unwrap();
    mint("k1", "alice", "gold", now - 60).await.unwrap();
    store.revoke_key("k1", now - 50, "alice").await.unwrap();
    mint("k2", "alice", "silver", now - 30).await.unwrap();
    let err = mint("k3", "alice", "gold", now).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::TooManyMints { owner, max: 2 } if owner == "alice"),
        "{err:?}"
    );
    assert_eq!(store.get_key("k3").await.unwrap(), None);
    mint("b1", "bob", "gold", now).await.unwrap();
}
