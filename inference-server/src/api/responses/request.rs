//! A Responses API request, read as the Chat Completions request it
//! amounts to, as vLLM's and llama.cpp's servers read it: `instructions`
//! and `input` become `messages`, `max_output_tokens` the budget,
//! `text.format` the response format, and the flat function tools chat's
//! nested ones. The chat request then goes through the same validation as
//! `/v1/chat/completions`, so both endpoints refuse and accept alike.
//!
//! This server keeps nothing between requests: a response is made from
//! what its request carries. What points at stored state
//! (`previous_response_id`, `conversation`, an `item_reference`, a stored
//! `prompt`) and what OpenAI runs outside the model (built-in tools,
//! background runs) are refused by name, with what to send instead, rather
//! than answered as if the state were empty. Chat's own names for the
//! fields mapped here are refused too, naming the Responses field: a
//! client mixing the two APIs hears where its value should go.

use serde_json::{json, Map, Value};

use super::super::error::ApiError;

/// The chat request a Responses request amounts to, and what the response
/// object repeats of the request.
#[derive(Debug)]
pub(in crate::api) struct Translated {
    pub chat: Map<String, Value>,
    pub echo: Map<String, Value>,
}

/// Chat Completions fields, and where a Responses request puts them.
const CHAT_NAMES: &[(&str, &str)] = &[
    ("messages", "`input` (and `instructions`)"),
    ("max_tokens", "`max_output_tokens`"),
    ("max_completion_tokens", "`max_output_tokens`"),
    ("n_predict", "`max_output_tokens`"),
    ("response_format", "`text.format`"),
    ("n", "one response per request"),
    ("best_of", "one response per request"),
    (
        "logprobs",
        "nothing: log-probabilities are given by /v1/chat/completions",
    ),
    ("functions", "`tools`"),
    ("function_call", "`tool_choice`"),
];

/// Fields that need state this server does not keep, or work it does not
/// do, with what to send instead; each passes at `null` (and `false`).
const STATEFUL: &[(&str, &str)] = &[
    (
        "previous_response_id",
        "this server stores no responses: send the whole conversation as `input` items",
    ),
    (
        "conversation",
        "this server stores no conversations: send the whole conversation as `input` items",
    ),
    (
        "prompt",
        "this server stores no prompts: send `instructions` and `input`",
    ),
    (
        "background",
        "a response is generated while its request is open",
    ),
];

/// Fields of the request a response object repeats, with their value when
/// the request leaves them out.
fn echo_defaults() -> [(&'static str, Value); 10] {
    [
        ("instructions", Value::Null),
        ("max_output_tokens", Value::Null),
        ("metadata", json!({})),
        ("parallel_tool_calls", json!(true)),
        ("temperature", json!(1.0)),
        ("text", json!({"format": {"type": "text"}})),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
        ("top_p", json!(1.0)),
        ("user", Value::Null),
    ]
}

fn unsupported(param: &'static str, why: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(
        Some(param),
        format!("`{param}` is not supported by this server: {why}."),
    )
    .with_code("unsupported_parameter")
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(Some(param), message)
}

fn is_off(value: &Value) -> bool {
    matches!(value, Value::Null | Value::Bool(false))
}

