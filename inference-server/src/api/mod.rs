//! The OpenAI-compatible HTTP API. A handler reads the body, parses it
//! (`request`), validates it against the model (`validation`, the one place
//! lengths and budgets are checked), takes an admission permit and hands the
//! engine a [`Submission`]; `response` shapes what comes back.

mod auth;
mod error;
mod health;
mod reasoning;
mod request;
mod response;
mod responses;
mod stream;
mod tool_calls;
mod tools;
mod unsupported;
mod validation;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{StreamExt, StreamMap};

pub use auth::{ApiKeyError, ApiKeys};
pub use error::ApiError;
pub use request::{parse_chat, parse_completion, ChatRequest, CompletionRequest, Prompt};
use response::{CallIds, LogprobsWriter, Meta, Shape};
use tool_calls::{ParsedOutput, ToolCallFormat};
pub use validation::{Generation, ToolCallParsing, ValidRequest};

use crate::engine::grammar::Grammars;
use crate::engine::sampling::TokenLogprobs;
use crate::engine::{
    ChoiceOutput, EngineHandle, Event, Failure, FinishReason, Submission, SubmitError, Usage,
};
use crate::metrics::Metrics;
use crate::model::LoadedModel;
use crate::text::{ChatTemplate, TemplateOrigin};

/// The engine and model, once loading has finished.
pub struct Ready {
    pub engine: EngineHandle,
    pub loaded: Arc<LoadedModel>,
    /// The longest sequence (prompt + completion) the server admits.
    pub context: usize,
    /// What chats are rendered with, chosen once at start, and where it
    /// came from; `None`: chat requests are refused.
    pub chat_template: Option<(Arc<ChatTemplate>, TemplateOrigin)>,
    /// The response-format compiler over this model's vocabulary, built
    /// by the first request with a `response_format` (see `validation`).
    pub grammars: Arc<OnceLock<Result<Grammars, String>>>,
    /// Chat answers' `<think>…</think>` go out as `reasoning_content` (see
    /// `reasoning`): the chat template writes thinking, and
    /// `--reasoning-format` is `auto`.
    pub reasoning: bool,
}

impl Ready {
    fn room(&self) -> validation::Room {
        validation::Room {
            context: self.context,
            kv: self.engine.kv_shape(),
        }
    }
}

pub struct AppState {
    pub model_id: String,
    pub created: u64,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// The keys `/v1/` callers must present one of (`--api-key-file`), if
    /// any.
    pub api_keys: Option<ApiKeys>,
    pub ready: OnceLock<Ready>,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(
        model_id: String,
        (max_body_bytes, body_read_timeout): (usize, Duration),
        metrics: Arc<Metrics>,
        api_keys: Option<ApiKeys>,
    ) -> Self {
        Self {
            model_id,
            created: unix_now(),
            max_body_bytes,
            body_read_timeout,
            metrics,
            api_keys,
            ready: OnceLock::new(),
            // From a random point, so that two replicas answering in the
            // same second do not give the same response (and tool call) ids.
            next_id: AtomicU64::new(
                std::hash::BuildHasher::hash_one(
                    &std::collections::hash_map::RandomState::new(),
                    0u8,
                ) & 0xffff_ffff,
            ),
        }
    }

    fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or_else(|| {
            ApiError::unavailable(
                "model_loading",
                "The model is still loading; retry shortly.",
            )
        })
    }

    fn response_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:06x}", unix_now())
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/models", get(list_models))
        // A wildcard: ids such as `org/model` are not percent-encoded by
        // OpenAI's clients.
        .route("/v1/models/{*id}", get(get_model))
        // Only the routes above: probes and scrapers need no key.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .route("/health", get(health::health))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(&app.model_id),
    )
        .into_response()
}

fn model_card(app: &AppState) -> serde_json::Value {
    let context = app.ready.get().map(|r| r.context);
    json!({
        "id": app.model_id,
        "object": "model",
        "created": app.created,
        "owned_by": "maas",
        "max_model_len": context,
    })
}

async fn list_models(State(app): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": [model_card(&app)]})).into_response()
}

async fn get_model(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if id != app.model_id {
        return ApiError::model_not_found(&id).into_response();
    }
    axum::Json(model_card(&app)).into_response()
}

/// Reads the body within the size limit and `--body-read-timeout-secs`: a
/// declared length over the limit is refused before reading, an undeclared
/// one as soon as it crosses it; one still arriving at the deadline is a
/// 408, so a client that declares a large body and sends it slowly, or
/// never, holds its connection and buffer only that long (a gateway in
/// front sends a body it has already read at once).
async fn read_body(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let within = app.body_read_timeout;
    let collected = tokio::time::timeout(within, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::body_timeout(within))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(limit)),
        Err(e) => Err(ApiError::invalid(
            None,
            format!("Could not read the request body: {e}."),
        )),
    }
}

