use super::*;
use crate::openai::sse::SseUsageParser;
use crate::openai::usage::{parse_json_usage, Usage};

fn request(body: Value) -> Result<Value, ProviderError> {
    let bytes = serde_json::to_vec(&body).unwrap();
    to_messages_request(&bytes, "claude-sonnet-4-5")
        .map(|out| serde_json::from_slice(&out).unwrap())
}

fn refused_field(body: Value) -> (u32, Option<&'static str>, &'static str) {
    let e = request(body).unwrap_err();
    (e.status(), e.param(), e.code())
}

#[test]
fn a_chat_request_becomes_a_messages_request() {
    let out = request(json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": [{"type": "text", "text": "Why?"}, {"type": "text", "text": "Say."}]},
        ],
        "max_tokens": 64,
        "stop": "\n\nQ:",
        "temperature": 0.5,
        "top_k": 40,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "alice",
        "frequency_penalty": 1.0,
        "seed": 7,
        "n": 1,
        "tools": null,
        "response_format": {"type": "text"},
    }))
    .unwrap();
    assert_eq!(
        out,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "system": "Be brief.\n\nAnswer in French.",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Bonjour"},
                {"role": "user", "content": [{"type": "text", "text": "Why?"}, {"type": "text", "text": "Say."}]},
            ],
            "stop_sequences": ["\n\nQ:"],
            "temperature": 0.5,
            "top_k": 40,
            "stream": true,
            "metadata": {"user_id": "alice"},
        })
    );
}

#[test]
fn the_smaller_budget_is_the_providers_max_tokens_and_one_is_required() {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    let mut both = base.clone();
    both["max_tokens"] = 100.into();
    both["max_completion_tokens"] = 30.into();
    assert_eq!(request(both).unwrap()["max_tokens"], 30);
    let mut newer = base.clone();
    newer["max_completion_tokens"] = 12.into();
    assert_eq!(request(newer).unwrap()["max_tokens"], 12);
    assert_eq!(
        refused_field(base),
        (400, Some("max_tokens"), "invalid_value")
    );
}

#[test]
fn what_messages_cannot_express_is_refused_by_name() {
    let with = |field: &str, value: Value| {
        let mut body =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
        body[field] = value;
        body
    };
    let cases = [
        (with("n", 2.into()), "n"),
        (
            with(
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
            ),
            "tools",
        ),
        (with("functions", json!([{"name": "f"}])), "functions"),
        (with("logprobs", true.into()), "logprobs"),
        (with("top_logprobs", 3.into()), "top_logprobs"),
        (
            with(
                "response_format",
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
            ),
            "response_format",
        ),
        // Dropped, each would change the answer silently.
        (with("reasoning_effort", "high".into()), "reasoning_effort"),
        (with("web_search_options", json!({})), "web_search_options"),
        (with("verbosity", "low".into()), "verbosity"),
        (
            with("prediction", json!({"type": "content", "content": "x"})),
            "prediction",
        ),
    ];
    for (body, field) in cases {
        assert_eq!(
            refused_field(body),
            (400, Some(field), "unsupported_parameter"),
            "{field}"
        );
    }
    // Absent at their null, they pass.
    assert!(request(with("reasoning_effort", Value::Null)).is_ok());
    // Valid OpenAI that Anthropic refuses: refused here, by name, before a
    // fallback to this provider could turn it into the provider's 400.
    let invalid = [
        (with("temperature", 1.5.into()), "temperature"),
        (
            {
                let mut b = with("temperature", 0.5.into());
                b["top_p"] = 0.9.into();
                b
            },
            "top_p",
        ),
        (with("stop", "\n".into()), "stop"),
        (with("stop", json!(["END", ""])), "stop"),
        (
            with(
                "messages",
                json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure,"}]),
            ),
            "messages",
        ),
    ];
    for (body, field) in invalid {
        assert_eq!(
            refused_field(body),
            (400, Some(field), "invalid_value"),
            "{field}"
        );
    }
    assert!(request(with("temperature", 1.0.into())).is_ok());
    assert!(request(with("top_p", 0.9.into())).is_ok());
    // `top_p: 1` (no nucleus cut, many SDKs' default) beside a temperature
    // is left out, not refused.
    let mut both = with("temperature", 0.7.into());
    both["top_p"] = 1.0.into();
    let sent = request(both).unwrap();
    assert_eq!(
        (sent["temperature"].as_f64(), sent.get("top_p")),
        (Some(0.7), None)
    );
    let image = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    assert_eq!(
        refused_field(image),
        (400, Some("messages"), "unsupported_parameter")
    );
    let tool_result = json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "1", "content": "4"}]});
    assert_eq!(refused_field(tool_result).2, "unsupported_parameter");
}

