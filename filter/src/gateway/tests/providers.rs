//! Models served by external providers, with both of the filter's roles on
//! one fake host as Envoy chains them: the gateway role (downstream) admits
//! and charges; the backend role (the provider cluster's upstream filter,
//! once per attempt) makes the request the provider's own and its answer
//! OpenAI's again, before the gateway role reads, charges and forwards it.

use super::*;
use crate::backend::{BackendConfig, BackendStream, ADMITTED_STATE};

fn with_providers() -> serde_json::Value {
    let mut json = config_json();
    json["providers"] = serde_json::json!([
        {"name": "azure-east", "kind": "azure-openai", "api_version": "2024-10-21"},
        {"name": "vllm-far", "kind": "openai-compatible"},
        {"name": "anthropic", "kind": "anthropic"}
    ]);
    json["external_models"] = serde_json::json!([
        {"id": "gpt-4o", "provider": "azure-east", "model": "gpt-4o-prod"},
        {"id": "far/llama", "provider": "vllm-far", "model": "meta-llama/Llama-3.1-8B-Instruct"},
        {"id": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5"}
    ]);
    json["fallbacks"] = serde_json::json!({
        "claude": [{"provider": "vllm-far", "model": "qwen3-32b"}]
    });
    json["subscriptions"]["free"]["models"] =
        serde_json::json!(["m1", "gpt-4o", "far/llama", "claude"]);
    json
}

fn harness() -> Harness {
    Harness::with_config(Config::from_json(with_providers().to_string().as_bytes()).unwrap())
}

/// One attempt through `provider`'s cluster: the backend role on the
/// request as it stands (Envoy hands each attempt the same header map, and
/// a fresh copy of the body the gateway role forwarded).
fn attempt(h: &Harness, provider: &str) -> BackendStream {
    let mut b = backend(h, provider);
    assert_eq!(b.on_request_headers(&h.host, false), Flow::Pause);
    let len = h.host.request_body.borrow().len();
    assert_eq!(b.on_request_body(&h.host, len, true), Flow::Continue);
    assert_eq!(h.replied(), None, "the attempt goes out to {provider}");
    b
}

/// The backend role of `provider`'s cluster, before its first callback.
fn backend(h: &Harness, provider: &str) -> BackendStream {
    let doc = BackendConfig::document_for(&h.config, provider).unwrap();
    let config = BackendConfig::from_json(doc.to_string().as_bytes()).unwrap();
    BackendStream::new(Rc::new(config))
}

fn header(h: &Harness, name: &str) -> Option<String> {
    h.host.response_header(name)
}

fn set_response_headers(h: &Harness, status: u32, content_type: &str) {
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), status.to_string()),
        ("content-type".into(), content_type.into()),
        ("content-length".into(), "999".into()),
    ];
}

/// Response headers through the backend role, then (once it lets them go)
/// the gateway role. Returns the backend role's flow.
fn respond_headers(
    h: &Harness,
    s: &mut Stream,
    b: &mut BackendStream,
    status: u32,
    content_type: &str,
) -> Flow {
    set_response_headers(h, status, content_type);
    let flow = b.on_response_headers(&h.host, false);
    if flow == Flow::Continue {
        s.on_response_headers(&h.host, false);
    }
    flow
}

/// Plays a body the backend role holds, as Envoy does: Buffer until the
/// end, then the whole body once; then the gateway role gets the headers
/// and the body the backend role made. Returns what the client gets.
fn respond_held(h: &Harness, s: &mut Stream, b: &mut BackendStream, body: &str) -> Vec<u8> {
    let (first, _) = body.split_at(body.len() / 2);
    *h.host.response_chunk.borrow_mut() = first.as_bytes().to_vec();
    assert_eq!(
        b.on_response_body(&h.host, first.len(), false),
        Flow::Buffer
    );
    *h.host.response_chunk.borrow_mut() = body.as_bytes().to_vec();
    assert_eq!(
        b.on_response_body(&h.host, body.len(), true),
        Flow::Continue
    );
    s.on_response_headers(&h.host, false);
    let len = h.host.response_chunk.borrow().len();
    assert_eq!(s.on_response_body(&h.host, len, true), Flow::Continue);
    s.on_log(&h.host);
    h.host.response_chunk.borrow().clone()
}

