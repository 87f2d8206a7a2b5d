//! Who is calling: the local administrator token, the gateway's sync token,
//! or an OIDC bearer token.
//!
//! The tokens are random, created at first start, and kept here only as
//! SHA-256 digests, compared in constant time. Any other bearer value is
//! treated as a JWT when OIDC is configured.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maas_filter::auth::keys::KeyDigest;

use super::error::ApiError;
use super::AppState;
use crate::oidc::{Identity, TokenVerifier};

/// Who the administrator token acts as: in the namespace no OIDC subject may
/// enter ([`maas_filter::auth::keys::check_subject`]), so a token with `sub:
/// "admin"` (or `"maas:admin"`) is never taken for the administrator, and
/// never sees or revokes the keys it minted for itself. The gateway accepts
/// it as a key's owner like any other.
pub const ADMIN_SUBJECT: &str = "maas:admin";

pub struct Authenticator {
    admin_token_sha256: Option<KeyDigest>,
    gateway_token_sha256: Option<KeyDigest>,
    oidc: Option<Arc<TokenVerifier>>,
}

/// The filter's key digest serves bearer tokens too: SHA-256, compared in
/// constant time.
fn matches(expected: Option<&KeyDigest>, bearer: &str) -> bool {
    expected.is_some_and(|e| e.ct_eq(&KeyDigest::of(bearer)))
}

impl Authenticator {
    /// `admin`: the administrator token's digest; `gateway`: the digest of
    /// the token the gateway filter syncs keys with (`KeyDigest::of`).
    pub fn new(
        admin: Option<KeyDigest>,
        gateway: Option<KeyDigest>,
        oidc: Option<Arc<TokenVerifier>>,
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
                subject: ADMIN_SUBJECT.into(),
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

/// The token of `Authorization: Bearer <token>`; the scheme is
/// case-insensitive (RFC 9110), as the gateway reads it.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once([' ', '\t']))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
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
        // Already verified by `admit` (once is enough: an RSA or EC check).
        if let Some(identity) = parts.extensions.remove::<Identity>() {
            return Ok(Caller(identity));
        }
        state.auth.identify(bearer(&parts.headers)?).map(Caller)
    }
}

/// Middleware: a caller's request to the API takes a place (see
/// [`super::admission`]) for as long as it runs. A request whose caller
/// cannot be identified takes none: its handler answers it 401 at once.
pub(super) async fn admit(
    State(app): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    if !super::admission::takes_a_place(request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(identity) = bearer(request.headers()).and_then(|b| app.auth.identify(b)) else {
        return next.run(request).await;
    };
    let ticket = match app.admission.enter(&identity.subject).await {
        Ok(ticket) => ticket,
        Err(refusal) => return refusal.into_response(),
    };
    request.extensions_mut().insert(identity);
    let response = next.run(request).await;
    drop(ticket);
    response
}

/// The gateway filter (or an administrator) reading the key set.
pub struct GatewayCaller;

impl FromRequestParts<std::sync::Arc<AppState>> for GatewayCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &std::sync::Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        if state.auth.is_gateway(bearer(&parts.headers)?) {
            Ok(GatewayCaller)
        } else {
            Err(ApiError::Unauthenticated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ADMIN_SUBJECT;
    use maas_filter::auth::keys::{check_subject, check_user_name, UserNameError};

    #[test]
    fn the_admin_identity_is_no_subject_a_token_can_claim() {
        assert_eq!(check_subject(ADMIN_SUBJECT), Err(UserNameError::Reserved));
        // Yet it is a valid owner for the gateway's `x-maas-user`.
        assert_eq!(check_user_name(ADMIN_SUBJECT), Ok(()));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let token = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            super::bearer(&headers).ok().map(str::to_owned)
        };
        for value in [
            "Bearer t-1",
            "bearer t-1",
            "BEARER t-1",
            "Bearer\tt-1",
            "Bearer  t-1 ",
        ] {
            assert_eq!(token(value).as_deref(), Some("t-1"), "{value:?}");
        }
        for value in ["Basic dTpw", "Bearer", "Bearer ", "Bearert-1"] {
            assert_eq!(token(value), None, "{value:?}");
        }
    }
}
