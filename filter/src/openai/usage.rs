//! Token usage reported by an OpenAI-compatible upstream.
//!
//! Only the top-level `usage` object is read; everything else in the
//! response (notably `choices`, which holds the generated text) is skipped
//! without allocating.
//!
//! Invariant: `total_tokens` is never below `prompt_tokens +
//! completion_tokens`, whatever the upstream claims, so a lying or buggy
//! upstream cannot make the gateway under-charge.

use serde_json::value::RawValue;

use crate::openai::request::{object_fields, Keys};

/// Tokens consumed by one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// Count fields of a usage object. `input_tokens` / `output_tokens` are the
/// Responses-API spelling, used only when the Chat Completions names are absent.
const COUNTS: [&str; 5] = [
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
];

/// Reads the top-level `usage` object of a buffered (non-streamed) response.
///
/// `None` when the body is not a JSON object, is malformed, has no `usage`
/// or a null one, or when the usage object holds no valid count.
pub fn parse_json_usage(body: &[u8]) -> Option<Usage> {
    let [usage] = object_fields(body, &["usage"], Keys::Exact).ok()?.values;
    Usage::from_raw(usage?)
}

impl Usage {
    /// Reads a usage object from its raw JSON. `None` for null, for a
    /// non-object, for an object without any count, and for a count that is
    /// not a non-negative integer (the caller then estimates instead of
    /// trusting half of a broken report).
    pub(crate) fn from_raw(raw: &RawValue) -> Option<Usage> {
        let [prompt, completion, total, input, output] =
            object_fields(raw.get().as_bytes(), &COUNTS, Keys::Exact)
                .ok()?
                .values;
        let count = |raw: Option<&RawValue>| -> Result<Option<u64>, ()> {
            match raw {
                None => Ok(None),
                Some(raw) => serde_json::from_str::<Option<u64>>(raw.get()).map_err(|_| ()),
            }
        };
        let prompt = count(prompt).ok()?.or(count(input).ok()?);
        let completion = count(completion).ok()?.or(count(output).ok()?);
        let total = count(total).ok()?;
        if prompt.is_none() && completion.is_none() && total.is_none() {
            return None;
        }
        Some(Usage::new(
            prompt.unwrap_or(0),
            completion.unwrap_or(0),
            total,
        ))
    }

    /// A usage whose total is at least the sum of its parts.
    pub fn new(prompt_tokens: u64, completion_tokens: u64, total_tokens: Option<u64>) -> Usage {
        let sum = prompt_tokens.saturating_add(completion_tokens);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: total_tokens.map_or(sum, |total| total.max(sum)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usage(prompt: u64, completion: u64, total: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
        })
    }

    #[test]
    fn parses_usage_shapes() {
        let cases: &[(&str, &str, Option<Usage>)] = &[
            (
                "openai chat completion",
                r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o",
                   "choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"usage\": {}"},"finish_reason":"stop"}],
                   "usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,
                            "prompt_tokens_details":{"cached_tokens":0},
                            "completion_tokens_details":{"reasoning_tokens":0}},
                   "system_fingerprint":"fp"}"#,
                usage(9, 12, 21),
            ),
            (
                "usage before choices",
                r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"choices":[]}"#,
                usage(1, 2, 3),
            ),
            (
                "vllm (prompt_tokens_details null)",
                r#"{"id":"cmpl-x","object":"text_completion","model":"m","choices":[{"index":0,"text":"x","logprobs":null,"finish_reason":"length","stop_reason":null}],
                   "usage":{"prompt_tokens":5,"total_tokens":21,"completion_tokens":16,"prompt_tokens_details":null}}"#,
                usage(5, 16, 21),
            ),
            (
                "llama.cpp (timings next to usage)",
                r#"{"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant","content":"ok"}}],
                   "created":1,"model":"gpt-3.5-turbo","object":"chat.completion",
                   "usage":{"completion_tokens":3,"prompt_tokens":4,"total_tokens":7},
                   "id":"chatcmpl-y","timings":{"prompt_n":4,"predicted_per_second":50.5}}"#,
                usage(4, 3, 7),
            ),
            (
                "responses api names",
                r#"{"object":"response","usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15}}"#,
                usage(10, 5, 15),
            ),
            (
                "chat names win over aliases",
                r#"{"usage":{"input_tokens":100,"prompt_tokens":10,"completion_tokens":5}}"#,
                usage(10, 5, 15),
            ),
            (
                "total missing",
                r#"{"usage":{"prompt_tokens":7,"completion_tokens":8}}"#,
                usage(7, 8, 15),
            ),
            (
                "total smaller than sum",
                r#"{"usage":{"prompt_tokens":7,"completion_tokens":8,"total_tokens":1}}"#,
                usage(7, 8, 15),
            ),
            (
                "total larger than sum is kept",
                r#"{"usage":{"prompt_tokens":7,"completion_tokens":8,"total_tokens":20}}"#,
                usage(7, 8, 20),
            ),
            (
                "sum saturates",
                r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":8}}"#,
                usage(u64::MAX, 8, u64::MAX),
            ),
            (
                "null counts",
                r#"{"usage":{"prompt_tokens":3,"completion_tokens":null}}"#,
                usage(3, 0, 3),
            ),
            (
                "escaped key",
                r#"{"us\u0061ge":{"prompt_tokens":1,"completion_tokens":1}}"#,
                usage(1, 1, 2),
            ),
            ("no usage", r#"{"choices":[]}"#, None),
            ("null usage", r#"{"usage":null}"#, None),
            ("empty usage", r#"{"usage":{}}"#, None),
            ("usage not an object", r#"{"usage":[1,2]}"#, None),
            ("negative count", r#"{"usage":{"prompt_tokens":-1}}"#, None),
            ("float count", r#"{"usage":{"prompt_tokens":1.5}}"#, None),
            ("string count", r#"{"usage":{"prompt_tokens":"1"}}"#, None),
            (
                "nested usage only",
                r#"{"data":{"usage":{"prompt_tokens":1}}}"#,
                None,
            ),
            ("array body", r#"[{"usage":{"prompt_tokens":1}}]"#, None),
            ("malformed", r#"{"usage":{"prompt_tokens":1}"#, None),
            (
                "trailing garbage",
                r#"{"usage":{"prompt_tokens":1}} x"#,
                None,
            ),
            ("empty", "", None),
        ];
        for (name, body, expected) in cases {
            assert_eq!(parse_json_usage(body.as_bytes()), *expected, "{name}");
        }
    }

    #[test]
    fn big_choices_are_skipped() {
        let text = "x".repeat(1 << 20);
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"{text}"}}}}],"usage":{{"prompt_tokens":2,"completion_tokens":3}}}}"#
        );
        assert_eq!(parse_json_usage(body.as_bytes()), usage(2, 3, 5));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_json_usage(&body);
        }

        #[test]
        fn total_never_below_sum(p in any::<u64>(), c in any::<u64>(), t in proptest::option::of(any::<u64>())) {
            let total = t.map(|t| format!(r#","total_tokens":{t}"#)).unwrap_or_default();
            let body = format!(r#"{{"usage":{{"prompt_tokens":{p},"completion_tokens":{c}{total}}}}}"#);
            let usage = parse_json_usage(body.as_bytes()).unwrap();
            prop_assert_eq!(usage.prompt_tokens, p);
            prop_assert_eq!(usage.completion_tokens, c);
            prop_assert!(usage.total_tokens >= p.saturating_add(c));
        }
    }
}
