//! Global limits through a fake limiter: the request waits for the
//! limiter's answers, is refused on any refusal (giving back what it held),
//! and settles a token reservation with one detached commit.

use super::*;
use maas_ratelimit_proto::{
    CommitRequest, DescriptorStatus, Message, RateLimit, RateLimitRequest, RateLimitResponse,
    ReserveRequest, ReserveResponse,
};

/// `free` keeps its local request limit and gains global ones; `metered`'s
/// token limit is global and fails open.
fn harness(reservations: bool) -> Harness {
    let mut v = config_json();
    v["limiter"] = serde_json::json!({
        "cluster": "limitador", "domain": "maas-test", "timeout_ms": 50,
        "reservations": reservations
    });
    v["subscriptions"]["free"]["limits"] = serde_json::json!({
        "requests": ["3/min", {"rate": "100/hour", "mode": "global"}],
        "tokens": [{"rate": "5000/hour", "mode": "global"}]
    });
    v["subscriptions"]["metered"]["limits"] = serde_json::json!({
        "tokens": [{"rate": "1000/min", "mode": "global", "failure_mode": "allow"}]
    });
    Harness::with_config(Config::from_json(v.to_string().as_bytes()).unwrap())
}

const BODY: &str = r#"{"model":"m1","max_tokens":10,"messages":[]}"#;
const TIMEOUT: &str = "x-envoy-upstream-rq-timeout-ms";
const USAGE: &str = r#"{"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;

impl Harness {
    fn calls(&self) -> Vec<SentCall> {
        self.host.limiter_calls.borrow().clone()
    }

    fn answer(&self, s: &mut Stream, call: &SentCall, status: u32, body: Vec<u8>) {
        s.on_limiter_response(&self.host, call.token, Some(status), &body);
    }
}

