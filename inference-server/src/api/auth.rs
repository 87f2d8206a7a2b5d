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

/// The keys (one per line of the file: during a rotation the old and the
/// new one), kept out of logs and `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeys(Vec<String>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

/// Why a key file's content cannot be keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("the file holds no key")]
    Empty,
    #[error(
        "line {line}: the key has a character other than printable ASCII (byte {byte}), which an HTTP header cannot carry"
    )]
    NotVisibleAscii { line: usize, byte: usize },
    #[error("line {line}: the key is {len} characters long; at least {MIN_KEY_LEN} are needed")]
    TooShort { line: usize, len: usize },
}

/// Shorter keys can be guessed; `openssl rand -hex 20` gives 40.
pub const MIN_KEY_LEN: usize = 16;

impl ApiKeys {
    /// A key file's content: one key per line, surrounding whitespace (the
    /// newline `echo` and editors leave) dropped, blank lines skipped.
    /// Several keys let a key be rotated without refusing anyone: the new
    /// one is added here, then given to the gateway, then the old one goes.
    pub fn parse(text: &str) -> Result<Self, ApiKeyError> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let (key, line) = (line.trim(), index + 1);
            if key.is_empty() {
                continue;
            }
            if let Some(byte) = key.bytes().position(|b| !b.is_ascii_graphic()) {
                return Err(ApiKeyError::NotVisibleAscii { line, byte });
            }
            if key.len() < MIN_KEY_LEN {
                return Err(ApiKeyError::TooShort {
                    line,
                    len: key.len(),
                });
            }
            keys.push(key.to_string());
        }
        if keys.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        Ok(Self(keys))
    }

    /// Whether `Authorization` carries one of the keys as a bearer token.
    /// Each comparison takes the same time wherever the keys first differ,
    /// and every key is compared.
    fn admit(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization.and_then(bearer_token) else {
            return false;
        };
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | token.ct_eq(key.as_bytes())
            })
            .into()
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
    let Some(key) = &app.api_keys else {
        return next.run(request).await;
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if key.admit(authorization) {
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
    const NEXT: &str = "maas-model-server-fedcba9876543210";

    #[test]
    fn a_key_file_is_trimmed_and_checked_line_by_line() {
        assert_eq!(ApiKeys::parse(&format!("{KEY}\n")), ApiKeys::parse(KEY));
        assert_eq!(
            ApiKeys::parse(&format!("  {KEY}\r\n\n{NEXT}\n")),
            Ok(ApiKeys(vec![KEY.into(), NEXT.into()]))
        );
        assert_eq!(ApiKeys::parse(" \n\n"), Err(ApiKeyError::Empty));
        assert_eq!(
            ApiKeys::parse(&format!("{KEY}\nmaas-model server-0123456789")),
            Err(ApiKeyError::NotVisibleAscii { line: 2, byte: 10 })
        );
        assert_eq!(
            ApiKeys::parse("short-key"),
            Err(ApiKeyError::TooShort { line: 1, len: 9 })
        );
        let keys = ApiKeys::parse(&format!("{KEY}\n{NEXT}")).unwrap();
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
    }

    #[test]
    fn only_the_bearer_token_of_a_key_is_admitted() {
        let keys = ApiKeys::parse(&format!("{KEY}\n{NEXT}")).unwrap();
        let admit = |v: &str| keys.admit(Some(v.as_bytes()));
        assert!(admit(&format!("Bearer {KEY}")));
        assert!(admit(&format!("Bearer {NEXT}")), "during a rotation, both");
        assert!(admit(&format!("bearer {KEY}")));
        assert!(!admit(KEY), "no scheme");
        assert!(!admit(&format!("Basic {KEY}")));
        assert!(!admit(&format!("Bearer {KEY}x")));
        assert!(!admit(&format!("Bearer {}", &KEY[..KEY.len() - 1])));
        assert!(!admit(&format!("Bearer {KEY}\n{NEXT}")));
        assert!(!admit("Bearer "));
        assert!(!keys.admit(None));
    }
}
