//! Stop strings over streamed text.
//!
//! Invariants: no emitted text ever contains a stop string or ends with a
//! prefix of one that later completes; text is only split on char
//! boundaries; the concatenation of all emitted text is the generated text up
//! to (not including) the first stop string, or all of it when none matched.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text that is safe to send now (may be empty while a prefix is held).
    Continue(String),
    /// A stop string completed; this is the last text to send, without it.
    Stopped(String),
}

#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Byte length of the longest stop: only that tail of the text can still
    /// grow into one.
    max_stop_len: usize,
    /// A suffix of the text seen so far that is a proper prefix of a stop.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty strings are ignored: they would stop before the first token.
    pub fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher {
            max_stop_len: stops.iter().map(String::len).max().unwrap_or(0),
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    /// Once stopped, every later push returns `Stopped("")`.
    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Stopped(String::new());
        }
        let mut text = std::mem::take(&mut self.held);
        text.push_str(delta);

        if let Some(at) = self.first_stop(&text) {
            self.stopped = true;
            text.truncate(at);
            return StopOutcome::Stopped(text);
        }
        let keep_from = self.held_suffix_start(&text);
        self.held = text.split_off(keep_from);
        StopOutcome::Continue(text)
    }

    /// Generation ended for another reason: release the held text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Byte offset of the earliest stop occurrence; the earliest, not the
    /// first listed, so no text after any stop leaks.
    fn first_stop(&self, text: &str) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
    }

    /// Start of the longest suffix of `text` that could still grow into a
    /// stop; `text.len()` when there is none.
    fn held_suffix_start(&self, text: &str) -> usize {
        let earliest = text.len().saturating_sub(self.max_stop_len);
        text.char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= earliest)
            .find(|&i| {
                let suffix = text.get(i..).unwrap_or_default();
                self.stops.iter().any(|s| s.starts_with(suffix))
            })
            .unwrap_or(text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StopOutcome::{Continue, Stopped};

    fn run(stops: &[&str], deltas: &[&str]) -> Vec<StopOutcome> {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        deltas.iter().map(|d| matcher.push(d)).collect()
    }

    fn cont(s: &str) -> StopOutcome {
        Continue(s.into())
    }

    fn stopped(s: &str) -> StopOutcome {
        Stopped(s.into())
    }

    struct Case {
        name: &'static str,
        stops: &'static [&'static str],
        deltas: &'static [&'static str],
        expected: Vec<StopOutcome>,
    }

    #[test]
    fn table() {
        let cases: &[Case] = &[
            Case {
                name: "never emits a partial stop",
                stops: &["END"],
                deltas: &["abc E", "N", "D more"],
                expected: vec![cont("abc "), cont(""), stopped("")],
            },
            Case {
                name: "releases a prefix that was not a stop",
                stops: &["END"],
                deltas: &["abc E", "x"],
                expected: vec![cont("abc "), cont("Ex")],
            },
            Case {
                name: "stop inside one delta drops the rest",
                stops: &["END"],
                deltas: &["abcENDdef"],
                expected: vec![stopped("abc")],
            },
            Case {
                name: "stop spanning three deltas",
                stops: &["STOP"],
                deltas: &["xS", "T", "O", "Py"],
                expected: vec![cont("x"), cont(""), cont(""), stopped("")],
            },
            Case {
                name: "stop at the very start",
                stops: &["###"],
                deltas: &["###", "more"],
                expected: vec![stopped(""), stopped("")],
            },
            Case {
                name: "earliest of several stops wins",
                stops: &["world", "lo w"],
                deltas: &["hello world"],
                expected: vec![stopped("hel")],
            },
            Case {
                name: "overlapping prefixes: longest possible suffix is held",
                stops: &["aab"],
                deltas: &["xaa", "ab"],
                expected: vec![cont("x"), stopped("a")],
            },
            Case {
                name: "one stop's prefix completes another stop",
                stops: &["abcd", "bc"],
                deltas: &["ab", "c"],
                expected: vec![cont(""), stopped("a")],
            },
            Case {
                name: "prefix broken then restarted",
                stops: &["<|end|>"],
                deltas: &["a<|e", "x<|", "end|>"],
                expected: vec![cont("a"), cont("<|ex"), stopped("")],
            },
            Case {
                name: "multibyte characters around the stop",
                stops: &["日本"],
                deltas: &["é日", "本ü"],
                expected: vec![cont("é"), stopped("")],
            },
            Case {
                name: "multibyte stop prefix is held whole",
                stops: &["🎉!"],
                deltas: &["ok🎉", "?"],
                expected: vec![cont("ok"), cont("🎉?")],
            },
            Case {
                name: "no stops passes everything through",
                stops: &[],
                deltas: &["a", "b"],
                expected: vec![cont("a"), cont("b")],
            },
            Case {
                name: "empty stop strings are ignored",
                stops: &[""],
                deltas: &["a"],
                expected: vec![cont("a")],
            },
        ];
        for case in cases {
            assert_eq!(run(case.stops, case.deltas), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn finish_releases_held_text() {
        let mut matcher = StopMatcher::new(vec!["END".into()]);
        assert_eq!(matcher.push("abc EN"), cont("abc "));
        assert_eq!(matcher.finish(), "EN");
        assert_eq!(matcher.finish(), "");
    }

    #[test]
    fn finish_after_stop_is_empty() {
        let mut matcher = StopMatcher::new(vec!["E".into()]);
        assert_eq!(matcher.push("aEb"), stopped("a"));
        assert_eq!(matcher.finish(), "");
    }

    #[test]
    fn emitted_text_never_contains_or_splits_a_stop() {
        // Every way of cutting the text into two or three deltas must give
        // the same output as seeing it whole.
        let text = "xx日本語ENDyy";
        let stops = ["END".to_string(), "本語Z".to_string()];
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        for &a in &bounds {
            for &b in bounds.iter().filter(|&&b| b >= a) {
                let mut matcher = StopMatcher::new(stops.to_vec());
                let mut out = String::new();
                let mut done = false;
                for delta in [&text[..a], &text[a..b], &text[b..]] {
                    match matcher.push(delta) {
                        Continue(s) => out.push_str(&s),
                        Stopped(s) => {
                            out.push_str(&s);
                            done = true;
                            break;
                        }
                    }
                }
                assert!(done, "cut at {a},{b}");
                assert_eq!(out, "xx日本語", "cut at {a},{b}");
            }
        }
    }
}
