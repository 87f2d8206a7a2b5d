//! Token ids → text, one id at a time, for streaming.
//!
//! Byte-level tokens can end in the middle of a UTF-8 character (an emoji is
//! often three or four tokens), so bytes that may still become a character
//! are held until the next token completes them. Invariant: the concatenation
//! of everything `push` and `finish` return equals `TextTokenizer::decode` of
//! the same ids; or, for a decoder [`continuing`](IncrementalDecoder::continuing)
//! a prompt (an answer), the text the ids add after it: `decode` but for a
//! SentencePiece word's leading space at the start, which `decode` drops as
//! the space the tokenizer put before a text, and which after a prompt is the
//! text's own (`The capital of France is` + ` Paris`, as llama.cpp and vLLM
//! answer).

use std::sync::Arc;

use super::tokenizer::TextTokenizer;

/// Owns an `Arc` so a sequence can keep its decoder across scheduler steps.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    tokenizer: Arc<TextTokenizer>,
    /// Special tokens written as their text rather than dropped.
    shown: Vec<u32>,
    pending: Vec<u8>,
    /// No token has produced bytes yet, at the start of a text: the one that
    /// does may begin with the tokenizer's prefix space, which `decode` drops.
    at_start: bool,
}

impl IncrementalDecoder {
    pub fn new(tokenizer: Arc<TextTokenizer>) -> Self {
        IncrementalDecoder {
            tokenizer,
            shown: Vec::new(),
            pending: Vec::new(),
            at_start: true,
        }
    }

    /// Decodes what follows a prompt (an answer) rather than a text from its
    /// start: the first word keeps its leading space.
    pub fn continuing(mut self) -> Self {
        self.at_start = false;
        self
    }

    /// Also writes these special tokens, as their text: a tool-call format's
    /// markers when they are control tokens (Mistral's `[TOOL_CALLS]`), so
    /// the answer's parser sees them, as llama.cpp keeps them when tools are
    /// in play.
    pub fn showing(mut self, special: Vec<u32>) -> Self {
        self.shown = special;
        self
    }

    /// Returns the text this token completes, often empty. Special tokens
    /// (other than those it shows) and ids outside the vocabulary (models may pad their output layer past the
    /// vocabulary) add nothing, as in `decode`.
    pub fn push(&mut self, id: u32) -> String {
        if self.shown.contains(&id) {
            if let Some(text) = self.tokenizer.token_text(id) {
                self.at_start = false;
                self.pending.extend_from_slice(text.as_bytes());
            }
        } else if let Some(mut bytes) = self.tokenizer.token_bytes(id).filter(|b| !b.is_empty()) {
            if std::mem::take(&mut self.at_start) && self.tokenizer.strips_leading_space() {
                bytes = bytes.strip_prefix(b" ").unwrap_or(bytes);
            }
            self.pending.extend_from_slice(bytes);
        }
        self.take_complete()
    }

