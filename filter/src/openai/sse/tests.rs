//! The SSE usage parser: every split of a stream gives the same result, state
//! stays bounded, strip mode removes only the usage event.

use super::*;
use proptest::prelude::*;

const MAX: usize = 64 * 1024;

const ROLE: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#;
const HELLO: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hello \"usage\" é"},"logprobs":null,"finish_reason":null}],"usage":null}"#;
const STOP: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[ {"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#;
const USAGE: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[ ],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}"#;
const DONE: &str = "data: [DONE]";

const EXPECTED_USAGE: Usage = Usage {
    prompt_tokens: 11,
    completion_tokens: 3,
    total_tokens: 14,
};

/// Joins events with `eol` line endings; the usage event is at `usage_at`.
fn stream(events: &[&str], eol: &str) -> String {
    events
        .iter()
        .map(|event| format!("{}{eol}{eol}", event.replace('\n', eol)))
        .collect()
}

fn openai_events() -> Vec<&'static str> {
    vec![
        ROLE,
        ": keep-alive",
        HELLO,
        "event: message\nid: 7\nretry: 1000\n", /* joined below */
        STOP,
        USAGE,
        DONE,
    ]
}

/// The realistic stream, and the same without its usage event.
fn openai_stream(eol: &str) -> (String, String) {
    let mut events = openai_events();
    // An event with non-data fields before its data.
    let with_fields = format!("event: message\nid: 7\nretry: 1000\n{HELLO}");
    events[3] = Box::leak(with_fields.into_boxed_str());
    let full = stream(&events, eol);
    events.retain(|e| *e != USAGE);
    (full, stream(&events, eol))
}

#[derive(Debug, PartialEq)]
struct Outcome {
    usage: Option<Usage>,
    content_events: u64,
    done: bool,
    output: Option<Vec<u8>>,
}

fn run<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, strip: bool, max: usize) -> Outcome {
    let mut parser = SseUsageParser::new(strip, max);
    let mut output = strip.then(Vec::new);
    for chunk in chunks {
        let out = parser.feed(chunk);
        assert_eq!(out.is_some(), strip);
        assert_bounded(&parser, max);
        if let (Some(output), Some(out)) = (output.as_mut(), out) {
            output.extend_from_slice(&out);
        }
    }
    let out = parser.finish();
    assert_eq!(out.is_some(), strip);
    if let (Some(output), Some(out)) = (output.as_mut(), out) {
        output.extend_from_slice(&out);
    }
    Outcome {
        usage: parser.usage(),
        content_events: parser.content_events(),
        done: parser.saw_done(),
        output,
    }
}

fn assert_bounded(parser: &SseUsageParser, max: usize) {
    assert!(parser.line.len() <= max, "line {}", parser.line.len());
    assert!(parser.data.len() <= max, "data {}", parser.data.len());
    assert!(parser.held.len() <= max, "held {}", parser.held.len());
    assert!(parser.event_bytes <= max || parser.oversized);
}

fn sizes_chunks<'a>(bytes: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = bytes;
    let mut sizes = sizes.iter().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

#[test]
fn an_error_event_is_never_stripped_only_its_usage() {
    let error = r#"{"error":{"message":"cut","code":"generation_failed"},"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
    let input = format!("data: {error}\n\n");
    let out = run([input.as_bytes()], true, 4096);
    assert_eq!(
        out.usage,
        Some(Usage {
            prompt_tokens: 3,
            completion_tokens: 5,
            total_tokens: 8
        })
    );
    assert_eq!(
        String::from_utf8(out.output.unwrap()).unwrap(),
        "data: {\"error\":{\"message\":\"cut\",\"code\":\"generation_failed\"}}\n\n"
    );
}

#[test]
fn a_usage_event_with_a_null_error_is_still_stripped() {
    let usage = r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"error":null}"#;
    let input = format!("data: {usage}\n\ndata: [DONE]\n\n");
    let out = run([input.as_bytes()], true, 4096);
    assert_eq!(out.usage.map(|u| u.total_tokens), Some(3));
    assert_eq!(
        String::from_utf8(out.output.unwrap()).unwrap(),
        "data: [DONE]\n\n"
    );
}

