//! Authentication through a real Envoy: who gets in, and what the model
//! server learns about them.

use crate::support::*;
use maas_testkit::eventually;
use std::time::Duration;

#[test]
fn missing_unknown_expired_and_revoked_keys_get_401() {
    let s = Stack::start(base_config());
    let body = chat_body("m1", 8);

    let missing = s.gateway.post_json("/v1/chat/completions", &[], &body);
    assert_error(&missing, 401, "missing_api_key");
    assert!(missing.header("www-authenticate").is_some());

    // One body for all three, so a caller cannot tell which it hit.
    let mut bodies = Vec::new();
    for key in ["sk-never-issued", EXPIRED_KEY, REVOKED_KEY] {
        let r = s.chat(key, &body, &[]);
        assert_error(&r, 401, "invalid_api_key");
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    let wrong_scheme = s.gateway.post_json(
        "/v1/chat/completions",
        &[("authorization", &format!("Basic {FREE_KEY}"))],
        &body,
    );
    assert_error(&wrong_scheme, 401, "missing_api_key");

    assert!(
        s.upstream.requests().is_empty(),
        "nothing reached the model"
    );
    for (reason, n) in [
        ("missing", 2.0),
        ("unknown", 1.0),
        ("expired", 1.0),
        ("revoked", 1.0),
    ] {
        eventually(Duration::from_secs(5), || {
            let v = s.metric("maas_auth_failures_total", &[("reason", reason)]);
            (v == n).then_some(()).ok_or(format!("{reason}: {v}"))
        });
    }
}

#[test]
fn identity_is_set_by_the_filter_and_credentials_never_reach_the_model() {
    let s = Stack::start(base_config());
    let r = s.chat(
        FREE_KEY,
        &chat_body("m1", 8),
        &[
            ("x-maas-subscription", "gold"),
            ("x-maas-key-id", "gold-1"),
            ("x-maas-user", "root"),
            ("x-maas-model", "m2"),
            ("x-api-key", GOLD_KEY),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.header("x-api-key"), None);
    assert_eq!(req.header("x-maas-subscription"), Some("free"));
    assert_eq!(req.header("x-maas-key-id"), Some("free-1"));
    assert_eq!(req.header("x-maas-user"), Some("alice@example.com"));
    assert_eq!(req.header("x-maas-model"), Some("m1"));
    // Each forged header was dropped, not merely overwritten alongside.
    for name in [
        "x-maas-subscription",
        "x-maas-key-id",
        "x-maas-user",
        "x-maas-model",
    ] {
        assert_eq!(
            req.headers.iter().filter(|(k, _)| k == name).count(),
            1,
            "{name}"
        );
    }
}

#[test]
fn x_api_key_header_is_accepted() {
    let s = Stack::start(base_config());
    let r = s.gateway.post_json(
        "/v1/chat/completions",
        &[("x-api-key", GOLD_KEY)],
        &chat_body("m2", 8),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.upstream.requests()[0].header("x-maas-key-id"),
        Some("gold-1")
    );
}

/// Header values are bytes, not always UTF-8; a client sending some must get
/// a plain 401, and the filter must keep serving everyone else.
#[test]
fn non_utf8_credentials_are_refused_without_harm() {
    use std::io::{Read, Write};
    let s = Stack::start_with_workers(base_config(), 1);
    let mut conn = std::net::TcpStream::connect(s.gateway.addr()).unwrap();
    conn.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-api-key: sk-\xff\xfe\xc3\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert!(reply.contains("invalid_api_key"), "{reply}");
    let ok = s.gateway.request(
        "GET",
        "/v1/models",
        &[("authorization", &format!("Bearer {FREE_KEY}"))],
        None,
    );
    assert_eq!(ok.status, 200);
}

/// The same identity in Envoy's filter state, for filters after ours (a wasm
/// filter can write filter state, not dynamic metadata): read back here
/// through the access log, as any later filter or logger would.
#[test]
fn identity_is_published_in_filter_state_for_later_filters() {
    let audit = "%FILTER_STATE(wasm.maas_audit:PLAIN)%";
    let template = maas_testkit::gateway_template();
    assert!(template.contains(audit));
    let template = template.replace(
        audit,
        "%FILTER_STATE(wasm.maas_subscription:PLAIN)% %FILTER_STATE(wasm.maas_key_id:PLAIN)% %FILTER_STATE(wasm.maas_user:PLAIN)%",
    );
    let upstream = maas_testkit::MockUpstream::start();
    let gateway = maas_testkit::Gateway::builder()
        .filter_config(base_config())
        .model("m1", upstream.addr())
        .template(template)
        .start();
    let r = gateway.post_json(
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {FREE_KEY}"))],
        &chat_body("m1", 8),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(Duration::from_secs(5), || {
        let log = gateway.access_log_text();
        log.lines()
            .any(|l| l.trim() == "free free-1 alice@example.com")
            .then_some(())
            .ok_or(format!("not in the access log yet: {log:?}"))
    });
}
