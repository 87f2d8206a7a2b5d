//! The response phases: rate-limit headers on the way out, and the
//! reported usage read from the body (one JSON document, or a server-sent
//! event stream, from which the usage event is removed when the client did
//! not ask for it). A response the filter cannot read is still settled, by
//! estimate; one whose body it cannot decode, by its whole reservation.
//!
//! Invariants:
//! - Memory held per response is bounded ([`MAX_JSON_RESPONSE_BYTES`], one
//!   SSE event of [`MAX_SSE_EVENT_BYTES`]; a Responses API stream's last
//!   event is its whole response, read as far as a JSON one, so such a
//!   stream may hold up to twice that: its line and its data buffers).
//! - A response ends the same way whether its last body chunk says so or
//!   trailers follow it: the last event is read (and charged) and, in strip
//!   mode, what was held back is forwarded (see [`SseReader::read`] for the
//!   one case Envoy leaves no way to).

use super::Stream;
use crate::backend::{BACKEND_HEADER, PROVIDER_STATUS_HEADER};
use crate::error::GatewayError;
use crate::host::{Flow, StreamHost};
use crate::openai::endpoint::Endpoint;
use crate::openai::sse::{is_event_stream, SseUsageParser};

/// A JSON response larger than this is passed through without reading its
/// usage (and charged by estimate) rather than held in memory.
const MAX_JSON_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// One SSE event larger than this is not inspected.
const MAX_SSE_EVENT_BYTES: usize = 1024 * 1024;

pub(super) enum ResponseReader {
    /// Not read: not admitted, or an error status in a content-encoding
    /// or as an event stream.
    Skip,
    /// Not read: a success in a `content-encoding` the filter does not
    /// decode. The filter strips the client's `accept-encoding`, so only a
    /// misbehaving upstream sends one; it is charged what it may have cost.
    Undecodable,
    /// A JSON body, read for its `usage`: an answer's, or an error's where
    /// the model server reports what it computed before it failed.
    Json {
        buf: Vec<u8>,
        overflowed: bool,
        /// Body bytes received, kept or not (the estimate's text).
        seen: u64,
        /// A success: its bytes are the model's output. An error's are
        /// not, and bound no estimate.
        answer: bool,
    },
    Sse(Box<SseReader>),
    /// Not read: the model's own server refused the gateway's key, and the
    /// client gets the gateway's error in place of the server's. The
    /// server's body is held (`Flow::Buffer`) until it ends, so that the
    /// error can take its place also when trailers end it.
    Replaced {
        body: Vec<u8>,
        buffered: usize,
    },
}

/// An event stream's usage reader, with what the response callbacks do
/// with it.
pub(super) struct SseReader {
    pub(super) parser: SseUsageParser,
}

impl Stream {
    pub fn on_response_headers(&mut self, host: &dyn StreamHost, end_of_stream: bool) -> Flow {
        if self.replied {
            return Flow::Continue;
        }
        let (mut encoded, mut sse) = (false, false);
        for (name, value) in host.response_headers() {
            match name.as_str() {
                ":status" => self.response.status = value.parse().ok(),
                "content-encoding" => {
                    let value = value.trim();
                    encoded = !(value.is_empty() || value.eq_ignore_ascii_case("identity"));
                }
                "content-type" => sse = is_event_stream(&value),
                BACKEND_HEADER => self.response.backend = Some(value),
                PROVIDER_STATUS_HEADER => self.response.upstream_status = value.parse().ok(),
                _ => {}
            }
        }
        self.response.via_upstream =
            host.response_code_details().as_deref() == Some("via_upstream");
        // Which provider answered, and how, is the audit record's and the
        // settlement's, not the client's; and only the backend role tells a
        // provider's status.
        if self.response.backend.is_some() {
            host.set_response_header(BACKEND_HEADER, None);
        }
        if self.response.upstream_status.is_some() {
            host.set_response_header(PROVIDER_STATUS_HEADER, None);
            if self.response.backend.is_none() {
                self.response.upstream_status = None;
            }
        }
        for (name, value) in self.headers.to_headers() {
            host.set_response_header(name, Some(&value));
        }
        if self.model_server_refused_gateway(host) {
            self.replace_refusal(host);
        } else if self.admission.is_some() {
            let ok = self
                .response
                .status
                .is_some_and(|s| (200..300).contains(&s));
            self.response.reader = match (ok, encoded, sse) {
                (true, true, _) => {
                    host.warn_throttled(
                        "undecodable-response",
                        "a model answered in a content-encoding the filter does not decode: charged its whole reservation",
                    );
                    ResponseReader::Undecodable
                }
                (false, false, false) => ResponseReader::Json {
                    buf: Vec::new(),
                    overflowed: false,
                    seen: 0,
                    answer: false,
                },
                (false, _, _) => ResponseReader::Skip,
                (true, false, true) => {
                    if self.completion.strip_usage {
                        // The filter rewrites the stream; a declared length
                        // would no longer hold.
                        host.set_response_header("content-length", None);
                    }
                    // A Responses stream's last event is the whole response
                    // (its usage with it): read as far as a JSON answer is.
                    let max_event = if self.endpoint == Some(Endpoint::Responses) {
                        MAX_JSON_RESPONSE_BYTES
                    } else {
                        MAX_SSE_EVENT_BYTES
                    };
                    ResponseReader::Sse(Box::new(SseReader {
                        parser: SseUsageParser::new(self.completion.strip_usage, max_event),
                    }))
                }
                (true, false, false) => ResponseReader::Json {
                    buf: Vec::new(),
                    overflowed: false,
                    seen: 0,
                    answer: true,
                },
            };
        }
        if end_of_stream {
            self.end_response(host);
        }
        Flow::Continue
    }

