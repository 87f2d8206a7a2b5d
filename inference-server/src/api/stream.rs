//! A response as server-sent events. A writer task turns the engine's
//! events into chunks; it also watches the body, so a client that hangs up
//! drops the engine's receivers at once and frees their slots at the next
//! step.
//!
//! Each choice (OpenAI's `n`) streams as its events arrive, its chunks
//! carrying its `index`; the usage chunk (all choices' completions, the
//! prompt once) and `[DONE]` follow the last choice's end. A choice that
//! fails leaves the others to end, then the usage chunk and an error event
//! end the stream, without `[DONE]`: what the request computed is reported
//! whole, so a gateway charges it rather than an estimate.
//!
//! Log-probabilities ride on the first chunk sent once their tokens came:
//! the one carrying their text, or a later one where their text was held
//! back or sends nothing (a call's markers); the closing chunk carries those
//! left (text held, then cut by a stop string).
//!
//! With tools, each choice's text is read for calls as it comes
//! (`tool_calls::ToolCallStream`): text that may start a call is held back,
//! a call's first `delta.tool_calls` entry (its index, id, type and name)
//! goes out once its name is read, and entries with its arguments' next
//! characters follow as the model writes them. At the choice's end, held
//! text is read whole: its calls go out whole, text that was no call as
//! content, then the closing chunk, with `finish_reason: "tool_calls"` when
//! the answer made calls, none was cut short and the budget did not end it.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::reasoning::{Piece, ReasoningSplit};
use super::response::{self, LogprobsWriter};
use super::tool_calls::{Streamed, ToolCallStream};
use super::{by_choice, engine_stopped, failure_error, total_usage, Answer, ApiError};
use crate::engine::sampling::TokenLogprobs;
use crate::engine::{Event, Failure, FinishReason, Usage};

/// One choice's place in the stream.
struct Choice {
    index: usize,
    logprobs: Option<LogprobsWriter>,
    /// Log-probabilities of tokens whose text has not gone out yet.
    pending: Vec<TokenLogprobs>,
    /// With tools: the answer read for calls.
    calls: Option<ToolCallStream>,
    /// A reasoning model's answer: its thinking split off first.
    reasoning: Option<ReasoningSplit>,
}

impl Choice {
    fn take_logprobs(&mut self) -> Option<serde_json::Value> {
        let rendered = self.logprobs.as_mut().map(|w| w.render(&self.pending));
        self.pending.clear();
        rendered
    }

    /// The chunks for a piece of text, unless all of it is held back.
    fn text(&mut self, a: &Answer, text: String, include_usage: bool) -> Option<Vec<u8>> {
        let pieces = match &mut self.reasoning {
            None => vec![Piece::Content(text)],
            Some(split) => split.push(&text),
        };
        let frames = self.pieces(a, pieces, include_usage);
        (!frames.is_empty()).then_some(frames)
    }

    /// Thinking goes out as `delta.reasoning_content`; the answer's text is
    /// read for calls where there are tools.
    fn pieces(&mut self, a: &Answer, pieces: Vec<Piece>, include_usage: bool) -> Vec<u8> {
        let mut frames = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Reasoning(thought) => {
                    let logprobs = self.take_logprobs();
                    let mut chunk =
                        a.meta
                            .chunk(self.index, None, false, None, include_usage, logprobs);
                    chunk["choices"][0]["delta"]["reasoning_content"] = json!(thought);
                    frames.extend_from_slice(&response::sse(&chunk));
                }
                Piece::Content(text) => {
                    let streamed = match &mut self.calls {
                        None => vec![Streamed::Content(text)],
                        Some(calls) => calls.push(&text),
                    };
                    frames.extend(self.frames(a, streamed, include_usage));
                }
            }
        }
        frames
    }

    /// A chunk per piece; the first carries the log-probabilities waiting,
    /// those of the tokens that wrote it.
    fn frames(&mut self, a: &Answer, pieces: Vec<Streamed>, include_usage: bool) -> Vec<u8> {
        let mut frames = Vec::new();
        for (n, piece) in pieces.into_iter().enumerate() {
            let logprobs = if n == 0 { self.take_logprobs() } else { None };
            let chunk = match piece {
                Streamed::Content(text) => a.meta.chunk(
                    self.index,
                    Some(&text),
                    false,
                    None,
                    include_usage,
                    logprobs,
                ),
                Streamed::Call {
                    index,
                    name,
                    arguments,
                } => {
                    let call =
                        a.meta
                            .tool_call_delta(self.index, index, name.as_deref(), &arguments);
                    let mut chunk =
                        a.meta
                            .chunk(self.index, None, false, None, include_usage, logprobs);
                    chunk["choices"][0]["delta"]["tool_calls"] = json!([call]);
                    chunk
                }
            };
            frames.extend_from_slice(&response::sse(&chunk));
        }
        frames
    }

    /// The choice's last chunks: what was held back, then its
    /// `finish_reason`.
    fn finish(&mut self, a: &Answer, reason: FinishReason, include_usage: bool) -> Vec<u8> {
        let thought = self
            .reasoning
            .as_mut()
            .map(ReasoningSplit::finish)
            .unwrap_or_default();
        let mut frames = self.pieces(a, thought, include_usage);
        let (held, called) = match &mut self.calls {
            None => (Vec::new(), false),
            Some(calls) => (calls.finish(), calls.ends_with_calls()),
        };
        frames.extend(self.frames(a, held, include_usage));
        let rest = (!self.pending.is_empty())
            .then(|| self.take_logprobs())
            .flatten();
        let mut closing = a
            .meta
            .chunk(self.index, None, false, Some(reason), include_usage, rest);
        // An answer the budget cut ends "length", calls or not, as a whole
        // (not streamed) one does.
        if called && reason == FinishReason::Stop {
            closing["choices"][0]["finish_reason"] = json!("tool_calls");
        }
        frames.extend_from_slice(&response::sse(&closing));
        frames
    }
}

