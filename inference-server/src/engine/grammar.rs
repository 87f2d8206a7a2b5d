//! Constrained decoding for `response_format`: a JSON schema (or any JSON
//! object) compiled by llguidance, the grammar engine llama.cpp and vLLM
//! use, over this model's own vocabulary. Before each token of a
//! constrained sequence is sampled, the engine computes the set of tokens
//! the grammar allows next ([`Constraint::prepare`], run beside the forward
//! pass) and masks every other logit to −∞, so sampling (greedy or not) can
//! only pick a token that keeps the output a valid prefix; when the grammar
//! is complete only end-of-sequence is allowed.
//!
//! The JSON is compact (`", "` between items, `": "` after keys, no other
//! whitespace) unless the schema's own `x-guidance` options say otherwise:
//! with free whitespace a small model can spend its whole budget on
//! newlines, and compact JSON is what a client parses anyway.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::text::TextTokenizer;

/// A `response_format` other than plain text.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// `{"type": "json_object"}`: any JSON object.
    JsonObject,
    /// `{"type": "json_schema", "json_schema": {"schema": …}}`.
    JsonSchema(Value),
    /// A Lark grammar (llguidance's dialect) for tool calls: one forcing a
    /// call (`tool_choice` `required` or a named function), or one allowing
    /// a call or an answer in the `response_format` (`auto` with one).
    Lark(String),
}

#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    /// The schema is refused by the grammar engine; the message names the
    /// part (llguidance's own words).
    #[error("{0}")]
    Compile(String),
    #[error("the grammar engine cannot use this model's vocabulary: {0}")]
    Vocabulary(String),
    #[error("the grammar engine failed while generating: {0}")]
    Step(String),
}

/// Compiles response formats for one model: built once, on the first
/// request that needs it (building the token trie takes tens of
/// milliseconds for a large vocabulary).
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    pub fn new(tokenizer: Arc<TextTokenizer>) -> Result<Self, GrammarError> {
        let vocabulary = Vocabulary::new(tokenizer)?;
        let env: llguidance::toktrie::TokEnv = Arc::new(vocabulary);
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
        // llguidance logs grammar warnings to stderr by default; errors
        // reach the client through `Compile` instead.
        factory.quiet();
        Ok(Self { factory })
    }

    /// A fresh constraint for one request.
    pub fn compile(&self, format: &ResponseFormat) -> Result<Constraint, GrammarError> {
        let grammar = match (format, format.compact_schema()) {
            (ResponseFormat::Lark(lark), _) => TopLevelGrammar::from_lark(lark.clone()),
            (_, Some(schema)) => TopLevelGrammar::from_json_schema(schema),
            (_, None) => {
                return Err(GrammarError::Compile(
                    "a JSON response format without a schema".into(),
                ))
            }
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| GrammarError::Compile(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Compile(e));
        }
        Ok(Constraint {
            matcher,
            mask: None,
        })
    }
}

impl ResponseFormat {
    /// The JSON schema a JSON format constrains to, asking for compact JSON
    /// (see `compact_json`); `None` for a Lark grammar.
    pub fn compact_schema(&self) -> Option<Value> {
        let mut schema = match self {
            Self::JsonObject => json!({"type": "object"}),
            Self::JsonSchema(schema) => schema.clone(),
            Self::Lark(_) => return None,
        };
        compact_json(&mut schema);
        Some(schema)
    }
}

/// Asks llguidance for compact JSON (`", "`, `": "`, no other whitespace)
/// from `schema`, unless its own `x-guidance` options say otherwise (see
/// the module for why).
pub fn compact_json(schema: &mut Value) {
    guidance_options(schema, false);
}

/// [`compact_json`], and keywords llguidance cannot enforce (`uniqueItems`,
/// an unknown `format`) left unenforced rather than refused: for a schema
/// the client did not mark `strict`, which OpenAI follows on a best-effort
/// basis. (A client's own `x-guidance` options are kept as they are.)
pub fn compact_lenient_json(schema: &mut Value) {
    guidance_options(schema, true);
}

