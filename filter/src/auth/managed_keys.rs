//! Keys minted by the control plane: their format, their salted digest, the
//! control plane's sync response, and the compact record a key occupies in
//! Envoy's shared data.
//!
//! A managed key reads `sk-maas-<id>-<secret>`: a 12-character lowercase
//! base32 id (not secret: it names the key in listings, metrics and audit
//! records) and a 40-character base62 secret. Only a per-key random salt and
//! `SHA-256(salt ‖ id ‖ 0x00 ‖ secret)` leave the control plane. The filter
//! finds a presented key's record by its id — one shared-data lookup — and
//! compares digests in constant time. The control plane mints with the same
//! definitions (it depends on this module), so the two cannot disagree.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::auth::keys::{decode_hex, KeyDigest};

pub const PREFIX: &str = "sk-maas-";
pub const ID_LEN: usize = 12;
pub const SECRET_LEN: usize = 40;
pub const SALT_LEN: usize = 16;
pub const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
pub const SECRET_ALPHABET: &[u8] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A presented key split into id and secret; its shape checked, nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub id: &'a str,
    secret: &'a str,
}

/// `Some` when `key` has the managed-key shape.
pub fn parse(key: &str) -> Option<PresentedKey<'_>> {
    let (id, secret) = key.strip_prefix(PREFIX)?.split_once('-')?;
    let valid = id.len() == ID_LEN
        && secret.len() == SECRET_LEN
        && id.bytes().all(|b| ID_ALPHABET.contains(&b))
        && secret.bytes().all(|b| SECRET_ALPHABET.contains(&b));
    valid.then_some(PresentedKey { id, secret })
}

pub fn salted_digest(salt: &[u8; SALT_LEN], id: &str, secret: &str) -> KeyDigest {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(id.as_bytes());
    h.update([0u8]);
    h.update(secret.as_bytes());
    KeyDigest::from_bytes(h.finalize().into())
}

impl PresentedKey<'_> {
    pub fn digest(&self, salt: &[u8; SALT_LEN]) -> KeyDigest {
        salted_digest(salt, self.id, self.secret)
    }
}

/// A key as the control plane reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedKey {
    pub id: String,
    pub owner: String,
    pub subscription: String,
    pub salt: [u8; SALT_LEN],
    pub digest: KeyDigest,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    pub revoked: bool,
    /// The control plane's change number of this key: of two records of
    /// one key the higher is newer, whichever arrived last.
    pub version: u64,
}

impl ManagedKey {
    /// Whether `key` is this key (constant-time digest comparison).
    pub fn verify(&self, key: &PresentedKey<'_>) -> bool {
        key.id == self.id && key.digest(&self.salt).ct_eq(&self.digest)
    }

    /// The shared-data value: `2 ‖ salt ‖ digest ‖ flags ‖ expires (u64 LE)
    /// ‖ version (u64 LE) ‖ owner ‖ subscription ‖ id`, strings as u16-LE
    /// length + bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(64 + self.owner.len() + self.subscription.len() + self.id.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(self.digest.as_bytes());
        out.push(u8::from(self.revoked) | (u8::from(self.expires_at.is_some()) << 1));
        out.extend_from_slice(&self.expires_at.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        for s in [&self.owner, &self.subscription, &self.id] {
            let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
        }
        out
    }

    /// `None` for anything [`ManagedKey::encode`] did not write.
    pub fn decode(bytes: &[u8]) -> Option<ManagedKey> {
        let mut r = Reader(bytes);
        if r.take(1)? != [RECORD_VERSION] {
            return None;
        }
        let salt: [u8; SALT_LEN] = r.take(SALT_LEN)?.try_into().ok()?;
        let digest = KeyDigest::from_bytes(r.take(32)?.try_into().ok()?);
        let flags = *r.take(1)?.first()?;
        let expires = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let version = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let owner = r.string()?;
        let subscription = r.string()?;
        let id = r.string()?;
        if !r.0.is_empty() {
            return None;
        }
        Some(ManagedKey {
            id,
            owner,
            subscription,
            salt,
            digest,
            expires_at: (flags & 2 != 0).then_some(expires),
            revoked: flags & 1 != 0,
            version,
        })
    }
}

const RECORD_VERSION: u8 = 2;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
}

/// One answer of the control plane's `GET /maas-api/v1/sync?since=V`.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncDelta {
    /// The id of the database the answer comes from (`None` from a control
    /// plane that does not say).
    pub store: Option<String>,
    /// The next `since`.
    pub version: u64,
    /// What names the change at `version` in its database (`None`: version
    /// 0, or a control plane that does not say); asked with the next
    /// `since`, so a restored database, which reuses versions for other
    /// changes, answers with a full resync.
    pub mark: Option<u64>,
    /// Replace the key set rather than merge into it (a full resync, which
    /// may span several pages).
    pub full: bool,
    /// Another page follows: ask again at once, from `version`.
    pub more: bool,
    pub keys: Vec<ManagedKey>,
    /// Subscriptions in the filter configuration's shape, plus `name`.
    pub subscriptions: Vec<serde_json::Value>,
    pub deleted_subscriptions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("the sync response is not the expected JSON: {0}")]
    Json(String),
    #[error("mark: not 16 hex digits")]
    Mark,
    #[error("keys[{index}].{field}: {reason}")]
    Key {
        index: usize,
        field: &'static str,
        reason: &'static str,
    },
}

