//! A model's answer read back into OpenAI `tool_calls`, in the formats of
//! the common model families (what vLLM's `hermes`, `llama3_json` and
//! `mistral` tool parsers and llama.cpp's server read). Pure text logic, no
//! I/O.
//!
//! Invariants: an answer is either all text or its calls plus the text
//! outside them; what is not a well-formed call of a known tool leaves the
//! whole answer as text (never lost, never turned into an invented call).
//! A call's `arguments` are the model's JSON without the whitespace between
//! tokens, so that streamed fragments ([`ToolCallStream`]) add up to the
//! same text. While streaming, [`hold_from`] holds back every byte from
//! which a call may still begin, so no part of a call is ever sent as
//! content.
//!
//! The items are `pub` inside this private module rather than `pub(crate)`:
//! `validation::ToolCallParsing`, which the crate exports, carries a
//! [`ToolCallFormat`] and returns a [`ParsedOutput`].

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::Value;

mod json_scan;
mod streaming;

use json_scan::compact;

pub use streaming::{Streamed, ToolCallStream};

/// Hermes' call block.
const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
/// Llama 3's marker before a call (its `ipython` role).
const PYTHON_TAG: &str = "<|python_tag|>";
/// Mistral's markers: before the calls, and, in the newer form, between a
/// call's name (and id) and its arguments.
const MISTRAL_OPEN: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";

/// How a model family writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// Hermes, Qwen 2.5/3, SmolLM and the server's own tool prompt:
    /// `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one block
    /// per call, possibly several, text allowed before and between them.
    Hermes,
    /// Llama 3.1+: the whole answer is `{"name": …, "parameters": {…}}`
    /// (or `"arguments"`), maybe after `<|python_tag|>`; several calls
    /// separated by `;`. Only an answer that starts with a call has any.
    Llama3Json,
    /// Mistral: `[TOOL_CALLS]` then a JSON array of
    /// `{"name": …, "arguments": {…}}` (v0.3), or the newer
    /// `[TOOL_CALLS]name[ARGS]{…}`, repeated per call.
    Mistral,
}

impl ToolCallFormat {
    /// The format a chat template's model family writes calls in; Hermes,
    /// what the server's own tool prompt asks for, when the template shows
    /// no tool support.
    pub fn for_template(source: &str) -> Self {
        if source.contains(HERMES_OPEN) {
            Self::Hermes
        } else if source.contains(MISTRAL_OPEN) {
            Self::Mistral
        } else if source.contains(PYTHON_TAG)
            || (source.contains("<|start_header_id|>") && source.contains("parameters"))
        {
            Self::Llama3Json
        } else {
            Self::Hermes
        }
    }

    /// The text that opens a call in this format (Llama 3 may also open one
    /// with `<|python_tag|>`).
    pub fn opener(self) -> &'static str {
        match self {
            Self::Hermes => HERMES_OPEN,
            Self::Llama3Json => "{",
            Self::Mistral => MISTRAL_OPEN,
        }
    }

    /// The marker texts of this format's calls: the parser must see them,
    /// so where a vocabulary has one as a special token the detokenizer
    /// writes it (see `TextTokenizer::special_token_id`).
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            Self::Hermes => &[HERMES_OPEN, HERMES_CLOSE],
            Self::Llama3Json => &[PYTHON_TAG],
            Self::Mistral => &[MISTRAL_OPEN, MISTRAL_ARGS, MISTRAL_CALL_ID],
        }
    }

    /// Every text that opens a call.
    fn openers(self) -> &'static [&'static str] {
        match self {
            Self::Hermes => &[HERMES_OPEN],
            Self::Llama3Json => &[PYTHON_TAG, "{"],
            Self::Mistral => &[MISTRAL_OPEN],
        }
    }

    /// Whether one answer may carry several calls. Llama 3.1–3.3's
    /// templates refuse a history turn with more than one ("This model only
    /// supports single tool-calls at once!"), so an answer with two would
    /// make the client's next request fail: one call, whatever
    /// `parallel_tool_calls` says (llama.cpp's default for them too).
    pub fn calls_several(self) -> bool {
        !matches!(self, Self::Llama3Json)
    }

    /// Whether a call may follow text, or must start the answer. Mistral's
    /// calls may follow text as Hermes' do (vLLM's parser reads them so).
    fn opens_after_text(self) -> bool {
        !matches!(self, Self::Llama3Json)
    }
}

/// One call, as OpenAI's `tool_calls[].function` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object as compact JSON text, the model's own less the
    /// whitespace between tokens; `{}` when the model gave none.
    pub arguments: String,
}

/// A finished answer split into text and calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOutput {
    /// The text outside the calls, trimmed; `None` when there is none.
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// The answer ends inside a call, kept as text (see [`parse`]): it was
    /// cut short, so it does not end with its calls.
    pub cut: bool,
}

