//! JSON read one char at a time, for tool calls: what whole answers and
//! streams share (`Compactor`, so both give a call's arguments as the same
//! text), and the lexer with which a stream follows a value to its end.

/// Drops the whitespace between a JSON text's tokens, one char at a time,
/// so that arguments read whole and arguments streamed are the same text.
#[derive(Debug, Default, Clone)]
pub(super) struct Compactor {
    in_string: bool,
    escaped: bool,
}

impl Compactor {
    /// Whether `c`, the next char of a valid JSON text, stays.
    pub(super) fn keep(&mut self, c: char) -> bool {
        if self.in_string {
            match (self.escaped, c) {
                (true, _) => self.escaped = false,
                (false, '\\') => self.escaped = true,
                (false, '"') => self.in_string = false,
                _ => {}
            }
            return true;
        }
        self.in_string = c == '"';
        !is_json_space(c)
    }
}

pub(super) fn compact(json: &str) -> String {
    let mut compactor = Compactor::default();
    json.chars().filter(|&c| compactor.keep(c)).collect()
}

/// Whitespace as JSON has it (narrower than `char::is_whitespace`).
pub(super) fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// A JSON value's raw text, checked as it comes.
#[derive(Debug, Default)]
pub(super) struct Scan {
    lexer: JsonLexer,
    pub(super) raw: String,
}

impl Scan {
    pub(super) fn feed(&mut self, c: char) -> Fed {
        let fed = self.lexer.feed(c);
        if matches!(fed, Fed::Took | Fed::Ended) {
            self.raw.push(c);
        }
        fed
    }
}

/// What one char did to a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fed {
    /// Read; the value goes on.
    Took,
    /// Read, and the value is whole.
    Ended,
    /// The value (a number) was whole before this char, which is not its.
    EndedBefore,
    /// No JSON value goes on so.
    Bad,
}

/// Follows one JSON value char by char with serde_json's syntax, to tell
/// where it ends and that what went by was JSON.
#[derive(Debug, Default)]
pub(super) struct JsonLexer {
    /// The open containers, innermost last: true for an object.
    open: Vec<bool>,
    at: Lex,
}

#[derive(Debug, Clone, Copy, Default)]
enum Lex {
    /// A value must come.
    #[default]
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object.
    Key,
    Colon,
    CommaOrClose,
    Str {
        key: bool,
        escape: Escape,
    },
    Number(Num),
    Literal(&'static str, usize),
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Escape {
    No,
    Backslash,
    /// Hex digits still to come in `\uXXXX`.
    Hex(u8),
}

/// Where a number is: after its sign, a leading zero, integer digits, the
/// point, fraction digits, the `e`, the exponent's sign, exponent digits.
#[derive(Debug, Clone, Copy)]
enum Num {
    Minus,
    Zero,
    Int,
    Point,
    Frac,
    E,
    ExpSign,
    Exp,
}

impl JsonLexer {
    pub(super) fn feed(&mut self, c: char) -> Fed {
        let in_object = self.open.last().copied().unwrap_or(false);
        match self.at {
            Lex::Value | Lex::ValueOrClose if is_json_space(c) => {}
            Lex::ValueOrClose if c == ']' => return self.close(),
            Lex::Value | Lex::ValueOrClose => {
                self.at = match c {
                    '{' => {
                        self.open.push(true);
                        Lex::KeyOrClose
                    }
                    '[' => {
                        self.open.push(false);
                        Lex::ValueOrClose
                    }
                    '"' => Lex::Str {
                        key: false,
                        escape: Escape::No,
                    },
                    '-' => Lex::Number(Num::Minus),
                    '0' => Lex::Number(Num::Zero),
                    '1'..='9' => Lex::Number(Num::Int),
                    't' => Lex::Literal("true", 1),
                    'f' => Lex::Literal("false", 1),
                    'n' => Lex::Literal("null", 1),
                    _ => return Fed::Bad,
                }
            }
            Lex::KeyOrClose | Lex::Key if is_json_space(c) => {}
            Lex::KeyOrClose | Lex::Key if c == '"' => {
                self.at = Lex::Str {
                    key: true,
                    escape: Escape::No,
                }
            }
            Lex::KeyOrClose if c == '}' => return self.close(),
            Lex::KeyOrClose | Lex::Key => return Fed::Bad,
            Lex::Colon if is_json_space(c) => {}
            Lex::Colon if c == ':' => self.at = Lex::Value,
            Lex::Colon => return Fed::Bad,
            Lex::CommaOrClose if is_json_space(c) => {}
            Lex::CommaOrClose if c == ',' => {
                self.at = if in_object { Lex::Key } else { Lex::Value }
            }
            Lex::CommaOrClose if (c == '}' && in_object) || (c == ']' && !in_object) => {
                return self.close()
            }
            Lex::CommaOrClose => return Fed::Bad,
            Lex::Str { key, escape } => {
                let escape = match (escape, c) {
                    (Escape::No, '"') if key => {
                        self.at = Lex::Colon;
                        return Fed::Took;
                    }
                    (Escape::No, '"') => return self.value_end(),
                    (Escape::No, '\\') => Escape::Backslash,
                    (Escape::No, c) if c < ' ' => return Fed::Bad,
                    (Escape::No, _) => Escape::No,
                    (Escape::Backslash, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => {
                        Escape::No
                    }
                    (Escape::Backslash, 'u') => Escape::Hex(4),
                    (Escape::Hex(1), c) if c.is_ascii_hexdigit() => Escape::No,
                    (Escape::Hex(n), c) if c.is_ascii_hexdigit() => Escape::Hex(n - 1),
                    _ => return Fed::Bad,
                };
                self.at = Lex::Str { key, escape };
            }
            Lex::Number(n) => {
                let next = match (n, c) {
                    (Num::Minus, '0') => Num::Zero,
                    (Num::Minus | Num::Int, '0'..='9') => Num::Int,
                    (Num::Zero | Num::Int, '.') => Num::Point,
                    (Num::Point | Num::Frac, '0'..='9') => Num::Frac,
                    (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') => Num::E,
                    (Num::E, '+' | '-') => Num::ExpSign,
                    (Num::E | Num::ExpSign | Num::Exp, '0'..='9') => Num::Exp,
                    (Num::Zero | Num::Int | Num::Frac | Num::Exp, _) => {
                        // The number ended before `c`, which belongs to
                        // what follows it.
                        return match self.value_end() {
                            Fed::Ended => Fed::EndedBefore,
                            _ => self.feed(c),
                        };
                    }
                    _ => return Fed::Bad,
                };
                self.at = Lex::Number(next);
            }
            Lex::Literal(word, i) => {
                if !c.is_ascii() || word.as_bytes().get(i) != Some(&(c as u8)) {
                    return Fed::Bad;
                }
                if i + 1 == word.len() {
                    return self.value_end();
                }
                self.at = Lex::Literal(word, i + 1);
            }
            Lex::Done => return Fed::Bad,
        }
        Fed::Took
    }

    fn close(&mut self) -> Fed {
        self.open.pop();
        self.value_end()
    }

    fn value_end(&mut self) -> Fed {
        if self.open.is_empty() {
            self.at = Lex::Done;
            Fed::Ended
        } else {
            self.at = Lex::CommaOrClose;
            Fed::Took
        }
    }
}
