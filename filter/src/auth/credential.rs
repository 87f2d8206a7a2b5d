//! Credentials the filter presents to services it calls (the control
//! plane's gateway token, the model servers' key). They sit in the
//! configuration, which derives `Debug` all the way down, so these types
//! keep the value out of any `{:?}` a log line or a panic message might
//! print, as the inference server's `ApiKeys` does.

use serde::Deserialize;
use std::fmt;

/// A secret as the configuration document spells it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for validating it and building the header that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// A validated secret held as the `authorization` value that sends it
/// (`Bearer …`), built once at load rather than on every request.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerCredential {
    header: String,
}

impl BearerCredential {
    /// The credential for `secret`, which validation has found fit for a
    /// header (printable ASCII, no spaces).
    pub fn new(secret: &Secret) -> Self {
        BearerCredential {
            header: format!("Bearer {}", secret.expose()),
        }
    }

    /// The `authorization` header's value.
    pub fn header_value(&self) -> &str {
        &self.header
    }
}

impl fmt::Debug for BearerCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerCredential(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_carries_the_value() {
        let secret = Secret::from("maas-model-server-0123456789");
        let bearer = BearerCredential::new(&secret);
        for shown in [
            format!("{secret:?}"),
            format!("{bearer:?}"),
            format!("{bearer:#?}"),
        ] {
            assert!(!shown.contains("0123456789"), "{shown}");
        }
        assert_eq!(bearer.header_value(), "Bearer maas-model-server-0123456789");
    }

    #[test]
    fn a_secret_reads_from_a_json_string() {
        let secret: Secret = serde_json::from_str(r#""tok-1""#).unwrap();
        assert_eq!(secret.expose(), "tok-1");
    }
}
