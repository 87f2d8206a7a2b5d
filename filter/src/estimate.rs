//! What a request is charged when its response ends without a usage report
//! (the client hung up, the stream was cut, the upstream failed or sent
//! none): the most it may have cost, as far as the filter can tell.
//!
//! Invariants:
//! - The prompt is charged the bound its reservation was made for
//!   ([`prompt_bound`]: request bytes over `prompt_bytes_per_token`, plus
//!   `media_part_tokens` per media part), never less: the model server read
//!   the whole prompt before the first byte came back, and a prompt built to
//!   tokenise badly (one token per digit) costs exactly that much compute.
//! - The completion is charged the larger of the content events the client
//!   was sent (one token each at least) and the generated text's bytes over
//!   the same bytes-per-token bound, capped at the completion's reservation,
//!   which the model cannot exceed (the filter writes `max_tokens`). A
//!   response whose body could not be read at all (an encoding the filter
//!   does not decode), or that never came while the model may have gone on
//!   ([`answer_never_came`]), is charged the whole completion reservation:
//!   nothing shows it was less.
//! - So an estimate never exceeds what was reserved, and never falls below
//!   what the model did, as long as a token is at least
//!   `prompt_bytes_per_token` bytes of text. (Where the model stopped with
//!   its client, the output it never sent is not counted: the model's own
//!   server cut mid-stream, say, stops within a step of the cut.)

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

/// Whether a request ended with no answer while the model may still have
/// been generating: the client left before any response (`status` none),
/// or Envoy gave up waiting (its route or per-try timeout, the stream's
/// longest duration, or its idle timeout before any response; the details
/// as Envoy 1.40 spells them). The
/// caller asks only where no response header came from the upstream (a
/// timeout after a stream started is estimated from what it showed) and
/// the model may have generated unseen: an external provider, which goes on
/// and bills a generation whose client left, or a whole (not streamed)
/// answer, which comes only once complete. (A reset or an error status
/// means the upstream stopped: that is estimated from what was seen.)
pub fn answer_never_came(status: Option<u32>, code_details: Option<&str>) -> bool {
    match status {
        None => true,
        Some(_) => matches!(
            code_details,
            Some(
                "response_timeout"
                    | "upstream_per_try_timeout"
                    | "upstream_per_try_idle_timeout"
                    | "upstream_max_stream_duration_reached"
                    | "stream_idle_timeout"
            )
        ),
    }
}

/// The most prompt tokens a request can cost: its body's bytes over
/// `bytes_per_token` bound its text (and inline media, whose base64 is
/// larger than its tokens), and each media part (see
/// `openai::request::media`: an image by URL, a file by id) adds
/// `tokens_per_media_part`, the most the configuration says a model
/// charges for one.
pub fn prompt_bound(
    body_bytes: u64,
    bytes_per_token: u64,
    media_parts: u64,
    tokens_per_media_part: u64,
) -> u64 {
    body_bytes
        .div_ceil(bytes_per_token.max(1))
        .saturating_add(media_parts.saturating_mul(tokens_per_media_part))
}

/// The bounds a request was admitted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageBounds {
    /// Tokens reserved for the prompt ([`prompt_bound`]).
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
    /// What the model generated could not be seen, and it may have run to
    /// the end of its budget: a successful response's body came in an
    /// encoding the filter does not decode (`content-encoding: gzip`; only
    /// a misbehaving upstream sends one, the filter strips the client's
    /// `accept-encoding`), or no answer came at all ([`answer_never_came`]).
    pub unseen: bool,
}

impl UsageBounds {
    /// Tokens the request can cost at most: what its reservation holds.
    pub fn worst_case(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// The charge for a request whose response reported no usage.
    pub fn estimate(&self, seen: SeenOutput) -> Usage {
        let by_bytes = seen.text_bytes.div_ceil(self.bytes_per_token.max(1));
        let completion = if seen.unseen {
            self.completion
        } else {
            seen.content_events.max(by_bytes).min(self.completion)
        };
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
                unseen: false,
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
            (504, Some("response_timeout"), false),
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
    fn only_timeouts_and_no_answer_leave_the_generation_unseen() {
        let cases = [
            (None, None, true),
            (Some(504), Some("response_timeout"), true),
            (Some(504), Some("upstream_per_try_timeout"), true),
            (
                Some(504),
                Some("upstream_max_stream_duration_reached"),
                true,
            ),
            (Some(504), Some("via_upstream"), false),
            (
                Some(503),
                Some("upstream_reset_before_response_started{remote_reset}"),
                false,
            ),
            (Some(503), None, false),
            (Some(200), Some("via_upstream"), false),
        ];
        for (status, details, unseen) in cases {
            assert_eq!(
                answer_never_came(status, details),
                unseen,
                "{status:?} {details:?}"
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
            unseen: false,
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
            unseen: false,
        });
        assert_eq!(usage.completion_tokens, 7);
        assert_eq!(usage.total_tokens, u64::MAX);
    }

    #[test]
    fn an_undecodable_response_is_charged_its_whole_reservation() {
        let bounds = UsageBounds {
            prompt: 300,
            completion: 64,
            bytes_per_token: 1,
        };
        let seen = SeenOutput {
            unseen: true,
            ..SeenOutput::default()
        };
        let usage = bounds.estimate(seen);
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (300, 64),
            "nothing shows it generated less than it was allowed"
        );
        assert_eq!(usage.total_tokens, bounds.worst_case());
    }

    #[test]
    fn each_media_part_adds_its_tokens_to_the_prompt_bound() {
        // (body bytes, bytes per token, media parts, tokens per part) → bound
        let cases = [
            ((60, 1, 0, 4_096), 60),
            // One image by URL: 60 bytes, but up to a part's tokens.
            ((60, 1, 1, 4_096), 60 + 4_096),
            ((601, 4, 3, 1_000), 151 + 3_000),
            ((10, 1, 5, 0), 10),
            ((u64::MAX, 1, u64::MAX, u64::MAX), u64::MAX),
            ((7, 0, 0, 1), 7),
        ];
        for ((bytes, per_token, parts, per_part), bound) in cases {
            assert_eq!(
                prompt_bound(bytes, per_token, parts, per_part),
                bound,
                "{bytes} {per_token} {parts} {per_part}"
            );
        }
    }
}