/// Reads a Responses request body (see the module).
pub(in crate::api) fn translate(body: &[u8]) -> Result<Translated, ApiError> {
    let mut fields: Map<String, Value> = super::super::request::parse_json(body)?;
    for &(name, instead) in CHAT_NAMES {
        if fields.get(name).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(
                Some(name),
                format!(
                    "`{name}` is a Chat Completions field; a Responses request uses {instead}."
                ),
            ));
        }
        fields.remove(name);
    }
    for &(name, instead) in STATEFUL {
        if let Some(value) = fields.remove(name) {
            if !is_off(&value) {
                return Err(unsupported(name, instead));
            }
        }
    }
    check_options(&mut fields)?;
    check_types(&fields)?;

    let mut echo = Map::new();
    for (name, default) in echo_defaults() {
        let value = fields.get(name).filter(|v| !v.is_null()).cloned();
        echo.insert(name.into(), value.unwrap_or(default));
    }

    let instructions = fields.remove("instructions");
    let input = fields.remove("input");
    let mut chat = fields;
    chat.insert(
        "messages".into(),
        Value::Array(messages(instructions, input)?),
    );
    if let Some(budget) = chat.remove("max_output_tokens") {
        chat.insert("max_tokens".into(), budget);
    }
    if let Some(tools) = chat.remove("tools") {
        chat.insert("tools".into(), chat_tools(tools)?);
    }
    if let Some(choice) = chat.remove("tool_choice") {
        // `auto`, the API's default, is what clients echo back with no
        // tools; chat refuses any choice without tools.
        let no_tools = chat
            .get("tools")
            .is_none_or(|t| t.as_array().is_none_or(Vec::is_empty));
        let neutral = matches!(choice.as_str(), Some("auto" | "none"));
        if !(no_tools && neutral) {
            chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
        }
    }
    if let Some(text) = chat.remove("text") {
        if let Some(format) = response_format(text)? {
            chat.insert("response_format".into(), format);
        }
    }
    Ok(Translated { chat, echo })
}

/// The request's options that change nothing here, checked and dropped:
/// what they ask for is either what this server does anyway or refused.
fn check_options(fields: &mut Map<String, Value>) -> Result<(), ApiError> {
    // The usage always comes with the last event; obfuscation is for
    // providers whose streams cross networks a side channel could read.
    fields.remove("stream_options");
    // OpenAI's store, under an id a later request could name: this server
    // keeps nothing, and the response object says `"store": false`.
    fields.remove("store");
    // Caching hints and the tier OpenAI bills at; the prefix cache here
    // keys on the prompt itself (and the gateway's subscription).
    for hint in [
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
        "max_tool_calls",
    ] {
        fields.remove(hint);
    }
    match fields.remove("truncation") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "disabled" => {}
        Some(Value::String(s)) if s == "auto" => {
            return Err(unsupported(
                "truncation",
                "the input is never cut; a conversation longer than the context is refused",
            ))
        }
        Some(_) => {
            return Err(invalid(
                "truncation",
                "`truncation` must be \"disabled\" or \"auto\".",
            ))
        }
    }
    match fields.remove("top_logprobs") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(0) => {}
        Some(_) => {
            return Err(unsupported(
                "top_logprobs",
                "log-probabilities are given by /v1/chat/completions",
            ))
        }
    }
    match fields.remove("include") {
        None | Some(Value::Null) => {}
        Some(Value::Array(entries)) => {
            for entry in &entries {
                match entry.as_str() {
                    Some("message.output_text.logprobs") => {
                        return Err(unsupported(
                            "include",
                            "log-probabilities are given by /v1/chat/completions",
                        ))
                    }
                    // Parts of output items this server never makes
                    // (encrypted reasoning, built-in tools' results).
                    Some(_) => {}
                    None => {
                        return Err(invalid("include", "`include` must be an array of strings."))
                    }
                }
            }
        }
        Some(_) => return Err(invalid("include", "`include` must be an array of strings.")),
    }
    match fields.remove("reasoning") {
        None | Some(Value::Null) => {}
        Some(Value::Object(reasoning)) => {
            if reasoning.get("effort").is_some_and(|e| !e.is_null()) {
                return Err(unsupported(
                    "reasoning",
                    "a model that thinks does so as its chat template says; this server sets no reasoning effort (`chat_template_kwargs` passes a template's own switch, such as Qwen 3's `enable_thinking`)",
                ));
            }
            // A summary of the thinking is not made: a model that thinks
            // gives its whole thinking as a reasoning item.
        }
        Some(_) => {
            return Err(invalid(
                "reasoning",
                "`reasoning` must be an object or null.",
            ))
        }
    }
    Ok(())
}

