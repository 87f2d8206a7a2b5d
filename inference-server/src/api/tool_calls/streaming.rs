//! Tool calls read while the answer streams in, as vLLM's streaming tool
//! parsers send them: text that is certainly no call goes out as content at
//! once, a call goes out as soon as its name is read, and then its
//! arguments, char by char as the model writes them, until their JSON value
//! closes. Pure text logic, no I/O.
//!
//! Invariants:
//! - The arguments sent for a call, put together, are the text
//!   [`super::parse`] gives for it: the model's JSON without the whitespace
//!   between tokens (a string holding the object goes out decoded, whole,
//!   when it closes).
//! - What went out is never taken back: content is text no call can start
//!   in, a call is sent only once its name is one of the known tools, and
//!   arguments only once they are the call's own.
//! - What the stream cannot read as it comes (the arguments before the name,
//!   a malformed call, an unknown tool) is held from that call's start to
//!   the answer's end, where the whole-answer parse decides; text that was
//!   no call then goes out as content, never lost.
//! - How the text is split into pieces changes nothing but where the pieces
//!   out are cut.
//!
//! A call sent and then broken (the budget ran out inside its arguments, or
//! garbage follows) stays sent: it cannot be taken back. The text after the
//! break is read as a fresh answer at the end, and
//! [`ToolCallStream::ends_with_calls`] says whether every call sent was
//! whole.

use super::json_scan::{is_json_space, Compactor, Fed, JsonLexer, Scan};
use super::{
    hold_from, parse, string_arguments, ToolCallFormat, HERMES_CLOSE, HERMES_OPEN, MISTRAL_ARGS,
    MISTRAL_CALL_ID, MISTRAL_OPEN, PYTHON_TAG,
};

/// What of a streaming answer can go out now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Streamed {
    /// Text that is no call.
    Content(String),
    /// A piece of call `index` (0, 1, … in the answer): its first carries
    /// its `name`; each carries its arguments' next characters, maybe none.
    Call {
        index: usize,
        name: Option<String>,
        arguments: String,
    },
}

/// Reads one answer's calls as it streams (see the module).
#[derive(Debug)]
pub struct ToolCallStream {
    format: ToolCallFormat,
    known: Vec<String>,
    /// `parallel_tool_calls: false`: calls after the first are read, so
    /// their text is no content, but not sent.
    first_only: bool,
    /// The answer so far.
    text: String,
    /// How much of `text` is read.
    pos: usize,
    mode: Mode,
    /// Inside a list of calls (`[{…}, {…}]`).
    in_list: bool,
    /// Where the call being read began, and what to put before the text
    /// from there for the whole-answer parse to read it (a list's opening
    /// when it is not the list's first); `None` once it was sent.
    start: Option<(usize, &'static str)>,
    /// Calls sent.
    sent: usize,
    /// The call being read is sent (not one dropped by `first_only`).
    shown: bool,
    /// A call was sent and its arguments are not whole yet.
    unfinished: bool,
    /// A call was sent whose arguments never became whole.
    cut_short: bool,
    out: Vec<Streamed>,
}

#[derive(Debug)]
enum Mode {
    /// Text in which a call may open (Hermes, Mistral).
    Text,
    /// Llama 3 before anything but whitespace: only here may a call open.
    Llama3Start,
    /// After Llama 3's `<|python_tag|>`: a call object must follow.
    Llama3Tag,
    /// After a Llama 3 call's `;`: the next call, or the end.
    Llama3Next,
    /// Content to the end (Llama 3 after text).
    Plain,
    /// After `<tool_call>`: a call or a list of them.
    HermesBlock,
    /// After `[TOOL_CALLS]`: a list, a call, or the newer `name[ARGS]{…}`.
    MistralSegment,
    /// Mistral's newer form: the name, up to `[ARGS]` or `[CALL_ID]`.
    MistralName,
    /// After `[CALL_ID]`: the id, up to `[ARGS]`.
    MistralCallId,
    /// After `[ARGS]`: the arguments value.
    MistralArguments(Arguments),
    /// In a list: an item must come (the list's end here would leave it
    /// empty, or follow a comma: no call either way).
    ListItem,
    /// In a list after an item: `,` or `]`.
    ListNext,
    /// Inside a call object.
    Call(CallObject),
    /// After a call (or a list): what this format lets follow it.
    After,
    /// Held from `from` to the end, where the whole-answer parse reads
    /// `prefix` and the text from there.
    Held { from: usize, prefix: &'static str },
}

impl ToolCallStream {
    pub fn new(format: ToolCallFormat, known: Vec<String>, first_only: bool) -> Self {
        Self {
            format,
            known,
            first_only,
            text: String::new(),
            pos: 0,
            mode: match format {
                ToolCallFormat::Llama3Json => Mode::Llama3Start,
                ToolCallFormat::Hermes | ToolCallFormat::Mistral => Mode::Text,
            },
            in_list: false,
            start: None,
            sent: 0,
            shown: false,
            unfinished: false,
            cut_short: false,
            out: Vec::new(),
        }
    }

    /// The next piece of the answer in; what can go out now.
    pub fn push(&mut self, text: &str) -> Vec<Streamed> {
        self.text.push_str(text);
        loop {
            let mode = std::mem::replace(&mut self.mode, Mode::Plain);
            let (mode, read_on) = self.read(mode);
            self.mode = mode;
            if !read_on {
                break;
            }
        }
        std::mem::take(&mut self.out)
    }

