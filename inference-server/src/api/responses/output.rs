//! The Responses API's shapes: the response object, its output items
//! (reasoning, a message, function calls) and its usage.

use serde_json::{json, Map, Value};

use super::super::response::Meta;
use crate::engine::{FinishReason, Usage};

/// What the response object and every event of one response share.
pub(super) struct Reply {
    /// The chat answer's meta: its id's stem names the response, its items
    /// and its calls.
    pub meta: Meta,
    /// The request's fields the response object repeats.
    pub echo: Map<String, Value>,
}

/// Where a response stands, as its object's `status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    InProgress,
    Completed,
    /// The budget (or the context) ended the answer.
    Incomplete,
    Failed,
}

impl Status {
    pub fn ended(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Stop => Status::Completed,
            FinishReason::Length => Status::Incomplete,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
        }
    }

    /// What an item the answer ended in says of itself.
    pub fn item(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete | Status::Failed => "incomplete",
        }
    }
}

impl Reply {
    fn stem(&self) -> &str {
        self.meta.id.rsplit('-').next().unwrap_or(&self.meta.id)
    }

    pub fn id(&self) -> String {
        format!("resp_{}", self.stem())
    }

    /// The id of the reasoning item at `output_index`.
    pub fn reasoning_id(&self, output_index: usize) -> String {
        format!("rs_{}_{output_index}", self.stem())
    }

    /// The id of the message item at `output_index`.
    pub fn message_id(&self, output_index: usize) -> String {
        format!("msg_{}_{output_index}", self.stem())
    }

    /// Function call `i`'s item id, and the `call_id` its output names.
    pub fn call_ids(&self, i: usize) -> (String, String) {
        (format!("fc_{}_{i}", self.stem()), self.meta.call_id(0, i))
    }

    /// The response object. `error` is set when it failed.
    pub fn object(
        &self,
        status: Status,
        output: Vec<Value>,
        usage: Option<Value>,
        error: Option<Value>,
    ) -> Value {
        let mut object = json!({
            "id": self.id(),
            "object": "response",
            "created_at": self.meta.created,
            "status": status.as_str(),
            "error": error,
            "incomplete_details": (status == Status::Incomplete)
                .then(|| json!({"reason": "max_output_tokens"})),
            "model": self.meta.model,
            "output": output,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "truncation": "disabled",
            "usage": usage,
        });
        if let Value::Object(fields) = &mut object {
            fields.extend(self.echo.clone());
        }
        object
    }
}

pub(super) fn reasoning_item(id: &str, text: &str, status: Status) -> Value {
    json!({
        "type": "reasoning",
        "id": id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status.item(),
    })
}

pub(super) fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

pub(super) fn message_item(id: &str, text: &str, status: Status) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status.item(),
        "role": "assistant",
        "content": [output_text(text)],
    })
}

pub(super) fn function_call_item(
    (id, call_id): &(String, String),
    name: &str,
    arguments: &str,
    status: Status,
) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status.item(),
    })
}

/// The usage as the Responses API words it; `reasoning_tokens` is how many
/// of the output's tokens were thinking.
pub(super) fn usage(u: Usage, reasoning_tokens: usize) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        // Nothing is written to a cache a request pays for here.
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens.min(u.completion_tokens)},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}
