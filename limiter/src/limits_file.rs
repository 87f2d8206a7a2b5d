//! The limits file, in Limitador's own format: a YAML list of limits, each
//! with a `namespace` (the request's domain), `max_value` hits per window of
//! `seconds`, CEL `conditions` that must all hold, CEL `variables` that split
//! the limit into one counter per value, and an optional `name` (and `id`).
//!
//! ```yaml
//! - namespace: maas
//!   name: per-user-tokens
//!   max_value: 100000
//!   seconds: 60
//!   conditions: ["descriptors[0].model == 'smollm2'"]
//!   variables: ["descriptors[0].user"]
//! ```
//!
//! Everything is checked once, at load: unknown keys, an empty namespace, a
//! zero window, a bound Redis cannot count to, CEL that does not parse or
//! names something the request never binds (a limit that could never
//! apply), and two limits Limitador would take for one. The error names the
//! file, the limit (position and name) and the field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use limitador::limit::{Expression, Limit, Predicate};
use serde::Deserialize;

/// The CEL variable the request's descriptors are bound to.
pub const DESCRIPTORS: &str = "descriptors";
/// Limitador binds the limit being evaluated (`limit.name`) for conditions.
const LIMIT: &str = "limit";

/// Redis counts with signed 64-bit integers.
const MAX_VALUE: u64 = i64::MAX as u64;

/// The longest window: ten years. Far longer ones overflow Redis's `EXPIRE`
/// (after the count, leaving a counter that never resets) and the memory
/// storage's expiry time.
const MAX_SECONDS: u64 = 10 * 366 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum LimitsFileError {
    #[error("cannot read limits file {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("limits file {path:?} is not a list of limits: {source}")]
    Syntax {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("limits file {path:?}, {limit}, `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        /// `limit #2 ("per-user")`: position from 1, and name when it has one.
        limit: String,
        field: &'static str,
        reason: String,
    },
}

/// One entry of the file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitDefinition {
    namespace: String,
    max_value: u64,
    seconds: u64,
    #[serde(default)]
    conditions: Vec<String>,
    #[serde(default)]
    variables: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

/// Reads and validates the limits file at `path`.
pub fn load(path: &Path) -> Result<Vec<Limit>, LimitsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| LimitsFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Validates `text`; `path` is only for messages.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Limit>, LimitsFileError> {
    let definitions: Vec<LimitDefinition> =
        serde_yaml_ng::from_str(text).map_err(|source| LimitsFileError::Syntax {
            path: path.to_owned(),
            source,
        })?;
    let mut limits: Vec<Limit> = Vec::with_capacity(definitions.len());
    for (index, definition) in definitions.into_iter().enumerate() {
        let label = match &definition.name {
            Some(name) => format!("limit #{} ({name:?})", index + 1),
            None => format!("limit #{}", index + 1),
        };
        let invalid = |field: &'static str, reason: String| LimitsFileError::Invalid {
            path: path.to_owned(),
            limit: label.clone(),
            field,
            reason,
        };
        let limit = definition
            .into_limit()
            .map_err(|(field, why)| invalid(field, why))?;
        // Limitador keys a limit by namespace, window, conditions and
        // variables (not max_value or name): a second one would replace the
        // first without a word.
        if let Some(first) = limits.iter().position(|seen| *seen == limit) {
            return Err(invalid(
                "conditions",
                format!(
                    "same namespace, seconds, conditions and variables as limit #{}",
                    first + 1
                ),
            ));
        }
        // With Redis, a limit's `id` is its counters' whole key (namespace,
        // window and conditions left out): two limits of one id would count
        // into one counter, in the first one's window.
        if let Some(id) = limit.id() {
            if let Some(first) = limits.iter().position(|seen| seen.id() == Some(id)) {
                return Err(invalid(
                    "id",
                    format!(
                        "{id:?} is limit #{}'s too; an id must be unique on its Redis",
                        first + 1
                    ),
                ));
            }
        }
        limits.push(limit);
    }
    Ok(limits)
}

