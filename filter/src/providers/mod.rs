//! External model providers behind the gateway: what differs between them
//! on the wire, as pure functions of bodies and statuses.
//!
//! The gateway's own contract with clients is OpenAI's chat completions API.
//! A provider of kind [`ProviderKind::OpenAiCompatible`] or
//! [`ProviderKind::AzureOpenAi`] speaks it already (Azure differs only in
//! its path and credential header, which are Envoy's business); an
//! [`ProviderKind::Anthropic`] provider speaks the Messages API, which
//! [`anthropic`] translates both ways: the request, the JSON response, the
//! event stream and the errors.
//!
//! Credentials are not here: Envoy injects them upstream of this filter (its
//! credential injector, from an SDS secret), so no provider key is ever in
//! the filter's configuration, memory or logs.
//!
//! How a provider's failure reaches the client is [`upstream_failure`]'s
//! rule, one for every kind: the client sees what it can act on (its
//! request was bad, it should slow down, the model is unavailable), never
//! the provider's verdict on the gateway's own credential as if it were the
//! client's.

pub mod anthropic;

use crate::error::GatewayError;
use crate::openai::request::BudgetField;

/// Where providers read their keys (OpenAI's, Anthropic's, Azure's): no
/// client's value, and no other provider's, may reach a provider.
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI's API as it is: OpenAI itself, vLLM, TGI, llama.cpp, the
    /// OpenAI-compatible endpoints of Bedrock and others.
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
    /// Azure OpenAI: OpenAI's bodies under
    /// `/openai/deployments/{deployment}/chat/completions?api-version=…`.
    #[serde(rename = "azure-openai")]
    AzureOpenAi,
    /// Anthropic's Messages API, translated.
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAiCompatible => "openai-compatible",
            ProviderKind::AzureOpenAi => "azure-openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }

    /// The budget field a request that names neither gets (see
    /// [`BudgetField`]), unless the provider's configuration says: Azure
    /// OpenAI takes `max_completion_tokens` for every model; an
    /// OpenAI-compatible server may know only `max_tokens` (vLLM, TGI,
    /// llama.cpp; OpenAI itself is configured with the other); Anthropic's
    /// translation reads both.
    pub fn default_budget_field(self) -> BudgetField {
        match self {
            ProviderKind::AzureOpenAi => BudgetField::MaxCompletionTokens,
            ProviderKind::OpenAiCompatible | ProviderKind::Anthropic => BudgetField::MaxTokens,
        }
    }

    /// The request header the provider reads its key from, and the prefix
    /// written before the key (what Envoy's credential injector is given).
    pub fn credential_header(self) -> (&'static str, Option<&'static str>) {
        match self {
            ProviderKind::OpenAiCompatible => ("authorization", Some("Bearer ")),
            ProviderKind::AzureOpenAi => ("api-key", None),
            ProviderKind::Anthropic => ("x-api-key", None),
        }
    }
}

/// Why a request to a provider could not be made or answered as OpenAI's
/// API would answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The request uses something the provider's API cannot express; sent
    /// anyway it would be answered differently from what was asked.
    #[error("`{field}` is not supported for this model (provider kind {kind}): {why}")]
    Unsupported {
        field: &'static str,
        kind: &'static str,
        why: &'static str,
    },
    /// A field translation reads has the wrong type (serde's words).
    #[error("invalid request body: {0}")]
    BadRequest(String),
    /// The request is valid OpenAI but malformed where translation reads it.
    #[error("invalid `{field}`: {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
    /// The provider answered with an error (already mapped, see
    /// [`upstream_failure`]).
    #[error("{message}")]
    Upstream {
        status: u32,
        error_type: &'static str,
        code: &'static str,
        message: String,
    },
    /// The provider's answer could not be read as its API documents it.
    #[error("the model provider sent a response the gateway could not read: {0}")]
    UnreadableResponse(String),
    /// A provider's cluster was sent a model it is not configured for: the
    /// gateway's configuration and Envoy's are out of step.
    #[error("the gateway is not configured to send this model to this provider")]
    NotServed,
    /// More completions in one request than a backend of the model takes
    /// (its provider's `max_outputs`).
    #[error(
        "this model takes at most {max} completion(s) per request (`n`, `best_of` or `n_cmpl`, times the prompts); the request asks for {asked}"
    )]
    TooManyOutputs { asked: u64, max: u64 },
    /// A `service_tier` the operator does not let clients choose for a
    /// backend of the model (its provider's `service_tiers`); the tier as
    /// the client wrote it, bounded.
    #[error("service tier {0:?} is not available for this model: its operator allows other tiers")]
    ServiceTier(String),
    /// The backend role was reached by a request the gateway role did not
    /// admit ([`crate::backend::ADMITTED_STATE`]): the gateway's Envoy
    /// configuration lets requests past it.
    #[error(
        "this request did not pass the gateway's admission; the gateway is misconfigured (its filter is missing from the listener)"
    )]
    NotAdmitted,
}

