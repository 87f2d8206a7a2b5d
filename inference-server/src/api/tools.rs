//! OpenAI function calling on the request side: `tools`, `tool_choice` and
//! `parallel_tool_calls` checked once; the tools given to the chat template
//! the way Hugging Face passes them (or, for a template that does not render
//! tools, described in a system message in the Hermes format most small
//! models are tuned on); and, for `required` or a named function, the
//! grammar that forces a call whose arguments validate against the
//! function's schema. Parsing the model's answer back into `tool_calls` is
//! `tool_calls`.

use serde_json::{json, Value};

use super::error::ApiError;
use super::tool_calls::ToolCallFormat;
use crate::engine::grammar;
use crate::text::ChatMessage;

/// OpenAI's limit.
const MAX_TOOLS: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema for the arguments object.
    pub parameters: Value,
    /// `function.strict`: keywords the grammar engine cannot enforce
    /// (`uniqueItems`, an unknown `format`) are refused; otherwise they are
    /// left unenforced, OpenAI's best effort, as for a `response_format`.
    pub strict: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model answers in text; the tools are not shown to it.
    None,
    /// The model may call tools or answer in text.
    Auto,
    /// The model must call one of the tools (enforced by the grammar).
    Required,
    /// The model must call this tool (enforced by the grammar).
    Named(String),
}

/// The tools of a chat request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

impl Tools {
    pub fn names(&self) -> Vec<&str> {
        self.tools.iter().map(|t| t.name.as_str()).collect()
    }