fn entries(d: &maas_ratelimit_proto::RateLimitDescriptor) -> Vec<(String, String)> {
    d.entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

fn ok_reserve(id: &str) -> Vec<u8> {
    ReserveResponse {
        code: Code::Ok as i32,
        reservation_id: id.into(),
    }
    .encode_to_vec()
}

fn rls(code: Code) -> Vec<u8> {
    RateLimitResponse::with_code(code).encode_to_vec()
}

use maas_ratelimit_proto::Code;

#[test]
fn a_request_waits_for_the_limiter_then_commits_its_real_usage() {
    let h = harness(true);
    let mut s = h.chat(BODY);
    assert!(h.replied().is_none());
    assert_eq!(h.host.resumed.get(), 0, "held until the limiter answers");
    // Tokens first: a reservation can be given back if the request limit
    // refuses; a request hit cannot.
    let calls = h.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let tokens = &calls[0];
    assert_eq!(tokens.method, Method::Reserve);
    assert!(tokens.cluster == "limitador" && tokens.timeout_ms == 50 && !tokens.detached);
    let reserve = ReserveRequest::decode(&tokens.message[..]).unwrap();
    // The worst case: the body's bytes (1 byte per token) plus max_tokens.
    assert_eq!(reserve.amount, BODY.len() as u64 + 10);
    assert_eq!(reserve.domain, "maas-test");
    assert_eq!(reserve.ttl.unwrap().seconds, 600);
    assert_eq!(
        entries(&reserve.descriptors[0]),
        [
            ("subscription".into(), "free".into()),
            ("key".into(), "alice-1".into()),
            ("quantity".into(), "tokens".into()),
            ("model".into(), "m1".into()),
        ]
    );
    // The local request limit was taken as usual.
    assert_eq!(h.used(REQ), 1);

    h.host.now_ms.set(h.host.now_ms.get() + 30);
    h.answer(&mut s, tokens, 0, ok_reserve("r-1"));
    assert_eq!(h.host.resumed.get(), 0, "one answer of two");
    let calls = h.calls();
    let requests = &calls[1];
    assert_eq!(requests.method, Method::ShouldRateLimit);
    let rl = RateLimitRequest::decode(&requests.message[..]).unwrap();
    assert_eq!((rl.domain.as_str(), rl.hits_addend), ("maas-test", 1));
    assert_eq!(entries(&rl.descriptors[0])[2].1, "requests");
    // The request goes on 50 ms after the Reserve was sent: it may run for
    // what is left of its hold less its commit's way (a settlement tick,
    // 50 ms, and one limiter call, 50 ms), no longer (Envoy's router takes
    // the header over the route's timeout), so its usage is counted before
    // the hold ends.
    assert_eq!(h.host.request_header(TIMEOUT), None);
    h.host.now_ms.set(h.host.now_ms.get() + 20);
    h.answer(&mut s, requests, 0, rls(Code::Ok));
    assert_eq!(h.host.resumed.get(), 1);
    h.assert_admitted("m1");
    assert_eq!(h.host.request_header(TIMEOUT).as_deref(), Some("599850"));

    h.respond_json(&mut s, 200, USAGE);
    let calls = h.calls();
    assert_eq!(calls.len(), 3);
    let commit = &calls[2];
    assert_eq!(commit.method, Method::Commit);
    assert!(commit.detached, "a settlement must outlive the stream");
    let commit = CommitRequest::decode(&commit.message[..]).unwrap();
    assert_eq!(
        (commit.reservation_id.as_str(), commit.actual_amount),
        ("r-1", 12)
    );
    assert_eq!(h.metric("maas.limiter_calls_total.result=.=ok;.;"), 2);
    // Settling twice (on_log after the response's end) sends nothing more.
    s.on_log(&h.host);
    assert_eq!(h.calls().len(), 3);
}

#[test]
fn a_global_request_limit_refusing_gives_back_the_token_reservation_and_the_local_hold() {
    let h = harness(true);
    let mut s = h.chat(BODY);
    h.answer(&mut s, &h.calls()[0], 0, ok_reserve("r-9"));
    let over = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![DescriptorStatus {
            code: Code::OverLimit as i32,
            current_limit: Some(RateLimit {
                requests_per_unit: 100,
                unit: 0,
                name: String::new(),
            }),
            limit_remaining: 0,
            duration_until_reset: Some(maas_ratelimit_proto::Duration {
                seconds: 42,
                nanos: 0,
            }),
        }],
        ..Default::default()
    };
    h.answer(&mut s, &h.calls()[1], 0, over.encode_to_vec());
    let (status, headers, body) = h.replied().unwrap();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "requests", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("global"), "{body}");
    assert!(
        headers.contains(&("retry-after".into(), "42".into())),
        "{headers:?}"
    );
    assert_eq!(h.used(REQ), 0, "the local request hold is released");
    assert_eq!(h.host.resumed.get(), 0);
    let calls = h.calls();
    let release = CommitRequest::decode(&calls[2].message[..]).unwrap();
    assert!(calls[2].detached);
    assert_eq!(
        (release.reservation_id.as_str(), release.actual_amount),
        ("r-9", 0)
    );
    s.on_log(&h.host);
    assert_eq!(
        h.calls().len(),
        3,
        "nothing is charged for a refused request"
    );
    assert_eq!(h.audit()["outcome"], "rate_limited");
}

#[test]
fn a_refused_token_reservation_never_spends_a_request_hit() {
    let h = harness(true);
    let mut s = h.chat(BODY);
    let refused = ReserveResponse {
        code: Code::OverLimit as i32,
        reservation_id: String::new(),
    };
    h.answer(&mut s, &h.calls()[0], 0, refused.encode_to_vec());
    let (status, headers, body) = h.replied().unwrap();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "tokens");
    assert!(
        headers.contains(&("retry-after".into(), "3600".into())),
        "{headers:?}"
    );
    assert_eq!(h.used(REQ), 0);
    assert_eq!(h.calls().len(), 1, "ShouldRateLimit was never asked");
}

