//! Text processing around the model: GGUF tokenizer metadata, byte-level BPE
//! and SentencePiece encoding and decoding, chat templates, streaming
//! detokenization and stop strings. Nothing here knows about tensors or HTTP.

mod bpe;
mod byte_level;
mod chat_template;
mod detokenizer;
mod error;
mod sentencepiece;
mod spec;
mod stop;
mod tokenizer;

#[cfg(any(test, feature = "test-models"))]
pub mod fixtures;

pub use chat_template::{
    builtin_template, choose_chat_template, ChatMessage, ChatTemplate, TemplateCandidates,
    TemplateOrigin,
};
pub use detokenizer::IncrementalDecoder;
pub use error::TextError;
pub use spec::{MetadataSource, MetadataValue, TokenizerSpec};
pub use stop::{StopMatcher, StopOutcome};
pub use tokenizer::TextTokenizer;
