//! The one place a request becomes work the engine can run, as TGI's
//! `validation.rs` turns a request into a `ValidGenerateRequest` once.
//!
//! Two stages, both here, each refusal an OpenAI-style 400 naming its
//! parameter:
//! - [`generation`], as the body is parsed: the fields on their own
//!   (unsupported features refused, ranges checked, defaults applied, the
//!   completion budget read). It needs no model, so a bad request hears 400
//!   even while the model loads.
//! - [`chat`] / [`completion`], once the model is ready: the model id, the
//!   prompt rendered and tokenised (or its ids checked against the
//!   vocabulary), then its length against the context.
//!
//! **The completion budget.** `max_tokens` and `max_completion_tokens` both
//! set it, each must be at least 1, and when both are set the smaller wins.
//! The gateway applies the same rule (`maas_filter`'s `requested_max_tokens`)
//! and rewrites both fields to it, so what it reserved is what runs here. No
//! budget: whatever the context leaves after the prompt.
//!
//! A [`ValidRequest`] guarantees: a non-empty prompt of ids inside the
//! vocabulary, a budget of at least 1, and prompt plus budget within the
//! context. The engine trusts this and checks none of it again.

use std::sync::Arc;

use super::error::ApiError;
use super::request::{ChatRequest, CompletionRequest, GenerationFields, Prompt, StopField};
use super::response::Shape;
use super::tool_calls::{self, ParsedOutput, ToolCallFormat};
use super::tools::{self, ToolChoice, Tools};
use super::Ready;
use super::{reasoning, unsupported};
use crate::engine::grammar::{self, GrammarError, Grammars, ResponseFormat};
use crate::engine::kv_blocks::KvShape;
use crate::engine::sampling::SamplingParams;
use crate::engine::{Constraint, Decoding, FinishReason, GenerationParams};
use crate::text::{TextError, TextTokenizer};

/// What a request asks of generation, its fields checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub model: String,
    /// The completion budget asked for (the rule is the module's); `None`:
    /// as many as fit in the context.
    pub max_tokens: Option<usize>,
    /// `logit_bias` sorted, its ids not yet checked against the vocabulary.
    pub decoding: Decoding,
    /// `response_format` other than text; compiled in the second stage.
    pub format: Option<ResponseFormat>,
    /// Chat only.
    pub tools: Option<Tools>,
    /// Choices asked for (`n`), at least 1.
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

/// How a chat answer is read back for tool calls.
#[derive(Debug, Clone)]
pub struct ToolCallParsing {
    pub format: ToolCallFormat,
    pub names: Vec<String>,
    /// The grammar forcing a call (`required` or a named function).
    pub forced: Option<String>,
    /// `parallel_tool_calls`: false keeps only the first call.
    pub parallel: bool,
}

impl ToolCallParsing {
    /// The calls in a finished answer, if it made any, and its
    /// `finish_reason`: `tool_calls`, or `length` for the whole calls of a
    /// forced answer the budget cut inside a further call (streaming has
    /// sent those already; they are valid, the cut one is left out).
    pub fn calls_in(
        &self,
        text: &str,
        reason: FinishReason,
    ) -> Option<(ParsedOutput, &'static str)> {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let cut = reason == FinishReason::Length;
        let short = |parsed: &ParsedOutput| cut || parsed.cut || parsed.tool_calls.is_empty();
        let (mut parsed, finish) = match tool_calls::parse(self.format, text, &names) {
            // Forced, the grammar made the answer a prefix of the format's
            // list of calls, which the budget or a stop string cut short:
            // the calls it finished, and why it ended.
            parsed if self.forced.is_some() && short(&parsed) => (
                tool_calls::whole_calls(self.format, text, &names)?,
                reason.as_str(),
            ),
            // Cut short, the answer does not end with its calls (OpenAI's
            // "length", or the stop that cut it), as a stream ends.
            parsed if cut || parsed.cut => (parsed, reason.as_str()),
            parsed => (parsed, "tool_calls"),
        };
        if !self.parallel {
            parsed.tool_calls.truncate(1);
        }
        (!parsed.tool_calls.is_empty()).then_some((parsed, finish))
    }

    /// A reader for one streamed answer, sending its calls as they are
    /// written (see `tool_calls::ToolCallStream`).
    pub fn stream(&self) -> tool_calls::ToolCallStream {
        tool_calls::ToolCallStream::new(self.format, self.names.clone(), !self.parallel)
    }
}

/// A request checked against the model: what the engine runs, and how the
/// client wants the answer.
#[derive(Debug)]
pub struct ValidRequest {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    /// Parse the answer for tool calls, in this format, of these tools.
    pub tool_calls: Option<ToolCallParsing>,
    /// Choices to sample from the one prompt (`n`), at least 1.
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Split the answer's thinking from its content (`reasoning`): `Some`
    /// with whether the prompt already opened it.
    pub reasoning: Option<bool>,
}

/// More would only cost each step's sampling time; OpenAI's clients send a
/// handful (OpenAI documents no limit; this is generous).
const MAX_LOGIT_BIAS: usize = 1024;
/// OpenAI's limit for chat, vLLM's default for both endpoints.
const MAX_TOP_LOGPROBS: usize = 20;
/// OpenAI's own bound on `n`; the server's running sequences bound it
/// further (see `check_against_model`).
const MAX_CHOICES: i64 = 128;
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

