//! The external-provider side of a request's phases: what the request
//! becomes on its way out (the provider's name for the model, its path,
//! Anthropic's Messages body), and what the response becomes on its way
//! back before the usage readers see it (Anthropic's body and stream
//! translated; any provider's error mapped by [`upstream_failure`], so a
//! provider refusing the gateway's own credential is never told to the
//! client as its key failing).
//!
//! The readers and the settlement do not know a provider was involved:
//! they read OpenAI's format, translated or not.

use super::response::ResponseReader;
use super::Stream;
use crate::config::ExternalModel;
use crate::error::GatewayError;
use crate::host::{Flow, StreamHost};
use crate::openai::endpoint::Endpoint;
use crate::providers::anthropic::{self, StreamTranslator};
use crate::providers::{
    error_message, upstream_failure, write_error_event, ProviderError, ProviderKind,
};

/// The longest line of a provider's event stream that is translated (as
/// [`super::response`]'s own limit on one event).
const MAX_PROVIDER_LINE_BYTES: usize = 1024 * 1024;

/// What stands between a provider's response body and the usage reader.
#[derive(Default)]
pub(super) enum Translation {
    /// The body is OpenAI's already (a local model, an OpenAI-compatible
    /// or Azure provider answering 2xx).
    #[default]
    None,
    /// An Anthropic JSON response: held whole, translated at its end.
    Json,
    /// An Anthropic event stream: translated chunk by chunk.
    Stream {
        translator: Box<StreamTranslator>,
        /// The stream could not be read; an error event was sent in its
        /// place and the rest is dropped.
        failed: bool,
    },
    /// A provider's error response (its status): held whole and replaced
    /// by the OpenAI error the client gets.
    Error { status: u32 },
}

/// The request as the upstream gets it.
pub(super) struct Outbound {
    /// A new body, when it differs from the client's.
    pub body: Option<Vec<u8>>,
    /// A new path, when the provider's differs.
    pub path: Option<String>,
    /// Anthropic's Messages API: its version header, and an identity
    /// encoding so the filter can read what it translates.
    pub anthropic: bool,
}

/// Step 3's last part: `rewritten` (the client's body with the gateway's
/// edits, if any) as the upstream of `provider` takes it.
pub(super) fn outbound(
    provider: Option<&ExternalModel>,
    endpoint: Option<&Endpoint>,
    body: &[u8],
    rewritten: Option<Vec<u8>>,
) -> Result<Outbound, GatewayError> {
    let Some(provider) = provider else {
        return Ok(Outbound {
            body: rewritten,
            path: None,
            anthropic: false,
        });
    };
    if provider.kind != ProviderKind::Anthropic {
        return Ok(Outbound {
            body: rewritten,
            path: endpoint.and_then(|e| provider.upstream_path(e)),
            anthropic: false,
        });
    }
    if endpoint != Some(&Endpoint::ChatCompletions) {
        return Err(GatewayError::Provider(ProviderError::Unsupported {
            field: "model",
            kind: ProviderKind::Anthropic.as_str(),
            why: "this model has a chat API only; use /v1/chat/completions",
        }));
    }
    let source = rewritten.as_deref().unwrap_or(body);
    let messages = anthropic::to_messages_request(source, &provider.upstream_model)
        .map_err(GatewayError::Provider)?;
    Ok(Outbound {
        body: Some(messages),
        path: Some("/v1/messages".to_string()),
        anthropic: true,
    })
}

