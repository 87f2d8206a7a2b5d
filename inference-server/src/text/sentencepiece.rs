//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`: Llama 2,
//! Mistral, Gemma): words carry their spaces as `▁`, a score ranks every
//! token, and `<0xAB>` tokens spell any byte the vocabulary lacks.
//!
//! Built the way transformers' GGUF converter builds it, so the ids are the
//! Hugging Face tokenizer's: a BPE model (byte fallback, unknown runs fused)
//! whose merges are derived from the vocabulary, since the file has none
//! ([`derive_merges`], a port of `generate_merges`). The whole text (between
//! special tokens) is one word: spaces become `▁`, with one more in front
//! when `add_space_prefix` says so.
//!
//! Gemma files differ in two ways, which `Family::Gemma` undoes: a token of
//! two or more spaces is stored as real spaces where the model knows it as
//! `▁▁`, and merge priority follows the token's position in the file, not
//! its score.

use ahash::AHashSet;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};

use super::bpe::{BpeOptions, FlatBpe, TokenTexts};
use super::error::TextError;
use super::spec::{TokenizerSpec, KEY_MERGES, KEY_SCORES, KEY_UNK};
use super::tokenizer::{parse_byte_token, token_type, Pipeline, Vocabulary};

const SPACE: char = '▁';

/// Which of transformers' SentencePiece builders a file gets, by
/// `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Llama,
    Gemma,
}

impl Family {
    fn of(architecture: Option<&str>) -> Self {
        match architecture {
            Some("gemma" | "gemma2" | "gemma3") => Family::Gemma,
            _ => Family::Llama,
        }
    }

    /// When the file does not say: Llama-style tokenizers write a space
    /// before the text, Gemma's do not.
    fn default_space_prefix(self) -> bool {
        self == Family::Llama
    }
}

pub(super) fn build(spec: &TokenizerSpec, types: &[i32]) -> Result<Vocabulary, TextError> {
    let family = Family::of(spec.architecture.as_deref());
    let tokens: Vec<String> = match family {
        Family::Gemma => spec.tokens.iter().map(|t| respell_spaces(t)).collect(),
        Family::Llama => spec.tokens.clone(),
    };
    let texts = TokenTexts::new(&tokens)?;
    let merges = if spec.merges.is_empty() {
        let priority = priorities(spec, family)?;
        derive_merges(&tokens, &texts, &priority)?
    } else {
        listed_merges(&spec.merges)?
    };
    let options = BpeOptions {
        byte_fallback: true,
        unk_token: unknown_token(spec, &tokens, &texts)?,
        fuse_unk: true,
    };
    let model = FlatBpe::with_texts(texts, merges, options)?;

    let prefix = spec
        .add_space_prefix
        .unwrap_or(family.default_space_prefix());
    // `First`: only the text's start gets the prefix, not each stretch
    // between two special tokens (transformers' `legacy=False`).
    let scheme = if prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let mut tokenizer = Pipeline::new(model);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE, scheme, false)));

    let bytes = spec
        .tokens
        .iter()
        .zip(types)
        .map(|(text, &t)| token_to_bytes(text, t))
        .collect();
    Ok(Vocabulary {
        tokenizer,
        bytes,
        strip_leading_space: prefix,
    })
}

/// A token made only of whitespace, with at least one space, is stored with
/// real spaces in Gemma files; the model's own spelling is one `▁` per
/// character (transformers respells the same set: Python's `isspace`).
fn respell_spaces(token: &str) -> String {
    let python_space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    if token.contains(' ') && token.chars().all(python_space) {
        SPACE.to_string().repeat(token.chars().count())
    } else {
        token.to_owned()
    }
}

/// Merge priority of each token id, higher first: its score, or for Gemma
/// its position (earlier is better).
fn priorities(spec: &TokenizerSpec, family: Family) -> Result<Vec<f64>, TextError> {
    match family {
        Family::Gemma => Ok((0..spec.tokens.len()).map(|i| -(i as f64)).collect()),
        Family::Llama if spec.scores.is_empty() => Err(TextError::MissingMetadata {
            key: KEY_SCORES.into(),
        }),
        Family::Llama if spec.scores.len() != spec.tokens.len() => Err(TextError::invalid(
            KEY_SCORES,
            format!(
                "has {} entries for {} tokens",
                spec.scores.len(),
                spec.tokens.len()
            ),
        )),
        Family::Llama => Ok(spec.scores.iter().map(|&s| f64::from(s)).collect()),
    }
}

