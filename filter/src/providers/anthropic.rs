//! Anthropic's Messages API (`POST /v1/messages`, `anthropic-version:
//! 2023-06-01`) behind OpenAI's chat completions, both ways.
//!
//! - [`to_messages_request`]: an OpenAI chat request (after the gateway's
//!   own rewrite, so it always carries a completion budget) becomes a
//!   Messages request: `system`/`developer` messages become the top-level
//!   `system` text, `max_tokens`/`max_completion_tokens` the required
//!   `max_tokens`, `stop` `stop_sequences`, `user` `metadata.user_id`;
//!   `temperature`, `top_p`, `top_k` and `stream` pass.
//! - [`to_chat_completion`]: a Messages response becomes a
//!   `chat.completion`, its `stop_reason` a `finish_reason` and its usage
//!   OpenAI's (`input_tokens` plus both cache counts are the prompt; cache
//!   reads are `prompt_tokens_details.cached_tokens`).
//! - [`StreamTranslator`]: the event stream (`message_start`,
//!   `content_block_delta`, `message_delta`, `message_stop`, `ping`,
//!   `error`) becomes `chat.completion.chunk` events, a final usage chunk
//!   (which the gateway's SSE accounting reads, and strips when the client
//!   did not ask for it) and `data: [DONE]`.
//!
//! What the Messages API cannot express is refused with a 400 naming the
//! field rather than silently answered differently (`n` > 1, tools,
//! `response_format` other than text, log-probabilities, non-text content).
//! Sampling knobs with no Messages counterpart (`frequency_penalty`,
//! `presence_penalty`, `seed`, `logit_bias`) are dropped, as LiteLLM's
//! `drop_params` does: they shape, not define, the answer.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::ProviderError;
use crate::openai::request::requested_budget;

/// The `anthropic-version` header value the translation follows.
pub const API_VERSION: &str = "2023-06-01";

const KIND: &str = "anthropic";

fn unsupported(field: &'static str, why: &'static str) -> ProviderError {
    ProviderError::Unsupported {
        field,
        kind: KIND,
        why,
    }
}

fn invalid(field: &'static str, expected: &'static str) -> ProviderError {
    ProviderError::InvalidField { field, expected }
}

/// The fields of an OpenAI chat request that translation reads; every
/// other field is dropped. A field named twice is an error (serde's), as
/// everywhere in the gateway.
#[derive(Deserialize)]
struct ChatRequest<'a> {
    messages: Option<Vec<ChatMessage>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stop: Option<Value>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    stream: Option<bool>,
    user: Option<String>,
    n: Option<u64>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    functions: Option<&'a RawValue>,
    response_format: Option<Value>,
    logprobs: Option<bool>,
    #[serde(borrow)]
    top_logprobs: Option<&'a RawValue>,
    #[serde(borrow)]
    audio: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_effort: Option<&'a RawValue>,
    #[serde(borrow)]
    web_search_options: Option<&'a RawValue>,
    #[serde(borrow)]
    verbosity: Option<&'a RawValue>,
    #[serde(borrow)]
    prediction: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Value>,
    tool_calls: Option<Value>,
}

/// Anthropic serves chat only: `/v1/completions` has no counterpart.
pub const CHAT_ONLY: ProviderError = ProviderError::Unsupported {
    field: "model",
    kind: "anthropic",
    why: "this model has a chat API only; use /v1/chat/completions",
};

