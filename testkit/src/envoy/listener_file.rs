//! A gateway whose listener Envoy reads from a file it watches (LDS from a
//! path), so a test can replace the filter's configuration while Envoy runs,
//! as a control plane pushing a new EnvoyFilter or WasmPlugin does: Envoy
//! builds the new filter chain beside the old one, drains the old one for
//! its drain time, then ends the old filter configuration (its wasm root
//! context gets `on_done`).
//!
//! The rendered bootstrap is split in two: the listeners go to the watched
//! file, everything else stays a static bootstrap pointing at it.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::private_file::write_private;

const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// The watched file; replaced by a rename, which is what Envoy watches for.
const FILE_NAME: &str = "listeners.json";

/// Why a rendered bootstrap could not be split.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("the rendered bootstrap is not YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("the rendered bootstrap has no static_resources.listeners")]
    NoListeners,
    #[error("cannot write {path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The folder Envoy watches for the listener file.
#[derive(Debug, Clone)]
pub struct ListenerFile {
    dir: PathBuf,
}

impl ListenerFile {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The bootstrap (JSON, which Envoy reads as YAML) of `rendered` with
    /// its listeners moved to the watched file, which is written.
    pub fn split(&self, rendered: &str) -> Result<String, SplitError> {
        let mut bootstrap: Value = serde_yaml_ng::from_str(rendered)?;
        let listeners = bootstrap
            .get_mut("static_resources")
            .and_then(|s| s.as_object_mut())
            .and_then(|s| s.remove("listeners"))
            .ok_or(SplitError::NoListeners)?;
        self.write(listeners)?;
        bootstrap["dynamic_resources"] = json!({
            "lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": self.path(),
                    "watched_directory": {"path": self.dir},
                },
            }
        });
        Ok(bootstrap.to_string())
    }

    /// Replaces the watched file with the listeners of `rendered` (a
    /// bootstrap rendered from the same template).
    pub fn replace(&self, rendered: &str) -> Result<(), SplitError> {
        let bootstrap: Value = serde_yaml_ng::from_str(rendered)?;
        let listeners = bootstrap
            .pointer("/static_resources/listeners")
            .cloned()
            .ok_or(SplitError::NoListeners)?;
        self.write(listeners)
    }

    /// Writes the listeners beside the watched file, then renames it into
    /// place: Envoy never reads half a file.
    fn write(&self, listeners: Value) -> Result<(), SplitError> {
        let Value::Array(listeners) = listeners else {
            return Err(SplitError::NoListeners);
        };
        let resources: Vec<Value> = listeners
            .into_iter()
            .map(|mut listener| {
                if let Some(fields) = listener.as_object_mut() {
                    fields.insert("@type".into(), LISTENER_TYPE.into());
                }
                listener
            })
            .collect();
        let document = json!({ "resources": resources });
        let staged = self.dir.join(format!(".{FILE_NAME}.new"));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SplitError::Io { path, source }
        };
        // The filter's configuration in it may hold the gateway's token.
        write_private(&staged, document.to_string()).map_err(io(&staged))?;
        std::fs::rename(&staged, self.path()).map_err(io(&self.path()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn moves_the_listeners_to_the_watched_file() {
        let dir = crate::envoy::ScratchDir::create().unwrap();
        let file = ListenerFile::new(dir.path().to_owned());
        let rendered = "admin: {}\nstatic_resources:\n  listeners:\n  - name: gateway\n    address: {socket_address: {port_value: 0}}\n  clusters:\n  - name: c\n";
        let bootstrap: Value = serde_json::from_str(&file.split(rendered).unwrap()).unwrap();
        assert_eq!(
            bootstrap["static_resources"],
            json!({"clusters": [{"name": "c"}]})
        );
        assert_eq!(
            bootstrap["dynamic_resources"]["lds_config"]["path_config_source"]["path"],
            json!(dir.join(FILE_NAME))
        );
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(written["resources"][0]["@type"], json!(LISTENER_TYPE));
        assert_eq!(written["resources"][0]["name"], json!("gateway"));
        assert!(matches!(
            file.split("static_resources: {}"),
            Err(SplitError::NoListeners)
        ));
    }
}
