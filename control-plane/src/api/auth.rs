//! Who is calling: the local administrator token, or an OIDC bearer token.
//!
//! The admin token is random, printed once at first start, and stored only
//! as its SHA-256; it is compared in constant time. Any other bearer value is
//! treated as a JWT when OIDC is configured.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::oidc::{Identity, TokenVerifier};

pub struct Authenticator {
    admin_token_sha256: Option<[u8; 32]>,
    oidc: Option<TokenVerifier>,
}

impl Authenticator {
    pub fn new(admin_token: Option<&str>, oidc: Option<TokenVerifier>) -> Self {
        Self {
            admin_token_sha256: admin_token.map(|t| Sha256::digest(t.as_bytes()).into()),
            oidc,
        }
    }

    pub fn identify(&self, bearer: &str) -> Result<Identity, ApiError> {
        if let Some(expected) = &self.admin_token_sha256 {
            let given: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
            if given
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
            {
                return Ok(Identity {
                    subject: "admin".into(),
                    groups: Vec::new(),
                    admin: true,
                });
            }
        }
        let Some(oidc) = &self.oidc else {
            return Err(ApiError::Unauthenticated);
        };
        oidc.verify(bearer).map_err(|e| {
            tracing::info!(reason = %e, "bearer token refused");
            ApiError::Unauthenticated
        })
    }
}

/// The authenticated caller of a request.
pub struct Caller(pub Identity);

impl FromRequestParts<std::sync::Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &std::sync::Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated)?;
        state.auth.identify(bearer).map(Caller)
    }
}