/// Azure OpenAI's Responses API is not per deployment
/// (`/openai/deployments/{d}/…`) as its chat completions are, and is not
/// routed to it yet.
pub const AZURE_NO_RESPONSES: ProviderError = ProviderError::Unsupported {
    field: "model",
    kind: "azure_openai",
    why: "the Responses API is not routed to Azure OpenAI; use /v1/chat/completions",
};

impl ProviderError {
    pub fn status(&self) -> u32 {
        match self {
            ProviderError::Unsupported { .. }
            | ProviderError::BadRequest(_)
            | ProviderError::InvalidField { .. }
            | ProviderError::TooManyOutputs { .. }
            | ProviderError::ServiceTier(_) => 400,
            ProviderError::Upstream { status, .. } => *status,
            ProviderError::UnreadableResponse(_) | ProviderError::NotServed => 502,
            ProviderError::NotAdmitted => 500,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            ProviderError::Unsupported { .. }
            | ProviderError::BadRequest(_)
            | ProviderError::InvalidField { .. }
            | ProviderError::TooManyOutputs { .. }
            | ProviderError::ServiceTier(_) => "invalid_request_error",
            ProviderError::Upstream { error_type, .. } => error_type,
            ProviderError::UnreadableResponse(_) | ProviderError::NotServed => "upstream_error",
            ProviderError::NotAdmitted => "server_error",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::Unsupported { .. } => "unsupported_parameter",
            ProviderError::ServiceTier(_) => "unsupported_value",
            ProviderError::InvalidField { .. }
            | ProviderError::BadRequest(_)
            | ProviderError::TooManyOutputs { .. } => "invalid_value",
            ProviderError::Upstream { code, .. } => code,
            ProviderError::UnreadableResponse(_) => "bad_upstream_response",
            ProviderError::NotServed => "provider_not_configured",
            ProviderError::NotAdmitted => "not_admitted",
        }
    }

    pub fn param(&self) -> Option<&'static str> {
        match self {
            ProviderError::Unsupported { field, .. }
            | ProviderError::InvalidField { field, .. } => Some(field),
            ProviderError::ServiceTier(_) => Some("service_tier"),
            _ => None,
        }
    }

    /// The OpenAI-shaped body (`{"error":{"message","type","param","code"}}`),
    /// written where every refusal's is.
    pub fn body(&self) -> Vec<u8> {
        GatewayError::Provider(self.clone()).body()
    }
}

/// The file-based SDS resource through which Envoy's credential injector
/// reads a provider's key: a generic secret named `secret_name` whose value
/// is the content of `secret_file`. It holds the file's path, never the key;
/// the local bootstrap (testkit) and the mesh (`maas-mesh`) both write it
/// from here. Values are JSON string literals, which YAML reads as
/// double-quoted scalars.
pub fn credential_sds(secret_name: &str, secret_file: &str) -> String {
    let quoted = |text: &str| serde_json::Value::from(text).to_string();
    format!(
        "resources:\n\
         - \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
           name: {}\n  \
           generic_secret:\n    \
             secret: {{ filename: {} }}\n",
        quoted(secret_name),
        quoted(secret_file),
    )
}

/// Ends an OpenAI event stream with `error` as its last event, then
/// `[DONE]`: how a provider's failure after the 200 reaches the client.
pub fn write_error_event(error: &ProviderError, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&error.body());
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
}

/// What a provider's error body says: OpenAI's
/// (`{"error":{"message","type","code",…}}`) and Anthropic's
/// (`{"type":"error","error":{"type","message"}}`) put it in the same place.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct ErrorDetail {
    #[serde(default, deserialize_with = "string_or_empty")]
    pub message: String,
    /// OpenAI's `type`, Anthropic's error type.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// OpenAI's `code` (a string where it is one).
    #[serde(default, deserialize_with = "string_or_none")]
    pub code: Option<String>,
}

