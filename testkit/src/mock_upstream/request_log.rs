//! The requests the mock has seen, in arrival order, for tests to assert on
//! what the gateway forwarded (headers it added or stripped, the body it sent).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Value};

/// One request as the mock received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent on the request line.
    pub path: String,
    /// In arrival order, names lowercase; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "recorded {} {} body is not JSON ({error}): {}",
                self.method,
                self.path,
                self.body_text()
            )
        })
    }

    /// The shape served on `GET /__mock/requests`.
    pub fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body_text(),
        })
    }
}

/// Shared between the connection tasks and the test thread. A limit keeps a
/// long-running mock (benchmarks) from growing without bound: the oldest
/// entries are dropped first.
#[derive(Debug, Default)]
pub struct RequestLog {
    entries: Mutex<VecDeque<RecordedRequest>>,
    limit: Option<usize>,
}

impl RequestLog {
    /// `limit`: keep only the most recent `limit` requests; `Some(0)` records nothing.
    pub fn new(limit: Option<usize>) -> Self {
        Self {
            entries: Mutex::default(),
            limit,
        }
    }

    pub fn record(&self, request: RecordedRequest) {
        if self.limit == Some(0) {
            return;
        }
        let mut entries = self.lock();
        if let Some(limit) = self.limit {
            while entries.len() >= limit {
                entries.pop_front();
            }
        }
        entries.push_back(request);
    }

    pub fn snapshot(&self) -> Vec<RecordedRequest> {
        self.lock().iter().cloned().collect()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// A panic while holding the lock (only possible in a test thread) must not
    /// hide the requests from the assertions that follow.
    fn lock(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> RecordedRequest {
        RecordedRequest {
            method: "GET".into(),
            path: path.into(),
            headers: vec![("x-a".into(), "1".into())],
            body: Vec::new(),
        }
    }

    #[test]
    fn limit_keeps_the_most_recent() {
        let log = RequestLog::new(Some(2));
        for path in ["/1", "/2", "/3"] {
            log.record(request(path));
        }
        let paths: Vec<_> = log.snapshot().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/2", "/3"]);
        log.clear();
        assert!(log.snapshot().is_empty());
    }

    #[test]
    fn zero_limit_records_nothing() {
        let log = RequestLog::new(Some(0));
        log.record(request("/"));
        assert!(log.snapshot().is_empty());
    }

    #[test]
    fn header_lookup_ignores_case() {
        assert_eq!(request("/").header("X-A"), Some("1"));
        assert_eq!(request("/").header("x-b"), None);
    }
}