/// The mapped fields' types, checked here so that a wrong one is named as
/// the client sent it (chat's parse would read it in the chat request
/// this becomes).
fn check_types(fields: &Map<String, Value>) -> Result<(), ApiError> {
    type Is = fn(&Value) -> bool;
    const TYPES: [(&str, Is, &str); 5] = [
        ("max_output_tokens", Value::is_i64, "an integer"),
        ("temperature", Value::is_number, "a number"),
        ("top_p", Value::is_number, "a number"),
        ("stream", Value::is_boolean, "a boolean"),
        ("parallel_tool_calls", Value::is_boolean, "a boolean"),
    ];
    for (field, is, expected) in TYPES {
        match fields.get(field) {
            Some(value) if !value.is_null() && !is(value) => {
                return Err(invalid(
                    field,
                    format!("`{field}` must be {expected} or null; got {value}."),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `instructions` as the first (system) message, then `input`: a string
/// is one user message, an array a list of items.
fn messages(instructions: Option<Value>, input: Option<Value>) -> Result<Vec<Value>, ApiError> {
    let mut messages = Vec::new();
    match instructions {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(_) => {
            return Err(invalid(
                "instructions",
                "`instructions` must be a string or null.",
            ))
        }
    }
    match input {
        None | Some(Value::Null) => {
            return Err(invalid(
                "input",
                "`input` is required: a string, or an array of input items.",
            ))
        }
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(invalid("input", "`input` must not be empty."));
            }
            for (i, item) in items.into_iter().enumerate() {
                push_item(&mut messages, i, item)?;
            }
        }
        Some(_) => {
            return Err(invalid(
                "input",
                "`input` must be a string or an array of input items.",
            ))
        }
    }
    Ok(messages)
}

/// A string field of input item `i`.
fn item_string(item: &Map<String, Value>, i: usize, field: &str) -> Result<String, ApiError> {
    match item.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(invalid(
            "input",
            format!("input[{i}].{field} must be a string."),
        )),
    }
}

/// Appends input item `i` to the chat messages. An item without a `type`
/// and with a `role` is a message, as OpenAI reads it. Consecutive
/// function calls, and calls right after the assistant's text, are one
/// assistant turn, as Chat Completions writes them.
fn push_item(messages: &mut Vec<Value>, i: usize, item: Value) -> Result<(), ApiError> {
    let Value::Object(item) = item else {
        return Err(invalid("input", format!("input[{i}] must be an object.")));
    };
    let kind = match item.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        None | Some(Value::Null) if item.contains_key("role") => "message",
        _ => {
            return Err(invalid(
                "input",
                format!("input[{i}] needs a `type` (or a `role`, for a message)."),
            ))
        }
    };
    match kind {
        "message" => {
            let role = item_string(&item, i, "role")?;
            if !matches!(
                role.as_str(),
                "user" | "system" | "developer" | "assistant"
            ) {
                return Err(invalid(
                    "input",
                    format!("input[{i}].role: unsupported role {role:?} (use user, system, developer or assistant; a tool's result is a `function_call_output` item)."),
                ));
            }
            let content = message_content(&item, i)?;
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": item_string(&item, i, "call_id")?,
                "type": "function",
                "function": {
                    "name": item_string(&item, i, "name")?,
                    "arguments": item_string(&item, i, "arguments")?,
                },
            });
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => match last.get_mut("tool_calls") {
                    Some(Value::Array(calls)) => calls.push(call),
                    _ => {
                        last["tool_calls"] = json!([call]);
                    }
                },
                _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(parts @ Value::Array(_)) => text_parts(parts, i, "output")?,
                _ => {
                    return Err(invalid(
                        "input",
                        format!("input[{i}].output must be a string or an array of text parts."),
                    ))
                }
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": item_string(&item, i, "call_id")?,
                "content": output,
            }));
        }
        // An earlier turn's thinking: chat templates drop it from the
        // history (Qwen 3's keeps only the last turn's), and this server
        // makes no encrypted reasoning to send back.
        "reasoning" => {}
        "item_reference" => {
            return Err(unsupported(
                "input",
                format!("input[{i}] references a stored item; this server stores none: send the item itself"),
            ))
        }
        other => {
            return Err(unsupported(
                "input",
                format!("input[{i}] is a {other:?} item; this server takes messages, function calls and their outputs"),
            ))
        }
    }
    Ok(())
}

