//! `POST /v1/responses`: OpenAI's Responses API, the one the OpenAI Agents
//! SDK and Codex speak by default, on the chat engine. The request is read
//! as the chat request it amounts to (`request`), validated and generated
//! exactly as `/v1/chat/completions` is, and its answer written as a
//! response object (`output`) or as the API's typed events (`events`):
//! thinking as a reasoning item, text as a message, each tool call as a
//! function call item.
//!
//! Stateless: no response is stored (`"store": false`), so a conversation
//! goes back whole in `input`, the calls and their outputs as items, as
//! with `store: false` at OpenAI.

mod events;
mod output;
mod request;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{
    engine_stopped, gather, parse_chat, read_body, submit, validation, Answer, ApiError, AppState,
    ReadAnswer, Shape,
};
use crate::engine::{Event, Usage};
use crate::text::TextTokenizer;
use output::{Reply, Status};

pub(super) async fn responses(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    let result = async {
        let body = read_body(&app, &headers, body).await?;
        let translated = request::translate(&body)?;
        let chat = serde_json::to_vec(&translated.chat)
            .map_err(|e| ApiError::internal(format!("could not write the chat request: {e}")))?;
        let req = parse_chat(&chat).map_err(in_responses_words)?;
        let ready = app.ready()?;
        let valid = validation::chat(req, &app.model_id, ready)
            .await
            .map_err(in_responses_words)?;
        let stream = valid.stream;
        let (answer, receivers) = submit(
            &app,
            ready,
            valid,
            (Shape::Chat, "resp"),
            (received, &headers),
        )?;
        let reply = Reply {
            meta: answer.meta.clone(),
            echo: translated.echo,
        };
        let tokenizer = Arc::clone(&ready.loaded.tokenizer);
        if stream {
            events::stream(answer, reply, receivers, tokenizer).await
        } else {
            collect(answer, reply, receivers, &tokenizer).await
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Chat's fields, as a chat validation error names them, and the
/// Responses API's for them: the client sent the latter.
const RENAMED: &[(&str, &str)] = &[
    ("messages", "input"),
    ("max_tokens", "max_output_tokens"),
    ("response_format", "text.format"),
    ("response_format.json_schema", "text.format"),
    ("response_format.json_schema.name", "text.format.name"),
    ("response_format.json_schema.strict", "text.format.strict"),
    ("response_format.json_schema.schema", "text.format.schema"),
    // The KV cache's room for the prompt times the choices: one here.
    ("n", "input"),
];

fn in_responses_words(mut error: ApiError) -> ApiError {
    if let Some(&(_, ours)) = RENAMED.iter().find(|(chat, _)| error.param == Some(*chat)) {
        error.param = Some(ours);
    }
    error
}

/// How many of the output's tokens were thinking: the thinking's text
/// encoded again (the markers around it are not counted).
fn reasoning_tokens(tokenizer: &TextTokenizer, thought: &str) -> usize {
    if thought.is_empty() {
        return 0;
    }
    tokenizer.encode_plain(thought).map_or(0, |ids| ids.len())
}

/// The output items of a whole answer: its thinking, its text (none when
/// it made calls and wrote nothing else), its calls.
fn items(reply: &Reply, read: &ReadAnswer, status: Status) -> Vec<Value> {
    let mut items = Vec::new();
    if let Some(thought) = read.thought.as_ref().filter(|t| !t.is_empty()) {
        items.push(output::reasoning_item(
            &reply.reasoning_id(items.len()),
            thought,
            status,
        ));
    }
    let (text, calls) = match &read.calls {
        Some((parsed, _)) => (parsed.content.as_deref(), parsed.tool_calls.as_slice()),
        None => (Some(read.text.as_str()), &[][..]),
    };
    if let Some(text) = text {
        items.push(output::message_item(
            &reply.message_id(items.len()),
            text,
            status,
        ));
    }
    for (i, call) in calls.iter().enumerate() {
        items.push(output::function_call_item(
            &reply.call_ids(i),
            &call.name,
            &call.arguments,
            Status::Completed,
        ));
    }
    items
}

/// A whole response: its one answer, read, and its usage. A failure is
/// the error chat gives, with the usage of what was computed.
async fn collect(
    answer: Answer,
    reply: Reply,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    tokenizer: &TextTokenizer,
) -> Result<Response, ApiError> {
    let (ended, usage) = gather(receivers).await?;
    let choice = ended.into_iter().next().ok_or_else(engine_stopped)?;
    let read = answer.read(choice.text, choice.reason);
    let status = Status::ended(choice.reason);
    let thought = read.thought.as_deref().unwrap_or_default();
    let object = reply.object(
        status,
        items(&reply, &read, status),
        Some(usage_json(usage, tokenizer, thought)),
        None,
    );
    Ok(axum::Json(object).into_response())
}

fn usage_json(usage: Usage, tokenizer: &TextTokenizer, thought: &str) -> Value {
    output::usage(usage, reasoning_tokens(tokenizer, thought))
}