    /// The answer ended: what was held goes out, read by the whole-answer
    /// parse.
    pub fn finish(&mut self) -> Vec<Streamed> {
        match std::mem::replace(&mut self.mode, Mode::Plain) {
            // A partial opener, or Llama 3's partial tag: text after all.
            Mode::Text | Mode::Llama3Start | Mode::Plain => self.content_to(self.text.len()),
            Mode::Held { from, prefix } => self.whole(from, prefix),
            // The budget or a stop string cut a block's own close: no text.
            Mode::After
                if self.format == ToolCallFormat::Hermes
                    && HERMES_CLOSE.starts_with(self.rest()) =>
            {
                self.pos = self.text.len();
            }
            // Inside a call, or after one (then at most a partial marker is
            // left): a call not yet sent is read whole; one sent stays.
            _ => {
                self.cut_short |= self.unfinished;
                self.unfinished = false;
                let (from, prefix) = self.start.take().unwrap_or((self.pos, ""));
                self.whole(from, prefix);
            }
        }
        std::mem::take(&mut self.out)
    }

    /// The answer made calls, and every call sent is whole (OpenAI's
    /// `finish_reason: "tool_calls"`); meaningful after `finish`.
    pub fn ends_with_calls(&self) -> bool {
        self.sent > 0 && !self.cut_short
    }

    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or_default()
    }

    /// Reads on in `mode`: the mode to go on in, and whether to read on
    /// (false: more text is needed).
    fn read(&mut self, mode: Mode) -> (Mode, bool) {
        let Some(c) = self.rest().chars().next() else {
            return (mode, false);
        };
        let next = match mode {
            Mode::Held { .. } => return (mode, false),
            Mode::Plain => {
                self.content_to(self.text.len());
                Mode::Plain
            }
            Mode::Text => return self.text_mode(),
            Mode::Llama3Start => return self.llama3_start(),
            Mode::Llama3Tag | Mode::Llama3Next if c.is_whitespace() => self.skip(c, mode),
            Mode::Llama3Tag | Mode::Llama3Next if c == '{' => self.open_call(c),
            Mode::Llama3Tag | Mode::Llama3Next => self.fail(),
            Mode::HermesBlock | Mode::MistralSegment if c.is_whitespace() => self.skip(c, mode),
            Mode::HermesBlock | Mode::MistralSegment if c == '{' => self.open_call(c),
            Mode::HermesBlock | Mode::MistralSegment if c == '[' => {
                self.pos += 1;
                self.in_list = true;
                Mode::ListItem
            }
            Mode::HermesBlock => self.fail(),
            Mode::MistralSegment => Mode::MistralName,
            Mode::MistralName => return self.mistral_name(),
            Mode::MistralCallId => return self.mistral_call_id(),
            Mode::MistralArguments(args) => self.mistral_arguments(args, c),
            Mode::ListItem | Mode::ListNext if is_json_space(c) => self.skip(c, mode),
            Mode::ListItem if c == '{' => {
                if self.start.is_none() {
                    // Not the list's first call: the whole-answer parse
                    // reads the rest of the list as a list of its own.
                    let prefix = match self.format {
                        ToolCallFormat::Hermes => "<tool_call>[",
                        _ => "[TOOL_CALLS][",
                    };
                    self.start = Some((self.pos, prefix));
                }
                self.pos += 1;
                Mode::Call(CallObject::default())
            }
            Mode::ListItem => self.fail(),
            Mode::ListNext if c == ',' => {
                self.pos += 1;
                Mode::ListItem
            }
            Mode::ListNext if c == ']' => {
                self.pos += 1;
                self.in_list = false;
                Mode::After
            }
            Mode::ListNext => self.fail(),
            Mode::Call(call) => self.call_char(call, c),
            Mode::After => return self.after(c),
        };
        (next, true)
    }

    /// Content up to the first possible opener; the call it opens.
    fn text_mode(&mut self) -> (Mode, bool) {
        let Some(at) = hold_from(self.format, self.rest()) else {
            self.content_to(self.text.len());
            return (Mode::Text, false);
        };
        self.content_to(self.pos + at);
        let opener = self.format.opener();
        if !self.rest().starts_with(opener) {
            // A partial opener at the end: wait for the rest.
            return (Mode::Text, false);
        }
        self.start = Some((self.pos, ""));
        self.pos += opener.len();
        let next = match self.format {
            ToolCallFormat::Mistral => Mode::MistralSegment,
            _ => Mode::HermesBlock,
        };
        (next, true)
    }

    fn llama3_start(&mut self) -> (Mode, bool) {
        let rest = self.rest();
        let body = rest.trim_start();
        let space = rest.len() - body.len();
        let opens_tag = body.starts_with(PYTHON_TAG);
        let opens_call = body.starts_with('{');
        let may_open = PYTHON_TAG.starts_with(body);
        // Leading whitespace cannot start a call: it goes out.
        self.content_to(self.pos + space);
        if opens_tag {
            self.start = Some((self.pos, ""));
            self.pos += PYTHON_TAG.len();
            (Mode::Llama3Tag, true)
        } else if opens_call {
            (self.open_call('{'), true)
        } else if may_open {
            (Mode::Llama3Start, false)
        } else {
            (Mode::Plain, true)
        }
    }

    /// A call object opens at `c` (`{`), not inside a list.
    fn open_call(&mut self, c: char) -> Mode {
        if self.start.is_none() {
            self.start = Some((self.pos, ""));
        }
        self.pos += c.len_utf8();
        Mode::Call(CallObject::default())
    }

    fn skip(&mut self, c: char, mode: Mode) -> Mode {
        self.pos += c.len_utf8();
        mode
    }