#[test]
fn realistic_stream_at_every_split() {
    for eol in ["\n", "\r\n", "\r"] {
        let (full, stripped) = openai_stream(eol);
        let bytes = full.as_bytes();
        let expected = Outcome {
            usage: Some(EXPECTED_USAGE),
            content_events: 4,
            done: true,
            output: None,
        };
        assert_eq!(run([bytes], false, MAX), expected, "{eol:?}");
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(run([a, b], false, MAX), expected, "{eol:?} split at {at}");
            let strip = run([a, b], true, MAX);
            assert_eq!(strip.usage, expected.usage, "{eol:?} split at {at}");
            assert_eq!(strip.content_events, 4);
            assert!(strip.done);
            assert_eq!(
                String::from_utf8_lossy(strip.output.as_deref().unwrap_or_default()),
                stripped,
                "{eol:?} split at {at}"
            );
        }
        let bytewise = bytes.chunks(1);
        assert_eq!(
            run(bytewise.clone(), false, MAX),
            expected,
            "{eol:?} 1-byte"
        );
        let strip = run(bytewise, true, MAX);
        assert_eq!(
            strip.output.as_deref(),
            Some(stripped.as_bytes()),
            "{eol:?} 1-byte"
        );
    }
}

#[test]
fn crlf_split_after_removed_event_leaves_no_stray_lf() {
    let (full, stripped) = openai_stream("\r\n");
    let usage_end = full.find("\r\n\r\ndata: [DONE]").unwrap() + 3;
    let bytes = full.as_bytes();
    // Split between the `\r` and `\n` of the usage event's blank line.
    let (a, b) = bytes.split_at(usage_end);
    assert!(a.ends_with(b"\r") && b.starts_with(b"\n"));
    let out = run([a, b], true, MAX).output.unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), stripped);
}

#[test]
fn an_empty_chunk_between_cr_and_lf_changes_nothing() {
    let (full, stripped) = openai_stream("\r\n");
    let bytes = full.as_bytes();
    let expected = run([bytes], false, MAX);
    for at in 0..=bytes.len() {
        let (a, b) = bytes.split_at(at);
        let chunks = [a, &[][..], b];
        assert_eq!(run(chunks, false, MAX), expected, "split at {at}");
        let strip = run(chunks, true, MAX);
        assert_eq!(strip.usage, expected.usage, "split at {at}");
        assert_eq!(
            String::from_utf8_lossy(strip.output.as_deref().unwrap_or_default()),
            stripped,
            "split at {at}"
        );
    }
}

