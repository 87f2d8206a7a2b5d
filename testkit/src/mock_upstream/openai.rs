//! The OpenAI wire shapes the mock reads and writes.
//!
//! Requests are parsed once into [`CompletionRequest`]; responses are built
//! from a [`Completion`] plan so the non-streaming body, the stream chunks and
//! the usage numbers always agree with each other.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::behaviour::{Behaviour, DEFAULT_COMPLETION_TOKENS};

/// The text of every generated token; a test can count tokens in a body by
/// counting this.
pub const TOKEN_TEXT: &str = "tok ";

/// The model the mock reports when the request names none, and lists on `/v1/models`.
pub const MOCK_MODEL: &str = "mock-model";

/// Which OpenAI endpoint a request came in on; it decides the object names
/// and where generated text goes (`message`/`delta` vs `text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
}

/// The fields of a chat or text completion request the mock acts on. Unknown
/// fields are ignored: real clients send many the mock has no use for.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub messages: Option<Vec<Message>>,
    /// A string, a list of strings, or token arrays; kept loose on purpose.
    pub prompt: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Message {
    /// A string or a list of content parts; kept loose on purpose.
    pub content: Option<Value>,
}

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    pub fn streams(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|options| options.include_usage)
            .unwrap_or(false)
    }

    /// The client's output cap. When both spellings are present the smaller wins,
    /// which is the cap a careful server would honour.
    pub fn max_tokens(&self) -> Option<u64> {
        match (self.max_tokens, self.max_completion_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A deterministic stand-in for tokenisation: whitespace-separated words,
    /// plus 3 per chat message for the role framing, at least 1.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        let mut tokens = 0;
        if let Some(messages) = &self.messages {
            for message in messages {
                tokens += 3 + message.content.as_ref().map_or(0, count_words);
            }
        }
        if let Some(prompt) = &self.prompt {
            tokens += count_words(prompt);
        }
        tokens.max(1)
    }
}

/// Words in every string inside `value` (content parts, prompt lists); a bare
/// number is a pre-tokenised prompt token and counts as one.
fn count_words(value: &Value) -> u64 {
    match value {
        Value::String(text) => text.split_whitespace().count() as u64,
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(count_words).sum(),
        Value::Object(fields) => fields.values().map(count_words).sum(),
        Value::Null | Value::Bool(_) => 0,
    }
}

/// Everything needed to write the response, decided before the first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub finish_reason: &'static str,
    /// False when the test asked (`x-mock-omit-usage`) for a server that never reports usage.
    pub reports_usage: bool,
}

