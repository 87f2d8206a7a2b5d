//! Every refusal of the control plane's API, with its one status and an
//! OpenAI-style body (`{"error": {"message", "type", "code"}}`), so clients
//! of the gateway and of the control plane parse errors the same way.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;
use crate::subscription::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid credentials")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// The owner holds the subscription's `max_keys_per_owner` live keys.
    /// 409, not 429: waiting does not help (until a key expires), revoking
    /// one does; not 403: the caller may use the subscription.
    #[error("{owner:?} already holds {max} live keys in subscription {subscription:?}, its max_keys_per_owner; revoke one first")]
    TooManyKeys {
        owner: String,
        subscription: String,
        max: u64,
    },
    /// The owner minted `serve --max-keys-minted-per-day` keys in the last
    /// 24 hours. 429: waiting helps, revoking does not.
    #[error("{owner:?} minted {max} keys in the last 24 hours, the most this control plane allows; try again later")]
    TooManyMints { owner: String, max: u64 },
    /// The path exists; the method is not one it serves.
    #[error("method not allowed on this path (see the Allow header)")]
    MethodNotAllowed,
    /// The body is over the size the API reads.
    #[error("request body: {0}")]
    TooLarge(String),
    /// The body did not all arrive within the time the API waits for it.
    #[error("request body: not received within {} s", .0.as_secs())]
    BodyTimeout(std::time::Duration),
    /// A fault of the control plane's own, not the database's availability
    /// (a stored row it cannot read, no OS randomness): retrying will not
    /// help. The detail is logged, never sent: it may quote stored data.
    #[error("the control plane failed; see its log")]
    Internal(String),
    #[error("the database failed; nothing was changed")]
    Database(#[source] StoreError),
    /// The caller already has this many requests running (see
    /// `admission`).
    #[error("you have {0} requests running, the most one caller may; wait for one to end")]
    TooManyRequests(usize),
    /// Every place for callers' requests stayed taken (see `admission`).
    #[error("the control plane is busy; try again shortly")]
    Busy,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_credentials",
            ),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_error", "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            Self::Invalid(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
            ),
            Self::Conflict(_) => (StatusCode::CONFLICT, "invalid_request_error", "conflict"),
            Self::TooManyKeys { .. } => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "too_many_keys",
            ),
            Self::TooManyMints { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request_error",
                "too_many_mints",
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
            ),
            Self::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body_too_large",
            ),
            Self::BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
            ),
            Self::Database(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "database_unavailable",
            ),
            Self::TooManyRequests(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too_many_requests",
            ),
            Self::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "control_plane_busy",
            ),
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownSubscription(name) => {
                Self::Invalid(format!("unknown subscription {name:?}"))
            }
            StoreError::Conflict(what) => Self::Conflict(what),
            e @ StoreError::OtherCurrency { .. } => Self::Conflict(e.to_string()),
            StoreError::TooManyKeys {
                owner,
                subscription,
                max,
            } => Self::TooManyKeys {
                owner,
                subscription,
                max,
            },
            StoreError::TooManyMints { owner, max } => Self::TooManyMints { owner, max },
            StoreError::SubscriptionChanged(name) => Self::Conflict(format!(
                "subscription {name:?} kept changing while the key was minted; try again"
            )),
            StoreError::InUse { subscription, keys } => Self::Conflict(format!(
                "subscription {subscription:?} still has {keys} keys; revoke them first"
            )),
            e @ StoreError::Corrupt(_) => Self::Internal(e.to_string()),
            other => Self::Database(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Database(e) => tracing::error!(error = %e, "database error"),
            Self::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            _ => {}
        }
        let (status, kind, code) = self.parts();
        let body = json!({"error": {"message": self.to_string(), "type": kind, "code": code}});
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(self, Self::TooManyRequests(_) | Self::Busy) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        // RFC 9110: a 401 names the scheme it wants.
        if matches!(self, Self::Unauthenticated) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