#[test]
fn event_kinds() {
    let llama_final = r#"data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1,"id":"x","model":"m","object":"chat.completion.chunk","usage":{"completion_tokens":5,"prompt_tokens":4,"total_tokens":9},"timings":{"predicted_n":5}}"#;
    let llama_stripped = r#"data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1,"id":"x","model":"m","object":"chat.completion.chunk","timings":{"predicted_n":5}}"#;
    /// (name, input, usage, content events, saw [DONE], strip-mode output)
    type Case<'a> = (&'a str, &'a str, Option<Usage>, u64, bool, &'a str);
    let cases: &[Case<'_>] = &[
        (
            "multi-line data is joined with newlines",
            "data: {\"choices\":\ndata: [1],\ndata:\"usage\":{\"prompt_tokens\":1,\ndata: \"completion_tokens\":2}}\n\n",
            Some(Usage::new(1, 2, None)),
            1,
            false,
            "data: {\"choices\":[1]}\n\n",
        ),
        (
            "line breaks inside kept values become data lines",
            "data: {\"choices\":[1,\r\ndata: 2],\"usage\":{\"prompt_tokens\":1}}\r\n\r\n",
            Some(Usage::new(1, 0, None)),
            1,
            false,
            "data: {\"choices\":[1,\r\ndata: 2]}\r\n\r\n",
        ),
        (
            "usage with choices is kept without usage (llama.cpp)",
            &format!("{llama_final}\n\n"),
            Some(Usage::new(4, 5, None)),
            1,
            false,
            &format!("{llama_stripped}\n\n"),
        ),
        (
            "other fields around a rewritten event are kept",
            "event: x\r\ndata: {\"choices\":[{}],\r\ndata: \"usage\":{\"prompt_tokens\":1}}\r\n: c\r\n\r\n",
            Some(Usage::new(1, 0, None)),
            1,
            false,
            "event: x\r\ndata: {\"choices\":[{}]}\r\n: c\r\n\r\n",
        ),
        (
            "escaped usage key is usage",
            "data: {\"choices\":[1],\"us\\u0061ge\":{\"prompt_tokens\":1}}\n\n",
            Some(Usage::new(1, 0, None)),
            1,
            false,
            "data: {\"choices\":[1]}\n\n",
        ),
        (
            "usage-only event without choices is removed",
            "data: {\"usage\":{\"prompt_tokens\":2}}\n\ndata:[DONE]\n\n",
            Some(Usage::new(2, 0, None)),
            0,
            true,
            "data:[DONE]\n\n",
        ),
        (
            "the last usage wins",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2}}\n\n",
            Some(Usage::new(2, 0, None)),
            0,
            false,
            "",
        ),
        (
            "null and unreadable usage do not replace usage",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{}}\n\n",
            Some(Usage::new(1, 0, None)),
            0,
            false,
            "data: {\"choices\":[],\"usage\":null}\n\n",
        ),
        (
            "empty choices with whitespace is not content",
            "data: {\"choices\": [ \n ]}\n\ndata:{\"choices\" :[ {\"delta\":{}}]}\n\n",
            None,
            1,
            false,
            "data: {\"choices\": [ \n ]}\n\ndata:{\"choices\" :[ {\"delta\":{}}]}\n\n",
        ),
        (
            "non-JSON, non-object and nested choices are not content",
            "data: hello\n\ndata: [1]\n\ndata: {\"x\":{\"choices\":[1]}}\n\ndata: {\"choices\":[1]\n\n",
            None,
            0,
            false,
            "data: hello\n\ndata: [1]\n\ndata: {\"x\":{\"choices\":[1]}}\n\ndata: {\"choices\":[1]\n\n",
        ),
        (
            "no data, no event; other fields alone do nothing",
            "\n\n\r\n: [DONE]\n\nevent: done\nid: 1\n\ndata : [DONE]\n\ndatum: [DONE]\n\n",
            None,
            0,
            false,
            "\n\n\r\n: [DONE]\n\nevent: done\nid: 1\n\ndata : [DONE]\n\ndatum: [DONE]\n\n",
        ),
        (
            "a final event without its blank line is flushed",
            "data: {\"choices\":[1]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}",
            Some(Usage::new(3, 0, None)),
            1,
            false,
            "data: {\"choices\":[1]}\n\n",
        ),
        (
            "a final partial line without data is forwarded",
            "data: [DONE]\n\n: bye",
            None,
            0,
            true,
            "data: [DONE]\n\n: bye",
        ),
        (
            "[DONE] with extra space",
            "data:  [DONE] \n\n",
            None,
            0,
            true,
            "data:  [DONE] \n\n",
        ),
    ];
    for (name, input, usage, content, done, stripped) in cases {
        let bytes = input.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            let plain = run([a, b], false, MAX);
            assert_eq!(plain.usage, *usage, "{name} @{at}");
            assert_eq!(plain.content_events, *content, "{name} @{at}");
            assert_eq!(plain.done, *done, "{name} @{at}");
            let strip = run([a, b], true, MAX);
            assert_eq!(
                String::from_utf8_lossy(&strip.output.unwrap_or_default()),
                *stripped,
                "{name} @{at}"
            );
        }
    }
}