async fn chat_completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    let result = async {
        let body = read_body(&app, &headers, body).await?;
        let req = parse_chat(&body)?;
        let ready = app.ready()?;
        let valid = validation::chat(req, &app.model_id, ready).await?;
        generate(&app, ready, valid, Shape::Chat, (received, &headers)).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let received = Instant::now();
    let result = async {
        let body = read_body(&app, &headers, body).await?;
        let req = parse_completion(&body)?;
        let ready = app.ready()?;
        let valid = validation::completion(req, &app.model_id, ready).await?;
        generate(&app, ready, valid, Shape::Completion, (received, &headers)).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The header in which the gateway asserts the caller's subscription (it
/// drops any value a client sent).
const SUBSCRIPTION_HEADER: &str = "x-maas-subscription";

/// The prefix cache's scope of a request: the subscription the gateway
/// asserts, so that one tenant's prompts never share cached blocks with
/// another's (what was cached shows in `cached_tokens` and in the time to
/// the first token). OpenAI scopes its prompt cache by organization the
/// same way. A request without it (no gateway in front) shares with every
/// other such request.
fn cache_scope(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(SUBSCRIPTION_HEADER)?;
    Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// Admits a validated request and answers with what the engine sends back.
async fn generate(
    app: &Arc<AppState>,
    ready: &Ready,
    valid: ValidRequest,
    shape: Shape,
    (received, headers): (Instant, &HeaderMap),
) -> Result<Response, ApiError> {
    let prefix = match shape {
        Shape::Chat => "chatcmpl",
        Shape::Completion => "cmpl",
    };
    let (stream, include_usage) = (valid.stream, valid.include_usage);
    let (answer, receivers) = submit(app, ready, valid, (shape, prefix), (received, headers))?;
    if stream {
        stream::stream(answer, receivers, include_usage).await
    } else {
        collect(answer, receivers).await
    }
}

/// Admits a validated request and hands it to the engine: how its answer
/// is to be read (its response id starting `prefix`), and each choice's
/// events.
fn submit(
    app: &Arc<AppState>,
    ready: &Ready,
    valid: ValidRequest,
    (shape, prefix): (Shape, &str),
    (received, headers): (Instant, &HeaderMap),
) -> Result<(Answer, Vec<mpsc::UnboundedReceiver<Event>>), ApiError> {
    let permits = ready.engine.admit(valid.n).map_err(|e| match e {
        SubmitError::Full(capacity) => {
            app.metrics.requests_rejected_full.add(1);
            ApiError::overloaded(capacity)
        }
        SubmitError::ShuttingDown => {
            ApiError::unavailable("shutting_down", "The server is shutting down.")
        }
    })?;
    if permits.len() != valid.n {
        return Err(ApiError::internal(
            "the engine gave fewer admission slots than choices",
        ));
    }
    let wants_logprobs = valid.params.decoding.logprobs.is_some();
    let (choices, receivers): (Vec<_>, Vec<_>) = permits
        .into_iter()
        .map(|permit| {
            let (events, rx) = mpsc::unbounded_channel();
            (ChoiceOutput { events, permit }, rx)
        })
        .unzip();
    ready
        .engine
        .submit(Submission {
            prompt: valid.prompt,
            params: valid.params,
            cache_scope: cache_scope(headers),
            choices,
            received,
        })
        .map_err(|_| ApiError::unavailable("shutting_down", "The server is shutting down."))?;

    let answer = Answer {
        meta: Meta {
            id: app.response_id(prefix),
            created: unix_now(),
            model: app.model_id.clone(),
            shape,
            call_ids: match valid.tool_calls.as_ref().map(|t| t.format) {
                Some(ToolCallFormat::Mistral) => CallIds::NineAlphanumeric,
                _ => CallIds::Named,
            },
        },
        logprobs: wants_logprobs
            .then(|| LogprobsWriter::new(ready.loaded.tokenizer.clone(), shape)),
        tools: valid.tool_calls,
        reasoning: valid.reasoning,
    };
    Ok((answer, receivers))
}

/// How the engine's events become a response: what every chunk and choice
/// shares, and how each choice's answer is read.
struct Answer {
    meta: Meta,
    /// When the request asked for log-probabilities: a fresh writer, one
    /// copy per choice.
    logprobs: Option<LogprobsWriter>,
    /// Parse each answer for tool calls.
    tools: Option<ToolCallParsing>,
    /// Split each answer's thinking off (`reasoning`): whether the prompt
    /// opened it.
    reasoning: Option<bool>,
}

fn failure_error(failure: &Failure) -> ApiError {
    match failure {
        Failure::Unavailable(m) => ApiError::unavailable("generation_failed", m.clone()),
        // A 500, as the server failed itself; coded as the other failures
        // that report usage are, so a client tells them from a 500 that
        // computed nothing.
        Failure::Internal(m) => ApiError::internal(m.clone()).with_code("generation_failed"),
    }
}

fn engine_stopped() -> ApiError {
    ApiError::internal("The engine stopped before the response finished.")
}

/// The usage of all choices: the prompt once, every choice's completion.
/// (A choice that failed before it was admitted read no prompt: the
/// prompt is the one any choice read.)
fn total_usage(usages: impl IntoIterator<Item = Usage>) -> Usage {
    usages.into_iter().fold(Usage::default(), |total, u| Usage {
        prompt_tokens: total.prompt_tokens.max(u.prompt_tokens),
        completion_tokens: total.completion_tokens + u.completion_tokens,
        cached_tokens: total.cached_tokens.max(u.cached_tokens),
    })
}

/// Every choice's events as one stream, each with its choice's index.
fn by_choice(
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
) -> StreamMap<usize, UnboundedReceiverStream<Event>> {
    receivers
        .into_iter()
        .map(UnboundedReceiverStream::new)
        .enumerate()
        .collect()
}

/// One choice's whole answer, as the engine ended it.
struct Ended {
    text: String,
    entries: Vec<TokenLogprobs>,
    reason: FinishReason,
}

/// A whole answer read: its thinking split off (where the model thinks),
/// its text, and the calls in that text (with the answer's
/// `finish_reason`) where tools are in play.
struct ReadAnswer {
    thought: Option<String>,
    text: String,
    calls: Option<(ParsedOutput, &'static str)>,
}

impl Answer {
    fn read(&self, text: String, reason: FinishReason) -> ReadAnswer {
        let (thought, text) = match self.reasoning {
            Some(inside) => reasoning::split(&text, inside),
            None => (None, text),
        };
        let calls = self.tools.as_ref().and_then(|t| t.calls_in(&text, reason));
        ReadAnswer {
            thought,
            text,
            calls,
        }
    }
}

/// Waits for every choice to end, reading them as they come: each
/// choice's answer in index order, and the usage of all of them. A failure
/// answers once every choice has ended (shutdown and a failed step end
/// them together; a choice whose grammar failed leaves the others to
/// finish), with the usage of all of them: what the request computed is
/// charged exactly. If the client goes away meanwhile, this future is
/// dropped with the receivers, which cancels the choices at the engine's
/// next step.
async fn gather(
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
) -> Result<(Vec<Ended>, Usage), ApiError> {
    struct Choice {
        text: String,
        entries: Vec<TokenLogprobs>,
        reason: Option<FinishReason>,
        usage: Usage,
    }
    let mut choices: Vec<Choice> = (0..receivers.len())
        .map(|_| Choice {
            text: String::new(),
            entries: Vec::new(),
            reason: None,
            usage: Usage::default(),
        })
        .collect();
    let mut events = by_choice(receivers);
    let mut left = choices.len();
    let mut failed: Option<Failure> = None;
    while left > 0 {
        let (index, event) = events.next().await.ok_or_else(engine_stopped)?;
        let choice = &mut choices[index];
        match event {
            Event::Logprobs(lp) => choice.entries.push(lp),
            Event::Text(t) => choice.text.push_str(&t),
            Event::Finished { reason, usage } => {
                choice.reason = Some(reason);
                choice.usage = usage;
                left -= 1;
            }
            Event::Failed { failure, usage } => {
                failed.get_or_insert(failure);
                choice.usage = usage;
                left -= 1;
            }
        }
    }
    let usage = total_usage(choices.iter().map(|c| c.usage));
    if let Some(failure) = failed {
        return Err(failure_error(&failure).with_usage(usage));
    }
    let ended = choices
        .into_iter()
        .filter_map(|c| {
            c.reason.map(|reason| Ended {
                text: c.text,
                entries: c.entries,
                reason,
            })
        })
        .collect();
    Ok((ended, usage))
}

/// A whole chat or completions response (see [`gather`]).
async fn collect(
    answer: Answer,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
) -> Result<Response, ApiError> {
    let (ended, usage) = gather(receivers).await?;
    let rendered = ended
        .into_iter()
        .enumerate()
        .map(|(index, choice)| {
            let logprobs = answer
                .logprobs
                .clone()
                .map(|mut w| w.render(&choice.entries));
            let read = answer.read(choice.text, choice.reason);
            let mut rendered = answer
                .meta
                .choice(index, &read.text, choice.reason, logprobs);
            if let Some((parsed, finish)) = &read.calls {
                answer
                    .meta
                    .answered_with_calls(index, &mut rendered, parsed, finish);
            }
            if let Some(thought) = read.thought {
                rendered["message"]["reasoning_content"] = thought.into();
            }
            rendered
        })
        .collect();
    Ok(axum::Json(answer.meta.full(rendered, usage)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every failure that reports usage carries the code the docs name, so
    /// a client tells it from an error that computed nothing.
    #[test]
    fn failures_are_coded_generation_failed() {
        for (failure, status) in [
            (Failure::Unavailable("cut".into()), 503),
            (Failure::Internal("step".into()), 500),
        ] {
            let error = failure_error(&failure);
            assert_eq!(error.status.as_u16(), status, "{failure:?}");
            assert_eq!(error.body()["error"]["code"], "generation_failed");
        }
    }
}
