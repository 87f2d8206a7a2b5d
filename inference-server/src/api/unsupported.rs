//! Request fields this server does not implement, refused when they would
//! change the answer. A client sending vLLM's `guided_json` or llama.cpp's
//! `grammar` (LangChain's and LlamaIndex's `extra_body` recipes) expects
//! constrained output; ignoring the field hands it unconstrained text that
//! looks like success. Unknown fields outside this list still pass: SDKs
//! send `user`, `metadata`, `store` and the like by default, and those
//! change nothing here.
//!
//! Each field passes at its neutral value (absent, `null`, `false`, empty,
//! or the number that means "off"), so a client that always sends it with
//! the default is not refused.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::response::Shape;

/// The value at which a field changes nothing.
#[derive(Clone, Copy)]
enum Neutral {
    /// `null`, `false`, `""`, `[]` or `{}`.
    Empty,
    /// This number (or `null`).
    Number(f64),
    /// `null`, or a list holding only this string (`modalities: ["text"]`).
    Only(&'static str),
    /// `null`, or one of these strings (`function_call: "auto"` without
    /// functions asks for nothing).
    OneOf(&'static [&'static str]),
    /// `null` or `true` (a switch that is on by default).
    True,
}

/// What to use instead, per group of fields.
const USE_RESPONSE_FORMAT: &str =
    "use `response_format` (`json_object` or `json_schema`) to constrain the output";
const SAMPLING: &str = "this server samples with `temperature`, `top_p`, `top_k`, `presence_penalty`, `frequency_penalty`, `logit_bias` and `seed`";

/// Fields from vLLM's and llama.cpp's servers and OpenAI's API that change
/// what is generated, which this server does not do.
const REFUSED: &[(&str, Neutral, &str)] = &[
    // Structured output in other servers' words.
    ("guided_json", Neutral::Empty, USE_RESPONSE_FORMAT),
    ("guided_regex", Neutral::Empty, USE_RESPONSE_FORMAT),
    ("guided_choice", Neutral::Empty, USE_RESPONSE_FORMAT),
    ("guided_grammar", Neutral::Empty, USE_RESPONSE_FORMAT),
    ("structured_outputs", Neutral::Empty, USE_RESPONSE_FORMAT),
    ("json_schema", Neutral::Empty, USE_RESPONSE_FORMAT),
    ("grammar", Neutral::Empty, USE_RESPONSE_FORMAT),
    // Sampling this server does not implement.
    ("min_p", Neutral::Number(0.0), SAMPLING),
    ("typical_p", Neutral::Number(1.0), SAMPLING),
    ("repetition_penalty", Neutral::Number(1.0), SAMPLING),
    ("repeat_penalty", Neutral::Number(1.0), SAMPLING),
    ("length_penalty", Neutral::Number(1.0), SAMPLING),
    ("mirostat", Neutral::Number(0.0), SAMPLING),
    ("dry_multiplier", Neutral::Number(0.0), SAMPLING),
    ("xtc_probability", Neutral::Number(0.0), SAMPLING),
    ("use_beam_search", Neutral::Empty, SAMPLING),
    ("top_n_sigma", Neutral::Number(-1.0), SAMPLING),
    ("dynatemp_range", Neutral::Number(0.0), SAMPLING),
    // vLLM's chat template switches: the template always opens the
    // assistant's turn after the messages.
    (
        "continue_final_message",
        Neutral::Empty,
        "a final assistant message is answered after, never continued",
    ),
    (
        "add_generation_prompt",
        Neutral::True,
        "the chat template always opens the assistant's turn",
    ),
    (
        "skip_special_tokens",
        Neutral::True,
        "special tokens are never part of the text (but tool-call markers while tools are in play)",
    ),
    (
        "min_tokens",
        Neutral::Number(0.0),
        "generation ends at an end-of-sequence token or the budget; `ignore_eos` generates the whole budget",
    ),
    (
        "stop_token_ids",
        Neutral::Empty,
        "use `stop` (strings) or `logit_bias`",
    ),
    ("bad_words", Neutral::Empty, "use `logit_bias`"),
    ("allowed_token_ids", Neutral::Empty, "use `logit_bias`"),
    (
        "include_stop_str_in_output",
        Neutral::Empty,
        "the text that matched `stop` is never returned",
    ),
    (
        "prompt_logprobs",
        Neutral::Empty,
        "log-probabilities are given for generated tokens only (`logprobs`)",
    ),
    (
        "n_probs",
        Neutral::Number(0.0),
        "use `logprobs` and `top_logprobs`",
    ),
    // OpenAI fields for what this server does not do.
    (
        "suffix",
        Neutral::Empty,
        "insertion (fill-in-the-middle) is not supported",
    ),
    (
        "modalities",
        Neutral::Only("text"),
        "this server answers in text only",
    ),
    ("audio", Neutral::Empty, "this server answers in text only"),
    (
        "prediction",
        Neutral::Empty,
        "predicted outputs are not supported",
    ),
    (
        "function_call",
        Neutral::OneOf(&["none", "auto"]),
        "`function_call` (deprecated by OpenAI) is not supported; use `tool_choice`",
    ),
];