#[test]
fn a_request_beyond_a_global_token_limit_is_too_large_not_retryable() {
    let mut v = config_json();
    v["limiter"] = serde_json::json!({"cluster": "limitador"});
    v["subscriptions"]["metered"]["limits"] =
        serde_json::json!({"tokens": [{"rate": "50/min", "mode": "global"}]});
    let h = Harness::with_config(Config::from_json(v.to_string().as_bytes()).unwrap());
    let mut s = h.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-metered")],
        BODY,
    );
    let refused = ReserveResponse {
        code: Code::OverLimit as i32,
        reservation_id: String::new(),
    };
    h.answer(&mut s, &h.calls()[0], 0, refused.encode_to_vec());
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "request_too_large", "{body}");
    s.on_log(&h.host);
    assert_eq!(
        h.audit()["reserved_tokens"],
        0,
        "refused: nothing stays reserved"
    );
}

#[test]
fn an_unreachable_limiter_denies_by_default_and_allows_where_configured() {
    let h = harness(true);
    h.host.limiter_down.set(true);
    h.chat(BODY);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("limiter_unavailable"))
    );
    assert_eq!(h.used(REQ), 0);
    assert_eq!(h.metric("maas.limiter_calls_total.result=.=failed;.;"), 1);
    assert_eq!(h.host.throttled_warnings.borrow().len(), 1);

    // A timeout (Envoy answers with a gRPC status) on a fail-open limit
    // lets the request through uncounted there.
    h.host.limiter_down.set(false);
    let mut s = h.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-metered")],
        BODY,
    );
    let calls = h.calls();
    let reserve = calls.last().unwrap();
    assert_eq!(reserve.method, Method::Reserve);
    h.answer(&mut s, reserve, 4, Vec::new());
    assert!(h.replied().is_none(), "{:?}", h.replied());
    assert_eq!(h.host.resumed.get(), 1);
    h.respond_json(&mut s, 200, USAGE);
    assert_eq!(
        h.calls().len(),
        calls.len(),
        "no reservation, nothing to commit"
    );

    // The same failure on a fail-closed limit refuses.
    let mut s = h.chat(BODY);
    let calls = h.calls();
    h.answer(&mut s, calls.last().unwrap(), 14, Vec::new());
    assert_eq!(h.replied().unwrap().0, 503);
}

#[test]
fn without_reservations_it_checks_the_worst_case_and_reports_the_usage() {
    let h = harness(false);
    let mut s = h.chat(BODY);
    let check = h.calls()[0].clone();
    assert_eq!(check.method, Method::CheckRateLimit);
    let request = RateLimitRequest::decode(&check.message[..]).unwrap();
    assert_eq!(request.hits_addend as usize, BODY.len() + 10);
    h.answer(&mut s, &check, 0, rls(Code::Ok));
    h.answer(&mut s, &h.calls()[1], 0, rls(Code::Ok));
    assert_eq!(h.host.resumed.get(), 1);
    // Nothing is held, so no deadline: the route's timeout stands.
    assert_eq!(h.host.request_header(TIMEOUT), None);
    h.respond_json(&mut s, 200, USAGE);
    let report = h.calls()[2].clone();
    assert_eq!(report.method, Method::Report);
    assert!(report.detached);
    assert_eq!(
        RateLimitRequest::decode(&report.message[..])
            .unwrap()
            .hits_addend,
        12
    );
}

#[test]
fn a_request_that_ends_while_the_limiter_is_asked_is_not_charged() {
    let h = harness(true);
    let mut s = h.chat(BODY);
    let reserve = h.calls()[0].clone();
    // The client leaves (or Envoy answers by itself) before the limiter.
    s.on_log(&h.host);
    assert_eq!(h.used(REQ), 0, "the local hold is given back");
    assert_eq!(h.audit()["total_tokens"], 0);
    assert_eq!(h.calls().len(), 1, "nothing to commit yet");
    // A grant that arrives afterwards is released, and nothing resumes.
    h.answer(&mut s, &reserve, 0, ok_reserve("r-late"));
    let calls = h.calls();
    assert_eq!(calls.len(), 2);
    let release = CommitRequest::decode(&calls[1].message[..]).unwrap();
    assert_eq!(
        (release.reservation_id.as_str(), release.actual_amount),
        ("r-late", 0)
    );
    assert_eq!(h.host.resumed.get(), 0);
    assert!(h.replied().is_none());
}

