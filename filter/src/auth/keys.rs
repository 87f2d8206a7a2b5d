//! API keys: how a presented key is found, and why it may be refused.
//!
//! Keys are never held in clear. The configuration carries the SHA-256 of each
//! key (hex); a presented key is hashed and looked up by its digest, and the
//! stored digest is compared in constant time. API keys are high-entropy
//! random strings, so an unsalted SHA-256 is not open to dictionary attacks
//! the way a password hash would be; it also lets the lookup be one hash-map
//! probe per request.

use crate::subscription::ScopeLimits;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest([u8; 32]);

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Short prefix only: enough to correlate, too little to matter.
        write!(f, "KeyDigest({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl KeyDigest {
    pub fn from_bytes(bytes: [u8; 32]) -> KeyDigest {
        KeyDigest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn of(key: &str) -> KeyDigest {
        KeyDigest(Sha256::digest(key.as_bytes()).into())
    }

    pub fn from_hex(hex: &str) -> Option<KeyDigest> {
        decode_hex(hex).map(KeyDigest)
    }

    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Constant-time equality: no early exit on the first differing byte.
    pub fn ct_eq(&self, other: &KeyDigest) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Lowercase hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `2·N` hex digits (either case) as `N` bytes.
pub fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = (pair.first()?).to_ascii_lowercase();
        let lo = (pair.get(1)?).to_ascii_lowercase();
        *slot = (hex_value(hi)? << 4) | hex_value(lo)?;
    }
    Some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[derive(Debug)]
pub struct ApiKey {
    pub id: String,
    pub owner: String,
    /// Index into `Config::subscriptions`.
    pub subscription: usize,
    pub digest: KeyDigest,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<u64>,
    pub revoked: bool,
    /// Limits that count this key alone: its own, or its configured
    /// subscription's `key_limits` for it.
    pub limits: Rc<ScopeLimits>,
    /// Whether `limits` are the key's own (`keys[].limits`). If not, a
    /// request takes its subscription's `key_limits` from the policy in
    /// force, which the control plane may have changed.
    pub own_limits: bool,
}

/// Why a key was refused. The client always sees the same 401; the reason only
/// reaches metrics, so operators can tell a leaked revoked key from a typo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    Missing,
    Unknown,
    Expired,
    Revoked,
    /// A verified token whose groups map to no subscription.
    NoSubscription,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::NoSubscription => "no_subscription",
        }
    }
}

#[derive(Debug, Default)]
pub struct KeyStore {
    keys: Vec<ApiKey>,
    by_digest: HashMap<KeyDigest, usize>,
}

impl KeyStore {
    /// Fails with the index of a key whose digest repeats an earlier one.
    pub fn new(keys: Vec<ApiKey>) -> Result<KeyStore, usize> {
        let mut by_digest = HashMap::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            if by_digest.insert(k.digest, i).is_some() {
                return Err(i);
            }
        }
        Ok(KeyStore { keys, by_digest })
    }

    pub fn iter(&self) -> impl Iterator<Item = &ApiKey> {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&ApiKey> {
        self.keys.get(index)
    }

    /// Finds the key presented by a client, if it is valid at `now` (Unix
    /// seconds), with its index for [`KeyStore::get`].
    pub fn authenticate(&self, presented: &str, now: u64) -> Result<(usize, &ApiKey), AuthFailure> {
        let digest = KeyDigest::of(presented);
        let (index, key) = self
            .by_digest
            .get(&digest)
            .and_then(|&i| Some((i, self.keys.get(i)?)))
            .filter(|(_, k)| k.digest.ct_eq(&digest))
            .ok_or(AuthFailure::Unknown)?;
        if key.revoked {
            return Err(AuthFailure::Revoked);
        }
        if key.expires_at.is_some_and(|t| now >= t) {
            return Err(AuthFailure::Expired);
        }
        Ok((index, key))
    }
}

/// The longest user name (an OIDC subject, a key's owner) the gateway
/// asserts; OpenID Connect's own bound on `sub` is 255 ASCII characters.
pub const MAX_USER_LEN: usize = 256;

/// Names in this namespace are the control plane's own identities (its
/// administrator token acts as `maas:admin`). No token subject and no owner
/// an administrator types may take one, so an identity provider that issues
/// `sub: "maas:admin"` (or `"admin"`) gets nobody else's rights or keys.
pub const RESERVED_USER_PREFIX: &str = "maas:";

/// Why a user name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserNameError {
    #[error("must be 1 to {MAX_USER_LEN} bytes")]
    Length,
    #[error("must not contain control characters (it is sent as the `x-maas-user` header)")]
    Control,
    #[error("must not start with `{RESERVED_USER_PREFIX}`, which names the control plane's own identities")]
    Reserved,
    #[error("must not start or end with white space, nor hold invisible formatting characters (zero-width, bidirectional): it would pass for another name")]
    LookAlike,
}

/// A name the gateway may send upstream as `x-maas-user` and count limits
/// under (`maas/user/<subscription>/<name>`): a key's owner as the control plane stored it,
/// its own identities included.
pub fn check_user_name(name: &str) -> Result<(), UserNameError> {
    if name.is_empty() || name.len() > MAX_USER_LEN {
        return Err(UserNameError::Length);
    }
    if name.chars().any(char::is_control) {
        return Err(UserNameError::Control);
    }
    Ok(())
}