/// The first stage: the body's fields on their own.
pub(super) fn generation(f: GenerationFields, shape: Shape) -> Result<Generation, ApiError> {
    let model = match f.model {
        Some(m) if !m.is_empty() => m,
        _ => return Err(ApiError::invalid(Some("model"), "`model` is required.")),
    };
    unsupported::check(&f.other, shape)?;
    let n = match f.n {
        None => 1,
        Some(n @ 1..=MAX_CHOICES) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                Some("n"),
                format!("`n` must be between 1 and {MAX_CHOICES}; got {n}."),
            ))
        }
    };
    // `best_of` equal to `n` asks for nothing more than `n` does; above it,
    // OpenAI would sample more and return the likeliest, which this server
    // does not do.
    match f.best_of {
        Some(b) if b < n as i64 => {
            return Err(ApiError::invalid(
                Some("best_of"),
                format!("`best_of` ({b}) must be at least `n` ({n})."),
            ))
        }
        Some(b) if b > n as i64 => {
            return Err(ApiError::invalid(
                Some("best_of"),
                format!(
                    "`best_of` above `n` is not supported (this server returns every choice it samples; use `n`); got {b}."
                ),
            ))
        }
        _ => {}
    }
    let logprobs = logprobs(shape, f.logprobs, f.top_logprobs)?;
    if f.echo == Some(true) {
        return Err(ApiError::invalid(
            Some("echo"),
            "`echo` is not supported by this server.",
        ));
    }
    if !is_empty_value(&f.functions) {
        return Err(ApiError::invalid(
            Some("functions"),
            "`functions` (deprecated by OpenAI) is not supported; use `tools`.",
        ));
    }
    let tools = tools::parse(f.tools, f.tool_choice, f.parallel_tool_calls)?;
    if shape == Shape::Completion && tools.is_some() {
        return Err(ApiError::invalid(
            Some("tools"),
            "`tools` is a chat field; use /v1/chat/completions.",
        ));
    }
    let format = response_format(f.response_format)?;
    let forced = tools
        .as_ref()
        .is_some_and(|t| matches!(t.choice, ToolChoice::Required | ToolChoice::Named(_)));
    // A forced call is the whole answer, so a format (checked above) has
    // nothing to shape: the call wins, as with OpenAI and vLLM. Agent SDKs
    // send both when a step names a tool and the agent an output type.
    let format = format.filter(|_| !forced);
    let penalty = |value: Option<f64>, param: &'static str| {
        let v = value.unwrap_or(0.0);
        if (-2.0..=2.0).contains(&v) {
            Ok(v as f32)
        } else {
            Err(ApiError::invalid(
                Some(param),
                format!("`{param}` must be between -2 and 2; got {v}."),
            ))
        }
    };
    let presence_penalty = penalty(f.presence_penalty, "presence_penalty")?;
    let frequency_penalty = penalty(f.frequency_penalty, "frequency_penalty")?;
    let logit_bias = logit_bias(f.logit_bias)?;
    let max_tokens = completion_budget(f.max_tokens, f.max_completion_tokens, f.n_predict)?;
    let temperature = f.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("`temperature` must be between 0 and 2; got {temperature}."),
        ));
    }
    let top_p = f.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("`top_p` must be in (0, 1]; got {top_p}."),
        ));
    }
    // vLLM's convention: -1 and 0 both mean "no top-k".
    let top_k = match f.top_k.unwrap_or(0) {
        k if k < -1 => {
            return Err(ApiError::invalid(
                Some("top_k"),
                format!("`top_k` must be -1, 0 (disabled) or positive; got {k}."),
            ))
        }
        k => usize::try_from(k).unwrap_or(0),
    };
    let stop = match f.stop {
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
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            Some("stream_options"),
            "`stream_options` is only allowed when `stream` is true.",
        ));
    }
    let include_usage = f
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(Generation {
        model,
        max_tokens,
        decoding: Decoding {
            sampling: SamplingParams {
                temperature: temperature as f32,
                top_p: top_p as f32,
                top_k,
                presence_penalty,
                frequency_penalty,
            },
            logit_bias,
            logprobs,
            // Negative seeds are valid in OpenAI's API; keep their bits.
            seed: f.seed.map(|s| s as u64),
            stop,
            ignore_eos: f.ignore_eos.unwrap_or(false),
        },
        format,
        tools,
        n,
        stream,
        include_usage,
    })
}

