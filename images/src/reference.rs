//! Where the images go: a registry prefix and a tag, checked once when the
//! command line is read, so every reference written later (images.json, the
//! kustomization, the `skopeo` commands) is well formed.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::BuildError;

/// `HOST[:PORT][/PATH]`, e.g. `registry.example.com/maas`; each image is
/// pushed to `<registry>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry(String);

impl FromStr for Registry {
    type Err = BuildError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let well_formed = !value.is_empty()
            && !value.starts_with(['/', '.', '-', ':'])
            && !value.ends_with(['/', ':'])
            && !value.contains("//")
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:/".contains(&b));
        if well_formed {
            Ok(Self(value.to_string()))
        } else {
            Err(BuildError::InvalidRegistry(value.into()))
        }
    }
}

impl Registry {
    /// `<registry>/<name>`: the repository an image is pushed to.
    pub fn repository(&self, name: &str) -> String {
        format!("{}/{name}", self.0)
    }

    /// `<registry>/<name>@<digest>`: the image, pinned.
    pub fn pinned(&self, name: &str, digest: &Digest) -> String {
        format!("{}@{digest}", self.repository(name))
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An image tag as the distribution spec allows it:
/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(String);

impl FromStr for Tag {
    type Err = BuildError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
        let well_formed = (1..=128).contains(&value.len())
            && !value.starts_with(['.', '-'])
            && value.bytes().all(allowed);
        if well_formed {
            Ok(Self(value.to_string()))
        } else {
            Err(BuildError::InvalidTag(value.into()))
        }
    }
}

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries() {
        for (value, ok) in [
            ("registry.example.com/maas", true),
            ("localhost:5000", true),
            ("ghcr.io/org/team_a/sub-dir", true),
            ("Registry.example.com", false),
            ("registry.example.com/", false),
            ("/maas", false),
            ("a//b", false),
            ("reg.io/maas@sha256", false),
            ("", false),
        ] {
            assert_eq!(value.parse::<Registry>().is_ok(), ok, "{value:?}");
        }
        let registry: Registry = "localhost:5000/maas".parse().unwrap();
        assert_eq!(registry.repository("x"), "localhost:5000/maas/x");
        let digest = Digest::of(b"");
        assert_eq!(
            registry.pinned("x", &digest),
            format!("localhost:5000/maas/x@{digest}")
        );
    }

    #[test]
    fn tags() {
        let long = "a".repeat(129);
        for (value, ok) in [
            ("0.1.0", true),
            ("v1_rc-2.x", true),
            ("_x", true),
            (".x", false),
            ("-x", false),
            ("a:b", false),
            ("", false),
            (long.as_str(), false),
        ] {
            assert_eq!(value.parse::<Tag>().is_ok(), ok, "{value:?}");
        }
    }
}