/// Plays a streamed body chunk by chunk through both roles; returns what
/// the client gets.
fn respond_streamed(h: &Harness, s: &mut Stream, b: &mut BackendStream, chunks: &[&str]) -> String {
    let mut seen = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        *h.host.response_chunk.borrow_mut() = chunk.as_bytes().to_vec();
        let last = i + 1 == chunks.len();
        assert_eq!(
            b.on_response_body(&h.host, chunk.len(), last),
            Flow::Continue
        );
        let len = h.host.response_chunk.borrow().len();
        assert_eq!(s.on_response_body(&h.host, len, last), Flow::Continue);
        seen.extend(h.host.response_chunk.borrow().iter());
    }
    s.on_log(&h.host);
    String::from_utf8(seen).unwrap()
}

const CLAUDE_ANSWER: &str = r#"{"id":"msg_01","type":"message","role":"assistant",
  "content":[{"type":"text","text":"Bonjour"}],"model":"claude-sonnet-4-5-20250929",
  "stop_reason":"end_turn","stop_sequence":null,
  "usage":{"input_tokens":11,"cache_read_input_tokens":4,"output_tokens":3}}"#;

#[test]
fn an_anthropic_model_is_asked_in_messages_and_answers_in_chat_completions() {
    let h = harness();
    let mut s = h.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("accept-encoding", "gzip"),
            ("x-api-key", "sk-ant-client-supplied"),
            ("anthropic-beta", "context-1m-2025-08-07"),
        ],
        r#"{"model":"claude","max_tokens":10,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#,
    );
    assert!(h.replied().is_none());
    // The gateway role forwards OpenAI's request, routed by model.
    assert_eq!(
        h.host.request_header("x-maas-model").as_deref(),
        Some("claude")
    );
    assert_eq!(
        h.host.request_header(":path").as_deref(),
        Some("/v1/chat/completions")
    );
    let mut b = attempt(&h, "anthropic");
    let hdr = |n: &str| h.host.request_header(n);
    assert_eq!(hdr(":path").as_deref(), Some("/v1/messages"));
    assert_eq!(hdr("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(hdr("accept-encoding"), None);
    assert_eq!(
        hdr("x-api-key"),
        None,
        "only Envoy's injected credential goes out"
    );
    assert_eq!(
        hdr("anthropic-beta"),
        None,
        "features billed at other rates are the operator's to turn on"
    );
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "system": "Be brief.",
                           "messages": [{"role": "user", "content": "Hi"}]})
    );
    assert_eq!(
        hdr("content-length"),
        Some(h.host.request_body.borrow().len().to_string())
    );

    assert_eq!(
        respond_headers(&h, &mut s, &mut b, 200, "application/json"),
        Flow::Pause
    );
    let out = respond_held(&h, &mut s, &mut b, CLAUDE_ANSWER);
    let answer: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "claude");
    assert_eq!(answer["choices"][0]["message"]["content"], "Bonjour");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(header(&h, "content-length"), Some(out.len().to_string()));
    assert_eq!(header(&h, ":status").as_deref(), Some("200"));
    assert_eq!(
        header(&h, "x-maas-backend"),
        None,
        "which provider answered is the audit record's"
    );
    // Charged what the provider reported, cache reads included.
    assert_eq!(h.used(TOK), 18);
    let audit = h.audit();
    assert_eq!(audit["usage"], "reported");
    assert_eq!(audit["backend"], "anthropic");
    assert!(audit.get("attempts").is_none(), "{audit}");
    assert_eq!(
        h.metric("maas.provider_responses_total.provider=.=anthropic;.;status=.=2xx;.;"),
        1
    );
}

#[test]
fn an_anthropic_stream_is_translated_and_its_usage_charged_and_stripped() {
    let h = harness();
    let mut s = h.chat(r#"{"model":"claude","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#);
    let mut b = attempt(&h, "anthropic");
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["stream"], true);
    assert!(sent.get("stream_options").is_none(), "{sent}");
    assert_eq!(
        respond_headers(&h, &mut s, &mut b, 200, "text/event-stream"),
        Flow::Continue
    );
    assert_eq!(header(&h, "content-length"), None);
    let events = [
        concat!(
            "event: message_start\n",
            r#"data: {"type":"message_start","message":{"id":"msg_9","usage":{"input_tokens":20,"output_tokens":1}}}"#,
            "\n\n",
        ),
        concat!(
            "event: content_block_start\n",
            r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            "\n\nevent: content_block_delta\n",
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"#,
        ),
        concat!(r#"lo"}}"#, "\n\n"),
        concat!(
            "event: message_delta\n",
            r#"data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":7}}"#,
            "\n\nevent: message_stop\n",
            r#"data: {"type":"message_stop"}"#,
            "\n\n",
        ),
    ];
    let text = respond_streamed(&h, &mut s, &mut b, &events);
    let data: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "usage not asked for: {text}"
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "length"));
    assert_eq!(h.used(TOK), 27);
    assert_eq!(h.audit()["usage"], "reported");
}

