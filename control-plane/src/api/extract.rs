//! axum's extractors as the API uses them: the same parsing, but every
//! rejection is an [`ApiError`], so a bad query string, an undecodable path
//! segment, an oversized body or a wrong method gets the OpenAI-style body
//! and not axum's `text/plain` (or empty) one. Handlers take these, never
//! axum's own, so no rejection can slip out in another shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use std::time::Duration;

use super::error::ApiError;

const NO_CONTROL: &str = "path and query: no control characters (ids, names and owners have none)";

/// Whether a URI part percent-encodes a control character (a raw one
/// cannot be in a URI). None is in any id, name or owner, and PostgreSQL
/// refuses a NUL in text outright: looked up, `%00` was a 503 "database
/// unavailable" and an error in the log, at any caller's will.
fn encodes_a_control(part: &str) -> bool {
    part.as_bytes().windows(3).any(|w| {
        let hex = std::str::from_utf8(&w[1..]).ok();
        w[0] == b'%'
            && hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .is_some_and(|b| b < 0x20 || b == 0x7f)
    })
}

/// `axum::extract::Query`, rejected as a 400 naming the query string.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(encodes_a_control) {
            return Err(ApiError::Invalid(NO_CONTROL.into()));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::Invalid(format!("query string: {}", e.body_text())))
    }
}

/// `axum::extract::Path`, rejected as a 400 naming the path.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if encodes_a_control(parts.uri.path()) {
            return Err(ApiError::Invalid(NO_CONTROL.into()));
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError::Invalid(format!("path: {}", e.body_text())))
    }
}

/// The raw body (parsed by the handler, see `super::parse`), within axum's
/// default limit: over it is a 413, one that has not all come within
/// [`BODY_READ_TIMEOUT`] a 408, any other failure to read it a 400.
pub struct ApiBody(pub Bytes);

/// The API's bodies are a few hundred bytes: a client still sending after
/// this long is trickling one in to hold a request open (and, through
/// Envoy, a slot of the cluster's connection budget) for as long as it
/// likes.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

impl<S> FromRequest<S> for ApiBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state))
            .await
            .map_err(|_| ApiError::BodyTimeout(BODY_READ_TIMEOUT))?
            .map(ApiBody)
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(e.body_text()),
                _ => ApiError::Invalid(format!("request body: {}", e.body_text())),
            })
    }
}

/// For a known path asked with a method it does not serve (axum keeps its
/// `Allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_control_characters_are_found() {
        for part in ["/maas-api/v1/api-keys/%00", "owner=a%1fb", "x=%7F", "x=%7f"] {
            assert!(encodes_a_control(part), "{part}");
        }
        for part in [
            "/maas-api/v1/api-keys/k-1",
            "owner=a%20b",
            "x=%25",
            "x=%",
            "x=%2",
        ] {
            assert!(!encodes_a_control(part), "{part}");
        }
    }
}