impl Completion {
    pub fn plan(
        endpoint: Endpoint,
        request: &CompletionRequest,
        behaviour: &Behaviour,
        serial: u64,
        created: u64,
    ) -> Self {
        let wanted = behaviour
            .completion_tokens
            .unwrap_or(DEFAULT_COMPLETION_TOKENS);
        let (completion_tokens, finish_reason) = match request.max_tokens() {
            Some(cap) if cap < wanted => (cap, "length"),
            _ => (wanted, "stop"),
        };
        let prefix = match endpoint {
            Endpoint::ChatCompletions => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        Self {
            endpoint,
            id: format!("{prefix}-mock-{serial}"),
            created,
            model: request.model.clone().unwrap_or_else(|| MOCK_MODEL.into()),
            prompt_tokens: behaviour
                .prompt_tokens
                .unwrap_or_else(|| request.estimated_prompt_tokens()),
            completion_tokens,
            finish_reason,
            reports_usage: !behaviour.omit_usage,
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    fn text(&self) -> String {
        TOKEN_TEXT.repeat(self.completion_tokens as usize)
    }

    /// The whole non-streaming response body.
    pub fn body(&self) -> Bytes {
        let (object, choice) = match self.endpoint {
            Endpoint::ChatCompletions => (
                "chat.completion",
                json!({
                    "index": 0,
                    "message": { "role": "assistant", "content": self.text() },
                    "logprobs": null,
                    "finish_reason": self.finish_reason,
                }),
            ),
            Endpoint::Completions => (
                "text_completion",
                json!({
                    "index": 0,
                    "text": self.text(),
                    "logprobs": null,
                    "finish_reason": self.finish_reason,
                }),
            ),
        };
        let mut body = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.reports_usage {
            body["usage"] = self.usage();
        }
        Bytes::from(body.to_string())
    }

    fn chunk_object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::ChatCompletions => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }

    /// One SSE event carrying `choice`. When the client asked for a usage chunk,
    /// every other chunk says `"usage": null`, as OpenAI does.
    fn event(&self, choices: Value, usage: Option<Value>, usage_requested: bool) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": self.chunk_object(),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        } else if usage_requested {
            chunk["usage"] = Value::Null;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    fn content_choice(&self, first: bool, finish_reason: Option<&str>) -> Value {
        let text = if finish_reason.is_some() {
            ""
        } else {
            TOKEN_TEXT
        };
        match self.endpoint {
            Endpoint::ChatCompletions => {
                let delta = match (first, finish_reason) {
                    (_, Some(_)) => json!({}),
                    (true, None) => json!({ "role": "assistant", "content": text }),
                    (false, None) => json!({ "content": text }),
                };
                json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }])
            }
            Endpoint::Completions => {
                json!([{ "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason }])
            }
        }
    }

    /// The events of a streamed response, built lazily by the sender. The
    /// content events after the first are identical, so they share one buffer.
    pub fn stream(&self, usage_requested: bool) -> StreamEvents {
        StreamEvents {
            first: self.event(self.content_choice(true, None), None, usage_requested),
            rest: self.event(self.content_choice(false, None), None, usage_requested),
            finish: self.event(
                self.content_choice(false, Some(self.finish_reason)),
                None,
                usage_requested,
            ),
            usage: (usage_requested && self.reports_usage)
                .then(|| self.event(json!([]), Some(self.usage()), true)),
            done: Bytes::from_static(StreamEvents::DONE),
            content_events: self.completion_tokens,
        }
    }
}

/// The pre-rendered SSE events of one streamed completion.
#[derive(Debug, Clone)]
pub struct StreamEvents {
    first: Bytes,
    rest: Bytes,
    /// The last choice chunk, carrying `finish_reason`.
    pub finish: Bytes,
    /// The usage chunk, when the client asked for it and the test did not omit it.
    pub usage: Option<Bytes>,
    /// The stream's last event (OpenAI's `data: [DONE]`).
    pub done: Bytes,
    pub content_events: u64,
}

impl StreamEvents {
    pub const DONE: &'static [u8] = b"data: [DONE]\n\n";

    /// The events of another API's stream in the same frames: `first` and
    /// `rest` content events, then `finish`, `usage` if any, and `done`.
    pub fn new(
        first: Bytes,
        rest: Bytes,
        finish: Bytes,
        usage: Option<Bytes>,
        done: Bytes,
        content_events: u64,
    ) -> Self {
        Self {
            first,
            rest,
            finish,
            usage,
            done,
            content_events,
        }
    }

    /// The `index`th content event (0-based).
    pub fn content(&self, index: u64) -> Bytes {
        if index == 0 {
            self.first.clone()
        } else {
            self.rest.clone()
        }
    }
}

/// An OpenAI-shaped error body.
pub fn error_body(message: &str, kind: &str, code: Option<&str>) -> Bytes {
    Bytes::from(json!({ "error": { "message": message, "type": kind, "code": code } }).to_string())
}

/// The `/v1/models` list: one model.
pub fn models_body() -> Bytes {
    Bytes::from(
        json!({
            "object": "list",
            "data": [{ "id": MOCK_MODEL, "object": "model", "created": 0, "owned_by": "maas-testkit" }],
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> CompletionRequest {
        CompletionRequest::parse(body.to_string().as_bytes()).expect("valid request")
    }

    #[test]
    fn prompt_estimate_counts_words_and_message_framing() {
        let cases = [
            (
                json!({ "messages": [{ "role": "user", "content": "hello there" }] }),
                5,
            ),
            (
                json!({ "messages": [
                    { "role": "system", "content": "be brief" },
                    { "role": "user", "content": [{ "type": "text", "text": "one two three" }] },
                ] }),
                // "text" is a value too: the part's type counts as a word.
                3 + 2 + 3 + 4,
            ),
            (json!({ "prompt": "a b c d" }), 4),
            (json!({ "prompt": ["a b", "c"] }), 3),
            (json!({ "prompt": [1, 2, 3] }), 3),
            (json!({ "prompt": "" }), 1),
            (json!({}), 1),
            (
                json!({ "messages": [{ "role": "assistant", "content": null }] }),
                3,
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                request(body.clone()).estimated_prompt_tokens(),
                expected,
                "{body}"
            );
        }
    }

    #[test]
    fn max_tokens_caps_the_completion() {
        let cases = [
            (json!({}), None, 16, "stop"),
            (json!({ "max_tokens": 5 }), None, 5, "length"),
            (json!({ "max_completion_tokens": 4 }), None, 4, "length"),
            (
                json!({ "max_tokens": 9, "max_completion_tokens": 4 }),
                None,
                4,
                "length",
            ),
            (json!({ "max_tokens": 100 }), Some(3), 3, "stop"),
            (json!({ "max_tokens": 3 }), Some(3), 3, "stop"),
            (json!({ "max_tokens": 0 }), None, 0, "length"),
        ];
        for (body, header, tokens, finish) in cases {
            let behaviour = Behaviour {
                completion_tokens: header,
                ..Behaviour::default()
            };
            let plan = Completion::plan(
                Endpoint::ChatCompletions,
                &request(body.clone()),
                &behaviour,
                1,
                0,
            );
            assert_eq!(
                (plan.completion_tokens, plan.finish_reason),
                (tokens, finish),
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_fields_are_rejected() {
        for body in [
            &b"{"[..],
            b"[]",
            br#"{"stream":"yes"}"#,
            br#"{"max_tokens":-1}"#,
        ] {
            assert!(
                CompletionRequest::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn chat_body_has_usage_and_content() {
        let plan = Completion::plan(
            Endpoint::ChatCompletions,
            &request(json!({ "model": "m1", "messages": [{ "role": "user", "content": "hi" }] })),
            &Behaviour {
                completion_tokens: Some(2),
                ..Behaviour::default()
            },
            7,
            42,
        );
        let body: Value = serde_json::from_slice(&plan.body()).expect("json");
        assert_eq!(
            body,
            json!({
                "id": "chatcmpl-mock-7", "object": "chat.completion", "created": 42, "model": "m1",
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": "tok tok " },
                              "logprobs": null, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6 },
            })
        );
    }

    #[test]
    fn usage_chunk_only_when_requested_and_not_omitted() {
        let plan = |omit_usage| {
            Completion::plan(
                Endpoint::ChatCompletions,
                &request(json!({})),
                &Behaviour {
                    omit_usage,
                    ..Behaviour::default()
                },
                1,
                0,
            )
        };
        assert!(plan(false).stream(true).usage.is_some());
        assert!(plan(false).stream(false).usage.is_none());
        assert!(plan(true).stream(true).usage.is_none());
    }
}