#[test]
fn a_providers_failure_reaches_the_client_as_what_it_can_act_on() {
    let cases = [
        (
            "claude",
            "anthropic",
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            502,
            "provider_credential_rejected",
        ),
        (
            "claude",
            "anthropic",
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            503,
            "provider_overloaded",
        ),
        (
            "far/llama",
            "vllm-far",
            429,
            r#"{"error":{"message":"slow down","type":"rate_limit","code":null}}"#,
            429,
            "provider_rate_limited",
        ),
        (
            "gpt-4o",
            "azure-east",
            403,
            r#"{"error":{"code":"PermissionDenied","message":"denied"}}"#,
            502,
            "provider_credential_rejected",
        ),
        (
            "claude",
            "anthropic",
            500,
            "<html>oops</html>",
            502,
            "provider_error",
        ),
        // The operator's account, not the client: a fallback is tried, and
        // the provider's words go to the operator's log only.
        (
            "gpt-4o",
            "azure-east",
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            502,
            "provider_account_unavailable",
        ),
    ];
    for (model, provider, status, body, client_status, code) in cases {
        let h = harness();
        *h.host.code_details.borrow_mut() = Some("via_upstream".into());
        let mut s = h.chat(&format!(
            r#"{{"model":"{model}","max_tokens":5,"messages":[{{"role":"user","content":"x"}}]}}"#
        ));
        let mut b = attempt(&h, provider);
        assert_eq!(
            respond_headers(&h, &mut s, &mut b, status, "application/json"),
            Flow::Pause
        );
        let out = respond_held(&h, &mut s, &mut b, body);
        let error: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(error["error"]["code"], code, "{model} {status}");
        let logged = h.host.throttled_warnings.borrow().join("\n");
        assert_eq!(
            logged.contains("You exceeded your current quota"),
            code == "provider_account_unavailable",
            "{logged}"
        );
        assert_eq!(
            header(&h, ":status"),
            Some(client_status.to_string()),
            "{model} {status}"
        );
        assert_eq!(header(&h, "content-length"), Some(out.len().to_string()));
        // Refusals cost no tokens; a 500 may have followed the prompt's
        // computation, and is estimated as for a local model.
        let charged = h.used(TOK);
        assert_eq!(charged == 0, status != 500, "{model} {status}: {charged}");
    }
}

#[test]
fn what_a_provider_cannot_take_is_refused_before_anything_is_reserved() {
    let h = harness();
    h.request(
        "POST",
        "/v1/completions",
        &[("authorization", &format!("Bearer {KEY}"))],
        r#"{"model":"claude","max_tokens":5,"prompt":"x"}"#,
    );
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unsupported_parameter"))
    );
    h.chat(r#"{"model":"claude","max_tokens":5,"n":3,"messages":[{"role":"user","content":"x"}]}"#);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("n")));
    assert_eq!(h.used(TOK), 0);
    assert_eq!(h.used(REQ), 0);
}

/// A Responses request goes to an OpenAI-compatible provider as it came,
/// under the provider's model name, its budget where the Responses API
/// reads it and no chat `stream_options`; the usage of the event ending
/// its stream is charged and reaches the client. Anthropic and Azure,
/// whose Responses APIs are not routed, refuse it before anything is
/// reserved.
#[test]
fn a_responses_request_goes_to_an_openai_compatible_provider_only() {
    let h = harness();
    let mut s = h.request(
        "POST",
        "/v1/responses",
        &[("authorization", &format!("Bearer {KEY}"))],
        r#"{"model":"far/llama","input":"Hi","stream":true}"#,
    );
    assert!(h.replied().is_none());
    let mut b = attempt(&h, "vllm-far");
    assert_eq!(
        h.host.request_header(":path").as_deref(),
        Some("/v1/responses")
    );
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"max_output_tokens": 100, "model": "meta-llama/Llama-3.1-8B-Instruct",
                           "input": "Hi", "stream": true})
    );
    assert_eq!(
        respond_headers(&h, &mut s, &mut b, 200, "text/event-stream"),
        Flow::Continue
    );
    let completed = concat!(
        "event: response.completed\n",
        r#"data: {"type":"response.completed","sequence_number":2,"response":{"id":"resp_1","object":"response","status":"completed","output":[],"usage":{"input_tokens":9,"output_tokens":2,"total_tokens":11}}}"#,
        "\n\n"
    );
    let delta = concat!(
        "event: response.output_text.delta\n",
        r#"data: {"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello"}"#,
        "\n\n"
    );
    let out = respond_streamed(&h, &mut s, &mut b, &[delta, completed]);
    assert_eq!(out, format!("{delta}{completed}"), "nothing is taken out");
    assert_eq!(h.used(TOK), 11);
    assert_eq!(h.audit()["usage"], "reported");

    for model in ["claude", "gpt-4o"] {
        let h = harness();
        h.request(
            "POST",
            "/v1/responses",
            &[("authorization", &format!("Bearer {KEY}"))],
            &format!(r#"{{"model":"{model}","input":"Hi","max_output_tokens":5}}"#),
        );
        let (status, _, body) = h.replied().unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("unsupported_parameter")),
            "{model}: {body}"
        );
        assert_eq!(h.used(TOK), 0);
        assert_eq!(h.used(REQ), 0);
    }
}

