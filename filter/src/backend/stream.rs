//! One attempt at one provider: the request made the provider's own on its
//! way out, and the answer made OpenAI's again on its way back (see the
//! module above). Every attempt Envoy makes gets a new [`BackendStream`],
//! with the client's request as the gateway role prepared it.

use super::document::{BackendConfig, BACKEND_HEADER, PROVIDER_STATUS_HEADER};
use super::ADMITTED_STATE;
use crate::config::ExternalModel;
use crate::error::GatewayError;
use crate::host::{Flow, StreamHost};
use crate::metrics::Metric;
use crate::openai::endpoint::{path_only, Endpoint};
use crate::openai::request::{parse_request, rewrite_completion_request, BodyRewrite, BudgetField};
use crate::openai::sse::is_event_stream;
use crate::providers::anthropic::{self, StreamTranslator};
use crate::providers::{
    upstream_failure, write_error_event, ErrorDetail, ProviderError, ProviderKind,
    AZURE_NO_RESPONSES, CREDENTIAL_HEADERS,
};
use std::rc::Rc;

/// The longest line of a provider's event stream that is translated (as
/// the gateway role's own limit on one event).
const MAX_PROVIDER_LINE_BYTES: usize = 1024 * 1024;

/// What stands between a provider's response body and the client.
#[derive(Default)]
enum Translation {
    /// The body is OpenAI's already (an OpenAI-compatible or Azure
    /// provider answering 2xx).
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

/// The request as this provider takes it.
struct Outbound {
    body: Vec<u8>,
    /// A new path, when the provider's differs.
    path: Option<String>,
}

/// Where the backend role keeps the path the gateway role forwarded, for
/// the attempts after the first (whose `:path` may be a provider's): filter
/// state, which Envoy's attempts share and no client or provider can reach.
/// (It once was a request header, `x-maas-path`, which a client could send
/// to choose the provider's endpoint, and which went on to the provider.)
const ORIGINAL_PATH_STATE: &str = "maas_path";

/// The request header that used to carry [`ORIGINAL_PATH_STATE`]: never
/// believed, and removed before the request leaves (the gateway role drops
/// a client's too).
const ORIGINAL_PATH_HEADER: &str = "x-maas-path";

/// The identity headers the gateway role sets for the gateway's own model
/// servers.
const IDENTITY_HEADERS: [&str; 3] = ["x-maas-user", "x-maas-key-id", "x-maas-subscription"];

/// Headers that choose which of the operator's OpenAI organizations or
/// projects a request under the operator's key is billed to and governed
/// by: the operator's choice, made in the provider's credential, never a
/// client's.
const ACCOUNT_HEADERS: [&str; 2] = ["openai-organization", "openai-project"];

/// Headers that turn on provider features billed otherwise than the tokens
/// the gateway counts (Anthropic's betas: a 1M-token context at higher
/// rates, server-side tools billed per use) or that the translation does
/// not carry: the operator's to enable, never a client's.
const FEATURE_HEADERS: [&str; 1] = ["anthropic-beta"];

pub struct BackendStream {
    config: Rc<BackendConfig>,
    /// The path as the gateway role forwarded it.
    path: String,
    endpoint: Option<Endpoint>,
    /// The model as the provider serves it, once the request named it.
    model: Option<Rc<ExternalModel>>,
    /// The public id, which the translated answer carries.
    public_model: String,
    translation: Translation,
    /// This filter answered the attempt itself.
    replied: bool,
}

impl BackendStream {
    pub fn new(config: Rc<BackendConfig>) -> Self {
        Self {
            config,
            path: String::new(),
            endpoint: None,
            model: None,
            public_model: String::new(),
            translation: Translation::None,
            replied: false,
        }
    }

