//! Test fixtures: hand-made byte-level and SentencePiece vocabularies that
//! run anywhere, and the real SmolLM2 GGUF (`make test` fetches it; a test that needs it fails,
//! saying how to get it, when it is not on disk). Built for tests only
//! (`cfg(test)` or the `test-models` feature).

// Test fixtures: a failure here is the calling test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::gguf_file;

use super::byte_level::is_printable_byte;
use super::spec::TokenizerSpec;
use super::tokenizer::TextTokenizer;

pub const ENDOFTEXT: u32 = 0;
pub const IM_START: u32 = 1;
pub const IM_END: u32 = 2;
/// Id of the byte tokens' first entry: ids `FIRST_BYTE + b` are the bytes.
const FIRST_BYTE: u32 = 3;
pub const USER_DEFINED: &str = "<think>";

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 template's rendering of one user turn with a generation prompt.
pub const SMOLLM_CHAT_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n";

/// GPT-2's `bytes_to_unicode`, the direction the vocabulary was written in.
pub fn byte_char(b: u8) -> char {
    if is_printable_byte(b) {
        return char::from(b);
    }
    let shifted = (0..b).filter(|&x| !is_printable_byte(x)).count() as u32;
    char::from_u32(0x100 + shifted).unwrap()
}

fn byte_level(text: &str) -> String {
    text.bytes().map(byte_char).collect()
}

/// Three control tokens, all 256 bytes, a few merges (`hello`, ` w`, `12`)
/// and one user-defined token.
pub fn tiny_spec() -> TokenizerSpec {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut token_types = vec![3, 3, 3];
    tokens.extend((0..=u8::MAX).map(|b| byte_char(b).to_string()));
    token_types.extend([1; 256]);
    let merges = [
        ("h", "e"),
        ("l", "l"),
        ("he", "ll"),
        ("hell", "o"),
        (" ", "w"),
        ("1", "2"),
    ];
    for (left, right) in merges {
        tokens.push(byte_level(&format!("{left}{right}")));
        token_types.push(1);
    }
    tokens.push(USER_DEFINED.into());
    token_types.push(4);
    TokenizerSpec {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types,
        merges: merges
            .iter()
            .map(|(l, r)| format!("{} {}", byte_level(l), byte_level(r)))
            .collect(),
        bos_token_id: Some(IM_START),
        eos_token_id: Some(IM_END),
        ..TokenizerSpec::default()
    }
}

/// SentencePiece ids of the tiny vocabulary below.
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
/// Pieces of the tiny SentencePiece vocabulary after its 3 control and 256
/// byte tokens, with scores chosen so that `▁hello` and `▁world` are reached
/// through `ll`, `▁h`, `llo`, `ello` (and `or`, `ld`, `▁w`, `orld`).
const SP_PIECES: &[(&str, f32)] = &[
    ("▁", -10.0),
    ("h", -10.0),
    ("e", -10.0),
    ("l", -10.0),
    ("o", -10.0),
    ("w", -10.0),
    ("r", -10.0),
    ("d", -10.0),
    ("ll", -1.0),
    ("or", -1.0),
    ("ld", -1.0),
    ("▁h", -2.0),
    ("▁w", -2.0),
    ("llo", -3.0),
    ("orld", -3.0),
    ("ello", -4.0),
    ("▁hello", -5.0),
    ("▁world", -5.0),
];

/// `<unk> <s> </s>`, `<0x00>`..`<0xFF>`, then [`SP_PIECES`]; no merges (a
/// SentencePiece file has none), `add_space_prefix` left to the default.
pub fn tiny_sp_spec() -> TokenizerSpec {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut token_types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    tokens.extend((0..=u8::MAX).map(|b| format!("<0x{b:02X}>")));
    token_types.extend([6; 256]);
    scores.extend([0.0; 256]);
    for (piece, score) in SP_PIECES {
        tokens.push((*piece).to_owned());
        token_types.push(1);
        scores.push(*score);
    }
    TokenizerSpec {
        architecture: Some("llama".into()),
        model: "llama".into(),
        tokens,
        token_types,
        scores,
        bos_token_id: Some(BOS),
        eos_token_id: Some(EOS),
        unknown_token_id: Some(0),
        add_bos_token: true,
        ..TokenizerSpec::default()
    }
}

pub fn tiny_sp_tokenizer() -> TextTokenizer {
    TextTokenizer::from_spec(&tiny_sp_spec()).unwrap()
}

/// Id of a token of the tiny SentencePiece vocabulary, by its stored text.
pub fn sp_id(text: &str) -> u32 {
    tiny_sp_spec()
        .tokens
        .iter()
        .position(|t| t == text)
        .unwrap() as u32
}

pub fn tiny_tokenizer() -> TextTokenizer {
    TextTokenizer::from_spec(&tiny_spec()).unwrap()
}

pub fn byte_token_id(b: u8) -> u32 {
    FIRST_BYTE + u32::from(b)
}

/// Id of a token in the tiny vocabulary, by its plain text.
pub fn tiny_id(text: &str) -> u32 {
    let wanted = byte_level(text);
    tiny_spec()
        .tokens
        .iter()
        .position(|t| *t == wanted || (t == text && t == USER_DEFINED))
        .unwrap() as u32
}

fn gguf_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TEXT_TEST_GGUF") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    Some(crate::config::default_model_path()).filter(|p| p.is_file())
}

/// Read once per test binary: the vocabulary is 49k strings. The test
/// fails, saying how to get the file, when it is missing.
pub fn smollm_spec() -> &'static TokenizerSpec {
    static SPEC: OnceLock<TokenizerSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = gguf_path().unwrap_or_else(|| {
            panic!("{GGUF_NAME} not found: `make test` fetches it (scripts/fetch-model.sh), or set TEXT_TEST_GGUF to its path")
        });
        let mut file = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        TokenizerSpec::from_metadata(&content).unwrap()
    })
}

pub fn smollm_tokenizer() -> Arc<TextTokenizer> {
    static TOKENIZER: OnceLock<Arc<TextTokenizer>> = OnceLock::new();
    Arc::clone(TOKENIZER.get_or_init(|| Arc::new(TextTokenizer::from_spec(smollm_spec()).unwrap())))
}
