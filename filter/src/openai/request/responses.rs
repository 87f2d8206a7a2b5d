//! What a Responses API request (`/v1/responses`) adds to the rules of the
//! chat request: the gateway bounds a prompt by the body's bytes (and its
//! media parts), so a request whose prompt is not in its body is refused,
//! not reserved as if it were:
//! - `previous_response_id`, `conversation` and a stored `prompt` pull in
//!   turns the provider stored;
//! - an `item_reference` input item pulls in one stored item, and so does
//!   an item given by its id alone (OpenAI reads an item without a `type`
//!   as a reference unless it is a message with a `role`, and a reasoning
//!   item without its `encrypted_content` or `content` is looked up by id);
//!   an input item of a kind not listed here is refused, not guessed at;
//! - `background: true` answers later, by id, on a route the gateway does
//!   not serve;
//! - a tool the provider runs (`web_search`, `file_search`,
//!   `code_interpreter`, `image_generation`, `mcp`, ...) feeds its results
//!   to the model as prompt tokens the body does not bound, and its calls
//!   are billed apart from tokens. Tools the client runs (functions,
//!   custom tools, Codex's shell and patch tools, computer use) send their
//!   results back in the body, and pass (a shell tool only in a local
//!   environment: OpenAI's hosted container is the provider's).
//!
//! Media parts of the `input` items count as the chat request's do: every
//! content part but text (`input_text`, `output_text`, `refusal`, a
//! reasoning item's text) is one, and so is a computer call's screenshot;
//! counting errs high. A shell or patch call's output is text whatever its
//! shape.

use serde_json::value::RawValue;

use super::{object_fields, top_level_fields, Keys, RequestError};

const EXPECT_NO_STATE: &str =
    "null: the gateway bounds a request by its body, and a stored conversation is not in it (send the items in `input`)";
const EXPECT_NO_STORED_PROMPT: &str =
    "null: the gateway bounds a request by its body, and a stored prompt is not in it";
const EXPECT_NO_BACKGROUND: &str =
    "false or null: a background response is fetched later by its id, which the gateway does not route";
const EXPECT_TOOLS: &str =
    "tools the client runs (function, custom, shell, apply_patch, computer use): a tool the provider runs feeds its results in as prompt tokens the body does not bound, and its calls are billed apart from tokens";
const EXPECT_INPUT: &str =
    "a string or an array of input items the body holds: no `item_reference`, no item by id alone (a message needs its `role`, a reasoning item its `encrypted_content` or `content`), no item of a tool the provider runs";

/// The top-level fields only a Responses request has, read in a second
/// walk of the body.
const FIELDS: [&str; 4] = [
    "previous_response_id",
    "conversation",
    "background",
    "tools",
];

/// Content part types whose tokens the body's bytes bound.
const TEXT_PARTS: [&str; 6] = [
    r#""input_text""#,
    r#""output_text""#,
    r#""refusal""#,
    r#""text""#,
    r#""reasoning_text""#,
    r#""summary_text""#,
];

/// Input item types whose tokens the body's bytes bound, apart from their
/// content parts (counted each). A `reasoning` item is one too, once it
/// carries its content (see [`item_media`]).
const TEXT_ITEMS: [&str; 12] = [
    "message",
    "function_call",
    "function_call_output",
    "custom_tool_call",
    "custom_tool_call_output",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "computer_call",
];

/// Tool types the client runs (see the module).
const CLIENT_TOOLS: [&str; 7] = [
    r#""function""#,
    r#""custom""#,
    r#""local_shell""#,
    r#""shell""#,
    r#""apply_patch""#,
    r#""computer_use_preview""#,
    r#""computer_use""#,
];

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|raw| raw.get() == "null")
}

/// Refuses what names state or work outside the body (see the module).
pub(super) fn check(body: &[u8]) -> Result<(), RequestError> {
    let [previous, conversation, background, tools] = top_level_fields(body, &FIELDS)?.values;
    for (field, raw) in [
        ("previous_response_id", previous),
        ("conversation", conversation),
    ] {
        if !is_null(raw) {
            return Err(RequestError::InvalidField {
                field,
                expected: EXPECT_NO_STATE,
            });
        }
    }
    if background.is_some_and(|raw| !matches!(raw.get(), "null" | "false")) {
        return Err(RequestError::InvalidField {
            field: "background",
            expected: EXPECT_NO_BACKGROUND,
        });
    }
    check_tools(tools)
}

