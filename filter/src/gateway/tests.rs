//! The request state machine driven through a fake host: every callback in
//! the order Envoy makes them, with shared counters that outlive streams.

use super::*;
use crate::auth::keys::KeyDigest;
use crate::host::StreamHost;
use crate::limits::global_limits::{Call, Method};
use crate::limits::{self, MemoryStore};
use crate::metrics::Metric;
use crate::subscription::Quantity;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// A local reply: status, headers, body.
type Reply = (u32, Vec<(String, String)>, Vec<u8>);
type ParsedReply = (u32, Vec<(String, String)>, serde_json::Value);

#[derive(Default)]
struct FakeHost {
    now_ms: Cell<u64>,
    request_headers: RefCell<Vec<(String, String)>>,
    request_body: RefCell<Vec<u8>>,
    response_headers: RefCell<Vec<(String, String)>>,
    response_chunk: RefCell<Vec<u8>>,
    reply: RefCell<Option<Reply>>,
    audit: RefCell<Option<serde_json::Value>>,
    store: MemoryStore,
    metrics: RefCell<HashMap<String, u64>>,
    /// Key ids the filter asked the control plane about.
    lookups: RefCell<Vec<String>>,
    /// Whether a lookup call can be made (the cluster exists).
    lookups_fail: Cell<bool>,
    resumed: Cell<u32>,
    /// Claims of a token jwt_authn verified, as Envoy encodes them.
    claims: RefCell<HashMap<String, Vec<u8>>>,
    /// Calls to the rate limiter, in order.
    limiter_calls: RefCell<Vec<SentCall>>,
    /// Whether a limiter call can be made.
    limiter_down: Cell<bool>,
    throttled_warnings: RefCell<Vec<String>>,
    /// Filter state the filter published (`maas_<name>`).
    published: RefCell<HashMap<String, String>>,
    /// Filter state kept across upstream attempts (`request_state`).
    state: RefCell<HashMap<String, String>>,
    /// `response.code_details` (None: not known).
    code_details: RefCell<Option<String>>,
    /// `upstream.request_attempt_count` (None: not known).
    attempts: Cell<Option<u32>>,
}

/// A call the filter made to the rate limiter.
#[derive(Debug, Clone)]
struct SentCall {
    token: u32,
    cluster: String,
    method: Method,
    message: Vec<u8>,
    timeout_ms: u64,
    detached: bool,
}

impl FakeHost {
    fn header(list: &RefCell<Vec<(String, String)>>, name: &str) -> Option<String> {
        list.borrow()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn set(list: &RefCell<Vec<(String, String)>>, name: &str, value: Option<&str>) {
        let mut l = list.borrow_mut();
        l.retain(|(k, _)| k != name);
        if let Some(v) = value {
            l.push((name.to_string(), v.to_string()));
        }
    }
}

impl FakeHost {
    fn request_header(&self, name: &str) -> Option<String> {
        Self::header(&self.request_headers, name)
    }

    fn response_header(&self, name: &str) -> Option<String> {
        Self::header(&self.response_headers, name)
    }
}

impl FakeHost {
    /// Records a call to the limiter (a settlement is `detached`); `None`
    /// while the limiter is down.
    fn record_limiter_call(
        &self,
        cluster: &str,
        method: Method,
        message: &[u8],
        timeout_ms: u64,
        detached: bool,
    ) -> Option<u32> {
        if self.limiter_down.get() {
            return None;
        }
        let mut calls = self.limiter_calls.borrow_mut();
        let token = 100 + calls.len() as u32;
        calls.push(SentCall {
            token,
            cluster: cluster.to_string(),
            method,
            message: message.to_vec(),
            timeout_ms,
            detached,
        });
        Some(token)
    }
}

impl StreamHost for FakeHost {
    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.request_headers.borrow().clone()
    }
    fn set_request_header(&self, name: &str, value: Option<&str>) {
        Self::set(&self.request_headers, name, value)
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        let b = self.request_body.borrow();
        Some(b[..size.min(b.len())].to_vec())
    }
    fn replace_request_body(&self, _size: usize, body: &[u8]) {
        *self.request_body.borrow_mut() = body.to_vec();
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        self.response_headers.borrow().clone()
    }
    fn set_response_header(&self, name: &str, value: Option<&str>) {
        Self::set(&self.response_headers, name, value)
    }
    fn response_body(&self, _size: usize) -> Option<Vec<u8>> {
        Some(self.response_chunk.borrow().clone())
    }
    fn replace_response_body(&self, _size: usize, body: &[u8]) {
        *self.response_chunk.borrow_mut() = body.to_vec();
    }
    fn send_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *self.reply.borrow_mut() = Some((status, headers, body.to_vec()));
    }
    fn publish_identity(&self, name: &str, value: &str) {
        self.published
            .borrow_mut()
            .insert(format!("maas_{name}"), value.to_string());
    }
    fn set_audit_record(&self, record: &[u8]) {
        *self.audit.borrow_mut() = Some(serde_json::from_slice(record).unwrap());
    }
    fn append_response_body(&self, body: &[u8]) -> bool {
        self.response_chunk.borrow_mut().extend_from_slice(body);
        true
    }
    fn request_state(&self, name: &str) -> Option<String> {
        self.state.borrow().get(name).cloned()
    }
    fn set_request_state(&self, name: &str, value: &str) {
        self.state
            .borrow_mut()
            .insert(name.to_string(), value.to_string());
    }
    fn counters(&self) -> &dyn CounterStore {
        &self.store
    }
    fn add_metric(&self, metric: Metric, value: u64) {
        let name = metric.name(&config().models);
        *self.metrics.borrow_mut().entry(name).or_default() += value;
    }
    fn dispatch_key_lookup(&self, id: &str) -> bool {
        self.lookups.borrow_mut().push(id.to_string());
        !self.lookups_fail.get()
    }
    fn resume_request(&self) {
        self.resumed.set(self.resumed.get() + 1);
    }
    fn token_claim(&self, claim: &str) -> Option<Vec<u8>> {
        self.claims.borrow().get(claim).cloned()
    }
    fn response_code_details(&self) -> Option<String> {
        self.code_details.borrow().clone()
    }
    fn upstream_attempts(&self) -> Option<u32> {
        self.attempts.get()
    }
    fn dispatch_limiter(
        &self,
        cluster: &str,
        method: Method,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        self.record_limiter_call(cluster, method, message, timeout_ms, false)
    }
    fn queue_settlement(&self, cluster: &str, call: Call, timeout_ms: u64) -> bool {
        self.record_limiter_call(cluster, call.method, &call.message, timeout_ms, true)
            .is_some()
    }
    fn warn(&self, _message: &str) {}
    fn warn_throttled(&self, topic: &'static str, message: &str) {
        self.throttled_warnings
            .borrow_mut()
            .push(format!("{topic}: {message}"));
    }
}