    /// Held until the body has been read: what the provider gets depends on
    /// it. Envoy's attempts share one request header map, so whatever an
    /// earlier attempt set for its provider is undone here first.
    pub fn on_request_headers(&mut self, host: &dyn StreamHost, end_of_stream: bool) -> Flow {
        let headers = host.request_headers();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        // The path as the gateway role forwarded it, kept for later attempts.
        let path = match host.request_state(ORIGINAL_PATH_STATE) {
            Some(original) => original,
            None => {
                let path = get(":path").unwrap_or_default().to_string();
                host.set_request_state(ORIGINAL_PATH_STATE, &path);
                path
            }
        };
        let method = get(":method").unwrap_or_default().to_string();
        let stray_path_header = get(ORIGINAL_PATH_HEADER).is_some();
        if host.request_state(ADMITTED_STATE).is_none() {
            return self.refuse(host, &GatewayError::Provider(ProviderError::NotAdmitted));
        }
        self.path = path;
        // Only the credential Envoy injects after this filter may go out
        // (an earlier attempt's provider key would otherwise reach this
        // provider), who our caller is, is no provider's business, and
        // which of the operator's accounts pays, or for what, is not the
        // caller's to say.
        for name in CREDENTIAL_HEADERS
            .iter()
            .chain(&IDENTITY_HEADERS)
            .chain(&ACCOUNT_HEADERS)
            .chain(&FEATURE_HEADERS)
        {
            host.set_request_header(name, None);
        }
        host.set_request_header("anthropic-version", None);
        if stray_path_header {
            host.set_request_header(ORIGINAL_PATH_HEADER, None);
        }
        // Only completions reach a provider (the gateway role answers the
        // rest itself); any other path would run an endpoint of the
        // provider's under the gateway's credential, so it never goes out.
        match Endpoint::classify(&method, &self.path) {
            Ok(endpoint) if endpoint.is_completion() => self.endpoint = Some(endpoint),
            Ok(_) | Err(_) => {
                let err = GatewayError::UnknownEndpoint {
                    method,
                    path: bounded_path(&self.path),
                };
                return self.refuse(host, &err);
            }
        }
        if end_of_stream {
            // Only completions reach a provider, and they have bodies.
            return Flow::Continue;
        }
        Flow::Pause
    }

    pub fn on_request_body(
        &mut self,
        host: &dyn StreamHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if self.replied {
            return Flow::Continue;
        }
        if !end_of_stream {
            return Flow::Buffer;
        }
        let body = host.request_body(body_size).unwrap_or_default();
        match self.outbound(&body) {
            Ok(out) => {
                host.replace_request_body(body_size, &out.body);
                host.set_request_header("content-length", Some(&out.body.len().to_string()));
                // A client's query string is no provider's business either.
                let own_path = path_only(&self.path);
                host.set_request_header(":path", Some(out.path.as_deref().unwrap_or(own_path)));
                if self.kind() == Some(ProviderKind::Anthropic) {
                    host.set_request_header("anthropic-version", Some(anthropic::API_VERSION));
                    // What comes back is translated, so it must come back readable.
                    host.set_request_header("accept-encoding", None);
                }
                Flow::Continue
            }
            Err(e) => {
                // The gateway role refuses what a model's backends cannot
                // take before anything is reserved; this is the backstop.
                self.refuse(host, &GatewayError::Provider(e))
            }
        }
    }

    /// Answers the attempt with `err` itself: nothing goes to the provider.
    fn refuse(&mut self, host: &dyn StreamHost, err: &GatewayError) -> Flow {
        self.replied = true;
        host.send_reply(
            err.status(),
            &[("content-type", "application/json")],
            &err.body(),
        );
        Flow::Pause
    }

    fn kind(&self) -> Option<ProviderKind> {
        self.model.as_ref().map(|m| m.kind)
    }

    /// The request for this provider: its name for the model and its path,
    /// or Anthropic's Messages body.
    fn outbound(&mut self, body: &[u8]) -> Result<Outbound, ProviderError> {
        let request = parse_request(body, self.endpoint.as_ref())
            .map_err(|e| ProviderError::BadRequest(e.to_string()))?;
        let model = self
            .config
            .models
            .get(request.model.as_ref())
            .cloned()
            .ok_or(ProviderError::NotServed)?;
        self.public_model = request.model.to_string();
        self.model = Some(Rc::clone(&model));
        if model.kind == ProviderKind::Anthropic {
            if self.endpoint != Some(Endpoint::ChatCompletions) {
                return Err(anthropic::CHAT_ONLY);
            }
            return Ok(Outbound {
                body: anthropic::to_messages_request(body, &model.upstream_model)?,
                path: Some("/v1/messages".to_string()),
            });
        }
        if model.kind == ProviderKind::AzureOpenAi && self.endpoint == Some(Endpoint::Responses) {
            return Err(AZURE_NO_RESPONSES);
        }
        let rewrite = BodyRewrite {
            model: Some(&model.upstream_model),
            budget_as: Some(BudgetField::on(self.endpoint.as_ref(), model.budget_field)),
            ..BodyRewrite::default()
        };
        Ok(Outbound {
            body: rewrite_completion_request(body, &rewrite)
                .map_err(|e| ProviderError::BadRequest(e.to_string()))?,
            path: self.endpoint.as_ref().and_then(|e| model.upstream_path(e)),
        })
    }

