//! Showback over real HTTP: prices, the usage report (cost per row, the
//! daily series, drill-down by key and owner, cost centers, filters, CSV),
//! spend against limits, and the refusals of bad parameters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use maas_control_plane::store::UsageRow;
use maas_testkit::request;
use serde_json::{json, Value};
use support::*;

const MODEL: &str = "smollm2-135m-instruct";

fn put_price(cp: &ControlPlane, model: &str, body: Value) -> maas_testkit::Response {
    cp.call(
        "PUT",
        &format!("/maas-api/v1/prices/{model}"),
        Some(ADMIN),
        Some(&body),
    )
}

fn get(cp: &ControlPlane, path: &str, bearer: &str) -> Value {
    let r = cp.call("GET", path, Some(bearer), None);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

/// The setup's subscriptions, team-a priced, a key each for alice and bob
/// on team-a, usage today and the day before.
fn priced_usage() -> (ControlPlane, String, String) {
    let cp = setup();
    let r = put_price(
        &cp,
        MODEL,
        json!({"currency": "USD", "prompt_per_million": "0.5", "completion_per_million": 1.5}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mint = |owner: &str| {
        let r = cp.mint(
            ADMIN,
            json!({"name": "k", "subscription": "team-a", "owner": owner}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    };
    let (alice, bob) = (mint("alice"), mint("bob"));
    let row = UsageRow::new;
    cp.add_usage(&[
        row("team-a", MODEL, 2, 1_000_000, 0).through_key(&alice),
        row("team-a", MODEL, 1, 0, 1_000_000).through_key(&bob),
        row("team-b", "other-model", 3, 400, 100),
    ]);
    let yesterday = (now() as i64 / 60) * 60 - 86_400;
    cp.runtime
        .block_on(cp.store.add_usage(
            yesterday,
            &[row("team-a", MODEL, 1, 2_000_000, 0).through_key(&alice)],
        ))
        .unwrap();
    (cp, alice, bob)
}

fn range() -> String {
    let to = now() + 1;
    format!("from={}&to={to}", to - 3 * 86_400)
}

#[test]
fn prices_are_validated_audited_and_kept_in_one_currency() {
    let cp = setup();
    let r = put_price(
        &cp,
        MODEL,
        json!({"currency": "USD", "prompt_per_million": "0.1234567", "completion_per_million": 1}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_value");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prompt_per_million: "),
        "{}",
        r.text()
    );
    let ok =
        json!({"currency": "USD", "prompt_per_million": "0.15", "completion_per_million": "0.6"});
    assert_eq!(put_price(&cp, MODEL, ok.clone()).status, 200);
    let r = put_price(
        &cp,
        "other-model",
        json!({"currency": "EUR", "prompt_per_million": 1, "completion_per_million": 1}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("one currency"), "{}", r.text());
    // Developers read prices; only administrators change them.
    let alice = token("alice", &["team-a"]);
    let listed = get(&cp, "/maas-api/v1/prices", &alice);
    assert_eq!(listed["data"][0]["prompt_per_million"], "0.15");
    let r = cp.call(
        "PUT",
        &format!("/maas-api/v1/prices/{MODEL}"),
        Some(&alice),
        Some(&ok),
    );
    assert_eq!(r.status, 403);
    let audit = cp.runtime.block_on(cp.store.audit(10)).unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "price.put" && a.target == MODEL));
    // The prices as gauges, for dashboards.
    let first_read = std::time::Instant::now();
    let metrics = request("GET", &format!("http://{}/metrics", cp.addr), &[], None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains(&format!(
            "maas_model_price_per_million{{model=\"{MODEL}\",kind=\"completion\",currency=\"USD\"}} 0.6"
        )),
        "{}",
        metrics.text()
    );
    // Scrapes share one read for a few seconds: another replica's change
    // (written straight to the database here) is not read again at once,
    // while this replica's own change is.
    let metrics = || request("GET", &format!("http://{}/metrics", cp.addr), &[], None).text();
    let other = maas_control_plane::showback::price::Price::from_json(
        MODEL,
        br#"{"currency": "USD", "prompt_per_million": "0.15", "completion_per_million": "0.9"}"#,
    )
    .unwrap();
    cp.runtime
        .block_on(cp.store.put_price(&other, now() as i64, "another-replica"))
        .unwrap();
    let completion = |amount: &str| {
        format!("maas_model_price_per_million{{model=\"{MODEL}\",kind=\"completion\",currency=\"USD\"}} {amount}")
    };
    let scraped = metrics();
    // (On a machine so slow that the read is seconds old, it is read again.)
    assert!(
        scraped.contains(&completion("0.6"))
            || first_read.elapsed() >= std::time::Duration::from_secs(5),
        "read again at once: {scraped}"
    );
    let higher =
        json!({"currency": "USD", "prompt_per_million": "0.15", "completion_per_million": "1.2"});
    assert_eq!(put_price(&cp, MODEL, higher).status, 200);
    assert!(metrics().contains(&completion("1.2")), "{}", metrics());
    let path = format!("/maas-api/v1/prices/{MODEL}");
    assert_eq!(cp.call("DELETE", &path, Some(ADMIN), None).status, 200);
    assert_eq!(cp.call("DELETE", &path, Some(ADMIN), None).status, 404);
    assert_eq!(get(&cp, "/maas-api/v1/prices", ADMIN)["data"], json!([]));
}

#[test]
fn rows_keep_their_shape_and_gain_cost_at_the_price_used() {
    let (cp, _, _) = priced_usage();
    let body = get(&cp, &format!("/maas-api/v1/usage?{}", range()), ADMIN);
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["group_by"], json!(["subscription", "model"]));
    let a = &body["data"][0];
    assert_eq!(
        (a["subscription"].as_str(), a["model"].as_str()),
        (Some("team-a"), Some(MODEL))
    );
    assert_eq!(a["requests"], 4);
    assert_eq!(a["prompt_tokens"], 3_000_000);
    assert_eq!(a["completion_tokens"], 1_000_000);
    assert_eq!(a["total_tokens"], 4_000_000);
    // 3M × 0.5 + 1M × 1.5.
    assert_eq!(a["cost"], "3.000000");
    assert_eq!(a["price"]["prompt_per_million"], "0.5");
    // No price: tokens, and no cost rather than a cost of zero.
    let b = &body["data"][1];
    assert_eq!(b["total_tokens"], 500);
    assert_eq!(b["cost"], Value::Null);
    assert_eq!(b["unpriced_tokens"], 500);
    assert_eq!(body["total"]["cost"], "3.000000");
    assert_eq!(body["total"]["unpriced_tokens"], 500);
}

#[test]
fn usage_comes_per_day_key_owner_and_cost_center() {
    let (cp, alice, bob) = priced_usage();
    let q = |extra: &str| {
        get(
            &cp,
            &format!("/maas-api/v1/usage?{}&{extra}", range()),
            ADMIN,
        )
    };
    let daily = q("group_by=day");
    let days: Vec<(&str, &str)> = daily["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["day"].as_str().unwrap(), d["cost"].as_str().unwrap()))
        .collect();
    let today = maas_control_plane::time::utc_date(now() as i64);
    let before = maas_control_plane::time::utc_date(now() as i64 - 86_400);
    assert_eq!(
        days,
        [(before.as_str(), "1.000000"), (today.as_str(), "2.000000")]
    );

    let keys = q("group_by=key,owner&subscription=team-a");
    let keys: Vec<(String, String, String)> = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let s = |f: &str| k[f].as_str().unwrap().to_string();
            (s("key"), s("owner"), s("cost"))
        })
        .collect();
    let mut want = vec![
        (alice.clone(), "alice".to_string(), "1.500000".to_string()),
        (bob.clone(), "bob".to_string(), "1.500000".to_string()),
    ];
    want.sort();
    assert_eq!(keys, want);

    let owners = q("group_by=owner");
    assert_eq!(
        owners["data"][0]["owner"],
        Value::Null,
        "team-b's usage had no key"
    );
    assert_eq!(owners["data"][1]["owner"], "alice");
    let only_bob = q("group_by=model&owner=bob");
    assert_eq!(only_bob["data"].as_array().unwrap().len(), 1);
    assert_eq!(only_bob["total"]["completion_tokens"], 1_000_000);

    let centers = q("group_by=cost_center");
    assert_eq!(centers["data"][1]["cost_center"], "CC-1");
    assert_eq!(centers["data"][1]["cost"], "3.000000");

    // A developer sees only the usage through their own keys: Carol, a
    // member of team-b, holds none, and team-b's usage came through no key.
    let carol = token("carol", &["team-b"]);
    let hers = get(
        &cp,
        &format!("/maas-api/v1/usage?{}&group_by=subscription", range()),
        &carol,
    );
    assert_eq!(hers["data"], json!([]));
    assert_eq!(hers["total"]["requests"], 0);
}

/// The report's rows as (key, owner, requests, cost).
fn key_rows(body: &Value) -> Vec<(String, String, u64, String)> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let s = |f: &str| k[f].as_str().unwrap_or("-").to_string();
            (
                s("key"),
                s("owner"),
                k["requests"].as_u64().unwrap(),
                s("cost"),
            )
        })
        .collect()
}