fn guidance_options(schema: &mut Value, lenient: bool) {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": ",
                   "lenient": lenient})
        });
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
    /// The tokens allowed next, computed ahead by `prepare`.
    mask: Option<Result<SimpleVob, String>>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// Computes the mask for the next token (the engine calls this on
    /// another thread while the forward pass runs).
    pub fn prepare(&mut self) {
        if self.mask.is_none() {
            self.mask = Some(self.matcher.compute_mask().map_err(|e| e.to_string()));
        }
    }

    /// Sets the logit of every token the grammar does not allow next to
    /// −∞ (ids past the vocabulary included).
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), GrammarError> {
        self.prepare();
        let mask = match self.mask.take() {
            Some(Ok(mask)) => mask,
            Some(Err(e)) => return Err(GrammarError::Step(e)),
            None => return Err(GrammarError::Step("no mask was computed".into())),
        };
        let known = mask.len().min(logits.len());
        for (id, logit) in logits.iter_mut().enumerate() {
            if id >= known || !mask.is_allowed(id as TokenId) {
                *logit = f32::NEG_INFINITY;
            }
        }
        if mask.num_set() == 0 {
            return Err(GrammarError::Step("the grammar allows no token".into()));
        }
        Ok(())
    }

    /// An independent copy of this state (another choice of the same
    /// request, continuing from the same point).
    pub fn fork(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
            mask: self.mask.clone(),
        }
    }

    /// Tells the grammar the token chosen.
    pub fn commit(&mut self, token: u32) -> Result<(), GrammarError> {
        self.mask = None;
        self.matcher
            .consume_token(token)
            .map_err(|e| GrammarError::Step(e.to_string()))
    }

    /// The grammar has ended (it consumed end-of-sequence, or nothing more
    /// can follow).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// The model's vocabulary as llguidance reads it: each token's bytes, with
/// special tokens marked (`0xFF` + their name) so their text can never be
/// produced as ordinary output, and a tokenizer for the bytes it forces.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<TextTokenizer>,
}

impl Vocabulary {
    fn new(tokenizer: Arc<TextTokenizer>) -> Result<Self, GrammarError> {
        let size = tokenizer.vocab_size();
        let eos = tokenizer
            .eos_token_id()
            .or_else(|| tokenizer.stop_token_ids().first().copied())
            .ok_or_else(|| {
                GrammarError::Vocabulary("the model has no end-of-sequence token".into())
            })?;
        let words: Vec<Vec<u8>> = (0..size as u32)
            .map(|id| {
                if tokenizer.is_special(id) {
                    let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    word.extend(tokenizer.token_text(id).unwrap_or_default().into_bytes());
                    word
                } else {
                    tokenizer.token_bytes(id).unwrap_or_default().to_vec()
                }
            })
            .collect();
        let size = u32::try_from(size)
            .map_err(|_| GrammarError::Vocabulary(format!("{size} tokens is too many")))?;
        let mut info = TokRxInfo::new(size, eos);
        info.tok_bos = tokenizer.bos_token_id();
        // Every token that ends the answer ends the grammar too: with only
        // one, a grammar that may go on (several tool calls) would mask the
        // end-of-turn token a model ends with when it is not the file's
        // end-of-sequence one (Phi-3's `<|end|>`, Gemma's `<end_of_turn>`),
        // and force more output where the model meant to stop.
        let ends: Vec<TokenId> = std::iter::once(eos)
            .chain(tokenizer.stop_token_ids().iter().copied())
            .filter(|&id| id < size)
            .fold(Vec::new(), |mut ends, id| {
                if !ends.contains(&id) {
                    ends.push(id);
                }
                ends
            });
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
        Ok(Self { trie, tokenizer })
    }
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Used by llguidance for the bytes a grammar forces; text the model's
    /// tokenizer cannot take (not UTF-8) falls back to the trie's greedy
    /// split.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer.encode_plain(text).unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::fixtures::smollm_tokenizer;