    /// Whether the model sees the tools and its answer is parsed for calls.
    pub fn active(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The tools as chat templates read them (Hugging Face's convention,
    /// OpenAI's shape).
    pub fn template_value(&self) -> Vec<Value> {
        self.tools
            .iter()
            .map(|t| {
                let mut function = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    function["description"] = json!(d);
                }
                json!({"type": "function", "function": function})
            })
            .collect()
    }
}

/// The first validation stage for the three fields.
pub fn parse(
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, ApiError> {
    let bad = |param: &'static str, message: String| ApiError::invalid(Some(param), message);
    let list = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(bad(
                "tools",
                format!("`tools` must be an array; got {other}."),
            ))
        }
    };
    if list.is_empty() {
        return match tool_choice.filter(|c| !c.is_null()) {
            None => Ok(None),
            Some(Value::String(s)) if s == "none" => Ok(None),
            Some(_) => Err(bad(
                "tool_choice",
                "`tool_choice` is only allowed when `tools` are given.".into(),
            )),
        };
    }
    if list.len() > MAX_TOOLS {
        return Err(bad(
            "tools",
            format!(
                "`tools` takes at most {MAX_TOOLS} functions; got {}.",
                list.len()
            ),
        ));
    }
    let mut parsed: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(
                "tools",
                format!("tools[{i}].type must be \"function\"."),
            ));
        }
        let function = tool
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                bad(
                    "tools",
                    format!("tools[{i}].function must be an object with a `name`."),
                )
            })?;
        let name = match function.get("name").and_then(Value::as_str) {
            Some(n) if valid_tool_name(n) => n.to_string(),
            _ => {
                return Err(bad(
                    "tools",
                    format!(
                        "tools[{i}].function.name must be 1 to 128 letters, digits, `_`, `-`, `.` or `:`."
                    ),
                ))
            }
        };
        if parsed.iter().any(|t| t.name == name) {
            return Err(bad(
                "tools",
                format!("tools[{i}]: the function {name:?} is given twice."),
            ));
        }
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            // A call's arguments are an object (OpenAI refuses any other
            // root type): a schema that names another could never be read
            // back as a call, and `required` would end with none.
            Some(Value::Object(p)) => match p.get("type") {
                None => {
                    let mut p = p.clone();
                    p.insert("type".into(), json!("object"));
                    Value::Object(p)
                }
                Some(t) if t == "object" => Value::Object(p.clone()),
                Some(t) => {
                    return Err(bad(
                        "tools",
                        format!(
                            "tools[{i}].function.parameters must be a schema of type \"object\"; got type {t}."
                        ),
                    ))
                }
            },
            Some(other) => {
                return Err(bad(
                    "tools",
                    format!(
                        "tools[{i}].function.parameters must be a JSON schema object; got {other}."
                    ),
                ))
            }
        };
        let strict = match function.get("strict") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(strict)) => *strict,
            Some(other) => {
                return Err(bad(
                    "tools",
                    format!("tools[{i}].function.strict must be true or false; got {other}."),
                ))
            }
        };
        let description = function
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string);
        parsed.push(Tool {
            name,
            description,
            parameters,
            strict,
        });
    }
    let choice = match tool_choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    "tool_choice",
                    format!("`tool_choice` must be \"none\", \"auto\", \"required\" or a named function; got {other:?}."),
                ))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad(
                        "tool_choice",
                        format!("`tool_choice` must be a string or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}; got {v}."),
                    )
                })?;
            if !parsed.iter().any(|t| t.name == name) {
                return Err(bad(
                    "tool_choice",
                    format!("`tool_choice` names {name:?}, which is not among `tools`."),
                ));
            }
            ToolChoice::Named(name.to_string())
        }
    };
    Ok(Some(Tools {
        tools: parsed,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

/// A function's name: OpenAI's rule (1 to 64 letters, digits, `_` or `-`)
/// widened to what MCP servers name their tools (`.`, `:`, up to 128), as
/// vLLM and llama.cpp take them: agents that bridge MCP tools send those
/// names as they are. (They need no escaping in the call grammar's
/// strings, nor in JSON.)
fn valid_tool_name(name: &str) -> bool {
    name_of(name, 128, b".:")
}

/// OpenAI's rule for a response format's schema name: 1 to 64 letters,
/// digits, `_` or `-`.
pub(super) fn valid_name(name: &str) -> bool {
    name_of(name, 64, b"")
}

/// 1 to `max` bytes, each a letter, a digit, `_`, `-` or one of `also`.
fn name_of(name: &str, max: usize, also: &[u8]) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || also.contains(&b))
}

/// For a template that does not render `tools`: the messages with the tools
/// described in the system message (Qwen 2.5's own wording of the Hermes
/// format), and the tool turns written as [`hermes_history`] writes them.
pub fn hermes_messages(tools: &Tools, messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut prompt = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools.template_value() {
        prompt.push('\n');
        prompt.push_str(&tool.to_string());
    }
    prompt.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    let system = match messages.first() {
        Some(first) if first.role == "system" => {
            ChatMessage::new("system", format!("{}\n\n{prompt}", first.content))
        }
        _ => ChatMessage::new("system", prompt),
    };
    let skip = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    std::iter::once(system)
        .chain(hermes_history(&messages[skip..]))
        .collect()
}

/// Whether any message is a tool turn: a call or a result.
pub fn has_tool_turns(messages: &[ChatMessage]) -> bool {
    messages
        .iter()
        .any(|m| m.role == "tool" || m.tool_calls.is_some())
}

/// The tool turns of a conversation as text, for a template that renders
/// neither calls nor a `tool` role (many refuse one): earlier calls as
/// `<tool_call>` blocks in the assistant's text, and the results that
/// follow one turn as `<tool_response>` blocks in one user turn, as Qwen's
/// own template groups them (templates such as Gemma's refuse two user
/// turns in a row, which a result per turn would make of parallel calls);
/// a user message right after them joins that turn too. Every other
/// message as it is.
pub fn hermes_history(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    let mut in_results = false;
    for m in messages {
        let role = m.role.as_str();
        // What a result or the user says after results: the user turn.
        let said = || match role {
            "tool" => format!("<tool_response>\n{}\n</tool_response>", m.content),
            _ => m.content.clone(),
        };
        match (role, out.last_mut()) {
            ("tool" | "user", Some(last)) if in_results => {
                last.content.push('\n');
                last.content.push_str(&said());
            }
            ("tool", _) => out.push(ChatMessage::new("user", said())),
            ("assistant", _) if m.tool_calls.is_some() => {
                let mut content = m.content.clone();
                for call in m.tool_calls.iter().flatten() {
                    let function = &call["function"];
                    let block = format!(
                        "{{\"name\": {}, \"arguments\": {}}}",
                        function["name"], function["arguments"]
                    );
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&format!("<tool_call>\n{block}\n</tool_call>"));
                }
                out.push(ChatMessage::new("assistant", content));
            }
            _ => out.push(ChatMessage::new(role, m.content.clone())),
        }
        in_results = role == "tool";
    }
    out
}