    /// The newer Mistral form's name, read up to the marker after it.
    fn mistral_name(&mut self) -> (Mode, bool) {
        let rest = self.rest();
        let bracket = rest.find('[');
        let head = rest
            .get(..bracket.unwrap_or(rest.len()))
            .unwrap_or_default();
        let name = head.trim().to_owned();
        if !self.known.iter().any(|k| k.starts_with(&name)) {
            return (self.fail(), true);
        }
        let Some(bracket) = bracket else {
            return (Mode::MistralName, false);
        };
        let marker = rest.get(bracket..).unwrap_or_default();
        let next = if marker.starts_with(MISTRAL_ARGS) {
            (
                MISTRAL_ARGS.len(),
                Mode::MistralArguments(Arguments::default()),
            )
        } else if marker.starts_with(MISTRAL_CALL_ID) {
            (MISTRAL_CALL_ID.len(), Mode::MistralCallId)
        } else if MISTRAL_ARGS.starts_with(marker) || MISTRAL_CALL_ID.starts_with(marker) {
            return (Mode::MistralName, false);
        } else {
            return (self.fail(), true);
        };
        if !self.name(name) {
            return (self.fail(), true);
        }
        self.pos += bracket + next.0;
        (next.1, true)
    }

    fn mistral_call_id(&mut self) -> (Mode, bool) {
        let rest = self.rest();
        let args = rest.find(MISTRAL_ARGS);
        let next_call = rest.find(MISTRAL_OPEN);
        match (args, next_call) {
            (Some(at), next) if next.is_none_or(|n| at < n) => {
                self.pos += at + MISTRAL_ARGS.len();
                (Mode::MistralArguments(Arguments::default()), true)
            }
            (None, None) => (Mode::MistralCallId, false),
            _ => (self.fail(), true),
        }
    }

    fn mistral_arguments(&mut self, mut args: Arguments, c: char) -> Mode {
        match args.feed(c) {
            Err(()) => self.fail(),
            Ok(ArgumentsFed::Took(sent)) => {
                self.pos += c.len_utf8();
                self.arguments(sent);
                Mode::MistralArguments(args)
            }
            Ok(ArgumentsFed::Ended(sent)) => {
                self.pos += c.len_utf8();
                self.arguments_end(Some(sent.unwrap_or_else(|| "{}".to_owned())));
                Mode::After
            }
        }
    }

    /// After a call or a list: what may follow it in this format.
    fn after(&mut self, c: char) -> (Mode, bool) {
        if c.is_whitespace() {
            self.pos += c.len_utf8();
            return (Mode::After, true);
        }
        let rest = self.rest();
        let (marker, next) = match self.format {
            ToolCallFormat::Llama3Json if c == ';' => (";", Mode::Llama3Next),
            // A block ends at its close, or where the next one opens.
            ToolCallFormat::Hermes if rest.starts_with(HERMES_CLOSE) => (HERMES_CLOSE, Mode::Text),
            ToolCallFormat::Hermes if rest.starts_with(HERMES_OPEN) => {
                (HERMES_OPEN, Mode::HermesBlock)
            }
            ToolCallFormat::Mistral if rest.starts_with(MISTRAL_OPEN) => {
                (MISTRAL_OPEN, Mode::MistralSegment)
            }
            ToolCallFormat::Hermes
                if HERMES_CLOSE.starts_with(rest) || HERMES_OPEN.starts_with(rest) =>
            {
                return (Mode::After, false)
            }
            ToolCallFormat::Mistral if MISTRAL_OPEN.starts_with(rest) => {
                return (Mode::After, false)
            }
            _ => return (self.fail(), true),
        };
        if matches!(next, Mode::HermesBlock | Mode::MistralSegment) {
            self.start = Some((self.pos, ""));
        }
        self.pos += marker.len();
        (next, true)
    }

    /// One char of a call object.
    fn call_char(&mut self, mut call: CallObject, c: char) -> Mode {
        let took = c.len_utf8();
        match &mut call.at {
            Member::KeyOrClose | Member::Key if is_json_space(c) => self.pos += took,
            Member::KeyOrClose | Member::Key if c == '"' => {
                let mut key = Scan::default();
                key.feed(c);
                self.pos += took;
                call.at = Member::KeyText(key);
            }
            Member::KeyOrClose if c == '}' => {
                self.pos += took;
                return self.close_call(&call);
            }
            Member::KeyOrClose | Member::Key => return self.fail(),
            Member::KeyText(key) => match key.feed(c) {
                Fed::Took => self.pos += took,
                Fed::Ended => {
                    self.pos += took;
                    let raw = std::mem::take(&mut key.raw);
                    let Some(field) = call.field(&raw) else {
                        return self.fail();
                    };
                    call.at = Member::Colon(field);
                }
                Fed::EndedBefore | Fed::Bad => return self.fail(),
            },
            Member::Colon(_) if is_json_space(c) => self.pos += took,
            Member::Colon(field) if c == ':' => {
                self.pos += took;
                call.at = match *field {
                    Field::Arguments(key) => Member::Arguments(key, Arguments::default()),
                    field => Member::Value(field, Scan::default()),
                };
            }
            Member::Colon(_) => return self.fail(),
            Member::Value(field, value) => {
                let is_name = *field == Field::Name;
                let fed = value.feed(c);
                if matches!(fed, Fed::Took | Fed::Ended) {
                    self.pos += took;
                }
                match fed {
                    Fed::Took => {}
                    // A number ends before the char after it, read next.
                    Fed::Ended | Fed::EndedBefore => {
                        if is_name {
                            let name = serde_json::from_str::<String>(&value.raw).ok();
                            if !name.is_some_and(|n| self.name(n)) {
                                return self.fail();
                            }
                            call.named = true;
                        }
                        call.at = Member::CommaOrClose;
                    }
                    Fed::Bad => return self.fail(),
                }
            }
            Member::Arguments(key, args) => match args.feed(c) {
                Err(()) => return self.fail(),
                Ok(ArgumentsFed::Took(sent)) => {
                    self.pos += took;
                    self.arguments(sent);
                }
                Ok(ArgumentsFed::Ended(sent)) => {
                    self.pos += took;
                    if sent.is_some() {
                        call.arguments = Some(*key);
                        self.arguments_end(sent);
                    }
                    call.at = Member::CommaOrClose;
                }
            },
            Member::CommaOrClose if is_json_space(c) => self.pos += took,
            Member::CommaOrClose if c == ',' => {
                self.pos += took;
                call.at = Member::Key;
            }
            Member::CommaOrClose if c == '}' => {
                self.pos += took;
                return self.close_call(&call);
            }
            Member::CommaOrClose => return self.fail(),
        }
        Mode::Call(call)
    }