use crate::limits::CounterStore;

const KEY: &str = "sk-test-alice";

fn config_json() -> serde_json::Value {
    serde_json::json!({
        "models": ["m1", "m2"],
        "subscriptions": {
            "free": {
                "models": ["m1"],
                "limits": {"requests": ["3/min"], "tokens": ["1000/min"]},
                "max_tokens": {"cap": 100, "mode": "clamp"}
            },
            "metered": {
                "models": ["m1"],
                "limits": {"tokens": ["1000/min"]},
                "max_tokens": {"cap": 100}
            },
            "strict": {
                "models": ["m1"],
                "limits": "unlimited",
                "max_tokens": {"cap": 100, "mode": "reject"}
            }
        },
        "keys": [
            {"id": "alice-1", "owner": "alice", "subscription": "free",
             "sha256": KeyDigest::of(KEY).to_hex()},
            {"id": "rev-1", "owner": "mallory", "subscription": "free",
             "sha256": KeyDigest::of("sk-revoked").to_hex(), "revoked": true},
            {"id": "metered-1", "owner": "dave", "subscription": "metered",
             "sha256": KeyDigest::of("sk-metered").to_hex()},
            {"id": "strict-1", "owner": "carol", "subscription": "strict",
             "sha256": KeyDigest::of("sk-strict").to_hex()}
        ]
    })
}

fn config() -> Config {
    Config::from_json(config_json().to_string().as_bytes()).unwrap()
}

struct Harness {
    config: Rc<Config>,
    policy: RefCell<Rc<Policy>>,
    host: FakeHost,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(config())
    }

    fn with_config(config: Config) -> Harness {
        let host = FakeHost::default();
        host.now_ms.set(1_700_000_000_000);
        Harness {
            policy: RefCell::new(Rc::new(Policy::from_config(&config))),
            config: Rc::new(config),
            host,
        }
    }

    fn stream(&self) -> Stream {
        Stream::new(Rc::clone(&self.config), Rc::clone(&self.policy.borrow()))
    }

    /// Sends a request through the request-side callbacks; returns the stream
    /// so the test can play the response.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Stream {
        let mut all = vec![(":method", method), (":path", path)];
        all.extend_from_slice(headers);
        *self.host.request_headers.borrow_mut() = all
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *self.host.request_body.borrow_mut() = body.as_bytes().to_vec();
        *self.host.reply.borrow_mut() = None;
        let mut s = self.stream();
        if s.on_request_headers(&self.host, body.is_empty()) == Flow::Pause
            && !body.is_empty()
            && self.replied().is_none()
        {
            s.on_request_body(&self.host, body.len(), true);
        }
        s
    }

    fn chat(&self, body: &str) -> Stream {
        self.request(
            "POST",
            "/v1/chat/completions",
            &[
                ("authorization", &format!("Bearer {KEY}")),
                ("content-type", "application/json"),
            ],
            body,
        )
    }

    /// The request went on admitted for `model`, as a provider's backend
    /// role requires ([`crate::backend::ADMITTED_STATE`]).
    fn assert_admitted(&self, model: &str) {
        assert_eq!(
            self.host
                .request_state(crate::backend::ADMITTED_STATE)
                .as_deref(),
            Some(model)
        );
    }

    fn replied(&self) -> Option<ParsedReply> {
        self.host.reply.borrow().as_ref().map(|(s, h, b)| {
            (
                *s,
                h.clone(),
                serde_json::from_slice(b).unwrap_or(serde_json::Value::Null),
            )
        })
    }

    fn respond_json(&self, s: &mut Stream, status: u32, body: &str) {
        *self.host.response_headers.borrow_mut() = vec![
            (":status".into(), status.to_string()),
            ("content-type".into(), "application/json".into()),
        ];
        s.on_response_headers(&self.host, false);
        *self.host.response_chunk.borrow_mut() = body.as_bytes().to_vec();
        s.on_response_body(&self.host, body.len(), true);
        s.on_log(&self.host);
    }

    /// Used in the current window of the limit named `<counter key>/<quantity>/<window secs>`,
    /// e.g. `maas/sub/free/tokens/60`.
    fn used(&self, name: &str) -> u64 {
        let now = self.host.now_ms.get() / 1000;
        let mut parts = name.rsplitn(3, '/');
        let window: u64 = parts.next().unwrap().parse().unwrap();
        let quantity = match parts.next().unwrap() {
            "requests" => Quantity::Requests,
            "tokens" => Quantity::Tokens,
            other => panic!("unknown quantity {other}"),
        };
        let counter_key = parts.next().unwrap();
        let scope = self
            .config
            .all_limits()
            .find(|l| l.group.counter_key.starts_with(&format!("{counter_key}/")))
            .unwrap();
        let index = (0..scope.len())
            .find(|&i| {
                scope.quantities[i] == quantity && scope.group.rates[i].window_secs == window
            })
            .unwrap();
        let states = limits::state(&self.host.store, now, &scope.group).unwrap();
        states[index].limit - states[index].remaining
    }

    fn audit(&self) -> serde_json::Value {
        self.host.audit.borrow().clone().unwrap()
    }

    fn metric(&self, name: &str) -> u64 {
        self.host.metrics.borrow().get(name).copied().unwrap_or(0)
    }
}

