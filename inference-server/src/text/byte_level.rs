//! Byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`: GPT-2,
//! SmolLM2, Qwen, Llama 3): every token is written in GPT-2's printable byte
//! alphabet, the merges are in the file, and the pre-tokenizer split is named
//! by `tokenizer.ggml.pre`.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::bpe::{BpeOptions, FlatBpe};
use super::error::TextError;
use super::spec::{TokenizerSpec, KEY_MERGES};
use super::tokenizer::{parse_byte_token, token_type, Pipeline, Vocabulary};

/// The split of Llama 3 and the vocabularies derived from it, as
/// transformers' GGUF converter and llama.cpp spell it.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's split: Llama 3's, but one digit at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn build(spec: &TokenizerSpec, types: &[i32]) -> Result<Vocabulary, TextError> {
    let pre_tokenizer = pre_tokenizer(spec.pre.as_deref())?;
    let model = FlatBpe::new(&spec.tokens, merges(&spec.merges)?, BpeOptions::default())?;
    let mut tokenizer = Pipeline::new(model);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    let byte_level = ByteLevelDecoder::new();
    let bytes = spec
        .tokens
        .iter()
        .zip(types)
        .map(|(text, &t)| token_to_bytes(text, t, &byte_level))
        .collect();
    Ok(Vocabulary {
        tokenizer,
        bytes,
        strip_leading_space: false,
    })
}

fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, TextError> {
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        // No name: assume GPT-2's own split, which the byte-level format
        // comes from (llama.cpp instead guesses a generic regex and warns).
        None | Some("gpt2") => Ok(byte_level.into()),
        Some("smollm") => {
            Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        Some("llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx") => {
            regex_then_bytes(LLAMA3_SPLIT)
        }
        Some("qwen2" | "deepseek-r1-qwen") => regex_then_bytes(QWEN2_SPLIT),
        Some(other) => Err(TextError::Unsupported {
            what: "pre-tokenizer",
            name: other.to_owned(),
        }),
    }
}

/// The regex does the whole split, so the byte-level step only respells.
fn regex_then_bytes(pattern: &str) -> Result<PreTokenizerWrapper, TextError> {
    let split = Split::new(
        SplitPattern::Regex(pattern.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(TextError::Tokenizer)?;
    let bytes = ByteLevel::new(false, true, false);
    Ok(Sequence::new(vec![split.into(), bytes.into()]).into())
}

/// The `left right` pairs, checked for shape here; `FlatBpe::new` checks that
/// each part is a token, naming the merge's index as this does.
fn merges(merges: &[String]) -> Result<Vec<(&str, &str)>, TextError> {
    merges
        .iter()
        .enumerate()
        .map(|(i, merge)| {
            let field = || format!("{KEY_MERGES}[{i}]");
            let (left, right) = merge
                .split_once(' ')
                .filter(|(l, r)| !l.is_empty() && !r.is_empty() && !r.contains(' '))
                .ok_or_else(|| TextError::invalid(field(), "expected 'left right'"))?;
            Ok((left, right))
        })
        .collect()
}

fn token_to_bytes(text: &str, t: i32, byte_level: &ByteLevelDecoder) -> Option<Box<[u8]>> {
    match t {
        token_type::CONTROL | token_type::UNKNOWN | token_type::UNUSED => None,
        // llama.cpp stores user-defined tokens as plain text, not byte-level.
        token_type::USER_DEFINED => Some(text.as_bytes().into()),
        token_type::BYTE => match parse_byte_token(text) {
            Some(b) => Some([b].into()),
            None => Some(byte_level.decode(text).into()),
        },
        _ => Some(byte_level.decode(text).into()),
    }
}

/// Inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for
/// themselves, and the n-th of the other 68 bytes (in byte order) was moved
/// to U+0100 + n so that every token is printable text.
pub(crate) struct ByteLevelDecoder {
    /// Indexed by code point, U+0000..U+0143.
    table: Vec<Option<u8>>,
}

impl ByteLevelDecoder {
    pub(crate) fn new() -> Self {
        let mut table = vec![None; 0x144];
        let mut shifted = 0x100;
        for b in 0..=u8::MAX {
            let slot = if is_printable_byte(b) {
                usize::from(b)
            } else {
                shifted += 1;
                shifted - 1
            };
            if let Some(entry) = table.get_mut(slot) {
                *entry = Some(b);
            }
        }
        ByteLevelDecoder { table }
    }

    pub(crate) fn decode(&self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match self.table.get(c as usize).copied().flatten() {
                Some(b) => out.push(b),
                // Not byte-level encoded (should not happen in a gpt2 vocab):
                // keep the character as text rather than losing it.
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        out
    }
}

pub(crate) fn is_printable_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

#[cfg(test)]
mod tests {
    use crate::text::fixtures::{tiny_id, tiny_spec};
    use crate::text::{TextTokenizer, TokenizerSpec};

    /// The digit rule tells the splits apart: Llama 3 keeps runs of up to
    /// three digits together (so the `12` merge applies), Qwen 2 splits each.
    #[test]
    fn regex_pre_tokenizers_split_digits_their_way() {
        let cases = [
            ("llama-bpe", vec!["12", "3", "4", "5"]),
            ("llama3", vec!["12", "3", "4", "5"]),
            ("qwen2", vec!["1", "2", "3", "4", "5"]),
        ];
        for (pre, pieces) in cases {
            let spec = TokenizerSpec {
                pre: Some(pre.into()),
                ..tiny_spec()
            };
            let tokenizer = TextTokenizer::from_spec(&spec).unwrap();
            let ids: Vec<u32> = pieces.iter().map(|p| tiny_id(p)).collect();
            assert_eq!(tokenizer.encode("12345").unwrap(), ids, "{pre}");
            assert_eq!(
                tokenizer.encode("hello world").unwrap(),
                [
                    tiny_id("hello"),
                    tiny_id(" w"),
                    tiny_id("o"),
                    tiny_id("r"),
                    tiny_id("l"),
                    tiny_id("d")
                ],
                "{pre}"
            );
        }
    }
}
