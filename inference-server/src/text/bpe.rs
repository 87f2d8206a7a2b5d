//! The BPE model both vocabulary formats encode with, in flat arrays.
//!
//! `tokenizers`' own `BPE` holds its vocabulary twice in hash maps of owned
//! strings (text → id and id → text) and its merges in a third map: 72 MiB
//! for Gemma 3's 262,144 tokens and 514,906 derived merges, more than a
//! quarter of the 253 MB model file. Here each string is stored once, in one
//! buffer; the text → id index is a table of ids (4 bytes a slot) and the
//! merges a table of rules (16 bytes a slot): 19 MiB for the same
//! vocabulary, added tokens included. The rest of the pipeline (normalizer,
//! pre-tokenizer, added tokens) is still `tokenizers`', which drives this
//! through its `Model` trait.
//!
//! The algorithm is `tokenizers`' `BPE` without dropout, continuing-subword
//! prefixes or end-of-word suffixes (no GGUF vocabulary uses them): each
//! character becomes its token (or its bytes' `<0xAB>` tokens with byte
//! fallback, else the unknown token, with runs fused), then the adjacent
//! pair of lowest merge rank is merged, leftmost first, until none is left.
//! So the ids are the library's (`tokenizer_reference` tests both formats
//! against transformers).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use ahash::RandomState;
use tokenizers::models::bpe::BpeTrainer;
use tokenizers::{Model, Token};

use super::error::TextError;
use super::spec::{KEY_MERGES, KEY_TOKENS, KEY_UNK};

/// Options of the model, as `tokenizers`' `BpeBuilder` names them.
#[derive(Debug, Clone, Default)]
pub(super) struct BpeOptions {
    /// A character missing from the vocabulary becomes its UTF-8 bytes'
    /// `<0xAB>` tokens (SentencePiece vocabularies).
    pub byte_fallback: bool,
    /// The token a character becomes when nothing else spells it.
    pub unk_token: Option<String>,
    /// Consecutive unknown characters become one unknown token.
    pub fuse_unk: bool,
}

pub(super) struct FlatBpe {
    texts: TokenTexts,
    merges: MergeIndex,
    /// `<0xAB>`'s id for each byte, when byte fallback is on and the
    /// vocabulary has the token.
    byte_tokens: Option<Box<[Option<u32>; 256]>>,
    /// Each ASCII character's token, looked up once: most characters of
    /// most prompts, which would otherwise each cost a hash and a compare.
    ascii: [Option<u32>; 128],
    unk: Option<u32>,
    fuse_unk: bool,
}

#[derive(Debug, Clone, Copy)]
struct MergeRule {
    /// `left << 32 | right`.
    pair: u64,
    rank: u32,
    merged: u32,
}

impl std::fmt::Debug for FlatBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatBpe")
            .field("tokens", &self.texts.len())
            .field("merges", &self.merges.len())
            .field("byte_fallback", &self.byte_tokens.is_some())
            .field("unk", &self.unk)
            .finish_non_exhaustive()
    }
}

