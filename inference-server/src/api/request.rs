//! Parsing and validating OpenAI request bodies. Everything a request can get
//! wrong is found here, before it takes an engine slot, and named precisely.

use serde::Deserialize;

use super::error::ApiError;
use crate::sampling::SamplingParams;
use crate::text::ChatMessage;

/// The fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct GenerationFields {
    pub model: Option<String>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    seed: Option<i64>,
    stop: Option<StopField>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    best_of: Option<i64>,
    logprobs: Option<serde_json::Value>,
    echo: Option<bool>,
    /// vLLM's extension: keep generating through end-of-sequence tokens
    /// (benchmarks need fixed-length completions).
    ignore_eos: Option<bool>,
    // Accepted only at their neutral values: a client relying on them must
    // hear that this server does not do them, not get plain text back.
    tools: Option<serde_json::Value>,
    functions: Option<serde_json::Value>,
    response_format: Option<serde_json::Value>,
    logit_bias: Option<serde_json::Value>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// What a request asks of generation, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub model: String,
    /// `None`: as many as fit in the context.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

/// OpenAI accepts at most four stop sequences.
const MAX_STOPS: usize = 4;
/// Longer stop strings only cost the engine time (the matcher holds back up
/// to one stop's length of text) and no real use needs them.
const MAX_STOP_BYTES: usize = 256;

fn is_empty_value(v: &Option<serde_json::Value>) -> bool {
    use serde_json::Value;
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

impl GenerationFields {
    fn validate(self) -> Result<Generation, ApiError> {
        let model = match self.model {
            Some(m) if !m.is_empty() => m,
            _ => return Err(ApiError::invalid(Some("model"), "`model` is required.")),
        };
        for (value, param) in [(self.n, "n"), (self.best_of, "best_of")] {
            if let Some(v) = value.filter(|v| *v != 1) {
                return Err(ApiError::invalid(
                    Some(param),
                    format!("`{param}` must be 1 (this server returns one choice per request); got {v}."),
                ));
            }
        }
        let wants_logprobs = match &self.logprobs {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => false,
            Some(_) => true,
        };
        if wants_logprobs {
            return Err(ApiError::invalid(
                Some("logprobs"),
                "`logprobs` is not supported by this server.",
            ));
        }
        if self.echo == Some(true) {
            return Err(ApiError::invalid(
                Some("echo"),
                "`echo` is not supported by this server.",
            ));
        }
        for (value, param) in [
            (&self.tools, "tools"),
            (&self.functions, "functions"),
            (&self.logit_bias, "logit_bias"),
        ] {
            if !is_empty_value(value) {
                return Err(ApiError::invalid(
                    Some(param),
                    format!("`{param}` is not supported by this server."),
                ));
            }
        }
        let text_format = match &self.response_format {
            None | Some(serde_json::Value::Null) => true,
            Some(f) => f.get("type").and_then(|t| t.as_str()) == Some("text"),
        };
        if !text_format {
            return Err(ApiError::invalid(
                Some("response_format"),
                "Only `{\"type\": \"text\"}` is supported for `response_format`.",
            ));
        }
        for (value, param) in [
            (self.presence_penalty, "presence_penalty"),
            (self.frequency_penalty, "frequency_penalty"),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(
                    Some(param),
                    format!("`{param}` other than 0 is not supported by this server."),
                ));
            }
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => Some((v, "max_completion_tokens")),
            (None, Some(v)) => Some((v, "max_tokens")),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            Some((v, param)) if v < 1 => {
                return Err(ApiError::invalid(
                    Some(param),
                    format!("`{param}` must be at least 1; got {v}."),
                ))
            }
            Some((v, _)) => Some(usize::try_from(v).unwrap_or(usize::MAX)),
            None => None,
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("`temperature` must be between 0 and 2; got {temperature}."),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                Some("top_p"),
                format!("`top_p` must be in (0, 1]; got {top_p}."),
            ));
        }
        // vLLM's convention: -1 and 0 both mean "no top-k".
        let top_k = match self.top_k.unwrap_or(0) {
            k if k < -1 => {
                return Err(ApiError::invalid(
                    Some("top_k"),
                    format!("`top_k` must be -1, 0 (disabled) or positive; got {k}."),
                ))
            }
            k => usize::try_from(k).unwrap_or(0),
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                Some("stop"),
                format!(
                    "`stop` takes at most {MAX_STOPS} sequences; got {}.",
                    stop.len()
                ),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                Some("stop"),
                "`stop` sequences must not be empty.",
            ));
        }
        if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("`stop` sequences may be at most {MAX_STOP_BYTES} bytes long."),
            ));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "`stream_options` is only allowed when `stream` is true.",
            ));
        }
        let include_usage = self
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        Ok(Generation {
            model,
            max_tokens,
            sampling: SamplingParams {
                temperature: temperature as f32,
                top_p: top_p as f32,
                top_k,
            },
            // Negative seeds are valid in OpenAI's API; keep their bits.
            seed: self.seed.map(|s| s as u64),
            stop,
            stream,
            include_usage,
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Option<Vec<MessageBody>>,
    #[serde(flatten)]
    fields: GenerationFields,
}

#[derive(Debug, Deserialize)]
struct MessageBody {
    role: String,
    #[serde(default)]
    content: Option<Content>,
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
    pub generation: Generation,
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

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
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
    let generation = body.fields.validate()?;
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
        generation,
    })
}