/// A message item's content: a string, or its text parts as chat's.
fn message_content(item: &Map<String, Value>, i: usize) -> Result<Value, ApiError> {
    match item.get("content") {
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(parts @ Value::Array(_)) => text_parts(parts, i, "content"),
        _ => Err(invalid(
            "input",
            format!("input[{i}].content must be a string or an array of content parts."),
        )),
    }
}

/// Text parts (`input_text`, `output_text`, a refusal) as chat's `text`
/// parts, which the chat request joins one per line.
fn text_parts(parts: &Value, i: usize, field: &str) -> Result<Value, ApiError> {
    let parts = parts.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
        let text = match kind {
            "input_text" | "output_text" | "text" => part.get("text"),
            "refusal" => part.get("refusal"),
            "input_image" | "input_file" | "input_audio" => {
                return Err(unsupported(
                    "input",
                    format!(
                        "input[{i}].{field}[{j}] is an {kind:?} part; this model reads text only"
                    ),
                ))
            }
            _ => {
                return Err(invalid(
                    "input",
                    format!("input[{i}].{field}[{j}]: unknown content part type {kind:?}."),
                ))
            }
        };
        match text {
            Some(Value::String(text)) => out.push(json!({"type": "text", "text": text})),
            _ => {
                return Err(invalid(
                    "input",
                    format!("input[{i}].{field}[{j}] needs its text as a string."),
                ))
            }
        }
    }
    Ok(Value::Array(out))
}

/// The Responses API's flat function tools as chat's nested ones.
fn chat_tools(tools: Value) -> Result<Value, ApiError> {
    let tools = match tools {
        Value::Null => return Ok(Value::Null),
        Value::Array(tools) => tools,
        _ => return Err(invalid("tools", "`tools` must be an array.")),
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let Value::Object(mut tool) = tool else {
            return Err(invalid("tools", format!("tools[{i}] must be an object.")));
        };
        match tool.remove("type") {
            Some(Value::String(kind)) if kind == "function" => {}
            Some(Value::String(kind)) => {
                return Err(unsupported(
                    "tools",
                    format!("tools[{i}] is a {kind:?} tool; this server offers the model function tools only"),
                ))
            }
            _ => {
                return Err(invalid(
                    "tools",
                    format!("tools[{i}] needs a `type`."),
                ))
            }
        }
        // name, description, parameters and strict, as chat's function has
        // them; chat's validation checks each.
        out.push(json!({"type": "function", "function": tool}));
    }
    Ok(Value::Array(out))
}

/// `tool_choice`: the modes as they are; a named function as chat names it.
fn chat_tool_choice(choice: Value) -> Result<Value, ApiError> {
    match choice {
        Value::Null | Value::String(_) => Ok(choice),
        Value::Object(choice) => match choice.get("type").and_then(Value::as_str) {
            Some("function") => match choice.get("name") {
                Some(Value::String(name)) => {
                    Ok(json!({"type": "function", "function": {"name": name}}))
                }
                _ => Err(invalid(
                    "tool_choice",
                    "`tool_choice` naming a function needs its `name`.",
                )),
            },
            Some(other) => Err(unsupported(
                "tool_choice",
                format!("a {other:?} choice; this server offers the model function tools only"),
            )),
            None => Err(invalid("tool_choice", "`tool_choice` needs a `type`.")),
        },
        _ => Err(invalid(
            "tool_choice",
            "`tool_choice` must be \"auto\", \"none\", \"required\" or a function.",
        )),
    }
}