impl FlatBpe {
    /// `tokens[id]` is token `id`'s text (see `TokenTexts::new`).
    pub fn new<'a>(
        tokens: &[String],
        merges: impl IntoIterator<Item = (&'a str, &'a str), IntoIter: ExactSizeIterator>,
        options: BpeOptions,
    ) -> Result<Self, TextError> {
        Self::with_texts(TokenTexts::new(tokens)?, merges, options)
    }

    /// Every part of every merge, and their concatenation, must be a token
    /// (the error names the first that is not, and its merge's index).
    pub fn with_texts<'a>(
        texts: TokenTexts,
        merges: impl IntoIterator<Item = (&'a str, &'a str), IntoIter: ExactSizeIterator>,
        options: BpeOptions,
    ) -> Result<Self, TextError> {
        let mut joined = String::new();
        let merges = merges.into_iter();
        let mut rules = Vec::with_capacity(merges.len());
        for (rank, (left, right)) in merges.enumerate() {
            let id_of = |text: &str| {
                texts.id(text).ok_or_else(|| {
                    TextError::invalid(
                        format!("{KEY_MERGES}[{rank}]"),
                        format!("'{text}' is not in the vocabulary"),
                    )
                })
            };
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            rules.push(MergeRule {
                pair: pair_key(id_of(left)?, id_of(right)?),
                rank: u32::try_from(rank)
                    .map_err(|_| TextError::invalid(KEY_MERGES, "more than 2^32 merges"))?,
                merged: id_of(&joined)?,
            });
        }

        let byte_tokens = options.byte_fallback.then(|| {
            let mut ids = Box::new([None; 256]);
            for (b, id) in ids.iter_mut().enumerate() {
                *id = texts.id(&format!("<0x{b:02X}>"));
            }
            ids
        });
        let unk = match &options.unk_token {
            Some(text) => Some(texts.id(text).ok_or_else(|| {
                TextError::invalid(KEY_UNK, format!("'{text}' is not in the vocabulary"))
            })?),
            None => None,
        };
        let ascii = std::array::from_fn(|c| {
            let c = char::from(c as u8);
            texts.id(c.encode_utf8(&mut [0; 4]))
        });
        Ok(Self {
            ascii,
            texts,
            merges: MergeIndex::new(rules),
            byte_tokens,
            unk,
            fuse_unk: options.fuse_unk,
        })
    }

    fn merge(&self, left: u32, right: u32) -> Option<MergeRule> {
        self.merges.get(pair_key(left, right))
    }

    /// The word's characters as tokens, before any merge.
    fn symbols(&self, word: &str) -> Vec<Symbol> {
        let mut symbols = Vec::with_capacity(word.len());
        let mut unknown: Option<Symbol> = None;
        for (at, c) in word.char_indices() {
            let text = &word[at..at + c.len_utf8()];
            let id = match self.ascii.get(c as usize) {
                Some(&id) => id,
                None => self.texts.id(text),
            };
            if let Some(id) = id {
                symbols.extend(unknown.take());
                symbols.push(Symbol::new(id, text.len()));
                continue;
            }
            let bytes: Option<Vec<u32>> = self
                .byte_tokens
                .as_ref()
                .and_then(|ids| text.bytes().map(|b| ids[b as usize]).collect());
            if let Some(bytes) = bytes {
                symbols.extend(bytes.into_iter().map(|id| Symbol::new(id, 1)));
                continue;
            }
            if let Some(unk) = self.unk {
                match &mut unknown {
                    Some(run) if self.fuse_unk => run.len += text.len(),
                    _ => {
                        symbols.extend(unknown.take());
                        unknown = Some(Symbol::new(unk, text.len()));
                    }
                }
            }
        }
        symbols.extend(unknown);
        for (i, s) in symbols.iter_mut().enumerate() {
            s.prev = i.checked_sub(1);
            s.next = Some(i + 1);
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        symbols
    }

    /// Applies merges to `symbols`, lowest rank first and, among equal
    /// ranks, leftmost first; returns the symbols left.
    fn merge_all(&self, mut symbols: Vec<Symbol>) -> Vec<Symbol> {
        let mut queue: BinaryHeap<Candidate> = symbols
            .windows(2)
            .enumerate()
            .filter_map(|(pos, w)| Some(Candidate::of(self.merge(w[0].id, w[1].id)?, pos)))
            .collect();
        while let Some(top) = queue.pop() {
            let current = symbols[top.pos];
            let Some(next) = current.next else { continue };
            // A symbol merged away (length 0), or one that changed since the
            // candidate was queued, leaves a stale entry.
            if current.len == 0
                || self
                    .merge(current.id, symbols[next].id)
                    .is_none_or(|m| m.merged != top.merged)
            {
                continue;
            }
            let right = symbols[next];
            symbols[top.pos] = Symbol {
                id: top.merged,
                len: current.len + right.len,
                next: right.next,
                ..current
            };
            symbols[next].len = 0;
            if let Some(after) = right.next {
                symbols[after].prev = Some(top.pos);
            }
            let merged = symbols[top.pos];
            if let Some(prev) = merged.prev {
                if let Some(m) = self.merge(symbols[prev].id, merged.id) {
                    queue.push(Candidate::of(m, prev));
                }
            }
            if let Some(after) = merged.next {
                if let Some(m) = self.merge(merged.id, symbols[after].id) {
                    queue.push(Candidate::of(m, top.pos));
                }
            }
        }
        symbols.retain(|s| s.len != 0);
        symbols
    }
}