/// OpenAI's `response_format`: `text` (the default), `json_object`, or
/// `json_schema` with its `name`, `schema` and optional `strict` (always
/// enforced here: the output is constrained whatever `strict` says, as in
/// vLLM). The schema is compiled in the second stage.
fn response_format(value: Option<serde_json::Value>) -> Result<Option<ResponseFormat>, ApiError> {
    use serde_json::Value;
    let bad = |param: &'static str, message: String| ApiError::invalid(Some(param), message);
    let value = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(bad(
                "response_format",
                format!("`response_format` must be an object such as {{\"type\": \"json_object\"}}; got {other}."),
            ))
        }
    };
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => {
            let spec = value.get("json_schema").and_then(Value::as_object).ok_or_else(|| {
                bad(
                    "response_format.json_schema",
                    "`response_format.json_schema` must be an object with `name` and `schema`."
                        .into(),
                )
            })?;
            match spec.get("name").and_then(Value::as_str) {
                Some(name) if tools::valid_name(name) => {}
                _ => {
                    return Err(bad(
                        "response_format.json_schema.name",
                        "`response_format.json_schema.name` must be 1 to 64 letters, digits, `_` or `-`."
                            .into(),
                    ))
                }
            }
            if let Some(strict) = spec.get("strict").filter(|s| !s.is_null() && !s.is_boolean()) {
                return Err(bad(
                    "response_format.json_schema.strict",
                    format!("`response_format.json_schema.strict` must be true or false; got {strict}."),
                ));
            }
            let strict = spec.get("strict").and_then(Value::as_bool) == Some(true);
            match spec.get("schema") {
                Some(schema @ Value::Object(_)) => {
                    let mut schema = schema.clone();
                    if !strict {
                        grammar::compact_lenient_json(&mut schema);
                    }
                    Ok(Some(ResponseFormat::JsonSchema(schema)))
                }
                Some(other) => Err(bad(
                    "response_format.json_schema.schema",
                    format!("`response_format.json_schema.schema` must be a JSON schema object; got {other}."),
                )),
                None => Err(bad(
                    "response_format.json_schema.schema",
                    "`response_format.json_schema.schema` is required.".into(),
                )),
            }
        }
        _ => Err(bad(
            "response_format",
            format!(
                "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\"; got {}.",
                value.get("type").unwrap_or(&Value::Null)
            ),
        )),
    }
}

/// Log-probabilities asked for, as each endpoint spells it: chat
/// `logprobs: true` with `top_logprobs: 0..=20`; completions `logprobs: N`,
/// the alternatives wanted, up to 20 (OpenAI's limit is 5, vLLM's 20).
fn logprobs(
    shape: Shape,
    logprobs: Option<serde_json::Value>,
    top_logprobs: Option<serde_json::Value>,
) -> Result<Option<usize>, ApiError> {
    use serde_json::Value;
    let top = |value: &Value, param: &'static str| {
        value
            .as_u64()
            .filter(|k| *k <= MAX_TOP_LOGPROBS as u64)
            .map(|k| k as usize)
            .ok_or_else(|| {
                ApiError::invalid(
                    Some(param),
                    format!(
                        "`{param}` must be an integer from 0 to {MAX_TOP_LOGPROBS}; got {value}."
                    ),
                )
            })
    };
    let top_logprobs = top_logprobs.filter(|v| !v.is_null());
    match shape {
        Shape::Chat => match logprobs.unwrap_or(Value::Null) {
            Value::Bool(true) => top_logprobs
                .map_or(Ok(0), |v| top(&v, "top_logprobs"))
                .map(Some),
            Value::Bool(false) | Value::Null if top_logprobs.is_some() => Err(ApiError::invalid(
                Some("top_logprobs"),
                "`top_logprobs` needs `logprobs: true`.",
            )),
            Value::Bool(false) | Value::Null => Ok(None),
            other => Err(ApiError::invalid(
                Some("logprobs"),
                format!("`logprobs` must be true or false for chat completions; got {other}."),
            )),
        },
        Shape::Completion => {
            if top_logprobs.is_some() {
                return Err(ApiError::invalid(
                    Some("top_logprobs"),
                    "`top_logprobs` is a chat field; completions take `logprobs: N`.",
                ));
            }
            match logprobs {
                None | Some(Value::Null) => Ok(None),
                Some(v) => top(&v, "logprobs").map(Some),
            }
        }
    }
}

/// OpenAI's `logit_bias`: token ids (as JSON object keys) to a bias in
/// [-100, 100] added to their logits. Ids are checked against the model's
/// vocabulary in the second stage ([`check_against_model`]).
fn logit_bias(value: Option<serde_json::Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    use serde_json::Value;
    let bad = |message: String| ApiError::invalid(Some("logit_bias"), message);
    let entries = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(entries)) => entries,
        Some(other) => {
            return Err(bad(format!(
                "`logit_bias` must be an object of token ids to biases; got {other}."
            )))
        }
    };
    if entries.len() > MAX_LOGIT_BIAS {
        return Err(bad(format!(
            "`logit_bias` takes at most {MAX_LOGIT_BIAS} tokens; got {}.",
            entries.len()
        )));
    }
    let mut biases = Vec::with_capacity(entries.len());
    for (key, bias) in entries {
        let token = key
            .parse::<u32>()
            .map_err(|_| bad(format!("`logit_bias` keys are token ids; got {key:?}.")))?;
        let bias = bias
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                bad(format!(
                    "`logit_bias` values must be numbers between -100 and 100; got {bias} for token {token}."
                ))
            })?;
        biases.push((token, bias as f32));
    }
    // Object keys are distinct strings, but "7" and "07" name one token.
    biases.sort_unstable_by_key(|&(token, _)| token);
    if let Some(w) = biases.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(bad(format!("`logit_bias` names token {} twice.", w[0].0)));
    }
    Ok(biases)
}