/// Refuses the first field of [`REFUSED`] in `fields` (the body's fields
/// the typed request did not read) that is away from its neutral value,
/// naming it and what to use instead: a 400 `unsupported_parameter`, as
/// OpenAI answers a parameter a model does not take.
pub(super) fn check(fields: &Map<String, Value>, shape: Shape) -> Result<(), ApiError> {
    for &(name, neutral, instead) in REFUSED {
        let Some(value) = fields.get(name) else {
            continue;
        };
        if applies(name, shape) && !is_neutral(value, neutral) {
            return Err(ApiError::invalid(
                Some(name),
                format!("`{name}` is not supported by this server: {instead}."),
            )
            .with_code("unsupported_parameter"));
        }
    }
    Ok(())
}

fn is_neutral(value: &Value, neutral: Neutral) -> bool {
    match (value, neutral) {
        (Value::Null, _) => true,
        (Value::Bool(b), Neutral::Empty) => !b,
        (Value::String(s), Neutral::Empty) => s.is_empty(),
        (Value::Array(a), Neutral::Empty) => a.is_empty(),
        (Value::Object(o), Neutral::Empty) => o.is_empty(),
        (Value::Number(n), Neutral::Number(off)) => n.as_f64() == Some(off),
        (Value::Array(a), Neutral::Only(only)) => a.iter().all(|v| v.as_str() == Some(only)),
        (Value::String(s), Neutral::OneOf(values)) => values.contains(&s.as_str()),
        (Value::Bool(b), Neutral::True) => *b,
        _ => false,
    }
}

/// `suffix` only means something to `/v1/completions`; elsewhere it is not
/// a field of the request at all, so a chat request carrying one is not
/// refused for it.
fn applies(name: &str, shape: Shape) -> bool {
    name != "suffix" || shape == Shape::Completion
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checked(body: Value) -> Result<(), ApiError> {
        check(body.as_object().unwrap(), Shape::Completion)
    }

    #[test]
    fn fields_that_would_change_the_answer_are_refused_by_name() {
        for (body, param) in [
            (json!({"guided_json": {"type": "object"}}), "guided_json"),
            (json!({"guided_choice": ["a", "b"]}), "guided_choice"),
            (json!({"grammar": "root ::= \"a\""}), "grammar"),
            (json!({"min_p": 0.05}), "min_p"),
            (json!({"repetition_penalty": 1.1}), "repetition_penalty"),
            (json!({"min_tokens": 20}), "min_tokens"),
            (json!({"stop_token_ids": [2]}), "stop_token_ids"),
            (json!({"suffix": "}"}), "suffix"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (
                json!({"function_call": {"name": "get_weather"}}),
                "function_call",
            ),
            (json!({"use_beam_search": true}), "use_beam_search"),
            (
                json!({"continue_final_message": true}),
                "continue_final_message",
            ),
            (
                json!({"add_generation_prompt": false}),
                "add_generation_prompt",
            ),
            (json!({"skip_special_tokens": false}), "skip_special_tokens"),
            (json!({"top_n_sigma": 1.5}), "top_n_sigma"),
            (json!({"dynatemp_range": 0.5}), "dynatemp_range"),
        ] {
            let err = checked(body.clone()).unwrap_err();
            assert_eq!(err.status.as_u16(), 400, "{body}");
            assert_eq!(err.param, Some(param), "{body}");
            assert_eq!(err.code, Some("unsupported_parameter"), "{body}");
            assert!(err.message.contains("not supported"), "{}", err.message);
        }
    }

    #[test]
    fn neutral_values_and_unlisted_fields_pass() {
        checked(json!({
            "guided_json": null, "grammar": "", "min_p": 0, "repetition_penalty": 1.0,
            "min_tokens": 0, "stop_token_ids": [], "suffix": null, "modalities": ["text"],
            "use_beam_search": false, "function_call": "auto",
            "continue_final_message": false, "add_generation_prompt": true,
            "skip_special_tokens": true, "top_n_sigma": -1, "dynatemp_range": 0,
            // What SDKs send by default.
            "user": "u-1", "metadata": {"a": "b"}, "store": false, "service_tier": "auto",
        }))
        .unwrap();
    }

    #[test]
    fn suffix_is_a_completions_field() {
        let suffix = json!({"suffix": "}"});
        assert!(check(suffix.as_object().unwrap(), Shape::Completion).is_err());
        check(suffix.as_object().unwrap(), Shape::Chat).unwrap();
    }
}