    fn close_call(&mut self, call: &CallObject) -> Mode {
        if !call.named {
            return self.fail();
        }
        if call.arguments.is_none() {
            self.arguments_end(Some("{}".to_owned()));
        }
        if self.in_list {
            Mode::ListNext
        } else {
            Mode::After
        }
    }

    /// The call being read is named `name`: it goes out, unless it is no
    /// known tool (false) or `first_only` drops it.
    fn name(&mut self, name: String) -> bool {
        if !self.known.contains(&name) {
            return false;
        }
        self.start = None;
        self.shown = !(self.first_only && self.sent > 0);
        if self.shown {
            self.out.push(Streamed::Call {
                index: self.sent,
                name: Some(name),
                arguments: String::new(),
            });
            self.sent += 1;
            self.unfinished = true;
        }
        true
    }

    /// The next characters of the call being read's arguments.
    fn arguments(&mut self, text: Option<char>) {
        let (Some(c), true) = (text, self.shown) else {
            return;
        };
        let index = self.sent - 1;
        match self.out.last_mut() {
            Some(Streamed::Call {
                index: last,
                arguments,
                ..
            }) if *last == index => arguments.push(c),
            _ => self.out.push(Streamed::Call {
                index,
                name: None,
                arguments: c.to_string(),
            }),
        }
    }

    /// The call being read's arguments are whole with `last` (their last
    /// characters, or all of them when they come at once).
    fn arguments_end(&mut self, last: Option<String>) {
        for c in last.unwrap_or_default().chars() {
            self.arguments(Some(c));
        }
        if self.shown {
            self.unfinished = false;
        }
    }

    /// The stream cannot read on: a call not sent yet is held whole from its
    /// start, for the whole-answer parse at the end; after a sent call's
    /// start, the text from here on is.
    fn fail(&mut self) -> Mode {
        self.cut_short |= self.unfinished;
        self.unfinished = false;
        let (from, prefix) = self.start.take().unwrap_or((self.pos, ""));
        Mode::Held { from, prefix }
    }

    fn content_to(&mut self, end: usize) {
        let Some(text) = self.text.get(self.pos..end).filter(|t| !t.is_empty()) else {
            return;
        };
        let text = text.to_owned();
        self.pos = end;
        self.content(text);
    }

    fn content(&mut self, text: String) {
        match self.out.last_mut() {
            Some(Streamed::Content(last)) => last.push_str(&text),
            _ => self.out.push(Streamed::Content(text)),
        }
    }