#[test]
fn generated_text_is_measured_in_decoded_bytes() {
    let odd = r#"[{"index":0,"delta":{"content":["odd"]}}]"#;
    let cases: [(&str, u64); 9] = [
        (r#"[{"index":0,"delta":{"content":"12345"}}]"#, 5),
        (r#"[{"index":0,"delta":{"content":"\u00e9\n"}}]"#, 3),
        (r#"[{"index":0,"delta":{"content":"\u0030\u0031"}}]"#, 2),
        (
            r#"[{"index":0,"delta":{"role":"assistant","content":null}}]"#,
            0,
        ),
        (
            r#"[{"index":0,"delta":{"reasoning_content":"abc","content":"d"}}]"#,
            4,
        ),
        (r#"[{"index":0,"delta":{"refusal":"no"}}]"#, 2),
        (
            r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}}]"#,
            1 + 7,
        ),
        (r#"[{"index":0,"text":"ab"},{"index":1,"text":"cde"}]"#, 5),
        (odd, odd.len() as u64),
    ];
    for (choices, bytes) in cases {
        let raw: Box<RawValue> = serde_json::from_str(choices).unwrap();
        assert_eq!(generated_text_bytes(&raw), bytes, "{choices}");
    }
    // Through the parser: a chunk of digits counts each digit.
    let mut parser = SseUsageParser::new(false, 1 << 20);
    let digits = r#"data: {"choices":[{"index":0,"delta":{"content":"0123456789"}}]}"#;
    parser.feed(format!("{ROLE}\n\n{digits}\n\n{HELLO}\n\n").as_bytes());
    assert_eq!(parser.content_events(), 3);
    assert_eq!(parser.text_bytes(), 10 + "Hello \"usage\" é".len() as u64);
}

#[test]
fn oversized_events_are_skipped_and_bounded() {
    let big = format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":99}},\"pad\":\"{}\"}}\n\n",
        "x".repeat(4096)
    );
    let input = format!("{HELLO}\n\n{big}{USAGE}\n\n{DONE}\n\n");
    let max = 1024;
    for size in [1, 7, 150, 1000, 5000, input.len()] {
        let sizes = [size];
        let plain = run(sizes_chunks(input.as_bytes(), &sizes), false, max);
        assert_eq!(plain.usage, Some(EXPECTED_USAGE), "size {size}");
        assert_eq!(plain.content_events, 1);
        assert!(plain.done);
        let strip = run(sizes_chunks(input.as_bytes(), &sizes), true, max);
        // The oversized usage event is forwarded untouched; the normal one goes.
        let expected = format!("{HELLO}\n\n{big}{DONE}\n\n");
        assert_eq!(
            String::from_utf8(strip.output.unwrap()).unwrap(),
            expected,
            "size {size}"
        );
    }
    // An endless line never grows the buffers past the bound.
    let mut parser = SseUsageParser::new(true, max);
    let mut forwarded = 0;
    let chunk = [b'a'; 700];
    for _ in 0..100 {
        forwarded += parser.feed(&chunk).unwrap().len();
        assert_bounded(&parser, max);
    }
    forwarded += parser.finish().unwrap().len();
    assert_eq!(forwarded, 70_000);
}

#[test]
fn limit_holds_across_a_split_crlf() {
    // The `\n` of a split `\r\n` is the byte that crosses the limit.
    let input = "data: {}\r\n\r\n";
    let (a, b) = input.as_bytes().split_at(9);
    assert!(a.ends_with(b"\r"));
    let strip = run([a, b], true, a.len());
    assert_eq!(strip.output.as_deref(), Some(input.as_bytes()));
}

#[test]
fn limit_counts_the_event_not_its_blank_line() {
    let event = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5}}\n";
    for (max, seen) in [(event.len(), true), (event.len() - 1, false)] {
        let input = format!("{event}\n");
        assert_eq!(
            run([input.as_bytes()], false, max).usage.is_some(),
            seen,
            "{max}"
        );
    }
}

#[test]
fn non_strip_mode_returns_nothing() {
    let mut parser = SseUsageParser::new(false, MAX);
    assert_eq!(parser.feed(format!("{USAGE}\n\n").as_bytes()), None);
    assert_eq!(parser.finish(), None);
    assert_eq!(parser.usage(), Some(EXPECTED_USAGE));
}

// ---- property tests -------------------------------------------------