impl ErrorDetail {
    /// The detail of a provider's error body; empty when it has none.
    pub fn of(body: &[u8]) -> ErrorDetail {
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: ErrorDetail,
        }
        serde_json::from_slice::<Envelope>(body)
            .map(|e| e.error)
            .unwrap_or_default()
    }

    /// The code a refused request is reported with: OpenAI's own for what
    /// clients act on (an agent framework trims its history on
    /// `context_length_exceeded`; Azure's `content_filter`), Anthropic's
    /// "prompt is too long" as OpenAI's code, and the gateway's otherwise.
    fn request_code(&self) -> &'static str {
        match self.code.as_deref() {
            Some("context_length_exceeded") => "context_length_exceeded",
            Some("content_filter") => "content_filter",
            _ if self.message.contains("prompt is too long") => "context_length_exceeded",
            _ => "provider_rejected_request",
        }
    }

    /// The operator's account, not the request, is what the provider
    /// refused: OpenAI's exhausted quota (a 429 that no retry clears for
    /// hours), Anthropic's billing error or too-low credit balance (a 402,
    /// or a 400 that would otherwise read as the client's mistake).
    pub fn is_account_problem(&self, status: u32) -> bool {
        let named =
            |name: &str| self.code.as_deref() == Some(name) || self.kind.as_deref() == Some(name);
        match status {
            402 => true,
            429 => named("insufficient_quota"),
            // Anthropic's words for it, as its own error type says: a 400
            // echoing a client's text must not read as the operator's.
            400 => {
                named("billing_error")
                    || (named("invalid_request_error")
                        && self.message.starts_with("Your credit balance is too low"))
            }
            _ => named("billing_error"),
        }
    }
}

/// A string field that may be `null` or not a string: its absence, not an
/// error that would lose the rest of the detail.
fn string_or_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    string_or_none(d).map(Option::unwrap_or_default)
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = <Option<serde_json::Value> as serde::Deserialize>::deserialize(d)?;
    Ok(value.and_then(|v| v.as_str().map(str::to_string)))
}