#[test]
fn malformed_requests_get_clear_errors() {
    let cases = [
        json!({"model": "m", "max_tokens": 5}),
        json!({"model": "m", "max_tokens": 5, "messages": []}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "only"}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "narrator", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "stop": 3}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
    ];
    for body in cases {
        let e = request(body.clone()).unwrap_err();
        assert_eq!(e.status(), 400, "{body}: {e}");
        assert_eq!(e.error_type(), "invalid_request_error");
    }
    let twice = br#"{"model":"m","max_tokens":5,"max_tokens":500,"messages":[{"role":"user","content":"x"}]}"#;
    let e = to_messages_request(twice, "c").unwrap_err();
    assert!(
        e.to_string().contains("duplicate field `max_tokens`"),
        "{e}"
    );
}

const MESSAGE: &str = r#"{
  "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
  "type": "message",
  "role": "assistant",
  "content": [
    {"type": "thinking", "thinking": "Short answer.", "signature": "sig"},
    {"type": "text", "text": "Hello"},
    {"type": "text", "text": ", world"}
  ],
  "model": "claude-sonnet-4-5-20250929",
  "stop_reason": "max_tokens",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 12,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 1500,
    "output_tokens": 6,
    "service_tier": "standard"
  }
}"#;

#[test]
fn a_messages_response_becomes_a_chat_completion() {
    let out = to_chat_completion(MESSAGE.as_bytes(), "claude", 1_765_000_000).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude");
    assert_eq!(v["created"], 1_765_000_000u64);
    assert_eq!(v["id"], "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello, world");
    assert_eq!(
        v["choices"][0]["message"]["reasoning_content"],
        "Short answer."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1500);
    // The gateway's accounting reads the translated body as any other.
    assert_eq!(
        parse_json_usage(&out),
        Some(Usage::new(1612, 6, Some(1618)))
    );
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ] {
        assert_eq!(finish_reason(stop), finish);
    }
}

#[test]
fn an_unreadable_response_is_a_502_that_does_not_quote_it() {
    for body in [&b"{\"secret text"[..], b"[]", b"{\"id\":\"x\"}"] {
        let e = to_chat_completion(body, "m", 0).unwrap_err();
        assert_eq!(e.status(), 502);
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}

/// Anthropic's documented example stream, with a thinking block and CRLF
/// endings on some lines.
const STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\n\
\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Greet.\"}}\n\
\n\
event: content_block_start\r\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\
\r\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"! \\u00e9t\u{e9}\"}}\n\
\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\
\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\
\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\
\n";

fn translate(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut t = StreamTranslator::new("claude", 7, 64 * 1024);
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(t.feed(chunk).unwrap());
    }
    out.extend(t.finish().unwrap());
    (out, t.stopped())
}

/// The `data` values of an OpenAI stream, parsed (`[DONE]` as a string).
fn events(stream: &[u8]) -> Vec<Value> {
    std::str::from_utf8(stream)
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").unwrap();
            serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string()))
        })
        .collect()
}

#[test]
fn a_stream_becomes_openai_chunks_with_usage_and_done() {
    let (out, stopped) = translate(&[STREAM.as_bytes()]);
    assert!(stopped);
    let events = events(&out);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello! été");
    let thinking: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(thinking, "Greet.");
    let finishes: Vec<_> = events
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finishes, ["stop"]);
    for event in &events[..events.len() - 1] {
        assert_eq!(event["id"], "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
        assert_eq!(event["model"], "claude");
        assert_eq!(event["object"], "chat.completion.chunk");
    }

    // The gateway's SSE accounting reads the translation as any stream.
    let mut parser = SseUsageParser::new(false, 64 * 1024);
    assert!(parser.feed(&out).is_none());
    parser.finish();
    assert_eq!(parser.usage(), Some(Usage::new(35, 15, Some(50))));
    assert!(parser.saw_done());
}