#[test]
fn answers_for_other_tokens_change_nothing_and_garbled_ones_fail_closed() {
    let h = harness(true);
    let mut s = h.chat(BODY);
    s.on_limiter_response(&h.host, 9999, Some(0), &rls(Code::OverLimit));
    assert!(h.replied().is_none());
    let calls = h.calls();
    h.answer(&mut s, &calls[0], 0, vec![0xff, 0xff, 0xff]);
    assert_eq!(h.replied().unwrap().0, 503);
}

#[test]
fn global_limits_are_validated_at_load() {
    let bad = |patch: &dyn Fn(&mut serde_json::Value)| {
        let mut v = config_json();
        patch(&mut v);
        Config::from_json(v.to_string().as_bytes()).unwrap_err()
    };
    let e = bad(&|v| {
        v["subscriptions"]["free"]["limits"] =
            serde_json::json!({"tokens": [{"rate": "10/min", "mode": "global"}]});
    });
    assert!(e.reason.contains("no `limiter`"), "{e}");
    let e = bad(&|v| {
        v["subscriptions"]["free"]["limits"] =
            serde_json::json!({"tokens": [{"rate": "10/min", "failure_mode": "allow"}]});
    });
    assert_eq!(e.field, "subscriptions.free.limits.tokens[0].failure_mode");
    let e = bad(&|v| {
        v["limiter"] = serde_json::json!({"cluster": "limitador", "timeout_ms": 0});
    });
    assert_eq!(e.field, "limiter.timeout_ms");
    // A hold shorter than the admission's two limiter calls.
    let e = bad(&|v| {
        v["limiter"] = serde_json::json!({"cluster": "limitador", "timeout_ms": 60000,
                                          "reservation_ttl_ms": 60000});
    });
    assert_eq!(e.field, "limiter.reservation_ttl_ms");
    assert!(
        e.reason
            .contains("more than twice limiter.timeout_ms (120000 ms)"),
        "{e}"
    );
    let e = bad(&|v| {
        v["limiter"] = serde_json::json!({"cluster": "limitador"});
        v["keys"][0]["limits"] =
            serde_json::json!({"tokens": [{"rate": "10/min", "mode": "global"}]});
    });
    assert_eq!(e.field, "keys[0].limits");
    // Under global key_limits a key cannot have its own: the limiter
    // would count it against the subscription's per-key limit anyway.
    let e = bad(&|v| {
        v["limiter"] = serde_json::json!({"cluster": "limitador"});
        v["subscriptions"]["free"]["key_limits"] =
            serde_json::json!({"requests": [{"rate": "10/min", "mode": "global"}]});
        v["keys"][0]["limits"] = serde_json::json!({"requests": ["5/min"]});
    });
    assert_eq!(e.field, "keys[0].limits");
    assert!(e.reason.contains("global"), "{e}");
    // A local and a global limit may share a window; two local ones not.
    let mut ok = config_json();
    ok["limiter"] = serde_json::json!({"cluster": "limitador"});
    ok["subscriptions"]["free"]["limits"] =
        serde_json::json!({"tokens": ["100/min", {"rate": "1000/min", "mode": "global"}]});
    Config::from_json(ok.to_string().as_bytes()).unwrap();
    // Global limits come from the configuration, not from a sync.
    let synced = serde_json::json!({
        "name": "team", "models": ["m1"],
        "limits": {"tokens": [{"rate": "10/min", "mode": "global"}]}
    });
    let e = crate::config::synced_subscription(&synced, &["m1".to_string()]).unwrap_err();
    assert!(e.reason.contains("not synced"), "{e}");
}

