//! Incremental server-sent-events parser for streamed completions.
//!
//! Body chunks are fed as they arrive from the upstream; they may split
//! anywhere (inside a field name, the JSON, a UTF-8 character, a `\r\n`).
//! Lines and events follow the WHATWG `text/event-stream` grammar: lines end
//! in `\n`, `\r\n` or `\r`, an event ends at a blank line, `data:` lines are
//! joined with `\n`, comments and other fields are ignored. (A leading BOM is
//! not stripped: model servers do not send one.)
//!
//! Invariants:
//! - State is bounded: at most one event (its partial line, its data and, in
//!   strip mode, its raw bytes) is buffered, each at most `max_event_bytes`.
//!   A larger event is not inspected and, in strip mode, forwarded unchanged.
//! - Without stripping, the stream is never copied: only completed events are
//!   looked at, and an event that lies inside one chunk is parsed in place.
//! - With stripping, the output is the input minus the usage-only event(s)
//!   and minus `usage` in events that also carry choices; every other byte is
//!   forwarded unchanged and in order, whatever the chunking.

use serde_json::value::RawValue;

use crate::openai::request::{object_fields, Keys};
use crate::openai::usage::Usage;

/// Observes usage in a streamed completion and, in strip mode, removes it
/// from what the client receives.
/// Whether a `content-type` value is an event stream's.
pub fn is_event_stream(content_type: &str) -> bool {
    content_type
        .trim_start()
        .get(..17)
        .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
}

#[derive(Debug)]
pub struct SseUsageParser {
    strip: bool,
    max_event_bytes: usize,
    /// The current line so far, when it started in an earlier chunk.
    line: Vec<u8>,
    /// A line has started and not ended (its bytes are in `line` unless the
    /// event is oversized).
    in_line: bool,
    /// Data of the current event (values joined with `\n`), when it could not
    /// be read in place from a single chunk.
    data: Vec<u8>,
    /// The current event has at least one `data` line (its data is in `data`).
    has_data: bool,
    /// Bytes of the current event so far, excluding its final blank line.
    event_bytes: usize,
    /// The current event outgrew `max_event_bytes`: it is skipped (and in
    /// strip mode its bytes are forwarded as they arrive).
    oversized: bool,
    /// Strip mode: bytes of the current event held back until it completes.
    held: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting this one is the rest
    /// of that line ending.
    pending_lf: PendingLf,
    usage: Option<Usage>,
    content_events: u64,
    /// Bytes of generated text in those events (what a cut stream is
    /// charged by when it never reports usage).
    text_bytes: u64,
    saw_done: bool,
}

/// Where the `\n` of a `\r\n` split across chunks belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingLf {
    None,
    /// Ended a line inside the current event.
    InEvent,
    /// Ended an event that was forwarded: forward it too.
    Forward,
    /// Ended an event that was removed: remove it too.
    Drop,
}

/// Where the current event's data is, while a chunk is being scanned.
#[derive(Debug, Clone, Copy)]
enum Data {
    None,
    /// One `data` value, in place in the chunk.
    InChunk {
        start: usize,
        end: usize,
    },
    /// In `SseUsageParser::data`.
    Buffered,
}

/// What happens to a completed event in strip mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Forward,
    Remove,
    /// Forward with `usage` removed from its data.
    StripUsage,
}

impl SseUsageParser {
    /// `strip_usage`: remove usage from what the client receives (the gateway
    /// forced `include_usage` upstream). `max_event_bytes`: the largest event
    /// that is buffered and inspected.
    pub fn new(strip_usage: bool, max_event_bytes: usize) -> Self {
        SseUsageParser {
            strip: strip_usage,
            max_event_bytes,
            line: Vec::new(),
            in_line: false,
            data: Vec::new(),
            has_data: false,
            event_bytes: 0,
            oversized: false,
            held: Vec::new(),
            pending_lf: PendingLf::None,
            usage: None,
            content_events: 0,
            text_bytes: 0,
            saw_done: false,
        }
    }