#[test]
fn a_member_sees_only_their_own_keys_usage_and_an_administrator_everyones() {
    let (cp, alice_key, bob_key) = priced_usage();
    // Beside Alice's and Bob's keys on team-a: usage through no key on
    // team-a, and through a key of Alice's on team-b, which her groups do
    // not admit.
    let on_b = cp.mint(
        ADMIN,
        json!({"name": "b", "subscription": "team-b", "owner": "alice"}),
    );
    assert_eq!(on_b.status, 201, "{}", on_b.text());
    let on_b = on_b.json()["id"].as_str().unwrap().to_string();
    cp.add_usage(&[
        UsageRow::new("team-a", MODEL, 5, 5, 5),
        UsageRow::new("team-b", "other-model", 7, 7, 7).through_key(&on_b),
    ]);
    let alice = token("alice", &["team-a"]);
    let q = |bearer: &str, extra: &str| {
        get(
            &cp,
            &format!("/maas-api/v1/usage?{}&{extra}", range()),
            bearer,
        )
    };

    // Alice: her key only (two requests today, one yesterday: 3M prompt
    // tokens at 0.5), and totals that are hers alone.
    let mine = q(&alice, "group_by=key,owner");
    let alices_row = (
        alice_key.clone(),
        "alice".to_string(),
        3,
        "1.500000".to_string(),
    );
    assert_eq!(key_rows(&mine), std::slice::from_ref(&alices_row));
    assert_eq!(mine["total"]["requests"], 3);
    assert_eq!(mine["total"]["prompt_tokens"], 3_000_000);
    assert_eq!(mine["total"]["completion_tokens"], 0);
    assert_eq!(mine["total"]["cost"], "1.500000");
    let text = mine.to_string();
    assert!(!text.contains(&bob_key) && !text.contains("bob"), "{text}");
    // The other groupings and filters work within her own usage.
    let by_model = q(&alice, "group_by=subscription,model");
    assert_eq!(by_model["data"].as_array().unwrap().len(), 1);
    assert_eq!(by_model["data"][0]["requests"], 3);
    assert_eq!(
        q(&alice, "group_by=day")["data"].as_array().unwrap().len(),
        2
    );
    for filter in [format!("key={bob_key}"), "owner=bob".to_string()] {
        let none = q(&alice, &format!("group_by=key&{filter}"));
        assert_eq!(none["data"], json!([]), "{filter}");
        assert_eq!(none["total"]["requests"], 0, "{filter}");
    }
    // The CSV is the same report.
    let csv = cp.call(
        "GET",
        &format!(
            "/maas-api/v1/usage?{}&group_by=key,owner&format=csv",
            range()
        ),
        Some(&alice),
        None,
    );
    assert_eq!(csv.status, 200);
    assert!(csv.text().contains(&alice_key), "{}", csv.text());
    assert!(!csv.text().contains(&bob_key) && !csv.text().contains("bob"));

    // Bob, the same from his side.
    let bob = token("bob", &["team-a"]);
    let his = q(&bob, "group_by=key,owner");
    assert_eq!(
        key_rows(&his),
        [(
            bob_key.clone(),
            "bob".to_string(),
            1,
            "1.500000".to_string()
        )]
    );

    // The administrator: every key, the keyless usage, every subscription.
    let all = q(ADMIN, "group_by=key,owner&subscription=team-a");
    let mut want = vec![
        ("-".to_string(), "-".to_string(), 5, "0.000010".to_string()),
        alices_row,
        (bob_key, "bob".to_string(), 1, "1.500000".to_string()),
    ];
    want.sort();
    let mut got = key_rows(&all);
    got.sort();
    assert_eq!(got, want);
    assert_eq!(
        q(ADMIN, "group_by=key&subscription=team-b")["total"]["requests"],
        10
    );
}