/// Splits a finished answer into text and calls. A call whose JSON does not
/// parse, that lacks a string `name`, whose arguments are not an object (a
/// JSON string holding one is read), or that names a tool not in
/// `known_tools`, is no call: the whole answer is then text. Only a last
/// Hermes block cut inside its JSON (the budget ran out) after whole calls
/// leaves them calls, the cut block text, as a stream delivers them.
pub fn parse(format: ToolCallFormat, text: &str, known_tools: &[&str]) -> ParsedOutput {
    let found = match format {
        ToolCallFormat::Hermes => hermes(text, known_tools),
        ToolCallFormat::Llama3Json => llama3(text, known_tools),
        ToolCallFormat::Mistral => mistral(text, known_tools),
    };
    match found {
        Some(parsed) if !parsed.tool_calls.is_empty() => parsed,
        _ => ParsedOutput {
            content: non_empty(text),
            tool_calls: Vec::new(),
            cut: false,
        },
    }
}

/// The calls an answer forced to a list of calls finished before the budget
/// cut it short (the grammar made it a prefix of the format's list): the
/// prefix up to the last separator between calls, closed as the format
/// closes its list. `None` when not even the first call is whole.
///
/// The separators between calls are found in one pass that skips the calls'
/// JSON (their strings and nesting), so only one prefix is parsed: trying
/// each separator from the end, a long argument full of `;` or `,` made the
/// work quadratic in the answer's length.
pub fn whole_calls(
    format: ToolCallFormat,
    text: &str,
    known_tools: &[&str],
) -> Option<ParsedOutput> {
    // Each format's separator, what closes its list, and the nesting its
    // calls sit at (Mistral's inside its `[`).
    let (after, close, depth) = match format {
        ToolCallFormat::Hermes => (HERMES_CLOSE, "", 0),
        ToolCallFormat::Llama3Json => (";", "", 0),
        ToolCallFormat::Mistral => (",", "]", 1),
    };
    // Hermes keeps its closing marker; the others end before the separator.
    let kept = if format == ToolCallFormat::Hermes {
        after.len()
    } else {
        0
    };
    let at = last_separator_outside_json(text, after, depth)?;
    let candidate = format!("{}{close}", text.get(..at + kept)?);
    let parsed = parse(format, &candidate, known_tools);
    (!parsed.tool_calls.is_empty()).then_some(parsed)
}

/// The byte offset of the last `separator` in `text` that is outside JSON
/// strings at nesting `depth` (brackets and braces counted outside
/// strings). The separators are ASCII, so an offset found byte by byte is
/// a char boundary.
fn last_separator_outside_json(text: &str, separator: &str, depth: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut level, mut in_string, mut escaped) = (0usize, false, false);
    let mut last = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if level == depth && bytes[i..].starts_with(separator.as_bytes()) {
            last = Some(i);
            i += separator.len();
            continue;
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => level += 1,
                b'}' | b']' => level = level.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    last
}

/// While streaming: the byte offset in `text` from which it must be held
/// back because a call may begin there (an opener, or the start of one at
/// the very end); `None` when all of it can go out as content now. The
/// offset is always a char boundary of `text`.
///
/// Leading whitespace is never held: it cannot begin an opener. For Llama 3
/// only an opener at the start (after whitespace) counts.
pub fn hold_from(format: ToolCallFormat, text: &str) -> Option<usize> {
    let openers = format.openers();
    let may_open = |rest: &str| {
        !rest.is_empty()
            && openers
                .iter()
                .any(|o| rest.starts_with(o) || o.starts_with(rest))
    };
    if !format.opens_after_text() {
        let start = text.len() - text.trim_start().len();
        return may_open(text.get(start..)?).then_some(start);
    }
    if let Some(at) = openers.iter().filter_map(|o| text.find(o)).min() {
        return Some(at);
    }
    // No whole opener: the longest suffix that begins one, if any. Only the
    // last (longest opener - 1) bytes can be such a suffix.
    let longest = openers.iter().map(|o| o.len()).max().unwrap_or(0);
    let from = text.len().saturating_sub(longest.saturating_sub(1));
    (from..text.len()).find(|&i| text.get(i..).is_some_and(may_open))
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// One call object: a string `name` among the known tools, and arguments
/// (under `arguments`, else `parameters`) that are an object, or a JSON
/// string holding one; absent, `null` or an empty string read as `{}`.
/// Read as raw JSON, so the arguments keep the model's own text (see
/// [`arguments`]).
fn call(value: &RawValue, known: &[&str]) -> Option<ToolCall> {
    let object: HashMap<String, &RawValue> = serde_json::from_str(value.get()).ok()?;
    let name: String = serde_json::from_str(object.get("name")?.get()).ok()?;
    let given = object
        .get("arguments")
        .filter(|v| v.get() != "null")
        .or_else(|| object.get("parameters"));
    named_call(&name, given.map(|v| v.get()), known)
}

fn named_call(name: &str, given: Option<&str>, known: &[&str]) -> Option<ToolCall> {
    if !known.contains(&name) {
        return None;
    }
    Some(ToolCall {
        name: name.to_owned(),
        arguments: arguments(given)?,
    })
}

/// A call's arguments as they go out, from their raw JSON: the object's
/// text without the whitespace between tokens (keys in the model's order,
/// strings and numbers as it wrote them), which a stream can send as the
/// model writes it and still end with the same text; `None` when they are
/// not an object.
fn arguments(given: Option<&str>) -> Option<String> {
    match given {
        None | Some("null") => Some("{}".to_owned()),
        Some(raw) if raw.starts_with('"') => string_arguments(raw),
        Some(raw) => raw.starts_with('{').then(|| compact(raw)),
    }
}

/// Arguments given as a JSON string (`raw`, quotes and all) holding an
/// object, or nothing.
fn string_arguments(raw: &str) -> Option<String> {
    let text: String = serde_json::from_str(raw).ok()?;
    if text.trim().is_empty() {
        return Some("{}".to_owned());
    }
    serde_json::from_str::<Value>(&text)
        .ok()?
        .is_object()
        .then(|| compact(&text))
}

/// The calls in one JSON value: an object is one call, an array a list of
/// them (not empty). `None` if any of them is not a call.
fn push_calls(value: &RawValue, known: &[&str], calls: &mut Vec<ToolCall>) -> Option<()> {
    if value.get().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(value.get()).ok()?;
        if items.is_empty() {
            return None;
        }
        for item in items {
            calls.push(call(item, known)?);
        }
    } else {
        calls.push(call(value, known)?);
    }
    Some(())
}

