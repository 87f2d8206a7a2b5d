//! The showback page in a real browser: headless Chromium (Debian's
//! `chromium`) loads `/maas-api/ui` from the control plane, the page fetches
//! `/v1/usage` and `/v1/usage/limits` with the token from the URL, and
//! renders the daily series, the table with cost, a subscription's keys and
//! owners, the limits, and the CSV link. The screenshot goes to the artifacts folder (`MAAS_ARTIFACTS_DIR`,
//! default `target/artifacts`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use maas_control_plane::store::UsageRow;
use support::*;

/// `MAAS_CHROMIUM` (`make test` sets it from scripts/chromium.sh), else
/// Debian's path; the test fails, saying how to get one, when neither is
/// there: it never passes without a browser.
fn chromium() -> PathBuf {
    let path = std::env::var_os("MAAS_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.is_file(),
        "no Chromium at {path:?}: this test needs a browser. `make test` installs Debian's \
         (scripts/chromium.sh); by hand: export MAAS_CHROMIUM=$(./scripts/chromium.sh)"
    );
    path
}

fn headless(
    browser: &PathBuf,
    profile: &std::path::Path,
    extra: &[&str],
    url: &str,
) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1000,700",
            // Lets the page's fetch and rendering finish before the dump.
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap()
}

/// `%XX` escapes back to bytes (what `encodeURIComponent` wrote).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The value of attribute `name` on the first element `marker` is in.
fn attribute<'a>(html: &'a str, marker: &str, name: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in:\n{html}"));
    let tag = &html[html[..at].rfind('<').unwrap()..];
    let tag = &tag[..tag.find('>').unwrap()];
    let start = tag
        .find(&format!(" {name}=\""))
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + name.len()
        + 3;
    &tag[start..start + tag[start..].find('"').unwrap()]
}

#[test]
fn the_showback_page_renders_cost_days_drill_down_limits_and_csv() {
    let browser = chromium();
    let cp = setup();
    let limited = cp.subscription(serde_json::json!({
        "name": "team-a", "models": ["smollm2-135m-instruct"], "groups": ["team-a"], "cost_center": "CC-1",
        "limits": {"tokens": ["100000000/31d"]}
    }));
    assert_eq!(limited.status, 200, "{}", limited.text());
    let price = cp.call(
        "PUT",
        "/maas-api/v1/prices/smollm2-135m-instruct",
        Some(ADMIN),
        Some(&serde_json::json!({"currency": "USD", "prompt_per_million": "1", "completion_per_million": "2"})),
    );
    assert_eq!(price.status, 200, "{}", price.text());
    let alice = cp.mint(
        ADMIN,
        serde_json::json!({"name": "laptop", "subscription": "team-a", "owner": "alice"}),
    );
    assert_eq!(alice.status, 201, "{}", alice.text());
    let alice_key = alice.json()["id"].as_str().unwrap().to_string();
    let row = UsageRow::new;
    cp.add_usage(&[
        row("team-a", "smollm2-135m-instruct", 12, 12_345, 678).through_key(&alice_key),
        row("team-b", "other-model", 3, 400, 100),
    ]);
    // The day before: a second day in the series.
    let yesterday = (now() as i64 / 60) * 60 - 86_400;
    cp.runtime
        .block_on(cp.store.add_usage(
            yesterday,
            &[row("team-a", "smollm2-135m-instruct", 1, 1_000, 0).through_key(&alice_key)],
        ))
        .unwrap();

    let profile = std::env::temp_dir().join(format!("maas-chromium-{}", std::process::id()));
    // A click on a row sets `#subscription=`: the drill-down this URL opens.
    let url = format!(
        "http://{}/maas-api/ui#token={ADMIN}&subscription=team-a",
        cp.addr
    );
    let dom = headless(&browser, &profile, &["--dump-dom"], &url);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains(r#"data-loaded="true""#),
        "the page did not load its data:\n{html}\n{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    for needle in [
        // The table over the page's range (7 days), with cost at the
        // model's price: 13,345 × 1 + 678 × 2 micro-dollars.
        r#"data-subscription="team-a" data-model="smollm2-135m-instruct""#,
        r#"data-subscription="team-b" data-model="other-model""#,
        "<td>14,023</td>",
        "<td>0.014701 USD</td>",
        "<td>500</td>",
        "<td>—</td>",
        // The drill-down: team-a's key and its owner.
        r#"id="drill" data-subscription="team-a""#,
        &format!(r#"data-key="{alice_key}""#),
        r#"data-owner="alice""#,
        // The limits view.
        r#"data-subscription="team-a" data-quantity="tokens""#,
        "100000000/31day tokens",
    ] {
        assert!(html.contains(needle), "{needle:?} not in:\n{html}");
    }
    assert!(
        !html.contains(r#"id="drill" hidden"#),
        "the drill-down is shown"
    );
    // The daily series: team-a on two days, team-b on one.
    assert_eq!(
        html.matches("<rect").count(),
        3,
        "three stacked parts:\n{html}"
    );
    assert_eq!(html.matches(r#"data-day=""#).count(), 3);
    assert!(!html.contains(ADMIN), "the token must not stay in the page");

    // The CSV link holds exactly what the API serves for the page's range.
    let href = attribute(&html, r#"id="csv""#, "href");
    let csv = percent_decode(href.strip_prefix("data:text/csv;charset=utf-8,").unwrap());
    let (from, to) = (
        attribute(&html, "data-from=", "data-from"),
        attribute(&html, "data-to=", "data-to"),
    );
    let served = cp.call(
        "GET",
        &format!("/maas-api/v1/usage?from={from}&to={to}&group_by=day,subscription,cost_center,model,key,owner&format=csv"),
        Some(ADMIN),
        None,
    );
    assert_eq!(served.status, 200);
    assert_eq!(csv, served.text());
    assert!(
        csv.contains(&format!(
            ",team-a,CC-1,smollm2-135m-instruct,{alice_key},alice,12,12345,678,13023,0.013701,USD,"
        )),
        "{csv}"
    );

    let artifacts = std::env::var_os("MAAS_ARTIFACTS_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/artifacts")),
        PathBuf::from,
    );
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("showback-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(
        &browser,
        &profile,
        &[&format!("--screenshot={}", shot.display())],
        &url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot too small: {} bytes",
        png.len()
    );
    let _ = std::fs::remove_dir_all(&profile);
}