fn event() -> impl Strategy<Value = String> {
    let content = "[a-zA-Z \"\\\\é😀:{}\\[\\]]{0,12}".prop_map(|text| {
        let text = serde_json::to_string(&text).unwrap();
        format!(r#"data: {{"id":"c","choices":[{{"index":0,"delta":{{"content":{text}}}}}],"usage":null}}"#)
    });
    let usage = (0u64..1000, 0u64..1000, any::<bool>()).prop_map(|(p, c, with_choices)| {
        let choices = if with_choices { r#"[{"delta":{}}]"# } else { "[]" };
        format!(r#"data: {{"choices":{choices},"usage":{{"prompt_tokens":{p},"completion_tokens":{c}}}}}"#)
    });
    prop_oneof![
        4 => content,
        1 => usage,
        1 => Just(": ping".to_owned()),
        1 => Just("event: x\nid: 1\ndata: {\"choices\":[]}".to_owned()),
        1 => Just("data: {\"choices\":\ndata: [{}]}".to_owned()),
        1 => Just("data: not json".to_owned()),
        1 => Just(String::new()),
    ]
}

fn generated_stream() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(event(), 0..12),
        prop::sample::select(vec!["\n", "\r\n", "\r"]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mut events, eol, done, trailing_blank)| {
            if done {
                events.push(DONE.to_owned());
            }
            let refs: Vec<&str> = events.iter().map(String::as_str).collect();
            let mut text = stream(&refs, eol);
            if !trailing_blank {
                // Drop the last blank line: `finish` must flush the event.
                text.truncate(text.len().saturating_sub(eol.len()));
            }
            text
        })
}

proptest! {
    #[test]
    fn find_line_end_matches_a_byte_loop(
        bytes in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..40),
        start in 0usize..8,
    ) {
        let bytes = bytes.get(start..).unwrap_or_default();
        let naive = bytes.iter().position(|b| *b == b'\n' || *b == b'\r');
        prop_assert_eq!(find_line_end(bytes), naive);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(prop::sample::select(b"data: {}[]\"usagechoices,:\r\n\\0123xy".to_vec()), 0..400),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        sizes in prop::collection::vec(1usize..50, 1..8),
        strip in any::<bool>(),
        max in prop_oneof![0usize..64, Just(MAX)],
    ) {
        let mut bytes = bytes;
        bytes.extend_from_slice(&noise);
        let _ = run(sizes_chunks(&bytes, &sizes), strip, max);
    }

    #[test]
    fn strip_mode_without_usage_is_the_identity(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        sizes in prop::collection::vec(1usize..50, 1..8),
        max in prop_oneof![0usize..64, Just(MAX)],
    ) {
        // Arbitrary bytes almost never hold a usage event: all pass through.
        prop_assume!(!bytes.windows(5).any(|w| w == b"usage"));
        let out = run(sizes_chunks(&bytes, &sizes), true, max).output.unwrap();
        prop_assert_eq!(out, bytes);
    }

    #[test]
    fn chunking_does_not_change_results(
        text in generated_stream(),
        sizes in prop::collection::vec(1usize..40, 1..8),
        strip in any::<bool>(),
    ) {
        let bytes = text.as_bytes();
        let whole = run([bytes], strip, MAX);
        let chunked = run(sizes_chunks(bytes, &sizes), strip, MAX);
        prop_assert_eq!(&chunked, &whole);
        if let Some(output) = &whole.output {
            // What the client gets parses to the same content and no usage.
            let again = run([output.as_slice()], false, MAX);
            prop_assert_eq!(again.usage, None);
            prop_assert_eq!(again.content_events, whole.content_events);
            prop_assert_eq!(again.done, whole.done);
        }
    }
}

/// A Responses API stream as OpenAI and the inference server send it
/// (`event:` lines, nested usage), cut at every byte: the usage comes from
/// `response.completed`, each `….delta` is a content event, and nothing is
/// taken out even in strip mode.
#[test]
fn a_responses_stream_is_read_at_every_split() {
    let events = [
        "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[],\"usage\":null}}",
        "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"type\":\"message\",\"id\":\"msg_1\",\"content\":[]}}",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Par\\u00e9\",\"logprobs\":[]}",
        "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":3,\"item_id\":\"fc_1\",\"output_index\":1,\"delta\":\"{}\"}",
        "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"text\":\"Paré\"}",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":5,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":11,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":3,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":14}}}",
    ];
    let whole = stream(&events, "\n");
    for strip in [false, true] {
        for at in 0..=whole.len() {
            let (a, b) = whole.as_bytes().split_at(at);
            let outcome = run([a, b], strip, MAX);
            assert_eq!(outcome.usage, Some(EXPECTED_USAGE), "split at {at}");
            assert_eq!(outcome.content_events, 2, "split at {at}");
            if let Some(output) = outcome.output {
                assert_eq!(output, whole.as_bytes(), "split at {at}");
            }
        }
    }
    let mut parser = SseUsageParser::new(false, MAX);
    parser.feed(whole.as_bytes());
    parser.finish();
    // "Paré" and "{}": decoded bytes.
    assert_eq!(parser.text_bytes(), 5 + 2);

    // Cut before the response ended: no usage, the deltas seen.
    let cut = stream(&events[..4], "\n");
    let outcome = run([cut.as_bytes()], false, MAX);
    assert_eq!(outcome.usage, None);
    assert_eq!(outcome.content_events, 2);
}