#[test]
fn a_provider_that_takes_one_output_per_request_refuses_more_before_anything_is_reserved() {
    // llama-server reports the usage of the first output alone: behind
    // `max_outputs: 1`, a request for several would be charged for one.
    let mut json = with_providers();
    json["providers"][1]["max_outputs"] = serde_json::json!(1);
    json["fallbacks"]["gpt-4o"] =
        serde_json::json!([{"provider": "vllm-far", "model": "llama-3.1-8b"}]);
    json["subscriptions"]["free"]["models"] = serde_json::json!(["m1", "gpt-4o", "far/llama"]);
    let h = Harness::with_config(Config::from_json(json.to_string().as_bytes()).unwrap());
    let completions = |body: &str| {
        h.request(
            "POST",
            "/v1/completions",
            &[("authorization", &format!("Bearer {KEY}"))],
            body,
        )
    };
    let refused = [
        r#"{"model":"far/llama","max_tokens":5,"prompt":"x","n":2}"#,
        r#"{"model":"far/llama","max_tokens":5,"prompt":"x","n_cmpl":4}"#,
        r#"{"model":"far/llama","max_tokens":5,"prompt":["a","b"]}"#,
        // Its fallback binds the model too.
        r#"{"model":"gpt-4o","max_tokens":5,"prompt":"x","best_of":3}"#,
    ];
    for body in refused {
        let _s = completions(body);
        let (status, _, error) = h.replied().unwrap_or_else(|| panic!("{body}"));
        assert_eq!(status, 400, "{body}");
        // The count comes from any of four fields: none is named.
        assert_eq!(error["error"]["param"], serde_json::Value::Null, "{body}");
        assert_eq!(error["error"]["code"], "invalid_value", "{body}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 1"),
            "{error}"
        );
    }
    assert_eq!((h.used(TOK), h.used(REQ)), (0, 0));
    let _s = completions(r#"{"model":"far/llama","max_tokens":5,"prompt":"x","n":1}"#);
    assert!(h.replied().is_none());
    // A model none of whose backends sets it takes many.
    let h = harness();
    let _s = h.request(
        "POST",
        "/v1/completions",
        &[("authorization", &format!("Bearer {KEY}"))],
        r#"{"model":"far/llama","max_tokens":5,"prompt":"x","n":2}"#,
    );
    assert!(h.replied().is_none());
}

