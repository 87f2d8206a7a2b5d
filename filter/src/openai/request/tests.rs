//! The request body parser and rewriter: table-driven cases and property
//! tests (any valid body parses to its fields; a rewrite reads back with the
//! new values).

use super::*;
use proptest::prelude::*;

fn request(
    model: &str,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stream: bool,
    include_usage: bool,
) -> CompletionRequest<'_> {
    CompletionRequest {
        model: Cow::Borrowed(model),
        max_tokens,
        max_completion_tokens,
        max_output_tokens: None,
        stream,
        include_usage,
        choices: 1,
        prompts: 1,
        n_predict: None,
        null_budget: false,
        media_parts: 0,
        service_tier: None,
        responses: false,
    }
}

#[test]
fn a_null_budget_field_is_rewritten_to_the_budget() {
    // Servers read `null` as "no limit": one that reads only `max_tokens`
    // would ignore the other field's 5.
    let body = r#"{"model":"m","max_tokens":null,"max_completion_tokens":5}"#;
    let req = parse_completion_request(body.as_bytes()).unwrap();
    assert_eq!(req.requested_max_tokens(), Some(5));
    assert!(req.null_budget && req.budget_needs_rewrite());
    let rewrite = BodyRewrite {
        max_tokens: Some(5),
        ..BodyRewrite::default()
    };
    let out = rewrite_completion_request(body.as_bytes(), &rewrite).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"model":"m","max_tokens":5,"max_completion_tokens":5}"#
    );
    let plain = parse_completion_request(br#"{"model":"m","max_tokens":5}"#).unwrap();
    assert!(!plain.null_budget && !plain.budget_needs_rewrite());
}

#[test]
fn an_insertion_and_a_renamed_first_key_at_one_offset_both_apply() {
    let rewrite = BodyRewrite {
        force_include_usage: true,
        budget_as: Some(BudgetField::MaxTokens),
        ..BodyRewrite::default()
    };
    let out = rewrite_completion_request(
        br#"{"max_completion_tokens":5,"stream":true,"model":"m"}"#,
        &rewrite,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"stream_options":{"include_usage":true},"max_tokens":5,"stream":true,"model":"m"}"#
    );
}

#[test]
fn a_chat_template_in_the_request_is_refused() {
    // `{% for i in range(100000) %}{{ messages[0].content }}{% endfor %}`
    // in 80 bytes would be a prompt of millions of tokens.
    let body = r#"{"model":"m","messages":[],"chat_template":"{% for i in range(100000) %}x{% endfor %}"}"#;
    let refused = Err(invalid("chat_template", EXPECT_NO_TEMPLATE));
    assert_eq!(
        parse_completion_request(body.as_bytes()).map(|_| ()),
        refused
    );
    let rewrite = BodyRewrite {
        max_tokens: Some(5),
        ..BodyRewrite::default()
    };
    assert_eq!(
        rewrite_completion_request(body.as_bytes(), &rewrite).map(|_| ()),
        refused
    );
    let null = r#"{"model":"m","messages":[],"chat_template":null}"#;
    assert!(parse_completion_request(null.as_bytes()).is_ok());
    // vLLM before 0.11 also took one from the template's arguments.
    let kwargs = r#"{"model":"m","messages":[],"chat_template_kwargs":{"enable_thinking":false,"chat_template":"{% for i in range(9) %}x{% endfor %}"}}"#;
    assert_eq!(
        parse_completion_request(kwargs.as_bytes()).map(|_| ()),
        Err(invalid("chat_template_kwargs", EXPECT_NO_TEMPLATE))
    );
    let thinking =
        r#"{"model":"m","messages":[],"chat_template_kwargs":{"enable_thinking":false}}"#;
    assert!(parse_completion_request(thinking.as_bytes()).is_ok());
}