fn check_tools(tools: Option<&RawValue>) -> Result<(), RequestError> {
    let invalid = || RequestError::InvalidField {
        field: "tools",
        expected: EXPECT_TOOLS,
    };
    let Some(tools) = tools.filter(|raw| raw.get() != "null") else {
        return Ok(());
    };
    let tools: Vec<&RawValue> = serde_json::from_str(tools.get()).map_err(|_| invalid())?;
    for tool in tools {
        let [kind, environment] =
            plain_fields(tool, &["type", "environment"]).ok_or_else(invalid)?;
        let kind = kind.map(RawValue::get);
        let local = is_null(environment)
            || environment
                .and_then(|env| plain_fields(env, &["type"]))
                .is_some_and(|[kind]| kind.is_some_and(|k| k.get() == r#""local""#));
        let client_run = kind.is_some_and(|kind| CLIENT_TOOLS.contains(&kind))
            && (kind != Some(r#""shell""#) || local);
        if !client_run {
            return Err(invalid());
        }
    }
    Ok(())
}

/// The fields `names` of the object `raw`, none given twice or in another
/// case; `None` for anything else.
fn plain_fields<'a, const N: usize>(
    raw: &'a RawValue,
    names: &[&str; N],
) -> Option<[Option<&'a RawValue>; N]> {
    if !raw.get().starts_with('{') {
        return None;
    }
    let fields = object_fields(raw.get().as_bytes(), names, Keys::AlsoCaseVariants).ok()?;
    (fields.duplicate.is_none() && fields.case_variant.is_none()).then_some(fields.values)
}

/// The media parts of `input` (see the module); a stored `prompt` or an
/// `item_reference` is refused.
pub(super) fn input_media(
    prompt: Option<&RawValue>,
    input: Option<&RawValue>,
) -> Result<u64, RequestError> {
    if !is_null(prompt) {
        return Err(RequestError::InvalidField {
            field: "prompt",
            expected: EXPECT_NO_STORED_PROMPT,
        });
    }
    let invalid = || RequestError::InvalidField {
        field: "input",
        expected: EXPECT_INPUT,
    };
    let Some(input) = input.filter(|raw| raw.get().starts_with('[')) else {
        // A string, null or absent: its bytes are its bound (a server
        // refuses anything else).
        return Ok(0);
    };
    let items: Vec<&RawValue> = serde_json::from_str(input.get()).map_err(|_| invalid())?;
    items.iter().try_fold(0u64, |count, item| {
        Ok(count.saturating_add(item_media(item).ok_or_else(invalid)?))
    })
}

/// One input item's media parts; `None` for an item the body does not
/// hold (see the module), or one that cannot be read.
fn item_media(item: &RawValue) -> Option<u64> {
    let [kind, role, content, output, encrypted] = plain_fields(
        item,
        &["type", "role", "content", "output", "encrypted_content"],
    )?;
    // Decoded: `"item\u005freference"` is the type a provider reads.
    let kind: std::borrow::Cow<'_, str> = match kind.filter(|k| k.get() != "null") {
        // A message may leave out its type; anything else so is a
        // reference by id.
        None if !is_null(role) => "message".into(),
        None => return None,
        Some(kind) => serde_json::from_str(kind.get()).ok()?,
    };
    let own = match kind.as_ref() {
        kind if TEXT_ITEMS.contains(&kind) => 0,
        "reasoning" if !is_null(encrypted) || non_empty(content) => 0,
        // Its screenshot.
        "computer_call_output" => 1,
        _ => return None,
    };
    let output = match kind.as_ref() {
        // Text however it is shaped (a shell call's are `stdout`/`stderr`
        // objects, not content parts).
        "shell_call_output" | "local_shell_call_output" | "apply_patch_call_output" => 0,
        _ => parts_media(output)?,
    };
    Some(own + parts_media(content)? + output)
}

/// A non-empty array (a reasoning item's `content`).
fn non_empty(raw: Option<&RawValue>) -> bool {
    raw.and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok())
        .is_some_and(|items| !items.is_empty())
}

/// The media parts of a `content` (or a call output's `output`): a string
/// has none, an array one per part that is not text.
fn parts_media(raw: Option<&RawValue>) -> Option<u64> {
    let Some(raw) = raw.filter(|raw| raw.get().starts_with('[')) else {
        return Some(0);
    };
    let parts: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
    let mut count = 0u64;
    for part in parts {
        let text = plain_fields(part, &["type"])
            .is_some_and(|[kind]| kind.is_some_and(|t| TEXT_PARTS.contains(&t.get())));
        if !text {
            count = count.saturating_add(1);
        }
    }
    Some(count)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::parse_request;
    use super::*;
    use crate::openai::endpoint::Endpoint;

    fn parsed(body: &str) -> Result<super::super::CompletionRequest<'_>, RequestError> {
        parse_request(body.as_bytes(), Some(&Endpoint::Responses))
    }

    #[test]
    fn a_responses_request_is_read_with_its_budget_and_media() {
        let r = parsed(
            r#"{"model":"m","max_output_tokens":64,"stream":true,"input":[
                {"role":"user","content":[{"type":"input_text","text":"What is this?"},
                                          {"type":"input_image","image_url":"https://x/y.png"},
                                          {"type":"input_file","file_id":"file-1"}]},
                {"type":"function_call","call_id":"c","name":"w","arguments":"{}"},
                {"type":"function_call_output","call_id":"c","output":[{"type":"input_image","file_id":"f"}]},
                {"type":"computer_call_output","call_id":"d","output":{"type":"computer_screenshot"}}
            ],"tools":[{"type":"function","name":"w"}]}"#,
        )
        .unwrap();
        assert_eq!(r.max_output_tokens, Some(64));
        assert_eq!(r.requested_max_tokens(), Some(64));
        assert!(r.responses && r.stream && r.usage_wanted());
        assert_eq!(r.completions(), 1);
        assert_eq!(r.media_parts, 4);
        assert!(!r.budget_needs_rewrite());
    }

    /// The Responses servers read `max_output_tokens` alone: a body
    /// without it must carry the reserved budget there.
    #[test]
    fn without_max_output_tokens_the_budget_is_written_in() {
        use super::super::{rewrite_completion_request, BodyRewrite, BudgetField};
        let rewrite = BodyRewrite {
            max_tokens: Some(9),
            insert_as: BudgetField::MaxOutputTokens,
            ..BodyRewrite::default()
        };
        for body in [
            r#"{"model":"m","input":"hi","max_output_tokens":null}"#,
            r#"{"model":"m","input":"hi"}"#,
        ] {
            let r = parsed(body).unwrap();
            assert_eq!(r.requested_max_tokens(), None, "{body}");
            let out = rewrite_completion_request(body.as_bytes(), &rewrite).unwrap();
            let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(back["max_output_tokens"], 9, "{body}");
            // What the gateway wrote passes the backend role's read.
            let again = parsed(std::str::from_utf8(&out).unwrap()).unwrap();
            assert_eq!(again.requested_max_tokens(), Some(9));
        }
    }

    /// What SDKs and agents send back: output items of earlier turns, a
    /// message without a type, tools the client runs.
    #[test]
    fn what_the_body_holds_passes() {
        for body in [
            r#"{"model":"m","input":[{"role":"user","content":"hi"},{"type":null,"role":"user","content":"x"}]}"#,
            r#"{"model":"m","input":[{"type":"message","id":"msg_1","role":"assistant","status":"completed",
                "content":[{"type":"output_text","text":"x","annotations":[]}]}]}"#,
            r#"{"model":"m","input":[{"type":"function_call","id":"fc_1","call_id":"c","name":"w","arguments":"{}","status":"completed"},
                {"type":"function_call_output","call_id":"c","output":"18 C"}]}"#,
            r#"{"model":"m","input":[{"type":"reasoning","id":"rs_1","summary":[],"content":[{"type":"reasoning_text","text":"t"}]},
                {"type":"reasoning","id":"rs_2","summary":[],"encrypted_content":"gAAA"}]}"#,
            r#"{"model":"m","input":[{"type":"shell_call_output","call_id":"s","output":[{"stdout":"ok","stderr":"","outcome":{"type":"exit","exit_code":0}}]}]}"#,
            r#"{"model":"m","input":"x","tools":[{"type":"shell"},{"type":"shell","environment":{"type":"local"}},
                {"type":"function","name":"w"},{"type":"custom","name":"c"},{"type":"apply_patch"}]}"#,
        ] {
            let r = parsed(body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(r.media_parts, 0, "{body}");
        }
    }

    #[test]
    fn what_is_not_in_the_body_is_refused_by_name() {
        for (body, field) in [
            (
                r#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#,
                "previous_response_id",
            ),
            (
                r#"{"model":"m","input":"x","conversation":{"id":"conv_1"}}"#,
                "conversation",
            ),
            (r#"{"model":"m","prompt":{"id":"pmpt_1"}}"#, "prompt"),
            (
                r#"{"model":"m","input":"x","background":true}"#,
                "background",
            ),
            (
                r#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#,
                "tools",
            ),
            (
                r#"{"model":"m","input":"x","tools":[{"type":"shell"},{"type":"mcp"}]}"#,
                "tools",
            ),
            (
                r#"{"model":"m","input":"x","tools":[{"type":"function","TYPE":"mcp"}]}"#,
                "tools",
            ),
            (
                r#"{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}"#,
                "input",
            ),
            (r#"{"model":"m","input":[{"id":"msg_1"}]}"#, "input"),
            (
                r#"{"model":"m","input":[{"type":"item\u005freference","id":"msg_1"}]}"#,
                "input",
            ),
            (
                r#"{"model":"m","input":[{"type":null,"id":"msg_1"}]}"#,
                "input",
            ),
            (
                r#"{"model":"m","input":[{"type":"reasoning","id":"rs_2","summary":[],"content":[]}]}"#,
                "input",
            ),
            (
                r#"{"model":"m","input":"x","max_tokens":null}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","input":[{"type":"reasoning","id":"rs_1","summary":[]}]}"#,
                "input",
            ),
            (
                r#"{"model":"m","input":[{"type":"web_search_call","id":"ws_1"}]}"#,
                "input",
            ),
            (
                r#"{"model":"m","input":"x","tools":[{"type":"shell","environment":{"type":"container_auto"}}]}"#,
                "tools",
            ),
            (r#"{"model":"m","input":"x","max_tokens":5}"#, "max_tokens"),
            (r#"{"model":"m","input":"x","n_predict":5}"#, "n_predict"),
            (
                r#"{"model":"m","input":"x","max_output_tokens":0}"#,
                "max_output_tokens",
            ),
        ] {
            let error = parsed(body).and_then(|r| r.check_budget_fields().map(|()| r));
            match error {
                Err(RequestError::InvalidField { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert_eq!(
            parsed(
                r#"{"model":"m","input":"x","previous_response_id":"a","Previous_Response_Id":"b"}"#
            )
            .unwrap_err(),
            RequestError::CaseVariantField("previous_response_id".into())
        );
        // The defaults clients send are no state.
        parsed(r#"{"model":"m","input":"x","previous_response_id":null,"background":false,"store":true}"#)
            .unwrap();
    }

    /// The budget goes where the Responses servers read it, and every
    /// other budget field the body names carries it too.
    #[test]
    fn the_budget_is_written_as_max_output_tokens() {
        use super::super::{rewrite_completion_request, BodyRewrite, BudgetField};
        let rewrite = BodyRewrite {
            max_tokens: Some(7),
            insert_as: BudgetField::on(Some(&Endpoint::Responses), BudgetField::MaxTokens),
            ..BodyRewrite::default()
        };
        for (body, expected) in [
            (
                r#"{"model":"m","input":"hi"}"#,
                r#"{"max_output_tokens":7,"model":"m","input":"hi"}"#,
            ),
            (
                r#"{"model":"m","max_output_tokens":900}"#,
                r#"{"model":"m","max_output_tokens":7}"#,
            ),
        ] {
            let out = rewrite_completion_request(body.as_bytes(), &rewrite).unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
            let back = parsed(std::str::from_utf8(&out).unwrap()).unwrap();
            assert_eq!(back.requested_max_tokens(), Some(7));
            assert!(!back.budget_needs_rewrite());
        }
    }

    /// Chat's rules are not loosened: its bodies read `prompt` as they did.
    #[test]
    fn chat_and_completions_bodies_are_read_as_before() {
        let r = parse_request(
            br#"{"model":"m","prompt":["a","b"]}"#,
            Some(&Endpoint::Completions),
        )
        .unwrap();
        assert_eq!(r.prompts, 2);
        assert!(!r.responses);
    }
}
