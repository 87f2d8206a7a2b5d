//! A blocking HTTP/1.1 client for tests: every status comes back as a
//! [`Response`] (a 429 is an answer to assert on, not an error), redirects are
//! not followed, and a body cut off by the peer keeps what arrived.
//!
//! One keep-alive agent is shared by the whole test binary; it is safe to call
//! from many threads at once.

use std::io::Read;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// Long enough for a slow streamed completion, short enough that a hung
/// gateway fails the test instead of the CI job.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request that got no HTTP response at all.
#[derive(Debug, thiserror::Error)]
#[error("{method} {url}: {reason}")]
pub struct ClientError {
    pub method: String,
    pub url: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// In arrival order, names lowercase; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
    /// Everything received, even when the body ended early.
    pub body: Vec<u8>,
    /// Set when the body ended with a transport error (connection reset or
    /// closed before the end of a chunked body); `body` holds what came before.
    pub body_error: Option<String>,
}

impl Response {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the status and body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "response body (status {}) is not JSON ({error}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The `data:` payloads of a server-sent-events body, in order, including
    /// a final `[DONE]`. Lines other than `data:` are ignored.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .flat_map(|event| event.lines())
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.strip_prefix(' ').unwrap_or(data).to_owned())
            .collect()
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .build()
    })
}

/// Sends one request; panics if no HTTP response arrives (connection refused,
/// reset before the status line). Any status, 4xx/5xx included, is returned.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Response {
    try_request(method, url, headers, body).unwrap_or_else(|error| panic!("{error}"))
}

/// [`request`], returning the transport failure instead of panicking; for tests
/// that expect the connection to fail.
pub fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, ClientError> {
    let mut request = agent().request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        Some(body) => request.send_bytes(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(transport)) => {
            return Err(ClientError {
                method: method.to_owned(),
                url: url.to_owned(),
                reason: transport.to_string(),
            })
        }
    };
    let status = response.status();
    let mut headers = Vec::new();
    for name in response.headers_names() {
        for value in response.all(&name) {
            headers.push((name.to_ascii_lowercase(), value.to_owned()));
        }
    }
    let mut body = Vec::new();
    let body_error = response
        .into_reader()
        .read_to_end(&mut body)
        .err()
        .map(|error| error.to_string());
    Ok(Response {
        status,
        headers,
        body,
        body_error,
    })
}

/// `request("GET", url, &[], None)`.
pub fn get(url: &str) -> Response {
    request("GET", url, &[], None)
}

/// A POST with a JSON body and `content-type: application/json` (plus `headers`).
pub fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request("POST", url, &all, Some(body.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_data_splits_events() {
        let response = Response {
            status: 200,
            headers: vec![("Content-Type".into(), "text/event-stream".into())],
            body: b"data: {\"a\":1}\n\n: comment\n\ndata:[DONE]\n\n".to_vec(),
            body_error: None,
        };
        assert_eq!(response.sse_data(), ["{\"a\":1}", "[DONE]"]);
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
    }
}
