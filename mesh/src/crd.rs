//! Offline validation of custom resources against the OpenAPI v3 schemas of
//! their CustomResourceDefinitions, the check `kubectl apply` would make
//! server-side, without a cluster.
//!
//! A CRD's `openAPIV3Schema` is a Kubernetes *structural* schema, not plain
//! JSON Schema; [`to_json_schema`] translates the parts whose meaning
//! differs before a standard draft-4 validator sees it:
//! - an object without `x-kubernetes-preserve-unknown-fields` rejects fields
//!   it does not declare (the API server's strict field validation, which
//!   `kubectl` asks for by default; plain JSON Schema would accept them);
//! - `nullable: true` admits `null` besides the declared type;
//! - `x-kubernetes-int-or-string` admits an integer or a string.
//!
//! Not checked: `x-kubernetes-validations` (CEL rules evaluated by the API
//! server) and `x-kubernetes-list-type` uniqueness; a manifest that passes
//! here can still be refused by one of those.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::manifest::{self, ManifestError};

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot list {0}: {1}")]
    ListDir(PathBuf, std::io::Error),
    #[error("{file}: a CustomResourceDefinition without {what}")]
    Malformed { file: PathBuf, what: &'static str },
    #[error("{api_version} {kind}: the schema does not compile: {reason}")]
    Schema {
        api_version: String,
        kind: String,
        reason: String,
    },
}

/// One served version of one kind, compiled.
struct Served {
    validator: jsonschema::Validator,
}

/// Every served (apiVersion, kind) of the CRDs in a directory tree.
pub struct CrdCatalog {
    schemas: BTreeMap<(String, String), Served>,
}

/// Why a resource did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid against its CRD's schema.
    Valid,
    /// No CRD in the catalog serves this apiVersion and kind (core kinds).
    UnknownKind,
    /// Each entry: a JSON pointer into the resource and what is wrong there.
    Invalid(Vec<String>),
}

impl CrdCatalog {
    /// Reads every `*.yaml` under `dir` (recursively) and compiles the
    /// schema of each served version of each CRD found.
    pub fn load(dir: &Path) -> Result<CrdCatalog, CrdError> {
        let mut schemas = BTreeMap::new();
        for file in yaml_files(dir)? {
            for doc in manifest::read_documents(&file)? {
                if doc.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                    continue;
                }
                let malformed = |what| CrdError::Malformed {
                    file: file.clone(),
                    what,
                };
                let group = text(&doc, "/spec/group", &file, "spec.group")?;
                let kind = text(&doc, "/spec/names/kind", &file, "spec.names.kind")?;
                let versions = doc
                    .pointer("/spec/versions")
                    .and_then(Value::as_array)
                    .ok_or_else(|| malformed("spec.versions"))?;
                for version in versions {
                    if version.get("served").and_then(Value::as_bool) == Some(false) {
                        continue;
                    }
                    let name = text(version, "/name", &file, "spec.versions[].name")?;
                    let schema = version
                        .pointer("/schema/openAPIV3Schema")
                        .ok_or_else(|| malformed("spec.versions[].schema.openAPIV3Schema"))?;
                    let api_version = format!("{group}/{name}");
                    let validator = jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft4)
                        .build(&resource_schema(schema))
                        .map_err(|e| CrdError::Schema {
                            api_version: api_version.clone(),
                            kind: kind.to_string(),
                            reason: e.to_string(),
                        })?;
                    schemas.insert((api_version, kind.to_string()), Served { validator });
                }
            }
        }
        Ok(CrdCatalog { schemas })
    }

    /// The (apiVersion, kind) pairs this catalog validates.
    pub fn kinds(&self) -> impl Iterator<Item = (&str, &str)> {
        self.schemas.keys().map(|(v, k)| (v.as_str(), k.as_str()))
    }

    /// Checks one resource against the schema its `apiVersion` and `kind`
    /// select.
    pub fn validate(&self, resource: &Value) -> Verdict {
        let key = (
            str_at(resource, "/apiVersion").to_string(),
            str_at(resource, "/kind").to_string(),
        );
        let Some(served) = self.schemas.get(&key) else {
            return Verdict::UnknownKind;
        };
        // The API server fills these before validating; a manifest never
        // carries them.
        let mut resource = resource.clone();
        if let Some(map) = resource.as_object_mut() {
            map.remove("status");
        }
        let errors: Vec<String> = served
            .validator
            .iter_errors(&resource)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Verdict::Valid
        } else {
            Verdict::Invalid(errors)
        }
    }
}

