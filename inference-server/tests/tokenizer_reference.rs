//! The tokenizer built from a GGUF file against Hugging Face's for the same
//! file: for every reference text (whitespace runs, every C0 control, byte
//! fallback, scripts, emoji, code, special-token text) the ids equal
//! transformers' `tokenizer(text)["input_ids"]`, BOS included, and decoding
//! those ids, whole or streamed one id at a time, gives transformers'
//! `decode(ids, skip_special_tokens=True)`, which is the text itself except
//! for special tokens and bytes the vocabulary cannot spell.
//!
//! The reference JSON files are checked in; `tokenizer_reference/generate.py`
//! wrote them (how, and with which pinned versions, is in that file and in
//! each JSON). For SmolLM2 the converter's pre-tokenizer is replaced by the
//! model's published one (digits split first), which transformers' converter
//! does not know; the file says so. The GGUF files come from `make test`'s
//! setup; a missing one fails the test, saying how to get it.

// Test helpers outside `#[test]` functions may fail loudly too (clippy.toml
// allows it only inside them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use maas_inference_server::text::{IncrementalDecoder, TextTokenizer, TokenizerSpec};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model: String,
    transformers: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn model_path(file: &str, env: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.cache/models")
            .join(file)
    });
    assert!(
        path.is_file(),
        "{} not found: `make test` fetches it into .cache/models (scripts/), or set {env} to its path",
        path.display()
    );
    path
}

fn tokenizer(path: &Path, adjust: fn(&mut TokenizerSpec)) -> (TokenizerSpec, Arc<TextTokenizer>) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut spec = TokenizerSpec::from_metadata(&content).unwrap();
    adjust(&mut spec);
    let tokenizer = TextTokenizer::from_spec(&spec).unwrap();
    (spec, Arc::new(tokenizer))
}

fn streamed(tokenizer: &Arc<TextTokenizer>, ids: &[u32]) -> String {
    let mut decoder = IncrementalDecoder::new(Arc::clone(tokenizer));
    let mut text: String = ids.iter().map(|&id| decoder.push(id)).collect();
    text.push_str(&decoder.finish());
    text
}

/// Checks every case and reports all mismatches at once.
fn check(
    reference_json: &str,
    file: &str,
    env: &str,
    adjust: fn(&mut TokenizerSpec),
) -> (TokenizerSpec, Arc<TextTokenizer>) {
    let reference: Reference = serde_json::from_str(reference_json).unwrap();
    assert_eq!(reference.model, file, "reference data is for another file");
    let (spec, tokenizer) = tokenizer(&model_path(file, env), adjust);
    let mut failures = Vec::new();
    for case in &reference.cases {
        let ids = tokenizer.encode(&case.text).unwrap();
        if ids != case.ids {
            failures.push(format!(
                "encode {:?}\n   ours {ids:?}\n   transformers {:?}",
                case.text, case.ids
            ));
        }
        let decoded = tokenizer.decode(&case.ids).unwrap();
        if decoded != case.decoded {
            failures.push(format!(
                "decode {:?}\n   ours {decoded:?}\n   transformers {:?}",
                case.ids, case.decoded
            ));
        }
        let stream = streamed(&tokenizer, &case.ids);
        if stream != case.decoded {
            failures.push(format!(
                "stream {:?}\n   ours {stream:?}\n   transformers {:?}",
                case.ids, case.decoded
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from transformers {}:\n{}",
        failures.len(),
        reference.cases.len(),
        reference.transformers,
        failures.join("\n")
    );
    (spec, tokenizer)
}

#[test]
fn smollm2_byte_level_bpe_matches_transformers() {
    let (spec, tokenizer) = check(
        include_str!("tokenizer_reference/smollm2.json"),
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "TEXT_TEST_GGUF",
        |_| {},
    );
    assert_eq!(spec.model, "gpt2");
    assert!(!tokenizer.strips_leading_space());
}

#[test]
fn gemma3_sentencepiece_matches_transformers() {
    let (spec, tokenizer) = check(
        include_str!("tokenizer_reference/gemma3.json"),
        "gemma-3-270m-q4_k_m.gguf",
        "TEXT_TEST_GEMMA_GGUF",
        |_| {},
    );
    // What the file says, and what the checks above therefore covered.
    assert_eq!(spec.model, "llama");
    assert_eq!(spec.architecture.as_deref(), Some("gemma3"));
    assert_eq!(spec.add_space_prefix, Some(false));
    assert!(spec.add_bos_token && spec.merges.is_empty());
    assert_eq!(tokenizer.vocab_size(), 262_144);
    assert_eq!(tokenizer.bos_token_id(), Some(2));
    assert_eq!(tokenizer.token_text(106).as_deref(), Some("<end_of_turn>"));
    assert!(tokenizer.stop_token_ids().contains(&106));
    assert!(!tokenizer.strips_leading_space());
}

/// The Llama-style SentencePiece path (Llama 2, Mistral): score-ranked
/// merges, a `▁` prefix, the prefix space dropped on decode. No such file is
/// fetched, so Gemma's real 262k vocabulary goes through it, as a file naming
/// the `llama` architecture would, against transformers' Llama builder on the
/// same vocabulary (`generate.py tokens-as-llama`). That builder always writes
/// the prefix, so the file's `add_space_prefix = false` is left out.
#[test]
fn llama_style_sentencepiece_matches_transformers() {
    let (spec, tokenizer) = check(
        include_str!("tokenizer_reference/gemma3_vocab_as_llama.json"),
        "gemma-3-270m-q4_k_m.gguf",
        "TEXT_TEST_GEMMA_GGUF",
        |spec| {
            spec.architecture = Some("llama".into());
            spec.add_space_prefix = None;
        },
    );
    assert!(spec.merges.is_empty() && !spec.scores.is_empty());
    assert!(tokenizer.strips_leading_space());
}