fn hermes(text: &str, known: &[&str]) -> Option<ParsedOutput> {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    let mut cut = false;
    while let Some((before, block)) = rest.split_once(HERMES_OPEN) {
        content.push_str(before);
        match hermes_block(block, known, &mut calls) {
            Ok(after) => rest = after,
            // A last block cut inside its JSON (the budget, a stop string)
            // keeps the whole calls before it, which the stream delivered
            // too, and is text.
            Err(HermesBlock::Cut) if !calls.is_empty() => {
                content.push_str(HERMES_OPEN);
                rest = block;
                cut = true;
                break;
            }
            Err(_) => return None,
        }
    }
    content.push_str(rest);
    Some(ParsedOutput {
        content: non_empty(&content),
        tool_calls: calls,
        cut,
    })
}

/// Why a Hermes block gave no call.
enum HermesBlock {
    /// Its JSON runs on to the answer's end.
    Cut,
    /// Not a call of a known tool.
    NoCall,
}

/// One Hermes block after its `<tool_call>`: its calls pushed, and what
/// follows it.
fn hermes_block<'t>(
    block: &'t str,
    known: &[&str],
    calls: &mut Vec<ToolCall>,
) -> Result<&'t str, HermesBlock> {
    // The block's JSON is read as JSON, so a marker inside one of its
    // strings (arguments holding "</tool_call>") is text, as the streaming
    // parser reads it. After it: the close; or, for a block left open, the
    // next block or the answer's end (a stop or the budget cut it short).
    let json = block.trim_start();
    let mut values = serde_json::Deserializer::from_str(json).into_iter::<&RawValue>();
    let value = match values.next() {
        Some(Ok(value)) => value,
        Some(Err(e)) if e.is_eof() => return Err(HermesBlock::Cut),
        None => return Err(HermesBlock::Cut),
        Some(Err(_)) => return Err(HermesBlock::NoCall),
    };
    let after = json
        .get(values.byte_offset()..)
        .ok_or(HermesBlock::NoCall)?
        .trim_start();
    let rest = match after.strip_prefix(HERMES_CLOSE) {
        Some(after_close) => after_close,
        None if after.is_empty() || after.starts_with(HERMES_OPEN) => after,
        None => return Err(HermesBlock::NoCall),
    };
    push_calls(value, known, calls).ok_or(HermesBlock::NoCall)?;
    Ok(rest)
}

fn llama3(text: &str, known: &[&str]) -> Option<ParsedOutput> {
    let body = text.trim_start();
    let mut rest = body.strip_prefix(PYTHON_TAG).unwrap_or(body).trim();
    if !rest.starts_with('{') {
        return None;
    }
    let mut calls = Vec::new();
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
        calls.push(call(values.next()?.ok()?, known)?);
        rest = rest.get(values.byte_offset()..)?.trim_start();
        if !rest.is_empty() {
            // The next call, after `;`; a trailing `;` ends the list.
            rest = rest.strip_prefix(';')?.trim_start();
        }
    }
    Some(ParsedOutput {
        content: None,
        tool_calls: calls,
        cut: false,
    })
}