    /// Ends the stream: bytes of an unfinished character become U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match err.error_len() {
                        // A truncated character at the end: wait for more.
                        None => {
                            rest = after;
                            break;
                        }
                        // Bytes no continuation can repair: emit U+FFFD now,
                        // as `decode` would, instead of holding them forever.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(bad..).unwrap_or_default();
                        }
                    }
                }
            }
        }
        let consumed = self.pending.len() - rest.len();
        self.pending.drain(..consumed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::fixtures;

    fn stream(tokenizer: &Arc<TextTokenizer>, ids: &[u32]) -> Vec<String> {
        let mut decoder = IncrementalDecoder::new(Arc::clone(tokenizer));
        let mut pieces: Vec<String> = ids.iter().map(|&id| decoder.push(id)).collect();
        pieces.push(decoder.finish());
        pieces
    }

    #[test]
    fn holds_partial_characters_with_byte_tokens() {
        let tokenizer = Arc::new(fixtures::tiny_tokenizer());
        let text = "a🎉b é";
        let ids = tokenizer.encode(text).unwrap();
        let pieces = stream(&tokenizer, &ids);
        assert_eq!(pieces.concat(), text);
        // One byte per token in the tiny vocab: the emoji's first three
        // tokens must produce nothing, the fourth the whole emoji.
        let emoji_at = pieces.iter().position(|p| p == "🎉").unwrap();
        assert_eq!(pieces[emoji_at - 3..emoji_at], ["", "", ""]);
    }

    #[test]
    fn skips_special_tokens_and_unknown_ids() {
        let tokenizer = Arc::new(fixtures::tiny_tokenizer());
        let mut ids = vec![fixtures::IM_START];
        ids.extend(tokenizer.encode("hi").unwrap());
        ids.extend([fixtures::IM_END, 1_000_000]);
        assert_eq!(stream(&tokenizer, &ids).concat(), "hi");
    }

    #[test]
    fn shows_the_special_tokens_it_is_asked_to() {
        let tokenizer = Arc::new(fixtures::tiny_tokenizer());
        assert_eq!(
            tokenizer.special_token_id("<|im_start|>"),
            Some(fixtures::IM_START)
        );
        assert_eq!(tokenizer.special_token_id("hi"), None, "not special");
        let mut decoder =
            IncrementalDecoder::new(Arc::clone(&tokenizer)).showing(vec![fixtures::IM_START]);
        let mut ids = vec![fixtures::IM_START];
        ids.extend(tokenizer.encode("hi").unwrap());
        ids.push(fixtures::IM_END);
        let text: String = ids.iter().map(|&id| decoder.push(id)).collect();
        assert_eq!(text + &decoder.finish(), "<|im_start|>hi");
    }

    #[test]
    fn invalid_bytes_are_not_held_forever() {
        let tokenizer = Arc::new(fixtures::tiny_tokenizer());
        let byte = fixtures::byte_token_id;
        let mut decoder = IncrementalDecoder::new(tokenizer);
        // 0xFF can never start a character; a stray continuation byte neither.
        assert_eq!(decoder.push(byte(0xFF)), "\u{FFFD}");
        assert_eq!(decoder.push(byte(0x80)), "\u{FFFD}");
        // A lead byte followed by a non-continuation: both come out at once.
        assert_eq!(decoder.push(byte(0xE4)), "");
        assert_eq!(decoder.push(byte(b'x')), "\u{FFFD}x");
        // Cut off at the end of the stream.
        assert_eq!(decoder.push(byte(0xF0)), "");
        assert_eq!(decoder.push(byte(0x9F)), "");
        assert_eq!(decoder.finish(), "\u{FFFD}");
        assert_eq!(decoder.finish(), "");
    }

    #[test]
    fn drops_the_prefix_space_once_like_decode_unless_continuing() {
        let tokenizer = Arc::new(fixtures::tiny_sp_tokenizer());
        assert!(tokenizer.strips_leading_space());
        let ids = tokenizer.encode("hello world").unwrap();
        let pieces = stream(&tokenizer, &ids);
        // BOS adds nothing, `▁hello` loses its prefix, `▁world` keeps its space.
        assert_eq!(pieces, ["", "hello", " world", ""]);
        assert_eq!(pieces.concat(), tokenizer.decode(&ids).unwrap());
        // An answer after a prompt: its first word keeps its space.
        let mut answer = IncrementalDecoder::new(Arc::clone(&tokenizer)).continuing();
        let text: String = ids[1..].iter().map(|&id| answer.push(id)).collect();
        assert_eq!(text, " hello world");
    }

    #[test]
    fn real_model_streams_valid_utf8() {
        let tokenizer = fixtures::smollm_tokenizer();
        let text = "héllo wörld 你好 🎉";
        let ids = tokenizer.encode(text).unwrap();
        let pieces = stream(&tokenizer, &ids);
        assert_eq!(pieces.concat(), text);
        assert_eq!(pieces.concat(), tokenizer.decode(&ids).unwrap());
        // Proof that holding back happened: some token ends inside a
        // character, so its push returned less than its bytes.
        let split_inside_char = ids.iter().zip(&pieces).any(|(&id, piece)| {
            let bytes = tokenizer.token_bytes(id).unwrap();
            std::str::from_utf8(bytes).is_err() && piece.len() < bytes.len()
        });
        assert!(split_inside_char, "ids {ids:?} pieces {pieces:?}");
        let emoji_tokens = ids
            .iter()
            .zip(&pieces)
            .rev()
            .take_while(|(_, piece)| !piece.ends_with(' '))
            .count();
        assert!(emoji_tokens > 1, "🎉 should span several tokens: {ids:?}");
    }
}
