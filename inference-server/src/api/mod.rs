//! The OpenAI-compatible HTTP API. A handler reads the body, parses it
//! (`request`), validates it against the model (`validation`, the one place
//! lengths and budgets are checked), takes an admission permit and hands the
//! engine a [`Submission`]; `response` shapes what comes back.

mod error;
mod health;
mod request;
mod response;
mod tool_calls;
mod tools;
mod validation;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use error::ApiError;
pub use request::{parse_chat, parse_completion, ChatRequest, CompletionRequest, Prompt};
use response::{LogprobsWriter, Meta, Shape};
pub use validation::{Generation, ToolCallParsing, ValidRequest};

use crate::engine::grammar::Grammars;
use crate::engine::{EngineHandle, Event, Failure, Submission, SubmitError};
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
    pub chat_template: Option<(ChatTemplate, TemplateOrigin)>,
    /// The response-format compiler over this model's vocabulary, built
    /// by the first request with a `response_format` (see `validation`).
    pub grammars: Arc<OnceLock<Result<Grammars, String>>>,
}

pub struct AppState {
    pub model_id: String,
    pub created: u64,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub ready: OnceLock<Ready>,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(model_id: String, max_body_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            model_id,
            created: unix_now(),
            max_body_bytes,
            metrics,
            ready: OnceLock::new(),
            next_id: AtomicU64::new(0),
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
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
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

/// Reads the body within the size limit: a declared length over it is
/// refused before reading, an undeclared one as soon as it crosses it.
async fn read_body(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
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
        generate(&app, ready, valid, Shape::Chat, received).await
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
        generate(&app, ready, valid, Shape::Completion, received).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Admits a validated request and answers with what the engine sends back.
async fn generate(
    app: &Arc<AppState>,
    ready: &Ready,
    valid: ValidRequest,
    shape: Shape,
    received: Instant,
) -> Result<Response, ApiError> {
    let permit = ready.engine.admit().map_err(|e| match e {
        SubmitError::Full(capacity) => {
            app.metrics.requests_rejected_full.add(1);
            ApiError::overloaded(capacity)
        }
        SubmitError::ShuttingDown => {
            ApiError::unavailable("shutting_down", "The server is shutting down.")
        }
    })?;
    let logprobs = valid
        .params
        .decoding
        .logprobs
        .map(|_| LogprobsWriter::new(ready.loaded.tokenizer.clone(), shape));
    let (tx, rx) = mpsc::unbounded_channel();
    ready
        .engine
        .submit(Submission {
            prompt: valid.prompt,
            params: valid.params,
            events: tx,
            permit,
            received,
        })
        .map_err(|_| ApiError::unavailable("shutting_down", "The server is shutting down."))?;

    let meta = Meta {
        id: app.response_id(match shape {
            Shape::Chat => "chatcmpl",
            Shape::Completion => "cmpl",
        }),
        created: unix_now(),
        model: app.model_id.clone(),
        shape,
    };
    let tools = valid.tool_calls;
    if valid.stream {
        Ok(stream(meta, rx, valid.include_usage, logprobs, tools))
    } else {
        collect(meta, rx, logprobs, tools).await
    }
}

fn failure_error(failure: &Failure) -> ApiError {
    match failure {
        Failure::Unavailable(m) => ApiError::unavailable("generation_failed", m.clone()),
        Failure::Internal(m) => ApiError::internal(m.clone()),
    }
}

/// Waits for the whole completion. If the client goes away meanwhile, this
/// future is dropped with its receiver, and the engine retires the sequence.
async fn collect(
    meta: Meta,
    mut rx: mpsc::UnboundedReceiver<Event>,
    mut logprobs: Option<LogprobsWriter>,
    tools: Option<ToolCallParsing>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut entries = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Logprobs(lp) => entries.push(lp),
            Event::Text(t) => text.push_str(&t),
            Event::Finished { reason, usage } => {
                let logprobs = logprobs.as_mut().map(|w| w.render(&entries));
                let mut full = meta.full(&text, reason, usage, logprobs);
                if let Some(parsed) = tools.as_ref().and_then(|t| t.calls_in(&text)) {
                    meta.answered_with_calls(&mut full, &parsed);
                }
                return Ok(axum::Json(full).into_response());
            }
            Event::Failed(failure) => return Err(failure_error(&failure)),
        }
    }
    Err(ApiError::internal(
        "The engine stopped before the response finished.",
    ))
}

/// Streams the completion as server-sent events. A writer task turns engine
/// events into chunks; it also watches the body, so a client that hangs up
/// drops the engine's receiver at once and frees its slot at the next step.
/// Log-probabilities ride on the chunk that carries their token's text, or
/// the closing chunk for tokens whose text never came (held back, then cut
/// by a stop string).
///
/// With tools, text that may be the start of a tool call is held back; at
/// the end, calls found in it go out as one `delta.tool_calls` chunk (each
/// call's index, id, name and whole arguments) before the closing chunk's
/// `finish_reason: "tool_calls"`, and held text that was no call goes out as
/// content.
fn stream(
    meta: Meta,
    mut rx: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
    mut logprobs: Option<LogprobsWriter>,
    tools: Option<ToolCallParsing>,
) -> Response {
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let send = |frame: Bytes| body_tx.send(Ok(frame));
        if send(response::sse(&meta.chunk(
            Some(""),
            true,
            None,
            include_usage,
            None,
        )))
        .await
        .is_err()
        {
            return;
        }
        let mut pending = Vec::new();
        let mut held = String::new();
        let mut sent_content = false;
        let mut take = |pending: &mut Vec<_>| {
            let rendered = logprobs.as_mut().map(|w| w.render(pending));
            pending.clear();
            rendered
        };
        loop {
            let event = tokio::select! {
                event = rx.recv() => event,
                () = body_tx.closed() => return,
            };
            let frame = match event {
                Some(Event::Logprobs(lp)) => {
                    pending.push(lp);
                    continue;
                }
                Some(Event::Text(t)) => {
                    let t = match &tools {
                        None => t,
                        Some(tools) => {
                            held.push_str(&t);
                            let ready = tools.sendable(&held, sent_content);
                            if ready == 0 {
                                continue;
                            }
                            let out: String = held.drain(..ready).collect();
                            sent_content |= !out.trim().is_empty();
                            out
                        }
                    };
                    response::sse(&meta.chunk(
                        Some(&t),
                        false,
                        None,
                        include_usage,
                        take(&mut pending),
                    ))
                }
                Some(Event::Finished { reason, usage }) => {
                    let mut frames = Vec::new();
                    let parsed = tools
                        .as_ref()
                        .and_then(|t| t.calls_in_held(&held, sent_content));
                    let leftover = match &parsed {
                        Some(p) => p.content.clone().unwrap_or_default(),
                        None => std::mem::take(&mut held),
                    };
                    if !leftover.is_empty() {
                        let lp = take(&mut pending);
                        frames.extend_from_slice(&response::sse(&meta.chunk(
                            Some(&leftover),
                            false,
                            None,
                            include_usage,
                            lp,
                        )));
                    }
                    if let Some(p) = &parsed {
                        let mut chunk = meta.chunk(None, false, None, include_usage, None);
                        chunk["choices"][0]["delta"]["tool_calls"] =
                            meta.tool_calls(&p.tool_calls, true);
                        frames.extend_from_slice(&response::sse(&chunk));
                    }
                    let rest = (!pending.is_empty()).then(|| take(&mut pending)).flatten();
                    let mut closing = meta.chunk(None, false, Some(reason), include_usage, rest);
                    if parsed.is_some() {
                        closing["choices"][0]["finish_reason"] = json!("tool_calls");
                    }
                    frames.extend_from_slice(&response::sse(&closing));
                    if include_usage {
                        frames.extend_from_slice(&response::sse(&meta.usage_chunk(usage)));
                    }
                    frames.extend_from_slice(response::DONE.as_bytes());
                    let _ = send(Bytes::from(frames)).await;
                    return;
                }
                // Headers are gone already: report in-band, as OpenAI does,
                // and end without [DONE] so clients see an incomplete stream.
                Some(Event::Failed(failure)) => {
                    let _ = send(response::sse(&failure_error(&failure).body())).await;
                    return;
                }
                // The engine went away without ending the sequence: say so,
                // rather than end the stream as if it were complete.
                None => {
                    let e = ApiError::internal("The engine stopped before the response finished.");
                    let _ = send(response::sse(&e.body())).await;
                    return;
                }
            };
            if send(frame).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(ReceiverStream::new(body_rx)))
        .unwrap_or_else(|_| {
            ApiError::internal("could not build the stream response").into_response()
        })
}
