//! Models served by external providers: the request goes out under the
//! provider's name, path and (for Anthropic) wire format, and what comes
//! back is OpenAI's again before it is read, charged and forwarded.

use super::*;

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
    json["subscriptions"]["free"]["models"] =
        serde_json::json!(["m1", "gpt-4o", "far/llama", "claude"]);
    json
}

fn harness() -> Harness {
    Harness::with_config(Config::from_json(with_providers().to_string().as_bytes()).unwrap())
}

fn header(h: &Harness, name: &str) -> Option<String> {
    h.host
        .response_headers
        .borrow()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn respond_headers(h: &Harness, s: &mut Stream, status: u32, content_type: &str) -> Flow {
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), status.to_string()),
        ("content-type".into(), content_type.into()),
        ("content-length".into(), "999".into()),
    ];
    s.on_response_headers(&h.host, false)
}

/// Plays a held (buffered) body as Envoy does: Buffer until the end, then
/// the whole body once.
fn respond_held(h: &Harness, s: &mut Stream, body: &str) -> Vec<u8> {
    let (first, _) = body.split_at(body.len() / 2);
    *h.host.response_chunk.borrow_mut() = first.as_bytes().to_vec();
    assert_eq!(
        s.on_response_body(&h.host, first.len(), false),
        Flow::Buffer
    );
    *h.host.response_chunk.borrow_mut() = body.as_bytes().to_vec();
    assert_eq!(
        s.on_response_body(&h.host, body.len(), true),
        Flow::Continue
    );
    s.on_log(&h.host);
    h.host.response_chunk.borrow().clone()
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
        ],
        r#"{"model":"claude","max_tokens":10,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#,
    );
    assert!(h.replied().is_none());
    let hdr = |n: &str| h.host.request_header(n);
    assert_eq!(hdr(":path").as_deref(), Some("/v1/messages"));
    assert_eq!(hdr("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(hdr("accept-encoding"), None);
    assert_eq!(
        hdr("x-api-key"),
        None,
        "only Envoy's injected credential goes out"
    );
    assert_eq!(hdr("x-maas-model").as_deref(), Some("claude"));
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "system": "Be brief.",
                           "messages": [{"role": "user", "content": "Hi"}]})
    );

    assert_eq!(
        respond_headers(&h, &mut s, 200, "application/json"),
        Flow::Pause
    );
    let out = respond_held(&h, &mut s, CLAUDE_ANSWER);
    let answer: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "claude");
    assert_eq!(answer["choices"][0]["message"]["content"], "Bonjour");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(header(&h, "content-length"), Some(out.len().to_string()));
    assert_eq!(header(&h, ":status").as_deref(), Some("200"));
    // Charged what the provider reported, cache reads included.
    assert_eq!(h.used(TOK), 18);
    assert_eq!(h.audit()["usage"], "reported");
}

#[test]
fn an_anthropic_stream_is_translated_and_its_usage_charged_and_stripped() {
    let h = harness();
    let mut s = h.chat(r#"{"model":"claude","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#);
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["stream"], true);
    assert!(sent.get("stream_options").is_none(), "{sent}");
    assert_eq!(
        respond_headers(&h, &mut s, 200, "text/event-stream"),
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
    let mut seen = Vec::new();
    for (i, chunk) in events.iter().enumerate() {
        *h.host.response_chunk.borrow_mut() = chunk.as_bytes().to_vec();
        let last = i + 1 == events.len();
        assert_eq!(
            s.on_response_body(&h.host, chunk.len(), last),
            Flow::Continue
        );
        seen.extend(h.host.response_chunk.borrow().iter());
    }
    s.on_log(&h.host);
    let text = String::from_utf8(seen).unwrap();
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
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            502,
            "provider_credential_rejected",
        ),
        (
            "claude",
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            503,
            "provider_overloaded",
        ),
        (
            "far/llama",
            429,
            r#"{"error":{"message":"slow down","type":"rate_limit","code":null}}"#,
            429,
            "provider_rate_limited",
        ),
        (
            "gpt-4o",
            403,
            r#"{"error":{"code":"PermissionDenied","message":"denied"}}"#,
            502,
            "provider_credential_rejected",
        ),
        ("claude", 500, "<html>oops</html>", 502, "provider_error"),
    ];
    for (model, status, body, client_status, code) in cases {
        let h = harness();
        *h.host.code_details.borrow_mut() = Some("via_upstream".into());
        let mut s = h.chat(&format!(
            r#"{{"model":"{model}","max_tokens":5,"messages":[{{"role":"user","content":"x"}}]}}"#
        ));
        assert_eq!(
            respond_headers(&h, &mut s, status, "application/json"),
            Flow::Pause
        );
        let out = respond_held(&h, &mut s, body);
        let error: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(error["error"]["code"], code, "{model} {status}");
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

#[test]
fn a_stream_the_gateway_cannot_read_ends_in_an_error_event() {
    let h = harness();
    let mut s = h.chat(r#"{"model":"claude","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#);
    respond_headers(&h, &mut s, 200, "text/event-stream");
    let chunk = "data: {not an event}\n\n";
    *h.host.response_chunk.borrow_mut() = chunk.as_bytes().to_vec();
    s.on_response_body(&h.host, chunk.len(), true);
    s.on_log(&h.host);
    let out = String::from_utf8(h.host.response_chunk.borrow().clone()).unwrap();
    assert!(out.contains("bad_upstream_response"), "{out}");
    assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
    // Nothing was reported: the request is charged by estimate.
    assert_eq!(h.audit()["usage"], "estimated");
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
        ],
        r#"{"model":"gpt-4o","max_tokens":10,"messages":[]}"#,
    );
    assert!(h.replied().is_none());
    let hdr = |n: &str| h.host.request_header(n);
    assert_eq!(hdr("x-maas-model").as_deref(), Some("gpt-4o"));
    assert_eq!(
        hdr(":path").as_deref(),
        Some("/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21")
    );
    assert_eq!(
        hdr("api-key"),
        None,
        "a client's provider credential is dropped"
    );
    assert_eq!(hdr("authorization"), None);
    let sent: serde_json::Value = serde_json::from_slice(&h.host.request_body.borrow()).unwrap();
    assert_eq!(sent["model"], "gpt-4o-prod");
    assert_eq!(sent["max_tokens"], 10);
    assert_eq!(
        h.host.request_body.borrow().len().to_string(),
        hdr("content-length").unwrap()
    );

    let h = harness();
    let _vllm = h.request(
        "POST",
        "/v1/completions",
        &[("authorization", &format!("Bearer {KEY}"))],
        r#"{"model":"far/llama","max_tokens":10,"prompt":"hi"}"#,
    );
    assert!(h.replied().is_none());
    assert_eq!(
        h.host.request_header("x-maas-model").as_deref(),
        Some("far/llama")
    );
    // An OpenAI-compatible provider keeps the gateway's path.
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