#[test]
fn csv_is_served_for_format_or_accept_with_quoting() {
    let (cp, alice, _) = priced_usage();
    let r = cp.subscription(json!({"name": "team-a", "models": [MODEL], "limits": "unlimited", "cost_center": "Research, \"AI\""}));
    assert_eq!(r.status, 200, "{}", r.text());
    let path = format!(
        "/maas-api/v1/usage?{}&group_by=cost_center,key&format=csv",
        range()
    );
    let r = cp.call("GET", &path, Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(r
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment; filename=\"maas-usage-"));
    let text = r.text();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "cost_center,key,requests,prompt_tokens,completion_tokens,total_tokens,cost,currency,unpriced_tokens"
    );
    assert!(lines.contains(&",,3,400,100,500,,,500"), "{text}");
    assert!(
        lines.contains(
            &format!("\"Research, \"\"AI\"\"\",{alice},3,3000000,0,3000000,1.500000,USD,0")
                .as_str()
        ),
        "{text}"
    );
    // Asked for by Accept instead of format: the same body.
    let url = format!("http://{}{}", cp.addr, path.replace("&format=csv", ""));
    let auth = format!("Bearer {ADMIN}");
    let by_accept = request(
        "GET",
        &url,
        &[("authorization", &auth), ("accept", "text/csv")],
        None,
    );
    assert_eq!(by_accept.text(), text);
}

