//! Response bodies in OpenAI's shapes: whole responses and SSE chunks for
//! `chat.completion(.chunk)` and `text_completion`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::tool_calls::{ParsedOutput, ToolCall};
use crate::engine::sampling::TokenLogprobs;
use crate::engine::{FinishReason, Usage};
use crate::text::{IncrementalDecoder, TextTokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Completion,
}

/// What every response and chunk of one request shares.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub shape: Shape,
    /// How tool calls are named: what the model's chat template takes back.
    pub call_ids: CallIds,
}

/// The `id` a tool call gets, which the client sends back with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallIds {
    /// `call_<response>_<choice>_<call>`, as OpenAI's `call_…`.
    #[default]
    Named,
    /// Nine letters and digits: Mistral's templates refuse any other id in
    /// the history (as vLLM and llama.cpp generate for them).
    NineAlphanumeric,
}

/// Nine base-62 digits of a hash of `what`, keyed at random once per
/// process: the same for the same call, distinct for distinct calls (62^9
/// ≈ 1.4 × 10^16 values), and not the same in two replicas whose response
/// ids coincide.
fn nine_alphanumeric(what: &impl std::hash::Hash) -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    use std::sync::OnceLock;
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    let mut n = KEYS.get_or_init(RandomState::new).hash_one(what);
    (0..9)
        .map(|_| {
            let digit = DIGITS[(n % 62) as usize];
            n /= 62;
            char::from(digit)
        })
        .collect()
}

pub fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        // As OpenAI reports it: prompt tokens served from the prefix cache.
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// Turns the engine's log-probabilities into each endpoint's JSON: chat's
/// `{"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}`,
/// completions' `{tokens, token_logprobs, top_logprobs, text_offset}`. A
/// token's `token` is its bytes as UTF-8 (lossy for a piece of a
/// character, which `bytes` then gives exactly); a token without text (a
/// special one) is named as the vocabulary writes it. Completions'
/// `text_offset` is where each token's text starts in the answer's text,
/// across chunks; completions' `top_logprobs` hold the sampled token too
/// (OpenAI's "up to logprobs + 1").
#[derive(Clone)]
pub struct LogprobsWriter {
    tokenizer: Arc<TextTokenizer>,
    shape: Shape,
    /// The answer's text, decoded as the engine decodes it (a character
    /// split over tokens comes whole, with its last token; a special token
    /// adds nothing), and its length so far in characters.
    text: IncrementalDecoder,
    chars: usize,
}

impl LogprobsWriter {
    pub fn new(tokenizer: Arc<TextTokenizer>, shape: Shape) -> Self {
        Self {
            text: IncrementalDecoder::new(Arc::clone(&tokenizer)).continuing(),
            chars: 0,
            tokenizer,
            shape,
        }
    }

    fn piece(&self, id: u32) -> (String, Vec<u8>) {
        match self.tokenizer.token_bytes(id) {
            Some(bytes) => (String::from_utf8_lossy(bytes).into_owned(), bytes.to_vec()),
            None => {
                let text = self.tokenizer.token_text(id).unwrap_or_default();
                let bytes = text.as_bytes().to_vec();
                (text, bytes)
            }
        }
    }

