//! A response as server-sent events. A writer task turns the engine's
//! events into chunks; it also watches the body, so a client that hangs up
//! drops the engine's receivers at once and frees their slots at the next
//! step.
//!
//! Each choice (OpenAI's `n`) streams as its events arrive, its chunks
//! carrying its `index`; the usage chunk (all choices' completions, the
//! prompt once) and `[DONE]` follow the last choice's end.
//!
//! Log-probabilities ride on the chunk that carries their token's text, or
//! the closing chunk for tokens whose text never came (held back, then cut
//! by a stop string).
//!
//! With tools, text that may be the start of a tool call is held back; at a
//! choice's end, calls found in it go out as one `delta.tool_calls` chunk
//! (each call's index, id, name and whole arguments) before the closing
//! chunk's `finish_reason: "tool_calls"`, and held text that was no call
//! goes out as content.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::{StreamExt, StreamMap};

use super::response::{self, LogprobsWriter};
use super::{engine_stopped, failure_error, total_usage, Answer, ApiError};
use crate::engine::sampling::TokenLogprobs;
use crate::engine::{Event, FinishReason, Usage};

/// One choice's place in the stream.
struct Choice {
    index: usize,
    logprobs: Option<LogprobsWriter>,
    /// Log-probabilities of tokens whose text has not gone out yet.
    pending: Vec<TokenLogprobs>,
    /// Text held back as a possible tool call.
    held: String,
    /// Text other than whitespace has gone out.
    sent_content: bool,
}

impl Choice {
    fn take_logprobs(&mut self) -> Option<serde_json::Value> {
        let rendered = self.logprobs.as_mut().map(|w| w.render(&self.pending));
        self.pending.clear();
        rendered
    }

    /// The chunk for a piece of text, unless all of it is held back.
    fn text(&mut self, a: &Answer, text: String, include_usage: bool) -> Option<Bytes> {
        let text = match &a.tools {
            None => text,
            Some(tools) => {
                self.held.push_str(&text);
                let ready = tools.sendable(&self.held, self.sent_content);
                if ready == 0 {
                    return None;
                }
                let out: String = self.held.drain(..ready).collect();
                self.sent_content |= !out.trim().is_empty();
                out
            }
        };
        let logprobs = self.take_logprobs();
        Some(response::sse(&a.meta.chunk(
            self.index,
            Some(&text),
            false,
            None,
            include_usage,
            logprobs,
        )))
    }

    /// The choice's last chunks: held text, its tool calls, then its
    /// `finish_reason`.
    fn finish(&mut self, a: &Answer, reason: FinishReason, include_usage: bool) -> Vec<u8> {
        let mut frames = Vec::new();
        let parsed = a
            .tools
            .as_ref()
            .and_then(|t| t.calls_in_held(&self.held, self.sent_content));
        let leftover = match &parsed {
            Some(p) => p.content.clone().unwrap_or_default(),
            None => std::mem::take(&mut self.held),
        };
        if !leftover.is_empty() {
            let lp = self.take_logprobs();
            frames.extend_from_slice(&response::sse(&a.meta.chunk(
                self.index,
                Some(&leftover),
                false,
                None,
                include_usage,
                lp,
            )));
        }
        if let Some(p) = &parsed {
            let mut chunk = a
                .meta
                .chunk(self.index, None, false, None, include_usage, None);
            chunk["choices"][0]["delta"]["tool_calls"] =
                a.meta.tool_calls(self.index, &p.tool_calls, true);
            frames.extend_from_slice(&response::sse(&chunk));
        }
        let rest = (!self.pending.is_empty())
            .then(|| self.take_logprobs())
            .flatten();
        let mut closing = a
            .meta
            .chunk(self.index, None, false, Some(reason), include_usage, rest);
        if parsed.is_some() {
            closing["choices"][0]["finish_reason"] = json!("tool_calls");
        }
        frames.extend_from_slice(&response::sse(&closing));
        frames
    }
}

/// Streams every choice's events (see the module).
pub(super) fn stream(
    answer: Answer,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    include_usage: bool,
) -> Response {
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let send = |frame: Bytes| body_tx.send(Ok(frame));
        let mut choices: Vec<Choice> = (0..receivers.len())
            .map(|index| Choice {
                index,
                logprobs: answer.logprobs.clone(),
                pending: Vec::new(),
                held: String::new(),
                sent_content: false,
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
        let mut events: StreamMap<usize, UnboundedReceiverStream<Event>> = receivers
            .into_iter()
            .map(UnboundedReceiverStream::new)
            .enumerate()
            .collect();
        let mut usages: Vec<Option<Usage>> = vec![None; choices.len()];
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                () = body_tx.closed() => return,
            };
            let frame = match next {
                Some((i, Event::Logprobs(lp))) => {
                    choices[i].pending.push(lp);
                    continue;
                }
                Some((i, Event::Text(t))) => match choices[i].text(&answer, t, include_usage) {
                    Some(frame) => frame,
                    None => continue,
                },
                Some((i, Event::Finished { reason, usage })) => {
                    let mut frames = choices[i].finish(&answer, reason, include_usage);
                    usages[i] = Some(usage);
                    if usages.iter().all(Option::is_some) {
                        if include_usage {
                            let total = total_usage(usages.iter().flatten().copied());
                            frames
                                .extend_from_slice(&response::sse(&answer.meta.usage_chunk(total)));
                        }
                        frames.extend_from_slice(response::DONE.as_bytes());
                        let _ = send(Bytes::from(frames)).await;
                        return;
                    }
                    Bytes::from(frames)
                }
                // Headers are gone already: report in-band, as OpenAI does,
                // and end without [DONE] so clients see an incomplete stream.
                Some((_, Event::Failed(failure))) => {
                    let _ = send(response::sse(&failure_error(&failure).body())).await;
                    return;
                }
                // The engine went away without ending every choice: say so,
                // rather than end the stream as if it were complete.
                None => {
                    let _ = send(response::sse(&engine_stopped().body())).await;
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
