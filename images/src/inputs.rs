//! What a build takes: the files that go into the images (checked to exist
//! before any work, each missing one named with the flag and the variable
//! that point at it) and where the images go.

use std::path::{Path, PathBuf};

use crate::error::BuildError;
use crate::reference::{Registry, Tag};

/// The build products that go into the images.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub inference_server: PathBuf,
    pub control_plane: PathBuf,
    pub limiter: PathBuf,
    pub filter_wasm: PathBuf,
    pub model: PathBuf,
}

/// Where the images go and how they are labelled.
#[derive(Debug, Clone)]
pub struct Options {
    pub registry: Registry,
    pub tag: Tag,
    /// The output directory: layouts, archives, images.json, kustomization.yaml.
    pub out: PathBuf,
    /// The manifests the kustomization overlays (a directory with a
    /// kustomization.yaml).
    pub istio: PathBuf,
    /// Every file's modification time (SOURCE_DATE_EPOCH, else 0).
    pub mtime: u64,
    /// The source revision, for the `org.opencontainers.image.revision` label.
    pub revision: Option<String>,
    /// The source repository URL, for `org.opencontainers.image.source`.
    pub source: Option<String>,
    /// The build host's CA bundle, copied into the base when given.
    pub ca_bundle: Option<PathBuf>,
}

impl Inputs {
    /// Every input is a file, or the error names the flag and the variable
    /// that point at it and the make target that produces it.
    pub(crate) fn check(&self) -> Result<(), BuildError> {
        let inputs = [
            (
                &self.inference_server,
                "inference server binary",
                "--inference-server or MAAS_INFERENCE_SERVER; `make server` builds it",
            ),
            (
                &self.control_plane,
                "control plane binary",
                "--control-plane or MAAS_CONTROL_PLANE; `make server` builds it",
            ),
            (
                &self.limiter,
                "maas-limiter binary",
                "--limiter or MAAS_LIMITER; `make server` builds it",
            ),
            (
                &self.filter_wasm,
                "filter module",
                "--filter-wasm or MAAS_FILTER_WASM; `make wasm` builds it",
            ),
            (
                &self.model,
                "model",
                "--model, or MAAS_MODEL_DIR holding it; `make model` fetches it",
            ),
        ];
        for (path, what, hint) in inputs {
            if !path.is_file() {
                return Err(BuildError::MissingInput {
                    what,
                    path: path.clone(),
                    hint: hint.into(),
                });
            }
        }
        Ok(())
    }
}

/// The manifests directory, absolute; it must hold a kustomization.
pub(crate) fn manifests_dir(istio: &Path) -> Result<PathBuf, BuildError> {
    let kustomization = istio.join("kustomization.yaml");
    if !kustomization.is_file() {
        return Err(BuildError::MissingInput {
            what: "kustomization",
            path: kustomization,
            hint: "--istio names the manifests directory, default `istio`".into(),
        });
    }
    istio
        .canonicalize()
        .map_err(BuildError::io("resolve", istio))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_missing_input_is_named_with_its_flag_and_variable() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present");
        std::fs::write(&present, b"x").unwrap();
        let inputs = Inputs {
            inference_server: present.clone(),
            control_plane: present.clone(),
            limiter: dir.path().join("maas-limiter"),
            filter_wasm: present.clone(),
            model: present,
        };
        let error = inputs.check().unwrap_err().to_string();
        assert!(error.starts_with("no maas-limiter binary at "), "{error}");
        assert!(error.contains("--limiter or MAAS_LIMITER"), "{error}");
    }

    #[test]
    fn the_manifests_directory_must_hold_a_kustomization() {
        let dir = tempfile::tempdir().unwrap();
        let error = manifests_dir(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("kustomization.yaml") && error.contains("--istio"),
            "{error}"
        );
        std::fs::write(dir.path().join("kustomization.yaml"), "resources: []\n").unwrap();
        assert_eq!(
            manifests_dir(dir.path()).unwrap(),
            dir.path().canonicalize().unwrap()
        );
    }
}