    /// The text held from `from`, read as a whole answer (after `prefix`):
    /// its calls, after those sent, and its content; all of it content when
    /// it holds no call.
    fn whole(&mut self, from: usize, prefix: &'static str) {
        let tail = self.text.get(from..).unwrap_or_default().to_owned();
        self.pos = self.text.len();
        if tail.is_empty() {
            return;
        }
        let known: Vec<&str> = self.known.iter().map(String::as_str).collect();
        let parsed = parse(self.format, &format!("{prefix}{tail}"), &known);
        if parsed.tool_calls.is_empty() {
            self.content(tail);
            return;
        }
        if let Some(content) = parsed.content {
            self.content(content);
        }
        let room = if self.first_only {
            1usize.saturating_sub(self.sent)
        } else {
            usize::MAX
        };
        for call in parsed.tool_calls.into_iter().take(room) {
            self.out.push(Streamed::Call {
                index: self.sent,
                name: Some(call.name),
                arguments: call.arguments,
            });
            self.sent += 1;
        }
    }
}

/// Where a call object is.
#[derive(Debug, Default)]
struct CallObject {
    at: Member,
    /// Its name was read (and sent, or dropped by `first_only`).
    named: bool,
    /// Which key's value its arguments were sent from.
    arguments: Option<ArgumentsKey>,
}

#[derive(Debug, Default)]
enum Member {
    /// After `{`: a key or `}`.
    #[default]
    KeyOrClose,
    /// After `,`: a key.
    Key,
    KeyText(Scan),
    Colon(Field),
    Value(Field, Scan),
    Arguments(ArgumentsKey, Arguments),
    CommaOrClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Arguments(ArgumentsKey),
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgumentsKey {
    Arguments,
    Parameters,
}

impl CallObject {
    /// What a key (its raw JSON text) names, or `None` where the stream
    /// cannot follow what the whole-answer parse would make of it: the
    /// arguments before the name (they would have to wait for it), a second
    /// name, or arguments after arguments were sent (`arguments` wins over
    /// `parameters`, whichever comes first).
    fn field(&self, raw: &str) -> Option<Field> {
        let key: String = serde_json::from_str(raw).ok()?;
        let field = match key.as_str() {
            "name" if self.named => return None,
            "name" => Field::Name,
            "arguments" => Field::Arguments(ArgumentsKey::Arguments),
            "parameters" => Field::Arguments(ArgumentsKey::Parameters),
            _ => Field::Other,
        };
        match (field, self.arguments) {
            (Field::Arguments(_), _) if !self.named => None,
            (Field::Arguments(ArgumentsKey::Parameters), Some(ArgumentsKey::Arguments)) => {
                Some(Field::Other)
            }
            (Field::Arguments(_), Some(_)) => None,
            _ => Some(field),
        }
    }
}

/// An arguments value as it streams: an object goes out as it comes (less
/// the whitespace between tokens), a string holding one once it closes;
/// `null` is as good as none.
#[derive(Debug, Default)]
struct Arguments {
    lexer: JsonLexer,
    compactor: Compactor,
    kind: Option<ArgumentsKind>,
    /// A string's raw text.
    raw: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgumentsKind {
    Object,
    String,
    Null,
}

/// What one char did to an arguments value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ArgumentsFed {
    /// Read; the char to send now, if any.
    Took(Option<char>),
    /// Read, and the value is whole: what is left to send (`None` for
    /// `null`).
    Ended(Option<String>),
}

impl Arguments {
    /// Reads `c`; an error when these are no arguments.
    fn feed(&mut self, c: char) -> Result<ArgumentsFed, ()> {
        if self.kind.is_none() && !is_json_space(c) {
            self.kind = Some(match c {
                '{' => ArgumentsKind::Object,
                '"' => ArgumentsKind::String,
                'n' => ArgumentsKind::Null,
                _ => return Err(()),
            });
        }
        let fed = self.lexer.feed(c);
        let kind = self.kind;
        if kind == Some(ArgumentsKind::String) {
            self.raw.push(c);
        }
        let sent = (kind == Some(ArgumentsKind::Object) && self.compactor.keep(c)).then_some(c);
        match (fed, kind) {
            (Fed::Took, _) => Ok(ArgumentsFed::Took(sent)),
            (Fed::Ended, Some(ArgumentsKind::String)) => string_arguments(&self.raw)
                .map(|a| ArgumentsFed::Ended(Some(a)))
                .ok_or(()),
            (Fed::Ended, Some(ArgumentsKind::Null)) => Ok(ArgumentsFed::Ended(None)),
            (Fed::Ended, _) => Ok(ArgumentsFed::Ended(sent.map(String::from))),
            // Nothing these can start ends early (a bare number would).
            (Fed::EndedBefore | Fed::Bad, _) => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::non_empty;
    use super::super::tests::any_format;
    use super::ToolCallFormat::{Hermes, Llama3Json, Mistral};
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const KNOWN: &[&str] = &["get_weather", "get_time"];

    /// What a client puts together from the stream, as OpenAI's do.
    #[derive(Debug, Default, PartialEq)]
    struct Received {
        content: String,
        /// Each call's name and its arguments put together.
        calls: Vec<(String, String)>,
        /// Pieces that carried some of each call's arguments.
        fragments: Vec<usize>,
        /// Calls whose name went out before the answer's end.
        early: usize,
        ends_with_calls: bool,
    }

    impl Received {
        fn take(&mut self, pieces: Vec<Streamed>) {
            for piece in pieces {
                match piece {
                    Streamed::Content(text) => {
                        assert!(!text.is_empty());
                        self.content.push_str(&text);
                    }
                    Streamed::Call {
                        index,
                        name,
                        arguments,
                    } => {
                        if let Some(name) = name {
                            assert_eq!(index, self.calls.len(), "calls go out in order");
                            self.calls.push((name, String::new()));
                            self.fragments.push(0);
                        }
                        self.calls[index].1.push_str(&arguments);
                        self.fragments[index] += usize::from(!arguments.is_empty());
                    }
                }
            }
        }
    }

    fn stream_with(format: ToolCallFormat, pieces: &[&str], first_only: bool) -> Received {
        let known = KNOWN.iter().map(|k| k.to_string()).collect();
        let mut stream = ToolCallStream::new(format, known, first_only);
        let mut received = Received::default();
        for piece in pieces {
            received.take(stream.push(piece));
        }
        received.early = received.calls.len();
        received.take(stream.finish());
        received.ends_with_calls = stream.ends_with_calls();
        received
    }

    fn stream(format: ToolCallFormat, pieces: &[&str]) -> Received {
        stream_with(format, pieces, false)
    }

    /// `text` one char at a time, as a slow model writes it.
    fn chars(text: &str) -> Vec<&str> {
        text.char_indices()
            .map(|(i, c)| &text[i..i + c.len_utf8()])
            .collect()
    }

    /// `text` cut at `cuts` (moved back to char boundaries).
    fn cut<'a>(text: &'a str, cuts: &[prop::sample::Index]) -> Vec<&'a str> {
        let mut at: Vec<usize> = cuts
            .iter()
            .map(|c| {
                let mut i = c.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                i
            })
            .collect();
        at.extend([0, text.len()]);
        at.sort_unstable();
        at.windows(2).map(|w| &text[w[0]..w[1]]).collect()
    }

    /// What the whole-answer parse makes of `text`, as `Received` has it.
    fn whole(format: ToolCallFormat, text: &str) -> (Option<String>, Vec<(String, String)>) {
        let p = parse(format, text, KNOWN);
        let calls = p
            .tool_calls
            .into_iter()
            .map(|c| (c.name, c.arguments))
            .collect();
        (p.content, calls)
    }