/// An OpenAI chat request body as a Messages request body for
/// `upstream_model`.
pub fn to_messages_request(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, ProviderError> {
    let request: ChatRequest<'_> =
        serde_json::from_slice(body).map_err(|e| ProviderError::BadRequest(e.to_string()))?;
    if request.n.is_some_and(|n| n > 1) {
        return Err(unsupported(
            "n",
            "the provider makes one completion per request",
        ));
    }
    let given = |raw: Option<&RawValue>| raw.is_some_and(|v| v.get() != "null");
    for (field, present) in [
        ("tools", request.tools.is_some()),
        ("functions", request.functions.is_some()),
        ("top_logprobs", request.top_logprobs.is_some()),
        ("audio", request.audio.is_some()),
        ("logprobs", request.logprobs == Some(true)),
        // Each changes the answer (thinking, searching, its length, a
        // predicted output), and dropping it would change it silently.
        ("reasoning_effort", given(request.reasoning_effort)),
        ("web_search_options", given(request.web_search_options)),
        ("verbosity", given(request.verbosity)),
        ("prediction", given(request.prediction)),
    ] {
        if present {
            return Err(unsupported(
                field,
                "the gateway does not translate it for this provider",
            ));
        }
    }
    if let Some(format) = &request.response_format {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(unsupported(
                "response_format",
                "the provider has no structured-output mode the gateway translates",
            ));
        }
    }
    let max_tokens = requested_budget(request.max_tokens, request.max_completion_tokens)
        .ok_or_else(|| invalid("max_tokens", "a positive integer"))?;
    // What Anthropic refuses, refused here before anything is reserved: a
    // fallback to this provider must not turn a request its first backend
    // takes into a 400.
    if request
        .temperature
        .is_some_and(|t| !(0.0..=1.0).contains(&t))
    {
        return Err(invalid(
            "temperature",
            "between 0 and 1 for this model (its provider's range)",
        ));
    }
    // `top_p: 1` samples from everything, as no `top_p` does: many SDKs
    // send it by default, so it is left out rather than refused.
    let top_p = request.top_p.filter(|p| *p != 1.0);
    if request.temperature.is_some() && top_p.is_some() {
        return Err(invalid(
            "top_p",
            "temperature or top_p, not both, for this model (its provider takes one)",
        ));
    }

    let mut system = Vec::new();
    let mut messages = Vec::new();
    for message in request
        .messages
        .ok_or_else(|| invalid("messages", "a non-empty array of messages"))?
    {
        if message.tool_calls.is_some() {
            return Err(unsupported(
                "tool_calls",
                "the gateway does not translate tool calls for this provider",
            ));
        }
        match message.role.as_str() {
            "system" | "developer" => system.push(text_only(message.content)?),
            "user" | "assistant" => messages.push(json!({
                "role": message.role,
                "content": content(message.content)?,
            })),
            "tool" | "function" => {
                return Err(unsupported(
                    "messages",
                    "tool results are not translated for this provider",
                ))
            }
            _ => {
                return Err(invalid(
                    "messages",
                    "roles system, developer, user or assistant",
                ))
            }
        }
    }
    if messages.is_empty() {
        return Err(invalid(
            "messages",
            "at least one user or assistant message",
        ));
    }
    // Anthropic reads a last assistant message as the start of its answer
    // (a prefill: it continues that text, and newer models refuse it);
    // OpenAI reads it as history.
    if messages.last().is_some_and(|m| m["role"] == "assistant") {
        return Err(invalid(
            "messages",
            "a conversation that ends with a user message, for this model (its provider would continue the last assistant message)",
        ));
    }

    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    out.insert("max_tokens".into(), max_tokens.into());
    if !system.is_empty() {
        out.insert("system".into(), system.join("\n\n").into());
    }
    out.insert("messages".into(), messages.into());
    if let Some(stop) = request.stop {
        let sequences = match stop {
            Value::Null => None,
            Value::String(s) => Some(vec![Value::String(s)]),
            Value::Array(items) if items.iter().all(Value::is_string) => Some(items),
            _ => return Err(invalid("stop", "a string or an array of strings")),
        };
        let blank = |v: &Value| v.as_str().is_some_and(|s| s.trim().is_empty());
        if sequences.as_ref().is_some_and(|s| s.iter().any(blank)) {
            return Err(invalid(
                "stop",
                "sequences with a character other than whitespace, for this model (its provider refuses others)",
            ));
        }
        if let Some(sequences) = sequences.filter(|s| !s.is_empty()) {
            out.insert("stop_sequences".into(), sequences.into());
        }
    }
    for (field, value) in [("temperature", request.temperature), ("top_p", top_p)] {
        if let Some(value) = value {
            out.insert(field.into(), value.into());
        }
    }
    if let Some(top_k) = request.top_k {
        out.insert("top_k".into(), top_k.into());
    }
    if request.stream == Some(true) {
        out.insert("stream".into(), true.into());
    }
    if let Some(user) = request.user {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    serde_json::to_vec(&Value::Object(out))
        .map_err(|_| invalid("messages", "text the gateway can encode"))
}

/// A message's content as Messages content: a string stays a string, an
/// array of text parts becomes text blocks.
fn content(content: Option<Value>) -> Result<Value, ProviderError> {
    match content {
        Some(Value::String(text)) => Ok(Value::String(text)),
        Some(Value::Array(parts)) => parts
            .into_iter()
            .map(|part| {
                let text = part_text(&part)?;
                Ok(json!({ "type": "text", "text": text }))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        _ => Err(invalid(
            "messages",
            "message content as a string or an array of text parts",
        )),
    }
}

/// The text of a content part; other part types are refused.
fn part_text(part: &Value) -> Result<&str, ProviderError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => part
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("messages", "a text part with a string `text`")),
        Some(_) => Err(unsupported(
            "messages",
            "only text content is translated for this provider",
        )),
        None => Err(invalid("messages", "content parts with a `type`")),
    }
}

/// A system message's content as one string.
fn text_only(content: Option<Value>) -> Result<String, ProviderError> {
    match content {
        Some(Value::String(text)) => Ok(text),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .map(part_text)
            .collect::<Result<Vec<_>, _>>()?
            .join("\n")),
        _ => Err(invalid(
            "messages",
            "message content as a string or an array of text parts",
        )),
    }
}

