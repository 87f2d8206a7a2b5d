//! Text processing around the model: GGUF tokenizer metadata, byte-level BPE
//! encoding and decoding, chat templates, streaming detokenization and stop
//! strings. Nothing here knows about tensors or HTTP.

mod chat_template;
mod detokenizer;
mod error;
mod spec;
mod stop;
mod tokenizer;

#[cfg(test)]
pub(crate) mod fixtures;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use detokenizer::IncrementalDecoder;
pub use error::TextError;
pub use spec::{MetadataSource, MetadataValue, TokenizerSpec};
pub use stop::{StopMatcher, StopOutcome};
pub use tokenizer::TextTokenizer;