/// The grammar (llguidance's Lark dialect) that forces a call of one of the
/// tools `choice` allows, in `format`, its arguments valid for the tool's
/// schema; `None` when the choice forces nothing. `required` with
/// `parallel_tool_calls` (the default) allows one call or more, in the
/// format's own way of writing several; a named function is called once,
/// as OpenAI does. `special` gives the id of a marker the vocabulary has as
/// a special token: the grammar names that token, since no text can ever
/// match one.
pub fn forced_call_grammar(
    tools: &Tools,
    format: ToolCallFormat,
    special: &dyn Fn(&str) -> Option<u32>,
) -> Option<String> {
    let allowed: Vec<&Tool> = match &tools.choice {
        ToolChoice::Required => tools.tools.iter().collect(),
        ToolChoice::Named(name) => tools.tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::None | ToolChoice::Auto => return None,
    };
    let several = tools.parallel && format.calls_several() && tools.choice == ToolChoice::Required;
    let (start, rules) = calls_lark(&allowed, several, format, special);
    Some(format!("start: {start}\n{rules}"))
}

/// Under `tool_choice` "auto" with a `response_format`: the answer is
/// either calls of the tools or a final answer in the format, never free
/// text. (OpenAI applies a response format to the final answer only; one
/// constraining the whole answer from its first token would leave no way
/// to call a tool, which agents that declare an output type, such as
/// OpenAI's Agents SDK, ask for on every turn.)
pub fn call_or_answer_grammar(
    tools: &Tools,
    format: ToolCallFormat,
    answer: &grammar::ResponseFormat,
    special: &dyn Fn(&str) -> Option<u32>,
) -> Option<String> {
    let schema = answer.compact_schema()?;
    let all: Vec<&Tool> = tools.tools.iter().collect();
    let several = tools.parallel && format.calls_several();
    let (calls, rules) = calls_lark(&all, several, format, special);
    Some(format!(
        "start: calls | answer\ncalls: {calls}\nanswer: %json {schema}\n{rules}"
    ))
}

