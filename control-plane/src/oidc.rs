//! OIDC bearer tokens: the signature is checked against the issuer's JWKS
//! (asymmetric algorithms only, so a public key can never be replayed as an
//! HMAC secret), then issuer, audience, expiry and not-before; the identity is the
//! subject plus the groups found under a configurable claim.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Clock skew tolerated on `exp` and `nbf`, as most OIDC libraries do.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    pub issuer: String,
    pub audience: String,
    /// Dotted path to the groups claim, e.g. `groups` or `realm_access.roles`.
    pub groups_claim: String,
    /// Members of these groups administer the control plane.
    pub admin_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub groups: Vec<String>,
    pub admin: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("the JWKS is not a JSON key set: {0}")]
    Format(String),
    #[error("the JWKS has no usable signing key (RSA or EC with a `kid`)")]
    NoKeys,
}

/// Why a token was refused. Clients see one 401 for all of them; the reason
/// goes to logs and metrics.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a JWT")]
    Malformed,
    #[error("signed with key {0:?}, which the issuer's JWKS does not contain")]
    UnknownKey(Option<String>),
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("invalid signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet (`nbf` is in the future)")]
    NotYetValid,
    #[error("issued by another issuer")]
    Issuer,
    #[error("for another audience")]
    Audience,
    #[error("invalid claims: {0}")]
    Claims(String),
}

/// The issuer's signing keys by `kid`, each with the one algorithm it takes.
type Keys = HashMap<String, (DecodingKey, Algorithm)>;

pub struct TokenVerifier {
    settings: OidcSettings,
    /// Replaced whole when the issuer's key set changes
    /// ([`TokenVerifier::replace_keys`]).
    keys: RwLock<Arc<Keys>>,
}

fn asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl TokenVerifier {
    /// Refuses a key set with no usable key: at start that is a mistake.
    pub fn new(settings: OidcSettings, jwks: &[u8]) -> Result<Self, JwksError> {
        let keys = parse_keys(jwks)?;
        if keys.is_empty() {
            return Err(JwksError::NoKeys);
        }
        Ok(Self {
            settings,
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// Verifies with the keys of `jwks` from now on (the issuer rotated or
    /// withdrew a key). A set with no usable key is taken too, so that an
    /// operator who empties the file to withdraw a compromised only key
    /// stops every token; one that is not a key set at all leaves the keys
    /// in use. Returns how many keys the new set has.
    pub fn replace_keys(&self, jwks: &[u8]) -> Result<usize, JwksError> {
        let keys = parse_keys(jwks)?;
        let count = keys.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(count)
    }

    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner));
        let (key, alg) = header
            .kid
            .as_ref()
            .and_then(|kid| keys.get(kid))
            .ok_or_else(|| TokenError::UnknownKey(header.kid.clone()))?;
        if header.alg != *alg {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(*alg);
        validation.leeway = LEEWAY_SECS;
        // `Validation::new` checks `exp` only; an issuer's `nbf` is a promise
        // too (e.g. a token minted for later), and RFC 7519 says to refuse
        // it before then.
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Value>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => TokenError::Issuer,
                ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => TokenError::Malformed,
                other => TokenError::Claims(format!("{other:?}")),
            }
        })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::Claims("`sub` is missing".into()))?
            .to_string();
        // The gateway refuses the same subjects (it sends them upstream as a
        // header); the reserved namespace keeps the administrator apart.
        maas_filter::auth::keys::check_subject(&subject)
            .map_err(|e| TokenError::Claims(format!("`sub` {e}")))?;
        let groups = groups_at(&claims, &self.settings.groups_claim);
        let admin = groups
            .iter()
            .any(|g| self.settings.admin_groups.contains(g));
        Ok(Identity {
            subject,
            groups,
            admin,
        })
    }
}