impl LimitDefinition {
    fn into_limit(self) -> Result<Limit, (&'static str, String)> {
        if self.namespace.trim().is_empty() {
            return Err(("namespace", "must not be empty".into()));
        }
        if !(1..=MAX_SECONDS).contains(&self.seconds) {
            return Err(("seconds", format!("must be 1 to {MAX_SECONDS} (ten years)")));
        }
        if self.max_value > MAX_VALUE {
            return Err(("max_value", format!("must be at most {MAX_VALUE}")));
        }
        let conditions = self
            .conditions
            .iter()
            .map(|source| {
                let predicate =
                    Predicate::parse(source).map_err(|e| ("conditions", format!("{e}")))?;
                let names = Expression::parse(source)
                    .map_err(|e| ("conditions", format!("{e}")))?
                    .variables();
                only_binds(&names, &[DESCRIPTORS, LIMIT]).map_err(|name| {
                    (
                        "conditions",
                        unbound(source, &name, "`descriptors` and `limit`"),
                    )
                })?;
                Ok(predicate)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let variables = self
            .variables
            .iter()
            .map(|source| {
                let expression =
                    Expression::parse(source).map_err(|e| ("variables", format!("{e}")))?;
                only_binds(&expression.variables(), &[DESCRIPTORS])
                    .map_err(|name| ("variables", unbound(source, &name, "`descriptors`")))?;
                Ok(expression)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(duplicate) = first_duplicate(&self.conditions) {
            return Err(("conditions", format!("{duplicate:?} is listed twice")));
        }
        if let Some(duplicate) = first_duplicate(&self.variables) {
            return Err(("variables", format!("{duplicate:?} is listed twice")));
        }
        let mut limit = match self.id {
            Some(id) => Limit::with_id(
                id,
                self.namespace,
                self.max_value,
                self.seconds,
                conditions,
                variables,
            ),
            None => Limit::new(
                self.namespace,
                self.max_value,
                self.seconds,
                conditions,
                variables,
            ),
        };
        if let Some(name) = self.name {
            limit.set_name(name);
        }
        Ok(limit)
    }
}

fn only_binds(names: &[String], allowed: &[&str]) -> Result<(), String> {
    match names.iter().find(|name| !allowed.contains(&name.as_str())) {
        Some(name) => Err(name.clone()),
        None => Ok(()),
    }
}

fn unbound(source: &str, name: &str, allowed: &str) -> String {
    format!("{source:?} uses `{name}`, but a request binds only {allowed}, so the limit could never apply")
}

fn first_duplicate(items: &[String]) -> Option<&str> {
    let mut seen = HashSet::new();
    items
        .iter()
        .find(|item| !seen.insert(item.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Limit>, String> {
        parse(text, Path::new("limits.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_limitadors_format() {
        let limits = parse_str(
            r#"
- namespace: maas
  name: per-user
  max_value: 1000
  seconds: 60
  conditions: ["descriptors[0].model == 'm'", "limit.name == 'per-user'"]
  variables: ["descriptors[0].user"]
- namespace: other
  id: everyone
  max_value: 5
  seconds: 1
"#,
        )
        .unwrap();
        assert_eq!(limits.len(), 2);
        let first = &limits[0];
        assert_eq!(first.namespace().as_ref(), "maas");
        assert_eq!(first.name(), Some("per-user"));
        assert_eq!((first.max_value(), first.seconds()), (1000, 60));
        assert_eq!(
            first.variables(),
            HashSet::from(["descriptors[0].user".to_string()])
        );
        assert_eq!(first.conditions().len(), 2);
        assert_eq!(limits[1].id(), Some("everyone"));
        assert!(limits[1].conditions().is_empty());
    }

    #[test]
    fn an_empty_list_is_no_limits() {
        assert!(parse_str("[]").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_limit_and_field() {
        let valid = "  max_value: 1\n  seconds: 60\n";
        let cases: &[(&str, &[&str])] = &[
            (
                "- namespace: ''\n  max_value: 1\n  seconds: 60\n",
                &["limit #1", "`namespace`", "must not be empty"],
            ),
            (
                "- namespace: a\n  name: n\n  max_value: 1\n  seconds: 0\n",
                &["limit #1 (\"n\")", "`seconds`", "must be 1 to 316224000"],
            ),
            (
                "- namespace: a\n  max_value: 1\n  seconds: 316224001\n",
                &["`seconds`", "(ten years)"],
            ),
            (
                "- namespace: a\n  id: t\n  max_value: 1\n  seconds: 60\n\
                 - namespace: b\n  id: t\n  max_value: 5\n  seconds: 86400\n",
                &["limit #2", "`id`", "\"t\" is limit #1's too"],
            ),
            (
                "- namespace: a\n  max_value: 9223372036854775808\n  seconds: 1\n",
                &["`max_value`", "at most 9223372036854775807"],
            ),
            (
                &format!("- namespace: a\n{valid}  conditions: [\"descriptors[0].x ==\"]\n"),
                &["`conditions`", "couldn't parse"],
            ),
            (
                &format!("- namespace: a\n{valid}  conditions: [\"request.x == '1'\"]\n"),
                &["`conditions`", "uses `request`", "could never apply"],
            ),
            (
                &format!("- namespace: a\n{valid}  variables: [\"limit.name\"]\n"),
                &["`variables`", "uses `limit`"],
            ),
            (
                &format!("- namespace: a\n{valid}  variables: [\"descriptors[0].u\", \"descriptors[0].u\"]\n"),
                &["`variables`", "listed twice"],
            ),
            (
                &format!("- namespace: a\n{valid}- namespace: a\n  max_value: 2\n  seconds: 60\n"),
                &["limit #2", "as limit #1"],
            ),
        ];
        for (text, wanted) in cases {
            let error = parse_str(text).unwrap_err();
            for part in *wanted {
                assert!(error.contains(part), "{error:?} lacks {part:?} for\n{text}");
            }
        }
    }

    #[test]
    fn unknown_and_missing_keys_are_syntax_errors_with_their_place() {
        let cases = [
            (
                "- namespace: a\n  max_value: 1\n  seconds: 1\n  max_valu: 2\n",
                "unknown field `max_valu`",
                "line 4",
            ),
            (
                "- namespace: a\n  seconds: 1\n",
                "missing field `max_value`",
                "line 1",
            ),
            ("namespace: a\n", "expected a sequence", "not a list"),
        ];
        for (text, wanted, place) in cases {
            let error = parse_str(text).unwrap_err();
            assert!(error.contains(wanted) && error.contains(place), "{error}");
            assert!(error.starts_with("limits file \"limits.yaml\""), "{error}");
        }
    }

    #[test]
    fn load_names_a_missing_file() {
        let error = load(Path::new("/nonexistent/limits.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot read limits file \"/nonexistent/limits.yaml\""),
            "{error}"
        );
    }
}