    /// Drives a constraint the way the engine does, with made-up logits
    /// (a seeded generator, so each run is the same): masked, then the
    /// highest allowed logit chosen. Returns the text and whether the
    /// grammar finished within `steps`.
    fn generate(constraint: &mut Constraint, seed: u64, steps: usize) -> (String, bool) {
        let tokenizer = smollm_tokenizer();
        let mut state = seed | 1;
        let mut ids = Vec::new();
        for _ in 0..steps {
            let mut logits: Vec<f32> = (0..tokenizer.vocab_size() + 7)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 10_000) as f32 / 1000.0
                })
                .collect();
            constraint.mask_logits(&mut logits).unwrap();
            let token = crate::engine::sampling::argmax(&logits);
            constraint.commit(token).unwrap();
            // The token that completes the grammar is output too (`decode`
            // drops an end-of-sequence).
            ids.push(token);
            if constraint.is_finished() {
                return (tokenizer.decode(&ids).unwrap(), true);
            }
        }
        (tokenizer.decode(&ids).unwrap(), false)
    }

    fn grammars() -> Grammars {
        Grammars::new(smollm_tokenizer()).unwrap()
    }

    #[test]
    fn whatever_the_logits_the_output_is_an_object_of_the_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}
            },
            "required": ["city", "unit", "days", "tags"],
            "additionalProperties": false
        });
        let grammars = grammars();
        for seed in 0..8 {
            let mut c = grammars
                .compile(&ResponseFormat::JsonSchema(schema.clone()))
                .unwrap();
            let (text, finished) = generate(&mut c, seed, 400);
            assert!(
                finished,
                "seed {seed}: unfinished after 400 tokens: {text:?}"
            );
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?}"));
            assert!(
                v["city"].as_str().is_some_and(|c| c.chars().count() <= 12),
                "{text}"
            );
            assert!(
                ["celsius", "fahrenheit"].contains(&v["unit"].as_str().unwrap()),
                "{text}"
            );
            assert!((1..=7).contains(&v["days"].as_i64().unwrap()), "{text}");
            assert!(v["tags"].as_array().unwrap().len() <= 3, "{text}");
            assert_eq!(v.as_object().unwrap().len(), 4, "{text}");
        }
    }

    #[test]
    fn json_object_gives_an_object_and_never_a_special_token_inside_it() {
        let grammars = grammars();
        let tokenizer = smollm_tokenizer();
        let im_end = tokenizer.stop_token_ids()[0];
        let mut c = grammars.compile(&ResponseFormat::JsonObject).unwrap();
        // The first mask: only the opening of an object.
        let mut logits = vec![0.0; tokenizer.vocab_size()];
        c.mask_logits(&mut logits).unwrap();
        assert_eq!(logits[im_end as usize], f32::NEG_INFINITY);
        let allowed: Vec<String> = (0..logits.len() as u32)
            .filter(|&id| logits[id as usize].is_finite())
            .map(|id| tokenizer.decode(&[id]).unwrap())
            .collect();
        assert!(!allowed.is_empty());
        assert!(
            allowed.iter().all(|t| t.trim_start().starts_with('{')),
            "{allowed:?}"
        );
        let (text, finished) = generate(&mut c, 3, 300);
        if finished {
            assert!(
                serde_json::from_str::<Value>(&text).unwrap().is_object(),
                "{text}"
            );
        } else {
            assert!(text.starts_with('{'), "{text}");
        }
    }

    #[test]
    fn a_grammar_that_may_end_allows_every_end_of_turn_token() {
        let tokenizer = smollm_tokenizer();
        let stops = tokenizer.stop_token_ids().to_vec();
        assert!(
            stops.len() > 1,
            "SmolLM2 ends turns with several: {stops:?}"
        );
        let grammars = grammars();
        // May stop after "a", or go on with more "b"s (as several tool
        // calls may).
        let mut c = grammars
            .compile(&ResponseFormat::Lark(r#"start: "a" "b"*"#.into()))
            .unwrap();
        let a = tokenizer.encode_plain("a").unwrap();
        assert_eq!(a.len(), 1);
        c.commit(a[0]).unwrap();
        let mut logits = vec![0.0; tokenizer.vocab_size()];
        c.mask_logits(&mut logits).unwrap();
        for stop in stops {
            assert!(
                logits[stop as usize].is_finite(),
                "{:?} is masked",
                tokenizer.token_text(stop)
            );
        }
    }

    #[test]
    fn a_schema_the_engine_cannot_enforce_is_refused_naming_the_part() {
        let grammars = grammars();
        for (schema, named) in [
            (json!({"type": "strng"}), "strng"),
            (json!({"type": "string", "pattern": "(?<=a)b"}), "(?<=a)b"),
            (
                json!({"type": "integer", "minimum": 5, "maximum": 2}),
                "minimum",
            ),
        ] {
            match grammars.compile(&ResponseFormat::JsonSchema(schema.clone())) {
                Err(GrammarError::Compile(message)) => {
                    assert!(message.contains(named), "{schema}: {message}")
                }
                other => panic!("{schema}: {other:?}"),
            }
        }
    }

    /// A keyword llguidance cannot enforce refuses a strict schema, and is
    /// left unenforced in one the client did not mark strict; a schema
    /// that is wrong (an unknown type) is refused either way.
    #[test]
    fn a_lenient_schema_leaves_unenforceable_keywords_out() {
        let grammars = grammars();
        let unique = json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true});
        match grammars.compile(&ResponseFormat::JsonSchema(unique.clone())) {
            Err(GrammarError::Compile(message)) => assert!(message.contains("uniqueItems")),
            other => panic!("{other:?}"),
        }
        let mut lenient = unique;
        compact_lenient_json(&mut lenient);
        let mut c = grammars
            .compile(&ResponseFormat::JsonSchema(lenient))
            .unwrap();
        let (text, _) = generate(&mut c, 1, 40);
        assert!(text.starts_with('['), "{text}");
        let mut wrong = json!({"type": "strng"});
        compact_lenient_json(&mut wrong);
        assert!(grammars
            .compile(&ResponseFormat::JsonSchema(wrong))
            .is_err());
    }
}