    /// Feeds the next chunk of the response body exactly as it arrived.
    ///
    /// Without stripping, returns `None`: the chunk is forwarded untouched by
    /// the caller and only observed here. With stripping, returns the bytes to
    /// forward in place of this chunk (a complete event may be held back
    /// until its end arrives).
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        if self.strip {
            let mut out = Vec::with_capacity(chunk.len().saturating_add(self.held.len()));
            self.scan(chunk, Some(&mut out));
            Some(out)
        } else {
            self.scan(chunk, None);
            None
        }
    }

    /// Ends the stream: a final event without its blank line is handled as if
    /// it had one. In strip mode, returns the held-back bytes to forward.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        if !self.oversized {
            if self.in_line {
                let line = std::mem::take(&mut self.line);
                if let Some(value) = data_value(&line) {
                    self.push_data(value);
                }
                self.line = line;
            }
            let action = if self.has_data {
                let data = std::mem::take(&mut self.data);
                let action = self.dispatch(&data);
                self.data = data;
                action
            } else {
                Action::Forward
            };
            if self.strip {
                let held = std::mem::take(&mut self.held);
                self.emit(action, &held, &mut out);
                self.held = held;
            }
        }
        // An oversized event was forwarded as it arrived; nothing is held.
        self.end_event();
        self.in_line = false;
        self.line.clear();
        self.pending_lf = PendingLf::None;
        self.strip.then_some(out)
    }

    /// Strip mode: bytes of an unfinished event are held back, which a later
    /// chunk or [`Self::finish`] will emit (or remove).
    pub fn holds_back(&self) -> bool {
        !self.held.is_empty()
    }

    /// Usage from the last event whose data carried a non-null `usage` object.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Data events with a non-empty `choices` array, and Responses API
    /// `….delta` events.
    pub fn content_events(&self) -> u64 {
        self.content_events
    }

    /// Bytes of generated text seen so far (see [`generated_text_bytes`]).
    pub fn text_bytes(&self) -> u64 {
        self.text_bytes
    }

    /// Whether `data: [DONE]` was seen.
    pub fn saw_done(&self) -> bool {
        self.saw_done
    }

    fn scan(&mut self, chunk: &[u8], mut out: Option<&mut Vec<u8>>) {
        if chunk.is_empty() {
            // Nothing to read, and a `\r` pending from the chunk before
            // still waits for the `\n` that may start the next one (an
            // empty chunk must not make that `\n` a blank line).
            return;
        }
        // `chunk[seg..pos]` belongs to the current event and is neither in
        // `held` nor forwarded yet (strip mode).
        let mut pos = 0;
        let mut seg = 0;
        let mut data = if self.has_data {
            Data::Buffered
        } else {
            Data::None
        };

        match std::mem::replace(&mut self.pending_lf, PendingLf::None) {
            PendingLf::None => {}
            pending => {
                if chunk.first() == Some(&b'\n') {
                    pos = 1;
                    match pending {
                        PendingLf::Forward => {
                            if let Some(out) = out.as_deref_mut() {
                                out.push(b'\n');
                            }
                            seg = 1;
                        }
                        PendingLf::Drop => seg = 1,
                        // Part of the current event (and counted as such).
                        PendingLf::InEvent | PendingLf::None => {
                            if self.grow(1) {
                                seg = self.overflow(chunk, seg, 1, &mut out, &mut data);
                            }
                        }
                    }
                }
            }
        }

        while let Some(rest) = chunk.get(pos..).filter(|rest| !rest.is_empty()) {
            let Some(len) = find_line_end(rest) else {
                // A line continues into the next chunk.
                self.in_line = true;
                if self.grow(rest.len()) {
                    seg = self.overflow(chunk, seg, chunk.len(), &mut out, &mut data);
                } else if !self.oversized {
                    self.line.extend_from_slice(rest);
                }
                break;
            };
            let end = pos.saturating_add(len);
            let next_byte = chunk.get(end.saturating_add(1)).copied();
            let (terminator, split_crlf) = match (chunk.get(end), next_byte) {
                (Some(b'\r'), Some(b'\n')) => (2, false),
                (Some(b'\r'), None) => (1, true),
                _ => (1, false),
            };
            let next = end.saturating_add(terminator);

            if len == 0 && !self.in_line {
                // Blank line: the event is complete.
                let action = if self.oversized {
                    Action::Forward
                } else {
                    match data {
                        Data::None => Action::Forward,
                        Data::InChunk { start, end } => {
                            self.dispatch(chunk.get(start..end).unwrap_or_default())
                        }
                        Data::Buffered => {
                            let data = std::mem::take(&mut self.data);
                            let action = self.dispatch(&data);
                            self.data = data;
                            action
                        }
                    }
                };
                if let Some(out) = out.as_deref_mut() {
                    let tail = chunk.get(seg..next).unwrap_or_default();
                    if self.held.is_empty() {
                        self.emit(action, tail, out);
                    } else {
                        let mut held = std::mem::take(&mut self.held);
                        held.extend_from_slice(tail);
                        self.emit(action, &held, out);
                        held.clear();
                        self.held = held;
                    }
                }
                if split_crlf {
                    self.pending_lf = if action == Action::Remove {
                        PendingLf::Drop
                    } else {
                        PendingLf::Forward
                    };
                }
                self.end_event();
                data = Data::None;
                seg = next;
                pos = next;
                continue;
            }

            // A complete non-blank line: `rest[..len]`, preceded by `self.line`
            // when it started in an earlier chunk.
            if self.grow(next.saturating_sub(pos)) {
                seg = self.overflow(chunk, seg, next, &mut out, &mut data);
            } else if !self.oversized {
                let line = chunk.get(pos..end).unwrap_or_default();
                if self.in_line {
                    let mut carried = std::mem::take(&mut self.line);
                    carried.extend_from_slice(line);
                    if let Some(value) = data_value(&carried) {
                        self.append_data(&mut data, chunk, value);
                    }
                    carried.clear();
                    self.line = carried;
                } else if let Some(value) = data_value(line) {
                    let start = end.saturating_sub(value.len());
                    match data {
                        // The common case: read in place at the blank line.
                        Data::None => data = Data::InChunk { start, end },
                        _ => self.append_data(&mut data, chunk, value),
                    }
                }
            }
            self.in_line = false;
            if split_crlf {
                self.pending_lf = PendingLf::InEvent;
            }
            pos = next;
        }

        // The chunk ends inside an event: keep what is needed for the next one.
        self.buffer_data(&mut data, chunk);
        let tail = chunk.get(seg..).unwrap_or_default();
        match out {
            Some(out) if self.oversized => out.extend_from_slice(tail),
            Some(_) => self.held.extend_from_slice(tail),
            None => {}
        }
    }

    /// Counts `bytes` more into the current event; true when that makes it
    /// oversized (it was not before).
    fn grow(&mut self, bytes: usize) -> bool {
        self.event_bytes = self.event_bytes.saturating_add(bytes);
        !self.oversized && self.event_bytes > self.max_event_bytes
    }

    /// The current event just became oversized: drop what was buffered for
    /// it and, in strip mode, forward its bytes so far (up to `upto`).
    /// Returns the new start of the unforwarded segment.
    fn overflow(
        &mut self,
        chunk: &[u8],
        seg: usize,
        upto: usize,
        out: &mut Option<&mut Vec<u8>>,
        data: &mut Data,
    ) -> usize {
        self.oversized = true;
        self.line.clear();
        self.data.clear();
        self.has_data = false;
        *data = Data::None;
        match out.as_deref_mut() {
            Some(out) => {
                out.extend_from_slice(&self.held);
                self.held.clear();
                out.extend_from_slice(chunk.get(seg..upto).unwrap_or_default());
                upto
            }
            None => seg,
        }
    }

    /// Moves data read in place into `self.data` (before appending to it, or
    /// when the chunk ends).
    fn buffer_data(&mut self, data: &mut Data, chunk: &[u8]) {
        match *data {
            Data::None => {}
            Data::Buffered => self.has_data = true,
            Data::InChunk { start, end } => {
                self.data.clear();
                self.data
                    .extend_from_slice(chunk.get(start..end).unwrap_or_default());
                self.has_data = true;
            }
        }
        if self.has_data {
            *data = Data::Buffered;
        }
    }

    /// Appends one `data` value to the current event's data, buffering it.
    fn append_data(&mut self, data: &mut Data, chunk: &[u8], value: &[u8]) {
        self.buffer_data(data, chunk);
        self.push_data(value);
        *data = Data::Buffered;
    }

    /// Appends one `data` value to the buffered data.
    fn push_data(&mut self, value: &[u8]) {
        if self.has_data {
            self.data.push(b'\n');
        } else {
            self.data.clear();
        }
        self.data.extend_from_slice(value);
        self.has_data = true;
    }

    fn end_event(&mut self) {
        self.data.clear();
        self.has_data = false;
        self.held.clear();
        self.event_bytes = 0;
        self.oversized = false;
    }

    /// Records what a complete event says and decides its fate in strip mode.
    fn dispatch(&mut self, data: &[u8]) -> Action {
        if data.trim_ascii() == b"[DONE]" {
            self.saw_done = true;
            return Action::Forward;
        }
        let Ok(fields) = object_fields(data, &EVENT_FIELDS, Keys::Exact) else {
            return Action::Forward;
        };
        let [choices, usage, error, kind, response, delta] = fields.values;
        if kind.is_some_and(|kind| kind.get().starts_with(r#""response."#)) {
            self.responses_event(kind, response, delta);
            return Action::Forward;
        }
        let choices = choices.filter(|raw| non_empty_array(raw));
        let has_choices = choices.is_some();
        if let Some(choices) = choices {
            self.content_events = self.content_events.saturating_add(1);
            self.text_bytes = self
                .text_bytes
                .saturating_add(generated_text_bytes(choices));
        }
        let Some(usage) = usage.filter(|raw| raw.get() != "null") else {
            return Action::Forward;
        };
        // Usage the client did not ask for: an event that is only usage
        // (choices empty or absent) goes; one that also carries choices, or
        // an error the client must see, stays without its usage.
        if let Some(usage) = Usage::from_raw(usage) {
            self.usage = Some(usage);
        }
        let has_error = error.is_some_and(|raw| raw.get() != "null");
        if has_choices || has_error {
            Action::StripUsage
        } else {
            Action::Remove
        }
    }

    /// A Responses API event: each `response.….delta` is generated text (a
    /// message's, the thinking's, a call's arguments); the usage comes with
    /// the response that ends the stream (`response.completed`,
    /// `response.incomplete`, `response.failed`), and is never taken out:
    /// the API always sends it.
    fn responses_event(
        &mut self,
        kind: Option<&RawValue>,
        response: Option<&RawValue>,
        delta: Option<&RawValue>,
    ) {
        let is_delta = kind.is_some_and(|k| k.get().ends_with(r#".delta""#));
        if let Some(delta) = delta.filter(|_| is_delta) {
            self.content_events = self.content_events.saturating_add(1);
            // A delta that is not a string counts its JSON, an upper bound.
            let bytes = serde_json::from_str::<std::borrow::Cow<'_, str>>(delta.get())
                .map_or(delta.get().len(), |text| text.len());
            self.text_bytes = self.text_bytes.saturating_add(bytes as u64);
        }
        let usage = response
            .and_then(|r| object_fields(r.get().as_bytes(), &["usage"], Keys::Exact).ok())
            .and_then(|f| f.values[0])
            .and_then(Usage::from_raw);
        if usage.is_some() {
            self.usage = usage;
        }
    }

    /// Writes a complete event (`raw`, including its blank line) to `out`.
    fn emit(&self, action: Action, raw: &[u8], out: &mut Vec<u8>) {
        match action {
            Action::Forward => out.extend_from_slice(raw),
            Action::Remove => {}
            Action::StripUsage => {
                let data = self.event_data(raw);
                let mut json = Vec::with_capacity(data.len());
                if without_usage(&data, &mut json).is_ok() {
                    replace_data(raw, &json, out);
                } else {
                    out.extend_from_slice(raw);
                }
            }
        }
    }

    /// The data of a complete raw event (rare path: events being rewritten).
    fn event_data(&self, raw: &[u8]) -> Vec<u8> {
        let mut data: Vec<u8> = Vec::new();
        let mut first = true;
        for (line, _) in Lines(raw) {
            if let Some(value) = data_value(line) {
                if !first {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                first = false;
            }
        }
        data
    }
}

/// The fields of an event's data that are read: a chat or completions
/// chunk's `choices`, `usage` and `error`; a Responses API event's `type`,
/// `response` and `delta`.
const EVENT_FIELDS: [&str; 6] = ["choices", "usage", "error", "type", "response", "delta"];

/// Index of the first `\n` or `\r` in `bytes`. The scan runs over every
/// byte of the stream, so it looks at eight bytes per step (SWAR) instead of
/// one; it is several times faster than a byte loop on 150-byte chunks.
fn find_line_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = ONES * b'\n' as u64;
    const CR: u64 = ONES * b'\r' as u64;
    // High bit set in each byte of `x` that is zero; the lowest set bit marks
    // the first zero byte exactly (borrows only spill into higher bytes).
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut offset = 0usize;
    let mut rest = bytes;
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        let word = u64::from_le_bytes(*word);
        let found = zero_bytes(word ^ LF) | zero_bytes(word ^ CR);
        if found != 0 {
            return Some(offset.saturating_add(found.trailing_zeros() as usize / 8));
        }
        offset = offset.saturating_add(8);
        rest = tail;
    }
    rest.iter()
        .position(|b| matches!(b, b'\n' | b'\r'))
        .map(|i| offset.saturating_add(i))
}

/// The value of a `data` line (after `data:` and one optional space), or
/// `None` for any other line.
fn data_value(line: &[u8]) -> Option<&[u8]> {
    let value = match line.strip_prefix(b"data") {
        Some([]) => return Some(&[]),
        Some([b':', value @ ..]) => value,
        _ => return None,
    };
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

/// `raw` (valid JSON) is an array with at least one element.
fn non_empty_array(raw: &RawValue) -> bool {
    match raw.get().strip_prefix('[') {
        Some(inner) => !inner.trim_start().starts_with(']'),
        None => false,
    }
}

/// The generated text in a chunk's `choices`, in bytes (decoded from JSON):
/// chat `delta.content`, `delta.reasoning_content`, `delta.refusal` and
/// each tool call's function name and arguments; completions' `text`.
/// Choices of another shape count their raw JSON length, an upper bound,
/// so an unexpected shape cannot make a cut stream cheaper.
pub fn generated_text_bytes(choices: &RawValue) -> u64 {
    use std::borrow::Cow;

    #[derive(serde::Deserialize)]
    struct Choice<'a> {
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        delta: Option<Delta<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Delta<'a> {
        #[serde(borrow, default)]
        content: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        reasoning_content: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        refusal: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        tool_calls: Option<Vec<ToolCall<'a>>>,
    }
    #[derive(serde::Deserialize)]
    struct ToolCall<'a> {
        #[serde(borrow, default)]
        function: Option<Function<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Function<'a> {
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        arguments: Option<Cow<'a, str>>,
    }

    let len = |s: &Option<Cow<'_, str>>| s.as_deref().map_or(0, str::len) as u64;
    let Ok(choices) = serde_json::from_str::<Vec<Choice<'_>>>(choices.get()) else {
        return choices.get().len() as u64;
    };
    choices
        .iter()
        .map(|choice| {
            let delta = choice.delta.as_ref().map_or(0, |d| {
                let calls = d
                    .tool_calls
                    .iter()
                    .flatten()
                    .filter_map(|c| c.function.as_ref());
                len(&d.content)
                    + len(&d.reasoning_content)
                    + len(&d.refusal)
                    + calls.map(|f| len(&f.name) + len(&f.arguments)).sum::<u64>()
            });
            len(&choice.text) + delta
        })
        .sum()
}