const REQ: &str = "maas/sub/free/requests/60";
const TOK: &str = "maas/sub/free/tokens/60";

#[test]
fn missing_and_invalid_keys_get_401_without_an_oracle() {
    let h = Harness::new();
    h.request("POST", "/v1/chat/completions", &[], "{}");
    let (status, headers, body) = h.replied().unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "missing_api_key");
    assert!(headers.iter().any(|(k, _)| k == "www-authenticate"));

    let mut bodies = Vec::new();
    for key in ["sk-unknown", "sk-revoked"] {
        h.request("POST", "/v1/chat/completions", &[("x-api-key", key)], "{}");
        let (status, _, body) = h.replied().unwrap();
        assert_eq!(status, 401);
        bodies.push(body);
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(h.metric("maas.auth_failures_total.reason=.=revoked;.;"), 1);
    assert_eq!(h.metric("maas.auth_failures_total.reason=.=unknown;.;"), 1);
    assert_eq!(h.used(REQ), 0);
}

#[test]
fn identity_headers_are_the_filters_own() {
    let h = Harness::new();
    let mut s = h.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("x-maas-subscription", "gold"),
            ("x-maas-user", "root"),
            ("x-maas-model", "m2"),
        ],
        r#"{"model":"m1","max_tokens":10}"#,
    );
    assert!(h.replied().is_none());
    let hdr = |n: &str| h.host.request_header(n);
    assert_eq!(hdr("authorization"), None);
    assert_eq!(hdr("x-maas-subscription").as_deref(), Some("free"));
    assert_eq!(hdr("x-maas-user").as_deref(), Some("alice"));
    assert_eq!(hdr("x-maas-key-id").as_deref(), Some("alice-1"));
    assert_eq!(hdr("x-maas-model").as_deref(), Some("m1"));
    let published = h.host.published.borrow().clone();
    assert_eq!(
        published.get("maas_subscription").map(String::as_str),
        Some("free")
    );
    assert_eq!(
        published.get("maas_user").map(String::as_str),
        Some("alice")
    );
    assert_eq!(
        published.get("maas_key_id").map(String::as_str),
        Some("alice-1")
    );
    h.respond_json(
        &mut s,
        200,
        r#"{"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
    );
}

#[test]
fn reserves_worst_case_and_settles_to_reported_usage() {
    let h = Harness::new();
    let body = r#"{"model":"m1","max_tokens":50,"messages":[]}"#;
    let mut s = h.chat(body);
    assert!(h.replied().is_none());
    // Worst case: body bytes (prompt bound) + max_tokens.
    assert_eq!(h.used(TOK), body.len() as u64 + 50);
    assert_eq!(h.used(REQ), 1);
    h.respond_json(
        &mut s,
        200,
        r#"{"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
    );
    assert_eq!(h.used(TOK), 12);
    assert_eq!(h.used(REQ), 1);
    let a = h.audit();
    assert_eq!(a["total_tokens"], 12);
    assert_eq!(a["usage"], "reported");
    assert_eq!(a["outcome"], "ok");
    assert_eq!(a["key_id"], "alice-1");
    assert_eq!(
        h.metric("maas.total_tokens_total.subscription=.=free;.;model=.=m1;.;"),
        12
    );
    // on_log after settlement must not charge again.
    s.on_log(&h.host);
    assert_eq!(h.used(TOK), 12);
}

