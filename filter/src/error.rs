//! Every way the gateway refuses a request, and the one place that maps each
//! refusal to an HTTP status and an OpenAI-shaped error body
//! (`{"error":{"message","type","param","code"}}`).
//!
//! Unknown, expired and revoked keys share one variant on purpose: the caller
//! must not learn which of the three it hit (the reason goes to metrics only).

use crate::openai::request::RequestError;
use crate::providers::ProviderError;
use crate::subscription::Quantity;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    #[error("Missing API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.")]
    MissingKey,
    #[error("Invalid API key.")]
    InvalidKey,
    #[error("Unknown endpoint {method} {path}.")]
    UnknownEndpoint { method: String, path: String },
    #[error("Method {method} is not allowed on {path}; use {allow}.")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    #[error("A JSON request body is required.")]
    BodyRequired,
    #[error("Request trailers are not supported on completion requests.")]
    TrailersUnsupported,
    #[error("Request body exceeds the limit of {limit} bytes.")]
    BodyTooLarge { limit: usize },
    #[error("Invalid request body: {0}")]
    BadRequest(RequestError),
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("{field} {requested} exceeds this subscription's cap of {cap}.")]
    MaxTokensTooLarge {
        requested: u64,
        cap: u64,
        /// The budget field the request names it in.
        field: &'static str,
    },
    #[error(
        "Rate limit reached for {} per {window} on {scope}: limit {limit}, remaining {remaining}, \
         requested {requested}. Retry after {retry_after_secs}s.",
        kind.as_str()
    )]
    RateLimited {
        kind: Quantity,
        scope: String,
        window: String,
        limit: u64,
        remaining: u64,
        requested: u64,
        retry_after_secs: u64,
    },
    #[error(
        "This request needs up to {requested} tokens but the {scope} limit is {limit} tokens per \
         {window}; lower max_tokens, shorten the prompt or send fewer images or files."
    )]
    RequestTooLarge {
        scope: String,
        window: String,
        limit: u64,
        requested: u64,
    },
    #[error("The rate limiter is unavailable; try again shortly.")]
    LimiterUnavailable,
    #[error("The gateway has no valid configuration.")]
    Unconfigured,
    #[error("This API key could not be verified because the control plane is unreachable; try again shortly.")]
    KeyLookupUnavailable,
    #[error("Your identity ({subject}) belongs to no group that has a subscription here.")]
    NoSubscription { subject: String },
    /// A request an external provider cannot take, or its failure.
    #[error("{0}")]
    Provider(ProviderError),
    /// The gateway's own model server refused the key the filter presents
    /// (`model_server_api_key`): the client's key was good.
    #[error(
        "The model server refused the gateway's credential for it (the gateway's \
         model_server_api_key and the server's --api-key-file differ); tell the platform team."
    )]
    ModelServerRefusedGateway,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl GatewayError {
    pub fn status(&self) -> u32 {
        match self {
            GatewayError::MissingKey | GatewayError::InvalidKey => 401,
            GatewayError::UnknownEndpoint { .. } | GatewayError::ModelNotFound(_) => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::BodyRequired
            | GatewayError::TrailersUnsupported
            | GatewayError::BadRequest(_)
            | GatewayError::MaxTokensTooLarge { .. } => 400,
            GatewayError::RateLimited { .. } | GatewayError::RequestTooLarge { .. } => 429,
            GatewayError::NoSubscription { .. } => 403,
            GatewayError::LimiterUnavailable
            | GatewayError::Unconfigured
            | GatewayError::KeyLookupUnavailable => 503,
            GatewayError::Provider(e) => e.status(),
            GatewayError::ModelServerRefusedGateway => 502,
        }
    }

    /// OpenAI's error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::RateLimited { kind, .. } => kind.as_str(),
            GatewayError::RequestTooLarge { .. } => "tokens",
            GatewayError::LimiterUnavailable
            | GatewayError::Unconfigured
            | GatewayError::KeyLookupUnavailable => "server_error",
            GatewayError::NoSubscription { .. } => "permission_denied",
            GatewayError::Provider(e) => e.error_type(),
            GatewayError::ModelServerRefusedGateway => "upstream_error",
            _ => "invalid_request_error",
        }
    }

    /// A stable, machine-readable code (OpenAI's where one exists).
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::MissingKey => "missing_api_key",
            GatewayError::InvalidKey => "invalid_api_key",
            GatewayError::UnknownEndpoint { .. } => "unknown_url",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::BodyRequired => "missing_body",
            GatewayError::TrailersUnsupported => "unsupported_trailers",
            GatewayError::BodyTooLarge { .. } => "request_too_large",
            GatewayError::BadRequest(RequestError::MissingModel) => "missing_model",
            GatewayError::BadRequest(RequestError::InvalidField { .. }) => "invalid_value",
            GatewayError::BadRequest(_) => "invalid_json",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::MaxTokensTooLarge { .. } => "invalid_value",
            GatewayError::RateLimited { .. } => "rate_limit_exceeded",
            GatewayError::RequestTooLarge { .. } => "request_too_large",
            GatewayError::LimiterUnavailable => "limiter_unavailable",
            GatewayError::Unconfigured => "gateway_unconfigured",
            GatewayError::KeyLookupUnavailable => "key_lookup_unavailable",
            GatewayError::NoSubscription { .. } => "no_subscription",
            GatewayError::Provider(e) => e.code(),
            GatewayError::ModelServerRefusedGateway => "model_server_credential_rejected",
        }
    }

    /// The request field at fault, when there is one.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            GatewayError::BadRequest(RequestError::MissingModel)
            | GatewayError::ModelNotFound(_) => Some("model"),
            GatewayError::BadRequest(RequestError::InvalidField { field, .. }) => Some(field),
            GatewayError::BadRequest(RequestError::DuplicateField(_)) => None,
            GatewayError::MaxTokensTooLarge { field, .. } => Some(field),
            GatewayError::Provider(e) => e.param(),
            _ => None,
        }
    }

    /// Headers that belong to this refusal besides `content-type`.
    pub fn extra_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            GatewayError::MissingKey | GatewayError::InvalidKey => {
                vec![("www-authenticate", "Bearer realm=\"maas\"".to_string())]
            }
            GatewayError::MethodNotAllowed { allow, .. } => vec![("allow", (*allow).to_string())],
            GatewayError::RateLimited {
                retry_after_secs, ..
            } => vec![("retry-after", retry_after_secs.to_string())],
            GatewayError::LimiterUnavailable | GatewayError::KeyLookupUnavailable => {
                vec![("retry-after", "1".to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// The JSON body sent to the client.
    pub fn body(&self) -> Vec<u8> {
        let envelope = Envelope {
            error: Body {
                message: self.to_string(),
                kind: self.error_type(),
                param: self.param(),
                code: self.code(),
            },
        };
        // Serialising plain strings into a Vec cannot fail; fall back to a
        // fixed body rather than panicking if it ever did.
        serde_json::to_vec(&envelope).unwrap_or_else(|_| {
            br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal"}}"#.to_vec()
        })
    }
}

impl From<RequestError> for GatewayError {
    fn from(e: RequestError) -> Self {
        GatewayError::BadRequest(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(e: &GatewayError) -> serde_json::Value {
        serde_json::from_slice(&e.body()).unwrap()
    }

    #[test]
    fn every_error_has_an_openai_shaped_body_and_its_status() {
        let cases: Vec<(GatewayError, u32, &str, &str)> = vec![
            (
                GatewayError::MissingKey,
                401,
                "invalid_request_error",
                "missing_api_key",
            ),
            (
                GatewayError::InvalidKey,
                401,
                "invalid_request_error",
                "invalid_api_key",
            ),
            (
                GatewayError::UnknownEndpoint {
                    method: "GET".into(),
                    path: "/v2/x".into(),
                },
                404,
                "invalid_request_error",
                "unknown_url",
            ),
            (
                GatewayError::BodyTooLarge { limit: 10 },
                413,
                "invalid_request_error",
                "request_too_large",
            ),
            (
                GatewayError::BadRequest(RequestError::MissingModel),
                400,
                "invalid_request_error",
                "missing_model",
            ),
            (
                GatewayError::ModelNotFound("gpt-x".into()),
                404,
                "invalid_request_error",
                "model_not_found",
            ),
            (
                GatewayError::RateLimited {
                    kind: Quantity::Tokens,
                    scope: "subscription free".into(),
                    window: "1m".into(),
                    limit: 100,
                    remaining: 3,
                    requested: 50,
                    retry_after_secs: 7,
                },
                429,
                "tokens",
                "rate_limit_exceeded",
            ),
            (
                GatewayError::LimiterUnavailable,
                503,
                "server_error",
                "limiter_unavailable",
            ),
            (
                GatewayError::Unconfigured,
                503,
                "server_error",
                "gateway_unconfigured",
            ),
            (
                GatewayError::KeyLookupUnavailable,
                503,
                "server_error",
                "key_lookup_unavailable",
            ),
            (
                GatewayError::NoSubscription {
                    subject: "alice".into(),
                },
                403,
                "permission_denied",
                "no_subscription",
            ),
        ];
        for (err, status, kind, code) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            let v = parsed(&err);
            assert_eq!(v["error"]["type"], kind, "{err:?}");
            assert_eq!(v["error"]["code"], code, "{err:?}");
            assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn invalid_keys_are_indistinguishable() {
        // Unknown, expired and revoked keys all map to this one value.
        assert_eq!(
            GatewayError::InvalidKey.body(),
            GatewayError::InvalidKey.body()
        );
        assert!(GatewayError::InvalidKey
            .extra_headers()
            .iter()
            .any(|(k, _)| *k == "www-authenticate"));
    }

    #[test]
    fn rate_limited_carries_retry_after() {
        let e = GatewayError::RateLimited {
            kind: Quantity::Requests,
            scope: "key k1".into(),
            window: "1m".into(),
            limit: 10,
            remaining: 0,
            requested: 1,
            retry_after_secs: 42,
        };
        assert_eq!(e.extra_headers(), vec![("retry-after", "42".to_string())]);
        assert!(e.to_string().contains("per 1m"));
    }

    #[test]
    fn model_errors_name_the_param() {
        let v = parsed(&GatewayError::ModelNotFound("m".into()));
        assert_eq!(v["error"]["param"], "model");
    }
}