#[test]
fn a_service_tier_the_operator_does_not_allow_is_refused_before_anything_is_reserved() {
    // OpenAI bills `priority` at about twice the rate of the same tokens.
    let mut json = with_providers();
    json["providers"][1]["service_tiers"] = serde_json::json!(["default", "priority"]);
    let fresh = || Harness::with_config(Config::from_json(json.to_string().as_bytes()).unwrap());
    let chat = |h: &Harness, model: &str, tier: &str| {
        h.chat(&format!(
            r#"{{"model":"{model}","max_tokens":5,"service_tier":"{tier}","messages":[{{"role":"user","content":"x"}}]}}"#
        ))
    };
    let h = fresh();
    let refused = [
        // Azure's provider keeps the default tiers.
        ("gpt-4o", "priority"),
        ("gpt-4o", "scale"),
        // vllm-far allows its own list only.
        ("far/llama", "flex"),
        // claude's fallback is vllm-far: failover may not change the bill.
        ("claude", "auto"),
    ];
    for (model, tier) in refused {
        let _s = chat(&h, model, tier);
        let (status, _, body) = h.replied().unwrap_or_else(|| panic!("{model} {tier}"));
        assert_eq!(status, 400, "{model} {tier}");
        assert_eq!(body["error"]["param"], "service_tier", "{body}");
        assert_eq!(body["error"]["code"], "unsupported_value", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(tier), "{message}");
        assert!(
            !message.contains("vllm-far"),
            "the operator's names stay its own"
        );
    }
    assert_eq!((h.used(TOK), h.used(REQ)), (0, 0));
    for (model, tier) in [
        ("gpt-4o", "auto"),
        ("gpt-4o", "flex"),
        ("far/llama", "priority"),
        ("claude", "default"),
        // The gateway's own model server ignores the field.
        ("m1", "priority"),
    ] {
        // Each on a fresh gateway: the subscription takes 3 a minute.
        let h = fresh();
        let _s = chat(&h, model, tier);
        assert_eq!(h.replied(), None, "{model} {tier}");
    }
}

#[test]
fn a_fallbacks_limits_bind_its_model_even_when_the_first_backend_could_serve() {
    // `gpt-4o` is Azure's; were Anthropic its fallback, a request Anthropic
    // cannot take would be refused up front rather than fail over into a 400.
    let mut json = with_providers();
    json["fallbacks"] = serde_json::json!({
        "far/llama": [{"provider": "anthropic", "model": "claude-haiku-4-5"}]
    });
    let h = Harness::with_config(Config::from_json(json.to_string().as_bytes()).unwrap());
    h.chat(r#"{"model":"far/llama","max_tokens":5,"tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"x"}]}"#);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("tools"))
    );
    assert_eq!(h.used(REQ), 0);
}