/// The string at `pointer` of a CRD, or why the CRD is malformed.
fn text<'a>(
    value: &'a Value,
    pointer: &str,
    file: &Path,
    what: &'static str,
) -> Result<&'a str, CrdError> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| CrdError::Malformed {
            file: file.to_path_buf(),
            what,
        })
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, CrdError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| CrdError::ListDir(dir.to_path_buf(), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| CrdError::ListDir(dir.to_path_buf(), e))?
            .path();
        if path.is_dir() {
            out.extend(yaml_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The schema of a whole resource: the CRD's, plus the fields every object
/// has, which the API server accepts whether a CRD declares them or not
/// (Istio's CRDs declare only `spec` and `status`).
fn resource_schema(crd_schema: &Value) -> Value {
    let mut schema = to_json_schema(crd_schema);
    if let Some(props) = schema
        .as_object_mut()
        .map(|m| {
            m.entry("properties")
                .or_insert_with(|| Value::Object(Map::new()))
        })
        .and_then(Value::as_object_mut)
    {
        for (field, kind) in [
            ("apiVersion", "string"),
            ("kind", "string"),
            ("metadata", "object"),
        ] {
            props
                .entry(field)
                .or_insert_with(|| serde_json::json!({ "type": kind }));
        }
    }
    schema
}

/// A structural schema in JSON Schema draft 4 terms (see the module docs).
pub fn to_json_schema(schema: &Value) -> Value {
    let Some(map) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let translated = match key.as_str() {
            // Subschemas by name.
            "properties" | "patternProperties" | "definitions" => match value.as_object() {
                Some(props) => Value::Object(
                    props
                        .iter()
                        .map(|(k, v)| (k.clone(), to_json_schema(v)))
                        .collect(),
                ),
                None => value.clone(),
            },
            // One subschema.
            "items" | "additionalProperties" | "not" if value.is_object() => to_json_schema(value),
            // Lists of subschemas.
            "allOf" | "anyOf" | "oneOf" => match value.as_array() {
                Some(list) => Value::Array(list.iter().map(to_json_schema).collect()),
                None => value.clone(),
            },
            // Documentation and API-server-only keywords: nothing to check here.
            "description" | "default" | "example" | "x-kubernetes-validations" => continue,
            _ => value.clone(),
        };
        out.insert(key.clone(), translated);
    }
    let flag = |name: &str| map.get(name).and_then(Value::as_bool) == Some(true);
    if flag("x-kubernetes-int-or-string") && !map.contains_key("anyOf") {
        out.insert(
            "anyOf".into(),
            serde_json::json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    if flag("nullable") {
        if let Some(Value::String(t)) = map.get("type") {
            out.insert("type".into(), serde_json::json!([t, "null"]));
        }
    }
    let is_object = map.get("type").and_then(Value::as_str) == Some("object");
    if is_object
        && map.contains_key("properties")
        && !map.contains_key("additionalProperties")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(schema: Value, instance: Value) -> bool {
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .build(&to_json_schema(&schema))
            .unwrap()
            .is_valid(&instance)
    }

    #[test]
    fn kubernetes_extensions_mean_what_the_api_server_does() {
        let object = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let cases = [
            // Strict field validation: an undeclared field is an error...
            (object.clone(), json!({"a": "x", "typo": 1}), false),
            (object.clone(), json!({"a": "x"}), true),
            // ...unless the schema keeps unknown fields.
            (
                json!({"type": "object", "properties": {"a": {"type": "string"}},
                       "x-kubernetes-preserve-unknown-fields": true}),
                json!({"a": "x", "anything": {"goes": 1}}),
                true,
            ),
            (
                json!({"x-kubernetes-int-or-string": true}),
                json!(8080),
                true,
            ),
            (
                json!({"x-kubernetes-int-or-string": true}),
                json!("http"),
                true,
            ),
            (
                json!({"x-kubernetes-int-or-string": true}),
                json!(true),
                false,
            ),
            (
                json!({"type": "integer", "nullable": true}),
                json!(null),
                true,
            ),
            (json!({"type": "integer"}), json!(null), false),
            // A map (additionalProperties) is not closed by the rule above.
            (
                json!({"type": "object", "additionalProperties": {"type": "string"}}),
                json!({"k": "v"}),
                true,
            ),
            (
                json!({"type": "string", "enum": ["A", "B"]}),
                json!("C"),
                false,
            ),
        ];
        for (schema, instance, valid) in cases {
            assert_eq!(
                check(schema.clone(), instance.clone()),
                valid,
                "{schema} ∋ {instance}"
            );
        }
    }
}