#[derive(Deserialize)]
struct RawSync {
    #[serde(default)]
    store: Option<String>,
    version: u64,
    #[serde(default)]
    mark: Option<String>,
    #[serde(default)]
    full: bool,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    subscriptions: Vec<serde_json::Value>,
    #[serde(default)]
    deleted_subscriptions: Vec<String>,
}

#[derive(Deserialize)]
struct RawKey {
    id: String,
    owner: String,
    subscription: String,
    salt: String,
    sha256: String,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    revoked: bool,
    #[serde(default)]
    version: u64,
}

/// A sync answer's `mark`: 16 hex digits, as the gateway sends it back.
pub fn parse_mark(text: &str) -> Option<u64> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

pub fn parse_sync(body: &[u8]) -> Result<SyncDelta, SyncError> {
    let raw: RawSync = serde_json::from_slice(body).map_err(|e| SyncError::Json(e.to_string()))?;
    let keys = raw
        .keys
        .into_iter()
        .enumerate()
        .map(|(index, k)| {
            let bad = |field, reason| SyncError::Key {
                index,
                field,
                reason,
            };
            if k.id.len() != ID_LEN || !k.id.bytes().all(|b| ID_ALPHABET.contains(&b)) {
                return Err(bad("id", "not a managed key id"));
            }
            Ok(ManagedKey {
                salt: decode_hex(&k.salt).ok_or_else(|| bad("salt", "not 16 hex bytes"))?,
                digest: KeyDigest::from_hex(&k.sha256)
                    .ok_or_else(|| bad("sha256", "not 32 hex bytes"))?,
                expires_at: k.expires_at.map(|e| u64::try_from(e).unwrap_or(0)),
                id: k.id,
                owner: k.owner,
                subscription: k.subscription,
                revoked: k.revoked,
                version: k.version,
            })
        })
        .collect::<Result<_, _>>()?;
    let mark = raw
        .mark
        .as_deref()
        .map(|text| parse_mark(text).ok_or(SyncError::Mark))
        .transpose()?;
    Ok(SyncDelta {
        store: raw.store,
        version: raw.version,
        mark,
        full: raw.full,
        more: raw.more,
        keys,
        subscriptions: raw.subscriptions,
        deleted_subscriptions: raw.deleted_subscriptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SALT: [u8; 16] = [7; 16];
    const KEY: &str = "sk-maas-abcdefgh2345-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcd";

    fn managed() -> ManagedKey {
        let p = parse(KEY).unwrap();
        ManagedKey {
            id: p.id.into(),
            owner: "alice".into(),
            subscription: "team-a".into(),
            salt: SALT,
            digest: p.digest(&SALT),
            expires_at: Some(1_900_000_000),
            revoked: false,
            version: 3,
        }
    }

    #[test]
    fn a_managed_key_verifies_and_a_changed_one_does_not() {
        let k = managed();
        assert!(k.verify(&parse(KEY).unwrap()));
        let wrong = KEY.replace("abcd", "abce");
        assert!(!k.verify(&parse(&wrong).unwrap()));
        assert!(parse("sk-maas-short-x").is_none());
        assert!(
            parse("sk-test-free-1").is_none(),
            "configuration keys are not managed keys"
        );
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let mut k = managed();
        assert_eq!(ManagedKey::decode(&k.encode()), Some(k.clone()));
        k.expires_at = None;
        k.revoked = true;
        assert_eq!(ManagedKey::decode(&k.encode()), Some(k.clone()));
        let bytes = k.encode();
        assert_eq!(ManagedKey::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(ManagedKey::decode(&[2]), None);
    }

    #[test]
    fn sync_responses_parse_with_field_errors() {
        let k = managed();
        let body = serde_json::json!({
            "version": 9, "full": false,
            "subscriptions": [{"name": "team-a", "models": ["m"], "limits": "unlimited"}],
            "deleted_subscriptions": ["old"],
            "keys": [{"id": k.id, "owner": "alice", "subscription": "team-a",
                      "salt": "07".repeat(16), "sha256": k.digest.to_hex(), "expires_at": 1_900_000_000, "revoked": false, "version": 3}]
        });
        let d = parse_sync(body.to_string().as_bytes()).unwrap();
        assert_eq!((d.version, d.full), (9, false));
        assert_eq!(d.keys, vec![k]);
        assert_eq!(d.deleted_subscriptions, vec!["old".to_string()]);
        let mut bad = body.clone();
        bad["keys"][0]["salt"] = serde_json::json!("zz");
        assert_eq!(
            parse_sync(bad.to_string().as_bytes()),
            Err(SyncError::Key {
                index: 0,
                field: "salt",
                reason: "not 16 hex bytes"
            })
        );
        assert!(matches!(parse_sync(b"{"), Err(SyncError::Json(_))));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ManagedKey::decode(&bytes);
        }

        #[test]
        fn parsing_arbitrary_keys_never_panics(s in ".{0,80}") {
            let _ = parse(&s);
        }
    }
}