#[test]
fn a_stream_the_gateway_cannot_read_ends_in_an_error_event() {
    let h = harness();
    let mut s = h.chat(r#"{"model":"claude","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#);
    let mut b = attempt(&h, "anthropic");
    respond_headers(&h, &mut s, &mut b, 200, "text/event-stream");
    let out = respond_streamed(&h, &mut s, &mut b, &["data: {not an event}\n\n"]);
    assert!(out.contains("bad_upstream_response"), "{out}");
    assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
    // Nothing was reported: the request is charged by estimate.
    assert_eq!(h.audit()["usage"], "estimated");
}

#[test]
fn a_second_attempt_goes_out_as_its_own_providers_request_and_is_charged_once() {
    let h = harness();
    *h.host.code_details.borrow_mut() = Some("via_upstream".into());
    let mut s =
        h.chat(r#"{"model":"claude","max_tokens":20,"messages":[{"role":"user","content":"Hi"}]}"#);
    let forwarded = h.host.request_body.borrow().clone();

    // Attempt 1: Anthropic, whose key Envoy injects after the backend role.
    let mut first = attempt(&h, "anthropic");
    h.host
        .set_request_header("x-api-key", Some("sk-ant-gateway"));
    set_response_headers(&h, 529, "application/json");
    assert_eq!(first.on_response_headers(&h.host, false), Flow::Pause);
    let overloaded =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    *h.host.response_chunk.borrow_mut() = overloaded.as_bytes().to_vec();
    first.on_response_body(&h.host, overloaded.len(), true);
    // Envoy's retry policy sees 503 and tries the next backend; the client
    // never sees this answer.
    assert_eq!(header(&h, ":status").as_deref(), Some("503"));

    // Attempt 2: the same header map, a fresh copy of the forwarded body.
    *h.host.request_body.borrow_mut() = forwarded;
    let mut second = attempt(&h, "vllm-far");
    let hdr = |n: &str| h.host.request_header(n);
    assert_eq!(
        hdr("x-api-key"),
        None,
        "attempt 1's provider key must not reach attempt 2's provider"
    );
    assert_eq!(hdr("anthropic-version"), None);
    assert_eq!(hdr(":path").as_deref(), Some("/v1/chat/completions"));
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["model"], "qwen3-32b");
    assert_eq!(sent["messages"][0]["content"], "Hi");

    h.host.attempts.set(Some(2));
    assert_eq!(
        respond_headers(&h, &mut s, &mut second, 200, "application/json"),
        Flow::Continue
    );
    let answer = r#"{"id":"c1","object":"chat.completion","model":"qwen3-32b","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
    *h.host.response_chunk.borrow_mut() = answer.as_bytes().to_vec();
    assert_eq!(
        second.on_response_body(&h.host, answer.len(), true),
        Flow::Continue
    );
    s.on_response_body(&h.host, answer.len(), true);
    s.on_log(&h.host);

    assert_eq!(
        h.used(TOK),
        11,
        "charged once, for the attempt that answered"
    );
    assert_eq!(h.used(REQ), 1);
    let audit = h.audit();
    assert_eq!(audit["backend"], "vllm-far");
    assert_eq!(audit["attempts"], 2);
    assert_eq!(audit["status"], 200);
    let m = |p: &str, c: &str| {
        h.metric(&format!(
            "maas.provider_responses_total.provider=.={p};.;status=.={c};.;"
        ))
    };
    assert_eq!((m("anthropic", "5xx"), m("vllm-far", "2xx")), (1, 1));
}

#[test]
fn external_models_go_out_under_their_providers_name_and_path() {
    let h = harness();
    let _azure = h.request(
        "POST",
        "/v1/chat/completions?debug=1",
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("api-key", "sk-client-supplied"),
            ("openai-organization", "org-someone-else"),
            ("openai-project", "proj-someone-else"),
        ],
        r#"{"model":"gpt-4o","max_tokens":10,"messages":[]}"#,
    );
    assert!(h.replied().is_none());
    let hdr = |n: &str| h.host.request_header(n);
    assert_eq!(hdr("x-maas-model").as_deref(), Some("gpt-4o"));
    assert_eq!(
        hdr("api-key"),
        None,
        "a client's provider credential is dropped"
    );
    assert_eq!(hdr("authorization"), None);
    let _b = attempt(&h, "azure-east");
    for account in ["openai-organization", "openai-project"] {
        assert_eq!(
            hdr(account),
            None,
            "the operator's account pays, not one a client names"
        );
    }
    assert_eq!(
        hdr(":path").as_deref(),
        Some("/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21")
    );
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["model"], "gpt-4o-prod");
    // Under the field Azure reads.
    assert_eq!(sent["max_completion_tokens"], 10, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    assert_eq!(
        h.host.request_body.borrow().len().to_string(),
        hdr("content-length").unwrap()
    );
    assert_eq!(
        hdr("x-maas-user"),
        None,
        "our caller's identity is no provider's business"
    );

    let h = harness();
    let _vllm = h.request(
        "POST",
        "/v1/completions?access_token=eyJ.secret",
        &[("authorization", &format!("Bearer {KEY}"))],
        r#"{"model":"far/llama","max_tokens":10,"prompt":"hi"}"#,
    );
    assert!(h.replied().is_none());
    assert_eq!(
        h.host.request_header("x-maas-model").as_deref(),
        Some("far/llama")
    );
    let _b = attempt(&h, "vllm-far");
    // An OpenAI-compatible provider keeps the gateway's path, without the
    // client's query string.
    assert_eq!(
        h.host.request_header(":path").as_deref(),
        Some("/v1/completions")
    );
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["model"], "meta-llama/Llama-3.1-8B-Instruct");

    // The subscription decides as for a local model.
    let h = harness();
    let _refused = h.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-metered")],
        r#"{"model":"gpt-4o","max_tokens":10}"#,
    );
    assert_eq!(h.replied().unwrap().0, 404);
}

#[test]
fn a_model_a_provider_is_not_configured_for_is_answered_502_by_the_backend_role() {
    let h = harness();
    let _s = h.chat(r#"{"model":"m1","max_tokens":5,"messages":[]}"#);
    let doc = BackendConfig::document_for(&h.config, "anthropic").unwrap();
    let mut b = BackendStream::new(Rc::new(
        BackendConfig::from_json(doc.to_string().as_bytes()).unwrap(),
    ));
    b.on_request_headers(&h.host, false);
    let len = h.host.request_body.borrow().len();
    assert_eq!(b.on_request_body(&h.host, len, true), Flow::Pause);
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("provider_not_configured"))
    );
}