/// The asymmetric signing keys of a JWKS that have a `kid` (none is not an
/// error here: see [`TokenVerifier::new`] and [`TokenVerifier::replace_keys`]).
fn parse_keys(jwks: &[u8]) -> Result<Keys, JwksError> {
    let set: JwkSet = serde_json::from_slice(jwks).map_err(|e| JwksError::Format(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) else {
            continue;
        };
        let alg = match jwk.common.key_algorithm.map(|a| a.to_string()) {
            Some(a) => match a.parse::<Algorithm>() {
                Ok(alg) => alg,
                Err(_) => continue,
            },
            None => match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            },
        };
        if asymmetric(alg) {
            keys.insert(kid, (key, alg));
        }
    }
    Ok(keys)
}

/// The strings under a dotted claim path: an array of strings or one string.
fn groups_at(claims: &Value, path: &str) -> Vec<String> {
    let node = path.split('.').try_fold(claims, |v, part| v.get(part));
    match node {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The test issuer's keys and tokens, for this module's tests and the
/// reloader's (`serve`).
#[cfg(test)]
pub(crate) mod fixtures {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::Value;

    pub const ISSUER_KEY: &[u8] = include_bytes!("../tests/fixtures/issuer.key.pem");
    pub const JWKS: &[u8] = include_bytes!("../tests/fixtures/jwks.json");
    pub const ISS: &str = "https://issuer.test";

    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// `claims` signed with `key` (PEM) under `kid`, RS256.
    pub fn token(key: &[u8], kid: &str, claims: Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        encode(&header, &claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{now, token, ISS, ISSUER_KEY, JWKS};
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const FORGER_KEY: &[u8] = include_bytes!("../tests/fixtures/forger.key.pem");

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(
            OidcSettings {
                issuer: ISS.into(),
                audience: "maas".into(),
                groups_claim: "groups".into(),
                admin_groups: vec!["maas-admins".into()],
            },
            JWKS,
        )
        .unwrap()
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({"iss": ISS, "aud": "maas", "sub": "alice", "exp": now() + 300, "groups": ["ml-team"]});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    /// The issuer rotates: a key under a new `kid` is taken once the set
    /// is replaced, the withdrawn one refused; an unusable set changes
    /// nothing.
    #[test]
    fn a_replaced_key_set_takes_the_new_keys_and_drops_the_old() {
        let v = verifier();
        let old = token(ISSUER_KEY, "test-issuer-1", claims(json!({})));
        let new = token(ISSUER_KEY, "test-issuer-2", claims(json!({})));
        assert!(v.verify(&old).is_ok());
        assert_eq!(
            v.verify(&new),
            Err(TokenError::UnknownKey(Some("test-issuer-2".into())))
        );
        let rotated = String::from_utf8(JWKS.to_vec())
            .unwrap()
            .replace("test-issuer-1", "test-issuer-2");
        assert_eq!(v.replace_keys(rotated.as_bytes()), Ok(1));
        assert!(v.verify(&new).is_ok());
        assert!(matches!(v.verify(&old), Err(TokenError::UnknownKey(_))));
        assert!(matches!(
            v.replace_keys(b"{not json"),
            Err(JwksError::Format(_))
        ));
        assert!(v.verify(&new).is_ok(), "the keys in use stay");
        // Emptied to withdraw a compromised only key: every token stops.
        assert_eq!(v.replace_keys(br#"{"keys": []}"#), Ok(0));
        assert!(matches!(v.verify(&new), Err(TokenError::UnknownKey(_))));
    }

    #[test]
    fn a_token_from_the_issuer_yields_its_identity() {
        let id = verifier()
            .verify(&token(ISSUER_KEY, "test-issuer-1", claims(json!({}))))
            .unwrap();
        assert_eq!(
            id,
            Identity {
                subject: "alice".into(),
                groups: vec!["ml-team".into()],
                admin: false
            }
        );
        let admin = verifier()
            .verify(&token(
                ISSUER_KEY,
                "test-issuer-1",
                claims(json!({"groups": ["maas-admins"]})),
            ))
            .unwrap();
        assert!(admin.admin);
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let v = verifier();
        let forged = token(FORGER_KEY, "test-issuer-1", claims(json!({})));
        assert_eq!(v.verify(&forged), Err(TokenError::Signature));
        let expired = token(
            ISSUER_KEY,
            "test-issuer-1",
            claims(json!({"exp": now() - 3600})),
        );
        assert_eq!(v.verify(&expired), Err(TokenError::Expired));
        let other_iss = token(
            ISSUER_KEY,
            "test-issuer-1",
            claims(json!({"iss": "https://evil.test"})),
        );
        assert_eq!(v.verify(&other_iss), Err(TokenError::Issuer));
        let other_aud = token(ISSUER_KEY, "test-issuer-1", claims(json!({"aud": "other"})));
        assert_eq!(v.verify(&other_aud), Err(TokenError::Audience));
        let unknown_kid = token(ISSUER_KEY, "rotated-away", claims(json!({})));
        assert_eq!(
            v.verify(&unknown_kid),
            Err(TokenError::UnknownKey(Some("rotated-away".into())))
        );
        assert_eq!(v.verify("not.a.jwt"), Err(TokenError::Malformed));
        assert_eq!(v.verify(""), Err(TokenError::Malformed));
    }

    #[test]
    fn a_token_is_refused_before_its_nbf_within_the_leeway_only() {
        let v = verifier();
        let later = token(
            ISSUER_KEY,
            "test-issuer-1",
            claims(json!({"nbf": now() + 3600})),
        );
        assert_eq!(v.verify(&later), Err(TokenError::NotYetValid));
        // A clock a little behind the issuer's is tolerated, as for `exp`.
        for nbf in [now() + LEEWAY_SECS / 2, now() - 60] {
            let t = token(ISSUER_KEY, "test-issuer-1", claims(json!({"nbf": nbf})));
            assert!(v.verify(&t).is_ok(), "nbf {nbf}");
        }
    }

    #[test]
    fn subjects_the_gateway_could_not_assert_or_that_are_reserved_are_refused() {
        let v = verifier();
        for sub in ["maas:admin", "a\r\nx-maas-user: root", &"x".repeat(300)] {
            let t = token(ISSUER_KEY, "test-issuer-1", claims(json!({"sub": sub})));
            assert!(
                matches!(v.verify(&t), Err(TokenError::Claims(ref m)) if m.starts_with("`sub`")),
                "{sub:?}"
            );
        }
        // A subject that merely reads "admin" is an ordinary user.
        let t = token(ISSUER_KEY, "test-issuer-1", claims(json!({"sub": "admin"})));
        let id = v.verify(&t).unwrap();
        assert_eq!((id.subject.as_str(), id.admin), ("admin", false));
    }

    #[test]
    fn an_hmac_token_cannot_pass_as_the_issuers() {
        // The classic confusion: HS256 "signed" with the public key material.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("test-issuer-1".into());
        let t = encode(&header, &claims(json!({})), &EncodingKey::from_secret(JWKS)).unwrap();
        assert_eq!(
            verifier().verify(&t),
            Err(TokenError::Algorithm("HS256".into()))
        );
    }

    #[test]
    fn groups_come_from_a_dotted_claim_path() {
        let c = json!({"realm_access": {"roles": ["a", "b"]}, "team": "x"});
        assert_eq!(groups_at(&c, "realm_access.roles"), vec!["a", "b"]);
        assert_eq!(groups_at(&c, "team"), vec!["x"]);
        assert!(groups_at(&c, "missing.path").is_empty());
    }

    #[test]
    fn a_jwks_without_signing_keys_is_refused() {
        let settings = verifier().settings;
        assert!(matches!(
            TokenVerifier::new(settings.clone(), b"{\"keys\": []}"),
            Err(JwksError::NoKeys)
        ));
        assert!(matches!(
            TokenVerifier::new(settings, b"nope"),
            Err(JwksError::Format(_))
        ));
    }
}