#[test]
fn a_reservation_granted_without_a_limit_behind_it_is_let_through_and_flagged() {
    let h = harness(true);
    let mut s = h.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-metered")],
        BODY,
    );
    // What a limiter answers when its limits file has no limit for the
    // descriptor: OK, and no reservation to commit.
    h.answer(&mut s, &h.calls()[0], 0, ok_reserve(""));
    assert_eq!(h.host.resumed.get(), 1);
    assert_eq!(
        h.metric("maas.limiter_calls_total.result=.=unmatched;.;"),
        1
    );
    assert_eq!(h.host.throttled_warnings.borrow().len(), 1);
    h.respond_json(&mut s, 200, USAGE);
    assert_eq!(h.calls().len(), 1, "nothing to commit");
}

#[test]
fn per_owner_key_limits_reach_the_limiter_as_the_owner() {
    // The descriptor's `key` is what the limiter's `key_limits` count by.
    for (per, key) in [("key", "alice-1"), ("owner", "user:alice")] {
        let mut v = config_json();
        v["limiter"] = serde_json::json!({"cluster": "limitador"});
        v["subscriptions"]["free"]["key_limits"] =
            serde_json::json!({"tokens": [{"rate": "5000/hour", "mode": "global"}]});
        v["subscriptions"]["free"]["key_limits_per"] = serde_json::json!(per);
        let h = Harness::with_config(Config::from_json(v.to_string().as_bytes()).unwrap());
        h.chat(BODY);
        let calls = h.calls();
        let reserve = ReserveRequest::decode(&calls[0].message[..]).unwrap();
        assert_eq!(
            entries(&reserve.descriptors[0])[1],
            ("key".into(), key.into()),
            "{per}"
        );
    }
}

/// The hold's deadline never lengthens a route's own timeout (which the
/// header would replace), and a hold that lapsed before the request could
/// go on sends it nowhere: a 503 that gives the reservation back.
#[test]
fn the_hold_deadline_only_shortens_and_a_lapsed_hold_refuses() {
    let short_route = |ms: u64| {
        let mut v = config_json();
        v["limiter"] = serde_json::json!({
            "cluster": "limitador", "domain": "maas-test", "timeout_ms": 50,
            "reservation_ttl_ms": 5_000
        });
        v["subscriptions"]["free"]["limits"] =
            serde_json::json!({"tokens": [{"rate": "5000/hour", "mode": "global"}]});
        v["route_timeouts_ms"] = serde_json::json!({"m1": ms});
        Harness::with_config(Config::from_json(v.to_string().as_bytes()).unwrap())
    };
    let h = short_route(2_000);
    let mut s = h.chat(BODY);
    h.answer(&mut s, &h.calls()[0], 0, ok_reserve("r-1"));
    assert_eq!(h.host.resumed.get(), 1);
    assert_eq!(h.host.request_header(TIMEOUT).as_deref(), Some("2000"));
    // A longer route: the hold's end, less the commit's way (100 ms).
    let h = short_route(60_000);
    let mut s = h.chat(BODY);
    h.host.now_ms.set(h.host.now_ms.get() + 40);
    h.answer(&mut s, &h.calls()[0], 0, ok_reserve("r-3"));
    assert_eq!(h.host.request_header(TIMEOUT).as_deref(), Some("4860"));

    let h = short_route(60_000);
    let mut s = h.chat(BODY);
    h.host.now_ms.set(h.host.now_ms.get() + 5_000);
    h.answer(&mut s, &h.calls()[0], 0, ok_reserve("r-2"));
    assert_eq!(h.host.resumed.get(), 0);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 503, "{body}");
    let commit = CommitRequest::decode(&h.calls()[1].message[..]).unwrap();
    assert_eq!(
        (commit.reservation_id.as_str(), commit.actual_amount),
        ("r-2", 0)
    );
}