/// A Messages response's usage. `output_tokens` is cumulative in a stream's
/// `message_delta`; the cache counts are absent when caching is unused.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct MessagesUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl MessagesUsage {
    /// Later counts replace earlier ones, field by field.
    fn update(&mut self, later: MessagesUsage) {
        let keep = |a: &mut Option<u64>, b: Option<u64>| {
            if b.is_some() {
                *a = b;
            }
        };
        keep(&mut self.input_tokens, later.input_tokens);
        keep(&mut self.output_tokens, later.output_tokens);
        keep(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        keep(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
    }

    /// OpenAI's usage object: every input token is a prompt token, whether
    /// it was read from the provider's cache, written to it, or neither.
    /// `None` without both counts: a response that reports none is
    /// estimated by the gateway, never charged as a reported zero.
    fn openai(&self) -> Option<Value> {
        let (input, completion) = (self.input_tokens?, self.output_tokens?);
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = input
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(cached);
        Some(json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": { "cached_tokens": cached },
        }))
    }
}

#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    content: Vec<Block>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: MessagesUsage,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    thinking: Option<String>,
}

/// OpenAI's `finish_reason` for a Messages `stop_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and any later addition.
        _ => "stop",
    }
}

/// A Messages response body as a `chat.completion` for `model` (the
/// gateway's public id), `created` in Unix seconds.
pub fn to_chat_completion(
    body: &[u8],
    model: &str,
    created: u64,
) -> Result<Vec<u8>, ProviderError> {
    let response: MessagesResponse = serde_json::from_slice(body).map_err(|e| {
        ProviderError::UnreadableResponse(format!("not a Messages response ({})", category(&e)))
    })?;
    let mut text = String::new();
    let mut thinking = String::new();
    for block in &response.content {
        match block.kind.as_str() {
            "text" => text.push_str(block.text.as_deref().unwrap_or_default()),
            "thinking" => thinking.push_str(block.thinking.as_deref().unwrap_or_default()),
            _ => {}
        }
    }
    let mut message = json!({ "role": "assistant", "content": text });
    if !thinking.is_empty() {
        message["reasoning_content"] = thinking.into();
    }
    let mut completion = json!({
        "id": response.id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": response.stop_reason.as_deref().map(finish_reason),
        }],
    });
    if let Some(usage) = response.usage.openai() {
        completion["usage"] = usage;
    }
    serde_json::to_vec(&completion)
        .map_err(|_| ProviderError::UnreadableResponse("unencodable text".into()))
}

/// What was wrong with a provider's JSON, without quoting it (it may hold
/// generated text).
fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected fields",
        serde_json::error::Category::Eof => "cut short",
    }
}

/// Translates a Messages event stream into OpenAI chunk events as it
/// arrives. Chunks may split anywhere; at most one line is held
/// (`max_line_bytes`, beyond which the stream is refused as unreadable).
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    created: u64,
    max_line_bytes: usize,
    /// The current line so far, when it started in an earlier chunk.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a leading `\n` completes it.
    after_cr: bool,
    /// The current event's `data` lines, joined with `\n`.
    data: Vec<u8>,
    has_data: bool,
    id: String,
    usage: MessagesUsage,
    /// A `message_delta` reported the output count: `message_start`'s is a
    /// placeholder, which would charge a whole stream as one token.
    counted: bool,
    stopped: bool,
}

/// One Messages stream event, as far as translation reads it. Its strings
/// are borrowed from the event's data unless they hold escapes: an event is
/// read, and its chunk written, without building a document tree (the
/// `Value` version cost ~4 µs per event in `benches/load.sh`).
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    message: Option<EventMessage>,
    #[serde(borrow)]
    content_block: Option<StreamBlock<'a>>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    usage: Option<MessagesUsage>,
    error: Option<EventError>,
}

#[derive(Deserialize)]
struct StreamBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventMessage {
    id: String,
    #[serde(default)]
    usage: MessagesUsage,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

/// A `chat.completion.chunk` as it is written.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Value>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: ChunkDelta<'a>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

#[derive(Deserialize)]
struct EventError {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

impl StreamTranslator {
    /// `model`: the gateway's public id, written into every chunk.
    pub fn new(model: &str, created: u64, max_line_bytes: usize) -> Self {
        StreamTranslator {
            model: model.to_string(),
            created,
            max_line_bytes,
            line: Vec::new(),
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            id: String::new(),
            usage: MessagesUsage::default(),
            counted: false,
            stopped: false,
        }
    }