/// A response or stream that reports no output count gets no usage: the
/// gateway estimates it rather than charging a reported zero (or the one
/// token `message_start` holds in place of the count).
#[test]
fn no_reported_count_is_no_usage() {
    let mut message: Value = serde_json::from_str(MESSAGE).unwrap();
    message["usage"] = json!({"input_tokens": 12});
    let out = to_chat_completion(message.to_string().as_bytes(), "claude", 1).unwrap();
    assert_eq!(parse_json_usage(&out), None);
    message.as_object_mut().unwrap().remove("usage");
    let out = to_chat_completion(message.to_string().as_bytes(), "claude", 1).unwrap();
    assert_eq!(parse_json_usage(&out), None);
    let no_delta: String = STREAM
        .split("event: message_delta")
        .next()
        .unwrap()
        .to_string()
        + "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (out, stopped) = translate(&[no_delta.as_bytes()]);
    assert!(stopped);
    let mut parser = SseUsageParser::new(false, 64 * 1024);
    assert!(parser.feed(&out).is_none());
    parser.finish();
    assert_eq!(parser.usage(), None, "{}", String::from_utf8_lossy(&out));
    assert!(parser.saw_done());
}

#[test]
fn chunking_does_not_change_the_translation() {
    let (whole, _) = translate(&[STREAM.as_bytes()]);
    let bytes: Vec<&[u8]> = STREAM.as_bytes().chunks(1).collect();
    assert_eq!(translate(&bytes).0, whole);
    for size in [2, 3, 7, 64, 100] {
        let pieces: Vec<&[u8]> = STREAM.as_bytes().chunks(size).collect();
        assert_eq!(translate(&pieces).0, whole, "chunks of {size}");
    }
    // All-CRLF and all-CR endings, split between the CR and the LF.
    let crlf = STREAM.replace("\r\n", "\n").replace('\n', "\r\n");
    let pieces: Vec<&[u8]> = crlf.as_bytes().chunks(5).collect();
    assert_eq!(translate(&pieces).0, whole);
    // An empty chunk between the CR and the LF of one line ending.
    let at = crlf.find("\r\n").unwrap() + 1;
    let (head, tail) = crlf.as_bytes().split_at(at);
    assert_eq!(translate(&[head, b"", tail]).0, whole);
    let cr = STREAM.replace("\r\n", "\n").replace('\n', "\r");
    assert_eq!(translate(&[cr.as_bytes()]).0, whole);
}

#[test]
fn a_stream_error_becomes_an_openai_error_event() {
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":3}}}\n\n\
event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (out, stopped) = translate(&[stream.as_bytes()]);
    assert!(stopped);
    let events = events(&out);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let error = &events[events.len() - 2]["error"];
    assert_eq!(error["code"], "provider_overloaded");
    assert!(error["message"].as_str().unwrap().contains("Overloaded"));
}

#[test]
fn a_cut_stream_is_not_finished_for_it() {
    let cut = &STREAM[..STREAM.find("event: message_delta").unwrap()];
    let (out, stopped) = translate(&[cut.as_bytes()]);
    assert!(!stopped);
    let events = events(&out);
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert!(!events.iter().any(|e| e.get("usage").is_some()));
}

#[test]
fn a_stream_that_is_not_anthropics_is_refused_not_forwarded() {
    let mut t = StreamTranslator::new("m", 0, 1024);
    let e = t.feed(b"data: {not json}\n\n").unwrap_err();
    assert_eq!(e.status(), 502);
    let mut t = StreamTranslator::new("m", 0, 16);
    let e = t.feed(&[b'x'; 40]).unwrap_err();
    assert!(e.to_string().contains("longer than 16 bytes"), "{e}");
    let mut t = StreamTranslator::new("m", 0, 16);
    let e = t.feed(b"data: 0123456789\ndata: 0123456789\n").unwrap_err();
    assert_eq!(e.status(), 502);
}
