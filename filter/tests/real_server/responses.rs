//! The Responses API (`/v1/responses`) through the gateway to the real
//! inference server: charged exactly what the server reports, whole and
//! streamed; capped where the server reads the budget; and what names
//! state outside the body refused before anything is reserved.

use serde_json::{json, Value};

use super::{charged, filter_config, gateway_with, post_raw_to, read_until, MODEL};
use maas_testkit::InferenceServer;

const KEY: &str = "sk-responses-key";
const AUTH: &str = "Bearer sk-responses-key";

/// A Responses `usage` object as `(input, output)`.
fn usage_of(usage: &Value) -> (u64, u64) {
    (
        usage["input_tokens"].as_u64().unwrap(),
        usage["output_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn responses_are_charged_what_the_server_reports_whole_and_streamed() {
    let server = InferenceServer::start(&[]);
    let mut config = filter_config(KEY);
    // A cap the subscription sets: the request names no budget, so the
    // gateway writes this one in, where the server reads it.
    config["subscriptions"]["team"]["max_tokens"] = json!({"cap": 5, "mode": "clamp"});
    let gateway = gateway_with(&server, config);
    let body =
        json!({"model": MODEL, "input": "Write a long story about a dragon.", "temperature": 0});

    let r = gateway.post_json("/v1/responses", &[("authorization", AUTH)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let whole = r.json();
    assert_eq!(whole["status"], "incomplete", "{whole}");
    assert_eq!(whole["max_output_tokens"], 5, "{whole}");
    let reported = usage_of(&whole["usage"]);
    assert_eq!(reported.1, 5, "{whole}");
    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(charged(&record), reported, "{record}");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = gateway.post_json("/v1/responses", &[("authorization", AUTH)], &streamed);
    assert_eq!(r.status, 200, "{}", r.text());
    let events: Vec<Value> = r
        .sse_data()
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete", "{last}");
    // The usage reaches the client: the API always sends it.
    assert_eq!(usage_of(&last["response"]["usage"]), reported);
    let record = gateway.await_access_log(2).remove(1);
    assert_eq!(charged(&record), reported, "{record}");
}

/// A request whose prompt is not in its body cannot be bounded by it:
/// refused before anything is reserved, so the server sees nothing.
#[test]
fn what_the_body_does_not_hold_is_refused_at_the_gateway() {
    let server = InferenceServer::start(&[]);
    let gateway = gateway_with(&server, filter_config(KEY));
    for (extra, param) in [
        (
            json!({"previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (json!({"tools": [{"type": "web_search"}]}), "tools"),
        (json!({"background": true}), "background"),
        (
            json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input",
        ),
    ] {
        let mut body = json!({"model": MODEL, "input": "Hi", "max_output_tokens": 8});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = gateway.post_json("/v1/responses", &[("authorization", AUTH)], &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(param), "{body}: {message}");
    }
    let records = gateway.await_access_log(4);
    assert!(
        records.iter().all(|r| r["outcome"] == "rejected"),
        "{records:?}"
    );
    let text = maas_testkit::get(&server.url("/metrics")).text();
    let served = maas_testkit::prometheus::metric(&text, "inference_prompt_tokens_total", &[]);
    assert_eq!(
        served.unwrap_or(0.0),
        0.0,
        "the server computed a refused request"
    );
}

/// A stream cut after its first text, before the event with its usage:
/// charged an estimate from what was sent, never more than was reserved.
#[test]
fn a_cut_responses_stream_is_charged_an_estimate() {
    let server = InferenceServer::start(&[]);
    let gateway = gateway_with(&server, filter_config(KEY));
    let body = json!({"model": MODEL, "input": "Write a long story about a dragon.",
                      "max_output_tokens": 64, "stream": true, "temperature": 0})
    .to_string();
    let mut conn = post_raw_to(gateway.addr(), "/v1/responses", KEY, &body);
    let head = read_until(&mut conn, |seen| {
        seen.contains("response.output_text.delta")
    });
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(conn);
    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(record["usage"], "estimated", "{record}");
    let (prompt, total) = (
        record["prompt_tokens"].as_u64().unwrap(),
        record["total_tokens"].as_u64().unwrap(),
    );
    assert!(total > prompt, "the text sent is charged: {record}");
    assert!(total - prompt <= 64, "never past the reservation: {record}");
}
