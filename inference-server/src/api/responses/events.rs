//! A response as the Responses API's typed events, each `event: <type>`
//! with its JSON (carrying `type` and a `sequence_number`):
//! `response.created` and `response.in_progress`, then each output item in
//! turn: `response.output_item.added`, its content's deltas
//! (`response.reasoning_text.delta`, `response.output_text.delta`,
//! `response.function_call_arguments.delta`) and `….done` events, and
//! `response.output_item.done`; at the end `response.completed` (or
//! `response.incomplete` when the budget ended it) with the whole response
//! and its usage. A failure once output has gone out ends the stream with
//! `response.failed`, whose response carries the error and the usage of
//! what was computed. There is no `[DONE]`.
//!
//! The answer is read as chat's stream reads it: its thinking split off
//! first (`ReasoningSplit`), its text read for calls where tools are in
//! play (`ToolCallStream`), so a call goes out as soon as its name is
//! read and its arguments as the model writes them.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::super::reasoning::{Piece, ReasoningSplit};
use super::super::stream::sse_response;
use super::super::tool_calls::{Streamed, ToolCallStream};
use super::super::{by_choice, engine_stopped, failure_error, Answer, ApiError};
use super::output::{self, Reply, Status};
use super::usage_json;
use crate::engine::{Event, FinishReason, Usage};
use crate::text::TextTokenizer;

/// An item of text: the thinking, or the answer's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Message,
}

impl Kind {
    /// Its content part, holding `text`.
    fn part(self, text: &str) -> Value {
        match self {
            Kind::Reasoning => json!({"type": "reasoning_text", "text": text}),
            Kind::Message => output::output_text(text),
        }
    }

    /// Its events' prefix: `response.reasoning_text` or
    /// `response.output_text`.
    fn events(self) -> &'static str {
        match self {
            Kind::Reasoning => "response.reasoning_text",
            Kind::Message => "response.output_text",
        }
    }
}

/// The output item being written.
enum Open {
    Text {
        kind: Kind,
        id: String,
        text: String,
    },
    Call {
        index: usize,
        ids: (String, String),
        name: String,
        arguments: String,
    },
}

/// Turns one answer's text into events (see the module).
struct Writer {
    reply: Reply,
    sequence: u64,
    reasoning: Option<ReasoningSplit>,
    calls: Option<ToolCallStream>,
    /// The items written, in output order.
    output: Vec<Value>,
    open: Option<Open>,
    /// All the thinking, for the usage's count of it.
    thought: String,
    /// White space while no message is open: what a model writes between
    /// calls (Qwen's parallel calls are a line apart) is no message, as a
    /// whole answer's trimmed content is none.
    space: String,
    /// A message item was started.
    messaged: bool,
    /// A call item was started.
    called: bool,
}

impl Writer {
    fn new(reply: Reply, reasoning: Option<ReasoningSplit>, calls: Option<ToolCallStream>) -> Self {
        Writer {
            reply,
            sequence: 0,
            reasoning,
            calls,
            output: Vec::new(),
            open: None,
            thought: String::new(),
            space: String::new(),
            messaged: false,
            called: false,
        }
    }

    fn event(&mut self, kind: &str, mut fields: Value) -> Vec<u8> {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        format!("event: {kind}\ndata: {fields}\n\n").into_bytes()
    }

    fn opening(&mut self) -> Vec<u8> {
        let response = self
            .reply
            .object(Status::InProgress, Vec::new(), None, None);
        let mut frames = self.event("response.created", json!({"response": response}));
        let response = self
            .reply
            .object(Status::InProgress, Vec::new(), None, None);
        frames.extend(self.event("response.in_progress", json!({"response": response})));
        frames
    }

    /// The item `open` as it stands, with `status`.
    fn item(open: &Open, status: Status) -> Value {
        match open {
            Open::Text {
                kind: Kind::Reasoning,
                id,
                text,
            } => output::reasoning_item(id, text, status),
            Open::Text {
                kind: Kind::Message,
                id,
                text,
            } => output::message_item(id, text, status),
            Open::Call {
                ids,
                name,
                arguments,
                ..
            } => output::function_call_item(ids, name, arguments, status),
        }
    }

