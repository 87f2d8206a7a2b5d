//! The `maas-control-plane` binary as an administrator uses it: `serve` on
//! a loopback port with SQLite in a temp dir, then the CLI verbs against it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_maas-control-plane");

struct Served {
    child: Child,
    url: String,
    dir: PathBuf,
    first_lines: Vec<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve(name: &str) -> Served {
    serve_with(name, &[])
}

/// [`serve`] with more settings, as (environment variable, value).
fn serve_with(name: &str, env: &[(&str, &str)]) -> Served {
    let dir = std::env::temp_dir().join(format!("maas-cp-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("MAAS_DATABASE_URL")
        .env_remove("MAAS_MAX_KEY_LIFETIME")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut first_lines = Vec::new();
    let url = loop {
        let line = lines.next().expect("serve printed nothing").unwrap();
        first_lines.push(line.clone());
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_string();
        }
    };
    Served {
        child,
        url,
        dir,
        first_lines,
    }
}

fn run(served: &Served, args: &[&str]) -> (bool, String, String) {
    let token = std::fs::read_to_string(served.dir.join("admin-token")).unwrap();
    let out = Command::new(BIN)
        .args(args)
        .args(["--url", &served.url, "--token", token.trim()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_administrator_manages_subscriptions_and_keys_from_the_cli() {
    let s = serve("admin");
    // The admin token is printed once, at first start.
    assert!(
        s.first_lines.iter().any(|l| l.starts_with("admin token")),
        "{:?}",
        s.first_lines
    );

    let spec = write(
        &s.dir,
        "team.json",
        r#"{"name": "team-a", "models": ["smollm2-135m-instruct"], "limits": {"tokens": ["20000/min"]}, "cost_center": "CC-7"}"#,
    );
    let (ok, out, err) = run(&s, &["subscription", "apply", "-f", spec.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("team-a") && out.contains("CC-7"), "{out}");

    let (ok, out, err) = run(
        &s,
        &[
            "key",
            "create",
            "--subscription",
            "team-a",
            "--name",
            "ci",
            "--expires-in",
            "7d",
            "--owner",
            "bob",
            "--label",
            "env=ci",
        ],
    );
    assert!(ok, "{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("key (shown once): "))
        .unwrap()
        .to_string();
    assert!(key.starts_with("sk-maas-"), "{out}");

    let (ok, out, _) = run(&s, &["key", "list", "--json"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let row = &listed["data"][0];
    assert_eq!(row["owner"], "bob");
    assert_eq!(row["labels"]["env"], "ci");
    assert!(!out.contains(&key[20..]), "listings never carry the secret");

    let id = row["id"].as_str().unwrap().to_string();
    let (ok, out, _) = run(&s, &["key", "revoke", &id]);
    assert!(ok);
    assert!(out.contains("revoked"), "{out}");
    let (_, table, _) = run(&s, &["key", "list"]);
    assert!(table.starts_with("ID"), "a table for people: {table}");
    // No gateway sampled yet: usage is an empty table, not an error.
    let (ok, out, err) = run(&s, &["usage", "--since", "7d"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "SUBSCRIPTION  MODEL  REQUESTS  PROMPT  COMPLETION  TOTAL  COST"
    );
    let (ok, _, err) = run(&s, &["usage", "--since", "soon"]);
    assert!(!ok && err.contains("--since"), "{err}");
    let (ok, out, err) = run(
        &s,
        &["usage", "--since", "7d", "--group-by", "day,key", "--csv"],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "day,key,requests,prompt_tokens,completion_tokens,total_tokens,cost,currency,unpriced_tokens\r\n"
    );
    let (ok, out, err) = run(&s, &["usage", "--limits"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("SUBSCRIPTION  QUANTITY  LIMIT"), "{out}");

    // Prices: set (validated by the API, naming the field), list, remove.
    let set = |currency: &str| {
        run(
            &s,
            &[
                "price",
                "set",
                "m1",
                "--currency",
                currency,
                "--prompt",
                "0.15",
                "--completion",
                "0.6",
            ],
        )
    };
    let (ok, _, err) = set("usd");
    assert!(!ok && err.contains("currency:"), "{err}");
    let (ok, out, err) = set("USD");
    assert!(ok, "{err}");
    assert!(out.contains("m1") && out.contains("0.15"), "{out}");
    let (_, out, _) = run(&s, &["price", "list"]);
    assert!(
        out.starts_with("MODEL  CURRENCY") && out.contains("0.6"),
        "{out}"
    );
    let (ok, _, err) = run(&s, &["price", "delete", "m1"]);
    assert!(ok, "{err}");
}

#[test]
fn cli_errors_are_the_apis_messages() {
    let s = serve("errors");
    let (ok, _, err) = run(
        &s,
        &["key", "create", "--subscription", "nope", "--name", "x"],
    );
    assert!(!ok);
    assert!(
        err.contains("400") && err.contains("unknown subscription"),
        "{err}"
    );
    let bad = write(
        &s.dir,
        "bad.json",
        r#"{"name": "neg", "models": ["m"], "limits": {"tokens": ["-1/min"]}}"#,
    );
    let (ok, _, err) = run(&s, &["subscription", "apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("limits.tokens[0]"), "{err}");
    let out = Command::new(BIN)
        .args(["key", "list", "--url", &s.url, "--token", "wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

const SECRET: &str = "hunter2";

/// `serve --database-url URL` in a fresh data directory.
fn serve_with_database(name: &str, url: &str) -> (Command, PathBuf) {
    let dir = std::env::temp_dir().join(format!("maas-cp-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .args(["--database-url", url])
        .env("RUST_LOG", "info");
    (command, dir)
}

/// One gateway listed twice would have its usage counted twice: refused at
/// start, before the database is touched, naming both spellings.
#[test]
fn a_gateway_listed_twice_is_refused_at_start() {
    let (mut command, dir) = serve_with_database("twice", "sqlite:///nonexistent/never-opened.db");
    let out = command
        .args(["--envoy-admin", "http://127.0.0.1:15000"])
        .args(["--envoy-admin", "http://127.0.0.1:15000/"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"http://127.0.0.1:15000/\" is \"http://127.0.0.1:15000\" again"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot open the database"), "{stderr}");
}

#[test]
fn a_database_that_cannot_be_opened_is_named_without_its_password() {
    // Both refused at once, before any connection: sqlx knows no
    // `password` for SQLite, and no port 99999.
    for url in [
        format!("sqlite:///nonexistent/maas.db?mode=rwc&password={SECRET}"),
        format!("postgres://maas:{SECRET}@127.0.0.1:99999/maas?password={SECRET}&sslmode=disable"),
    ] {
        let (mut command, dir) = serve_with_database("bad-db", &url);
        let out = command.output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{url}: {printed}");
        assert!(printed.contains("cannot open the database"), "{printed}");
        assert!(printed.contains("***"), "the URL, redacted: {printed}");
        assert!(!printed.contains(SECRET), "{printed}");
    }
}

/// Needs a PostgreSQL server (`MAAS_TEST_POSTGRES_URL`, as the store suite):
/// its trust authentication accepts any password, so the control plane
/// starts and logs the URL it serves from.
#[test]
fn the_startup_log_names_the_database_without_its_password() {
    let server = maas_testkit::postgres::postgres_server();
    let (scheme, host) = server.split_once("://").unwrap();
    let (user, host) = host.split_once('@').unwrap();
    let db = format!("maas_cli_log_{}", std::process::id());
    let plain = format!("{scheme}://{user}@{host}/{db}");
    let url = format!("{scheme}://{user}:{SECRET}@{host}/{db}?password={SECRET}");
    sqlx::any::install_default_drivers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(<sqlx::Any as sqlx::migrate::MigrateDatabase>::create_database(&plain))
        .unwrap();

    let (mut command, dir) = serve_with_database("log", &url);
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("control plane serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    rt.block_on(<sqlx::Any as sqlx::migrate::MigrateDatabase>::force_drop_database(&plain))
        .unwrap();

    let log = seen.join("\n");
    let serving = seen.last().unwrap();
    assert!(serving.contains("control plane serving"), "{log}");
    assert!(serving.contains(&db) && serving.contains("***"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
}

/// A maximum key lifetime out of bounds is refused at start, naming the
/// setting, from the flag and from the environment alike.
#[test]
fn a_maximum_key_lifetime_out_of_bounds_is_refused_at_start() {
    for (flag, env) in [(Some("400d"), None), (None, Some("0"))] {
        let (mut command, dir) =
            serve_with_database("lifetime", "sqlite:///nonexistent/never-opened.db");
        command.env_remove("MAAS_MAX_KEY_LIFETIME");
        if let Some(v) = flag {
            command.args(["--max-key-lifetime", v]);
        }
        if let Some(v) = env {
            command.env("MAAS_MAX_KEY_LIFETIME", v);
        }
        let out = command.output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("--max-key-lifetime") && stderr.contains("between 1 s and 366 d"),
            "{stderr}"
        );
        assert!(!stderr.contains("cannot open the database"), "{stderr}");
    }
}

/// `MAAS_MAX_KEY_LIFETIME` (or `--max-key-lifetime`) gives a key minted
/// without `--expires-in` that lifetime.
#[test]
fn the_maximum_key_lifetime_applies_to_keys_minted_from_the_cli() {
    let s = serve_with("lifetime-ok", &[("MAAS_MAX_KEY_LIFETIME", "1d")]);
    let spec = write(
        &s.dir,
        "team.json",
        r#"{"name": "team-a", "models": ["smollm2-135m-instruct"], "limits": "unlimited"}"#,
    );
    let (ok, _, err) = run(&s, &["subscription", "apply", "-f", spec.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(
        &s,
        &[
            "key",
            "create",
            "--subscription",
            "team-a",
            "--name",
            "k",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let key: Value = serde_json::from_str(&out).unwrap();
    let lifetime = key["expires_at"].as_i64().unwrap() - key["created_at"].as_i64().unwrap();
    assert_eq!(lifetime, 86_400);
    let (ok, _, err) = run(
        &s,
        &[
            "key",
            "create",
            "--subscription",
            "team-a",
            "--name",
            "long",
            "--expires-in",
            "2d",
        ],
    );
    assert!(!ok);
    assert!(err.contains("400") && err.contains("expires_in"), "{err}");
}

/// An OIDC setting without the issuer would leave OIDC off without a word
/// (an administrator group that grants nothing): refused at start, naming
/// what is missing; and the password of `MAAS_DATABASE_URL` never shows in
/// `--help`.
#[test]
fn oidc_settings_without_the_issuer_are_refused_and_help_hides_the_database_password() {
    for args in [
        ["--oidc-jwks", "/tmp/jwks.json"],
        ["--oidc-audience", "maas"],
        ["--oidc-admin-group", "admins"],
    ] {
        let (mut command, dir) =
            serve_with_database("oidc", "sqlite:///nonexistent/never-opened.db");
        let out = command.args(args).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("--oidc-issuer"), "{args:?}: {stderr}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .env(
            "MAAS_DATABASE_URL",
            format!("postgres://u:{SECRET}@db/maas"),
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("MAAS_DATABASE_URL"), "{help}");
    assert!(!help.contains(SECRET), "{help}");
}