#[test]
fn limits_show_use_in_the_current_window_against_the_limit() {
    let cp = setup();
    let r = cp.subscription(json!({
        "name": "team-a", "models": [MODEL], "groups": ["team-a"],
        "limits": {"requests": ["1000/31d"], "tokens": ["5000/31d", "100000/30d"]}
    }));
    assert_eq!(r.status, 200, "{}", r.text());
    cp.add_usage(&[UsageRow::new("team-a", MODEL, 3, 4_000, 2_000)]);
    let alice = token("alice", &["team-a"]);
    let body = get(&cp, "/maas-api/v1/usage/limits", &alice);
    let rows: Vec<(&str, &str, u64, u64)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["quantity"].as_str().unwrap(),
                l["limit"].as_str().unwrap(),
                l["used"].as_u64().unwrap(),
                l["remaining"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("requests", "1000/31day", 3, 997),
            ("tokens", "5000/31day", 6_000, 0),
            ("tokens", "100000/30day", 6_000, 94_000),
        ]
    );
    let w = &body["data"][0];
    let (start, end) = (
        w["window_start"].as_i64().unwrap(),
        w["window_end"].as_i64().unwrap(),
    );
    assert_eq!((start % (31 * 86_400), end - start), (0, 31 * 86_400));
    assert!(start <= body["at"].as_i64().unwrap() && body["at"].as_i64().unwrap() < end);
    // team-b is unlimited, and not alice's to see anyway.
    assert!(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["subscription"] == "team-a"));
}

#[test]
fn bad_parameters_are_refused_naming_the_parameter() {
    let cp = setup();
    for (query, param) in [
        ("from=yesterday", "from"),
        ("from=10&to=5", "from"),
        // Over 400 days in one report.
        ("from=0&to=34560001", "from"),
        ("to=1.5", "to"),
        ("group_by=team", "group_by"),
        ("group_by=day,day", "group_by"),
        ("format=xml", "format"),
        ("subscriptions=team-a", "subscriptions"),
        ("model=a&model=b", "model"),
    ] {
        let r = cp.call(
            "GET",
            &format!("/maas-api/v1/usage?{query}"),
            Some(ADMIN),
            None,
        );
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        let error = &r.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{query}");
        assert_eq!(error["code"], "invalid_value", "{query}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{param}: ")),
            "{query}: {error}"
        );
    }
}
