//! The tokenizer built from GGUF metadata, whatever the vocabulary format.
//!
//! Encoding goes through Hugging Face `tokenizers`: the format's module
//! (`byte_level` for `gpt2`, `sentencepiece` for `llama`) builds the model as
//! transformers' GGUF converter does, and this one registers control tokens
//! as special added tokens so `<|im_start|>` in the text is one id, and adds
//! BOS/EOS as the file asks. The ids equal transformers' for the same file
//! (checked against reference data in `tests/tokenizer_reference.rs`).
//!
//! Decoding does not go through `tokenizers`: every id is mapped once, at
//! load, to the raw bytes it stands for, and `decode` and the incremental
//! decoder both read that table, so the streamed text and the final text can
//! never disagree.
//!
//! Invariant: `token_bytes(id)` is `None` exactly for tokens that carry no text
//! (control, unknown, unused), and those are what `decode` skips.

use std::collections::HashSet;

use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerImpl,
};

use super::bpe::FlatBpe;
use super::error::TextError;
use super::spec::{TokenizerSpec, KEY_BOS, KEY_EOS, KEY_TOKEN_TYPE};
use super::{byte_level, sentencepiece};

/// llama.cpp's `llama_token_type` values, as stored in `tokenizer.ggml.token_type`.
pub(super) mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Control tokens that end a turn in the chat formats we know; generation
/// stops on them even when the GGUF's `eos_token_id` names another one
/// (SmolLM2: eos is `<|im_end|>`, but base-model habits emit `<|endoftext|>`).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "</s>",
];

/// `tokenizers`' pipeline (normalizer, pre-tokenizer, added tokens) around
/// the BPE model of `bpe`.
pub(super) type Pipeline = TokenizerImpl<
    FlatBpe,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

pub struct TextTokenizer {
    inner: Pipeline,
    /// Raw bytes per id; `None` for tokens without text.
    bytes: TokenBytes,
    special: Vec<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    add_bos_token: bool,
    add_eos_token: bool,
    strip_leading_space: bool,
    stop_token_ids: Vec<u32>,
}

/// Every token's bytes in one buffer: a box per token cost some 48 bytes
/// each (pointer, length and the allocator's smallest block), 12 MB for a
/// 262,144-token vocabulary such as Gemma's, against 3 MB here.
struct TokenBytes {
    data: Vec<u8>,
    /// Token `i`'s bytes are `data[spans[i].0..spans[i].1]`; `(0, u32::MAX)`:
    /// it has none.
    spans: Vec<(u32, u32)>,
}

impl TokenBytes {
    const NONE: (u32, u32) = (0, u32::MAX);

    fn new(tokens: &[Option<Box<[u8]>>]) -> Self {
        let mut data = Vec::with_capacity(tokens.iter().flatten().map(|b| b.len()).sum());
        let spans = tokens
            .iter()
            .map(|t| match t {
                // Vocabularies are far below 4 GB of text.
                Some(b) => {
                    let start = data.len() as u32;
                    data.extend_from_slice(b);
                    (start, data.len() as u32)
                }
                None => Self::NONE,
            })
            .collect();
        Self { data, spans }
    }

    fn get(&self, id: u32) -> Option<&[u8]> {
        let &(start, end) = self.spans.get(id as usize)?;
        if (start, end) == Self::NONE {
            return None;
        }
        self.data.get(start as usize..end as usize)
    }

    fn len(&self) -> usize {
        self.spans.len()
    }
}