fn mistral(text: &str, known: &[&str]) -> Option<ParsedOutput> {
    let (before, after) = text.split_once(MISTRAL_OPEN)?;
    let mut calls = Vec::new();
    for segment in after.split(MISTRAL_OPEN) {
        let segment = segment.trim();
        if segment.starts_with('[') || segment.starts_with('{') {
            push_calls(serde_json::from_str(segment).ok()?, known, &mut calls)?;
        } else {
            // `name[ARGS]{…}`, maybe `name[CALL_ID]id[ARGS]{…}`.
            let (head, args) = segment.split_once(MISTRAL_ARGS)?;
            let name = head.split_once(MISTRAL_CALL_ID).map_or(head, |(n, _)| n);
            let args: &RawValue = serde_json::from_str(args.trim()).ok()?;
            calls.push(named_call(name.trim(), Some(args.get()), known)?);
        }
    }
    Some(ParsedOutput {
        content: non_empty(before),
        tool_calls: calls,
        cut: false,
    })
}

#[cfg(test)]
mod tests {
    use super::ToolCallFormat::{Hermes, Llama3Json, Mistral};
    use super::*;
    use proptest::prelude::*;
    use serde_json::Map;

    const KNOWN: &[&str] = &["get_weather", "get_time"];

    fn calls(p: &ParsedOutput) -> Vec<(&str, &str)> {
        p.tool_calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect()
    }

