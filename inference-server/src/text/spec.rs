//! What a GGUF file says about its tokenizer, read into plain Rust types.
//!
//! The text layer does not depend on a GGUF reader: the loader implements
//! [`MetadataSource`] over whatever it parsed (candle's `gguf_file::Content`,
//! a JSON map, ...) and [`TokenizerSpec::from_metadata`] does the type checks,
//! so every error names the offending key (and array index).

use std::collections::HashMap;

use super::error::TextError;

pub const KEY_ARCHITECTURE: &str = "general.architecture";
pub const KEY_MODEL: &str = "tokenizer.ggml.model";
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
pub const KEY_SCORES: &str = "tokenizer.ggml.scores";
pub const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
pub const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
pub const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
pub const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
pub const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// A borrowed view of one GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue<'a> {
    Str(&'a str),
    Bool(bool),
    /// Every GGUF integer type fits in an `i128` without loss.
    Int(i128),
    Float(f64),
    Array(Vec<MetadataValue<'a>>),
    /// A value no GGUF type describes (JSON `null` or an object); every
    /// conversion rejects it, with the key and index in the message.
    Unrepresentable,
}

/// Lookup of GGUF metadata by key; `None` when the key is absent.
pub trait MetadataSource {
    fn metadata(&self, key: &str) -> Option<MetadataValue<'_>>;
}

impl MetadataSource for HashMap<String, serde_json::Value> {
    fn metadata(&self, key: &str) -> Option<MetadataValue<'_>> {
        self.get(key).map(json_to_metadata)
    }
}

fn json_to_metadata(value: &serde_json::Value) -> MetadataValue<'_> {
    use serde_json::Value;
    match value {
        Value::String(s) => MetadataValue::Str(s),
        Value::Bool(b) => MetadataValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => MetadataValue::Int(i.into()),
            (_, Some(u), _) => MetadataValue::Int(u.into()),
            (_, _, Some(f)) => MetadataValue::Float(f),
            _ => MetadataValue::Unrepresentable,
        },
        Value::Array(items) => MetadataValue::Array(items.iter().map(json_to_metadata).collect()),
        Value::Null | Value::Object(_) => MetadataValue::Unrepresentable,
    }
}

/// What the GGUF metadata says about the tokenizer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerSpec {
    /// `general.architecture`: SentencePiece vocabularies of the Gemma
    /// family are stored differently (see `sentencepiece.rs`).
    pub architecture: Option<String>,
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One llama.cpp token type per token (1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte); empty means "all normal".
    pub token_types: Vec<i32>,
    /// `"left right"` pairs, highest priority first.
    pub merges: Vec<String>,
    /// One SentencePiece score per token (`llama` vocabularies); empty for
    /// byte-level ones.
    pub scores: Vec<f32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
    /// `None` when the file does not say; the tokenizer then picks the
    /// default of its family.
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl TokenizerSpec {
    pub fn from_metadata(md: &impl MetadataSource) -> Result<Self, TextError> {
        let model = required(md, KEY_MODEL, as_string)?;
        // llama.cpp adds BOS to a SentencePiece vocabulary that does not say
        // otherwise (older files have no flag), and not to a BPE one.
        let add_bos_default = model == "llama";
        Ok(TokenizerSpec {
            architecture: optional(md, KEY_ARCHITECTURE, as_string)?,
            model,
            pre: optional(md, KEY_PRE, as_string)?,
            tokens: required(md, KEY_TOKENS, |k, v| array_of(k, v, as_string))?,
            token_types: optional(md, KEY_TOKEN_TYPE, |k, v| array_of(k, v, as_i32))?
                .unwrap_or_default(),
            merges: optional(md, KEY_MERGES, |k, v| array_of(k, v, as_string))?.unwrap_or_default(),
            scores: optional(md, KEY_SCORES, |k, v| array_of(k, v, as_f32))?.unwrap_or_default(),
            bos_token_id: optional(md, KEY_BOS, as_u32)?,
            eos_token_id: optional(md, KEY_EOS, as_u32)?,
            unknown_token_id: optional(md, KEY_UNK, as_u32)?,
            add_bos_token: optional(md, KEY_ADD_BOS, as_bool)?.unwrap_or(add_bos_default),
            add_eos_token: optional(md, KEY_ADD_EOS, as_bool)?.unwrap_or(false),
            add_space_prefix: optional(md, KEY_ADD_SPACE_PREFIX, as_bool)?,
            chat_template: optional(md, KEY_CHAT_TEMPLATE, as_string)?,
        })
    }

    pub fn from_gguf_metadata(md: &HashMap<String, serde_json::Value>) -> Result<Self, TextError> {
        Self::from_metadata(md)
    }
}