/// The module's budget rule: each field set must be at least 1, and the
/// smallest wins. llama.cpp's `n_predict` counts as a third field, where a
/// negative value names no budget (as llama-server and the gateway read it).
fn completion_budget(
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    n_predict: Option<i64>,
) -> Result<Option<usize>, ApiError> {
    let mut budget: Option<usize> = None;
    for (value, param) in [
        (max_completion_tokens, "max_completion_tokens"),
        (max_tokens, "max_tokens"),
        (n_predict.filter(|v| *v >= 0), "n_predict"),
    ] {
        let Some(v) = value else { continue };
        if v < 1 {
            return Err(ApiError::invalid(
                Some(param),
                format!("`{param}` must be at least 1; got {v}."),
            ));
        }
        let v = usize::try_from(v).unwrap_or(usize::MAX);
        budget = Some(budget.map_or(v, |b| b.min(v)));
    }
    Ok(budget)
}

/// The second stage for a chat: rendered with the model's template,
/// tokenised, and fitted to the context.
pub(super) async fn chat(
    mut req: ChatRequest,
    model_id: &str,
    ready: &Ready,
) -> Result<ValidRequest, ApiError> {
    check_against_model(model_id, &req.generation, ready)?;
    let (template, _) = ready.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            None,
            "This model has no chat template; use /v1/completions.",
        )
    })?;
    let active = req.generation.tools.as_ref().filter(|t| t.active());
    // What the template is given: the messages as sent, or rewritten with
    // the tools (or their history) as text; and the tools it writes itself.
    let (rewritten, tools, format) = match active {
        // A conversation with tool turns and no tools now (`tool_choice`
        // "none", or the final answer after the calls), for a template
        // that knows no tool turns: written as text, as when tools are on.
        None if !template.renders_tools() && tools::has_tool_turns(&req.messages) => {
            (Some(tools::hermes_history(&req.messages)), None, None)
        }
        None => (None, None, None),
        Some(t) if template.renders_tools() => (
            None,
            Some(t.template_value()),
            Some(ToolCallFormat::for_template(template.source())),
        ),
        Some(t) => (
            Some(tools::hermes_messages(t, &req.messages)),
            None,
            Some(ToolCallFormat::Hermes),
        ),
    };
    let messages = rewritten.unwrap_or_else(|| std::mem::take(&mut req.messages));
    let kwargs = std::mem::take(&mut req.template_kwargs);
    // Rendering a large conversation takes milliseconds of CPU: off the
    // I/O threads, as tokenizing is.
    let renderer = Arc::clone(template);
    let rendered = tokio::task::spawn_blocking(move || {
        renderer.render_with(&messages, tools.as_deref(), &kwargs, true)
    })
    .await
    .map_err(task_failed("chat template"))?;
    let tokenizer = &ready.loaded.tokenizer;
    let special = |marker: &str| tokenizer.special_token_id(marker);
    let parsing = active.zip(format).map(|(t, format)| ToolCallParsing {
        format,
        names: t.names().into_iter().map(str::to_string).collect(),
        forced: tools::forced_call_grammar(t, format, &special),
        parallel: t.parallel && format.calls_several(),
    });
    // The parser reads the format's markers in the answer's text, even
    // where the vocabulary has them as control tokens.
    let shown_special: Vec<u32> = format
        .map(|f| f.markers().iter().filter_map(|m| special(m)).collect())
        .unwrap_or_default();
    let text = rendered.map_err(|e| {
        ApiError::invalid(
            Some("messages"),
            format!("The chat template refused the messages: {e}."),
        )
    })?;
    let reasoning = ready
        .reasoning
        .then(|| reasoning::prompt_opens_thinking(&text));
    let prompt = tokenize(ready, text, TextTokenizer::encode_chat).await?;
    // A call forced; or, under `auto` with a response format, a call or
    // the formatted answer; or the response format alone.
    let answer = req.generation.format.as_ref();
    let lark = parsing.as_ref().and_then(|p| p.forced.clone()).or_else(|| {
        active
            .zip(format)
            .zip(answer)
            .and_then(|((t, calls), answer)| {
                tools::call_or_answer_grammar(t, calls, answer, &special)
            })
    });
    let constraint = match lark {
        Some(lark) => Some(ResponseFormat::Lark(lark)),
        None => req.generation.format.clone(),
    };
    let grammar = compile(ready, constraint.as_ref()).await?;
    let mut valid = fit(prompt, req.generation, grammar, ready.room(), "messages")?;
    valid.tool_calls = parsing;
    // A grammar writes the answer from the first token: where the prompt
    // opened the thinking, what it forces is the answer, not thoughts.
    valid.reasoning = reasoning.filter(|&inside| !(inside && valid.params.grammar.is_some()));
    valid.params.shown_special = shown_special;
    Ok(valid)
}

/// The second stage for a completion: its text tokenised, or its ids checked
/// against the vocabulary, and fitted to the context.
pub(super) async fn completion(
    req: CompletionRequest,
    model_id: &str,
    ready: &Ready,
) -> Result<ValidRequest, ApiError> {
    check_against_model(model_id, &req.generation, ready)?;
    let prompt = match req.prompt {
        Prompt::Text(text) => tokenize(ready, text, TextTokenizer::encode).await?,
        Prompt::Tokens(ids) => {
            let vocab = ready.loaded.model.vocab_size();
            if let Some(bad) = ids.iter().find(|id| **id as usize >= vocab) {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    format!("Token id {bad} is outside the vocabulary of {vocab}."),
                ));
            }
            ids
        }
    };
    let grammar = compile(ready, req.generation.format.as_ref()).await?;
    fit(prompt, req.generation, grammar, ready.room(), "prompt")
}