#[test]
fn a_provider_cannot_tell_the_gateway_role_what_it_was_charged_for() {
    let h = harness();
    *h.host.code_details.borrow_mut() = Some("via_upstream".into());
    let mut s = h.chat(r#"{"model":"far/llama","max_tokens":5,"messages":[]}"#);
    let mut b = attempt(&h, "vllm-far");
    // A 200 without usage, claiming to be a refusal that cost nothing.
    set_response_headers(&h, 200, "application/json");
    h.host
        .response_headers
        .borrow_mut()
        .push(("x-maas-provider-status".into(), "400".into()));
    assert_eq!(b.on_response_headers(&h.host, false), Flow::Continue);
    assert_eq!(header(&h, "x-maas-provider-status"), None);
    s.on_response_headers(&h.host, false);
    let answer = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}"#;
    *h.host.response_chunk.borrow_mut() = answer.as_bytes().to_vec();
    assert_eq!(
        b.on_response_body(&h.host, answer.len(), true),
        Flow::Continue
    );
    s.on_response_body(&h.host, answer.len(), true);
    s.on_log(&h.host);
    // Charged by estimate, as any answer without usage.
    assert_eq!(h.audit()["usage"], "estimated");
    assert!(h.used(TOK) > 0);
}

#[test]
fn a_client_cannot_choose_the_endpoint_a_provider_runs() {
    let h = harness();
    let _s = h.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("x-maas-path", "/v1/batches/batch_1/cancel"),
        ],
        r#"{"model":"far/llama","max_tokens":5,"messages":[]}"#,
    );
    assert!(h.replied().is_none());
    let hdr = |n: &str| h.host.request_header(n);
    assert_eq!(hdr("x-maas-path"), None, "the gateway role drops it");
    // Nor does the backend role believe one that reached it some other way.
    h.host
        .set_request_header("x-maas-path", Some("/v1/batches/batch_1/cancel"));
    let _b = attempt(&h, "vllm-far");
    assert_eq!(hdr(":path").as_deref(), Some("/v1/chat/completions"));
    assert_eq!(hdr("x-maas-path"), None, "and it never reaches a provider");
}

#[test]
fn the_backend_role_sends_nothing_but_completions_to_a_provider() {
    let h = harness();
    for (method, path) in [
        ("POST", "/v1/batches/batch_1/cancel"),
        ("POST", "/v1/files"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/far/llama"),
        ("GET", "/v1/chat/completions"),
    ] {
        *h.host.request_headers.borrow_mut() = vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
        ];
        h.host.state.borrow_mut().clear();
        // Even one the gateway role had admitted as a completion.
        h.host.set_request_state(ADMITTED_STATE, "far/llama");
        *h.host.reply.borrow_mut() = None;
        let mut b = backend(&h, "vllm-far");
        assert_eq!(b.on_request_headers(&h.host, false), Flow::Pause, "{path}");
        let (status, _, body) = h.replied().unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("unknown_url")),
            "{method} {path}"
        );
        assert_eq!(b.on_request_body(&h.host, 0, true), Flow::Continue);
    }
}

#[test]
fn the_backend_role_sends_nothing_the_gateway_role_did_not_admit() {
    // A client's own `x-maas-model` reaching a provider's cluster with the
    // gateway role missing from the listener: the credential injector
    // would add the operator's key.
    let h = harness();
    *h.host.request_headers.borrow_mut() = vec![
        (":method".into(), "POST".into()),
        (":path".into(), "/v1/chat/completions".into()),
        ("x-maas-model".into(), "far/llama".into()),
    ];
    let body = r#"{"model":"far/llama","max_tokens":5,"messages":[]}"#;
    *h.host.request_body.borrow_mut() = body.as_bytes().to_vec();
    let mut b = backend(&h, "vllm-far");
    assert_eq!(b.on_request_headers(&h.host, false), Flow::Pause);
    let (status, _, error) = h.replied().unwrap();
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (500, Some("not_admitted"))
    );
    assert_eq!(b.on_request_body(&h.host, body.len(), true), Flow::Continue);
    assert_eq!(
        h.host.request_body.borrow().as_slice(),
        body.as_bytes(),
        "the body is not made the provider's"
    );
    // Admitted by the gateway role, the same request goes out.
    let h = harness();
    let _s = h.chat(body);
    assert!(h.replied().is_none());
    let _b = attempt(&h, "vllm-far");
    assert!(h.replied().is_none());
}

