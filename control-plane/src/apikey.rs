//! API keys: `sk-maas-<id>-<secret>`, minted here from the OS random
//! source.
//!
//! The id (12 characters, lowercase base32) names the key everywhere — in
//! listings, audit records, revocations, the gateway's metrics — and is not
//! secret. The secret (40 base62 characters, ~238 bits) is shown once, at
//! creation. The database keeps only a per-key random salt and
//! `SHA-256(salt ‖ id ‖ 0x00 ‖ secret)`. The fixed prefix lets secret
//! scanners recognise a leaked key. Format and digest are the gateway
//! filter's own definitions (`maas_filter::auth::managed_keys`), so what is minted
//! here is what the gateway accepts.

use std::fmt;

use maas_filter::auth::keys::{decode_hex, encode_hex};
use maas_filter::auth::managed_keys::{salted_digest, ID_ALPHABET, SECRET_ALPHABET};
pub use maas_filter::auth::managed_keys::{ID_LEN, PREFIX, SALT_LEN, SECRET_LEN};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("an API key starts with `{PREFIX}`")]
    Prefix,
    #[error("an API key is `{PREFIX}<id>-<secret>` with a {ID_LEN}-character id and a {SECRET_LEN}-character secret")]
    Shape,
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("stored digest is malformed: {0}")]
    Stored(&'static str),
}

/// A freshly minted key: the plaintext exists only here, to be shown once.
pub struct MintedKey {
    pub id: String,
    pub plaintext: String,
    pub digest: StoredDigest,
}

impl fmt::Debug for MintedKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What the database stores for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDigest {
    pub salt: [u8; SALT_LEN],
    pub hash: [u8; 32],
}

pub use maas_filter::auth::managed_keys::PresentedKey;

fn random_string(len: usize, alphabet: &[u8]) -> Result<String, KeyError> {
    // Rejection sampling keeps every character uniform over the alphabet.
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
        for b in buf {
            if (b as usize) < limit && out.len() < len {
                out.push(char::from(alphabet[b as usize % alphabet.len()]));
            }
        }
    }
    Ok(out)
}

fn hash(salt: &[u8; SALT_LEN], id: &str, secret: &str) -> [u8; 32] {
    *salted_digest(salt, id, secret).as_bytes()
}

/// Mints a new key from the OS random source.
pub fn mint() -> Result<MintedKey, KeyError> {
    let id = random_string(ID_LEN, ID_ALPHABET)?;
    let secret = random_string(SECRET_LEN, SECRET_ALPHABET)?;
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| KeyError::Random(e.to_string()))?;
    let digest = StoredDigest {
        salt,
        hash: hash(&salt, &id, &secret),
    };
    Ok(MintedKey {
        plaintext: format!("{PREFIX}{id}-{secret}"),
        id,
        digest,
    })
}

/// Splits a presented key; checks only its shape.
pub fn parse(plaintext: &str) -> Result<PresentedKey<'_>, KeyError> {
    if !plaintext.starts_with(PREFIX) {
        return Err(KeyError::Prefix);
    }
    maas_filter::auth::managed_keys::parse(plaintext).ok_or(KeyError::Shape)
}

impl StoredDigest {
    /// Whether `key` is the key this digest was made from, compared in
    /// constant time.
    pub fn verify(&self, key: &PresentedKey<'_>) -> bool {
        key.digest(&self.salt)
            .ct_eq(&maas_filter::auth::keys::KeyDigest::from_bytes(self.hash))
    }

    pub fn salt_hex(&self) -> String {
        encode_hex(&self.salt)
    }

    pub fn hash_hex(&self) -> String {
        encode_hex(&self.hash)
    }

    pub fn from_hex(salt: &str, hash: &str) -> Result<Self, KeyError> {
        Ok(Self {
            salt: decode_hex(salt).ok_or(KeyError::Stored("salt"))?,
            hash: decode_hex(hash).ok_or(KeyError::Stored("hash"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn minted_keys_have_the_documented_shape_and_verify() {
        let k = mint().unwrap();
        assert!(k.plaintext.starts_with("sk-maas-"));
        assert_eq!(k.plaintext.len(), PREFIX.len() + ID_LEN + 1 + SECRET_LEN);
        let presented = parse(&k.plaintext).unwrap();
        assert_eq!(presented.id, k.id);
        assert!(k.digest.verify(&presented));
        assert!(!format!("{k:?}").contains(&k.plaintext[PREFIX.len() + ID_LEN + 1..]));
    }

    #[test]
    fn keys_are_unique_and_digests_salted() {
        let (a, b) = (mint().unwrap(), mint().unwrap());
        assert_ne!(a.id, b.id);
        assert_ne!(a.plaintext, b.plaintext);
        assert_ne!(a.digest.salt, b.digest.salt);
    }

    #[test]
    fn a_changed_secret_or_a_foreign_digest_does_not_verify() {
        let k = mint().unwrap();
        let mut wrong = k.plaintext.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'a' { 'b' } else { 'a' });
        assert!(!k.digest.verify(&parse(&wrong).unwrap()));
        let other = mint().unwrap();
        assert!(!other.digest.verify(&parse(&k.plaintext).unwrap()));
    }

    #[test]
    fn the_digest_round_trips_through_hex() {
        let k = mint().unwrap();
        let back = StoredDigest::from_hex(&k.digest.salt_hex(), &k.digest.hash_hex()).unwrap();
        assert_eq!(back, k.digest);
        assert_eq!(
            StoredDigest::from_hex("zz", &k.digest.hash_hex()),
            Err(KeyError::Stored("salt"))
        );
    }

    #[test]
    fn malformed_keys_are_named() {
        assert_eq!(parse("sk-other-abc"), Err(KeyError::Prefix));
        assert_eq!(parse("sk-maas-short-secret"), Err(KeyError::Shape));
        let k = mint().unwrap();
        assert_eq!(
            parse(
                &k.plaintext
                    .to_uppercase()
                    .replacen("SK-MAAS-", "sk-maas-", 1)
            ),
            Err(KeyError::Shape)
        );
        assert_eq!(parse(&format!("{}x", k.plaintext)), Err(KeyError::Shape));
    }

    proptest! {
        /// No input makes the parser panic, and only well-formed keys pass.
        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            if let Ok(k) = parse(&s) {
                prop_assert_eq!(k.id.len(), ID_LEN);
            }
        }
    }
}