fn message(index: usize, m: MessageBody) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "user" | "assistant" => m.role,
        // OpenAI's newer name for system instructions.
        "developer" => "system".to_string(),
        other => {
            return Err(ApiError::invalid(
                Some("messages"),
                format!("messages[{index}].role: unsupported role {other:?} (use system, developer, user or assistant)."),
            ))
        }
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            Some("messages"),
                            format!("messages[{index}].content[{j}]: only text parts are supported, got {kind:?}."),
                        ))
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage { role, content })
}

pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let body: CompletionBody = parse_json(body)?;
    let generation = body.fields.validate()?;
    let one = || ApiError::invalid(Some("prompt"), "This server takes one prompt per request.");
    let prompt = match body.prompt {
        None => return Err(ApiError::invalid(Some("prompt"), "`prompt` is required.")),
        Some(PromptBody::Text(t)) => Prompt::Text(t),
        Some(PromptBody::Texts(mut v)) if v.len() == 1 => Prompt::Text(v.remove(0)),
        Some(PromptBody::Tokens(t)) => Prompt::Tokens(t),
        Some(PromptBody::TokenLists(mut v)) if v.len() == 1 => Prompt::Tokens(v.remove(0)),
        Some(_) => return Err(one()),
    };
    Ok(CompletionRequest { prompt, generation })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ChatRequest, ApiError> {
        parse_chat(body.as_bytes())
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
        assert_eq!(r.messages[1].content, "Hi!");
        let g = r.generation;
        assert_eq!(g.max_tokens, Some(5), "max_completion_tokens wins");
        assert_eq!(
            g.sampling,
            SamplingParams {
                temperature: 0.0,
                top_p: 0.5,
                top_k: 3
            }
        );
        assert_eq!(g.seed, Some(u64::MAX));
        assert_eq!(g.stop, vec!["\n".to_string()]);
        assert!(g.stream && g.include_usage);
    }

    #[test]
    fn bad_inputs_name_their_parameter() {
        for (body, param, needle) in [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
                Some("n"),
                "must be 1",
            ),
            (
                r#"{"model":"m","messages":[]}"#,
                Some("messages"),
                "must not be empty",
            ),
            (r#"{"model":"m"}"#, Some("messages"), "required"),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
                "required",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                Some("max_tokens"),
                "at least 1",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                Some("temperature"),
                "between 0 and 2",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":0}"#,
                Some("top_p"),
                "(0, 1]",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_k":-5}"#,
                Some("top_k"),
                "disabled",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
                Some("stop"),
                "at most 4",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":""}"#,
                Some("stop"),
                "empty",
            ),
            (
                r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
                Some("messages"),
                "unsupported role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                Some("messages"),
                "only text",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true}"#,
                Some("logprobs"),
                "not supported",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                Some("tools"),
                "not supported",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
                Some("response_format"),
                "text",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"presence_penalty":0.5}"#,
                Some("presence_penalty"),
                "other than 0",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
                Some("stream_options"),
                "only allowed",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
                Some("stop"),
                "at most 256 bytes",
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
        assert_eq!(
            p(r#"{"model":"m","prompt":"x","echo":true}"#)
                .unwrap_err()
                .param,
            Some("echo")
        );
    }
}