#[test]
fn response_headers_carry_rate_limit_state() {
    let h = Harness::new();
    let mut s = h.chat(r#"{"model":"m1","max_tokens":10}"#);
    h.respond_json(
        &mut s,
        200,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
    );
    let hdr = |n: &str| h.host.response_header(n);
    assert_eq!(hdr("x-ratelimit-limit-requests").as_deref(), Some("3"));
    assert_eq!(hdr("x-ratelimit-remaining-requests").as_deref(), Some("2"));
    assert_eq!(hdr("x-ratelimit-limit-tokens").as_deref(), Some("1000"));
    assert!(hdr("x-ratelimit-reset-tokens").is_some());
}

#[test]
fn request_limit_gives_429_with_retry_after() {
    let h = Harness::new();
    for _ in 0..3 {
        let mut s = h.chat(r#"{"model":"m1","max_tokens":1}"#);
        assert!(h.replied().is_none());
        h.respond_json(
            &mut s,
            200,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        );
    }
    let mut s = h.chat(r#"{"model":"m1","max_tokens":1}"#);
    let (status, headers, body) = h.replied().unwrap();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "requests");
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert!(get("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(get("x-ratelimit-remaining-requests").as_deref(), Some("0"));
    s.on_log(&h.host);
    assert_eq!(h.audit()["outcome"], "rate_limited");
    assert_eq!(h.used(REQ), 3);
}

#[test]
fn a_request_counts_in_the_window_it_is_admitted_in_not_the_one_it_started_in() {
    // "free" allows 3 requests a minute. A client opens a request in each
    // of three earlier minutes, sends no body until now, then finishes
    // them: each would otherwise open a window that ended long ago, where
    // its count is never seen again.
    let h = Harness::new();
    let now = h.host.now_ms.get();
    let body = r#"{"model":"m1","max_tokens":1}"#;
    let mut opened = Vec::new();
    for minutes_ago in [3, 2, 1] {
        h.host.now_ms.set(now - minutes_ago * 60_000);
        *h.host.request_headers.borrow_mut() = [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("authorization", &*format!("Bearer {KEY}")),
            ("content-type", "application/json"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut s = h.stream();
        assert_eq!(s.on_request_headers(&h.host, false), Flow::Pause);
        opened.push(s);
    }
    h.host.now_ms.set(now);
    let mut admitted = 0;
    for mut s in opened {
        *h.host.request_body.borrow_mut() = body.as_bytes().to_vec();
        *h.host.reply.borrow_mut() = None;
        s.on_request_body(&h.host, body.len(), true);
        admitted += usize::from(h.replied().is_none());
    }
    for _ in 0..3 {
        h.chat(body);
        admitted += usize::from(h.replied().is_none());
    }
    assert_eq!(admitted, 3, "3 a minute, in the minute the bodies came");
    assert_eq!(h.used(REQ), 3);
    let mut last = h.chat(body);
    last.on_log(&h.host);
    assert_eq!(
        h.audit()["admitted_ms"],
        now,
        "the audit says when it was admitted"
    );
}

#[test]
fn token_limit_admits_only_what_fits() {
    const METERED: &str = "maas/sub/metered/tokens/60";
    let h = Harness::new();
    let metered = |body: &str| {
        h.request(
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-metered")],
            body,
        )
    };
    // max_tokens 500 is clamped to the cap of 100; the prompt bound is the body length.
    let body = r#"{"model":"m1","max_tokens":500}"#;
    let per_request = body.len() as u64 + 100;
    let fit = 1000 / per_request;
    let mut in_flight = Vec::new();
    for _ in 0..fit {
        in_flight.push(metered(body));
        assert!(h.replied().is_none());
    }
    let clamped: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(clamped["max_tokens"], 100);
    assert_eq!(h.used(METERED), fit * per_request);

    metered(body);
    let (status, _, err) = h.replied().unwrap();
    assert_eq!(status, 429);
    assert_eq!(err["error"]["type"], "tokens");
    assert_eq!(
        h.used(METERED),
        fit * per_request,
        "a refusal reserves nothing"
    );

    // Settling one request releases what it did not use: room for one more.
    let mut first = in_flight.remove(0);
    h.respond_json(
        &mut first,
        200,
        r#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
    );
    assert_eq!(h.used(METERED), (fit - 1) * per_request + 7);
    metered(body);
    assert!(h.replied().is_none());
}

#[test]
fn a_request_larger_than_the_limit_is_told_so() {
    let h = Harness::new();
    let body = format!(
        r#"{{"model":"m1","max_tokens":100,"pad":"{}"}}"#,
        "x".repeat(1000)
    );
    h.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-metered")],
        &body,
    );
    let (status, _, err) = h.replied().unwrap();
    assert_eq!(status, 429);
    assert_eq!(err["error"]["code"], "request_too_large");
}

#[test]
fn max_tokens_cap_can_reject() {
    let h = Harness::new();
    h.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-strict")],
        r#"{"model":"m1","max_tokens":101}"#,
    );
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "max_tokens");
}

#[test]
fn missing_max_tokens_is_injected() {
    let h = Harness::new();
    let _s = h.chat(r#"{"model":"m1"}"#);
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["max_tokens"], 100);
    assert_eq!(
        h.host.request_header("content-length"),
        Some(h.host.request_body.borrow().len().to_string())
    );
}

#[test]
fn bad_bodies_and_models() {
    let h = Harness::new();
    for (body, status, code) in [
        ("{not json", 400, "invalid_json"),
        (r#"{"messages":[]}"#, 400, "missing_model"),
        (r#"{"model":"m2"}"#, 404, "model_not_found"),
        (r#"{"model":"gpt-9"}"#, 404, "model_not_found"),
        (r#"{"model":"m1","max_tokens":-1}"#, 400, "invalid_value"),
    ] {
        let mut s = h.chat(body);
        let (st, _, b) = h.replied().unwrap_or_else(|| panic!("no reply for {body}"));
        assert_eq!(
            (st, b["error"]["code"].as_str().unwrap()),
            (status, code),
            "{body}"
        );
        s.on_log(&h.host);
    }
    assert_eq!(h.used(REQ), 0, "refused requests are not charged");
    assert_eq!(
        h.metric(
            "maas.requests_total.subscription=.=free;.;model=.=unknown;.;outcome=.=rejected;.;key=.=alice-1;.;"
        ),
        4
    );
}

#[test]
fn body_too_large() {
    let h = Harness::new();
    let big = format!(r#"{{"model":"m1","x":"{}"}}"#, "a".repeat(1 << 20));
    h.chat(&big);
    assert_eq!(h.replied().unwrap().0, 413);
    h.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-length", "2000000"),
        ],
        "{}",
    );
    assert_eq!(h.replied().unwrap().0, 413);
}

#[test]
fn models_listing_is_filtered_by_subscription() {
    let h = Harness::new();
    h.request(
        "GET",
        "/v1/models",
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    );
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["m1"]);
    h.request(
        "GET",
        "/v1/models/m2",
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    );
    assert_eq!(h.replied().unwrap().0, 404);
}

#[test]
fn disconnect_before_the_response_charges_an_estimate_once() {
    let h = Harness::new();
    let body = r#"{"model":"m1","max_tokens":50,"stream":true}"#;
    let mut s = h.chat(body);
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    s.on_response_headers(&h.host, false);
    let chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n".repeat(3);
    *h.host.response_chunk.borrow_mut() = chunk.as_bytes().to_vec();
    s.on_response_body(&h.host, chunk.len(), false);
    // The client goes away: Envoy calls on_log without an end of stream.
    s.on_log(&h.host);
    // The prompt's reserved bound (one byte a token), three events of one byte.
    let expected = body.len() as u64 + 3;
    assert_eq!(h.used(TOK), expected);
    let a = h.audit();
    assert_eq!(a["usage"], "estimated");
    assert_eq!(a["outcome"], "incomplete");
    s.on_log(&h.host);
    assert_eq!(h.used(TOK), expected);
}

#[test]
fn streamed_usage_is_read_and_stripped_when_not_asked_for() {
    let h = Harness::new();
    let mut s = h.chat(r#"{"model":"m1","max_tokens":50,"stream":true}"#);
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    s.on_response_headers(&h.host, false);
    let content = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
    let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n";
    let done = "data: [DONE]\n\n";
    let mut seen = String::new();
    for (chunk, eos) in [(content, false), (usage, false), (done, true)] {
        *h.host.response_chunk.borrow_mut() = chunk.as_bytes().to_vec();
        s.on_response_body(&h.host, chunk.len(), eos);
        seen.push_str(std::str::from_utf8(&h.host.response_chunk.borrow()).unwrap());
    }
    s.on_log(&h.host);
    assert_eq!(seen, format!("{content}{done}"));
    assert_eq!(h.used(TOK), 11);
    assert_eq!(h.audit()["usage"], "reported");
}

/// An error status comes before any output (Envoy's own 503 when the model
/// is down, the server refusing while it loads): no tokens are charged, the
/// request still counts, and nothing stays reserved.
#[test]
fn upstream_errors_charge_no_tokens() {
    let h = Harness::new();
    let body = r#"{"model":"m1","max_tokens":50}"#;
    let refused = [
        (503, "via_upstream"),
        (400, "via_upstream"),
        (
            503,
            "upstream_reset_before_response_started{connection_failure}",
        ),
    ];
    for (status, details) in refused {
        *h.host.code_details.borrow_mut() = Some(details.into());
        let mut s = h.chat(body);
        h.respond_json(&mut s, status, r#"{"error":{"message":"down"}}"#);
        assert_eq!(h.used(TOK), 0, "{status}");
        let a = h.audit();
        assert_eq!(a["outcome"], "upstream_error", "{status}");
        assert_eq!(a["usage"], "none", "{status}");
        assert_eq!(a["total_tokens"], 0, "{status}");
    }
}

/// The model's own server refusing the key the filter presented is the
/// gateway's misconfiguration, not the client's key: a 502 that says so,
/// charged no tokens.
#[test]
fn a_model_server_refusing_the_gateways_key_is_a_502_not_the_clients_401() {
    let h = Harness::new();
    let refused = |s: &mut Stream| {
        *h.host.response_headers.borrow_mut() = vec![
            (":status".into(), "401".into()),
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), "120".into()),
            ("www-authenticate".into(), "Bearer".into()),
        ];
        s.on_response_headers(&h.host, false)
    };
    let server = r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let first = &server[..40];
    let replaced = || {
        let body: serde_json::Value =
            serde_json::from_slice(&h.host.response_chunk.borrow()).unwrap();
        assert_eq!(body["error"]["code"], "model_server_credential_rejected");
        assert_eq!(body["error"]["type"], "upstream_error");
        let hdr = |n: &str| h.host.response_header(n);
        assert_eq!(hdr(":status").as_deref(), Some("502"));
        assert_eq!(hdr("content-length"), None);
        assert_eq!(hdr("www-authenticate"), None);
        assert_eq!(h.used(TOK), 0);
        let a = h.audit();
        assert_eq!(a["status"], 502);
        assert_eq!(a["usage"], "none");
    };

    // In two chunks: the first held, the whole replaced at the end.
    *h.host.code_details.borrow_mut() = Some("via_upstream".into());
    let mut s = h.chat(r#"{"model":"m1","max_tokens":50}"#);
    refused(&mut s);
    *h.host.response_chunk.borrow_mut() = first.as_bytes().to_vec();
    assert_eq!(
        s.on_response_body(&h.host, first.len(), false),
        Flow::Buffer
    );
    *h.host.response_chunk.borrow_mut() = server.as_bytes().to_vec();
    assert_eq!(
        s.on_response_body(&h.host, server.len(), true),
        Flow::Continue
    );
    s.on_log(&h.host);
    replaced();

    // Ended by trailers: the held body is replaced there.
    let mut s = h.chat(r#"{"model":"m1","max_tokens":50}"#);
    refused(&mut s);
    *h.host.response_chunk.borrow_mut() = server.as_bytes().to_vec();
    assert_eq!(
        s.on_response_body(&h.host, server.len(), false),
        Flow::Buffer
    );
    s.on_response_trailers(&h.host);
    s.on_log(&h.host);
    replaced();

    // A 401 that a filter after this one answered is not the server's.
    *h.host.code_details.borrow_mut() = Some("ext_authz_denied".into());
    let mut s = h.chat(r#"{"model":"m1","max_tokens":50}"#);
    refused(&mut s);
    assert_eq!(h.host.response_header(":status").as_deref(), Some("401"));
}

/// An error that followed the prompt's computation where the upstream
/// stopped (a reset mid-request, the server's 500) is estimated: the prompt
/// bound, with no output seen.
#[test]
fn errors_after_a_model_may_have_computed_are_estimated() {
    let h = Harness::new();
    let body = r#"{"model":"m1","max_tokens":50}"#;
    let estimated = [
        (
            503,
            Some("upstream_reset_before_response_started{remote_reset}"),
        ),
        (500, Some("via_upstream")),
        (503, None),
    ];
    for (status, details) in estimated {
        // A fresh minute each: the subscription allows 3 requests a minute.
        h.host.now_ms.set(h.host.now_ms.get() + 60_000);
        *h.host.code_details.borrow_mut() = details.map(str::to_string);
        let before = h.used(TOK);
        let mut s = h.chat(body);
        h.respond_json(&mut s, status, r#"{"error":{"message":"gone"}}"#);
        let a = h.audit();
        assert_eq!(a["usage"], "estimated", "{status} {details:?}");
        assert_eq!(
            a["prompt_tokens"],
            body.len() as u64,
            "{status} {details:?}"
        );
        assert_eq!(h.used(TOK) - before, body.len() as u64);
    }
}

/// No response header at all (Envoy gave up waiting: its timeout; or the
/// client left first) where the model may have generated everything unseen
/// is charged the whole reservation, not the prompt alone (which would make
/// leaving before a long answer nearly free): an external provider, which
/// goes on and bills it, and a whole answer of the model's own server, sent
/// only once complete. A stream that had begun is estimated from what it
/// showed; a stream of the model's own server sends its headers with its
/// first token, so none means nothing was generated.
#[test]
fn no_answer_where_the_model_may_have_run_is_charged_the_reservation() {
    let mut v = config_json();
    v["providers"] = serde_json::json!([{"name": "far", "kind": "openai-compatible"}]);
    v["external_models"] = serde_json::json!([{"id": "ext", "provider": "far", "model": "x"}]);
    v["subscriptions"]["free"]["models"] = serde_json::json!(["m1", "ext"]);
    let h = Harness::with_config(Config::from_json(v.to_string().as_bytes()).unwrap());
    let next_minute = || h.host.now_ms.set(h.host.now_ms.get() + 60_000);
    let details = |d: Option<&str>| *h.host.code_details.borrow_mut() = d.map(str::to_string);
    let charged_as = |model: &str, stream: bool, answer: &dyn Fn(&mut Stream)| {
        next_minute();
        let body = format!(r#"{{"model":"{model}","max_tokens":50,"stream":{stream}}}"#);
        let mut s = h.chat(&body);
        answer(&mut s);
        let a = h.audit();
        (a["usage"].clone(), a["completion_tokens"].as_u64().unwrap())
    };
    let charged = |model: &str, answer: &dyn Fn(&mut Stream)| charged_as(model, false, answer);
    let timeout_504 = |s: &mut Stream| {
        details(Some("response_timeout"));
        h.respond_json(s, 504, "upstream request timeout");
    };
    let client_left = |s: &mut Stream| {
        details(None);
        s.on_log(&h.host);
    };
    for details in [
        "response_timeout",
        "upstream_per_try_timeout",
        "upstream_max_stream_duration_reached",
        // Envoy's stream idle timeout, before any response header.
        "stream_idle_timeout",
    ] {
        let (usage, completion) = charged("ext", &|s: &mut Stream| {
            *h.host.code_details.borrow_mut() = Some(details.into());
            h.respond_json(s, 504, "upstream request timeout");
        });
        assert_eq!(
            (usage, completion),
            (serde_json::json!("reserved"), 50),
            "{details}"
        );
    }
    assert_eq!(
        charged("ext", &client_left),
        (serde_json::json!("reserved"), 50)
    );
    // Its stream had begun when the timeout cut it: what it showed.
    let (usage, completion) = charged("ext", &|s: &mut Stream| {
        details(Some("via_upstream"));
        *h.host.response_headers.borrow_mut() = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "text/event-stream".into()),
        ];
        s.on_response_headers(&h.host, false);
        let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        *h.host.response_chunk.borrow_mut() = event.as_bytes().to_vec();
        s.on_response_body(&h.host, event.len(), false);
        details(Some("response_timeout"));
        s.on_log(&h.host);
    });
    assert_eq!(usage, "estimated");
    assert!(completion < 50, "{completion}");
    // The model's own server: a whole answer may have been all but done;
    // a stream without headers had no token yet.
    let reserved = (serde_json::json!("reserved"), 50);
    assert_eq!(charged("m1", &timeout_504), reserved);
    assert_eq!(charged("m1", &client_left), reserved);
    let idle_504 = |s: &mut Stream| {
        details(Some("stream_idle_timeout"));
        h.respond_json(s, 504, "stream timeout");
    };
    assert_eq!(charged("m1", &idle_504), reserved);
    let estimated = (serde_json::json!("estimated"), 0);
    assert_eq!(charged_as("m1", true, &timeout_504), estimated);
    assert_eq!(charged_as("m1", true, &client_left), estimated);
    assert_eq!(charged_as("ext", true, &client_left), reserved);
}

/// Our model server, failing after it computed part of a request (cut at
/// its shutdown deadline), reports what it computed beside the error: that
/// is charged, not nothing (a 503 without usage is) nor an estimate.
#[test]
fn an_error_that_reports_usage_is_charged_it() {
    let h = Harness::new();
    let body = r#"{"model":"m1","max_tokens":50}"#;
    *h.host.code_details.borrow_mut() = Some("via_upstream".into());
    for status in [503, 500] {
        h.host.now_ms.set(h.host.now_ms.get() + 60_000);
        let before = h.used(TOK);
        let mut s = h.chat(body);
        h.respond_json(
            &mut s,
            status,
            r#"{"error":{"message":"the server shut down before the response finished","code":"generation_failed"},"usage":{"prompt_tokens":7,"completion_tokens":12,"total_tokens":19}}"#,
        );
        let a = h.audit();
        assert_eq!(a["usage"], "reported", "{status}");
        assert_eq!(a["total_tokens"], 19, "{status}");
        assert_eq!(h.used(TOK) - before, 19, "{status}");
    }
}

/// Envoy obeys `x-envoy-*` request headers from internal callers (a
/// timeout of the caller's choosing, retries): none reaches the router.
#[test]
fn callers_cannot_steer_envoy_with_x_envoy_headers() {
    let h = Harness::new();
    h.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("x-envoy-upstream-rq-timeout-ms", "100"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-max-retries", "5"),
            ("x-request-id", "kept"),
        ],
        r#"{"model":"m1","max_tokens":5}"#,
    );
    let sent = h.host.request_headers.borrow().clone();
    assert!(
        sent.iter().all(|(name, _)| !name.starts_with("x-envoy-")),
        "{sent:?}"
    );
    assert!(sent.iter().any(|(name, _)| name == "x-request-id"));
}

/// A prompt that tokenises badly, cut after one event of digits: the
/// estimate charges the prompt's reserved bound and every digit, not a
/// quarter of the body and one token per event.
#[test]
fn a_cut_stream_pays_its_prompt_bound_and_its_text() {
    let h = Harness::new();
    // Within the harness's 1000-token limit.
    let digits = "0123456789".repeat(80);
    let body = format!(
        r#"{{"model":"m1","max_tokens":50,"stream":true,"messages":[{{"role":"user","content":"{digits}"}}]}}"#
    );
    let mut s = h.chat(&body);
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    s.on_response_headers(&h.host, false);
    let chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"0123456789\"}}]}\n\n";
    *h.host.response_chunk.borrow_mut() = chunk.as_bytes().to_vec();
    s.on_response_body(&h.host, chunk.len(), false);
    s.on_log(&h.host);
    assert_eq!(h.used(TOK), body.len() as u64 + 10);
    let a = h.audit();
    assert_eq!(a["prompt_tokens"], body.len() as u64);
    assert_eq!(a["completion_tokens"], 10);
    assert!(a["total_tokens"].as_u64() <= a["reserved_tokens"].as_u64());
}

/// A plain JSON response cut before its end: its bytes so far count as its
/// text, within the completion's reservation.
#[test]
fn a_cut_json_response_pays_for_what_arrived_up_to_its_reservation() {
    let h = Harness::new();
    let body = r#"{"model":"m1","max_tokens":50}"#;
    for (sent, completion) in [(20usize, 20u64), (400, 50)] {
        let mut s = h.chat(body);
        *h.host.response_headers.borrow_mut() = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/json".into()),
        ];
        s.on_response_headers(&h.host, false);
        let partial = "x".repeat(sent);
        *h.host.response_chunk.borrow_mut() = partial.as_bytes().to_vec();
        s.on_response_body(&h.host, sent, false);
        s.on_log(&h.host);
        let a = h.audit();
        assert_eq!(a["usage"], "estimated");
        assert_eq!(a["completion_tokens"], completion, "{sent} bytes");
        assert_eq!(a["prompt_tokens"], body.len() as u64);
    }
}

#[test]
fn unknown_endpoints_are_closed() {
    let h = Harness::new();
    h.request(
        "POST",
        "/v1/embeddings",
        &[("authorization", &format!("Bearer {KEY}"))],
        "{}",
    );
    assert_eq!(h.replied().unwrap().0, 404);
    h.request(
        "GET",
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    );
    assert_eq!(h.replied().unwrap().0, 405);
}

#[test]
fn completion_requests_ending_in_trailers_are_refused() {
    let h = Harness::new();
    *h.host.request_headers.borrow_mut() = vec![
        (":method".into(), "POST".into()),
        (":path".into(), "/v1/chat/completions".into()),
        ("authorization".into(), format!("Bearer {KEY}")),
    ];
    *h.host.request_body.borrow_mut() = br#"{"model":"m1"}"#.to_vec();
    // Headers without end of stream, a body chunk without it, then trailers.
    let mut s = h.stream();
    assert_eq!(s.on_request_headers(&h.host, false), Flow::Pause);
    assert_eq!(s.on_request_body(&h.host, 14, false), Flow::Buffer);
    s.on_request_trailers(&h.host);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "unsupported_trailers");
    s.on_log(&h.host);
    assert_eq!(h.used(REQ), 0);
}

#[test]
fn response_trailers_end_the_response_with_reported_usage() {
    let h = Harness::new();
    let mut s = h.chat(r#"{"model":"m1","max_tokens":5}"#);
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "application/json".into()),
    ];
    s.on_response_headers(&h.host, false);
    let body = r#"{"usage":{"prompt_tokens":2,"completion_tokens":3}}"#;
    *h.host.response_chunk.borrow_mut() = body.as_bytes().to_vec();
    s.on_response_body(&h.host, body.len(), false);
    s.on_response_trailers(&h.host);
    s.on_log(&h.host);
    assert_eq!(h.used(TOK), 5);
    assert_eq!(h.audit()["usage"], "reported");
    assert_eq!(h.audit()["outcome"], "ok");
}

/// Response headers of a 200 event stream through the gateway role.
fn start_event_stream(h: &Harness, s: &mut Stream) {
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    assert_eq!(s.on_response_headers(&h.host, false), Flow::Continue);
}

/// One body chunk (never the last) through the gateway role: its flow, and
/// what Envoy holds or sends in its place.
fn stream_chunk(h: &Harness, s: &mut Stream, chunk: &str) -> (Flow, String) {
    *h.host.response_chunk.borrow_mut() = chunk.as_bytes().to_vec();
    let flow = s.on_response_body(&h.host, chunk.len(), false);
    let out = String::from_utf8(h.host.response_chunk.borrow().clone()).unwrap();
    (flow, out)
}

const SSE_CONTENT: &str = r#"data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
const SSE_USAGE: &str =
    r#"data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#;

#[test]
fn a_stream_ending_in_trailers_has_its_last_event_read() {
    let h = Harness::new();
    // The client asked for usage: the stream is read, not rewritten.
    let mut s = h.chat(
        r#"{"model":"m1","max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}"#,
    );
    start_event_stream(&h, &mut s);
    let (flow, _) = stream_chunk(&h, &mut s, &format!("{SSE_CONTENT}\n\n{SSE_USAGE}\n"));
    assert_eq!(flow, Flow::Continue);
    // The usage event never got its blank line: the trailers end it.
    assert_eq!(s.on_response_trailers(&h.host), Flow::Continue);
    s.on_log(&h.host);
    assert_eq!(h.audit()["usage"], "reported");
    assert_eq!(h.used(TOK), 5);
}

#[test]
fn a_stream_ending_in_trailers_is_forwarded_to_its_last_byte() {
    let h = Harness::new();
    // No usage asked for: the gateway asked for it and strips it.
    let mut s = h.chat(r#"{"model":"m1","max_tokens":5,"stream":true}"#);
    start_event_stream(&h, &mut s);
    let (usage_start, usage_end) = SSE_USAGE.split_at(20);
    let mut client = String::new();
    let (flow, out) = stream_chunk(&h, &mut s, &format!("{SSE_CONTENT}\n\n{usage_start}"));
    assert_eq!(
        (flow, out.as_str()),
        (Flow::Continue, &*format!("{SSE_CONTENT}\n\n"))
    );
    client.push_str(&out);
    // A chunk all held back (the usage event goes, `data: [DONE]` waits for
    // its line end): Envoy keeps the body, so the trailers can add to it.
    let (flow, out) = stream_chunk(&h, &mut s, &format!("{usage_end}\n\ndata: [DONE]"));
    assert_eq!((flow, out.as_str()), (Flow::Buffer, ""));
    // Trailers end `data: [DONE]`, which never got its line end.
    *h.host.response_chunk.borrow_mut() = Vec::new();
    assert_eq!(s.on_response_trailers(&h.host), Flow::Continue);
    client.push_str(std::str::from_utf8(&h.host.response_chunk.borrow()).unwrap());
    assert_eq!(client, format!("{SSE_CONTENT}\n\ndata: [DONE]"));
    s.on_log(&h.host);
    assert_eq!(h.audit()["usage"], "reported");
    assert_eq!(h.used(TOK), 5);
}

#[test]
fn a_stripped_chunk_with_nothing_to_send_keeps_envoys_body() {
    let h = Harness::new();
    let mut s = h.chat(r#"{"model":"m1","max_tokens":5,"stream":true}"#);
    start_event_stream(&h, &mut s);
    let (first, second) = SSE_CONTENT.split_at(10);
    assert_eq!(
        stream_chunk(&h, &mut s, first),
        (Flow::Buffer, String::new())
    );
    let (flow, out) = stream_chunk(&h, &mut s, &format!("{second}\n\n{SSE_USAGE}\n\n"));
    assert_eq!((flow, out), (Flow::Continue, format!("{SSE_CONTENT}\n\n")));
    *h.host.response_chunk.borrow_mut() = b"data: [DONE]\n\n".to_vec();
    assert_eq!(s.on_response_body(&h.host, 14, true), Flow::Continue);
    s.on_log(&h.host);
    assert_eq!(h.used(TOK), 5);
}

#[test]
fn budgets_multiply_by_choices_and_both_fields_get_the_reserved_value() {
    let h = Harness::new();
    let body = r#"{"model":"m1","max_tokens":10,"max_completion_tokens":90,"n":3}"#;
    let _s = h.chat(body);
    assert!(h.replied().is_none());
    assert_eq!(h.used(TOK), body.len() as u64 + 3 * 10);
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(
        (
            sent["max_tokens"].as_u64(),
            sent["max_completion_tokens"].as_u64()
        ),
        (Some(10), Some(10))
    );

    for zero in [
        r#"{"model":"m1","max_tokens":0}"#,
        r#"{"model":"m1","max_completion_tokens":0}"#,
    ] {
        h.chat(zero);
        assert_eq!(h.replied().unwrap().0, 400, "{zero}");
    }
}

mod bounds;
mod global;
mod managed;
mod oidc;
mod providers;