/// `text.format` as chat's `response_format` (`None`: plain text).
fn response_format(text: Value) -> Result<Option<Value>, ApiError> {
    let mut text = match text {
        Value::Null => return Ok(None),
        Value::Object(text) => text,
        _ => return Err(invalid("text", "`text` must be an object.")),
    };
    match text.remove("verbosity") {
        None | Some(Value::Null) => {}
        Some(Value::String(v)) if v == "medium" => {}
        Some(_) => {
            return Err(unsupported(
                "text",
                "`text.verbosity` other than \"medium\": the model writes as long an answer as it writes",
            ))
        }
    }
    let format = match text.remove("format") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(format)) => format,
        Some(_) => return Err(invalid("text", "`text.format` must be an object.")),
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = format;
            schema.remove("type");
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(invalid(
            "text",
            "`text.format.type` must be \"text\", \"json_object\" or \"json_schema\".",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_of(body: Value) -> Map<String, Value> {
        translate(body.to_string().as_bytes()).unwrap().chat
    }

    fn refused(body: Value) -> ApiError {
        translate(body.to_string().as_bytes()).unwrap_err()
    }

    #[test]
    fn instructions_and_a_string_input_are_a_system_and_a_user_message() {
        let chat = chat_of(json!({
            "model": "m", "instructions": "Be brief.", "input": "Hi",
            "max_output_tokens": 16, "temperature": 0,
        }));
        assert_eq!(
            chat["messages"],
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        );
        assert_eq!(chat["max_tokens"], 16);
        assert_eq!(chat["temperature"], 0);
        assert!(!chat.contains_key("max_output_tokens"));
        assert!(!chat.contains_key("instructions"));
    }

    /// An agent's second turn: its call and the call's output go back as
    /// the assistant's tool calls and a tool message; the thinking is
    /// dropped; calls after the assistant's text join its turn.
    #[test]
    fn calls_and_their_outputs_are_chat_tool_turns() {
        let chat = chat_of(json!({
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "c2", "name": "t", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "18 C"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
            ],
        }));
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Looking."}], "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "t", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]},
            ])
        );
    }

    #[test]
    fn flat_function_tools_and_a_named_choice_are_chat_s_nested_ones() {
        let chat = chat_of(json!({
            "model": "m", "input": "x",
            "tools": [{"type": "function", "name": "w", "description": "d",
                       "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "w"},
        }));
        assert_eq!(
            chat["tools"],
            json!([{"type": "function", "function": {"name": "w", "description": "d",
                    "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "w"}})
        );
    }

    #[test]
    fn text_format_is_the_response_format() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let chat = chat_of(json!({
            "model": "m", "input": "x",
            "text": {"format": {"type": "json_schema", "name": "s", "schema": schema, "strict": true}},
        }));
        assert_eq!(
            chat["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": true}})
        );
        let plain =
            chat_of(json!({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}));
        assert!(!plain.contains_key("response_format"));
        assert!(!plain.contains_key("text"));
    }

    /// What SDKs send by default changes nothing and is not passed on.
    #[test]
    fn defaults_clients_send_are_accepted_and_dropped() {
        let chat = chat_of(json!({
            "model": "m", "input": "x", "store": true, "truncation": "disabled",
            "include": ["reasoning.encrypted_content"], "previous_response_id": null,
            "background": false, "reasoning": {"summary": "auto"}, "top_logprobs": 0,
            "stream_options": {"include_obfuscation": false}, "prompt_cache_key": "k",
        }));
        let mut keys: Vec<&str> = chat.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["messages", "model"]);
    }

    #[test]
    fn the_response_repeats_the_request_or_the_defaults() {
        let echo = translate(
            json!({"model": "m", "input": "x", "max_output_tokens": 9, "metadata": {"a": "b"}})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
        .echo;
        assert_eq!(echo["max_output_tokens"], 9);
        assert_eq!(echo["metadata"], json!({"a": "b"}));
        assert_eq!(echo["tool_choice"], "auto");
        assert_eq!(echo["text"], json!({"format": {"type": "text"}}));
    }

    /// State this server does not keep, and work it does not do, is
    /// refused by name rather than answered as if it were empty.
    #[test]
    fn stored_state_and_built_in_tools_are_refused_by_name() {
        for (body, param) in [
            (
                json!({"previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (json!({"conversation": "conv_1"}), "conversation"),
            (json!({"prompt": {"id": "pmpt_1"}}), "prompt"),
            (json!({"background": true}), "background"),
            (json!({"truncation": "auto"}), "truncation"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (
                json!({"include": ["message.output_text.logprobs"]}),
                "include",
            ),
            (json!({"reasoning": {"effort": "high"}}), "reasoning"),
            (json!({"tools": [{"type": "web_search"}]}), "tools"),
            (
                json!({"tool_choice": {"type": "file_search"}}),
                "tool_choice",
            ),
            (json!({"text": {"verbosity": "low"}}), "text"),
            (
                json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
                "input",
            ),
            (
                json!({"input": [{"type": "web_search_call", "id": "ws_1"}]}),
                "input",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
                "input",
            ),
        ] {
            let mut body = body.as_object().unwrap().clone();
            body.insert("model".into(), json!("m"));
            body.entry("input").or_insert(json!("x"));
            let error = refused(Value::Object(body.clone()));
            assert_eq!(error.status.as_u16(), 400, "{body:?}");
            assert_eq!(error.param, Some(param), "{body:?}: {}", error.message);
            assert_eq!(error.code, Some("unsupported_parameter"), "{body:?}");
        }
    }

    #[test]
    fn chat_field_names_are_refused_naming_the_responses_one() {
        let error = refused(json!({"model": "m", "input": "x", "max_tokens": 5}));
        assert_eq!(error.status.as_u16(), 400);
        assert!(
            error.message.contains("max_output_tokens"),
            "{}",
            error.message
        );
        let error = refused(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert!(error.message.contains("`input`"), "{}", error.message);
    }

    #[test]
    fn fields_of_the_wrong_type_are_named_as_sent() {
        for (field, value) in [
            ("max_output_tokens", json!("16")),
            ("temperature", json!("x")),
            ("stream", json!("yes")),
        ] {
            let mut body = json!({"model": "m", "input": "x"});
            body[field] = value;
            let error = refused(body);
            assert_eq!(error.param, Some(field), "{}", error.message);
        }
    }

    /// `auto` (or `none`) with no tools is what clients echo back: no
    /// choice for chat, which refuses any choice without tools.
    #[test]
    fn a_neutral_tool_choice_without_tools_is_dropped() {
        let chat = chat_of(json!({"model": "m", "input": "x", "tool_choice": "auto", "tools": []}));
        assert!(!chat.contains_key("tool_choice"));
        let chat = chat_of(json!({"model": "m", "input": "x", "tool_choice": "required"}));
        assert_eq!(chat["tool_choice"], "required");
    }

    #[test]
    fn malformed_items_are_refused_with_their_place() {
        for (input, place) in [
            (json!(null), "`input` is required"),
            (json!([]), "must not be empty"),
            (json!(5), "a string or an array"),
            (json!([{"role": "tool", "content": "x"}]), "input[0].role"),
            (
                json!([{"type": "function_call", "name": "w", "arguments": "{}"}]),
                "input[0].call_id",
            ),
            (json!(["x"]), "input[0] must be an object"),
            (json!([{"content": "x"}]), "input[0] needs a `type`"),
            (
                json!([{"type": "function_call_output", "call_id": "c", "output": 5}]),
                "input[0].output",
            ),
            (
                json!([{"role": "user", "content": [{"type": "input_text"}]}]),
                "input[0].content[0]",
            ),
        ] {
            let error = refused(json!({"model": "m", "input": input}));
            assert_eq!(error.status.as_u16(), 400, "{input}");
            assert_eq!(error.param, Some("input"), "{input}");
            assert!(error.message.contains(place), "{input}: {}", error.message);
        }
    }
}