/// What the first stage could not check without the model: its id, the
/// token ids `logit_bias` names, and `n` against the sequences the engine
/// runs at once (a request's choices run together).
fn check_against_model(model_id: &str, g: &Generation, ready: &Ready) -> Result<(), ApiError> {
    if g.model != model_id {
        return Err(ApiError::model_not_found(&g.model));
    }
    let most = ready.engine.max_choices();
    if g.n > most {
        return Err(ApiError::invalid(
            Some("n"),
            format!(
                "`n` is {}, but this server runs at most {most} sequences at once (--max-running).",
                g.n
            ),
        ));
    }
    let vocab = ready.loaded.model.vocab_size();
    if let Some((bad, _)) = g
        .decoding
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= vocab)
    {
        return Err(ApiError::invalid(
            Some("logit_bias"),
            format!("Token id {bad} is outside the vocabulary of {vocab}."),
        ));
    }
    Ok(())
}

/// A blocking task's panic (or cancellation at shutdown) as the server's own
/// failure, a 500.
fn task_failed(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> ApiError {
    move |e| ApiError::internal(format!("{what} task failed: {e}"))
}

/// Tokenizing a large prompt takes milliseconds: keep it off the I/O threads.
async fn tokenize(
    ready: &Ready,
    text: String,
    encode: fn(&TextTokenizer, &str) -> Result<Vec<u32>, TextError>,
) -> Result<Vec<u32>, ApiError> {
    let tokenizer = ready.loaded.tokenizer.clone();
    tokio::task::spawn_blocking(move || encode(&tokenizer, &text))
        .await
        .map_err(task_failed("tokenizer"))?
        .map_err(|e| ApiError::invalid(None, format!("The prompt could not be tokenized: {e}.")))
}

/// The response format compiled over the model's vocabulary (the compiler
/// itself built on first use), off the I/O threads: a large schema takes
/// milliseconds. A schema the grammar engine refuses is the client's 400.
async fn compile(
    ready: &Ready,
    format: Option<&ResponseFormat>,
) -> Result<Option<Constraint>, ApiError> {
    let Some(format) = format.cloned() else {
        return Ok(None);
    };
    let grammars = ready.grammars.clone();
    let tokenizer = ready.loaded.tokenizer.clone();
    let compiled = tokio::task::spawn_blocking(move || {
        let grammars = grammars
            .get_or_init(|| Grammars::new(tokenizer).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ApiError::internal(format!("constrained decoding is unavailable: {e}")))?;
        grammars.compile(&format).map_err(|e| match e {
            GrammarError::Compile(message) => {
                let param = match format {
                    ResponseFormat::JsonObject => "response_format",
                    ResponseFormat::JsonSchema(_) => "response_format.json_schema.schema",
                    ResponseFormat::Lark(_) => "tools",
                };
                ApiError::invalid(
                    Some(param),
                    format!("The schema cannot be enforced: {message}"),
                )
            }
            other => ApiError::internal(other.to_string()),
        })
    })
    .await
    .map_err(task_failed("schema compiler"))??;
    Ok(Some(compiled))
}

/// Lengths: a prompt, and room for the budget after it in the `context`
/// (the model's positions, capped by `--context`); no budget asked: the
/// rest of the context. `param` names the prompt's field in refusals.
/// What a request must fit in: the context, and the KV memory for its
/// prompt and choices at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Room {
    pub context: usize,
    pub kv: KvShape,
}