impl Model for FlatBpe {
    // The trait wants a trainer; this model is read from a file and never
    // trained (`TokenizerImpl::train` is never called with it).
    type Trainer = BpeTrainer;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        let mut at = 0;
        Ok(self
            .merge_all(self.symbols(sequence))
            .into_iter()
            .map(|s| {
                let start = at;
                at += s.len;
                Token::new(
                    s.id,
                    self.texts.text(s.id).unwrap_or_default().to_owned(),
                    (start, at),
                )
            })
            .collect())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.texts.id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.texts.text(id).map(str::to_owned)
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        (0..self.texts.len() as u32)
            .filter_map(|id| self.texts.text(id).map(|t| (t.to_owned(), id)))
            .filter(|(t, id)| self.token_to_id(t) == Some(*id))
            .collect()
    }

    /// Distinct texts, as `tokenizers`' `BPE` counts its map.
    fn get_vocab_size(&self) -> usize {
        self.texts.index.distinct
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("the GGUF vocabulary is saved with its model file, not on its own".into())
    }

    fn get_trainer(&self) -> BpeTrainer {
        BpeTrainer::default()
    }
}

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    /// Bytes of the word it spans; 0 once merged into its left neighbour.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Symbol {
    fn new(id: u32, len: usize) -> Self {
        Self {
            id,
            len,
            prev: None,
            next: None,
        }
    }
}

/// A merge that may apply at `pos`; the heap pops the lowest rank, then the
/// leftmost position.
#[derive(Debug, PartialEq, Eq)]
struct Candidate {
    rank: u32,
    pos: usize,
    merged: u32,
}