/// Splits a complete raw event into lines and their terminators.
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let len = find_line_end(self.0).unwrap_or(self.0.len());
        let terminator = match self.0.get(len..) {
            Some([b'\r', b'\n', ..]) => 2,
            Some([_, ..]) => 1,
            _ => 0,
        };
        let (line, rest) = self.0.split_at_checked(len)?;
        let (terminator, rest) = rest.split_at_checked(terminator)?;
        self.0 = rest;
        Some((line, terminator))
    }
}

/// Copies the event `raw` to `out` with its data replaced by `json`: the
/// first `data` line becomes `json` (one `data` line per line of `json`),
/// later `data` lines are dropped, other lines are kept as they were.
fn replace_data(raw: &[u8], json: &[u8], out: &mut Vec<u8>) {
    let mut replaced = false;
    for (line, terminator) in Lines(raw) {
        if data_value(line).is_none() {
            out.extend_from_slice(line);
            out.extend_from_slice(terminator);
            continue;
        }
        if replaced {
            continue;
        }
        replaced = true;
        let separator: &[u8] = if terminator.is_empty() {
            b"\n"
        } else {
            terminator
        };
        // JSON whitespace may hold line breaks; each piece gets its own line,
        // which the client joins back with `\n` (equivalent whitespace).
        let mut pieces = Lines(json).peekable();
        while let Some((piece, _)) = pieces.next() {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(piece);
            if pieces.peek().is_some() {
                out.extend_from_slice(separator);
            }
        }
        out.extend_from_slice(terminator);
    }
}

/// Writes the JSON object `data` without its top-level `usage` entries.
/// Other keys and values are copied as they were (raw), in order.
fn without_usage(data: &[u8], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};

    struct Filter<'o>(&'o mut Vec<u8>);

    impl<'de> Visitor<'de> for Filter<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.0.push(b'{');
            let mut first = true;
            while let Some(key) = map.next_key::<&'de RawValue>()? {
                let value = map.next_value::<&'de RawValue>()?;
                if is_usage_key(key) {
                    continue;
                }
                if !first {
                    self.0.push(b',');
                }
                first = false;
                self.0.extend_from_slice(key.get().as_bytes());
                self.0.push(b':');
                self.0.extend_from_slice(value.get().as_bytes());
            }
            self.0.push(b'}');
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_slice(data);
    de.deserialize_map(Filter(out))?;
    de.end()
}

fn is_usage_key(raw_key: &RawValue) -> bool {
    let key = raw_key.get();
    key == r#""usage""#
        || (key.contains('\\') && serde_json::from_str::<String>(key).is_ok_and(|k| k == "usage"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