    pub fn render(&mut self, entries: &[TokenLogprobs]) -> Value {
        match self.shape {
            Shape::Chat => {
                let entry = |id: u32, logprob: f32| {
                    let (token, bytes) = self.piece(id);
                    json!({"token": token, "logprob": logprob, "bytes": bytes})
                };
                let content: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        let mut v = entry(e.token, e.logprob);
                        v["top_logprobs"] = e.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                        v
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Shape::Completion => {
                let (mut tokens, mut logprobs, mut tops, mut offsets) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for e in entries {
                    let (token, _) = self.piece(e.token);
                    offsets.push(self.chars);
                    self.chars += self.text.push(e.token).chars().count();
                    // Keyed by text, most likely first: two tokens of one
                    // text (pieces of characters) keep the likelier.
                    let mut top = serde_json::Map::new();
                    for &(id, lp) in e.top.iter().chain(std::iter::once(&(e.token, e.logprob))) {
                        top.entry(self.piece(id).0).or_insert(json!(lp));
                    }
                    tokens.push(token);
                    logprobs.push(e.logprob);
                    tops.push(top);
                }
                json!({
                    "tokens": tokens,
                    "token_logprobs": logprobs,
                    "top_logprobs": tops,
                    "text_offset": offsets,
                })
            }
        }
    }
}

impl Meta {
    /// One choice of a whole response; `logprobs` is the rendered
    /// log-probabilities when the request asked for them.
    pub fn choice(
        &self,
        index: usize,
        text: &str,
        reason: FinishReason,
        logprobs: Option<Value>,
    ) -> Value {
        let logprobs = logprobs.unwrap_or(Value::Null);
        match self.shape {
            Shape::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": logprobs,
                "finish_reason": reason.as_str(),
            }),
            Shape::Completion => json!({
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": reason.as_str(),
            }),
        }
    }

    /// A whole response: its choices in index order, and the usage of all
    /// of them.
    pub fn full(&self, choices: Vec<Value>, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": match self.shape { Shape::Chat => "chat.completion", Shape::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage_json(usage),
        })
    }

    /// A streamed chunk. The chat stream opens with the assistant role;
    /// `finish` closes the choice. With `include_usage` every chunk carries
    /// `"usage": null`, as OpenAI's do, until the final usage chunk.
    pub fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        first: bool,
        finish: Option<FinishReason>,
        include_usage: bool,
        logprobs: Option<Value>,
    ) -> Value {
        let finish = finish.map(FinishReason::as_str);
        let logprobs = logprobs.unwrap_or(Value::Null);
        let (object, choice) = match self.shape {
            Shape::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                (
                    "chat.completion.chunk",
                    json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}),
                )
            }
            Shape::Completion => (
                "text_completion",
                json!({"index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish}),
            ),
        };
        let mut chunk = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// OpenAI's `tool_calls` for the calls read from choice `choice`'s
    /// whole answer, with ids unique to this response.
    pub fn tool_calls(&self, choice: usize, calls: &[ToolCall]) -> Value {
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "id": self.call_id(choice, i),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect()
    }

    /// One streamed `delta.tool_calls` entry of call `i` in choice
    /// `choice`: its first (`name` given) with the id, type and name a whole
    /// answer would give it, later ones with only the next characters of
    /// its arguments.
    pub fn tool_call_delta(
        &self,
        choice: usize,
        i: usize,
        name: Option<&str>,
        arguments: &str,
    ) -> Value {
        match name {
            Some(name) => json!({
                "index": i,
                "id": self.call_id(choice, i),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }),
            None => json!({"index": i, "function": {"arguments": arguments}}),
        }
    }

    pub fn call_id(&self, choice: usize, i: usize) -> String {
        let stem = self.id.rsplit('-').next().unwrap_or(&self.id);
        match self.call_ids {
            CallIds::Named => format!("call_{stem}_{choice}_{i}"),
            CallIds::NineAlphanumeric => nine_alphanumeric(&(stem, choice, i)),
        }
    }

    /// A whole chat choice whose text held tool calls: the calls, the text
    /// outside them as `content` (`null` when none), and `finish`.
    pub fn answered_with_calls(
        &self,
        index: usize,
        choice: &mut Value,
        parsed: &ParsedOutput,
        finish: &str,
    ) {
        choice["message"] = json!({
            "role": "assistant",
            "content": parsed.content,
            "refusal": null,
            "tool_calls": self.tool_calls(index, &parsed.tool_calls),
        });
        choice["finish_reason"] = json!(finish);
    }

    /// The last data chunk when the client asked for usage: no choices.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": match self.shape { Shape::Chat => "chat.completion.chunk", Shape::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json(usage),
        })
    }
}