/// A name a caller claims: an OIDC token's subject (at the gateway and at
/// the control plane) or an owner an administrator mints a key for. The
/// same as [`check_user_name`], outside the reserved namespace.
///
/// Such a name is held to more than a stored one (checked again at every
/// sign-in, while a stored owner is not): `alice ` and `al\u{200B}ice`
/// would be other owners than `alice` (other key caps, listings and
/// showback) that print, and reach a model server's logs, as `alice`.
pub fn check_subject(name: &str) -> Result<(), UserNameError> {
    check_user_name(name)?;
    let reserved = name
        .get(..RESERVED_USER_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(RESERVED_USER_PREFIX));
    if reserved {
        return Err(UserNameError::Reserved);
    }
    if name.trim() != name || name.chars().any(is_invisible_format) {
        return Err(UserNameError::LookAlike);
    }
    Ok(())
}

/// Unicode's invisible formatting characters (category Cf) that show in no
/// text: zero-width spaces and joiners, bidirectional controls, the word
/// joiner and invisible operators, the byte-order mark, the soft hyphen,
/// interlinear annotation marks, musical formatting and tag characters.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}'
    )
}

/// The key a client presented: `Authorization: Bearer <key>` (scheme is
/// case-insensitive) or else `x-api-key: <key>`. Blank values count as absent.
pub fn presented_key<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|v| {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer
        .or(x_api_key.map(str::trim))
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str, revoked: bool, expires_at: Option<u64>) -> ApiKey {
        ApiKey {
            id: id.into(),
            owner: "o".into(),
            subscription: 0,
            digest: KeyDigest::of(secret),
            expires_at,
            revoked,
            limits: Rc::new(crate::subscription::ScopeLimits::unlimited(
                "maas/key/test",
                "key test",
            )),
            own_limits: false,
        }
    }

    #[test]
    fn digest_hex_round_trip_and_known_value() {
        let d = KeyDigest::of("foo");
        assert_eq!(
            d.to_hex(),
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
        assert_eq!(KeyDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(KeyDigest::from_hex(&d.to_hex().to_uppercase()), Some(d));
        assert_eq!(KeyDigest::from_hex("zz"), None);
        assert_eq!(KeyDigest::from_hex(&"g".repeat(64)), None);
        assert!(!format!("{d:?}").contains(&d.to_hex()));
    }

    #[test]
    fn authenticate_reports_each_reason() {
        let store = KeyStore::new(vec![
            key("ok", "sk-ok", false, None),
            key("rev", "sk-rev", true, None),
            key("exp", "sk-exp", false, Some(100)),
        ])
        .unwrap();
        assert_eq!(store.authenticate("sk-ok", 1000).unwrap().1.id, "ok");
        assert_eq!(
            store.authenticate("sk-rev", 0).unwrap_err(),
            AuthFailure::Revoked
        );
        assert_eq!(
            store.authenticate("sk-exp", 100).unwrap_err(),
            AuthFailure::Expired
        );
        assert_eq!(store.authenticate("sk-exp", 99).unwrap().1.id, "exp");
        assert_eq!(
            store.authenticate("sk-nope", 0).unwrap_err(),
            AuthFailure::Unknown
        );
        assert_eq!(store.authenticate("", 0).unwrap_err(), AuthFailure::Unknown);
    }

    #[test]
    fn duplicate_digests_are_refused() {
        let err = KeyStore::new(vec![
            key("a", "same", false, None),
            key("b", "same", false, None),
        ]);
        assert_eq!(err.unwrap_err(), 1);
    }

    #[test]
    fn user_names_and_subjects() {
        use UserNameError::*;
        let long = "x".repeat(MAX_USER_LEN + 1);
        type Verdict = Result<(), UserNameError>;
        let table: [(&str, Verdict, Verdict); 15] = [
            ("alice", Ok(()), Ok(())),
            ("alice@example.com", Ok(()), Ok(())),
            ("admin", Ok(()), Ok(())),
            ("Zoë 名前", Ok(()), Ok(())),
            ("", Err(Length), Err(Length)),
            (&long, Err(Length), Err(Length)),
            ("a\r\nx-maas-user: root", Err(Control), Err(Control)),
            ("tab\there", Err(Control), Err(Control)),
            ("maas:admin", Ok(()), Err(Reserved)),
            ("MAAS:admin", Ok(()), Err(Reserved)),
            // New names that would pass for `alice`.
            ("alice ", Ok(()), Err(LookAlike)),
            (" alice", Ok(()), Err(LookAlike)),
            ("al\u{200B}ice", Ok(()), Err(LookAlike)),
            ("\u{202E}ecila", Ok(()), Err(LookAlike)),
            ("al\u{E0061}ice", Ok(()), Err(LookAlike)),
        ];
        for (name, user, subject) in table {
            assert_eq!(check_user_name(name), user, "{name:?}");
            assert_eq!(check_subject(name), subject, "{name:?}");
        }
        assert!(check_subject(&"x".repeat(MAX_USER_LEN)).is_ok());
    }

    #[test]
    fn presented_key_forms() {
        let table = [
            (Some("Bearer sk-1"), None, Some("sk-1")),
            (Some("bearer   sk-1  "), None, Some("sk-1")),
            (Some("BEARER sk-1"), Some("sk-2"), Some("sk-1")),
            (Some("Basic dXNlcjpwYXNz"), Some("sk-2"), Some("sk-2")),
            (None, Some(" sk-2 "), Some("sk-2")),
            (Some("Bearer "), None, None),
            (Some("Bearer"), None, None),
            (None, Some(""), None),
            (None, None, None),
        ];
        for (auth, xkey, want) in table {
            assert_eq!(presented_key(auth, xkey), want, "{auth:?} {xkey:?}");
        }
    }
}
