//! The OpenAI request bodies, parsed once into typed structs: valid JSON,
//! the required fields, one prompt, text-only messages in known roles. What
//! the values may be is checked in [`super::validation`], which these parsers
//! call for the generation fields.

use serde::Deserialize;

use super::error::ApiError;
use super::response::Shape;
use super::validation::{self, Generation};
use crate::text::ChatMessage;

/// The fields both endpoints share, as sent.
#[derive(Debug, Default, Deserialize)]
pub(super) struct GenerationFields {
    pub(super) model: Option<String>,
    pub(super) max_tokens: Option<i64>,
    pub(super) max_completion_tokens: Option<i64>,
    pub(super) temperature: Option<f64>,
    pub(super) top_p: Option<f64>,
    pub(super) top_k: Option<i64>,
    pub(super) seed: Option<i64>,
    pub(super) stop: Option<StopField>,
    pub(super) stream: Option<bool>,
    pub(super) stream_options: Option<StreamOptions>,
    pub(super) n: Option<i64>,
    pub(super) best_of: Option<i64>,
    /// Chat: a boolean; completions: how many alternatives.
    pub(super) logprobs: Option<serde_json::Value>,
    pub(super) top_logprobs: Option<serde_json::Value>,
    pub(super) echo: Option<bool>,
    /// vLLM's extension: keep generating through end-of-sequence tokens
    /// (benchmarks need fixed-length completions).
    pub(super) ignore_eos: Option<bool>,
    pub(super) tools: Option<serde_json::Value>,
    pub(super) tool_choice: Option<serde_json::Value>,
    pub(super) parallel_tool_calls: Option<bool>,
    // Accepted only at its neutral value: a client relying on the
    // deprecated field must hear that this server does not do it.
    pub(super) functions: Option<serde_json::Value>,
    pub(super) response_format: Option<serde_json::Value>,
    pub(super) logit_bias: Option<serde_json::Value>,
    pub(super) presence_penalty: Option<f64>,
    pub(super) frequency_penalty: Option<f64>,
    /// llama.cpp's budget field: a third way to set `max_tokens` (the
    /// gateway reads it too; negative names no budget).
    pub(super) n_predict: Option<i64>,
    /// Every other field, for `unsupported` to refuse those that would
    /// change the answer.
    #[serde(flatten)]
    pub(super) other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamOptions {
    pub(super) include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Option<Vec<MessageBody>>,
    /// vLLM's and SGLang's extra chat-template variables (Qwen 3's
    /// `enable_thinking`, say).
    #[serde(default)]
    chat_template_kwargs: Option<serde_json::Value>,
    #[serde(flatten)]
    fields: GenerationFields,
}

#[derive(Debug, Deserialize)]
struct MessageBody {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Variables the chat template sees beside its own (checked by
    /// [`template_kwargs`]).
    pub template_kwargs: serde_json::Map<String, serde_json::Value>,
    pub generation: Generation,
}

/// The variables a chat template is given by the server itself: a request's
/// `chat_template_kwargs` may not replace them (`chat_template` too: vLLM
/// takes a template from there, which this server never does).
const TEMPLATE_OWN: &[&str] = &[
    "messages",
    "tools",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
    "raise_exception",
    "chat_template",
];

/// `chat_template_kwargs`: absent, `null` or an object of variables whose
/// names are not the template's own.
fn template_kwargs(
    value: Option<serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let bad = |message: String| ApiError::invalid(Some("chat_template_kwargs"), message);
    let kwargs = match value {
        None | Some(serde_json::Value::Null) => return Ok(serde_json::Map::new()),
        Some(serde_json::Value::Object(kwargs)) => kwargs,
        Some(other) => {
            return Err(bad(format!(
                "`chat_template_kwargs` must be an object of template variables; got {other}."
            )))
        }
    };
    if let Some(own) = kwargs.keys().find(|k| TEMPLATE_OWN.contains(&k.as_str())) {
        return Err(bad(format!(
            "`chat_template_kwargs` may not set {own:?}: the server sets it."
        )));
    }
    Ok(kwargs)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub generation: Generation,
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: Option<PromptBody>,
    #[serde(flatten)]
    fields: GenerationFields,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptBody {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

pub(super) fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "The request body is not valid JSON"
        } else {
            "The request body does not match the API"
        };
        ApiError::invalid(None, format!("{what}: {e}."))
    })
}

pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let body: ChatBody = parse_json(body)?;
    let generation = validation::generation(body.fields, Shape::Chat)?;
    let messages = body
        .messages
        .ok_or_else(|| ApiError::invalid(Some("messages"), "`messages` is required."))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` must not be empty.",
        ));
    }
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<_, _>>()?;
    Ok(ChatRequest {
        messages,
        template_kwargs: template_kwargs(body.chat_template_kwargs)?,
        generation,
    })
}

fn message(index: usize, m: MessageBody) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "user" | "assistant" | "tool" => m.role,
        // OpenAI's newer name for system instructions.
        "developer" => "system".to_string(),
        other => {
            return Err(ApiError::invalid(
                Some("messages"),
                format!("messages[{index}].role: unsupported role {other:?} (use system, developer, user, assistant or tool)."),
            ))
        }
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            // One part per line, as vLLM joins them: two blocks of text
            // ("Hello", "World") are not one word.
            let mut texts: Vec<String> = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => texts.push(t),
                    ("text", None) => {
                        return Err(ApiError::invalid(
                            Some("messages"),
                            format!("messages[{index}].content[{j}]: a text part needs its `text` string."),
                        ))
                    }
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            Some("messages"),
                            format!("messages[{index}].content[{j}]: only text parts are supported, got {kind:?}."),
                        ))
                    }
                }
            }
            texts.join("\n")
        }
    };
    if role == "tool" && m.tool_call_id.is_none() {
        return Err(ApiError::invalid(
            Some("messages"),
            format!("messages[{index}]: a `tool` message needs the `tool_call_id` it answers."),
        ));
    }
    let tool_calls = match m.tool_calls {
        Some(calls) if role != "assistant" => {
            if calls.is_empty() {
                None
            } else {
                return Err(ApiError::invalid(
                    Some("messages"),
                    format!("messages[{index}]: only assistant messages carry `tool_calls`."),
                ));
            }
        }
        Some(calls) if !calls.is_empty() => Some(
            calls
                .into_iter()
                .enumerate()
                .map(|(j, call)| earlier_call(index, j, call))
                .collect::<Result<_, _>>()?,
        ),
        _ => None,
    };
    Ok(ChatMessage {
        tool_calls,
        tool_call_id: m.tool_call_id,
        ..ChatMessage::new(role, content)
    })
}

/// An assistant's earlier call as templates read it: OpenAI's shape, its
/// `arguments` string parsed into the object it holds (templates write it
/// with `tojson`; a string that is not JSON is kept as it is).
fn earlier_call(
    index: usize,
    j: usize,
    mut call: serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let name_ok = call["function"]["name"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    if !name_ok {
        return Err(ApiError::invalid(
            Some("messages"),
            format!("messages[{index}].tool_calls[{j}].function.name is required."),
        ));
    }
    if let Some(text) = call["function"]["arguments"].as_str() {
        if let Ok(parsed) = serde_json::from_str::<serde_json::Value>(text) {
            call["function"]["arguments"] = parsed;
        }
    }
    Ok(call)
}

pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let body: CompletionBody = parse_json(body)?;
    let generation = validation::generation(body.fields, Shape::Completion)?;
    let one = || ApiError::invalid(Some("prompt"), "This server takes one prompt per request.");
    let prompt = match body.prompt {
        None => return Err(ApiError::invalid(Some("prompt"), "`prompt` is required.")),
        Some(PromptBody::Text(t)) => Prompt::Text(t),
        Some(PromptBody::Texts(mut v)) if v.len() == 1 => Prompt::Text(v.remove(0)),
        Some(PromptBody::Tokens(t)) => Prompt::Tokens(t),
        Some(PromptBody::TokenLists(mut v)) if v.len() == 1 => Prompt::Tokens(v.remove(0)),
        Some(PromptBody::Texts(v)) if v.is_empty() => {
            return Err(ApiError::invalid(
                Some("prompt"),
                "`prompt` is an empty list.",
            ))
        }
        Some(_) => return Err(one()),
    };
    Ok(CompletionRequest { prompt, generation })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sampling::SamplingParams;

    fn chat(body: &str) -> Result<ChatRequest, ApiError> {
        parse_chat(body.as_bytes())
    }

    #[test]
    fn template_kwargs_are_variables_the_template_does_not_set_itself() {
        let with = |kwargs: &str| {
            chat(&format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"Hi"}}],"chat_template_kwargs":{kwargs}}}"#
            ))
        };
        let r = with(r#"{"enable_thinking":false,"custom":[1]}"#).unwrap();
        assert_eq!(r.template_kwargs["enable_thinking"], false);
        assert!(with("null").unwrap().template_kwargs.is_empty());
        for (kwargs, says) in [
            (r#"{"messages":[]}"#, "\"messages\""),
            (
                r#"{"add_generation_prompt":false}"#,
                "add_generation_prompt",
            ),
            (r#"{"chat_template":"{{ 1 }}"}"#, "chat_template"),
            (r#""enable_thinking""#, "an object"),
        ] {
            let err = with(kwargs).unwrap_err();
            assert_eq!(err.param, Some("chat_template_kwargs"), "{kwargs}");
            assert!(err.message.contains(says), "{kwargs}: {}", err.message);
        }
    }

    #[test]
    fn a_full_chat_request_parses() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":"!"}]}],
                "max_completion_tokens":5,"max_tokens":9,"temperature":0,"top_p":0.5,"top_k":3,
                "seed":-1,"stop":"\n","stream":true,"stream_options":{"include_usage":true},"n":1,
                "user":"ignored","logprobs":false,"tools":[],"presence_penalty":0,
                "response_format":{"type":"text"}}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].role, "system");
        assert_eq!(r.messages[1].content, "Hi\n!", "parts, one per line");
        let g = r.generation;
        assert_eq!(g.max_tokens, Some(5), "the smaller budget wins");
        assert_eq!(
            g.decoding.sampling,
            SamplingParams {
                temperature: 0.0,
                top_p: 0.5,
                top_k: 3,
                ..SamplingParams::default()
            }
        );
        assert_eq!(g.decoding.seed, Some(u64::MAX));
        assert_eq!(g.decoding.stop, vec!["\n".to_string()]);
        assert!(g.stream && g.include_usage);
    }

    #[test]
    fn bad_bodies_name_their_parameter() {
        for (body, param, needle) in [
            (
                r#"{"model":"m","messages":[]}"#,
                Some("messages"),
                "must not be empty",
            ),
            (r#"{"model":"m"}"#, Some("messages"), "required"),
            // The generation fields are checked by `validation` as the body
            // is parsed (its tests cover each one).
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
                "required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}"#,
                Some("n"),
                "between 1 and 128",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":129}"#,
                Some("n"),
                "between 1 and 128",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"best_of":2}"#,
                Some("best_of"),
                "use `n`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":3,"best_of":2}"#,
                Some("best_of"),
                "at least `n`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"function","content":"x"}]}"#,
                Some("messages"),
                "unsupported role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                Some("messages"),
                "needs the `tool_call_id`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x","tool_calls":[{"id":"1"}]}]}"#,
                Some("messages"),
                "only assistant messages",
            ),
            (
                r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"1","function":{}}]}]}"#,
                Some("messages"),
                "function.name is required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                Some("messages"),
                "only text",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
                Some("messages"),
                "needs its `text`",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":"json_object"}"#,
                Some("response_format"),
                "must be an object",
            ),
            (r#"{"model":"m","messages":"hi"}"#, None, "does not match"),
            (r#"{"model":"m","#, None, "not valid JSON"),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param, param, "{body}: {}", e.message);
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn completion_prompts_take_text_or_token_ids_but_one_prompt() {
        let p = |b: &str| parse_completion(b.as_bytes()).map(|r| r.prompt);
        assert_eq!(
            p(r#"{"model":"m","prompt":"hi"}"#).unwrap(),
            Prompt::Text("hi".into())
        );
        assert_eq!(
            p(r#"{"model":"m","prompt":["hi"]}"#).unwrap(),
            Prompt::Text("hi".into())
        );
        assert_eq!(
            p(r#"{"model":"m","prompt":[1,2]}"#).unwrap(),
            Prompt::Tokens(vec![1, 2])
        );
        assert_eq!(
            p(r#"{"model":"m","prompt":[[3]]}"#).unwrap(),
            Prompt::Tokens(vec![3])
        );
        assert_eq!(
            p(r#"{"model":"m","prompt":["a","b"]}"#).unwrap_err().param,
            Some("prompt")
        );
        assert_eq!(p(r#"{"model":"m"}"#).unwrap_err().param, Some("prompt"));
        let empty = p(r#"{"model":"m","prompt":[]}"#).unwrap_err();
        assert_eq!(
            (empty.param, empty.message.as_str()),
            (Some("prompt"), "`prompt` is an empty list.")
        );
        assert_eq!(
            p(r#"{"model":"m","prompt":"x","echo":true}"#)
                .unwrap_err()
                .param,
            Some("echo")
        );
    }
}
