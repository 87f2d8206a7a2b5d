//! Test fixtures: a hand-made byte-level vocabulary that runs anywhere, and
//! the real SmolLM2 GGUF (`make test` fetches it; a test that needs it fails,
//! saying how to get it, when it is not on disk).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::gguf_file;

use super::spec::TokenizerSpec;
use super::tokenizer::{is_printable_byte, TextTokenizer};

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
        add_bos_token: false,
        chat_template: None,
    }
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
