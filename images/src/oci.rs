//! The OCI image-spec documents this crate writes and its tests read back:
//! descriptors, image manifests, the image index of a layout, and the image
//! configuration. Maps are `BTreeMap`s and fields have a fixed order, so the
//! same values always serialise to the same bytes (and the same digest).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The Wasm image spec's runtime configuration (solo-io/wasm `spec/spec.md`).
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// The Wasm image spec's content layer: the raw module, not a tarball.
pub const WASM_CONTENT: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

/// The `oci-layout` file's only content.
pub const LAYOUT_VERSION: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// Names a manifest in a layout's `index.json`: what `skopeo` and
/// `oci-archive:FILE:NAME` resolve a tag against.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const TITLE: &str = "org.opencontainers.image.title";
pub const VERSION: &str = "org.opencontainers.image.version";
pub const REVISION: &str = "org.opencontainers.image.revision";
pub const SOURCE: &str = "org.opencontainers.image.source";

pub type Annotations = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Annotations,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: Annotations::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Annotations,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// `application/vnd.oci.image.config.v1+json`. No `created` time: it would
/// make every build differ, and nothing that runs the image reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub config: ExecConfig,
    pub rootfs: RootFs,
}

/// How a container runs; field names as the image spec spells them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Annotations,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    /// The digest of each layer uncompressed, in order.
    pub diff_ids: Vec<Digest>,
}

/// The OCI architecture name of the machine this runs on: the binaries put
/// into the images are the ones built here.
pub fn host_platform() -> Option<Platform> {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        _ => return None,
    };
    (std::env::consts::OS == "linux").then(|| Platform {
        architecture: architecture.into(),
        os: "linux".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_uses_the_spec_field_names() {
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: ExecConfig {
                user: "65532:65532".into(),
                env: vec!["PATH=/bin".into()],
                entrypoint: vec!["/bin/x".into()],
                cmd: Vec::new(),
                working_dir: "/".into(),
                labels: Annotations::new(),
            },
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![Digest::of(b"")],
            },
        };
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["config"]["User"], "65532:65532");
        assert_eq!(json["config"]["Entrypoint"][0], "/bin/x");
        assert!(json["config"].get("Cmd").is_none());
        assert_eq!(json["rootfs"]["type"], "layers");
        assert_eq!(
            json["rootfs"]["diff_ids"][0],
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