/// The Lark rules for a call of one of `allowed` in `format` (several in the
/// format's own way when `several`), each call's arguments valid for its
/// tool's schema: the expression a list of calls is, and the rules it uses.
fn calls_lark(
    allowed: &[&Tool],
    several: bool,
    format: ToolCallFormat,
    special: &dyn Fn(&str) -> Option<u32>,
) -> (String, String) {
    let arguments_key = match format {
        ToolCallFormat::Llama3Json => "parameters",
        ToolCallFormat::Hermes | ToolCallFormat::Mistral => "arguments",
    };
    let marker =
        |text: &str| special(text).map_or_else(|| format!("{text:?}"), |id| format!("<[{id}]>"));
    // The format's list of calls: one, or one and more after its separator.
    let list = |one: &str, separator: &str| {
        if several {
            format!(r#"{one} ({separator:?} {one})*"#)
        } else {
            one.to_string()
        }
    };
    let start = match format {
        ToolCallFormat::Hermes => list("block", "\n"),
        ToolCallFormat::Llama3Json => list("call", "; "),
        // Mistral's templates write `[TOOL_CALLS] [`: the space the model
        // learned to write is allowed, not forced either way.
        ToolCallFormat::Mistral => format!(
            r#"{} " "? "[" {} "]""#,
            marker("[TOOL_CALLS]"),
            list("call", ", ")
        ),
    };
    let alternatives: Vec<String> = (0..allowed.len()).map(|i| format!("c{i}")).collect();
    let mut lark = format!("call: {}\n", alternatives.join(" | "));
    if format == ToolCallFormat::Hermes {
        lark.push_str(&format!(
            r#"block: {} "\n" call "\n" {}"#,
            marker("<tool_call>"),
            marker("</tool_call>")
        ));
        lark.push('\n');
    }
    // Each tool's arguments are their own `%json` root, so a `$ref` inside
    // `parameters` resolves against that tool's schema as the client wrote
    // it (one combined schema would move its `$defs`).
    for (i, tool) in allowed.iter().enumerate() {
        let mut parameters = tool.parameters.clone();
        if tool.strict {
            grammar::compact_json(&mut parameters);
        } else {
            grammar::compact_lenient_json(&mut parameters);
        }
        // Names are letters, digits, `_`, `-`, `.` and `:` (checked in
        // `parse`), so they need no escaping inside the Lark string.
        lark.push_str(&format!(
            "c{i}: \"{{\\\"name\\\": \\\"{}\\\", \\\"{arguments_key}\\\": \" a{i} \"}}\"\na{i}: %json {parameters}\n",
            tool.name
        ));
    }
    (start, lark)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::grammar::{Grammars, ResponseFormat};
    use crate::text::fixtures::smollm_tokenizer;

    fn weather() -> Value {
        json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}])
    }

    #[test]
    fn tools_and_choices_are_read() {
        let t = parse(Some(weather()), None, None).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Auto);
        assert!(t.parallel && t.active());
        assert_eq!(t.names(), ["get_weather"]);
        for (choice, want) in [
            (json!("none"), ToolChoice::None),
            (json!("required"), ToolChoice::Required),
            (
                json!({"type": "function", "function": {"name": "get_weather"}}),
                ToolChoice::Named("get_weather".into()),
            ),
        ] {
            assert_eq!(
                parse(Some(weather()), Some(choice), Some(false))
                    .unwrap()
                    .unwrap()
                    .choice,
                want
            );
        }
        assert_eq!(parse(None, None, None).unwrap(), None);
        assert_eq!(
            parse(Some(json!([])), Some(json!("none")), None).unwrap(),
            None
        );
    }

    /// MCP-style names, and a forced call of one compiles and is taken.
    #[test]
    fn tool_names_may_be_mcp_style() {
        let name = "github.repos:list_issues-v2";
        let tools = json!([{"type": "function", "function": {"name": name}}]);
        let t = parse(Some(tools), Some(json!("required")), None)
            .unwrap()
            .unwrap();
        assert_eq!(t.names(), [name]);
        let g = forced_call_grammar(&t, ToolCallFormat::Hermes, &|_| None).unwrap();
        let grammars = Grammars::new(smollm_tokenizer()).unwrap();
        let compiled = grammars.compile(&ResponseFormat::Lark(g.clone())).unwrap();
        let call =
            format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {{}}}}\n</tool_call>");
        assert!(takes(compiled, &call), "{g}");
    }

    /// Arguments are an object even where the schema does not say so.
    #[test]
    fn parameters_without_a_type_are_an_object() {
        let tools = json!([{"type": "function", "function": {"name": "f",
            "parameters": {"properties": {"x": {"type": "integer"}}}}}]);
        let t = parse(Some(tools), None, None).unwrap().unwrap();
        assert_eq!(t.tools[0].parameters["type"], "object");
    }

    #[test]
    fn bad_tools_are_refused_naming_the_field() {
        for (tools, choice, param, says) in [
            (json!({}), None, "tools", "an array"),
            (
                json!([{"type": "retrieval"}]),
                None,
                "tools",
                "\"function\"",
            ),
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                None,
                "tools",
                "1 to 128",
            ),
            (
                json!([{"type": "function", "function": {"name": "x".repeat(129)}}]),
                None,
                "tools",
                "1 to 128",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": []}}]),
                None,
                "tools",
                "JSON schema object",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
                Some(json!("required")),
                "tools",
                "of type \"object\"",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}},
                       {"type": "function", "function": {"name": "f"}}]),
                None,
                "tools",
                "twice",
            ),
            (
                weather(),
                Some(json!("always")),
                "tool_choice",
                "\"required\"",
            ),
            (
                weather(),
                Some(json!({"type": "function", "function": {"name": "nope"}})),
                "tool_choice",
                "not among",
            ),
            (
                json!([]),
                Some(json!("required")),
                "tool_choice",
                "only allowed",
            ),
        ] {
            let e = parse(Some(tools.clone()), choice, None).unwrap_err();
            assert_eq!(e.param, Some(param), "{tools}");
            assert!(e.message.contains(says), "{}", e.message);
        }
    }

    #[test]
    fn a_template_without_tools_gets_them_in_the_system_message() {
        let t = parse(Some(weather()), None, None).unwrap().unwrap();
        let call = json!({"id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": {"city": "Paris"}}});
        let messages = [
            ChatMessage::new("user", "Weather in Paris?"),
            ChatMessage {
                tool_calls: Some(vec![call]),
                ..ChatMessage::new("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("call_1".into()),
                ..ChatMessage::new("tool", "18 C")
            },
        ];
        let out = hermes_messages(&t, &messages);
        assert_eq!(out[0].role, "system");
        assert!(out[0].content.contains("<tools>\n{"), "{}", out[0].content);
        assert!(out[0].content.contains("\"name\":\"get_weather\""));
        assert_eq!(out[1].content, "Weather in Paris?");
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(
            (out[3].role.as_str(), out[3].content.as_str()),
            ("user", "<tool_response>\n18 C\n</tool_response>")
        );
    }

    /// Parallel calls' results become one user turn (templates such as
    /// Gemma's refuse two user turns in a row), and a result after the
    /// next assistant turn starts a turn of its own.
    #[test]
    fn results_of_one_turn_share_one_user_turn() {
        let call = |id: &str, city: &str| {
            json!({"id": id, "type": "function",
                   "function": {"name": "get_weather", "arguments": {"city": city}}})
        };
        let result = |id: &str, text: &str| ChatMessage {
            tool_call_id: Some(id.into()),
            ..ChatMessage::new("tool", text)
        };
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Weather in Paris and Rome?"),
            ChatMessage {
                tool_calls: Some(vec![call("a", "Paris"), call("b", "Rome")]),
                ..ChatMessage::new("assistant", "")
            },
            result("a", "18 C"),
            result("b", "24 C"),
            ChatMessage {
                tool_calls: Some(vec![call("c", "Oslo")]),
                ..ChatMessage::new("assistant", "")
            },
            result("c", "3 C"),
            ChatMessage::new("user", "Now compare them."),
        ];
        let out = hermes_history(&messages);
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "user", "assistant", "user"]
        );
        assert_eq!(out[0].content, "Be brief.");
        assert_eq!(
            out[3].content,
            "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n24 C\n</tool_response>"
        );
        assert_eq!(
            out[5].content, "<tool_response>\n3 C\n</tool_response>\nNow compare them.",
            "a user message after results joins their turn"
        );
        assert!(out.iter().all(|m| m.tool_calls.is_none()));
        assert!(has_tool_turns(&messages));
        assert!(!has_tool_turns(&messages[..2]));
    }

    #[test]
    fn the_forced_grammar_names_only_the_allowed_tools() {
        let mut t = parse(Some(weather()), Some(json!("required")), None)
            .unwrap()
            .unwrap();
        let g = forced_call_grammar(&t, ToolCallFormat::Hermes, &|_| None).unwrap();
        assert!(g.starts_with("start: block (\"\\n\" block)*\n"), "{g}");
        assert!(
            g.contains("block: \"<tool_call>\" \"\\n\" call \"\\n\" \"</tool_call>\"\n"),
            "{g}"
        );
        assert!(
            g.contains(r#"c0: "{\"name\": \"get_weather\", \"arguments\": " a0 "}""#),
            "{g}"
        );
        t.choice = ToolChoice::Auto;
        assert_eq!(
            forced_call_grammar(&t, ToolCallFormat::Hermes, &|_| None),
            None
        );
    }

    /// Whether `constraint` takes every token of `text` (SmolLM2's
    /// tokenization; llguidance matches bytes, whatever the split).
    fn takes(mut constraint: crate::engine::Constraint, text: &str) -> bool {
        let tokenizer = smollm_tokenizer();
        let ids = tokenizer.encode(text).unwrap();
        ids.into_iter().all(|id| constraint.commit(id).is_ok())
    }

    /// `auto` with a response format: a call, or the answer in the format;
    /// never free text, and never JSON outside the schema.
    #[test]
    fn auto_with_a_response_format_allows_a_call_or_the_formatted_answer() {
        let t = parse(Some(weather()), Some(json!("auto")), None)
            .unwrap()
            .unwrap();
        let answer = ResponseFormat::JsonSchema(json!({
            "type": "object", "required": ["summary"], "additionalProperties": false,
            "properties": {"summary": {"type": "string"}}}));
        let g = call_or_answer_grammar(&t, ToolCallFormat::Hermes, &answer, &|_| None).unwrap();
        let grammars = Grammars::new(smollm_tokenizer()).unwrap();
        let compiled = || grammars.compile(&ResponseFormat::Lark(g.clone())).unwrap();
        let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        assert!(takes(compiled(), call), "{g}");
        assert!(takes(compiled(), r#"{"summary": "Sunny"}"#), "{g}");
        assert!(!takes(compiled(), "Sure! It is sunny."), "{g}");
        assert!(!takes(compiled(), r#"{"weather": "Sunny"}"#), "{g}");
        // Any object, for json_object.
        let g = call_or_answer_grammar(
            &t,
            ToolCallFormat::Hermes,
            &ResponseFormat::JsonObject,
            &|_| None,
        )
        .unwrap();
        let compiled = grammars.compile(&ResponseFormat::Lark(g.clone())).unwrap();
        assert!(takes(compiled, r#"{"anything": [1, 2]}"#), "{g}");
    }

    #[test]
    fn required_with_parallel_calls_allows_several_where_the_format_takes_them_back() {
        let two = json!([weather()[0], {"type": "function", "function": {
            "name": "get_time", "parameters": {"type": "object"}}}]);
        let weather = r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#;
        let time = r#"{"name": "get_time", "arguments": {}}"#;
        let llama = |call: &str| call.replace("arguments", "parameters");
        let grammars = Grammars::new(smollm_tokenizer()).unwrap();
        for (format, one, both) in [
            (
                ToolCallFormat::Hermes,
                format!("<tool_call>\n{weather}\n</tool_call>"),
                format!("<tool_call>\n{weather}\n</tool_call>\n<tool_call>\n{time}\n</tool_call>"),
            ),
            (
                ToolCallFormat::Llama3Json,
                llama(weather),
                format!("{}; {}", llama(weather), llama(time)),
            ),
            (
                ToolCallFormat::Mistral,
                format!("[TOOL_CALLS][{weather}]"),
                format!("[TOOL_CALLS][{weather}, {time}]"),
            ),
        ] {
            for (choice, parallel, several) in [
                (json!("required"), None, true),
                (json!("required"), Some(false), false),
                (
                    json!({"type": "function", "function": {"name": "get_weather"}}),
                    None,
                    false,
                ),
            ] {
                let t = parse(Some(two.clone()), Some(choice.clone()), parallel)
                    .unwrap()
                    .unwrap();
                let g = forced_call_grammar(&t, format, &|_| None).unwrap();
                let compiled = || grammars.compile(&ResponseFormat::Lark(g.clone())).unwrap();
                assert!(
                    takes(compiled(), &one),
                    "{format:?} {choice} {parallel:?}: {one}\n{g}"
                );
                // Llama 3's templates take back one call per turn.
                assert_eq!(
                    takes(compiled(), &both),
                    several && format.calls_several(),
                    "{format:?} {choice} {parallel:?}: {both}\n{g}"
                );
            }
        }
    }

    #[test]
    fn forced_grammars_compile_in_every_format_with_refs_in_parameters() {
        let tools = json!([
            {"type": "function", "function": {"name": "book", "parameters": {
                "$defs": {"day": {"type": "string", "maxLength": 8}},
                "type": "object", "properties": {"day": {"$ref": "#/$defs/day"}},
                "required": ["day"]}}},
            weather()[0]
        ]);
        let grammars = Grammars::new(smollm_tokenizer()).unwrap();
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "book"}}),
        ] {
            let t = parse(Some(tools.clone()), Some(choice), None)
                .unwrap()
                .unwrap();
            for format in [
                ToolCallFormat::Hermes,
                ToolCallFormat::Llama3Json,
                ToolCallFormat::Mistral,
            ] {
                let g = forced_call_grammar(&t, format, &|_| None).unwrap();
                if let Err(e) = grammars.compile(&ResponseFormat::Lark(g.clone())) {
                    panic!("{format:?}: {e}\n{g}");
                }
            }
        }
    }

    /// Mistral's templates write a space after `[TOOL_CALLS]`; the grammar
    /// takes the call with it and without.
    #[test]
    fn a_forced_mistral_call_may_have_the_templates_space() {
        let tools = json!([{"type": "function", "function": {"name": "get_time"}}]);
        let t = parse(Some(tools), Some(json!("required")), None)
            .unwrap()
            .unwrap();
        let g = forced_call_grammar(&t, ToolCallFormat::Mistral, &|_| None).unwrap();
        let grammars = Grammars::new(smollm_tokenizer()).unwrap();
        for call in [
            r#"[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]"#,
            r#"[TOOL_CALLS][{"name": "get_time", "arguments": {}}]"#,
        ] {
            let compiled = grammars.compile(&ResponseFormat::Lark(g.clone())).unwrap();
            assert!(takes(compiled, call), "{call}\n{g}");
        }
    }

    /// A tool not marked `strict` is OpenAI's best effort, as a
    /// `response_format` is: pydantic's `set[str]` (`uniqueItems`) compiles,
    /// unenforced; marked `strict`, the keyword the engine cannot enforce
    /// is refused.
    #[test]
    fn keywords_a_tool_not_marked_strict_cannot_have_enforced_are_left_out() {
        let tool = |strict: Value| {
            json!([{"type": "function", "function": {"name": "tag", "strict": strict,
                "parameters": {"type": "object", "required": ["tags"], "properties": {
                    "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}}}}}])
        };
        let grammars = Grammars::new(smollm_tokenizer()).unwrap();
        let compiled = |strict: Value| {
            let t = parse(Some(tool(strict)), Some(json!("required")), None)
                .unwrap()
                .unwrap();
            let g = forced_call_grammar(&t, ToolCallFormat::Hermes, &|_| None).unwrap();
            grammars.compile(&ResponseFormat::Lark(g))
        };
        for lenient in [Value::Null, json!(false)] {
            let constraint = compiled(lenient.clone()).unwrap_or_else(|e| panic!("{lenient}: {e}"));
            let call = "<tool_call>\n{\"name\": \"tag\", \"arguments\": {\"tags\": [\"a\", \"b\"]}}\n</tool_call>";
            assert!(takes(constraint, call));
        }
        let Err(err) = compiled(json!(true)) else {
            panic!("strict refuses uniqueItems")
        };
        assert!(err.to_string().contains("uniqueItems"), "{err}");
        let bad = parse(Some(tool(json!("yes"))), None, None).unwrap_err();
        assert_eq!(bad.param, Some("tools"), "{bad:?}");
    }

    #[test]
    fn a_marker_that_is_a_special_token_is_forced_as_that_token() {
        let t = parse(Some(weather()), Some(json!("required")), None)
            .unwrap()
            .unwrap();
        // Pretend SmolLM2's `<|im_start|>` is the vocabulary's `<tool_call>`.
        let tokenizer = smollm_tokenizer();
        let im_start = tokenizer.special_token_id("<|im_start|>").unwrap();
        let special = |m: &str| (m == "<tool_call>").then_some(im_start);
        let g = forced_call_grammar(&t, ToolCallFormat::Hermes, &special).unwrap();
        assert!(g.contains(&format!("block: <[{im_start}]> ")), "{g}");
        let mut constraint = Grammars::new(tokenizer.clone())
            .unwrap()
            .compile(&ResponseFormat::Lark(g))
            .unwrap();
        let mut logits = vec![0.0; tokenizer.vocab_size()];
        constraint.mask_logits(&mut logits).unwrap();
        let allowed: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect();
        assert_eq!(
            allowed,
            [im_start as usize],
            "only the marker token may open the call"
        );
    }
}
