//! A reasoning model's thinking, apart from its answer: Qwen 3 and
//! DeepSeek-R1's distills write `<think>…</think>` before the answer, and
//! clients (and anything that parses `content` as JSON or for a ReAct
//! step) want the answer alone. As llama.cpp's default (`--reasoning-format
//! auto`) and vLLM's `qwen3`/`deepseek_r1` reasoning parsers do, the text
//! inside goes out as `reasoning_content`, the rest as `content`.
//!
//! An answer thinks only if it opens with `<think>` (after whitespace), or
//! if the prompt already opened it (DeepSeek-R1's templates end the
//! generation prompt with `<think>\n`). Whitespace after `</think>` is
//! dropped. An answer cut inside its thinking has only reasoning.
//!
//! Streaming gives the same split whatever the chunking: text that may be
//! the start of a tag is held until it is known not to be.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Reasoning(String),
    Content(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: it may still open with `<think>`.
    Opening,
    Thinking,
    /// Right after `</think>`: whitespace is dropped.
    Closed,
    Answering,
}

/// Splits one answer as it streams (see the module).
#[derive(Debug)]
pub struct ReasoningSplit {
    state: State,
    /// Text not yet sent: whitespace and a possible `<think>` while
    /// opening, a possible `</think>` while thinking.
    held: String,
}

/// Whether a rendered prompt leaves the answer inside its thinking.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

impl ReasoningSplit {
    pub fn new(inside: bool) -> Self {
        Self {
            state: if inside {
                State::Thinking
            } else {
                State::Opening
            },
            held: String::new(),
        }
    }

    /// The pieces `text` lets go out now.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Opening => {
                    let rest = self.held.trim_start();
                    if let Some(after) = rest.strip_prefix(OPEN) {
                        self.held = after.to_string();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(rest) {
                        // Whitespace, or a beginning of `<think>`: wait.
                        return out;
                    } else {
                        self.state = State::Answering;
                    }
                }
                State::Thinking => {
                    if let Some(at) = self.held.find(CLOSE) {
                        let thought: String = self.held.drain(..at + CLOSE.len()).collect();
                        push(&mut out, Piece::Reasoning(thought[..at].to_string()));
                        self.state = State::Closed;
                    } else {
                        // All but a suffix that may begin `</think>`.
                        let keep = partial_suffix(&self.held, CLOSE);
                        let sent: String = self.held.drain(..self.held.len() - keep).collect();
                        push(&mut out, Piece::Reasoning(sent));
                        return out;
                    }
                }
                State::Closed => {
                    let rest = self.held.trim_start();
                    if rest.is_empty() {
                        self.held.clear();
                        return out;
                    }
                    self.held = rest.to_string();
                    self.state = State::Answering;
                }
                State::Answering => {
                    push(&mut out, Piece::Content(std::mem::take(&mut self.held)));
                    return out;
                }
            }
        }
    }

    /// What was held at the answer's end: a partial tag is text after all.
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        match self.state {
            State::Thinking => push(&mut out, Piece::Reasoning(held)),
            State::Opening | State::Answering => push(&mut out, Piece::Content(held)),
            State::Closed => {}
        }
        out
    }
}

/// A whole answer split: its reasoning (`None` when it did not think) and
/// its content.
pub fn split(text: &str, inside: bool) -> (Option<String>, String) {
    let mut split = ReasoningSplit::new(inside);
    let mut pieces = split.push(text);
    pieces.extend(split.finish());
    let mut reasoning: Option<String> = None;
    let mut content = String::new();
    for piece in pieces {
        match piece {
            Piece::Reasoning(r) => reasoning.get_or_insert_with(String::new).push_str(&r),
            Piece::Content(c) => content.push_str(&c),
        }
    }
    if reasoning.is_none() && (inside || matches!(split.state, State::Thinking | State::Closed)) {
        reasoning = Some(String::new());
    }
    (reasoning, content)
}

/// Adds `piece` unless it is empty text.
fn push(out: &mut Vec<Piece>, piece: Piece) {
    let empty = match &piece {
        Piece::Reasoning(t) | Piece::Content(t) => t.is_empty(),
    };
    if !empty {
        out.push(piece);
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of
/// `tag` (a tag that may be completed by the next text).
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| {
            text.len() >= n
                && text.is_char_boundary(text.len() - n)
                && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn thinking_and_answer_are_apart() {
        let cases = [
            // (answer, opened by the prompt) → (reasoning, content)
            (
                "<think>\nLet me see.\n</think>\n\nParis.",
                false,
                Some("\nLet me see.\n"),
                "Paris.",
            ),
            ("  <think>a</think>b", false, Some("a"), "b"),
            ("Paris.", false, None, "Paris."),
            ("  Paris.", false, None, "  Paris."),
            // Opened by the prompt: everything up to `</think>` thinks.
            ("Hmm.</think>\n\nParis.", true, Some("Hmm."), "Paris."),
            // Cut inside its thinking: reasoning only.
            ("<think>Still thinking", false, Some("Still thinking"), ""),
            // A tag elsewhere is text.
            ("I <think> so", false, None, "I <think> so"),
            ("<think></think>", false, Some(""), ""),
            ("<think>", false, Some(""), ""),
            ("<thin", false, None, "<thin"),
        ];
        for (text, inside, reasoning, content) in cases {
            let (r, c) = split(text, inside);
            assert_eq!(r.as_deref(), reasoning, "{text:?}");
            assert_eq!(c, content, "{text:?}");
        }
    }

    #[test]
    fn a_prompt_that_ends_in_think_opens_it() {
        assert!(prompt_opens_thinking("<|Assistant|><think>\n"));
        assert!(!prompt_opens_thinking("<|im_start|>assistant\n"));
        assert!(!prompt_opens_thinking(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
    }

    proptest! {
        /// Streamed in any chunks, an answer splits as it does whole.
        #[test]
        fn any_chunking_splits_as_the_whole(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("<think>".to_string()), Just("</think>".to_string()),
                    Just("<".to_string()), Just("</thi".to_string()), Just(" \n".to_string()),
                    "[a-z é]{0,6}",
                ],
                0..10,
            ),
            cuts in proptest::collection::vec(0usize..64, 0..8),
            inside in any::<bool>(),
        ) {
            let text: String = parts.concat();
            let (reasoning, content) = split(&text, inside);
            let mut chunks = Vec::new();
            let mut at = 0;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            for cut in cuts {
                if cut >= at && text.is_char_boundary(cut) {
                    chunks.push(&text[at..cut]);
                    at = cut;
                }
            }
            chunks.push(&text[at..]);
            let mut s = ReasoningSplit::new(inside);
            let mut pieces = Vec::new();
            for chunk in chunks {
                pieces.extend(s.push(chunk));
            }
            pieces.extend(s.finish());
            let streamed_reasoning: String = pieces.iter().filter_map(|p| match p {
                Piece::Reasoning(r) => Some(r.as_str()),
                Piece::Content(_) => None,
            }).collect();
            let streamed_content: String = pieces.iter().filter_map(|p| match p {
                Piece::Content(c) => Some(c.as_str()),
                Piece::Reasoning(_) => None,
            }).collect();
            prop_assert_eq!(streamed_reasoning, reasoning.unwrap_or_default());
            prop_assert_eq!(streamed_content, content);
        }
    }
}