/// What the client is told when a provider answers `status` (≥ 400) with
/// `detail` (the provider's own words, or empty).
///
/// - The operator's account refused (exhausted quota, billing): 502, so a
///   fallback is tried, and the provider's words stay with the operator.
/// - 400, 404 on a request, 413, 422: the client's request was refused;
///   the status passes through (404 becomes 502: the gateway, not the
///   client, named the provider's model).
/// - 401, 403: the provider refused the gateway's credential. That is not
///   the client's key failing, so it is a 502, and the message says whose
///   credential it was.
/// - 429: the provider's own rate limit: 429, so the client backs off.
/// - 408, 5xx and anything else: 502, or 503 for "overloaded" (503, 529).
pub fn upstream_failure(status: u32, detail: &ErrorDetail) -> ProviderError {
    let message = detail.message.as_str();
    let said = |what: &str| {
        if message.is_empty() {
            what.to_string()
        } else {
            format!("{what}: {message}")
        }
    };
    let (status, error_type, code, message) = match status {
        _ if detail.is_account_problem(status) => (
            502,
            "upstream_error",
            "provider_account_unavailable",
            "the model provider refused the gateway's account (its quota or billing); tell the platform team".to_string(),
        ),
        400 | 413 | 422 => (
            status,
            "invalid_request_error",
            detail.request_code(),
            said("the model provider rejected the request"),
        ),
        401 | 403 => (
            502,
            "upstream_error",
            "provider_credential_rejected",
            said("the model provider rejected the gateway's credential for it; tell the platform team"),
        ),
        404 => (
            502,
            "upstream_error",
            "provider_model_not_found",
            said("the model provider does not know the model this gateway maps to"),
        ),
        429 => (
            429,
            "rate_limit_error",
            "provider_rate_limited",
            said("the model provider's rate limit was reached; retry shortly"),
        ),
        503 | 529 => (
            503,
            "upstream_error",
            "provider_overloaded",
            said("the model provider is overloaded; retry shortly"),
        ),
        _ => (
            502,
            "upstream_error",
            "provider_error",
            said(&format!("the model provider failed ({status})")),
        ),
    };
    ProviderError::Upstream {
        status,
        error_type,
        code,
        message,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_spelt_in_configuration_as_they_are_reported() {
        for kind in [
            ProviderKind::OpenAiCompatible,
            ProviderKind::AzureOpenAi,
            ProviderKind::Anthropic,
        ] {
            let parsed: ProviderKind =
                serde_json::from_value(serde_json::Value::from(kind.as_str())).unwrap();
            assert_eq!(parsed, kind);
        }
    }

    #[test]
    fn provider_failures_map_to_what_the_client_can_act_on() {
        let cases = [
            (400, 400, "invalid_request_error"),
            (401, 502, "upstream_error"),
            (403, 502, "upstream_error"),
            (404, 502, "upstream_error"),
            (413, 413, "invalid_request_error"),
            (429, 429, "rate_limit_error"),
            (500, 502, "upstream_error"),
            (503, 503, "upstream_error"),
            (529, 503, "upstream_error"),
            (504, 502, "upstream_error"),
        ];
        for (provider, client, kind) in cases {
            let e = upstream_failure(provider, &said("why"));
            assert_eq!((e.status(), e.error_type()), (client, kind), "{provider}");
            let body: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.ends_with(": why"), "{provider}: {message}");
            assert_eq!(body["error"]["code"], e.code());
        }
    }

    #[test]
    fn a_rejected_credential_is_not_reported_as_the_clients() {
        let e = upstream_failure(401, &said("invalid x-api-key"));
        assert_eq!(e.status(), 502);
        assert!(e.to_string().contains("gateway's credential"), "{e}");
    }

    fn said(message: &str) -> ErrorDetail {
        ErrorDetail {
            message: message.into(),
            ..ErrorDetail::default()
        }
    }

    #[test]
    fn error_bodies_of_either_shape_give_their_detail() {
        let anthropic = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#;
        let detail = ErrorDetail::of(anthropic);
        assert_eq!(detail.message, "Overloaded");
        assert_eq!(detail.kind.as_deref(), Some("overloaded_error"));
        let openai = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let detail = ErrorDetail::of(openai);
        assert_eq!(detail.message, "Incorrect API key provided");
        assert_eq!(detail.code.as_deref(), Some("invalid_api_key"));
        let numeric = br#"{"error":{"message":"m","code":400}}"#;
        assert_eq!(ErrorDetail::of(numeric).code, None);
        let no_message = br#"{"error":{"message":null,"type":"insufficient_quota"}}"#;
        assert_eq!(
            ErrorDetail::of(no_message).kind.as_deref(),
            Some("insufficient_quota")
        );
        assert_eq!(ErrorDetail::of(b"<html>502</html>"), ErrorDetail::default());
    }

    /// An exhausted quota or billing is the operator's to fix: a 502 that
    /// moves the request to a fallback, not a 429 to retry for hours or a
    /// 400 blaming the client, and the provider's words stay out.
    #[test]
    fn the_operators_account_refused_is_a_502_for_the_platform_team() {
        let cases: [(u32, &[u8]); 4] = [
            (429, br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#),
            (400, br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#),
            (402, br#"{"type":"error","error":{"type":"billing_error","message":"payment required"}}"#),
            (400, br#"{"type":"error","error":{"type":"billing_error","message":"x"}}"#),
        ];
        for (status, body) in cases {
            let e = upstream_failure(status, &ErrorDetail::of(body));
            assert_eq!(
                (e.status(), e.code()),
                (502, "provider_account_unavailable"),
                "{status}"
            );
            assert!(!e.to_string().contains("credit"), "{e}");
        }
        // A plain rate limit and a plain bad request stay what they are.
        let rate = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(upstream_failure(429, &ErrorDetail::of(rate)).status(), 429);
        let bad = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#;
        assert_eq!(upstream_failure(400, &ErrorDetail::of(bad)).status(), 400);
        // A client's text echoed back is the client's.
        let echoed = br#"{"error":{"message":"Invalid prompt: my credit balance is too low","type":"invalid_request_error"}}"#;
        assert_eq!(
            upstream_failure(400, &ErrorDetail::of(echoed)).status(),
            400
        );
    }

    /// Codes clients act on survive: a context overflow (OpenAI's, and
    /// Anthropic's "prompt is too long" under OpenAI's code), Azure's
    /// content filter; others are the gateway's.
    #[test]
    fn a_refused_request_keeps_the_code_clients_act_on() {
        let cases: [(&[u8], &str); 4] = [
            (br#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#, "context_length_exceeded"),
            (br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 215000 tokens > 200000 maximum"}}"#, "context_length_exceeded"),
            (br#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#, "content_filter"),
            (br#"{"error":{"message":"Invalid value","type":"invalid_request_error","code":"invalid_value"}}"#, "provider_rejected_request"),
        ];
        for (body, code) in cases {
            let e = upstream_failure(400, &ErrorDetail::of(body));
            assert_eq!((e.status(), e.code()), (400, code), "{e}");
        }
    }

    #[test]
    fn unsupported_fields_name_the_field() {
        let e = ProviderError::Unsupported {
            field: "tools",
            kind: "anthropic",
            why: "not translated yet",
        };
        let body: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(body["error"]["param"], "tools");
        assert_eq!(body["error"]["code"], "unsupported_parameter");
        assert_eq!(e.status(), 400);
    }
}