    #[test]
    fn whole_calls_are_those_before_a_cut_in_each_format() {
        let weather = r#"{"name": "get_weather", "arguments": {"city": "a;b, c"}}"#;
        for (format, cut) in [
            (
                Hermes,
                format!("<tool_call>\n{weather}\n</tool_call>\n<tool_call>\n{{\"na"),
            ),
            (
                Llama3Json,
                format!(
                    "{}; {{\"name\": \"get_t",
                    weather.replace("arguments", "parameters")
                ),
            ),
            (
                Mistral,
                format!("[TOOL_CALLS][{weather}, {{\"name\": \"get_time\", \"arg"),
            ),
        ] {
            let p = whole_calls(format, &cut, KNOWN).unwrap_or_else(|| panic!("{format:?}: {cut}"));
            assert_eq!(
                calls(&p),
                [("get_weather", r#"{"city":"a;b, c"}"#)],
                "{format:?}"
            );
            // Cut inside the first call: nothing is whole.
            assert!(
                whole_calls(format, &cut[..cut.len() / 3], KNOWN).is_none(),
                "{format:?}"
            );
        }
    }

    /// A call cut inside a long argument full of separators: one prefix is
    /// parsed, not one per separator (which took minutes at this length).
    #[test]
    fn separators_inside_a_cut_argument_are_not_boundaries() {
        let long = "a;b, \\\"c".repeat(40_000);
        let first = r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#;
        for (format, cut) in [
            (Llama3Json, format!("{first}; {{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"{long}")),
            (Mistral, format!("[TOOL_CALLS][{first}, {{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"{long}")),
            (Hermes, format!("<tool_call>\n{first}\n</tool_call>\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"</tool_call>{long}")),
        ] {
            let p = whole_calls(format, &cut, KNOWN).unwrap_or_else(|| panic!("{format:?}"));
            assert_eq!(calls(&p), [("get_weather", r#"{"city":"Paris"}"#)], "{format:?}");
            let alone = cut.replacen(first, "", 1);
            assert!(whole_calls(format, &alone, KNOWN).is_none(), "{format:?}");
        }
    }

    /// An answer that must come back whole as text, with no calls.
    fn assert_text(format: ToolCallFormat, text: &str) {
        let p = parse(format, text, KNOWN);
        assert!(p.tool_calls.is_empty(), "{format:?} {text:?}: {p:?}");
        assert_eq!(
            p.content.as_deref(),
            non_empty(text).as_deref(),
            "{format:?} {text:?}"
        );
    }

    #[test]
    fn the_format_follows_the_template() {
        for (source, format) in [
            ("{{ '<tool_call>\\n' }}{{ tool_call | tojson }}", Hermes),
            ("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}", Mistral),
            ("{{- '<|python_tag|>' + tool_call.name }}", Llama3Json),
            (
                "<|start_header_id|>user<|end_header_id|> {\"name\": function name, \"parameters\": …}",
                Llama3Json,
            ),
            (
                "<|start_header_id|>user<|end_header_id|>{{ content }}",
                Hermes,
            ),
            ("{{ messages }}", Hermes),
            // Hermes wins when a template shows several markers.
            ("<tool_call> [TOOL_CALLS] <|python_tag|>", Hermes),
        ] {
            assert_eq!(ToolCallFormat::for_template(source), format, "{source}");
        }
    }

    #[test]
    fn openers() {
        assert_eq!(Hermes.opener(), "<tool_call>");
        assert_eq!(Llama3Json.opener(), "{");
        assert_eq!(Mistral.opener(), "[TOOL_CALLS]");
    }

    #[test]
    fn hermes_one_call() {
        let p = parse(
            Hermes,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            KNOWN,
        );
        assert_eq!(p.content, None);
        assert_eq!(calls(&p), [("get_weather", r#"{"city":"Paris"}"#)]);
    }

    #[test]
    fn hermes_several_calls_with_text_before_and_between() {
        let p = parse(
            Hermes,
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\nand\n<tool_call>{\"name\":\"get_time\",\"arguments\":{\"zone\":\"CET\"}}</tool_call>\n",
            KNOWN,
        );
        assert_eq!(p.content.as_deref(), Some("Let me check.\n\nand"));
        assert_eq!(
            calls(&p),
            [
                ("get_weather", r#"{"city":"Paris"}"#),
                ("get_time", r#"{"zone":"CET"}"#)
            ]
        );
    }

    #[test]
    fn hermes_markers_inside_strings_are_text() {
        let p = parse(
            Hermes,
            r#"<tool_call>{"name": "get_time", "arguments": {"html": "</tool_call>\n<tool_call>"}}</tool_call> done"#,
            KNOWN,
        );
        assert_eq!(p.content.as_deref(), Some("done"));
        assert_eq!(
            calls(&p),
            [("get_time", r#"{"html":"</tool_call>\n<tool_call>"}"#)]
        );
        // Something other than the close after the JSON is no call.
        let text = r#"<tool_call>{"name": "get_time"} trailing</tool_call>"#;
        assert_eq!(parse(Hermes, text, KNOWN).tool_calls, []);
    }

    #[test]
    fn hermes_whitespace_variants() {
        for text in [
            "<tool_call>{\"name\":\"get_time\",\"arguments\":{}}</tool_call>",
            "\n\n<tool_call>\n\n  {\"name\": \"get_time\",\n \"arguments\": {}\n}\n\n</tool_call>\n",
            "\t<tool_call> {\"name\" : \"get_time\" , \"arguments\" : { } } </tool_call>  ",
            "<tool_call>\r\n{\"name\": \"get_time\", \"arguments\": {}}\r\n</tool_call>\r\n",
        ] {
            let p = parse(Hermes, text, KNOWN);
            assert_eq!(p.content, None, "{text:?}");
            assert_eq!(calls(&p), [("get_time", "{}")], "{text:?}");
        }
    }

    #[test]
    fn hermes_blocks_cut_short_or_holding_a_list() {
        // Cut before its close (a stop string or the budget), the JSON whole.
        let p = parse(
            Hermes,
            "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n",
            KNOWN,
        );
        assert_eq!(calls(&p), [("get_time", "{}")]);
        // A block left open before the next one.
        let p = parse(
            Hermes,
            "<tool_call>{\"name\": \"get_time\"}\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>",
            KNOWN,
        );
        assert_eq!(
            calls(&p),
            [("get_time", "{}"), ("get_weather", r#"{"city":"Oslo"}"#)]
        );
        // Several calls as a list in one block.
        let p = parse(
            Hermes,
            "<tool_call>[{\"name\": \"get_time\", \"arguments\": {}}, {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]</tool_call>",
            KNOWN,
        );
        assert_eq!(
            calls(&p),
            [("get_time", "{}"), ("get_weather", r#"{"city":"Oslo"}"#)]
        );
        // A second block cut inside its JSON: the first call stays, the
        // rest is text (as the stream gave them).
        let cut =
            "<tool_call>{\"name\": \"get_time\"}</tool_call>\n<tool_call>{\"name\": \"get_wea";
        let p = parse(Hermes, cut, KNOWN);
        assert_eq!(calls(&p), [("get_time", "{}")]);
        assert_eq!(
            p.content.as_deref(),
            Some("<tool_call>{\"name\": \"get_wea")
        );
        // Cut in the first: no call at all, the text as it came.
        let p = parse(Hermes, "<tool_call>{\"name\": \"get_t", KNOWN);
        assert!(p.tool_calls.is_empty());
        assert_eq!(p.content.as_deref(), Some("<tool_call>{\"name\": \"get_t"));
    }

    #[test]
    fn arguments_given_as_a_json_string_or_left_out() {
        for (format, text, args) in [
            (
                Hermes,
                r#"<tool_call>{"name": "get_time", "arguments": "{\"zone\": \"CET\"}"}</tool_call>"#,
                r#"{"zone":"CET"}"#,
            ),
            (
                Llama3Json,
                r#"{"name": "get_time", "parameters": "{\"zone\": \"CET\"}"}"#,
                r#"{"zone":"CET"}"#,
            ),
            (
                Mistral,
                r#"[TOOL_CALLS][{"name": "get_time", "arguments": "{\"zone\": \"CET\"}"}]"#,
                r#"{"zone":"CET"}"#,
            ),
            (
                Mistral,
                r#"[TOOL_CALLS]get_time[ARGS]"{\"zone\": \"CET\"}""#,
                r#"{"zone":"CET"}"#,
            ),
            (
                Hermes,
                r#"<tool_call>{"name": "get_time"}</tool_call>"#,
                "{}",
            ),
            (
                Hermes,
                r#"<tool_call>{"name": "get_time", "arguments": null}</tool_call>"#,
                "{}",
            ),
            (
                Hermes,
                r#"<tool_call>{"name": "get_time", "arguments": ""}</tool_call>"#,
                "{}",
            ),
            (Llama3Json, r#"{"name": "get_time"}"#, "{}"),
            (
                Llama3Json,
                r#"{"name": "get_time", "arguments": {"zone": "UTC"}}"#,
                r#"{"zone":"UTC"}"#,
            ),
        ] {
            let p = parse(format, text, KNOWN);
            assert_eq!(calls(&p), [("get_time", args)], "{format:?} {text}");
        }
    }

    #[test]
    fn arguments_keep_nesting_and_unicode() {
        let p = parse(
            Hermes,
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich 東京\", \"days\": [1, 2], \"opts\": {\"unit\": \"c\"}}}</tool_call>",
            KNOWN,
        );
        assert_eq!(
            calls(&p),
            [(
                "get_weather",
                r#"{"city":"Zürich 東京","days":[1,2],"opts":{"unit":"c"}}"#
            )]
        );
    }

    /// What a stream can send as it comes: the model's text, keys in its
    /// order, strings and numbers as written, less the whitespace between
    /// tokens (not inside strings).
    #[test]
    fn arguments_keep_the_models_text_less_whitespace() {
        let p = parse(
            Hermes,
            r#"<tool_call>{"name": "get_time", "arguments": { "z" : 1.50, "a": "\u00e9 \"q\"  }", "n": [ 1, -2E3 ] }}</tool_call>"#,
            KNOWN,
        );
        assert_eq!(
            calls(&p),
            [(
                "get_time",
                r#"{"z":1.50,"a":"\u00e9 \"q\"  }","n":[1,-2E3]}"#
            )]
        );
    }

    #[test]
    fn anything_short_of_a_known_well_formed_call_stays_text() {
        for (format, text) in [
            // Malformed JSON.
            (
                Hermes,
                "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": </tool_call>",
            ),
            (
                Hermes,
                "<tool_call>{\"name\": \"get_time\", \"arguments\": {}} trailing</tool_call>",
            ),
            (Hermes, "<tool_call></tool_call>"),
            (Hermes, "<tool_call>"),
            (Hermes, "Use the <tool_call> tag to call a tool."),
            // An unknown tool.
            (
                Hermes,
                "<tool_call>{\"name\": \"launch\", \"arguments\": {}}</tool_call>",
            ),
            // One bad call spoils the others: never half an answer.
            (
                Hermes,
                "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"launch\"}</tool_call>",
            ),
            // No string name; arguments not an object.
            (Hermes, "<tool_call>{\"arguments\": {}}</tool_call>"),
            (
                Hermes,
                "<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>",
            ),
            (
                Hermes,
                "<tool_call>{\"name\": \"get_time\", \"arguments\": [1]}</tool_call>",
            ),
            (
                Hermes,
                "<tool_call>{\"name\": \"get_time\", \"arguments\": \"[1]\"}</tool_call>",
            ),
            (
                Hermes,
                "<tool_call>{\"name\": \"get_time\", \"arguments\": \"not json\"}</tool_call>",
            ),
            (Hermes, "<tool_call>[]</tool_call>"),
            (Hermes, "<tool_call>\"get_time\"</tool_call>"),
            (Hermes, "Just an answer."),
            (Hermes, ""),
            (Llama3Json, "{\"name\": \"get_time\", \"parameters\": {"),
            (Llama3Json, "{\"name\": \"launch\", \"parameters\": {}}"),
            (
                Llama3Json,
                "{\"name\": \"get_time\", \"parameters\": {}} and then some",
            ),
            (
                Llama3Json,
                "{\"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"launch\"}",
            ),
            (Llama3Json, "{\"a\": 1}"),
            (Llama3Json, "<|python_tag|>get_time()"),
            (
                Llama3Json,
                "The answer is {\"name\": \"get_time\", \"parameters\": {}}",
            ),
            (Llama3Json, "[{\"name\": \"get_time\", \"parameters\": {}}]"),
            (Llama3Json, "  "),
            (
                Mistral,
                "[TOOL_CALLS] [{\"name\": \"get_time\", \"arguments\": {}",
            ),
            (
                Mistral,
                "[TOOL_CALLS] [{\"name\": \"launch\", \"arguments\": {}}]",
            ),
            (Mistral, "[TOOL_CALLS] []"),
            (Mistral, "[TOOL_CALLS]"),
            (Mistral, "[TOOL_CALLS]get_time"),
            (Mistral, "[TOOL_CALLS]get_time[ARGS]{"),
            (Mistral, "[TOOL_CALLS]launch[ARGS]{}"),
            (Mistral, "[TOOL_CALLS]get_time[ARGS][1]"),
            (
                Mistral,
                "[TOOL_CALLS] [{\"name\": \"get_time\", \"arguments\": {}}] and more",
            ),
            (Mistral, "[{\"name\": \"get_time\", \"arguments\": {}}]"),
        ] {
            assert_text(format, text);
        }
        // No known tools: nothing is a call.
        let p = parse(
            Hermes,
            "<tool_call>{\"name\": \"get_time\"}</tool_call>",
            &[],
        );
        assert!(p.tool_calls.is_empty());
    }

    #[test]
    fn llama3_json_one_call() {
        for text in [
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
            "\n  <|python_tag|>\n{\"name\": \"get_weather\",\n\"parameters\": {\"city\": \"Oslo\"}}\n",
            "{\"type\": \"function\", \"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}",
        ] {
            let p = parse(Llama3Json, text, KNOWN);
            assert_eq!(p.content, None, "{text:?}");
            assert_eq!(
                calls(&p),
                [("get_weather", r#"{"city":"Oslo"}"#)],
                "{text:?}"
            );
        }
    }

    #[test]
    fn llama3_json_several_calls() {
        for text in [
            " <|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"get_time\", \"parameters\": {}}",
            "{\"name\":\"get_weather\",\"parameters\":{\"city\":\"Oslo\"}};{\"name\":\"get_time\",\"parameters\":{}};",
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}\n;\n{\"name\": \"get_time\"}\n",
        ] {
            let p = parse(Llama3Json, text, KNOWN);
            assert_eq!(
                calls(&p),
                [("get_weather", r#"{"city":"Oslo"}"#), ("get_time", "{}")],
                "{text:?}"
            );
        }
    }

    #[test]
    fn mistral_one_call() {
        for text in [
            "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}]",
            "[TOOL_CALLS][{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"},\"id\":\"abc123xyz\"}]",
            "[TOOL_CALLS]\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n",
            "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Rome\"}",
            "[TOOL_CALLS] get_weather [ARGS] {\"city\": \"Rome\"} ",
            "[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{\"city\": \"Rome\"}",
        ] {
            let p = parse(Mistral, text, KNOWN);
            assert_eq!(p.content, None, "{text:?}");
            assert_eq!(
                calls(&p),
                [("get_weather", r#"{"city":"Rome"}"#)],
                "{text:?}"
            );
        }
    }

    #[test]
    fn mistral_several_calls_and_text_before() {
        for text in [
            "Checking.[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}, {\"name\": \"get_time\", \"arguments\": {}}]",
            "Checking.\n[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Rome\"}[TOOL_CALLS]get_time[ARGS]{}",
            "Checking. [TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}][TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}]",
        ] {
            let p = parse(Mistral, text, KNOWN);
            assert_eq!(p.content.as_deref(), Some("Checking."), "{text:?}");
            assert_eq!(
                calls(&p),
                [("get_weather", r#"{"city":"Rome"}"#), ("get_time", "{}")],
                "{text:?}"
            );
        }
    }

    #[test]
    fn streaming_holds_back_from_a_possible_opener() {
        for (format, text, held) in [
            (Hermes, "", None),
            (Hermes, "plain text", None),
            (Hermes, "  \n", None),
            (Hermes, "a < b", None),
            (Hermes, "<tool_", Some(0)),
            (Hermes, "  <tool_", Some(2)),
            (Hermes, "Sure <tool_", Some(5)),
            (Hermes, "Sure <", Some(5)),
            (Hermes, "<tool_call", Some(0)),
            (Hermes, "<tool_call>", Some(0)),
            (Hermes, "<tool_calls", None),
            (Hermes, "a <tool_call>{\"na", Some(2)),
            (Hermes, "a <tool_call>{} </tool_call> then <", Some(2)),
            // Multi-byte characters before a partial opener.
            (Hermes, "é<", Some(2)),
            (Hermes, "東京は <tool", Some(10)),
            (Hermes, "🙂<tool_call>", Some(4)),
            (Hermes, "東京", None),
            (Llama3Json, "", None),
            (Llama3Json, "  ", None),
            (Llama3Json, "{", Some(0)),
            (Llama3Json, "  {\"name\"", Some(2)),
            (Llama3Json, "\n{\"name\": \"get_time\"}", Some(1)),
            (Llama3Json, "<", Some(0)),
            (Llama3Json, "<|python", Some(0)),
            (Llama3Json, " <|python_tag|>{\"na", Some(1)),
            (Llama3Json, "Hello {", None),
            (Llama3Json, "<b>", None),
            (Llama3Json, "é{", None),
            (Mistral, "", None),
            (Mistral, "[", Some(0)),
            (Mistral, "[TOOL", Some(0)),
            (Mistral, " [TOOL_CALLS][{", Some(1)),
            (Mistral, "ok [", Some(3)),
            (Mistral, "ok [TOOL_CALLS]get_time", Some(3)),
            (Mistral, "[1, 2]", None),
            (Mistral, "ü[TOOL_C", Some(2)),
        ] {
            assert_eq!(hold_from(format, text), held, "{format:?} {text:?}");
        }
    }

    /// Any of the formats the parsers read (the streaming tests' too).
    pub(super) fn any_format() -> impl Strategy<Value = ToolCallFormat> {
        prop_oneof![Just(Hermes), Just(Llama3Json), Just(Mistral)]
    }

    /// Text mixing whole and partial openers, JSON and multi-byte chars.
    fn tricky_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<tool_call>"),
            Just("</tool_call>"),
            Just("<tool_"),
            Just("<"),
            Just("<|python_tag|>"),
            Just("<|pyt"),
            Just("[TOOL_CALLS]"),
            Just("[TOOL"),
            Just("[ARGS]"),
            Just("["),
            Just("]"),
            Just("{"),
            Just("}"),
            Just("{\"name\": \"get_time\", \"arguments\": {}}"),
            Just(";"),
            Just("get_time"),
            Just(" "),
            Just("\n"),
            Just("é"),
            Just("東"),
            Just("🙂"),
            Just("text"),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    /// Argument objects; their keys sorted, so compact JSON is the same
    /// with or without serde_json's `preserve_order`.
    fn arguments() -> impl Strategy<Value = Map<String, Value>> {
        proptest::collection::btree_map(
            "[a-z_]{1,8}",
            prop_oneof![
                any::<i32>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
                "\\PC{0,12}".prop_map(Value::from),
            ],
            0..4,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    /// A call written the way `format`'s models write it.
    fn written(
        format: ToolCallFormat,
        name: &str,
        args: &Map<String, Value>,
        newer: bool,
    ) -> String {
        let args = Value::Object(args.clone());
        match format {
            Hermes => format!(
                "<tool_call>\n{}\n</tool_call>",
                serde_json::json!({"name": name, "arguments": args})
            ),
            Llama3Json => serde_json::json!({"name": name, "parameters": args}).to_string(),
            Mistral if newer => format!("[TOOL_CALLS]{name}[ARGS]{args}"),
            Mistral => format!(
                "[TOOL_CALLS][{}]",
                serde_json::json!({"name": name, "arguments": args})
            ),
        }
    }

    proptest! {
        #[test]
        fn parsing_never_loses_text(format in any_format(), text in tricky_text()) {
            let p = parse(format, &text, KNOWN);
            if p.tool_calls.is_empty() {
                prop_assert_eq!(p.content, non_empty(&text));
            }
            for c in &p.tool_calls {
                prop_assert!(KNOWN.contains(&c.name.as_str()));
                let args: Value = serde_json::from_str(&c.arguments).unwrap();
                prop_assert!(args.is_object());
            }
        }

        #[test]
        fn the_hold_starts_a_possible_opener(format in any_format(), text in tricky_text()) {
            let openers = format.openers();
            let starts_one = |rest: &str| {
                !rest.is_empty() && openers.iter().any(|o| rest.starts_with(o) || o.starts_with(rest))
            };
            match hold_from(format, &text) {
                Some(at) => {
                    prop_assert!(text.is_char_boundary(at));
                    prop_assert!(starts_one(&text[at..]));
                    if format == Llama3Json {
                        prop_assert!(text[..at].trim().is_empty());
                    }
                }
                None if format == Llama3Json => prop_assert!(!starts_one(text.trim_start())),
                None => {
                    // No opener anywhere, nor the start of one at the end.
                    for (i, _) in text.char_indices() {
                        prop_assert!(!starts_one(&text[i..]), "{:?} at {}", text, i);
                    }
                }
            }
        }

        /// Calls written in each format read back as they were, the text
        /// before them as content; and while the answer streams in, no byte
        /// of a call is ever sendable as content.
        #[test]
        fn written_calls_read_back_and_never_stream_as_text(
            format in any_format(),
            before in "[a-zA-Z0-9éü東 ,.!?\n]{0,16}",
            written_calls in proptest::collection::vec((0..KNOWN.len(), arguments(), any::<bool>()), 1..4),
        ) {
            let before = if format == Llama3Json { String::new() } else { before };
            let separator = if format == Llama3Json { "; " } else { "\n" };
            let body: Vec<String> = written_calls
                .iter()
                .map(|(i, args, newer)| written(format, KNOWN[*i], args, *newer))
                .collect();
            let text = format!("{before}{}", body.join(separator));

            let p = parse(format, &text, KNOWN);
            prop_assert_eq!(p.content, non_empty(&before));
            let expected: Vec<ToolCall> = written_calls
                .iter()
                .map(|(i, args, _)| ToolCall {
                    name: KNOWN[*i].to_owned(),
                    arguments: Value::Object(args.clone()).to_string(),
                })
                .collect();
            prop_assert_eq!(p.tool_calls, expected);

            let call_starts = before.len();
            for end in (call_starts + 1..=text.len()).filter(|&e| text.is_char_boundary(e)) {
                let held = hold_from(format, &text[..end]);
                prop_assert!(held.is_some_and(|h| h <= call_starts), "{:?} -> {:?}", &text[..end], held);
            }
        }
    }
}
