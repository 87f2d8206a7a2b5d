//! What a request is charged when its response ends without a usage report
//! (the client hung up, the stream was cut, the upstream failed or sent
//! none): the most it may have cost, as far as the filter can tell.
//!
//! Invariants:
//! - The prompt is charged the bound its reservation was made for (request
//!   bytes over `prompt_bytes_per_token`), never less: the model server read
//!   the whole prompt before the first byte came back, and a prompt built to
//!   tokenise badly (one token per digit) costs exactly that much compute.
//! - The completion is charged the larger of the content events the client
//!   was sent (one token each at least) and the generated text's bytes over
//!   the same bytes-per-token bound, capped at the completion's reservation,
//!   which the model cannot exceed (the filter writes `max_tokens`).
//! - So an estimate never exceeds what was reserved, and never falls below
//!   what the model did, as long as a token is at least
//!   `prompt_bytes_per_token` bytes of text.

use crate::openai::usage::Usage;

/// Whether an error answer came before any model computed the request, so
/// it is charged nothing: Envoy answered because no model could be reached
/// (connect failure, no healthy host, circuit breaker, no cluster), or the
/// model server itself refused it (a 4xx, or 429/503: overloaded, loading;
/// 529 is Anthropic's "overloaded").
/// Anything else (a timeout, a reset mid-request, another 5xx, or details
/// unknown) may have followed the prompt's computation: estimated.
pub fn answered_before_any_model(status: u32, code_details: Option<&str>) -> bool {
    match code_details {
        Some("via_upstream") => (400..500).contains(&status) || matches!(status, 503 | 529),
        Some(details) => {
            matches!(
                details,
                "no_healthy_upstream"
                    | "cluster_not_found"
                    | "route_not_found"
                    | "maintenance_mode"
            ) || details.contains("connection_failure")
                || details.contains("{overflow")
        }
        None => false,
    }
}

/// The bounds a request was admitted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageBounds {
    /// Tokens reserved for the prompt.
    pub prompt: u64,
    /// Tokens reserved for every completion together (`max_tokens` × `n`).
    pub completion: u64,
    /// Bytes of text counted as one token (at least 1).
    pub bytes_per_token: u64,
}

/// What the response showed of the completion before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeenOutput {
    /// Streamed events that carried choices.
    pub content_events: u64,
    /// Bytes of generated text (content, reasoning, tool-call names and
    /// arguments; for a plain JSON response, the bytes of the body).
    pub text_bytes: u64,
}

impl UsageBounds {
    /// Tokens the request can cost at most: what its reservation holds.
    pub fn worst_case(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// The charge for a request whose response reported no usage.
    pub fn estimate(&self, seen: SeenOutput) -> Usage {
        let by_bytes = seen.text_bytes.div_ceil(self.bytes_per_token.max(1));
        let completion = seen.content_events.max(by_bytes).min(self.completion);
        Usage {
            prompt_tokens: self.prompt,
            completion_tokens: completion,
            total_tokens: self.prompt.saturating_add(completion),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_stay_between_what_was_seen_and_what_was_reserved() {
        let bounds = UsageBounds {
            prompt: 16_000,
            completion: 64,
            bytes_per_token: 1,
        };
        // (events, text bytes) → completion charged
        let cases = [
            ((0, 0), 0),
            // One event carrying 5 digits: 5 tokens, not 1.
            ((1, 5), 5),
            // Events with empty text (role, finish) still count one each.
            ((3, 1), 3),
            // Never past the reservation.
            ((10, 4_000), 64),
            ((100, 0), 64),
        ];
        for ((content_events, text_bytes), completion) in cases {
            let usage = bounds.estimate(SeenOutput {
                content_events,
                text_bytes,
            });
            assert_eq!(usage.prompt_tokens, 16_000, "the prompt's bound, always");
            assert_eq!(
                usage.completion_tokens, completion,
                "{content_events} {text_bytes}"
            );
            assert_eq!(usage.total_tokens, 16_000 + completion);
        }
    }

    #[test]
    fn only_answers_no_model_computed_are_free() {
        let cases = [
            (503, Some("via_upstream"), true),
            (429, Some("via_upstream"), true),
            (529, Some("via_upstream"), true),
            (400, Some("via_upstream"), true),
            (500, Some("via_upstream"), false),
            (502, Some("via_upstream"), false),
            (504, Some("via_upstream"), false),
            (503, Some("upstream_reset_before_response_started{connection_failure}"), true),
            (
                503,
                Some("upstream_reset_before_response_started{connection_failure,delayed_connect_error:_Connection_refused}"),
                true,
            ),
            (503, Some("no_healthy_upstream"), true),
            (503, Some("upstream_reset_before_response_started{overflow}"), true),
            // The model may have computed before these.
            (504, Some("upstream_response_timeout"), false),
            (503, Some("upstream_reset_before_response_started{remote_reset}"), false),
            (503, Some("upstream_reset_after_response_started{remote_reset}"), false),
            (503, None, false),
        ];
        for (status, details, free) in cases {
            assert_eq!(
                answered_before_any_model(status, details),
                free,
                "{status} {details:?}"
            );
        }
    }

    #[test]
    fn bytes_per_token_divides_the_text_rounding_up() {
        let bounds = UsageBounds {
            prompt: 10,
            completion: 1_000,
            bytes_per_token: 4,
        };
        let seen = SeenOutput {
            content_events: 1,
            text_bytes: 9,
        };
        assert_eq!(bounds.estimate(seen).completion_tokens, 3);
    }

    #[test]
    fn an_estimate_never_exceeds_the_reservation() {
        let bounds = UsageBounds {
            prompt: u64::MAX,
            completion: 7,
            bytes_per_token: 0,
        };
        let usage = bounds.estimate(SeenOutput {
            content_events: u64::MAX,
            text_bytes: u64::MAX,
        });
        assert_eq!(usage.completion_tokens, 7);
        assert_eq!(usage.total_tokens, u64::MAX);
    }
}