type Convert<T> = fn(&str, &MetadataValue<'_>) -> Result<T, TextError>;

fn required<T>(
    md: &impl MetadataSource,
    key: &str,
    convert: impl Fn(&str, &MetadataValue<'_>) -> Result<T, TextError>,
) -> Result<T, TextError> {
    match md.metadata(key) {
        Some(value) => convert(key, &value),
        None => Err(TextError::MissingMetadata { key: key.into() }),
    }
}

fn optional<T>(
    md: &impl MetadataSource,
    key: &str,
    convert: impl Fn(&str, &MetadataValue<'_>) -> Result<T, TextError>,
) -> Result<Option<T>, TextError> {
    md.metadata(key)
        .map(|value| convert(key, &value))
        .transpose()
}

fn array_of<T>(
    key: &str,
    value: &MetadataValue<'_>,
    convert: Convert<T>,
) -> Result<Vec<T>, TextError> {
    let MetadataValue::Array(items) = value else {
        return Err(TextError::invalid(key, "expected an array"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| convert(&format!("{key}[{i}]"), item))
        .collect()
}

fn as_string(key: &str, value: &MetadataValue<'_>) -> Result<String, TextError> {
    match value {
        MetadataValue::Str(s) => Ok((*s).to_owned()),
        _ => Err(TextError::invalid(key, "expected a string")),
    }
}

fn as_bool(key: &str, value: &MetadataValue<'_>) -> Result<bool, TextError> {
    match value {
        MetadataValue::Bool(b) => Ok(*b),
        _ => Err(TextError::invalid(key, "expected a boolean")),
    }
}

fn as_i32(key: &str, value: &MetadataValue<'_>) -> Result<i32, TextError> {
    match value {
        MetadataValue::Int(i) => i32::try_from(*i)
            .map_err(|_| TextError::invalid(key, format!("{i} does not fit in an i32"))),
        _ => Err(TextError::invalid(key, "expected an integer")),
    }
}

fn as_f32(key: &str, value: &MetadataValue<'_>) -> Result<f32, TextError> {
    match value {
        // Scores are f32 in the file; the narrowing is the file's own precision.
        MetadataValue::Float(f) => Ok(*f as f32),
        MetadataValue::Int(i) => Ok(*i as f32),
        _ => Err(TextError::invalid(key, "expected a number")),
    }
}

fn as_u32(key: &str, value: &MetadataValue<'_>) -> Result<u32, TextError> {
    match value {
        MetadataValue::Int(i) => u32::try_from(*i)
            .map_err(|_| TextError::invalid(key, format!("{i} is not a valid token id"))),
        _ => Err(TextError::invalid(key, "expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata(pairs: &[(&str, serde_json::Value)]) -> HashMap<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn reads_all_fields() {
        let md = metadata(&[
            (KEY_ARCHITECTURE, json!("llama")),
            (KEY_MODEL, json!("gpt2")),
            (KEY_PRE, json!("smollm")),
            (KEY_TOKENS, json!(["<s>", "a", "b", "ab"])),
            (KEY_TOKEN_TYPE, json!([3, 1, 1, 1])),
            (KEY_MERGES, json!(["a b"])),
            (KEY_SCORES, json!([0.0, -1.5, -2, -3.25])),
            (KEY_BOS, json!(0)),
            (KEY_EOS, json!(0)),
            (KEY_UNK, json!(1)),
            (KEY_ADD_BOS, json!(true)),
            (KEY_ADD_EOS, json!(true)),
            (KEY_ADD_SPACE_PREFIX, json!(false)),
            (KEY_CHAT_TEMPLATE, json!("{{ x }}")),
        ]);
        let spec = TokenizerSpec::from_gguf_metadata(&md).unwrap();
        assert_eq!(
            spec,
            TokenizerSpec {
                architecture: Some("llama".into()),
                model: "gpt2".into(),
                pre: Some("smollm".into()),
                tokens: vec!["<s>".into(), "a".into(), "b".into(), "ab".into()],
                token_types: vec![3, 1, 1, 1],
                merges: vec!["a b".into()],
                scores: vec![0.0, -1.5, -2.0, -3.25],
                bos_token_id: Some(0),
                eos_token_id: Some(0),
                unknown_token_id: Some(1),
                add_bos_token: true,
                add_eos_token: true,
                add_space_prefix: Some(false),
                chat_template: Some("{{ x }}".into()),
            }
        );
    }

    #[test]
    fn optional_fields_default() {
        let md = metadata(&[(KEY_MODEL, json!("gpt2")), (KEY_TOKENS, json!(["a"]))]);
        let spec = TokenizerSpec::from_gguf_metadata(&md).unwrap();
        assert!(spec.merges.is_empty() && spec.token_types.is_empty());
        assert_eq!((spec.bos_token_id, spec.add_bos_token), (None, false));
        assert_eq!((spec.add_eos_token, spec.add_space_prefix), (false, None));
    }

    #[test]
    fn sentencepiece_adds_bos_unless_told_otherwise() {
        let md = metadata(&[(KEY_MODEL, json!("llama")), (KEY_TOKENS, json!(["a"]))]);
        assert!(
            TokenizerSpec::from_gguf_metadata(&md)
                .unwrap()
                .add_bos_token
        );
        let md = metadata(&[
            (KEY_MODEL, json!("llama")),
            (KEY_TOKENS, json!(["a"])),
            (KEY_ADD_BOS, json!(false)),
        ]);
        assert!(
            !TokenizerSpec::from_gguf_metadata(&md)
                .unwrap()
                .add_bos_token
        );
    }

    #[test]
    fn errors_name_the_key_and_index() {
        let cases = [
            (
                metadata(&[(KEY_TOKENS, json!(["a"]))]),
                "tokenizer.ggml.model: missing from the GGUF metadata",
            ),
            (
                metadata(&[(KEY_MODEL, json!("gpt2")), (KEY_TOKENS, json!(["a", 7]))]),
                "tokenizer.ggml.tokens[1]: expected a string",
            ),
            (
                metadata(&[
                    (KEY_MODEL, json!("gpt2")),
                    (KEY_TOKENS, json!(["a"])),
                    (KEY_BOS, json!(-1)),
                ]),
                "tokenizer.ggml.bos_token_id: -1 is not a valid token id",
            ),
            (
                metadata(&[
                    (KEY_MODEL, json!("gpt2")),
                    (KEY_TOKENS, json!(["a"])),
                    (KEY_ADD_BOS, json!("yes")),
                ]),
                "tokenizer.ggml.add_bos_token: expected a boolean",
            ),
            (
                metadata(&[
                    (KEY_MODEL, json!("llama")),
                    (KEY_TOKENS, json!(["a", "b"])),
                    (KEY_SCORES, json!([0.5, "x"])),
                ]),
                "tokenizer.ggml.scores[1]: expected a number",
            ),
            (
                metadata(&[(KEY_MODEL, json!("gpt2")), (KEY_TOKENS, json!("a"))]),
                "tokenizer.ggml.tokens: expected an array",
            ),
        ];
        for (md, expected) in cases {
            let err = TokenizerSpec::from_gguf_metadata(&md).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }
}
