//! The showback page in a real browser: headless Chromium (Debian's
//! `chromium`) loads `/maas-api/ui` from the control plane, the page fetches
//! `/v1/usage` with the token from the URL, and renders the table and the
//! chart. The screenshot goes to the artifacts folder (`MAAS_ARTIFACTS_DIR`,
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

#[test]
fn the_showback_page_renders_usage_per_subscription_and_model() {
    let browser = chromium();
    let cp = setup();
    let row = UsageRow::new;
    cp.add_usage(&[
        row("team-a", "smollm2-135m-instruct", 12, 12_345, 678),
        row("team-b", "other-model", 3, 400, 100),
    ]);

    let profile = std::env::temp_dir().join(format!("maas-chromium-{}", std::process::id()));
    let url = format!("http://{}/maas-api/ui#token={ADMIN}", cp.addr);
    let dom = headless(&browser, &profile, &["--dump-dom"], &url);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains(r#"data-loaded="true""#),
        "the page did not load its data:\n{html}\n{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    for needle in [
        r#"data-subscription="team-a" data-model="smollm2-135m-instruct""#,
        r#"data-subscription="team-b" data-model="other-model""#,
        "<td>13,023</td>",
        "<td>500</td>",
    ] {
        assert!(html.contains(needle), "{needle:?} not in:\n{html}");
    }
    assert_eq!(
        html.matches("<rect").count(),
        4,
        "two bars of two parts each:\n{html}"
    );
    assert!(!html.contains(ADMIN), "the token must not stay in the page");

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
