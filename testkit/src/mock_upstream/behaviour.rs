//! What a test asks of the mock through `x-mock-*` request headers.
//!
//! Every knob is read here, once per request, so the handler works on a typed
//! `Behaviour` and a malformed header becomes one clear 400 instead of a
//! silently ignored setting.

use std::time::Duration;

use hyper::HeaderMap;

/// Completion length when neither the request nor `x-mock-completion-tokens` says.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 16;

/// The body is built in memory; a typo of a few extra digits must not take the
/// test machine's memory with it.
pub const MAX_COMPLETION_TOKENS: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Behaviour {
    /// `x-mock-completion-tokens`: how many tokens the "model" wants to emit.
    pub completion_tokens: Option<u64>,
    /// `x-mock-prompt-tokens`: overrides the word-count estimate of the prompt.
    pub prompt_tokens: Option<u64>,
    /// `x-mock-omit-usage`: leave `usage` out of the body / the usage chunk.
    pub omit_usage: bool,
    /// `x-mock-status`: fail with this status and an OpenAI error body
    /// (with `x-mock-status-host`, only when the request's `Host` is that
    /// one: of two providers on one request, the first fails, the next
    /// answers).
    pub status: Option<u16>,
    /// `x-mock-cut-after`: abort a stream after this many content events.
    pub cut_after: Option<u64>,
    /// `x-mock-delay-ms`: wait before sending the response headers.
    pub delay: Option<Duration>,
    /// `x-mock-chunk-delay-ms`: wait between stream events.
    pub chunk_delay: Option<Duration>,
    /// `x-mock-content-encoding`: label a successful answer with this
    /// `content-encoding` (the body stays as it is: a client that should
    /// not read it cannot tell).
    pub content_encoding: Option<String>,
}

/// A header that was present but could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header {value:?}: {reason}")]
pub struct BehaviourError {
    pub header: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl Behaviour {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, BehaviourError> {
        let status = number(headers, "x-mock-status")?
            .map(|code| {
                u16::try_from(code)
                    .ok()
                    .filter(|code| (200..=599).contains(code))
                    .ok_or_else(|| BehaviourError {
                        header: "x-mock-status",
                        value: code.to_string(),
                        reason: "expected a status code between 200 and 599",
                    })
            })
            .transpose()?;
        // Failing is meant for another host: this one answers.
        let elsewhere = value(headers, "x-mock-status-host")?
            .is_some_and(|host| headers.get("host").and_then(|h| h.to_str().ok()) != Some(host));
        let status = status.filter(|_| !elsewhere);
        let completion_tokens = number(headers, "x-mock-completion-tokens")?;
        if let Some(tokens) = completion_tokens.filter(|t| *t > MAX_COMPLETION_TOKENS) {
            return Err(BehaviourError {
                header: "x-mock-completion-tokens",
                value: tokens.to_string(),
                reason: "at most 1000000",
            });
        }
        Ok(Self {
            completion_tokens,
            prompt_tokens: number(headers, "x-mock-prompt-tokens")?,
            omit_usage: flag(headers, "x-mock-omit-usage")?,
            status,
            cut_after: number(headers, "x-mock-cut-after")?,
            delay: number(headers, "x-mock-delay-ms")?.map(Duration::from_millis),
            chunk_delay: number(headers, "x-mock-chunk-delay-ms")?.map(Duration::from_millis),
            content_encoding: value(headers, "x-mock-content-encoding")?.map(str::to_owned),
        })
    }
}

fn value<'h>(
    headers: &'h HeaderMap,
    header: &'static str,
) -> Result<Option<&'h str>, BehaviourError> {
    let Some(raw) = headers.get(header) else {
        return Ok(None);
    };
    raw.to_str()
        .map(|text| Some(text.trim()))
        .map_err(|_| BehaviourError {
            header,
            value: String::from_utf8_lossy(raw.as_bytes()).into_owned(),
            reason: "not visible ASCII",
        })
}

fn number(headers: &HeaderMap, header: &'static str) -> Result<Option<u64>, BehaviourError> {
    value(headers, header)?
        .map(|text| {
            text.parse::<u64>().map_err(|_| BehaviourError {
                header,
                value: text.to_owned(),
                reason: "expected a non-negative integer",
            })
        })
        .transpose()
}

fn flag(headers: &HeaderMap, header: &'static str) -> Result<bool, BehaviourError> {
    match value(headers, header)? {
        None => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some("0" | "false" | "no") => Ok(false),
        Some(other) => Err(BehaviourError {
            header,
            value: other.to_owned(),
            reason: "expected 1/true/yes or 0/false/no",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }

    #[test]
    fn absent_headers_mean_defaults() {
        assert_eq!(
            Behaviour::from_headers(&HeaderMap::new()),
            Ok(Behaviour::default())
        );
    }

    #[test]
    fn every_knob_is_read() {
        let behaviour = Behaviour::from_headers(&headers(&[
            ("x-mock-completion-tokens", "3"),
            ("x-mock-prompt-tokens", "7"),
            ("x-mock-omit-usage", "1"),
            ("x-mock-status", "503"),
            ("x-mock-cut-after", "2"),
            ("x-mock-delay-ms", "5"),
            ("x-mock-chunk-delay-ms", " 6 "),
            ("x-mock-content-encoding", "gzip"),
        ]))
        .expect("valid headers");
        assert_eq!(
            behaviour,
            Behaviour {
                completion_tokens: Some(3),
                prompt_tokens: Some(7),
                omit_usage: true,
                status: Some(503),
                cut_after: Some(2),
                delay: Some(Duration::from_millis(5)),
                chunk_delay: Some(Duration::from_millis(6)),
                content_encoding: Some("gzip".into()),
            }
        );
    }

    #[test]
    fn malformed_values_name_their_header() {
        for (header, value) in [
            ("x-mock-completion-tokens", "many"),
            ("x-mock-prompt-tokens", "-1"),
            ("x-mock-omit-usage", "maybe"),
            ("x-mock-status", "99"),
            ("x-mock-status", "70000"),
            ("x-mock-delay-ms", "1.5"),
            ("x-mock-completion-tokens", "1000001"),
        ] {
            let error = Behaviour::from_headers(&headers(&[(header, value)]))
                .expect_err("malformed header must be rejected");
            assert_eq!(error.header, header, "{value}");
        }
    }
}