/// What a vocabulary format contributes to a [`TextTokenizer`]: the encoding
/// model (with its normalizer and pre-tokenizer, no added tokens yet), the
/// bytes each id stands for, and whether decoding drops a leading space.
pub(super) struct Vocabulary {
    pub tokenizer: Pipeline,
    pub bytes: Vec<Option<Box<[u8]>>>,
    pub strip_leading_space: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .field("add_bos_token", &self.add_bos_token)
            .field("add_eos_token", &self.add_eos_token)
            .field("strip_leading_space", &self.strip_leading_space)
            .field("stop_token_ids", &self.stop_token_ids)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self, TextError> {
        let types = token_types(spec)?;
        let vocab_size = spec.tokens.len();
        let bos_token_id = checked_id(KEY_BOS, spec.bos_token_id, vocab_size)?;
        let eos_token_id = checked_id(KEY_EOS, spec.eos_token_id, vocab_size)?;
        if spec.add_bos_token && bos_token_id.is_none() {
            return Err(TextError::invalid(
                KEY_BOS,
                "add_bos_token is set but there is no bos_token_id",
            ));
        }
        if spec.add_eos_token && eos_token_id.is_none() {
            return Err(TextError::invalid(
                KEY_EOS,
                "add_eos_token is set but there is no eos_token_id",
            ));
        }
        let Vocabulary {
            tokenizer: mut inner,
            bytes,
            strip_leading_space,
        } = match spec.model.as_str() {
            "gpt2" => byte_level::build(spec, &types)?,
            "llama" => sentencepiece::build(spec, &types)?,
            other => {
                return Err(TextError::Unsupported {
                    what: "model",
                    name: other.to_owned(),
                })
            }
        };
        let (special_tokens, user_tokens) = added_tokens(&inner, &spec.tokens, &types);
        inner
            .add_special_tokens(special_tokens)
            .map_err(TextError::Tokenizer)?;
        inner
            .add_tokens(user_tokens)
            .map_err(TextError::Tokenizer)?;

        let special: Vec<bool> = types
            .iter()
            .map(|&t| matches!(t, token_type::CONTROL | token_type::UNKNOWN))
            .collect();
        let stop_token_ids = stop_token_ids(&spec.tokens, &special, eos_token_id);

        Ok(TextTokenizer {
            inner,
            bytes: TokenBytes::new(&bytes),
            special,
            bos_token_id,
            eos_token_id,
            add_bos_token: spec.add_bos_token,
            add_eos_token: spec.add_eos_token,
            strip_leading_space,
            stop_token_ids,
        })
    }

