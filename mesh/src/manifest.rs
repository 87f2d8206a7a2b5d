//! Multi-document YAML in and out. Documents are handled as JSON values:
//! Kubernetes resources are JSON objects, and the CRD schemas validate JSON.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{file}: document {index}: {reason}")]
    Yaml {
        file: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("cannot write YAML: {0}")]
    Serialize(String),
}

/// The non-empty documents of a YAML file (`---` separated), in order.
pub fn read_documents(file: &Path) -> Result<Vec<Value>, ManifestError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| ManifestError::Read(file.to_path_buf(), e))?;
    parse_documents(&text).map_err(|(index, reason)| ManifestError::Yaml {
        file: file.to_path_buf(),
        index,
        reason,
    })
}

/// [`read_documents`] for text in memory; the error is (document index, reason).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, (usize, String)> {
    let mut docs = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| (index, e.to_string()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Documents as one YAML stream, after a `#` comment header.
pub fn to_yaml_stream(header: &str, docs: &[Value]) -> Result<String, ManifestError> {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(if line.is_empty() { "#" } else { "# " });
        out.push_str(line);
        out.push('\n');
    }
    for doc in docs {
        out.push_str("---\n");
        out.push_str(
            &serde_yaml_ng::to_string(doc).map_err(|e| ManifestError::Serialize(e.to_string()))?,
        );
    }
    Ok(out)
}

/// Writes `text` to `file`, creating its directory.
pub fn write(file: &Path, text: &str) -> Result<(), ManifestError> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ManifestError::Write(dir.to_path_buf(), e))?;
    }
    std::fs::write(file, text).map_err(|e| ManifestError::Write(file.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_round_trip_and_skip_empty_documents() {
        let docs = vec![
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}}),
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "line1\nline2\n"}}),
        ];
        let text = to_yaml_stream("generated\n\nby a test", &docs).unwrap();
        assert!(
            text.starts_with("# generated\n#\n# by a test\n---\n"),
            "{text}"
        );
        assert_eq!(parse_documents(&format!("---\n{text}---\n")).unwrap(), docs);
        let (index, _) = parse_documents("a: 1\n---\nb: [\n").unwrap_err();
        assert_eq!(index, 1);
    }
}