/// Streams every choice's events (see the module), once one has output: a
/// request whose every choice fails before any has output (refused at
/// shutdown, or by the KV cache) gets its error's own status, as a
/// non-streamed one does, rather than a 200 whose stream ends in an error.
/// Once a choice has output, the stream starts, and failures before it
/// are reported in-band with the rest.
pub(super) async fn stream(
    answer: Answer,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let choice_count = receivers.len();
    let mut events = by_choice(receivers);
    // Each choice ends once: when every event so far is a failure and
    // there are as many as choices, no choice had output.
    let mut before_output: Vec<(usize, Event)> = Vec::new();
    loop {
        let next = events.next().await.ok_or_else(engine_stopped)?;
        let failed = matches!(next.1, Event::Failed { .. });
        before_output.push(next);
        if !failed {
            break;
        }
        if before_output.len() == choice_count {
            return Err(all_failed(before_output));
        }
    }
    let mut events = tokio_stream::iter(before_output).chain(events);
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let send = |frame: Bytes| body_tx.send(Ok(frame));
        let mut usages: Vec<Option<Usage>> = vec![None; choice_count];
        let mut choices: Vec<Choice> = (0..choice_count)
            .map(|index| Choice {
                index,
                logprobs: answer.logprobs.clone(),
                pending: Vec::new(),
                calls: answer.tools.as_ref().map(|t| t.stream()),
                reasoning: answer.reasoning.map(ReasoningSplit::new),
            })
            .collect();
        let opening: Vec<u8> = choices
            .iter()
            .flat_map(|c| {
                response::sse(&answer.meta.chunk(
                    c.index,
                    Some(""),
                    true,
                    None,
                    include_usage,
                    None,
                ))
            })
            .collect();
        if send(Bytes::from(opening)).await.is_err() {
            return;
        }
        let mut failed: Option<Failure> = None;
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                () = body_tx.closed() => return,
            };
            let mut frames = match next {
                Some((i, Event::Logprobs(lp))) => {
                    choices[i].pending.push(lp);
                    continue;
                }
                Some((i, Event::Text(t))) => match choices[i].text(&answer, t, include_usage) {
                    Some(frames) => frames,
                    None => continue,
                },
                Some((i, Event::Finished { reason, usage })) => {
                    usages[i] = Some(usage);
                    choices[i].finish(&answer, reason, include_usage)
                }
                // The other choices run to their end, so the usage covers
                // all the request computed; then the error goes in-band,
                // as OpenAI reports one once headers are gone.
                Some((i, Event::Failed { failure, usage })) => {
                    usages[i] = Some(usage);
                    failed.get_or_insert(failure);
                    Vec::new()
                }
                // The engine went away without ending every choice: say so,
                // rather than end the stream as if it were complete.
                None => {
                    let _ = send(response::sse(&engine_stopped().body())).await;
                    return;
                }
            };
            if usages.iter().all(Option::is_some) {
                let total = total_usage(usages.iter().flatten().copied());
                if include_usage {
                    frames.extend_from_slice(&response::sse(&answer.meta.usage_chunk(total)));
                }
                match &failed {
                    // No [DONE]: clients see an incomplete stream. The
                    // usage is the usage chunk's (a gateway asks for it),
                    // not the error's: an event of usage alone is what a
                    // gateway strips when the client did not ask.
                    Some(failure) => {
                        frames.extend_from_slice(&response::sse(&failure_error(failure).body()))
                    }
                    None => frames.extend_from_slice(response::DONE.as_bytes()),
                }
                let _ = send(Bytes::from(frames)).await;
                return;
            }
            if !frames.is_empty() && send(Bytes::from(frames)).await.is_err() {
                return;
            }
        }
    });
    Ok(sse_response(body_rx))
}

/// A response whose body is the events a writer task sends on `body`.
pub(super) fn sse_response(body: mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(ReceiverStream::new(body)))
        .unwrap_or_else(|_| {
            ApiError::internal("could not build the stream response").into_response()
        })
}

/// The error of a request whose every choice failed before any output
/// (`failures`, one per choice): the first failure, with what all of them
/// computed.
fn all_failed(failures: Vec<(usize, Event)>) -> ApiError {
    let usage = total_usage(failures.iter().filter_map(|(_, e)| match e {
        Event::Failed { usage, .. } => Some(*usage),
        _ => None,
    }));
    let first = failures.into_iter().find_map(|(_, e)| match e {
        Event::Failed { failure, .. } => Some(failure),
        _ => None,
    });
    first
        .map_or_else(engine_stopped, |f| failure_error(&f))
        .with_usage(usage)
}