#[test]
fn a_field_spelled_in_another_case_is_refused() {
    // Go's encoding/json (Ollama, other Go servers and proxies) matches
    // keys regardless of case, with Unicode's K and long s folded too, and
    // the last one written wins: the gateway would cap one field while the
    // server obeyed another.
    let variant = |f: &str| Err(RequestError::CaseVariantField(f.into()));
    let cases: &[(&str, Result<(), RequestError>)] = &[
        (
            r#"{"model":"m","MAX_TOKENS":100000}"#,
            variant("max_tokens"),
        ),
        (
            r#"{"model":"m","max_tokens":10,"Max_Tokens":100000}"#,
            variant("max_tokens"),
        ),
        (
            r#"{"model":"m","max_to\u212Aens":100000}"#,
            variant("max_tokens"),
        ),
        (
            r#"{"model":"m","max_completion_token\u017F":100000}"#,
            variant("max_completion_tokens"),
        ),
        (r#"{"Model":"other","model":"m"}"#, variant("model")),
        (r#"{"model":"m","N":8}"#, variant("n")),
        (
            r#"{"model":"m","stream":true,"stream_options":{"INCLUDE_USAGE":false}}"#,
            variant(INCLUDE_USAGE_PATH),
        ),
        // Not one of ours in any case: copied through.
        (
            r#"{"model":"m","max_tokens_x":1,"MODELS":2,"Top_P":1}"#,
            Ok(()),
        ),
    ];
    for (body, want) in cases {
        let got = parse_completion_request(body.as_bytes()).map(|_| ());
        assert_eq!(&got, want, "{body}");
        let rewrite = BodyRewrite {
            max_tokens: Some(5),
            force_include_usage: true,
            ..BodyRewrite::default()
        };
        let rewritten = rewrite_completion_request(body.as_bytes(), &rewrite).map(|_| ());
        assert_eq!(&rewritten, want, "the rewrite refuses it too: {body}");
    }
}

#[test]
fn counts_choices_and_prompts() {
    type Counts = Result<(u64, u64), RequestError>;
    let table: &[(&str, Counts)] = &[
        (r#"{"model":"m"}"#, Ok((1, 1))),
        (r#"{"model":"m","n":4}"#, Ok((4, 1))),
        (r#"{"model":"m","n":2,"best_of":5}"#, Ok((5, 1))),
        // llama-server's own count, read before `n`.
        (r#"{"model":"m","n":1,"n_cmpl":4}"#, Ok((4, 1))),
        (r#"{"model":"m","prompt":["a","b"],"n_cmpl":3}"#, Ok((3, 2))),
        (
            r#"{"model":"m","n_cmpl":0}"#,
            Err(invalid("n_cmpl", EXPECT_POSITIVE)),
        ),
        (
            r#"{"model":"m","n_cmpl":2,"n\u005fcmpl":9}"#,
            Err(RequestError::DuplicateField("n_cmpl".into())),
        ),
        (r#"{"model":"m","n":null,"prompt":"hi"}"#, Ok((1, 1))),
        (r#"{"model":"m","prompt":["a","b","c"]}"#, Ok((1, 3))),
        (r#"{"model":"m","prompt":[1,2,3,4]}"#, Ok((1, 1))),
        (
            r#"{"model":"m","prompt":[[1,2],[3],[4]],"n":2}"#,
            Ok((2, 3)),
        ),
        (r#"{"model":"m","prompt":[]}"#, Ok((1, 1))),
        (r#"{"model":"m","n":0}"#, Err(invalid("n", EXPECT_POSITIVE))),
        (
            r#"{"model":"m","best_of":-1}"#,
            Err(invalid("best_of", EXPECT_POSITIVE)),
        ),
        (
            r#"{"model":"m","prompt":7}"#,
            Err(invalid("prompt", EXPECT_PROMPT)),
        ),
        (
            r#"{"model":"m","n":1,"\u006e":9}"#,
            Err(RequestError::DuplicateField("n".into())),
        ),
    ];
    for (body, want) in table {
        let got = parse_completion_request(body.as_bytes()).map(|r| (r.choices, r.prompts));
        assert_eq!(&got, want, "{body}");
    }
    let r = parse_completion_request(br#"{"model":"m","n":3,"prompt":["a","b"]}"#).unwrap();
    assert_eq!(r.completions(), 6);
}

fn invalid(field: &'static str, expected: &'static str) -> RequestError {
    RequestError::InvalidField { field, expected }
}

#[test]
fn parses_valid_bodies() {
    let cases: &[(&str, &str, CompletionRequest<'_>)] = &[
        (
            "minimal",
            r#"{"model":"m"}"#,
            request("m", None, None, false, false),
        ),
        (
            "chat with nested model keys",
            r#" {"messages":[{"role":"user","content":"hi","model":"nested"}],
                 "tools":[{"function":{"name":"f","parameters":{"model":{"type":"string"}}}}],
                 "model":"gpt-4o", "temperature":0.2, "n":1,
                 "max_tokens":100, "stream":true,
                 "stream_options":{"include_usage":true,"continuous_usage_stats":false}} "#,
            request("gpt-4o", Some(100), None, true, true),
        ),
        (
            "escaped keys are the fields the upstream reads",
            r#"{"mo\u0064el":"m","max\u005ftokens":5,"\u0073tream":true}"#,
            request("m", Some(5), None, true, false),
        ),
        (
            "escaped nested key",
            r#"{"model":"m","stream_options":{"include\u005Fusage":true}}"#,
            request("m", None, None, false, true),
        ),
        (
            "nulls are absent (a budget's is marked, to be overwritten)",
            r#"{"model":"m","max_tokens":null,"max_completion_tokens":null,"stream":null,"stream_options":null}"#,
            CompletionRequest {
                null_budget: true,
                ..request("m", None, None, false, false)
            },
        ),
        (
            "a service tier",
            r#"{"model":"m","service_tier":"priority"}"#,
            CompletionRequest {
                service_tier: Some("priority".into()),
                ..request("m", None, None, false, false)
            },
        ),
        (
            "a null service tier is absent",
            r#"{"model":"m","service_tier":null}"#,
            request("m", None, None, false, false),
        ),
        (
            "include_usage null or false",
            r#"{"model":"m","stream":false,"stream_options":{"include_usage":null}}"#,
            request("m", None, None, false, false),
        ),
        (
            "empty stream_options",
            r#"{"model":"m","stream_options":{}}"#,
            request("m", None, None, false, false),
        ),
        (
            "both limits, extremes",
            r#"{"model":"m","max_tokens":0,"max_completion_tokens":18446744073709551615}"#,
            request("m", Some(0), Some(u64::MAX), false, false),
        ),
        (
            "duplicates of other keys are not ours to judge",
            r#"{"model":"m","user":"a","user":"b"}"#,
            request("m", None, None, false, false),
        ),
        (
            "unicode model",
            r#"{"model":"modèle-😀"}"#,
            request("modèle-😀", None, None, false, false),
        ),
    ];
    for (name, body, expected) in cases {
        assert_eq!(
            parse_completion_request(body.as_bytes()).as_ref(),
            Ok(expected),
            "{name}"
        );
    }
}

#[test]
fn model_is_borrowed_unless_escaped() {
    let plain = parse_completion_request(br#"{"model":"gpt-4"}"#).unwrap();
    assert!(matches!(plain.model, Cow::Borrowed("gpt-4")));
    let escaped = parse_completion_request(br#"{"model":"gpt\u002d4"}"#).unwrap();
    assert!(matches!(&escaped.model, Cow::Owned(m) if m == "gpt-4"));
}

#[test]
fn rejects_invalid_bodies() {
    use RequestError::*;
    let count = |field| invalid(field, EXPECT_COUNT);
    let cases: &[(&str, &str, RequestError)] = &[
        ("not an object: array", r#"[{"model":"m"}]"#, NotAnObject),
        ("not an object: string", r#""model""#, NotAnObject),
        ("not an object: null", "null", NotAnObject),
        ("not an object: number", " 12 ", NotAnObject),
        ("missing model", r#"{"max_tokens":1}"#, MissingModel),
        ("null model", r#"{"model":null}"#, MissingModel),
        (
            "only a nested model",
            r#"{"messages":[{"model":"m"}]}"#,
            MissingModel,
        ),
        (
            "empty model",
            r#"{"model":""}"#,
            invalid("model", EXPECT_MODEL),
        ),
        (
            "numeric model",
            r#"{"model":7}"#,
            invalid("model", EXPECT_MODEL),
        ),
        (
            "array model",
            r#"{"model":["m"]}"#,
            invalid("model", EXPECT_MODEL),
        ),
        (
            "negative",
            r#"{"model":"m","max_tokens":-1}"#,
            count("max_tokens"),
        ),
        (
            "float",
            r#"{"model":"m","max_tokens":10.0}"#,
            count("max_tokens"),
        ),
        (
            "exponent",
            r#"{"model":"m","max_tokens":1e3}"#,
            count("max_tokens"),
        ),
        (
            "string",
            r#"{"model":"m","max_tokens":"10"}"#,
            count("max_tokens"),
        ),
        (
            "bool",
            r#"{"model":"m","max_tokens":true}"#,
            count("max_tokens"),
        ),
        (
            "u64 overflow",
            r#"{"model":"m","max_completion_tokens":18446744073709551616}"#,
            count("max_completion_tokens"),
        ),
        (
            "huge integer",
            r#"{"model":"m","max_tokens":100000000000000000000000000000000000000000}"#,
            count("max_tokens"),
        ),
        (
            "stream string",
            r#"{"model":"m","stream":"true"}"#,
            invalid("stream", EXPECT_BOOL),
        ),
        (
            "stream number",
            r#"{"model":"m","stream":1}"#,
            invalid("stream", EXPECT_BOOL),
        ),
        (
            "stream_options array",
            r#"{"model":"m","stream_options":[]}"#,
            invalid("stream_options", EXPECT_OBJECT),
        ),
        (
            "stream_options bool",
            r#"{"model":"m","stream_options":true}"#,
            invalid("stream_options", EXPECT_OBJECT),
        ),
        (
            "include_usage string",
            r#"{"model":"m","stream_options":{"include_usage":"yes"}}"#,
            invalid(INCLUDE_USAGE_PATH, EXPECT_BOOL),
        ),
        (
            "duplicate model",
            r#"{"model":"cheap","messages":[],"model":"expensive"}"#,
            DuplicateField("model".into()),
        ),
        (
            "duplicate model, escaped",
            r#"{"model":"cheap","mo\u0064el":"expensive"}"#,
            DuplicateField("model".into()),
        ),
        (
            "duplicate max_tokens, escaped",
            r#"{"model":"m","max_tokens":1,"max\u005ftokens":100000}"#,
            DuplicateField("max_tokens".into()),
        ),
        (
            "duplicate stream with null",
            r#"{"model":"m","stream":null,"stream":true}"#,
            DuplicateField("stream".into()),
        ),
        (
            "duplicate service_tier",
            r#"{"model":"m","service_tier":"default","service_tier":"priority"}"#,
            DuplicateField("service_tier".into()),
        ),
        (
            "service_tier not a string",
            r#"{"model":"m","service_tier":1}"#,
            invalid("service_tier", EXPECT_STRING),
        ),
        (
            "duplicate include_usage",
            r#"{"model":"m","stream_options":{"include_usage":false,"include_usage":true}}"#,
            DuplicateField(INCLUDE_USAGE_PATH.into()),
        ),
        // vLLM's per-chunk usage counts one choice and one prompt: a stream
        // cut before its final report would be charged that.
        (
            "continuous usage",
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
            invalid(CONTINUOUS_USAGE_PATH, EXPECT_NO_CONTINUOUS_USAGE),
        ),
        (
            "continuous usage, escaped",
            r#"{"model":"m","stream_options":{"continuous\u005fusage_stats":true}}"#,
            invalid(CONTINUOUS_USAGE_PATH, EXPECT_NO_CONTINUOUS_USAGE),
        ),
        (
            "continuous usage, case variant",
            r#"{"model":"m","stream_options":{"Continuous_Usage_Stats":true}}"#,
            CaseVariantField(CONTINUOUS_USAGE_PATH.into()),
        ),
        (
            "continuous usage not a bool",
            r#"{"model":"m","stream_options":{"continuous_usage_stats":1}}"#,
            invalid(CONTINUOUS_USAGE_PATH, EXPECT_BOOL),
        ),
    ];
    for (name, body, expected) in cases {
        assert_eq!(
            parse_completion_request(body.as_bytes()).as_ref(),
            Err(expected),
            "{name}"
        );
    }
}

#[test]
fn rejects_malformed_json_with_position() {
    let cases: &[(&str, &str)] = &[
        ("empty", ""),
        ("whitespace", "  \n"),
        ("truncated", r#"{"model":"m""#),
        ("trailing garbage", r#"{"model":"m"} x"#),
        ("two objects", r#"{"model":"m"}{}"#),
        ("trailing comma", r#"{"model":"m",}"#),
        ("bad escape", r#"{"model":"\x"}"#),
        ("lone surrogate key", r#"{"\ud800":1,"model":"m"}"#),
        ("control character", "{\"model\":\"\u{0}\"}"),
        ("single quotes", "{'model':'m'}"),
    ];
    for (name, body) in cases {
        match parse_completion_request(body.as_bytes()) {
            Err(RequestError::Malformed { message, .. }) => {
                assert!(!message.is_empty(), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let err = parse_completion_request(b"{\n\"model\": x}").unwrap_err();
    assert!(
        matches!(
            err,
            RequestError::Malformed {
                line: 2,
                column: 10,
                ..
            }
        ),
        "{err:?}"
    );
    let invalid_utf8 = parse_completion_request(b"{\"model\":\"\xff\"}");
    assert!(matches!(invalid_utf8, Err(RequestError::Malformed { .. })));
}

#[test]
fn deep_nesting_is_skipped_without_recursion() {
    let depth = 100_000;
    let body = format!(
        r#"{{"model":"m","x":{}{},"stream_options":{{"y":{}{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth),
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let req = parse_completion_request(body.as_bytes()).unwrap();
    assert_eq!(req.model, "m");
    let rewrite = BodyRewrite {
        max_tokens: Some(1),
        force_include_usage: true,
        model: None,
        ..BodyRewrite::default()
    };
    let out = rewrite_completion_request(body.as_bytes(), &rewrite).unwrap();
    assert_eq!(
        out.len(),
        body.len() + r#""max_tokens":1,"include_usage":true,"#.len()
    );
}

#[test]
fn the_budget_rule_says_when_both_fields_must_be_rewritten_and_refuses_zero() {
    // (max_tokens, max_completion_tokens, rewrite needed, zero refused)
    let cases = [
        (None, None, false, false),
        (Some(5), None, false, false),
        (None, Some(7), false, false),
        (Some(5), Some(5), false, false),
        (Some(5), Some(7), true, false),
        (Some(9), Some(7), true, false),
        (Some(0), None, false, true),
        (Some(3), Some(0), true, true),
    ];
    for (max, max_completion, rewrite, refused) in cases {
        let req = request("m", max, max_completion, false, false);
        assert_eq!(
            req.budget_needs_rewrite(),
            rewrite,
            "{max:?} {max_completion:?}"
        );
        assert_eq!(
            req.check_budget_fields().is_err(),
            refused,
            "{max:?} {max_completion:?}"
        );
    }
}

/// llama-server reads `n_predict` before `max_tokens`: it is one more
/// budget field, its negative "unlimited" names no budget (so never the
/// reserved one), and a body naming only it also gets a field other
/// servers read.
#[test]
fn n_predict_is_a_budget_field() {
    // (max_tokens, n_predict) → (requested, rewrite needed)
    let cases = [
        ((None, Some(-1)), (None, true)),
        ((Some(10), Some(-1)), (Some(10), true)),
        ((Some(10), Some(-2)), (Some(10), true)),
        ((Some(10), Some(10)), (Some(10), false)),
        ((Some(10), Some(500)), (Some(10), true)),
        ((Some(500), Some(10)), (Some(10), true)),
        ((None, Some(64)), (Some(64), true)),
        ((Some(7), None), (Some(7), false)),
    ];
    for ((max, n_predict), (requested, rewrite)) in cases {
        let req = CompletionRequest {
            n_predict,
            ..request("m", max, None, false, false)
        };
        assert_eq!(
            req.requested_max_tokens(),
            requested,
            "{max:?} {n_predict:?}"
        );
        assert_eq!(req.budget_needs_rewrite(), rewrite, "{max:?} {n_predict:?}");
        assert!(req.check_budget_fields().is_ok());
    }
    let both = CompletionRequest {
        n_predict: Some(-1),
        ..request("m", Some(10), Some(10), false, false)
    };
    assert!(
        both.budget_needs_rewrite(),
        "max_tokens agree, n_predict not"
    );
    let zero = CompletionRequest {
        n_predict: Some(0),
        ..request("m", Some(10), None, false, false)
    };
    assert_eq!(
        zero.check_budget_fields(),
        Err(invalid("n_predict", EXPECT_N_PREDICT))
    );

    let parsed = |body: &str| parse_completion_request(body.as_bytes()).map(|r| r.n_predict);
    assert_eq!(parsed(r#"{"model":"m","n_predict":-1}"#), Ok(Some(-1)));
    assert_eq!(parsed(r#"{"model":"m","n_predict":null}"#), Ok(None));
    for bad in [r#""-1""#, "1.5", "true", "-9223372036854775809"] {
        assert_eq!(
            parsed(&format!(r#"{{"model":"m","n_predict":{bad}}}"#)),
            Err(invalid("n_predict", EXPECT_N_PREDICT)),
            "{bad}"
        );
    }
    assert_eq!(
        parsed(r#"{"model":"m","n_predict":5,"n\u005fpredict":-1}"#),
        Err(RequestError::DuplicateField("n_predict".into()))
    );
}

/// Whatever `n_predict` asked for, it leaves with the reserved cap, and a
/// field every server reads is added beside it when the body has none.
#[test]
fn the_cap_goes_into_n_predict_too() {
    let cap = BodyRewrite {
        max_tokens: Some(64),
        ..BodyRewrite::default()
    };
    let cases: &[(&str, BudgetField, &str)] = &[
        (
            r#"{"model":"m","n_predict":-1,"max_tokens":64}"#,
            BudgetField::MaxTokens,
            r#"{"model":"m","n_predict":64,"max_tokens":64}"#,
        ),
        (
            r#"{"model":"m","n_predict":-1}"#,
            BudgetField::MaxTokens,
            r#"{"max_tokens":64,"model":"m","n_predict":64}"#,
        ),
        (
            r#"{"model":"m","n_predict":9000}"#,
            BudgetField::MaxCompletionTokens,
            r#"{"max_completion_tokens":64,"model":"m","n_predict":64}"#,
        ),
        (
            r#"{"n_predict" : null,"model":"m","max_completion_tokens":1}"#,
            BudgetField::MaxTokens,
            r#"{"n_predict" : 64,"model":"m","max_completion_tokens":64}"#,
        ),
    ];
    for (body, field, expected) in cases {
        let cap = BodyRewrite {
            insert_as: *field,
            ..cap
        };
        let out = rewrite_completion_request(body.as_bytes(), &cap).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), *expected, "{body}");
        let read = parse_completion_request(&out).unwrap();
        assert_eq!(read.n_predict, Some(64), "{body}");
        assert_eq!(read.requested_max_tokens(), Some(64), "{body}");
        assert!(!read.budget_needs_rewrite(), "{body}");
    }
}

#[test]
fn media_parts_of_messages_are_counted() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":[
        {"type":"text","text":"compare"},
        {"type":"image_url","image_url":{"url":"https://example.com/a.png","detail":"high"}},
        {"type":"image_url","image_url":{"url":"https://example.com/b.png"}}]}]}"#;
    assert_eq!(
        parse_completion_request(body.as_bytes())
            .unwrap()
            .media_parts,
        2
    );
    assert_eq!(
        parse_completion_request(br#"{"model":"m","prompt":"hi"}"#)
            .unwrap()
            .media_parts,
        0
    );
    assert_eq!(
        parse_completion_request(br#"{"model":"m","messages":"hi"}"#),
        Err(invalid("messages", media::EXPECT_MESSAGES))
    );
    assert_eq!(
        parse_completion_request(br#"{"model":"m","messages":[],"messag\u0065s":[]}"#),
        Err(RequestError::DuplicateField("messages".into()))
    );
}

/// llama.cpp's prompt objects carry images and audio its bytes do not
/// bound: each counts as a media part.
#[test]
fn media_of_llama_cpp_prompt_objects_are_counted() {
    let media = |body: &str| parse_completion_request(body.as_bytes()).map(|r| r.media_parts);
    assert_eq!(
        media(
            r#"{"model":"m","prompt":[{"prompt_string":"<__media__> what?","multimodal_data":["aGk=","aGk="]},"plain",{"prompt_string":"x","multimodal_data":null}]}"#
        ),
        Ok(2)
    );
    assert_eq!(
        media(r#"{"model":"m","prompt":[{"prompt_string":"x","multimodal_data":"aGk="}]}"#),
        Ok(1)
    );
    assert!(matches!(
        media(r#"{"model":"m","prompt":[{"multimodal_data":[],"Multimodal_Data":["aGk="]}]}"#),
        Err(RequestError::DuplicateField(_))
    ));
    assert_eq!(
        media(r#"{"model":"m","prompt":[[1,2,3]]}"#),
        Ok(0),
        "token arrays"
    );
}

#[test]
fn per_request_processor_settings_are_refused() {
    assert_eq!(
        parse_completion_request(br#"{"model":"m","mm_processor_kwargs":{"max_pixels":99999999}}"#),
        Err(invalid("mm_processor_kwargs", EXPECT_NO_PROCESSOR_KWARGS))
    );
    assert!(parse_completion_request(br#"{"model":"m","mm_processor_kwargs":null}"#).is_ok());
    assert_eq!(
        parse_completion_request(
            br#"{"model":"m","media_io_kwargs":{"video":{"num_frames":512}}}"#
        ),
        Err(invalid("media_io_kwargs", EXPECT_NO_PROCESSOR_KWARGS))
    );
}

#[test]
fn requested_max_tokens_is_the_smaller() {
    let cases = [
        (None, None, None),
        (Some(5), None, Some(5)),
        (None, Some(7), Some(7)),
        (Some(5), Some(7), Some(5)),
        (Some(9), Some(7), Some(7)),
    ];
    for (max, max_completion, expected) in cases {
        let req = request("m", max, max_completion, false, false);
        assert_eq!(
            req.requested_max_tokens(),
            expected,
            "{max:?} {max_completion:?}"
        );
    }
}

#[test]
fn rewrites_in_place() {
    let cap = |n| BodyRewrite {
        max_tokens: Some(n),
        ..BodyRewrite::default()
    };
    let usage = BodyRewrite {
        force_include_usage: true,
        ..BodyRewrite::default()
    };
    let both = BodyRewrite {
        max_tokens: Some(64),
        force_include_usage: true,
        ..BodyRewrite::default()
    };
    let renamed = BodyRewrite {
        model: Some("gpt-4o-prod"),
        ..BodyRewrite::default()
    };
    let cases: &[(&str, &str, BodyRewrite, &str)] = &[
        (
            "a provider's name for the model",
            r#"{"model" : "gpt-4o", "n":1}"#,
            renamed,
            r#"{"model" : "gpt-4o-prod", "n":1}"#,
        ),
        (
            "nothing to do",
            r#"{ "model" : "m" }"#,
            BodyRewrite::default(),
            r#"{ "model" : "m" }"#,
        ),
        (
            "add max_tokens",
            r#"{"model":"m"}"#,
            cap(10),
            r#"{"max_tokens":10,"model":"m"}"#,
        ),
        (
            "replace both limits, keep spacing",
            r#"{"model":"m", "max_tokens" : 4096 ,"max_completion_tokens":null}"#,
            cap(0),
            r#"{"model":"m", "max_tokens" : 0 ,"max_completion_tokens":0}"#,
        ),
        (
            "replace escaped key's value",
            r#"{"model":"m","max\u005ftokens":4096}"#,
            cap(u64::MAX),
            r#"{"model":"m","max\u005ftokens":18446744073709551615}"#,
        ),
        (
            "add stream_options",
            r#"{"model":"m","stream":true}"#,
            usage,
            r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#,
        ),
        (
            "null stream_options",
            r#"{"model":"m","stream_options":null}"#,
            usage,
            r#"{"model":"m","stream_options":{"include_usage":true}}"#,
        ),
        (
            "empty stream_options",
            r#"{"model":"m","stream_options":{ }}"#,
            usage,
            r#"{"model":"m","stream_options":{"include_usage":true }}"#,
        ),
        (
            "keep other stream options",
            r#"{"model":"m","stream_options":{"continuous_usage_stats":true}}"#,
            usage,
            r#"{"model":"m","stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
        ),
        (
            "replace include_usage false",
            r#"{"model":"m","stream_options":{"x":1,"include_usage": false}}"#,
            usage,
            r#"{"model":"m","stream_options":{"x":1,"include_usage": true}}"#,
        ),
        (
            "both, inserted together",
            r#"{"model":"m"}"#,
            both,
            r#"{"max_tokens":64,"stream_options":{"include_usage":true},"model":"m"}"#,
        ),
        (
            "both, in place",
            r#"{"stream_options":{"include_usage":null},"model":"m","max_completion_tokens":9000}"#,
            both,
            r#"{"stream_options":{"include_usage":true},"model":"m","max_completion_tokens":64}"#,
        ),
        (
            "empty object",
            "{}",
            both,
            r#"{"max_tokens":64,"stream_options":{"include_usage":true}}"#,
        ),
    ];
    for (name, body, rewrite, expected) in cases {
        let out = rewrite_completion_request(body.as_bytes(), rewrite).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), *expected, "{name}");
    }
}

#[test]
fn the_cap_goes_into_the_fields_the_body_names_or_the_one_asked_for() {
    use BudgetField::{MaxCompletionTokens, MaxTokens};
    let cap = BodyRewrite {
        max_tokens: Some(64),
        ..BodyRewrite::default()
    };
    let cases: &[(&str, BudgetField, &str)] = &[
        // Neither named: the field the backend reads is added.
        (
            r#"{"model":"m"}"#,
            MaxTokens,
            r#"{"max_tokens":64,"model":"m"}"#,
        ),
        (
            r#"{"model":"m"}"#,
            MaxCompletionTokens,
            r#"{"max_completion_tokens":64,"model":"m"}"#,
        ),
        // Named: capped where the client put it, whatever the backend prefers.
        (
            r#"{"model":"m","max_tokens":900}"#,
            MaxCompletionTokens,
            r#"{"model":"m","max_tokens":64}"#,
        ),
        (
            r#"{"model":"m","max_completion_tokens":900}"#,
            MaxTokens,
            r#"{"model":"m","max_completion_tokens":64}"#,
        ),
        (
            r#"{"model":"m","max_tokens":null}"#,
            MaxCompletionTokens,
            r#"{"model":"m","max_tokens":64}"#,
        ),
    ];
    for (body, field, expected) in cases {
        let cap = BodyRewrite {
            insert_as: *field,
            ..cap
        };
        let out = rewrite_completion_request(body.as_bytes(), &cap).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), *expected, "{body} {field:?}");
        let read = parse_completion_request(&out).unwrap();
        assert_eq!(read.requested_max_tokens(), Some(64), "{body} {field:?}");
    }
    let both = BodyRewrite {
        max_tokens: Some(8),
        insert_as: MaxCompletionTokens,
        force_include_usage: true,
        ..BodyRewrite::default()
    };
    let out = rewrite_completion_request(b"{}", &both).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        r#"{"max_completion_tokens":8,"stream_options":{"include_usage":true}}"#
    );
}

#[test]
fn a_budget_under_the_field_the_upstream_does_not_read_is_renamed() {
    use BudgetField::{MaxCompletionTokens, MaxTokens};
    let to = |field| BodyRewrite {
        model: Some("up"),
        budget_as: Some(field),
        ..BodyRewrite::default()
    };
    let cases: &[(&str, BudgetField, &str)] = &[
        (
            r#"{"model":"m","max_completion_tokens":5}"#,
            MaxTokens,
            r#"{"model":"up","max_tokens":5}"#,
        ),
        (
            r#"{"max_tokens" : 7 ,"model":"m"}"#,
            MaxCompletionTokens,
            r#"{"max_completion_tokens" : 7 ,"model":"up"}"#,
        ),
        // An escaped spelling is one key: renamed whole.
        (
            "{\"model\":\"m\",\"max\\u005fcompletion_tokens\"\n:\t9}",
            MaxTokens,
            "{\"model\":\"up\",\"max_tokens\"\n:\t9}",
        ),
        // The field it reads is there: nothing to rename.
        (
            r#"{"model":"m","max_tokens":3,"max_completion_tokens":3}"#,
            MaxTokens,
            r#"{"model":"up","max_tokens":3,"max_completion_tokens":3}"#,
        ),
        (
            r#"{"model":"m","max_tokens":3}"#,
            MaxTokens,
            r#"{"model":"up","max_tokens":3}"#,
        ),
        // No budget named (only llama.cpp's): the gateway inserts one before.
        (
            r#"{"model":"m","n_predict":3}"#,
            MaxTokens,
            r#"{"model":"up","n_predict":3}"#,
        ),
    ];
    for (body, field, expected) in cases {
        let out = rewrite_completion_request(body.as_bytes(), &to(*field)).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), *expected, "{body} {field:?}");
        let read = parse_completion_request(&out).unwrap();
        let before = parse_completion_request(body.as_bytes()).unwrap();
        assert_eq!(read.requested_max_tokens(), before.requested_max_tokens());
    }
    // With a cap in the same pass: the value and the key both change.
    let both = BodyRewrite {
        max_tokens: Some(4),
        ..to(MaxTokens)
    };
    let out =
        rewrite_completion_request(br#"{"max_completion_tokens":900,"model":"m"}"#, &both).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        r#"{"max_tokens":4,"model":"up"}"#
    );
}

#[test]
fn rewrite_refuses_what_parse_refuses_for_its_fields() {
    let both = BodyRewrite {
        max_tokens: Some(1),
        force_include_usage: true,
        model: None,
        ..BodyRewrite::default()
    };
    let cases: &[(&str, RequestError)] = &[
        (
            r#"{"model":"m","max_tokens":1,"max\u005ftokens":2}"#,
            RequestError::DuplicateField("max_tokens".into()),
        ),
        (
            r#"{"model":"m","stream_options":{"include_usage":false,"include\u005fusage":false}}"#,
            RequestError::DuplicateField(INCLUDE_USAGE_PATH.into()),
        ),
        (
            r#"{"model":"m","stream_options":"yes"}"#,
            invalid("stream_options", EXPECT_OBJECT),
        ),
        ("[]", RequestError::NotAnObject),
    ];
    for (body, expected) in cases {
        assert_eq!(
            rewrite_completion_request(body.as_bytes(), &both).as_ref(),
            Err(expected),
            "{body}"
        );
    }
    assert!(matches!(
        rewrite_completion_request(br#"{"model":"m"} {}"#, &both),
        Err(RequestError::Malformed { .. })
    ));
}

#[test]
fn push_u64_writes_decimal() {
    for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX - 1, u64::MAX] {
        let mut out = Vec::new();
        push_u64(&mut out, n);
        assert_eq!(out, n.to_string().into_bytes());
    }
}

// ---- property tests -------------------------------------------------

/// Spells a key, sometimes with one character escaped as `\u00XX`.
fn spelling(name: &'static str) -> impl Strategy<Value = String> {
    (any::<bool>(), 0..name.len()).prop_map(move |(escape, at)| {
        let mut key = String::from("\"");
        for (i, c) in name.chars().enumerate() {
            if escape && i == at {
                key.push_str(&format!("\\u{:04x}", c as u32));
            } else {
                key.push(c);
            }
        }
        key.push('"');
        key
    })
}

fn whitespace() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", " ", "\n  ", "\t", "\r\n"])
}

fn count() -> impl Strategy<Value = (String, Option<u64>)> {
    prop_oneof![
        Just(("null".to_owned(), None)),
        any::<u64>().prop_map(|n| (n.to_string(), Some(n))),
    ]
}

fn flag() -> impl Strategy<Value = (String, bool)> {
    prop::sample::select(vec![("null", false), ("false", false), ("true", true)])
        .prop_map(|(raw, value)| (raw.to_owned(), value))
}

fn stream_options_value() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        Just(("null".to_owned(), false)),
        Just(("{}".to_owned(), false)),
        (spelling("include_usage"), flag()).prop_map(|(key, (raw, value))| {
            (
                format!(r#"{{"other":[1,{{"include_usage":true}}], {key}: {raw}}}"#),
                value,
            )
        }),
        flag().prop_map(|(raw, value)| (format!(r#"{{"include_usage":{raw}}}"#), value)),
    ]
}

/// Entries the gateway does not read; they must come through unchanged.
const OTHER_ENTRIES: [&str; 5] = [
    r#""messages": [{"role":"user","content":"say \"model\": \u00e9"}, {"model":"nested"}]"#,
    r#""temperature":0.70"#,
    r#""tools":[{"type":"function","function":{"name":"f","parameters":{"max_tokens":{"type":"integer"}}}}]"#,
    r#""n" : 1"#,
    r#""user":"x\ny""#,
];

#[derive(Debug, Clone)]
struct Body {
    text: String,
    max_tokens: Option<Option<u64>>,
    max_completion_tokens: Option<Option<u64>>,
    stream: bool,
    include_usage: bool,
    others: Vec<&'static str>,
}

fn valid_body() -> impl Strategy<Value = Body> {
    (
        spelling("model"),
        prop::option::of((spelling("max_tokens"), count())),
        prop::option::of((spelling("max_completion_tokens"), count())),
        prop::option::of((spelling("stream"), flag())),
        prop::option::of((spelling("stream_options"), stream_options_value())),
        prop::sample::subsequence(OTHER_ENTRIES.to_vec(), 0..=OTHER_ENTRIES.len()),
        whitespace(),
    )
        .prop_flat_map(|(model, max, max_c, stream, options, others, ws)| {
            let mut entries = vec![format!("{model}:{ws}\"gpt-4o\"")];
            if let Some((key, (raw, _))) = &max {
                entries.push(format!("{key}:{raw}"));
            }
            if let Some((key, (raw, _))) = &max_c {
                entries.push(format!("{key}:{ws}{raw}"));
            }
            if let Some((key, (raw, _))) = &stream {
                entries.push(format!("{key}:{raw}"));
            }
            if let Some((key, (raw, _))) = &options {
                entries.push(format!("{key}{ws}:{raw}"));
            }
            entries.extend(others.iter().map(|e| (*e).to_owned()));
            let body = Body {
                text: String::new(),
                max_tokens: max.map(|(_, (_, v))| v),
                max_completion_tokens: max_c.map(|(_, (_, v))| v),
                stream: stream.is_some_and(|(_, (_, v))| v),
                include_usage: options.is_some_and(|(_, (_, v))| v),
                others,
            };
            (Just(entries).prop_shuffle(), Just(body), Just(ws))
        })
        .prop_map(|(entries, mut body, ws)| {
            body.text = format!("{ws}{{{ws}{}{ws}}}{ws}", entries.join(&format!(",{ws}")));
            body
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_completion_request(&body);
        let _ = rewrite_completion_request(&body, &BodyRewrite { max_tokens: Some(1), force_include_usage: true, ..BodyRewrite::default() });
    }

    #[test]
    fn json_like_bytes_never_panic(body in r#"[{}\[\]",:0-9a-z\\ -]{0,64}"#) {
        let _ = parse_completion_request(body.as_bytes());
        let _ = rewrite_completion_request(body.as_bytes(), &BodyRewrite { max_tokens: Some(1), force_include_usage: true, ..BodyRewrite::default() });
    }

    #[test]
    fn parses_generated_bodies(body in valid_body()) {
        let req = parse_completion_request(body.text.as_bytes()).unwrap();
        prop_assert_eq!(req.model, "gpt-4o");
        prop_assert_eq!(req.max_tokens, body.max_tokens.flatten());
        prop_assert_eq!(req.max_completion_tokens, body.max_completion_tokens.flatten());
        prop_assert_eq!(req.stream, body.stream);
        prop_assert_eq!(req.include_usage, body.include_usage);
    }

    #[test]
    fn a_renamed_budget_is_the_same_budget_under_the_field_asked_for(
        body in valid_body(),
        completion_field in any::<bool>(),
    ) {
        let field = if completion_field { BudgetField::MaxCompletionTokens } else { BudgetField::MaxTokens };
        let rewrite = BodyRewrite { budget_as: Some(field), ..BodyRewrite::default() };
        let out = rewrite_completion_request(body.text.as_bytes(), &rewrite).unwrap();
        let before = parse_completion_request(body.text.as_bytes()).unwrap();
        let after = parse_completion_request(&out).unwrap();
        prop_assert_eq!(after.requested_max_tokens(), before.requested_max_tokens());
        let named = body.max_tokens.is_some() || body.max_completion_tokens.is_some();
        let top: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&out).unwrap();
        let present = top.contains_key(field.as_str());
        prop_assert_eq!(present, named, "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn rewrite_round_trips(
        body in valid_body(),
        max_tokens in prop::option::of(any::<u64>()),
        force_include_usage in any::<bool>(),
        model in prop::option::of("[a-zA-Z0-9./:\"\\\\-]{1,24}"),
    ) {
        let rewrite = BodyRewrite { max_tokens, force_include_usage, model: model.as_deref(), ..BodyRewrite::default() };
        let out = rewrite_completion_request(body.text.as_bytes(), &rewrite).unwrap();
        let req = parse_completion_request(&out).unwrap();
        prop_assert_eq!(&req.model, model.as_deref().unwrap_or("gpt-4o"));
        prop_assert_eq!(req.stream, body.stream);
        prop_assert_eq!(req.include_usage, body.include_usage || force_include_usage);
        match max_tokens {
            None => {
                prop_assert_eq!(req.max_tokens, body.max_tokens.flatten());
                prop_assert_eq!(req.max_completion_tokens, body.max_completion_tokens.flatten());
            }
            Some(n) => {
                prop_assert_eq!(req.requested_max_tokens(), Some(n));
                let neither = body.max_tokens.is_none() && body.max_completion_tokens.is_none();
                prop_assert_eq!(req.max_tokens, (neither || body.max_tokens.is_some()).then_some(n));
                prop_assert_eq!(req.max_completion_tokens, body.max_completion_tokens.map(|_| n));
            }
        }
        // Entries we do not read come through byte for byte.
        let out = String::from_utf8(out).unwrap();
        for entry in &body.others {
            prop_assert!(out.contains(entry), "{entry} missing from {out}");
        }
        // Nothing is re-encoded: same JSON once our fields are removed.
        let strip = |text: &str| {
            let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
            for f in FIELDS { v.remove(f); }
            v
        };
        prop_assert_eq!(strip(&out), strip(&body.text));
    }
}