    /// Starts item `open` at the next output index, ending the one open.
    fn start(&mut self, open: Open, frames: &mut Vec<u8>) {
        self.close(Status::Completed, frames);
        let index = self.output.len();
        let mut added = Self::item(&open, Status::InProgress);
        let part = match &open {
            Open::Text { kind, .. } => {
                added["content"] = json!([]);
                Some(kind.part(""))
            }
            Open::Call { .. } => None,
        };
        frames.extend(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        ));
        if let Some(part) = part {
            let item_id = added["id"].clone();
            frames.extend(self.event(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
            ));
        }
        self.open = Some(open);
    }

    /// Ends the open item, if any, with `status`.
    fn close(&mut self, status: Status, frames: &mut Vec<u8>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let index = self.output.len();
        let item = Self::item(&open, status);
        match &open {
            Open::Text { kind, id, text } => {
                let mut done = json!({"item_id": id, "output_index": index, "content_index": 0,
                                      "text": text});
                if *kind == Kind::Message {
                    done["logprobs"] = json!([]);
                }
                frames.extend(self.event(&format!("{}.done", kind.events()), done));
                frames.extend(self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "part": kind.part(text)}),
                ));
            }
            Open::Call {
                ids,
                name,
                arguments,
                ..
            } => {
                frames.extend(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": ids.0, "output_index": index, "name": name,
                           "arguments": arguments}),
                ));
            }
        }
        frames.extend(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.output.push(item);
    }

    fn text(&mut self, text: &str) -> Vec<u8> {
        let pieces = match &mut self.reasoning {
            None => vec![Piece::Content(text.to_owned())],
            Some(split) => split.push(text),
        };
        self.pieces(pieces)
    }

    fn pieces(&mut self, pieces: Vec<Piece>) -> Vec<u8> {
        let mut frames = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Reasoning(thought) => self.text_delta(Kind::Reasoning, thought, &mut frames),
                Piece::Content(text) => {
                    let streamed = match &mut self.calls {
                        None => vec![Streamed::Content(text)],
                        Some(calls) => calls.push(&text),
                    };
                    self.streamed(streamed, &mut frames);
                }
            }
        }
        frames
    }

    /// A piece of the thinking or of the message: it starts its item
    /// unless that is the one open (a message only once it has more than
    /// white space, see `space`).
    fn text_delta(&mut self, kind: Kind, mut delta: String, frames: &mut Vec<u8>) {
        if delta.is_empty() {
            return;
        }
        if kind == Kind::Reasoning {
            self.thought.push_str(&delta);
        }
        if !matches!(self.open, Some(Open::Text { kind: open, .. }) if open == kind) {
            if kind == Kind::Message {
                if delta.trim().is_empty() {
                    self.space.push_str(&delta);
                    return;
                }
                delta = std::mem::take(&mut self.space) + &delta;
            }
            self.start_text(kind, frames);
        }
        self.append(delta, frames);
    }

    fn start_text(&mut self, kind: Kind, frames: &mut Vec<u8>) {
        let index = self.output.len();
        let id = match kind {
            Kind::Reasoning => self.reply.reasoning_id(index),
            Kind::Message => {
                self.messaged = true;
                self.reply.message_id(index)
            }
        };
        let text = String::new();
        self.start(Open::Text { kind, id, text }, frames);
    }

    /// `delta` to the open item of text, as its delta event.
    fn append(&mut self, delta: String, frames: &mut Vec<u8>) {
        if delta.is_empty() {
            return;
        }
        if let Some(Open::Text { kind, id, text }) = &mut self.open {
            let kind = *kind;
            text.push_str(&delta);
            let mut fields = json!({"item_id": id, "output_index": self.output.len(),
                                    "content_index": 0, "delta": delta});
            if kind == Kind::Message {
                fields["logprobs"] = json!([]);
            }
            frames.extend(self.event(&format!("{}.delta", kind.events()), fields));
        }
    }

    fn streamed(&mut self, streamed: Vec<Streamed>, frames: &mut Vec<u8>) {
        for piece in streamed {
            match piece {
                Streamed::Content(delta) => self.text_delta(Kind::Message, delta, frames),
                Streamed::Call {
                    index,
                    name,
                    arguments,
                } => self.call_delta(index, name, arguments, frames),
            }
        }
    }

    /// A call's first piece (with its name) starts its item; each piece's
    /// arguments go out as a delta of it.
    fn call_delta(
        &mut self,
        index: usize,
        name: Option<String>,
        delta: String,
        frames: &mut Vec<u8>,
    ) {
        if let Some(name) = name {
            self.space.clear();
            self.called = true;
            let ids = self.reply.call_ids(index);
            self.start(
                Open::Call {
                    index,
                    ids,
                    name,
                    arguments: String::new(),
                },
                frames,
            );
        }
        if delta.is_empty() {
            return;
        }
        if let Some(Open::Call {
            index: open,
            ids,
            arguments,
            ..
        }) = &mut self.open
        {
            if *open == index {
                arguments.push_str(&delta);
                let fields =
                    json!({"item_id": ids.0, "output_index": self.output.len(), "delta": delta});
                frames.extend(self.event("response.function_call_arguments.delta", fields));
            }
        }
    }

    /// What was held back, the last item's end, and the whole response.
    fn finish(&mut self, reason: FinishReason, usage: Usage, tokenizer: &TextTokenizer) -> Vec<u8> {
        let thought = self
            .reasoning
            .as_mut()
            .map(ReasoningSplit::finish)
            .unwrap_or_default();
        let mut frames = self.pieces(thought);
        let held = self
            .calls
            .as_mut()
            .map(ToolCallStream::finish)
            .unwrap_or_default();
        self.streamed(held, &mut frames);
        let status = Status::ended(reason);
        if !self.messaged && !self.called {
            // An answer that made no call is a message, even one of white
            // space or of nothing, as a whole one is.
            let space = std::mem::take(&mut self.space);
            self.start_text(Kind::Message, &mut frames);
            self.append(space, &mut frames);
        }
        // A call sent and then broken (the budget, or garbage after its
        // name) stays sent, but is not whole.
        let broken = matches!(self.open, Some(Open::Call { .. }))
            && self.calls.as_ref().is_some_and(|c| !c.ends_with_calls());
        self.close(
            if broken { Status::Incomplete } else { status },
            &mut frames,
        );
        let usage = usage_json(usage, tokenizer, &self.thought);
        let response = self
            .reply
            .object(status, self.output.clone(), Some(usage), None);
        let kind = match status {
            Status::Incomplete => "response.incomplete",
            _ => "response.completed",
        };
        frames.extend(self.event(kind, json!({"response": response})));
        frames
    }

    /// The open item ends incomplete and the response failed, with what
    /// was computed.
    fn fail(&mut self, error: &ApiError, usage: Usage, tokenizer: &TextTokenizer) -> Vec<u8> {
        let mut frames = Vec::new();
        self.close(Status::Failed, &mut frames);
        let usage = usage_json(usage, tokenizer, &self.thought);
        // The API's codes are its own list; ours stays in the message.
        let error = json!({"code": "server_error", "message": error.message});
        let response = self.reply.object(
            Status::Failed,
            self.output.clone(),
            Some(usage),
            Some(error),
        );
        frames.extend(self.event("response.failed", json!({"response": response})));
        frames
    }
}