    /// Special-token strings in `text` become their ids: the chat template's
    /// output contains them on purpose.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let plain = self.encode_plain(text)?;
        let mut ids = Vec::with_capacity(plain.len() + 2);
        if self.add_bos_token {
            ids.extend(self.bos_token_id);
        }
        ids.extend_from_slice(&plain);
        if self.add_eos_token {
            ids.extend(self.eos_token_id);
        }
        Ok(ids)
    }

    /// `encode` without the BOS and EOS the model adds around a prompt: the
    /// ids of a piece of text inside a generation.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(TextError::Tokenizer)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes a chat template's output. Templates that write the BOS token
    /// themselves (Gemma 3, Llama 3) would get a second one from
    /// `add_bos_token`; as llama.cpp does, the written one is dropped and
    /// the model's added, so a prompt starts with exactly one.
    pub fn encode_chat(&self, rendered: &str) -> Result<Vec<u32>, TextError> {
        let written_bos = self
            .bos_token_id
            .filter(|_| self.add_bos_token)
            .and_then(|id| self.token_text(id))
            .filter(|bos| !bos.is_empty() && rendered.starts_with(bos.as_str()));
        match written_bos {
            Some(bos) => self.encode(&rendered[bos.len()..]),
            None => self.encode(rendered),
        }
    }

    /// Skips special tokens, and drops the space a SentencePiece prefix put
    /// before the first word (`strips_leading_space`); invalid UTF-8 (a sequence cut mid-character)
    /// becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        let mut out = Vec::new();
        for &id in ids {
            if id as usize >= self.vocab_size() {
                return Err(TextError::UnknownTokenId {
                    id,
                    vocab_size: self.vocab_size(),
                });
            }
            out.extend_from_slice(self.bytes.get(id).unwrap_or_default());
        }
        if self.strip_leading_space && out.first() == Some(&b' ') {
            out.remove(0);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The raw bytes a token stands for (possibly part of a UTF-8 character);
    /// `None` for tokens without text and for ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id)
    }

    /// Whether `decode` drops one leading space: the tokenizer writes one
    /// before the text (SentencePiece `add_space_prefix`), so the first
    /// decoded space is its own, not the text's.
    pub fn strips_leading_space(&self) -> bool {
        self.strip_leading_space
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The special (control) token spelled `text`, if the vocabulary has
    /// one: e.g. Mistral's `[TOOL_CALLS]`, which is text in other models.
    pub fn special_token_id(&self, text: &str) -> Option<u32> {
        self.inner
            .token_to_id(text)
            .filter(|&id| self.is_special(id))
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Sorted, without duplicates.
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    /// The text of a token as stored in the vocabulary (byte-level encoded
    /// for normal tokens); for special tokens this is the string a chat
    /// template writes, e.g. `<|im_end|>`.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

fn token_types(spec: &TokenizerSpec) -> Result<Vec<i32>, TextError> {
    if spec.token_types.is_empty() {
        return Ok(vec![token_type::NORMAL; spec.tokens.len()]);
    }
    if spec.token_types.len() != spec.tokens.len() {
        return Err(TextError::invalid(
            KEY_TOKEN_TYPE,
            format!(
                "has {} entries for {} tokens",
                spec.token_types.len(),
                spec.tokens.len()
            ),
        ));
    }
    for (i, &t) in spec.token_types.iter().enumerate() {
        if !(token_type::UNDEFINED..=token_type::BYTE).contains(&t) {
            return Err(TextError::invalid(
                format!("{KEY_TOKEN_TYPE}[{i}]"),
                format!("unknown token type {t}"),
            ));
        }
    }
    Ok(spec.token_types.clone())
}

fn checked_id(key: &str, id: Option<u32>, vocab_size: usize) -> Result<Option<u32>, TextError> {
    match id {
        Some(id) if id as usize >= vocab_size => Err(TextError::invalid(
            key,
            format!("{id} is outside the vocabulary of {vocab_size} tokens"),
        )),
        _ => Ok(id),
    }
}

/// Control and unknown tokens match as special strings; user-defined tokens
/// match as ordinary added tokens (they are text, and decode as such) when
/// the model knows them under that spelling: Gemma's runs of spaces are
/// user-defined but respelled for the model (`sentencepiece.rs`), and
/// transformers leaves them to the model too.
fn added_tokens(
    model: &Pipeline,
    tokens: &[String],
    types: &[i32],
) -> (Vec<AddedToken>, Vec<AddedToken>) {
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (text, &t) in tokens.iter().zip(types) {
        match t {
            token_type::CONTROL | token_type::UNKNOWN => {
                special.push(AddedToken::from(text.clone(), true).normalized(false));
            }
            token_type::USER_DEFINED if model.token_to_id(text).is_some() => {
                user.push(AddedToken::from(text.clone(), false).normalized(false));
            }
            _ => {}
        }
    }
    (special, user)
}

/// `<0xAB>` → 0xAB (SentencePiece-style byte tokens).
pub(super) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

fn stop_token_ids(tokens: &[String], special: &[bool], eos: Option<u32>) -> Vec<u32> {
    let names: HashSet<&str> = END_OF_TURN_TOKENS.iter().copied().collect();
    let mut ids: Vec<u32> = tokens
        .iter()
        .zip(special)
        .enumerate()
        .filter(|(_, (text, &is_special))| is_special && names.contains(text.as_str()))
        .filter_map(|(id, _)| u32::try_from(id).ok())
        .chain(eos)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::byte_level::ByteLevelDecoder;
    use crate::text::fixtures::{self, tiny_id, tiny_spec, tiny_tokenizer, IM_END, IM_START};

    #[test]
    fn encodes_with_merges_and_special_tokens() {
        let tokenizer = tiny_tokenizer();
        let cases: &[(&str, Vec<u32>)] = &[
            ("hello", vec![tiny_id("hello")]),
            ("hello w", vec![tiny_id("hello"), tiny_id(" w")]),
            (
                "<|im_start|>hello<|im_end|>",
                vec![IM_START, tiny_id("hello"), IM_END],
            ),
            ("<think>he", vec![tiny_id("<think>"), tiny_id("he")]),
            // Digits are split before BPE, so the "1 2" merge never applies.
            ("12", vec![tiny_id("1"), tiny_id("2")]),
            ("", vec![]),
        ];
        for (text, ids) in cases {
            assert_eq!(&tokenizer.encode(text).unwrap(), ids, "{text:?}");
        }
    }

    #[test]
    fn gpt2_pre_tokenizer_keeps_digit_runs() {
        let spec = TokenizerSpec {
            pre: Some("gpt2".into()),
            ..tiny_spec()
        };
        let tokenizer = TextTokenizer::from_spec(&spec).unwrap();
        assert_eq!(tokenizer.encode("12").unwrap(), [tiny_id("12")]);
    }

    #[test]
    fn round_trips_any_text() {
        let tokenizer = tiny_tokenizer();
        for text in [
            "hello world",
            "héllo wörld",
            "你好",
            "🎉 ok\n\ttabs",
            "a\u{0}b\u{7f}",
        ] {
            let ids = tokenizer.encode(text).unwrap();
            assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        }
    }

    #[test]
    fn decode_skips_special_tokens_but_keeps_user_defined() {
        let tokenizer = tiny_tokenizer();
        let ids = tokenizer
            .encode("<|im_start|>hello<think><|im_end|>")
            .unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), "hello<think>");
    }

    #[test]
    fn decode_rejects_ids_outside_the_vocabulary() {
        let tokenizer = tiny_tokenizer();
        let err = tokenizer.decode(&[IM_START, 100_000]).unwrap_err();
        assert!(matches!(err, TextError::UnknownTokenId { id: 100_000, .. }));
    }

    #[test]
    fn token_bytes_and_special_flags() {
        let tokenizer = tiny_tokenizer();
        assert_eq!(tokenizer.token_bytes(tiny_id(" w")), Some(&b" w"[..]));
        assert_eq!(
            tokenizer.token_bytes(fixtures::byte_token_id(0xF0)),
            Some(&[0xF0][..])
        );
        assert_eq!(tokenizer.token_bytes(IM_END), None);
        assert_eq!(tokenizer.token_bytes(1_000_000), None);
        assert!(tokenizer.is_special(IM_END) && !tokenizer.is_special(tiny_id("he")));
        assert!(!tokenizer.is_special(tiny_id("<think>")));
        assert_eq!(tokenizer.token_text(IM_END).as_deref(), Some("<|im_end|>"));
        assert_eq!(tokenizer.vocab_size(), tiny_spec().tokens.len());
    }

    #[test]
    fn stop_ids_are_eos_and_end_of_turn_control_tokens() {
        let tokenizer = tiny_tokenizer();
        assert_eq!(tokenizer.eos_token_id(), Some(IM_END));
        assert_eq!(tokenizer.stop_token_ids(), [fixtures::ENDOFTEXT, IM_END]);
    }

    #[test]
    fn bos_is_added_only_when_asked() {
        let spec = TokenizerSpec {
            add_bos_token: true,
            ..tiny_spec()
        };
        let tokenizer = TextTokenizer::from_spec(&spec).unwrap();
        assert_eq!(tokenizer.encode("he").unwrap(), [IM_START, tiny_id("he")]);
        assert_eq!(tokenizer.bos_token_id(), Some(IM_START));
    }

    #[test]
    fn a_chat_prompt_starts_with_one_bos_whoever_writes_it() {
        let adds = TextTokenizer::from_spec(&TokenizerSpec {
            add_bos_token: true,
            ..tiny_spec()
        })
        .unwrap();
        let written = "<|im_start|>he";
        let one = [IM_START, tiny_id("he")];
        assert_eq!(adds.encode_chat(written).unwrap(), one);
        assert_eq!(adds.encode_chat("he").unwrap(), one);
        // Plain completions keep what the client sent.
        assert_eq!(
            adds.encode(written).unwrap(),
            [IM_START, IM_START, tiny_id("he")]
        );
        let leaves = TextTokenizer::from_spec(&tiny_spec()).unwrap();
        assert_eq!(leaves.encode_chat(written).unwrap(), one);
    }

    #[test]
    fn invalid_specs_are_rejected_with_the_field() {
        let cases: Vec<(TokenizerSpec, &str)> =
            vec![
            (
                TokenizerSpec { model: "t5".into(), ..tiny_spec() },
                "unsupported tokenizer model 't5'",
            ),
            (
                TokenizerSpec { pre: Some("deepseek-coder".into()), ..tiny_spec() },
                "unsupported tokenizer pre-tokenizer 'deepseek-coder'",
            ),
            (
                TokenizerSpec {
                    merges: vec!["h e".into(), "he".into()],
                    ..tiny_spec()
                },
                "tokenizer.ggml.merges[1]: expected 'left right'",
            ),
            (
                TokenizerSpec { merges: vec!["h e l".into()], ..tiny_spec() },
                "tokenizer.ggml.merges[0]: expected 'left right'",
            ),
            (
                TokenizerSpec { merges: vec!["e h".into()], ..tiny_spec() },
                "tokenizer.ggml.merges[0]: 'eh' is not in the vocabulary",
            ),
            (
                TokenizerSpec { token_types: vec![1, 3], ..tiny_spec() },
                "tokenizer.ggml.token_type: has 2 entries for 266 tokens",
            ),
            (
                TokenizerSpec { eos_token_id: Some(266), ..tiny_spec() },
                "tokenizer.ggml.eos_token_id: 266 is outside the vocabulary of 266 tokens",
            ),
            (
                TokenizerSpec {
                    bos_token_id: None,
                    add_bos_token: true,
                    ..tiny_spec()
                },
                "tokenizer.ggml.bos_token_id: add_bos_token is set but there is no bos_token_id",
            ),
        ];
        for (spec, expected) in cases {
            let err = TextTokenizer::from_spec(&spec).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    #[test]
    fn unknown_token_type_names_its_index() {
        let mut spec = tiny_spec();
        spec.token_types[7] = 9;
        let err = TextTokenizer::from_spec(&spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tokenizer.ggml.token_type[7]: unknown token type 9"
        );
    }

    #[test]
    fn byte_level_table_inverts_bytes_to_unicode() {
        let decoder = ByteLevelDecoder::new();
        for b in 0..=u8::MAX {
            assert_eq!(decoder.decode(&fixtures::byte_char(b).to_string()), [b]);
        }
        assert_eq!(fixtures::byte_char(b' '), 'Ġ');
        assert_eq!(fixtures::byte_char(b'\n'), 'Ċ');
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TextTokenizer>();
    }

    // The reference ids below come from the model's published tokenizer.json.
    #[test]
    fn real_model_matches_reference_ids() {
        let tokenizer = fixtures::smollm_tokenizer();
        assert_eq!(
            tokenizer.encode("Hello, how are you?").unwrap(),
            [19556, 28, 638, 359, 346, 47]
        );
        assert_eq!(
            tokenizer.encode(fixtures::SMOLLM_CHAT_PROMPT).unwrap(),
            [
                1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018,
                411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 19556, 28, 638, 359, 346, 47, 2, 198,
                1, 520, 9531, 198
            ]
        );
    }

    #[test]
    fn real_model_splits_digits_and_round_trips() {
        let tokenizer = fixtures::smollm_tokenizer();
        let ids = tokenizer.encode("12345").unwrap();
        assert_eq!(ids.len(), 5);
        for (id, digit) in ids.iter().zip(["1", "2", "3", "4", "5"]) {
            assert_eq!(tokenizer.decode(&[*id]).unwrap(), digit);
        }
        for text in [
            "The quick brown fox jumps over the lazy dog.",
            "Crème brûlée à la française, s'il vous plaît",
            "東京は日本の首都です。你好，世界",
            "🎉🚀 emoji 👨‍👩‍👧 family",
            "  leading spaces\n\ttabs and\r\nnewlines  ",
        ] {
            let ids = tokenizer.encode(text).unwrap();
            assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        }
    }

    #[test]
    fn real_model_metadata() {
        let tokenizer = fixtures::smollm_tokenizer();
        assert_eq!(tokenizer.vocab_size(), 49_152);
        assert_eq!(tokenizer.bos_token_id(), Some(1));
        assert_eq!(tokenizer.eos_token_id(), Some(2));
        assert_eq!(tokenizer.stop_token_ids(), [0, 2]);
        assert!((0..=16).all(|id| tokenizer.is_special(id)));
        assert!(!tokenizer.is_special(17));
        assert_eq!(tokenizer.decode(&[1, 19556, 2]).unwrap(), "Hello");
    }
}