/// One SSE event carrying a JSON payload.
pub fn sse(value: &Value) -> axum::body::Bytes {
    axum::body::Bytes::from(format!("data: {value}\n\n"))
}

pub const DONE: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {

    /// Where each token's text starts: a character split over two tokens
    /// counts once, bytes that can never be one as one U+FFFD, a special
    /// token as nothing.
    #[test]
    fn text_offsets_count_the_characters_of_the_text() {
        use crate::text::fixtures::{self, byte_token_id as byte};
        let mut writer =
            LogprobsWriter::new(Arc::new(fixtures::tiny_tokenizer()), Shape::Completion);
        let ids = [
            byte(b'a'),
            byte(0xF0),
            byte(0x9F),
            byte(0x98),
            byte(0x80),
            fixtures::IM_START,
            byte(b' '),
            byte(0xFF),
            byte(b'c'),
        ];
        let entries: Vec<TokenLogprobs> = ids
            .iter()
            .map(|&token| TokenLogprobs {
                token,
                logprob: 0.0,
                top: Vec::new(),
            })
            .collect();
        // "a😀 \u{FFFD}c", in two chunks as a stream renders them.
        let mut starts = writer.render(&entries[..3])["text_offset"].clone();
        let rest = writer.render(&entries[3..])["text_offset"].clone();
        starts
            .as_array_mut()
            .unwrap()
            .extend(rest.as_array().unwrap().clone());
        assert_eq!(starts, json!([0, 1, 1, 1, 1, 2, 2, 3, 4]));
    }

    use super::*;

    fn meta(shape: Shape) -> Meta {
        Meta {
            id: "x".into(),
            created: 1,
            model: "m".into(),
            shape,
            call_ids: CallIds::Named,
        }
    }

    #[test]
    fn mistral_call_ids_are_nine_letters_and_digits_each_its_own() {
        let meta = Meta {
            id: "chatcmpl-6650a1b2000001".into(),
            call_ids: CallIds::NineAlphanumeric,
            ..meta(Shape::Chat)
        };
        let ids: Vec<String> = [(0, 0), (0, 1), (1, 0)]
            .iter()
            .map(|&(choice, i)| meta.call_id(choice, i))
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 9, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        assert!(
            ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2],
            "{ids:?}"
        );
        assert_eq!(meta.call_id(0, 1), ids[1], "the same call, the same id");
        let other = Meta {
            id: "chatcmpl-6650a1b2000002".into(),
            ..meta
        };
        assert_ne!(other.call_id(0, 0), ids[0], "another response, another id");
        assert_eq!(super::tests::meta(Shape::Chat).call_id(0, 1), "call_x_0_1");
    }

    #[test]
    fn chat_chunks_open_with_the_role_and_carry_usage_null_when_asked() {
        let c = meta(Shape::Chat).chunk(0, Some(""), true, None, true, None);
        assert_eq!(
            c["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(c["usage"], Value::Null);
        assert!(c.as_object().unwrap().contains_key("usage"));
        let end = meta(Shape::Chat).chunk(2, None, false, Some(FinishReason::Length), false, None);
        assert_eq!(end["choices"][0]["index"], 2);
        assert_eq!(end["choices"][0]["delta"], json!({}));
        assert_eq!(end["choices"][0]["finish_reason"], "length");
        assert!(!end.as_object().unwrap().contains_key("usage"));
    }

    #[test]
    fn full_responses_total_their_usage() {
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_tokens: 2,
        };
        let m = meta(Shape::Completion);
        let r = m.full(vec![m.choice(0, "hi", FinishReason::Stop, None)], usage);
        assert_eq!(r["object"], "text_completion");
        assert_eq!(r["choices"][0]["text"], "hi");
        assert_eq!(r["usage"]["total_tokens"], 7);
        assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        assert_eq!(meta(Shape::Chat).usage_chunk(usage)["choices"], json!([]));
    }
}