/// Streams the answer's events (see the module) once it has output: an
/// answer that fails before any (refused at shutdown, or by the KV cache)
/// gets its error's own status, as a whole one does.
pub(super) async fn stream(
    answer: Answer,
    reply: Reply,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    tokenizer: Arc<TextTokenizer>,
) -> Result<Response, ApiError> {
    let mut events = by_choice(receivers);
    let first = events.next().await.ok_or_else(engine_stopped)?;
    if let (_, Event::Failed { failure, usage }) = first {
        return Err(failure_error(&failure).with_usage(usage));
    }
    let mut events = tokio_stream::iter([first]).chain(events);
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let mut writer = Writer::new(
        reply,
        answer.reasoning.map(ReasoningSplit::new),
        answer.tools.as_ref().map(|t| t.stream()),
    );
    tokio::spawn(async move {
        let send = |frames: Vec<u8>| body_tx.send(Ok(Bytes::from(frames)));
        if send(writer.opening()).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                () = body_tx.closed() => return,
            };
            let frames = match next {
                Some((_, Event::Logprobs(_))) => continue,
                Some((_, Event::Text(t))) => writer.text(&t),
                Some((_, Event::Finished { reason, usage })) => {
                    let _ = send(writer.finish(reason, usage, &tokenizer)).await;
                    return;
                }
                Some((_, Event::Failed { failure, usage })) => {
                    let error = failure_error(&failure);
                    let _ = send(writer.fail(&error, usage, &tokenizer)).await;
                    return;
                }
                // The engine went away without ending the answer: say so,
                // rather than end the stream as if it were complete.
                // No usage: none is known, and a gateway estimates a stream
                // that ends without it.
                None => {
                    let error = engine_stopped();
                    let fields =
                        json!({"code": "server_error", "message": error.message, "param": null});
                    let _ = send(writer.event("error", fields)).await;
                    return;
                }
            };
            if !frames.is_empty() && send(frames).await.is_err() {
                return;
            }
        }
    });
    Ok(sse_response(body_rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::response::{CallIds, Meta, Shape};
    use crate::api::tool_calls::ToolCallFormat;
    use crate::api::ToolCallParsing;
    use crate::text::fixtures::tiny_tokenizer;

    fn writer(reasoning: bool, tools: bool) -> Writer {
        let reply = Reply {
            meta: Meta {
                id: "resp-abc".into(),
                created: 1,
                model: "m".into(),
                shape: Shape::Chat,
                call_ids: CallIds::Named,
            },
            echo: serde_json::Map::new(),
        };
        let parsing = ToolCallParsing {
            format: ToolCallFormat::Hermes,
            names: vec!["w".into()],
            forced: None,
            parallel: true,
        };
        Writer::new(
            reply,
            reasoning.then(|| ReasoningSplit::new(false)),
            tools.then(|| parsing.stream()),
        )
    }

    /// The events in `frames`, each checked to be `event: <type>` with the
    /// same `type` in its data.
    fn events(frames: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(frames).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (kind, data) = e.split_once('\n').unwrap();
                let value: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(kind.strip_prefix("event: ").unwrap(), value["type"], "{e}");
                value
            })
            .collect()
    }

    /// The events of `frames` and of the answer's end, with this usage.
    fn finished(
        w: &mut Writer,
        mut frames: Vec<u8>,
        reason: FinishReason,
        (prompt_tokens, completion_tokens): (usize, usize),
    ) -> Vec<Value> {
        let usage = Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens: 0,
        };
        frames.extend(w.finish(reason, usage, &tiny_tokenizer()));
        events(&frames)
    }

    fn kinds(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn a_text_answer_is_one_message_item_and_the_completed_response() {
        let mut w = writer(false, false);
        let mut frames = w.opening();
        frames.extend(w.text("Par"));
        frames.extend(w.text("is"));
        let events = finished(&mut w, frames, FinishReason::Stop, (7, 2));
        assert_eq!(
            kinds(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let numbers: Vec<u64> = events
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..10).collect::<Vec<u64>>());
        let done = &events[9]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["id"], "resp_abc");
        assert_eq!(done["output"][0]["content"][0]["text"], "Paris");
        assert_eq!(done["output"][0]["id"], events[2]["item"]["id"]);
        assert_eq!(done["usage"]["input_tokens"], 7);
        assert_eq!(done["usage"]["output_tokens"], 2);
        assert_eq!(done["usage"]["total_tokens"], 9);
    }

    /// Thinking, then text, then a call: three items in turn, each ended
    /// before the next starts; the budget ending the answer makes it
    /// incomplete.
    #[test]
    fn thinking_text_and_a_call_are_items_in_turn() {
        let mut w = writer(true, true);
        let mut frames = w.text("<think>hmm</think>Sure.");
        frames.extend(w.text(
            " <tool_call>\n{\"name\": \"w\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        ));
        let events = finished(&mut w, frames, FinishReason::Length, (5, 30));
        let added: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "response.output_item.added")
            .map(|e| e["item"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(added, ["reasoning", "message", "function_call"]);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.incomplete");
        let output = &last["response"]["output"];
        assert_eq!(output[0]["content"][0]["text"], "hmm");
        // As chat streams it: the text as written, the space before the
        // call included (a whole answer trims it).
        assert_eq!(output[1]["content"][0]["text"], "Sure. ");
        assert_eq!(output[2]["name"], "w");
        assert_eq!(output[2]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(output[2]["call_id"], "call_abc_0_0");
        let arguments: String = events
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(arguments, "{\"city\":\"Paris\"}");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert!(
            last["response"]["usage"]["output_tokens_details"]["reasoning_tokens"]
                .as_u64()
                .unwrap()
                > 0
        );
        // Every delta names the item open at its index.
        for e in &events {
            if let Some(id) = e.get("item_id") {
                let index = e["output_index"].as_u64().unwrap() as usize;
                assert_eq!(&output[index]["id"], id, "{e}");
            }
        }
    }

    /// Qwen writes parallel calls a line apart: the line is no message
    /// item between them, as the whole answer's content is none.
    #[test]
    fn white_space_between_calls_is_no_message() {
        let mut w = writer(false, true);
        let call = |city: &str| {
            format!("<tool_call>\n{{\"name\": \"w\", \"arguments\": {{\"city\": \"{city}\"}}}}\n</tool_call>")
        };
        let mut frames = w.text(&call("Paris"));
        frames.extend(w.text("\n"));
        frames.extend(w.text(&call("Rome")));
        let events = finished(&mut w, frames, FinishReason::Stop, (5, 40));
        let output = &events.last().unwrap()["response"]["output"];
        let types: Vec<&str> = output
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["function_call", "function_call"], "{output}");
        assert_eq!(output[1]["arguments"], "{\"city\":\"Rome\"}");
        assert_eq!(output[1]["call_id"], "call_abc_0_1");
        assert_eq!(output[1]["status"], "completed");
    }

    /// An answer of white space, or of nothing, is still a message.
    #[test]
    fn an_answer_of_white_space_is_a_message() {
        let mut w = writer(false, false);
        let frames = w.text(" ");
        let events = finished(&mut w, frames, FinishReason::Stop, (5, 1));
        let output = &events.last().unwrap()["response"]["output"];
        assert_eq!(output[0]["type"], "message");
        assert_eq!(output[0]["content"][0]["text"], " ");
    }

    #[test]
    fn a_failure_after_output_ends_the_item_and_fails_with_the_usage() {
        let mut w = writer(false, false);
        let mut frames = w.text("Par");
        let usage = Usage {
            prompt_tokens: 4,
            completion_tokens: 1,
            cached_tokens: 0,
        };
        let error = ApiError::unavailable("generation_failed", "cut");
        frames.extend(w.fail(&error, usage, &tiny_tokenizer()));
        let events = events(&frames);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(last["response"]["error"]["code"], "server_error");
        assert_eq!(last["response"]["usage"]["output_tokens"], 1);
        assert_eq!(last["response"]["output"][0]["status"], "incomplete");
    }
}