    /// The OpenAI events for the next chunk of the provider's stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let [b'\n', tail @ ..] = rest {
                rest = tail;
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (piece, tail) = rest.split_at(end);
            let line = if self.line.is_empty() {
                piece.to_vec()
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(piece);
                line
            };
            rest = match tail {
                [b'\r', b'\n', tail @ ..] => tail,
                [b'\r'] => {
                    self.after_cr = true;
                    &[]
                }
                [_, tail @ ..] => tail,
                [] => &[],
            };
            self.line_done(&line, &mut out)?;
        }
        if self.line.len().saturating_add(rest.len()) > self.max_line_bytes {
            return Err(ProviderError::UnreadableResponse(format!(
                "a stream line longer than {} bytes",
                self.max_line_bytes
            )));
        }
        self.line.extend_from_slice(rest);
        Ok(out)
    }

    /// Ends the provider's stream: a last event without its blank line is
    /// handled as if it had one.
    pub fn finish(&mut self) -> Result<Vec<u8>, ProviderError> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, &mut out)?;
        }
        self.line_done(b"", &mut out)?;
        Ok(out)
    }

    /// Whether the provider ended the message (`message_stop`) or sent an
    /// error: a stream cut before either is incomplete.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), ProviderError> {
        if line.is_empty() {
            if std::mem::take(&mut self.has_data) {
                let data = std::mem::take(&mut self.data);
                self.event(&data, out)?;
            }
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
            if self.data.len() > self.max_line_bytes {
                return Err(ProviderError::UnreadableResponse(format!(
                    "a stream event longer than {} bytes",
                    self.max_line_bytes
                )));
            }
        }
        // `event:` repeats the data's `type`; comments and `id:` carry
        // nothing translation needs.
        Ok(())
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), ProviderError> {
        let event: Event = serde_json::from_slice(data).map_err(|e| {
            ProviderError::UnreadableResponse(format!("a stream event ({})", category(&e)))
        })?;
        match event.kind.as_ref() {
            "message_start" => {
                if let Some(message) = event.message {
                    self.id = message.id;
                    self.usage.update(message.usage);
                }
                let delta = ChunkDelta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..ChunkDelta::default()
                };
                self.chunk(delta, None, out);
            }
            "content_block_start" => {
                if let Some(block) = event.content_block {
                    self.text(
                        &block.kind,
                        block.text.as_deref(),
                        block.thinking.as_deref(),
                        out,
                    );
                }
            }
            "content_block_delta" => {
                if let Some(delta) = event.delta {
                    let kind = match delta.kind.as_deref() {
                        Some("text_delta") => "text",
                        Some("thinking_delta") => "thinking",
                        _ => "",
                    };
                    self.text(kind, delta.text.as_deref(), delta.thinking.as_deref(), out);
                }
            }
            "message_delta" => {
                if let Some(usage) = event.usage {
                    self.counted |= usage.output_tokens.is_some();
                    self.usage.update(usage);
                }
                if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                    self.chunk(ChunkDelta::default(), Some(finish_reason(&reason)), out);
                }
            }
            "message_stop" => {
                self.usage_chunk(out);
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.stopped = true;
            }
            "error" => {
                let detail = event
                    .error
                    .map(|e| super::ErrorDetail {
                        message: e.message.unwrap_or_default(),
                        kind: e.kind,
                        code: None,
                    })
                    .unwrap_or_default();
                let status = match detail.kind.as_deref() {
                    Some("overloaded_error") => 529,
                    Some("rate_limit_error") => 429,
                    Some("invalid_request_error") => 400,
                    Some("billing_error") => 402,
                    _ => 500,
                };
                super::write_error_event(&super::upstream_failure(status, &detail), out);
                self.stopped = true;
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn text(&self, kind: &str, text: Option<&str>, thinking: Option<&str>, out: &mut Vec<u8>) {
        let delta = match (kind, text, thinking) {
            ("text", Some(text), _) if !text.is_empty() => ChunkDelta {
                content: Some(text),
                ..ChunkDelta::default()
            },
            ("thinking", _, Some(thinking)) if !thinking.is_empty() => ChunkDelta {
                reasoning_content: Some(thinking),
                ..ChunkDelta::default()
            },
            _ => return,
        };
        self.chunk(delta, None, out);
    }

    fn chunk(&self, delta: ChunkDelta<'_>, finish: Option<&str>, out: &mut Vec<u8>) {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish,
        }];
        self.write(&choices, None, out);
    }

    /// The usage chunk, when the stream reported its output count.
    fn usage_chunk(&self, out: &mut Vec<u8>) {
        if let Some(usage) = self.counted.then(|| self.usage.openai()).flatten() {
            self.write(&[], Some(usage), out);
        }
    }

    fn write(&self, choices: &[ChunkChoice<'_>], usage: Option<Value>, out: &mut Vec<u8>) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        out.extend_from_slice(b"data: ");
        // Strings and numbers always encode.
        if serde_json::to_writer(&mut *out, &chunk).is_err() {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"\n\n");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
