//! Errors of the text layer.
//!
//! Load-time variants (`MissingMetadata`, `InvalidMetadata`, `Unsupported`,
//! `Tokenizer` from `from_spec`, `TemplateSyntax`) mean the model file cannot
//! be served; request-time variants (`UnknownTokenId`, `TemplateRender`,
//! `TemplateRaised`) are about one request. `TemplateRaised` is the template
//! rejecting the conversation itself (e.g. roles out of order), so it is the
//! caller's fault rather than the server's.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TextError {
    #[error("{key}: missing from the GGUF metadata")]
    MissingMetadata { key: String },

    /// `field` names the key and, for arrays, the index (`tokenizer.ggml.merges[17]`).
    #[error("{field}: {reason}")]
    InvalidMetadata { field: String, reason: String },

    #[error("unsupported tokenizer {what} '{name}'")]
    Unsupported { what: &'static str, name: String },

    #[error("tokenizer: {0}")]
    Tokenizer(#[source] tokenizers::Error),

    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownTokenId { id: u32, vocab_size: usize },

    #[error("chat template does not compile: {0}")]
    TemplateSyntax(#[source] minijinja::Error),

    #[error("chat template failed: {0}")]
    TemplateRender(#[source] minijinja::Error),

    /// The message the template passed to `raise_exception`, verbatim.
    #[error("{0}")]
    TemplateRaised(String),
}

impl TextError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TextError::InvalidMetadata {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
