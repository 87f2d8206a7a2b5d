//! Who is calling: the local administrator token, the gateway's sync token,
//! or an OIDC bearer token.
//!
//! The tokens are random, created at first start, and kept here only as
//! SHA-256 digests, compared in constant time. Any other bearer value is
//! treated as a JWT when OIDC is configured.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::oidc::{Identity, TokenVerifier};

pub struct Authenticator {
    admin_token_sha256: Option<[u8; 32]>,
    gateway_token_sha256: Option<[u8; 32]>,
    oidc: Option<TokenVerifier>,
}

/// SHA-256 of a bearer token, as the authenticator keeps it.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn matches(expected: Option<&[u8; 32]>, bearer: &str) -> bool {
    let given = token_digest(bearer);
    expected.is_some_and(|e| given.iter().zip(e).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
}

impl Authenticator {
    /// `admin`: the administrator token's digest; `gateway`: the digest of
    /// the token the gateway filter syncs keys with.
    pub fn new(
        admin: Option<[u8; 32]>,
        gateway: Option<[u8; 32]>,
        oidc: Option<TokenVerifier>,
    ) -> Self {
        Self {
            admin_token_sha256: admin,
            gateway_token_sha256: gateway,
            oidc,
        }
    }

    /// Whether `bearer` may read the key set (the gateway, or an admin).
    pub fn is_gateway(&self, bearer: &str) -> bool {
        matches(self.gateway_token_sha256.as_ref(), bearer)
            || matches(self.admin_token_sha256.as_ref(), bearer)
    }

    pub fn identify(&self, bearer: &str) -> Result<Identity, ApiError> {
        if matches(self.admin_token_sha256.as_ref(), bearer) {
            return Ok(Identity {
                subject: "admin".into(),
                groups: Vec::new(),
                admin: true,
            });
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

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthenticated)
}

/// The authenticated caller of a request.
pub struct Caller(pub Identity);

impl FromRequestParts<std::sync::Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &std::sync::Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        state.auth.identify(bearer(parts)?).map(Caller)
    }
}

/// The gateway filter (or an administrator) reading the key set.
pub struct GatewayCaller;

impl FromRequestParts<std::sync::Arc<AppState>> for GatewayCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &std::sync::Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if state.auth.is_gateway(bearer(parts)?) {
            Ok(GatewayCaller)
        } else {
            Err(ApiError::Unauthenticated)
        }
    }
}