impl Candidate {
    fn of(rule: MergeRule, pos: usize) -> Self {
        Self {
            rank: rule.rank,
            pos,
            merged: rule.merged,
        }
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then(other.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Pair → merge: an open-addressed table of the rules themselves (linear
/// probing, at most 60 % full), so a lookup, which mostly finds nothing,
/// touches about one cache line.
struct MergeIndex {
    /// `VACANT` or a rule.
    slots: Vec<MergeRule>,
    len: usize,
}

impl MergeIndex {
    /// No pair has this key: ids stay below `u32::MAX`.
    const VACANT: MergeRule = MergeRule {
        pair: u64::MAX,
        rank: 0,
        merged: 0,
    };

    /// A pair listed twice keeps its last rule, as a map built in order
    /// would.
    fn new(rules: Vec<MergeRule>) -> Self {
        // Always one vacant slot at least, where a probe for a missing pair
        // stops.
        let capacity = rules.len() * 5 / 3 + 1;
        let mut index = Self {
            slots: vec![Self::VACANT; capacity],
            len: 0,
        };
        for rule in rules {
            let slot = index.slot(rule.pair);
            if index.slots[slot].pair == Self::VACANT.pair {
                index.len += 1;
            }
            index.slots[slot] = rule;
        }
        index
    }

    fn slot(&self, pair: u64) -> usize {
        let n = self.slots.len();
        // SplitMix64's finalizer: ids are small and dense, and every bit of
        // both must reach the high bits, which `hash * n` maps onto the
        // table.
        let mut hash = (pair ^ (pair >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        hash ^= hash >> 31;
        let mut slot = ((u128::from(hash) * n as u128) >> 64) as usize;
        loop {
            let key = self.slots[slot].pair;
            if key == pair || key == Self::VACANT.pair {
                return slot;
            }
            slot += 1;
            if slot == n {
                slot = 0;
            }
        }
    }

    fn get(&self, pair: u64) -> Option<MergeRule> {
        let rule = self.slots[self.slot(pair)];
        (rule.pair != Self::VACANT.pair).then_some(rule)
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// The vocabulary's texts both ways: id → text from one buffer, text → id
/// through a table of ids. A text listed twice is found as its last id, as
/// in transformers' GGUF converter (a dict built in order); every id still
/// has its own text.
pub(super) struct TokenTexts {
    strings: Strings,
    index: TextIndex,
}

impl TokenTexts {
    pub fn new(tokens: &[String]) -> Result<Self, TextError> {
        let strings = Strings::new(tokens)?;
        let index = TextIndex::new(&strings);
        Ok(Self { strings, index })
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        self.index.get(&self.strings, text)
    }

    fn text(&self, id: u32) -> Option<&str> {
        self.strings.get(id)
    }

    fn len(&self) -> usize {
        self.strings.len()
    }
}

/// Every token's text in one buffer.
struct Strings {
    text: String,
    /// Token `i` is `text[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<u32>,
}

impl Strings {
    fn new(tokens: &[String]) -> Result<Self, TextError> {
        let total: usize = tokens.iter().map(String::len).sum();
        if total > u32::MAX as usize || tokens.len() > u32::MAX as usize {
            return Err(TextError::invalid(KEY_TOKENS, "over 4 GiB of text"));
        }
        let mut text = String::with_capacity(total);
        let ends = tokens
            .iter()
            .map(|t| {
                text.push_str(t);
                text.len() as u32
            })
            .collect();
        Ok(Self { text, ends })
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, id: u32) -> Option<&str> {
        let i = id as usize;
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..end)
    }
}

/// Text → id: an open-addressed table of ids (linear probing, at most half
/// full), compared against `Strings`.
struct TextIndex {
    hasher: RandomState,
    /// `EMPTY` or an id.
    slots: Vec<u32>,
    distinct: usize,
}

impl TextIndex {
    const EMPTY: u32 = u32::MAX;

    fn new(strings: &Strings) -> Self {
        let capacity = (strings.len() * 2).next_power_of_two().max(2);
        let mut index = Self {
            hasher: RandomState::new(),
            slots: vec![Self::EMPTY; capacity],
            distinct: 0,
        };
        for id in 0..strings.len() as u32 {
            let text = strings.get(id).unwrap_or_default();
            let slot = index.slot(strings, text);
            if index.slots[slot] == Self::EMPTY {
                index.distinct += 1;
            }
            // The last id of a repeated text wins.
            index.slots[slot] = id;
        }
        index
    }

    /// The slot holding `text`, or the empty one where it would go.
    fn slot(&self, strings: &Strings, text: &str) -> usize {
        let mask = self.slots.len() - 1;
        let mut slot = self.hasher.hash_one(text) as usize & mask;
        loop {
            let id = self.slots[slot];
            if id == Self::EMPTY || strings.get(id) == Some(text) {
                return slot;
            }
            slot = (slot + 1) & mask;
        }
    }

    fn get(&self, strings: &Strings, text: &str) -> Option<u32> {
        let id = self.slots[self.slot(strings, text)];
        (id != Self::EMPTY).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::bpe::BPE;

    fn owned(tokens: &[&str]) -> Vec<String> {
        tokens.iter().map(|t| (*t).to_owned()).collect()
    }

    fn ids(model: &impl Model, text: &str) -> Vec<u32> {
        model
            .tokenize(text)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect()
    }

    /// The same vocabulary and merges through `tokenizers`' own `BPE`.
    fn library(tokens: &[String], merges: &[(&str, &str)], options: &BpeOptions) -> BPE {
        let vocab: ahash::AHashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|(l, r)| ((*l).to_owned(), (*r).to_owned()))
            .collect();
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(options.byte_fallback)
            .fuse_unk(options.fuse_unk);
        if let Some(unk) = &options.unk_token {
            builder = builder.unk_token(unk.clone());
        }
        builder.build().unwrap()
    }

    #[test]
    fn merges_lowest_rank_first_and_leftmost_among_equals() {
        let tokens = owned(&["a", "b", "c", "ab", "bc", "aa", "aaa", "abc"]);
        let merges = [("b", "c"), ("a", "b"), ("a", "a"), ("a", "bc"), ("aa", "a")];
        let ours = FlatBpe::new(&tokens, merges, BpeOptions::default()).unwrap();
        let theirs = library(&tokens, &merges, &BpeOptions::default());
        for text in [
            "abc", "aaaa", "aaab", "cab", "ababc", "aaaaa", "a", "", "cba",
        ] {
            assert_eq!(ids(&ours, text), ids(&theirs, text), "{text:?}");
        }
        // `bc` (rank 0) beats `ab` (rank 1), then `a`+`bc` makes `abc`.
        assert_eq!(ids(&ours, "abc"), vec![7]);
        // `a`+`a` (rank 2) twice, leftmost first, before `aa`+`a` (rank 4)
        // could make `aaa`; there is no `aa`+`aa`.
        assert_eq!(ids(&ours, "aaaa"), vec![5, 5]);
    }

    #[test]
    fn byte_fallback_and_fused_unknowns_match_the_library() {
        let mut tokens = owned(&["<unk>", "h", "i", "hi", "▁"]);
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let merges = [("h", "i")];
        for options in [
            BpeOptions {
                byte_fallback: true,
                unk_token: Some("<unk>".into()),
                fuse_unk: true,
            },
            BpeOptions {
                byte_fallback: false,
                unk_token: Some("<unk>".into()),
                fuse_unk: true,
            },
            BpeOptions {
                byte_fallback: false,
                unk_token: Some("<unk>".into()),
                fuse_unk: false,
            },
            BpeOptions::default(),
        ] {
            let ours = FlatBpe::new(&tokens, merges, options.clone()).unwrap();
            let theirs = library(&tokens, &merges, &options);
            for text in ["hi", "héé", "h\u{1}i", "日本hi", "xyz", "hix"] {
                let a = ours.tokenize(text).unwrap();
                let b = theirs.tokenize(text).unwrap();
                assert_eq!(a, b, "{text:?} with {options:?}");
            }
        }
    }

    #[test]
    fn a_repeated_text_is_found_as_its_last_id() {
        let tokens = owned(&["a", "b", "ab", "ab"]);
        let ours = FlatBpe::new(&tokens, [("a", "b")], BpeOptions::default()).unwrap();
        assert_eq!(ours.token_to_id("ab"), Some(3));
        assert_eq!(ids(&ours, "ab"), vec![3]);
        assert_eq!(ours.get_vocab_size(), 3);
        assert_eq!(ours.id_to_token(2).as_deref(), Some("ab"));
        assert_eq!(ours.get_vocab().get("ab"), Some(&3));
    }

    #[test]
    fn a_merge_outside_the_vocabulary_is_refused_by_name() {
        let tokens = owned(&["a", "b"]);
        let err = FlatBpe::new(&tokens, [("a", "b")], BpeOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tokenizer.ggml.merges[0]: 'ab' is not in the vocabulary"
        );
        let err = FlatBpe::new(
            &tokens,
            [],
            BpeOptions {
                unk_token: Some("<unk>".into()),
                ..BpeOptions::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("<unk>"), "{err}");
    }
}