#[test]
fn a_model_id_with_a_slash_can_be_retrieved() {
    let h = harness();
    let _s = h.request(
        "GET",
        "/v1/models/far/llama",
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    );
    let (status, _, body) = h.replied().unwrap();
    assert_eq!((status, body["id"].as_str()), (200, Some("far/llama")));
    let _s = h.request(
        "GET",
        "/v1/models/far/other",
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    );
    let (status, _, body) = h.replied().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[test]
fn a_cap_the_gateway_adds_goes_into_the_field_the_backend_reads() {
    // (model, path, the field a body without one gets)
    let cases = [
        ("gpt-4o", "/v1/chat/completions", "max_completion_tokens"),
        ("gpt-4o", "/v1/completions", "max_tokens"),
        ("far/llama", "/v1/chat/completions", "max_tokens"),
        ("m1", "/v1/chat/completions", "max_tokens"),
    ];
    for (model, path, field) in cases {
        let h = harness();
        let body = format!(r#"{{"model":"{model}","messages":[],"prompt":"hi"}}"#);
        let body = if path == "/v1/completions" {
            format!(r#"{{"model":"{model}","prompt":"hi"}}"#)
        } else {
            body.replace(r#","prompt":"hi""#, "")
        };
        let _s = h.request(
            "POST",
            path,
            &[("authorization", &format!("Bearer {KEY}"))],
            &body,
        );
        assert!(h.replied().is_none(), "{model} {path}");
        let sent: serde_json::Value =
            serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
        let other = if field == "max_tokens" {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        assert_eq!(sent[field], 100, "{model} {path}: {sent}");
        assert!(sent.get(other).is_none(), "{model} {path}: {sent}");
    }
}

#[test]
fn each_attempt_carries_the_budget_in_the_field_its_provider_reads() {
    // A server that knows only `max_tokens` would ignore a budget under the
    // other name and generate past the reservation.
    let h = harness();
    let _s = h.chat(
        r#"{"model":"far/llama","max_completion_tokens":5,"messages":[{"role":"user","content":"Hi"}]}"#,
    );
    assert!(h.replied().is_none());
    let _b = attempt(&h, "vllm-far");
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["max_tokens"], 5, "{sent}");
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    assert_eq!(
        h.host.request_body.borrow().len().to_string(),
        h.host.request_header("content-length").unwrap()
    );

    // A fallback whose provider reads the other field than the first
    // backend's: the gateway wrote the cap under the first one's field, the
    // fallback's attempt gets it under its own.
    let mut json = with_providers();
    json["fallbacks"]["gpt-4o"] =
        serde_json::json!([{"provider": "vllm-far", "model": "qwen3-32b"}]);
    let h = Harness::with_config(Config::from_json(json.to_string().as_bytes()).unwrap());
    let _s = h.chat(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}"#);
    assert!(h.replied().is_none());
    let forwarded = h.host.request_body.borrow().clone();
    let _first = attempt(&h, "azure-east");
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["max_completion_tokens"], 100, "{sent}");
    *h.host.request_body.borrow_mut() = forwarded;
    let _second = attempt(&h, "vllm-far");
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["max_tokens"], 100, "{sent}");
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");

    // The legacy endpoint knows only `max_tokens`, Azure's included.
    let h = harness();
    let _s = h.request(
        "POST",
        "/v1/completions",
        &[("authorization", &format!("Bearer {KEY}"))],
        r#"{"model":"gpt-4o","max_completion_tokens":7,"prompt":"hi"}"#,
    );
    assert!(h.replied().is_none());
    let _b = attempt(&h, "azure-east");
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["max_tokens"], 7, "{sent}");
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
}

#[test]
fn only_the_gateways_own_model_servers_get_their_key() {
    let mut json = with_providers();
    json["model_server_api_key"] = serde_json::json!("maas-model-server-0123456789");
    json["fallbacks"]["m1"] =
        serde_json::json!([{"provider": "anthropic", "model": "claude-haiku-4-5"}]);
    let h = Harness::with_config(Config::from_json(json.to_string().as_bytes()).unwrap());
    let bearer = Some("Bearer maas-model-server-0123456789".to_string());

    // A local model: the client's key is taken off, the server's put on.
    let _local =
        h.chat(r#"{"model":"m1","max_tokens":5,"messages":[{"role":"user","content":"Hi"}]}"#);
    assert!(h.replied().is_none());
    assert_eq!(h.host.request_header("authorization"), bearer);
    // Its fallback, on the same header map: the provider never sees it.
    let _fallback = attempt(&h, "anthropic");
    assert_eq!(h.host.request_header("authorization"), None);

    // An external model: nothing of the model servers' goes out.
    for model in ["gpt-4o", "far/llama"] {
        let _external = h.chat(&format!(
            r#"{{"model":"{model}","max_tokens":5,"messages":[{{"role":"user","content":"Hi"}}]}}"#
        ));
        assert!(h.replied().is_none(), "{model}: {:?}", h.replied());
        assert_eq!(h.host.request_header("authorization"), None, "{model}");
    }
}