fn fit(
    prompt: Vec<u32>,
    g: Generation,
    grammar: Option<Constraint>,
    fits: Room,
    param: &'static str,
) -> Result<ValidRequest, ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::invalid(Some(param), "The prompt is empty."));
    }
    let context = fits.context;
    let room = context.saturating_sub(prompt.len());
    let max_new_tokens = match g.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::invalid(
                Some(param),
                format!(
                    "This model's maximum context length is {context} tokens. However, you requested {} tokens ({} in the prompt, {n} for the completion). Please reduce the prompt or the completion length.",
                    prompt.len().saturating_add(n),
                    prompt.len()
                ),
            )
            .with_code("context_length_exceeded"))
        }
        Some(n) => n,
        None if room == 0 => {
            return Err(ApiError::invalid(
                Some(param),
                format!(
                    "This model's maximum context length is {context} tokens, and the prompt alone has {} tokens.",
                    prompt.len()
                ),
            )
            .with_code("context_length_exceeded"))
        }
        None => room,
    };
    // The scheduler would refuse it only once queued, after a stream's 200;
    // it can never run, so it is the client's error, not a 503 to retry.
    let needed = fits.kv.group_blocks(prompt.len(), g.n);
    if needed > fits.kv.blocks {
        return Err(ApiError::invalid(
            Some("n"),
            format!(
                "{} choices of a {}-token prompt need {needed} KV cache blocks at once, but this server holds {} (--kv-cache-memory); ask for fewer choices or a shorter prompt.",
                g.n,
                prompt.len(),
                fits.kv.blocks
            ),
        ));
    }
    Ok(ValidRequest {
        prompt,
        params: GenerationParams {
            max_new_tokens,
            decoding: g.decoding,
            grammar,
            shown_special: Vec::new(),
        },
        tool_calls: None,
        n: g.n,
        stream: g.stream,
        include_usage: g.include_usage,
        reasoning: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(extra: &str) -> Result<Generation, ApiError> {
        let body = format!(r#"{{"model":"m"{extra}}}"#);
        generation(serde_json::from_str(&body).unwrap(), Shape::Chat)
    }

    #[test]
    fn parallel_tool_calls_false_keeps_the_first_call() {
        let text = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
        let mut parsing = ToolCallParsing {
            format: ToolCallFormat::Hermes,
            names: vec!["a".into(), "b".into()],
            forced: None,
            parallel: true,
        };
        let (parsed, finish) = parsing.calls_in(text, FinishReason::Stop).unwrap();
        assert_eq!((parsed.tool_calls.len(), finish), (2, "tool_calls"));
        parsing.parallel = false;
        let calls = parsing
            .calls_in(text, FinishReason::Stop)
            .unwrap()
            .0
            .tool_calls;
        assert_eq!((calls.len(), calls[0].name.as_str()), (1, "a"));
        assert!(parsing.calls_in("no calls", FinishReason::Stop).is_none());
    }

    #[test]
    fn a_forced_answer_cut_inside_a_further_call_keeps_its_whole_calls() {
        let cut = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"argu";
        let mut parsing = ToolCallParsing {
            format: ToolCallFormat::Hermes,
            names: vec!["a".into(), "b".into()],
            forced: Some("start: …".into()),
            parallel: true,
        };
        let (parsed, finish) = parsing.calls_in(cut, FinishReason::Length).unwrap();
        assert_eq!(finish, "length");
        assert_eq!(parsed.content, None);
        let calls: Vec<_> = parsed
            .tool_calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(calls, [("a", r#"{"x":1}"#)]);
        // A stop string cut it: the same calls, ended by the stop.
        let (parsed, finish) = parsing.calls_in(cut, FinishReason::Stop).unwrap();
        assert_eq!((parsed.tool_calls.len(), finish), (1, "stop"));
        // Not forced: the whole call, and the cut one as the text the
        // model wrote (as a stream sends them).
        parsing.forced = None;
        let (parsed, finish) = parsing.calls_in(cut, FinishReason::Length).unwrap();
        assert_eq!((parsed.tool_calls.len(), finish), (1, "length"));
        assert_eq!(
            parsed.content.as_deref(),
            Some("<tool_call>\n{\"name\": \"b\", \"argu")
        );
    }

    #[test]
    fn tools_belong_to_chat_and_a_forced_call_outranks_a_response_format() {
        let tools = r#","tools":[{"type":"function","function":{"name":"f"}}]"#;
        let body = format!(r#"{{"model":"m"{tools}}}"#);
        let e = generation(serde_json::from_str(&body).unwrap(), Shape::Completion).unwrap_err();
        assert_eq!(e.param, Some("tools"));
        assert!(fields(tools).unwrap().tools.is_some());
        let both = fields(&format!(
            r#"{tools},"tool_choice":"required","response_format":{{"type":"json_object"}}"#
        ))
        .unwrap();
        assert!(both.tools.is_some());
        assert_eq!(both.format, None, "the forced call is the answer");
        // The format is still checked.
        let e = fields(&format!(
            r#"{tools},"tool_choice":"required","response_format":{{"type":"json_schema","json_schema":{{"name":"x","schema":true}}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.param, Some("response_format.json_schema.schema"));
    }

    #[test]
    fn response_formats_are_read_and_text_is_no_format() {
        let format = |extra: &str| fields(extra).unwrap().format;
        assert_eq!(format(""), None);
        assert_eq!(format(r#","response_format":null"#), None);
        assert_eq!(format(r#","response_format":{"type":"text"}"#), None);
        assert_eq!(
            format(r#","response_format":{"type":"json_object"}"#),
            Some(ResponseFormat::JsonObject)
        );
        assert_eq!(
            format(
                r#","response_format":{"type":"json_schema","json_schema":{"name":"w-1","strict":true,"schema":{"type":"object"}}}"#
            ),
            Some(ResponseFormat::JsonSchema(
                serde_json::json!({"type": "object"})
            ))
        );
        // Not strict: best effort, keywords the engine cannot enforce are
        // left out rather than refused.
        let Some(ResponseFormat::JsonSchema(schema)) = format(
            r#","response_format":{"type":"json_schema","json_schema":{"name":"w","schema":{"type":"object"}}}"#,
        ) else {
            panic!("no schema")
        };
        assert_eq!(schema["x-guidance"]["lenient"], true, "{schema}");
    }

    #[test]
    fn the_smaller_budget_wins_and_each_field_alone_is_the_budget() {
        for (extra, budget) in [
            (r#","max_tokens":9,"max_completion_tokens":5"#, Some(5)),
            (r#","max_tokens":5,"max_completion_tokens":9"#, Some(5)),
            (r#","max_tokens":7,"max_completion_tokens":7"#, Some(7)),
            (r#","max_tokens":7"#, Some(7)),
            (r#","max_completion_tokens":7"#, Some(7)),
            (r#","max_tokens":null,"max_completion_tokens":3"#, Some(3)),
            (r#","n_predict":4"#, Some(4)),
            (r#","max_tokens":9,"n_predict":4"#, Some(4)),
            (r#","max_tokens":3,"n_predict":4"#, Some(3)),
            (r#","max_tokens":3,"n_predict":-1"#, Some(3)),
            (r#","n_predict":-1"#, None),
            ("", None),
        ] {
            assert_eq!(fields(extra).unwrap().max_tokens, budget, "{extra}");
        }
    }

    #[test]
    fn a_budget_below_one_is_refused_naming_its_field() {
        for (extra, param) in [
            (r#","max_tokens":0"#, "max_tokens"),
            (r#","max_tokens":-3"#, "max_tokens"),
            (r#","max_completion_tokens":0"#, "max_completion_tokens"),
            (r#","n_predict":0"#, "n_predict"),
            (r#","max_completion_tokens":-1"#, "max_completion_tokens"),
            // With both set, the smaller one is the budget: a bad one of
            // the two is refused whichever it is.
            (r#","max_tokens":0,"max_completion_tokens":5"#, "max_tokens"),
            (
                r#","max_tokens":5,"max_completion_tokens":0"#,
                "max_completion_tokens",
            ),
        ] {
            let e = fields(extra).unwrap_err();
            assert_eq!(e.status, 400, "{extra}");
            assert_eq!(e.param, Some(param), "{extra}");
            assert!(e.message.contains("at least 1"), "{extra}: {}", e.message);
        }
    }

    #[test]
    fn bad_fields_name_their_parameter() {
        for (extra, param, needle) in [
            (r#","best_of":3"#, "best_of", "above `n`"),
            (r#","n":2,"best_of":1"#, "best_of", "at least `n`"),
            (r#","temperature":3"#, "temperature", "between 0 and 2"),
            (r#","top_p":0"#, "top_p", "(0, 1]"),
            (r#","top_k":-5"#, "top_k", "disabled"),
            (r#","stop":["a","b","c","d","e"]"#, "stop", "at most 4"),
            (r#","stop":"""#, "stop", "empty"),
            (r#","logprobs":1"#, "logprobs", "true or false"),
            (
                r#","top_logprobs":2"#,
                "top_logprobs",
                "needs `logprobs: true`",
            ),
            (
                r#","logprobs":true,"top_logprobs":21"#,
                "top_logprobs",
                "from 0 to 20",
            ),
            (r#","echo":true"#, "echo", "not supported"),
            (
                r#","tools":[{"type":"function"}]"#,
                "tools",
                "must be an object with a `name`",
            ),
            (r#","functions":[{"name":"f"}]"#, "functions", "use `tools`"),
            (
                r#","response_format":{"type":"xml"}"#,
                "response_format",
                "\"json_schema\"; got \"xml\"",
            ),
            (
                r#","response_format":{"type":"json_schema"}"#,
                "response_format.json_schema",
                "an object with `name`",
            ),
            (
                r#","response_format":{"type":"json_schema","json_schema":{"schema":{}}}"#,
                "response_format.json_schema.name",
                "1 to 64",
            ),
            (
                r#","response_format":{"type":"json_schema","json_schema":{"name":"a b","schema":{}}}"#,
                "response_format.json_schema.name",
                "1 to 64",
            ),
            (
                r#","response_format":{"type":"json_schema","json_schema":{"name":"a"}}"#,
                "response_format.json_schema.schema",
                "is required",
            ),
            (
                r#","response_format":{"type":"json_schema","json_schema":{"name":"a","schema":[1]}}"#,
                "response_format.json_schema.schema",
                "a JSON schema object",
            ),
            (
                r#","response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{},"strict":"yes"}}"#,
                "response_format.json_schema.strict",
                "true or false",
            ),
            (
                r#","presence_penalty":2.5"#,
                "presence_penalty",
                "between -2 and 2",
            ),
            (
                r#","frequency_penalty":-3"#,
                "frequency_penalty",
                "between -2 and 2",
            ),
            (r#","logit_bias":[1]"#, "logit_bias", "an object"),
            (r#","logit_bias":{"x":1}"#, "logit_bias", "token ids"),
            (r#","logit_bias":{"5":101}"#, "logit_bias", "-100 and 100"),
            (r#","logit_bias":{"5":"1"}"#, "logit_bias", "-100 and 100"),
            (r#","logit_bias":{"5":1,"05":2}"#, "logit_bias", "twice"),
            (
                r#","stream_options":{"include_usage":true}"#,
                "stream_options",
                "only allowed",
            ),
        ] {
            let e = fields(extra).unwrap_err();
            assert_eq!(e.status, 400, "{extra}");
            assert_eq!(e.param, Some(param), "{extra}: {}", e.message);
            assert!(e.message.contains(needle), "{extra}: {}", e.message);
        }
        let long = format!(r#","stop":"{}""#, "x".repeat(MAX_STOP_BYTES + 1));
        let e = fields(&long).unwrap_err();
        assert_eq!(e.param, Some("stop"));
        assert!(e.message.contains("at most 256 bytes"), "{}", e.message);
    }

    #[test]
    fn penalties_and_logit_bias_are_read_into_the_sampling() {
        let g = fields(
            r#","presence_penalty":-0.5,"frequency_penalty":2,"logit_bias":{"17":-100,"3":7.5}"#,
        )
        .unwrap();
        assert_eq!(g.decoding.sampling.presence_penalty, -0.5);
        assert_eq!(g.decoding.sampling.frequency_penalty, 2.0);
        assert_eq!(g.decoding.logit_bias, vec![(3, 7.5), (17, -100.0)]);
        let none = fields(r#","logit_bias":null,"presence_penalty":null"#).unwrap();
        assert!(none.decoding.logit_bias.is_empty());
        assert_eq!(none.decoding.sampling, SamplingParams::default());
        let too_many: Vec<String> = (0..=MAX_LOGIT_BIAS)
            .map(|i| format!(r#""{i}":1"#))
            .collect();
        let e = fields(&format!(r#","logit_bias":{{{}}}"#, too_many.join(","))).unwrap_err();
        assert!(e.message.contains("at most 1024"), "{}", e.message);
    }

    #[test]
    fn each_endpoint_asks_for_logprobs_its_own_way() {
        let chat = |extra: &str| fields(extra).map(|g| g.decoding.logprobs);
        assert_eq!(chat("").unwrap(), None);
        assert_eq!(chat(r#","logprobs":false"#).unwrap(), None);
        assert_eq!(chat(r#","logprobs":true"#).unwrap(), Some(0));
        assert_eq!(
            chat(r#","logprobs":true,"top_logprobs":20"#).unwrap(),
            Some(20)
        );
        let completion = |extra: &str| {
            let body = format!(r#"{{"model":"m"{extra}}}"#);
            generation(serde_json::from_str(&body).unwrap(), Shape::Completion)
                .map(|g| g.decoding.logprobs)
        };
        assert_eq!(completion("").unwrap(), None);
        assert_eq!(completion(r#","logprobs":0"#).unwrap(), Some(0));
        assert_eq!(completion(r#","logprobs":5"#).unwrap(), Some(5));
        for (extra, param) in [
            (r#","logprobs":true"#, "logprobs"),
            (r#","logprobs":21"#, "logprobs"),
            (r#","logprobs":-1"#, "logprobs"),
            (r#","top_logprobs":3"#, "top_logprobs"),
        ] {
            let e = completion(extra).unwrap_err();
            assert_eq!(e.param, Some(param), "{extra}: {}", e.message);
        }
    }

    fn asking(max_tokens: Option<usize>) -> Generation {
        Generation {
            max_tokens,
            ..fields("").unwrap()
        }
    }

    /// A context of `context` tokens in KV memory that holds one of them.
    fn room(context: usize) -> Room {
        Room {
            context,
            kv: KvShape {
                blocks: context.div_ceil(4),
                block_tokens: 4,
            },
        }
    }

    #[test]
    fn choices_that_can_never_be_held_at_once_are_the_clients_error() {
        // Eight blocks of four positions: a 30-token prompt takes all eight,
        // its last one partial; each further choice needs its own copy.
        let choices = |n| Generation {
            n,
            ..asking(Some(1))
        };
        assert!(fit(vec![1; 30], choices(1), None, room(32), "prompt").is_ok());
        let e = fit(vec![1; 30], choices(2), None, room(32), "prompt").unwrap_err();
        assert_eq!((e.status.as_u16(), e.param), (400, Some("n")));
        assert!(
            e.message.contains("need 9 KV cache blocks"),
            "{}",
            e.message
        );
        // A prompt filling its blocks exactly shares them with every choice.
        assert!(fit(vec![1; 28], choices(4), None, room(32), "prompt").is_ok());
    }

    #[test]
    fn the_budget_must_fit_the_context_after_the_prompt() {
        // (prompt length, budget asked, context) -> budget run, or refused.
        for (prompt, asked, context, run) in [
            (3, Some(5), 8, Some(5)),
            (3, Some(6), 8, None),
            (3, None, 8, Some(5)),
            (8, None, 8, None),
            (9, Some(1), 8, None),
        ] {
            let got = fit(
                vec![1; prompt],
                asking(asked),
                None,
                room(context),
                "prompt",
            );
            match run {
                Some(n) => {
                    let valid = got.unwrap();
                    assert_eq!(valid.params.max_new_tokens, n);
                    assert_eq!(valid.prompt.len(), prompt);
                }
                None => {
                    let e = got.unwrap_err();
                    assert_eq!(e.status, 400);
                    assert_eq!(e.param, Some("prompt"));
                    assert_eq!(e.code, Some("context_length_exceeded"));
                    assert!(
                        e.message.contains("maximum context length is 8 tokens"),
                        "{}",
                        e.message
                    );
                }
            }
        }
    }

    #[test]
    fn an_empty_prompt_is_refused_naming_the_prompt_field() {
        let e = fit(Vec::new(), asking(Some(1)), None, room(8), "messages").unwrap_err();
        assert_eq!((e.status.as_u16(), e.param), (400, Some("messages")));
        assert!(e.message.contains("empty"), "{}", e.message);
    }
}