    /// The provider's status decides the translation; headers are held
    /// while a whole body decides them. Names the provider to the gateway
    /// role, and counts the attempt.
    pub fn on_response_headers(&mut self, host: &dyn StreamHost, end_of_stream: bool) -> Flow {
        if self.replied {
            return Flow::Continue;
        }
        let headers = host.response_headers();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let status: u32 = get(":status").and_then(|s| s.parse().ok()).unwrap_or(502);
        let sse = get("content-type").is_some_and(is_event_stream);
        let encoded = get("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        // Ours to set: whatever the provider sent under these names is not
        // believed (the status header is taken off only when present: one
        // host call less per attempt).
        host.set_response_header(BACKEND_HEADER, Some(&self.config.provider));
        if get(PROVIDER_STATUS_HEADER).is_some() {
            host.set_response_header(PROVIDER_STATUS_HEADER, None);
        }
        let anthropic = self.kind() == Some(ProviderKind::Anthropic);
        self.translation = match (status, anthropic, sse && !encoded) {
            (400.., _, _) => Translation::Error { status },
            (_, false, _) => Translation::None,
            (_, true, true) => Translation::Stream {
                translator: Box::new(StreamTranslator::new(
                    &self.public_model,
                    host.now_ms() / 1000,
                    MAX_PROVIDER_LINE_BYTES,
                )),
                failed: false,
            },
            (_, true, false) => Translation::Json,
        };
        match self.translation {
            Translation::None => {
                self.count(host, status);
                Flow::Continue
            }
            Translation::Stream { .. } => {
                self.count(host, status);
                host.set_response_header("content-length", None);
                Flow::Continue
            }
            // No body to replace: only the status tells.
            Translation::Json | Translation::Error { .. } if end_of_stream => {
                let status = match self.translation {
                    Translation::Error { status } => {
                        tell_provider_status(host, status);
                        upstream_failure(status, &ErrorDetail::default()).status()
                    }
                    _ => 502,
                };
                self.count(host, status);
                host.set_response_header(":status", Some(&status.to_string()));
                Flow::Continue
            }
            // The status and length depend on the whole body.
            Translation::Json | Translation::Error { .. } => Flow::Pause,
        }
    }

    /// One attempt's answer, by the status the client would see.
    fn count(&self, host: &dyn StreamHost, status: u32) {
        let class = match status {
            200..=299 => "2xx",
            429 => "429",
            400..=499 => "4xx",
            500.. => "5xx",
            _ => "other",
        };
        host.add_metric(
            Metric::ProviderResponses {
                provider: Rc::clone(&self.config.provider),
                status: class,
            },
            1,
        );
    }

    pub fn on_response_body(
        &mut self,
        host: &dyn StreamHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if self.replied {
            return Flow::Continue;
        }
        match &mut self.translation {
            Translation::None => Flow::Continue,
            Translation::Json | Translation::Error { .. } => {
                // Envoy bounds what it buffers (the listener's buffer
                // limit), and answers 500 itself beyond it.
                if !end_of_stream {
                    return Flow::Buffer;
                }
                let body = host.response_body(body_size).unwrap_or_default();
                let out = self.replace_whole(host, &body);
                host.replace_response_body(body_size, &out);
                Flow::Continue
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
                host.replace_response_body(body_size, &translated);
                Flow::Continue
            }
        }
    }

    /// The whole body of a held response (`Json` or `Error`) as the client
    /// gets it, with the status and headers that go with it.
    fn replace_whole(&mut self, host: &dyn StreamHost, body: &[u8]) -> Vec<u8> {
        let (status, out) = match self.translation {
            Translation::Error { status } => {
                tell_provider_status(host, status);
                let detail = ErrorDetail::of(body);
                if detail.is_account_problem(status) {
                    // The client is told only that the account failed; the
                    // provider's words are the operator's, in Envoy's log.
                    let said: String = detail.message.chars().take(256).collect();
                    host.warn_throttled(
                        "provider_account",
                        &format!(
                            "provider {} refused the gateway's account ({status}): {said}",
                            self.config.provider
                        ),
                    );
                }
                let e = upstream_failure(status, &detail);
                (e.status(), e.body())
            }
            _ => {
                let created = host.now_ms() / 1000;
                match anthropic::to_chat_completion(body, &self.public_model, created) {
                    Ok(completion) => (200, completion),
                    Err(e) => (e.status(), e.body()),
                }
            }
        };
        self.count(host, status);
        host.set_response_header(":status", Some(&status.to_string()));
        host.set_response_header("content-type", Some("application/json"));
        host.set_response_header("content-length", Some(&out.len().to_string()));
        host.set_response_header("content-encoding", None);
        out
    }
}

/// `path` without its query, cut to a length an error message may quote.
fn bounded_path(path: &str) -> String {
    path_only(path).chars().take(256).collect()
}

/// Tells the gateway role what the provider answered, before it was mapped.
fn tell_provider_status(host: &dyn StreamHost, status: u32) {
    host.set_response_header(PROVIDER_STATUS_HEADER, Some(&status.to_string()));
}