/// Every way to cut a token in two known tokens is a merge; merges rank by
/// the priority of the token they make, then by the longer left part, then
/// the longer right part, then (stable sort) by the file order of the token
/// and the ids of the parts. This is transformers' `generate_merges` step for
/// step (lengths in characters), because BPE breaks ties between equal
/// priorities by rank, and only the same order gives the same ids.
fn derive_merges<'a>(
    tokens: &'a [String],
    texts: &TokenTexts,
    priority: &[f64],
) -> Result<Vec<(&'a str, &'a str)>, TextError> {
    // Each cut of a token hashes both halves: a token of L bytes costs
    // about L² (a crafted vocabulary of long tokens, hours and gigabytes).
    let work = tokens
        .iter()
        .map(|t| (t.len() as u64).saturating_mul(t.len() as u64))
        .fold(0u64, u64::saturating_add);
    if work > MAX_MERGE_WORK {
        return Err(TextError::invalid(
            "tokenizer.ggml.tokens",
            format!(
                "tokens too long to derive merges from (the sum of their squared lengths is \
                 {work}, over {MAX_MERGE_WORK}; Gemma 3's 262,144 tokens sum to 26.5 million)"
            ),
        ));
    }
    struct Candidate<'a> {
        left: &'a str,
        right: &'a str,
        priority: f64,
        left_chars: usize,
        right_chars: usize,
    }
    let mut seen = AHashSet::with_capacity(tokens.len());
    let mut candidates = Vec::new();
    for token in tokens {
        // A repeated string counts once, where it first appears, with the
        // priority of the id the vocabulary kept (the last).
        if !seen.insert(token.as_str()) {
            continue;
        }
        let Some(id) = texts.id(token) else {
            continue;
        };
        let score = priority.get(id as usize).copied().unwrap_or(f64::MIN);
        let mut local: Vec<(u32, u32, Candidate<'_>)> = Vec::new();
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if let (Some(l), Some(r)) = (texts.id(left), texts.id(right)) {
                local.push((
                    l,
                    r,
                    Candidate {
                        left,
                        right,
                        priority: score,
                        left_chars: left.chars().count(),
                        right_chars: right.chars().count(),
                    },
                ));
            }
        }
        local.sort_by_key(|(l, r, _)| (*l, *r));
        candidates.extend(local.into_iter().map(|(_, _, c)| c));
    }
    candidates.sort_by(|a, b| {
        b.priority
            .total_cmp(&a.priority)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    Ok(candidates.into_iter().map(|c| (c.left, c.right)).collect())
}

/// The most [`derive_merges`] works through (the sum of the tokens' squared
/// lengths): fifteen times Gemma 3's vocabulary.
const MAX_MERGE_WORK: u64 = 400_000_000;

/// A file that does list merges is taken at its word, as transformers does.
fn listed_merges(merges: &[String]) -> Result<Vec<(&str, &str)>, TextError> {
    merges
        .iter()
        .enumerate()
        .map(|(i, merge)| {
            merge.split_once(' ').ok_or_else(|| {
                TextError::invalid(format!("{KEY_MERGES}[{i}]"), "expected 'left right'")
            })
        })
        .collect()
}

/// The token text fed to BPE's unknown slot: the file's unknown token, or
/// `<unk>` when the vocabulary has one (transformers' default).
fn unknown_token(
    spec: &TokenizerSpec,
    tokens: &[String],
    texts: &TokenTexts,
) -> Result<Option<String>, TextError> {
    match spec.unknown_token_id {
        Some(id) => tokens.get(id as usize).cloned().map(Some).ok_or_else(|| {
            TextError::invalid(
                KEY_UNK,
                format!("{id} is outside the vocabulary of {} tokens", tokens.len()),
            )
        }),
        None => Ok(texts.id("<unk>").is_some().then(|| "<unk>".to_owned())),
    }
}

/// `▁` stands for a space in every token with text; `<0xAB>` is one byte.
fn token_to_bytes(text: &str, t: i32) -> Option<Box<[u8]>> {
    match t {
        token_type::CONTROL | token_type::UNKNOWN | token_type::UNUSED => None,
        token_type::BYTE => match parse_byte_token(text) {
            Some(b) => Some([b].into()),
            None => Some(text.replace(SPACE, " ").into_bytes().into()),
        },
        _ => Some(text.replace(SPACE, " ").into_bytes().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::fixtures::{sp_id, tiny_sp_spec, BOS, EOS};
    use crate::text::TextTokenizer;

    fn tokenizer(spec: &TokenizerSpec) -> TextTokenizer {
        TextTokenizer::from_spec(spec).unwrap()
    }

    #[test]
    fn encodes_with_prefix_scores_and_byte_fallback() {
        let tok = tokenizer(&tiny_sp_spec());
        let cases: &[(&str, Vec<u32>)] = &[
            ("hello", vec![BOS, sp_id("▁hello")]),
            ("hello world", vec![BOS, sp_id("▁hello"), sp_id("▁world")]),
            // Text that starts with a space gets no prefix (transformers'
            // Metaspace; SentencePiece itself would write `▁▁hello`).
            (" hello", vec![BOS, sp_id("▁hello")]),
            (
                "hello  world",
                vec![BOS, sp_id("▁hello"), sp_id("▁"), sp_id("▁world")],
            ),
            // `é` and `\n` are not in the vocabulary: their UTF-8 bytes.
            (
                "hé\n",
                vec![
                    BOS,
                    sp_id("▁h"),
                    sp_id("<0xC3>"),
                    sp_id("<0xA9>"),
                    sp_id("<0x0A>"),
                ],
            ),
            ("", vec![BOS]),
            ("</s>", vec![BOS, EOS]),
        ];
        for (text, ids) in cases {
            assert_eq!(&tok.encode(text).unwrap(), ids, "{text:?}");
        }
    }

    #[test]
    fn decode_drops_the_prefix_space_and_round_trips() {
        let tok = tokenizer(&tiny_sp_spec());
        assert!(tok.strips_leading_space());
        for text in [
            "hello world",
            "hello  world ",
            "hé\n",
            "\u{0}\u{1f} x",
            "🎉",
        ] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text, "{ids:?}");
        }
        // A leading space doubles as the prefix, so it is lost, as in
        // transformers' decode of the same ids.
        let ids = tok.encode(" hello").unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), "hello");
    }

    #[test]
    fn without_space_prefix_nothing_is_prepended_or_stripped() {
        let spec = TokenizerSpec {
            add_space_prefix: Some(false),
            ..tiny_sp_spec()
        };
        let tok = tokenizer(&spec);
        assert!(!tok.strips_leading_space());
        assert_eq!(
            tok.encode("hello world").unwrap(),
            [BOS, sp_id("h"), sp_id("ello"), sp_id("▁world")]
        );
        assert_eq!(tok.decode(&[sp_id("▁world")]).unwrap(), " world");
    }

    #[test]
    fn gemma_respells_space_runs_and_ranks_by_position() {
        let mut spec = TokenizerSpec {
            architecture: Some("gemma3".into()),
            ..tiny_sp_spec()
        };
        spec.tokens.push("  ".into());
        spec.token_types.push(token_type::USER_DEFINED);
        spec.scores.push(0.0);
        let tok = tokenizer(&spec);
        let two_spaces = (spec.tokens.len() - 1) as u32;
        // The model knows the stored "  " as `▁▁`, so two spaces in the
        // text find it.
        assert_eq!(tok.encode("  ").unwrap(), [BOS, two_spaces]);
        // No prefix for Gemma (with one, `▁▁` would come first), and the
        // respelled token ranks last, as it is last in the file.
        assert_eq!(
            tok.encode("  hello").unwrap(),
            [BOS, sp_id("▁"), sp_id("▁hello")]
        );
        assert!(!tok.strips_leading_space());
        assert_eq!(tok.decode(&[two_spaces]).unwrap(), "  ");
    }

    #[test]
    fn merge_order_follows_transformers() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .map(String::from)
            .to_vec();
        let texts = TokenTexts::new(&tokens).unwrap();
        // `abc` outranks everything; `ab` and `bc` tie, so the longer left
        // part, then file order decides.
        let priority = [0.0, 0.0, 0.0, -1.0, -1.0, 5.0];
        let merges = derive_merges(&tokens, &texts, &priority).unwrap();
        assert_eq!(merges, [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }

    #[test]
    fn a_vocabulary_too_long_to_derive_merges_from_is_refused() {
        // "a", "aa", ... up to 2,000 a's: hundreds of millions of hashes.
        let tokens: Vec<String> = (1..=2_000).map(|n| "a".repeat(n)).collect();
        let texts = TokenTexts::new(&tokens).unwrap();
        let priority = vec![0.0; tokens.len()];
        let err = derive_merges(&tokens, &texts, &priority).unwrap_err();
        assert!(
            err.to_string().contains("tokenizer.ggml.tokens")
                && err.to_string().contains("too long to derive merges"),
            "{err}"
        );
    }

    #[test]
    fn respells_only_whitespace_runs_with_a_space() {
        assert_eq!(respell_spaces("  "), "▁▁");
        assert_eq!(respell_spaces(" \n"), "▁▁");
        assert_eq!(respell_spaces("\n\n"), "\n\n");
        assert_eq!(respell_spaces(" a"), " a");
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let cases = [
            (
                TokenizerSpec {
                    scores: vec![],
                    ..tiny_sp_spec()
                },
                "tokenizer.ggml.scores: missing from the GGUF metadata",
            ),
            (
                TokenizerSpec {
                    scores: vec![0.0],
                    ..tiny_sp_spec()
                },
                "tokenizer.ggml.scores: has 1 entries for 277 tokens",
            ),
            (
                TokenizerSpec {
                    unknown_token_id: Some(9999),
                    ..tiny_sp_spec()
                },
                "tokenizer.ggml.unknown_token_id: 9999 is outside the vocabulary of 277 tokens",
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(
                TextTokenizer::from_spec(&spec).unwrap_err().to_string(),
                expected
            );
        }
    }
}
