//! `--api-key-file`: the server answers its API only to callers that
//! present its key as a bearer token, as vLLM's and llama.cpp's `--api-key`
//! do. Behind the MaaS gateway the filter presents it
//! (`model_server_api_key`), after taking the client's own credential off,
//! so a request that reaches the server without passing the filter (a
//! mesh patch that did not land, a pod calling the server directly) is
//! refused. `/health` and `/metrics` stay open to probes and scrapers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// The key, kept out of logs and `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// Why a key file's content cannot be a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("the file is empty")]
    Empty,
    #[error(
        "the key has a character other than printable ASCII (byte {0}), which an HTTP header cannot carry"
    )]
    NotVisibleAscii(usize),
    #[error("the key is {0} characters long; at least {MIN_KEY_LEN} are needed")]
    TooShort(usize),
}

/// Shorter keys can be guessed; `openssl rand -hex 20` gives 40.
pub const MIN_KEY_LEN: usize = 16;

impl ApiKey {
    /// A key file's content: the key, with surrounding whitespace (the
    /// newline `echo` and editors leave) dropped.
    pub fn parse(text: &str) -> Result<Self, ApiKeyError> {
        let key = text.trim();
        if key.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        if let Some(at) = key.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(ApiKeyError::NotVisibleAscii(at));
        }
        if key.len() < MIN_KEY_LEN {
            return Err(ApiKeyError::TooShort(key.len()));
        }
        Ok(Self(key.to_string()))
    }

    /// Whether `Authorization` carries this key as a bearer token. The
    /// comparison takes the same time wherever the keys first differ.
    fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization.and_then(bearer_token) else {
            return false;
        };
        token.ct_eq(self.0.as_bytes()).into()
    }
}

/// The token of `Bearer TOKEN` (the scheme in any case, as RFC 9110 says).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// The middleware on the API's routes.
pub async fn require_key(
    State(app): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &app.api_key else {
        return next.run(request).await;
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if key.admits(authorization) {
        return next.run(request).await;
    }
    let mut response = ApiError::unauthorized(authorization.is_some()).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "maas-model-server-0123456789abcdef";

    #[test]
    fn a_key_file_is_trimmed_and_checked() {
        assert_eq!(ApiKey::parse(&format!("{KEY}\n")), ApiKey::parse(KEY));
        assert_eq!(ApiKey::parse(" \n"), Err(ApiKeyError::Empty));
        assert_eq!(
            ApiKey::parse("maas-model server-0123456789"),
            Err(ApiKeyError::NotVisibleAscii(10))
        );
        assert_eq!(ApiKey::parse("short-key"), Err(ApiKeyError::TooShort(9)));
        assert_eq!(format!("{:?}", ApiKey::parse(KEY).unwrap()), "ApiKey(..)");
    }

    #[test]
    fn only_the_bearer_token_of_the_key_is_admitted() {
        let key = ApiKey::parse(KEY).unwrap();
        let admits = |v: &str| key.admits(Some(v.as_bytes()));
        assert!(admits(&format!("Bearer {KEY}")));
        assert!(admits(&format!("bearer {KEY}")));
        assert!(!admits(KEY), "no scheme");
        assert!(!admits(&format!("Basic {KEY}")));
        assert!(!admits(&format!("Bearer {KEY}x")));
        assert!(!admits(&format!("Bearer {}", &KEY[..KEY.len() - 1])));
        assert!(!admits("Bearer "));
        assert!(!key.admits(None));
    }
}
