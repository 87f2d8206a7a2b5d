//! Request and token limits through a real Envoy. Day windows keep these
//! tests away from window boundaries (a minute window could roll over
//! mid-test and reset the counters being asserted).

use crate::support::*;
use serde_json::{json, Value};

fn limited_config(limits: Value, max_tokens: Option<Value>) -> Value {
    let mut c = base_config();
    c["subscriptions"]["free"]["limits"] = limits;
    if let Some(m) = max_tokens {
        c["subscriptions"]["free"]["max_tokens"] = m;
    }
    c
}

fn header_u64(r: &maas_testkit::Response, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("missing {name}; headers {:?}", r.headers))
        .parse()
        .unwrap()
}

#[test]
fn request_limit_gives_429_with_openai_headers() {
    let s = Stack::start(limited_config(json!({"requests": ["3/day"]}), None));
    for expected_remaining in [2, 1, 0] {
        let r = s.chat(FREE_KEY, &chat_body("m1", 4), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(header_u64(&r, "x-ratelimit-limit-requests"), 3);
        assert_eq!(
            header_u64(&r, "x-ratelimit-remaining-requests"),
            expected_remaining
        );
        assert!(r
            .header("x-ratelimit-reset-requests")
            .is_some_and(|v| v.ends_with('s')));
    }
    let r = s.chat(FREE_KEY, &chat_body("m1", 4), &[]);
    let body = assert_error(&r, 429, "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry));
    assert_eq!(header_u64(&r, "x-ratelimit-remaining-requests"), 0);
    assert_eq!(s.upstream.requests().len(), 3);

    // Listing models stays possible with the quota spent.
    let models = s.gateway.request(
        "GET",
        "/v1/models",
        &[("authorization", &format!("Bearer {FREE_KEY}"))],
        None,
    );
    assert_eq!(models.status, 200);
    // Another subscription is not affected.
    assert_eq!(s.chat(GOLD_KEY, &chat_body("m1", 4), &[]).status, 200);
    assert_eq!(
        s.metric(
            "maas_rate_limited_total",
            &[("subscription", "free"), ("reason", "requests")]
        ),
        1.0
    );
}

#[test]
fn per_key_limits_count_each_key_alone() {
    let mut c = limited_config(json!("unlimited"), None);
    c["subscriptions"]["free"]["key_limits"] = json!({"requests": ["2/day"]});
    c["keys"]
        .as_array_mut()
        .unwrap()
        .push(key_entry("free-2", "carol", "free", "sk-test-free-2"));
    let s = Stack::start(c);
    for _ in 0..2 {
        assert_eq!(s.chat(FREE_KEY, &chat_body("m1", 4), &[]).status, 200);
    }
    assert_error(
        &s.chat(FREE_KEY, &chat_body("m1", 4), &[]),
        429,
        "rate_limit_exceeded",
    );
    assert_eq!(
        s.chat("sk-test-free-2", &chat_body("m1", 4), &[]).status,
        200
    );
}

/// Tokens: each request reserves body bytes + max_tokens and is charged its
/// reported usage. The sum charged never passes the limit, and the request
/// that would have pushed it over is refused before it runs.
#[test]
fn token_limit_is_never_overshot() {
    const LIMIT: u64 = 600;
    let s = Stack::start(limited_config(
        json!({"tokens": [format!("{LIMIT}/day")]}),
        None,
    ));
    let body = chat_body("m1", 100);
    let reservation = body.to_string().len() as u64 + 100;
    let mut charged = 0;
    let mut admitted = 0;
    loop {
        // The mock reports 40 prompt + 100 completion tokens.
        let r = s.chat(
            FREE_KEY,
            &body,
            &[
                ("x-mock-prompt-tokens", "40"),
                ("x-mock-completion-tokens", "100"),
            ],
        );
        if r.status == 429 {
            let err = assert_error(&r, 429, "rate_limit_exceeded");
            assert_eq!(err["error"]["type"], "tokens");
            assert_eq!(
                header_u64(&r, "x-ratelimit-remaining-tokens"),
                LIMIT - charged
            );
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["usage"]["total_tokens"], 140);
        // Right after admission the remaining budget excludes this request's
        // whole reservation.
        assert_eq!(
            header_u64(&r, "x-ratelimit-remaining-tokens"),
            LIMIT - charged - reservation
        );
        charged += 140;
        admitted += 1;
    }
    assert!(
        charged + reservation > LIMIT,
        "refused only when the worst case does not fit"
    );
    assert!(charged <= LIMIT);
    assert_eq!(s.upstream.requests().len(), admitted);
    assert_eq!(
        s.metric(
            "maas_total_tokens_total",
            &[("subscription", "free"), ("model", "m1")]
        ),
        charged as f64
    );
}

#[test]
fn streamed_token_usage_counts_against_the_limit() {
    const LIMIT: u64 = 500;
    let s = Stack::start(limited_config(
        json!({"tokens": [format!("{LIMIT}/day")]}),
        None,
    ));
    let mut body = chat_body("m1", 50);
    body["stream"] = json!(true);
    let mut charged = 0;
    loop {
        let r = s.chat(
            FREE_KEY,
            &body,
            &[
                ("x-mock-prompt-tokens", "30"),
                ("x-mock-completion-tokens", "20"),
            ],
        );
        if r.status == 429 {
            assert_eq!(
                header_u64(&r, "x-ratelimit-remaining-tokens"),
                LIMIT - charged
            );
            break;
        }
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        charged += 50;
    }
    assert!(charged > 0 && charged <= LIMIT);
    assert_eq!(
        s.metric("maas_completion_tokens_total", &[("subscription", "free")]),
        (charged / 50 * 20) as f64
    );
}

#[test]
fn max_tokens_is_clamped_injected_or_rejected() {
    let s = Stack::start(limited_config(json!("unlimited"), Some(json!({"cap": 32}))));
    assert_eq!(s.chat(FREE_KEY, &chat_body("m1", 500), &[]).status, 200);
    let mut no_max = chat_body("m1", 0);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    assert_eq!(s.chat(FREE_KEY, &no_max, &[]).status, 200);
    let mut newer = json!({"model": "m1", "max_completion_tokens": 64, "messages": []});
    assert_eq!(s.chat(FREE_KEY, &newer, &[]).status, 200);
    let seen: Vec<Value> = s.upstream.requests().iter().map(|r| r.json()).collect();
    assert_eq!(seen[0]["max_tokens"], 32, "clamped");
    assert_eq!(seen[1]["max_tokens"], 32, "injected");
    assert_eq!(
        seen[2]["max_completion_tokens"], 32,
        "the field the client used is clamped"
    );
    assert!(seen[2].get("max_tokens").is_none());

    let s = Stack::start(limited_config(
        json!("unlimited"),
        Some(json!({"cap": 32, "mode": "reject"})),
    ));
    newer["max_completion_tokens"] = json!(33);
    let body = assert_error(&s.chat(FREE_KEY, &newer, &[]), 400, "invalid_value");
    assert_eq!(body["error"]["param"], "max_tokens");
    assert!(s.upstream.requests().is_empty());
}

/// Both budget fields leave with the value that was reserved (servers differ
/// in which one they read), and each of `n` choices is reserved in full.
#[test]
fn every_budget_field_and_every_choice_is_reserved() {
    const LIMIT: u64 = 100_000;
    let s = Stack::start(limited_config(
        json!({"tokens": [format!("{LIMIT}/day")]}),
        None,
    ));
    let body = json!({"model": "m1", "max_tokens": 10, "max_completion_tokens": 5000, "n": 4, "messages": []});
    let r = s.chat(FREE_KEY, &body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let reservation = body.to_string().len() as u64 + 4 * 10;
    assert_eq!(
        header_u64(&r, "x-ratelimit-remaining-tokens"),
        LIMIT - reservation
    );
    let sent = s.upstream.requests()[0].json();
    assert_eq!(
        (
            sent["max_tokens"].as_u64(),
            sent["max_completion_tokens"].as_u64()
        ),
        (Some(10), Some(10))
    );
    // llama-server reads `n_predict` before `max_tokens`; -1 is "until the
    // context is full" there. It leaves with the reservation too.
    let llama = json!({"model": "m1", "max_tokens": 10, "n_predict": -1, "messages": []});
    assert_eq!(s.chat(FREE_KEY, &llama, &[]).status, 200);
    let sent = s.upstream.requests()[1].json();
    assert_eq!(
        (sent["max_tokens"].as_i64(), sent["n_predict"].as_i64()),
        (Some(10), Some(10))
    );
    let zero = s.chat(
        FREE_KEY,
        &json!({"model": "m1", "max_completion_tokens": 0}),
        &[],
    );
    assert_error(&zero, 400, "invalid_value");
}

/// An image by URL is some 60 bytes of body and up to thousands of prompt
/// tokens: each media part is reserved at `media_part_tokens` (default
/// 4096), so a request of many is refused by a token limit that its bytes
/// and `max_tokens` alone would fit.
#[test]
fn media_parts_are_reserved_at_their_per_part_tokens() {
    const LIMIT: u64 = 20_000;
    const PER_PART: u64 = 4096;
    let s = Stack::start(limited_config(
        json!({"tokens": [format!("{LIMIT}/day")]}),
        None,
    ));
    let with_images = |images: usize| {
        let image = json!({"type": "image_url",
            "image_url": {"url": "https://example.com/big.png", "detail": "high"}});
        let mut content = vec![json!({"type": "text", "text": "What differs?"})];
        content.extend(std::iter::repeat_n(image, images));
        json!({"model": "m1", "max_tokens": 10,
               "messages": [{"role": "user", "content": content}]})
    };

    let one = with_images(1);
    let r = s.chat(FREE_KEY, &one, &[("x-mock-prompt-tokens", "900")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let reservation = one.to_string().len() as u64 + PER_PART + 10;
    assert_eq!(
        header_u64(&r, "x-ratelimit-remaining-tokens"),
        LIMIT - reservation
    );

    let many = with_images(12);
    let bytes_bound = many.to_string().len() as u64 + 10;
    assert!(
        bytes_bound < LIMIT / 4,
        "the old bound fits many times over"
    );
    let r = s.chat(FREE_KEY, &many, &[]);
    let err = assert_error(&r, 429, "request_too_large");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&(bytes_bound + 12 * PER_PART).to_string())),
        "{err}"
    );
    assert_eq!(s.upstream.requests().len(), 1, "refused before it ran");
}
