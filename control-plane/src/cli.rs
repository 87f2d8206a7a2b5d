//! The administrators' command line: the API's verbs over HTTP, printing a
//! table for people or the API's JSON for scripts (`--json`).

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Input(String),
}

pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(30))
                .build(),
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let (url, response) = self.send(method, path, body)?;
        response.into_json().map_err(|e| CliError::Unreachable {
            url,
            reason: e.to_string(),
        })
    }

    /// `GET path` answered as text (e.g. CSV), not JSON.
    pub fn text(&self, path: &str) -> Result<String, CliError> {
        let (url, response) = self.send("GET", path, None)?;
        response.into_string().map_err(|e| CliError::Unreachable {
            url,
            reason: e.to_string(),
        })
    }

    /// The response to a call that succeeded, with its URL; an API error
    /// with the message of its OpenAI-style body.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(String, ureq::Response), CliError> {
        let url = format!("{}{path}", self.base);
        let request = self
            .agent
            .request(method, &url)
            .set("authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(b) => request.send_json(b.clone()),
            None => request.call(),
        };
        match result {
            Ok(r) => Ok((url, r)),
            Err(ureq::Error::Status(status, r)) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                let message = body["error"]["message"]
                    .as_str()
                    .unwrap_or("(no message)")
                    .to_string();
                Err(CliError::Api { status, message })
            }
            Err(e) => Err(CliError::Unreachable {
                url,
                reason: e.to_string(),
            }),
        }
    }
}

/// Rows of `columns` from a list response, as an aligned text table.
pub fn table(items: &[Value], columns: &[(&str, &str)]) -> String {
    let cell = |item: &Value, key: &str| match &item[key] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) if key.ends_with("_at") => {
            n.as_i64().map_or_else(|| n.to_string(), crate::time::utc)
        }
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let mut widths: Vec<usize> = columns.iter().map(|(_, title)| title.len()).collect();
    for item in items {
        for (i, (key, _)) in columns.iter().enumerate() {
            widths[i] = widths[i].max(cell(item, key).chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(columns.iter().map(|(_, t)| t.to_string()).collect())];
    for item in items {
        out.push(line(columns.iter().map(|(k, _)| cell(item, k)).collect()));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_show_absent_values_as_dashes() {
        let items = [
            json!({"id": "abc", "status": "active", "expires_at": null, "models": ["m1", "m2"]}),
            json!({"id": "a", "status": "revoked", "expires_at": 1_795_443_142, "models": []}),
        ];
        let columns = [
            ("id", "ID"),
            ("status", "STATUS"),
            ("expires_at", "EXPIRES"),
            ("models", "MODELS"),
        ];
        assert_eq!(
            table(&items, &columns),
            "ID   STATUS   EXPIRES           MODELS\nabc  active   -                 m1,m2\na    revoked  2026-11-23 14:12"
        );
    }
}