    /// Answers as models write them: each streams its calls as they come,
    /// and ends as the whole-answer parse reads it.
    const WELL_FORMED: &[(ToolCallFormat, &str)] = &[
        (
            Hermes,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>",
        ),
        (
            Hermes,
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\nand\n<tool_call>{\"name\":\"get_time\",\"arguments\":{\"zone\":\"CET\"}}</tool_call>\n",
        ),
        (
            Hermes,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"query\": {\"filters\": [{\"field\": \"sky\", \"op\": \"}\"}, {\"not\": {\"x\": [1, [2, {}]]}}], \"limit\": 10}, \"z\": null}}\n</tool_call>",
        ),
        (
            Hermes,
            r#"<tool_call>{"name": "get_time", "arguments": {"text": "say \"hi\" } {", "path": "C:\\dir\\", "nl": "a\nb\u00e9\/"}}</tool_call>"#,
        ),
        (
            Hermes,
            "<tool_call>{\"type\": \"function\", \"id\": -1.5e3, \"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich 東京 🙂\", \"days\": [1, 2.50, -0, 3E+2], \"ok\": true, \"no\": false}, \"extra\": [null, {\"a\": \"}\"}]}</tool_call>",
        ),
        (
            Hermes,
            "<tool_call>[{\"name\": \"get_time\", \"arguments\": {}}, {\"name\": \"get_weather\", \"arguments\": {\"z\": 1, \"a\": 2}}]</tool_call>",
        ),
        (
            Hermes,
            r#"<tool_call>{"name": "get_time", "arguments": {"html": "</tool_call>\n<tool_call>"}}</tool_call>"#,
        ),
        (
            Hermes,
            "<tool_call>{\"name\": \"get_time\"}\n<tool_call>{\"name\": \"get_weather\", \"arguments\": null, \"parameters\": {\"city\": \"Oslo\"}}",
        ),
        (
            Hermes,
            r#"<tool_call>{"name": "get_time", "arguments": "{\"zone\": \"CET\", \"q\": \"}\"}"}</tool_call>"#,
        ),
        (
            Llama3Json,
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\", \"opts\": {\"unit\": \"c\", \"list\": [\"}\", \"{\"]}}}",
        ),
        (
            Llama3Json,
            "{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}, \"parameters\": {\"x\": 1}}",
        ),
        (
            Llama3Json,
            " <|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"get_time\", \"parameters\": {}};",
        ),
        (
            Mistral,
            "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\", \"note\": \"\\\"quoted\\\" ü\"}}, {\"name\": \"get_time\", \"arguments\": {}, \"id\": \"abc123xyz\"}]",
        ),
        (
            Mistral,
            "Checking.\n[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{\"city\": \"Rome\"}[TOOL_CALLS] get_time [ARGS] {\"zone\": {\"name\": \"CET\"}}",
        ),
        (
            Mistral,
            "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}][TOOL_CALLS]{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}",
        ),
    ];

    #[test]
    fn a_call_goes_out_with_its_name_then_its_arguments_as_they_come() {
        let known = KNOWN.iter().map(|k| k.to_string()).collect();
        let mut s = ToolCallStream::new(Hermes, known, false);
        let call = |name: Option<&str>, arguments: &str| Streamed::Call {
            index: 0,
            name: name.map(str::to_owned),
            arguments: arguments.to_owned(),
        };
        assert_eq!(
            s.push("Sure.\n<tool_call>\n{\"name\": \"get_wea"),
            [Streamed::Content("Sure.\n".into())]
        );
        assert_eq!(s.push("ther\""), [call(Some("get_weather"), "")]);
        assert_eq!(s.push(", \"arguments\": {\"ci"), [call(None, "{\"ci")]);
        assert_eq!(s.push("ty\": \"Par"), [call(None, "ty\":\"Par")]);
        // Nothing after the arguments' own closing brace.
        assert_eq!(s.push("is\"}}\n</tool"), [call(None, "is\"}")]);
        assert_eq!(s.push("_call>\nDone"), [Streamed::Content("\nDone".into())]);
        assert_eq!(s.finish(), []);
        assert!(s.ends_with_calls());
    }

    #[test]
    fn well_formed_answers_stream_what_the_whole_answer_parse_reads() {
        for &(format, text) in WELL_FORMED {
            let (content, calls) = whole(format, text);
            assert!(!calls.is_empty(), "{format:?} {text}");
            for pieces in [vec![text], chars(text)] {
                let r = stream(format, &pieces);
                assert_eq!(r.calls, calls, "{format:?} {text}");
                assert_eq!(non_empty(&r.content), content, "{format:?} {text}");
                assert_eq!(r.early, calls.len(), "{format:?} {text}");
                assert!(r.ends_with_calls, "{format:?} {text}");
            }
            // Char by char, an object's arguments come in many pieces.
            let r = stream(format, &chars(text));
            for ((_, arguments), fragments) in r.calls.iter().zip(&r.fragments) {
                let whole_string = text.contains("\"arguments\": \"");
                if arguments.len() > 2 && !whole_string {
                    assert!(*fragments > 1, "{format:?} {text}: {r:?}");
                }
            }
        }
    }

    #[test]
    fn what_the_stream_cannot_follow_is_read_whole_at_the_end() {
        for (format, text) in [
            // The arguments before the name.
            (
                Hermes,
                "<tool_call>{\"arguments\": {\"city\": \"Oslo\"}, \"name\": \"get_weather\"}</tool_call>",
            ),
            (
                Llama3Json,
                "{\"parameters\": {\"zone\": \"CET\"}, \"name\": \"get_time\"}",
            ),
            (
                Mistral,
                "[TOOL_CALLS][{\"arguments\": {}, \"name\": \"get_time\"}, {\"name\": \"get_weather\", \"arguments\": {}}]",
            ),
        ] {
            let (content, calls) = whole(format, text);
            assert!(!calls.is_empty(), "{text}");
            let r = stream(format, &chars(text));
            assert_eq!((non_empty(&r.content), &r.calls), (content, &calls));
            assert_eq!(r.early, 0, "{text}");
            assert!(r.fragments.iter().all(|&f| f == 1), "{r:?}");
            assert!(r.ends_with_calls);
        }
    }

    #[test]
    fn what_is_no_call_goes_out_whole_as_text() {
        for (format, text) in [
            (
                Hermes,
                "<tool_call>{\"name\": \"launch\", \"arguments\": {}}</tool_call>",
            ),
            (Hermes, "<tool_call>{\"name\" 1}</tool_call> more"),
            (Hermes, "<tool_call>{\"arguments\": {}}</tool_call>"),
            (
                Hermes,
                "<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>",
            ),
            (Hermes, "Use the <tool_call> tag to call a tool."),
            (Hermes, "<tool_call>[]</tool_call>"),
            (Hermes, "<tool_call>"),
            (Hermes, "Sure <tool_"),
            (Hermes, "a < b, {\"name\": \"get_time\"}"),
            (
                Llama3Json,
                "Hello {\"name\": \"get_time\", \"parameters\": {}}",
            ),
            (Llama3Json, "<|python_tag|>get_time()"),
            (Llama3Json, "  <|pyth"),
            (Llama3Json, "[{\"name\": \"get_time\", \"parameters\": {}}]"),
            (Mistral, "[TOOL_CALLS]launch[ARGS]{}"),
            (Mistral, "[TOOL_CALLS]get_time"),
            (Mistral, "[TOOL_CALLS] get time[ARGS]{}"),
            (Mistral, "[TOOL_CALLS]get_time[OOPS]{}"),
            (Mistral, "[TOOL_CALLS] []"),
            (Mistral, "[1, 2] and [TOOL"),
        ] {
            assert!(whole(format, text).1.is_empty(), "{text}");
            for pieces in [vec![text], chars(text)] {
                let r = stream(format, &pieces);
                assert_eq!(r.content, text, "{format:?}");
                assert!(r.calls.is_empty() && !r.ends_with_calls, "{text}: {r:?}");
            }
        }
    }

    #[test]
    fn a_call_sent_stays_sent() {
        // Cut short inside the arguments (a stop string, the budget): what
        // went out stands, and the answer does not end with calls.
        let r = stream(
            Hermes,
            &chars("<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Os"),
        );
        assert_eq!(r.calls, [("get_weather".into(), "{\"city\":\"Os".into())]);
        assert_eq!((r.content.as_str(), r.ends_with_calls), ("", false));
        // Cut inside the block's close: the call is whole, the rest no text.
        let r = stream(
            Hermes,
            &chars("<tool_call>{\"name\": \"get_time\"}\n</tool_"),
        );
        assert_eq!(r.calls, [("get_time".into(), "{}".into())]);
        assert_eq!((r.content.as_str(), r.ends_with_calls), ("", true));
        // Cut short before the arguments.
        let r = stream(Llama3Json, &["{\"name\": \"get_time\""]);
        assert_eq!(r.calls, [("get_time".into(), String::new())]);
        assert!(!r.ends_with_calls);
        // Whole, its object left open: the call stands whole.
        let r = stream(
            Mistral,
            &["[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}"],
        );
        assert_eq!(r.calls, [("get_time".into(), "{}".into())]);
        assert!(r.ends_with_calls);
        // Text after a Llama 3 call, where only another call may come: it
        // goes out as content after the call.
        let r = stream(
            Llama3Json,
            &chars("{\"name\": \"get_time\", \"parameters\": {}} and then some"),
        );
        assert_eq!(r.calls, [("get_time".into(), "{}".into())]);
        assert_eq!(r.content, "and then some");
        // Broken inside the arguments: the rest is text.
        let r = stream(
            Hermes,
            &chars("<tool_call>{\"name\": \"get_time\", \"arguments\": {\"a\": tru}}</tool_call>"),
        );
        assert_eq!(r.calls, [("get_time".into(), "{\"a\":tru".into())]);
        assert_eq!(r.content, "}}</tool_call>");
        assert!(!r.ends_with_calls);
        // A later call of an unknown tool: the earlier one stands, the rest
        // of the list is text.
        let r = stream(
            Mistral,
            &chars("[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}, {\"name\": \"launch\", \"arguments\": {}}]"),
        );
        assert_eq!(r.calls, [("get_time".into(), "{}".into())]);
        assert_eq!(r.content, "{\"name\": \"launch\", \"arguments\": {}}]");
        // A later call the stream cannot follow is read whole, after the
        // first, as its own list.
        let r = stream(
            Mistral,
            &chars("[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}, {\"arguments\": {\"city\": \"Rome\"}, \"name\": \"get_weather\"}]"),
        );
        assert_eq!(
            r.calls,
            [
                ("get_time".into(), "{}".into()),
                ("get_weather".into(), "{\"city\":\"Rome\"}".into())
            ]
        );
        assert_eq!((r.early, r.content.as_str()), (1, ""));
    }

    /// Arguments that cannot stream as written go out at once.
    #[test]
    fn arguments_left_out_null_or_in_a_string() {
        for (format, text, arguments) in [
            (
                Hermes,
                "<tool_call>{\"name\": \"get_time\"}</tool_call>",
                "{}",
            ),
            (
                Hermes,
                "<tool_call>{\"name\": \"get_time\", \"arguments\": null}</tool_call>",
                "{}",
            ),
            (
                Hermes,
                "<tool_call>{\"name\": \"get_time\", \"arguments\": \" \"}</tool_call>",
                "{}",
            ),
            (
                Hermes,
                r#"<tool_call>{"name": "get_time", "arguments": "{\"zone\": \"CET\"}"}</tool_call>"#,
                r#"{"zone":"CET"}"#,
            ),
            (Mistral, "[TOOL_CALLS]get_time[ARGS]null", "{}"),
            (
                Mistral,
                r#"[TOOL_CALLS]get_time[ARGS]"{\"zone\": \"CET\"}""#,
                r#"{"zone":"CET"}"#,
            ),
            (
                Llama3Json,
                "{\"name\": \"get_time\", \"parameters\": null, \"arguments\": \"\"}",
                "{}",
            ),
        ] {
            assert_eq!(
                whole(format, text).1,
                [("get_time".into(), arguments.into())]
            );
            let r = stream(format, &chars(text));
            assert_eq!(r.calls, [("get_time".into(), arguments.into())], "{text}");
            assert_eq!((r.early, r.fragments[0]), (1, 1), "{text}");
        }
    }

    #[test]
    fn parallel_tool_calls_false_streams_only_the_first_call() {
        for (format, text) in [
            (
                Hermes,
                "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call> and <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>",
            ),
            (
                Mistral,
                "[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}, {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]",
            ),
            (
                Llama3Json,
                "{\"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
            ),
            // Read whole at the end, still only the first.
            (
                Hermes,
                "<tool_call>[{\"arguments\": {}, \"name\": \"get_time\"}, {\"name\": \"get_weather\"}]</tool_call>",
            ),
        ] {
            let r = stream_with(format, &chars(text), true);
            assert_eq!(r.calls, [("get_time".into(), "{}".into())], "{text}");
            assert!(r.ends_with_calls);
            assert_eq!(non_empty(&r.content), whole(format, text).0, "{text}");
        }
    }

    /// A call written as `format`'s models write it, its arguments `args`
    /// (JSON text); the name first, or after the arguments.
    fn written(format: ToolCallFormat, name: &str, args: &str, name_first: bool) -> String {
        let key = if format == Llama3Json {
            "parameters"
        } else {
            "arguments"
        };
        let object = if name_first {
            format!("{{\"name\": \"{name}\", \"{key}\": {args}}}")
        } else {
            format!("{{\"{key}\": {args}, \"name\": \"{name}\"}}")
        };
        match format {
            Hermes => format!("<tool_call>\n{object}\n</tool_call>"),
            Llama3Json => object,
            Mistral if name_first => format!("[TOOL_CALLS]{name}[ARGS]{args}"),
            Mistral => format!("[TOOL_CALLS][{object}]"),
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,10}".prop_map(Value::from),
            "[{}\\[\\]\"\\\\:, \n\t/é]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Arguments as JSON text, compact or pretty-printed.
    fn arguments_text() -> impl Strategy<Value = String> {
        (
            proptest::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4),
            any::<bool>(),
        )
            .prop_map(|(m, pretty)| {
                let v = Value::Object(m.into_iter().collect());
                if pretty {
                    serde_json::to_string_pretty(&v).unwrap()
                } else {
                    v.to_string()
                }
            })
    }

    /// Text mixing calls (good, unknown, malformed, arguments first),
    /// partial markers, JSON and multi-byte chars.
    fn tricky_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<tool_call>"),
            Just("</tool_call>"),
            Just("<tool_"),
            Just("<|python_tag|>"),
            Just("[TOOL_CALLS]"),
            Just("[TOOL"),
            Just("[ARGS]"),
            Just("[CALL_ID]x"),
            Just("get_time"),
            Just("["),
            Just("]"),
            Just("{"),
            Just("}"),
            Just(","),
            Just(";"),
            Just("\""),
            Just("{\"name\": \"get_time\", \"arguments\": {\"a\": [1, \"}\"]}}"),
            Just("{\"name\": \"get_time\", \"parameters\": {}}"),
            Just("{\"arguments\": {}, \"name\": \"get_weather\"}"),
            Just("{\"name\": \"launch\", \"arguments\": {}}"),
            Just("{\"name\": \"get_time\", \"arguments\": {\"a\": "),
            Just("\"arguments\": \"{}\""),
            Just(" "),
            Just("\n"),
            Just("é"),
            Just("東"),
            Just("🙂"),
            Just("text"),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    proptest! {
        /// Any arguments, in every format, cut anywhere: the calls put
        /// together are the whole-answer parse's, streamed when the name
        /// comes first, read whole at the end when it does not.
        #[test]
        fn streamed_calls_add_up_to_the_whole_answer(
            format in any_format(),
            before in "[a-zA-Z0-9éü東 ,.!?\n]{0,12}",
            calls in proptest::collection::vec((0..KNOWN.len(), arguments_text(), any::<bool>()), 1..4),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let before = if format == Llama3Json { String::new() } else { before };
            let separator = if format == Llama3Json { "; " } else { "\n" };
            let body: Vec<String> = calls
                .iter()
                .map(|(i, args, name_first)| written(format, KNOWN[*i], args, *name_first))
                .collect();
            let text = format!("{before}{}", body.join(separator));
            let (content, expected) = whole(format, &text);
            prop_assert_eq!(expected.len(), calls.len(), "{}", text);

            let r = stream(format, &cut(&text, &cuts));
            prop_assert_eq!(&r.calls, &expected, "{}", text);
            prop_assert_eq!(non_empty(&r.content), content);
            prop_assert!(r.ends_with_calls);
            // Every call before the first written arguments-first streams.
            let streamable = calls.iter().take_while(|c| c.2).count();
            prop_assert!(r.early >= streamable, "{} {:?}", text, r);
        }

        /// However an answer is cut, what goes out adds up the same; and
        /// an answer that makes no call goes out whole as content.
        #[test]
        fn the_cuts_change_nothing(
            format in any_format(),
            text in tricky_text(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
            first_only in any::<bool>(),
        ) {
            let whole_text = stream_with(format, &[&text], first_only);
            let mut r = stream_with(format, &cut(&text, &cuts), first_only);
            r.fragments.clone_from(&whole_text.fragments);
            r.early = whole_text.early;
            prop_assert_eq!(&r, &whole_text, "{:?}", text);
            if r.calls.is_empty() {
                prop_assert_eq!(&r.content, &text);
            }
            let by_char = stream_with(format, &chars(&text), first_only);
            prop_assert_eq!(&by_char.calls, &r.calls, "{:?}", text);
            prop_assert_eq!(&by_char.content, &r.content);
            for (_, arguments) in &r.calls {
                // What went out is a prefix of JSON text, at least.
                prop_assert!(arguments.starts_with('{') || arguments.is_empty(), "{:?}", text);
            }
        }
    }
}