    pub fn on_response_body(
        &mut self,
        host: &dyn StreamHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if self.replied || self.admission.is_none() {
            return Flow::Continue;
        }
        match &mut self.response.reader {
            ResponseReader::Skip | ResponseReader::Undecodable => {}
            ResponseReader::Replaced { body, buffered } => {
                if !end_of_stream {
                    *buffered = body_size;
                    return Flow::Buffer;
                }
                host.replace_response_body(body_size, body);
            }
            ResponseReader::Json {
                buf,
                overflowed,
                seen,
                ..
            } => {
                *seen = seen.saturating_add(body_size as u64);
                if !*overflowed && body_size > 0 {
                    if buf.len().saturating_add(body_size) > MAX_JSON_RESPONSE_BYTES {
                        *overflowed = true;
                        *buf = Vec::new();
                    } else if let Some(chunk) = host.response_body(body_size) {
                        buf.extend_from_slice(&chunk);
                    }
                }
            }
            ResponseReader::Sse(reader) => {
                let chunk = if body_size > 0 {
                    host.response_body(body_size).unwrap_or_default()
                } else {
                    Vec::new()
                };
                let flow = reader.read(host, body_size, &chunk, end_of_stream);
                if flow == Flow::Buffer {
                    return flow;
                }
            }
        }
        if end_of_stream {
            self.end_response(host);
        }
        Flow::Continue
    }

    /// Response trailers end the response as an end-of-stream body chunk
    /// does: the last event is read and what strip mode held back is sent
    /// (Envoy sends it before the trailers). Then it is settled.
    pub fn on_response_trailers(&mut self, host: &dyn StreamHost) -> Flow {
        if self.replied || self.admission.is_none() {
            return Flow::Continue;
        }
        match &mut self.response.reader {
            ResponseReader::Sse(reader) => reader.finish(host),
            // The body ended without end of stream (or this would not
            // be called: settling took the admission): it is held.
            ResponseReader::Replaced { body, buffered } => {
                host.replace_response_body(*buffered, body);
            }
            _ => {}
        }
        self.end_response(host);
        Flow::Continue
    }

    /// A 401 from the model's own server (no provider answered) to an
    /// admitted request: the filter took the client's credential off and
    /// put the server's key on, so the server refused the gateway, not the
    /// client, whose key was good. Passed on, it would tell the client
    /// that its key is wrong.
    fn model_server_refused_gateway(&self, host: &dyn StreamHost) -> bool {
        self.admission.is_some()
            && self.response.backend.is_none()
            && self.response.status == Some(401)
            // The server's own answer, not a 401 of a filter after this one.
            && host.response_code_details().as_deref() == Some("via_upstream")
            && self
                .completion
                .model
                .as_deref()
                .is_some_and(|m| self.config.served_locally(m))
    }

    /// The client gets a 502 that says whose credential failed. The
    /// server's 401 stays the upstream status, so the request is settled
    /// as one the model refused before computing anything.
    fn replace_refusal(&mut self, host: &dyn StreamHost) {
        let err = GatewayError::ModelServerRefusedGateway;
        host.warn_throttled(
            "model-server-key",
            "a model server refused the gateway's key: model_server_api_key differs from the server's --api-key-file",
        );
        let status = err.status().to_string();
        host.set_response_header(":status", Some(&status));
        host.set_response_header("content-type", Some("application/json"));
        for name in ["content-length", "content-encoding", "www-authenticate"] {
            host.set_response_header(name, None);
        }
        self.response.upstream_status = self.response.status;
        self.response.status = Some(err.status());
        self.response.reader = ResponseReader::Replaced {
            body: err.body(),
            buffered: 0,
        };
    }
}

impl SseReader {
    /// Feeds one body chunk (`body_size` bytes, `chunk`) and puts what the
    /// client gets in its place.
    ///
    /// Strip mode holds an unfinished event back until its end. When the
    /// stream ends in trailers, that end is only known in the trailers
    /// callback, where proxy-wasm can add to the body only if Envoy kept it,
    /// which it does while the filter answers [`Flow::Buffer`]. So a chunk
    /// that is all held back (nothing to send now, so nothing is delayed)
    /// is answered `Buffer`; a chunk that also completes events sends them
    /// at once, as before, and should trailers follow it, what it held back
    /// cannot be sent (a warning says so): delaying events to cover a stream
    /// that ends in trailers without its last blank line is not worth it.
    fn read(&mut self, host: &dyn StreamHost, body_size: usize, chunk: &[u8], end: bool) -> Flow {
        let Some(mut out) = self.parser.feed(chunk) else {
            // Not stripping: the chunk goes as it came.
            if end {
                self.parser.finish();
            }
            return Flow::Continue;
        };
        let mut flow = Flow::Continue;
        if end {
            out.extend_from_slice(&self.parser.finish().unwrap_or_default());
        } else if out.is_empty() && self.parser.holds_back() {
            flow = Flow::Buffer;
        }
        if out != chunk {
            host.replace_response_body(body_size, &out);
        }
        flow
    }

    /// The stream ended in trailers: the last event is read, and what strip
    /// mode held back goes into the body Envoy kept for it.
    fn finish(&mut self, host: &dyn StreamHost) {
        let Some(rest) = self.parser.finish() else {
            return;
        };
        // Envoy kept no body when the last chunk also completed events (see
        // `read`); the held tail is then lost, and said so.
        if !rest.is_empty() && !host.append_response_body(&rest) {
            host.warn_throttled(
                "sse-trailers",
                "the last event of a stream that ended in trailers could not be forwarded",
            );
        }
    }
}