impl Stream {
    /// At the response headers of an admitted request: how its body must be
    /// translated, and the flow for the headers (held while a whole body
    /// decides them). `status`: the provider's; `encoded`: a
    /// content-encoding the filter cannot read.
    pub(super) fn start_translation(
        &mut self,
        host: &dyn StreamHost,
        status: u32,
        encoded: bool,
        sse: bool,
        end_of_stream: bool,
    ) -> Flow {
        let Some(provider) = self.completion.provider.clone() else {
            return Flow::Continue;
        };
        let anthropic = provider.kind == ProviderKind::Anthropic;
        self.response.translation = match (status, anthropic, sse && !encoded) {
            (400.., _, _) => Translation::Error { status },
            (_, false, _) => Translation::None,
            (_, true, true) => {
                let created = host.now_ms() / 1000;
                let model = self.completion.model.clone().unwrap_or_default();
                Translation::Stream {
                    translator: Box::new(StreamTranslator::new(
                        &model,
                        created,
                        MAX_PROVIDER_LINE_BYTES,
                    )),
                    failed: false,
                }
            }
            (_, true, false) => Translation::Json,
        };
        match self.response.translation {
            Translation::None => Flow::Continue,
            Translation::Stream { .. } => {
                host.set_response_header("content-length", None);
                Flow::Continue
            }
            // No body to replace: only the status tells.
            Translation::Json | Translation::Error { .. } if end_of_stream => {
                let status = match self.response.translation {
                    Translation::Error { status } => upstream_failure(status, "").status(),
                    _ => 502,
                };
                host.set_response_header(":status", Some(&status.to_string()));
                Flow::Continue
            }
            // The status and length depend on the whole body.
            Translation::Json | Translation::Error { .. } => Flow::Pause,
        }
    }

    /// A body chunk of a translated response. `None`: not translated, the
    /// caller reads it as it came.
    pub(super) fn translate_body(
        &mut self,
        host: &dyn StreamHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Option<Flow> {
        match &mut self.response.translation {
            Translation::None => None,
            Translation::Json | Translation::Error { .. } => {
                // Envoy bounds what it buffers (the listener's buffer
                // limit), and answers 500 itself beyond it.
                if !end_of_stream {
                    return Some(Flow::Buffer);
                }
                let body = host.response_body(body_size).unwrap_or_default();
                let out = self.replace_whole(host, &body);
                host.replace_response_body(body_size, &out);
                self.end_response(host);
                Some(Flow::Continue)
            }
            Translation::Stream { translator, failed } => {
                let chunk = host.response_body(body_size).unwrap_or_default();
                let mut translated = Vec::new();
                if !*failed {
                    let result = translator.feed(&chunk).and_then(|mut out| {
                        if end_of_stream {
                            out.extend(translator.finish()?);
                        }
                        Ok(out)
                    });
                    match result {
                        Ok(out) => translated = out,
                        Err(e) => {
                            // The client already has a 200: the failure goes
                            // into the stream, as a provider's error event.
                            *failed = true;
                            write_error_event(&e, &mut translated);
                        }
                    }
                }
                let out = match &mut self.response.reader {
                    ResponseReader::Sse(parser) => {
                        super::response::read_sse(parser, &translated, end_of_stream)
                            .unwrap_or(translated)
                    }
                    _ => translated,
                };
                host.replace_response_body(body_size, &out);
                if end_of_stream {
                    self.end_response(host);
                }
                Some(Flow::Continue)
            }
        }
    }

    /// The whole body of a held response (`Json` or `Error`) as the client
    /// gets it; sets the status and headers that go with it and hands a
    /// JSON answer to the usage reader.
    fn replace_whole(&mut self, host: &dyn StreamHost, body: &[u8]) -> Vec<u8> {
        let (status, out) = match self.response.translation {
            Translation::Error { status } => {
                let message = error_message(body).unwrap_or_default();
                let e = upstream_failure(status, &message);
                (e.status(), e.body())
            }
            _ => {
                let created = host.now_ms() / 1000;
                let model = self.completion.model.as_deref().unwrap_or_default();
                match anthropic::to_chat_completion(body, model, created) {
                    Ok(completion) => (200, completion),
                    Err(e) => (e.status(), e.body()),
                }
            }
        };
        host.set_response_header(":status", Some(&status.to_string()));
        host.set_response_header("content-type", Some("application/json"));
        host.set_response_header("content-length", Some(&out.len().to_string()));
        host.set_response_header("content-encoding", None);
        if let ResponseReader::Json { buf, seen, .. } = &mut self.response.reader {
            *buf = out.clone();
            *seen = out.len() as u64;
        }
        out
    }
}
