//! Anthropic's Messages API as the mock speaks it (`POST /v1/messages`),
//! for the gateway's translation tests: the request as Anthropic reads it
//! (`max_tokens` required, the `anthropic-version` header required), the
//! response as Anthropic writes it (a `message` object, or the event stream
//! `message_start` … `message_stop` with a `ping`), and its error shape.
//! The completion is planned as the OpenAI side plans it (`tok ` per
//! token, `x-mock-*` headers), so one test can compare the two.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::behaviour::{Behaviour, DEFAULT_COMPLETION_TOKENS};
use super::openai::{StreamEvents, TOKEN_TEXT};

/// The header Anthropic requires on every request.
pub const VERSION_HEADER: &str = "anthropic-version";

/// The fields of a Messages request the mock acts on.
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: u64,
    #[serde(default)]
    pub system: Option<Value>,
    pub messages: Vec<Value>,
    #[serde(default)]
    pub stream: bool,
}

impl MessagesRequest {
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Words of the system prompt and every message, plus 3 per message, at
    /// least 1 (the OpenAI side's estimate, so both count a prompt alike).
    fn estimated_prompt_tokens(&self) -> u64 {
        let words = |v: &Value| -> u64 {
            match v {
                Value::String(text) => text.split_whitespace().count() as u64,
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .map(|t| t.split_whitespace().count() as u64)
                    .sum(),
                _ => 0,
            }
        };
        let system = self.system.as_ref().map_or(0, words);
        let messages: u64 = self
            .messages
            .iter()
            .map(|m| 3 + m.get("content").map_or(0, words))
            .sum();
        (system + messages).max(1)
    }
}

/// One planned Messages completion.
#[derive(Debug, Clone)]
pub struct Message {
    id: String,
    model: String,
    input_tokens: u64,
    output_tokens: u64,
    stop_reason: &'static str,
}

impl Message {
    pub fn plan(request: &MessagesRequest, behaviour: &Behaviour, serial: u64) -> Self {
        let wanted = behaviour
            .completion_tokens
            .unwrap_or(DEFAULT_COMPLETION_TOKENS);
        let (output_tokens, stop_reason) = if request.max_tokens < wanted {
            (request.max_tokens, "max_tokens")
        } else {
            (wanted, "end_turn")
        };
        Self {
            id: format!("msg_mock_{serial}"),
            model: request.model.clone(),
            input_tokens: behaviour
                .prompt_tokens
                .unwrap_or_else(|| request.estimated_prompt_tokens()),
            output_tokens,
            stop_reason,
        }
    }

    /// The whole `message` body.
    pub fn body(&self) -> Bytes {
        Bytes::from(
            json!({
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [{ "type": "text", "text": TOKEN_TEXT.repeat(self.output_tokens as usize) }],
                "stop_reason": self.stop_reason,
                "stop_sequence": null,
                "usage": { "input_tokens": self.input_tokens, "output_tokens": self.output_tokens },
            })
            .to_string(),
        )
    }

    /// The event stream, in the frames the OpenAI side uses: the first
    /// content frame also opens the message and its text block (and has a
    /// `ping`), the finish frame closes the block and reports the stop
    /// reason and output tokens, and `message_stop` ends it.
    pub fn stream(&self) -> StreamEvents {
        let delta = event(
            "content_block_delta",
            json!({ "index": 0, "delta": { "type": "text_delta", "text": TOKEN_TEXT } }),
        );
        let mut first = event(
            "message_start",
            json!({ "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": { "input_tokens": self.input_tokens, "output_tokens": 1 },
            } }),
        );
        first.extend(event(
            "content_block_start",
            json!({ "index": 0, "content_block": { "type": "text", "text": "" } }),
        ));
        first.extend(event("ping", json!({})));
        first.extend(&delta);
        let mut finish = event("content_block_stop", json!({ "index": 0 }));
        finish.extend(event(
            "message_delta",
            json!({
                "delta": { "stop_reason": self.stop_reason, "stop_sequence": null },
                "usage": { "output_tokens": self.output_tokens },
            }),
        ));
        StreamEvents::new(
            Bytes::from(first),
            Bytes::from(delta),
            Bytes::from(finish),
            None,
            Bytes::from(event("message_stop", json!({}))),
            self.output_tokens,
        )
    }
}

/// One `event:`/`data:` pair; `fields` gets the event's `type`.
fn event(kind: &str, mut fields: Value) -> Vec<u8> {
    fields["type"] = Value::from(kind);
    format!("event: {kind}\ndata: {fields}\n\n").into_bytes()
}

/// Anthropic's error body for `status` (its documented error types).
pub fn error_body(status: u16, message: &str) -> Bytes {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    Bytes::from(
        json!({ "type": "error", "error": { "type": kind, "message": message }, "request_id": "req_mock" })
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> MessagesRequest {
        MessagesRequest::parse(body.to_string().as_bytes()).expect("valid request")
    }

    #[test]
    fn max_tokens_is_required_and_caps_the_message() {
        assert!(MessagesRequest::parse(br#"{"model":"c","messages":[]}"#).is_err());
        let plan = Message::plan(
            &request(
                json!({"model": "c", "max_tokens": 3, "messages": [{"role": "user", "content": "a b"}]}),
            ),
            &Behaviour::default(),
            1,
        );
        let body: Value = serde_json::from_slice(&plan.body()).unwrap();
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(body["content"][0]["text"], "tok tok tok ");
        assert_eq!(
            body["usage"],
            json!({"input_tokens": 5, "output_tokens": 3})
        );
    }

    #[test]
    fn a_stream_opens_reports_and_stops() {
        let plan = Message::plan(
            &request(
                json!({"model": "c", "max_tokens": 50, "system": "be brief", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
            ),
            &Behaviour {
                completion_tokens: Some(2),
                ..Behaviour::default()
            },
            1,
        );
        let events = plan.stream();
        let mut all = events.content(0).to_vec();
        all.extend(events.content(1).iter());
        all.extend(events.finish.iter());
        all.extend(events.done.iter());
        let text = String::from_utf8(all).unwrap();
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains(r#""input_tokens":6"#), "{text}");
        assert!(text.contains(r#""output_tokens":2"#), "{text}");
    }

    #[test]
    fn errors_have_anthropics_shape() {
        let body: Value = serde_json::from_slice(&error_body(529, "Overloaded")).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "overloaded_error");
    }
}
