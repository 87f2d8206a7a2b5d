//! `--api-key-file`: the API answers only callers with the server's key;
//! probes and scrapers need none; a key file that cannot be a key stops
//! the server at start.

use std::process::Command;

use maas_testkit::envoy::ScratchDir;
use maas_testkit::inference::inference_server_binary;
use maas_testkit::private_file::write_private;
use maas_testkit::{get, request, InferenceServer};
use serde_json::json;

use crate::support::*;

const KEY: &str = "maas-model-server-6f1d0c8e2b7a49d3";
/// The key being rotated in, beside [`KEY`].
const NEXT: &str = "maas-model-server-0a9c4e7d1b3f5862";

/// `content` as the owner-only file `name` in `dir`, as a key is kept.
fn key_file(dir: &ScratchDir, name: &str, content: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    write_private(&path, content).unwrap();
    path
}

#[test]
fn with_a_key_file_the_api_answers_only_the_keys_bearer() {
    let dir = ScratchDir::create().unwrap();
    let file = key_file(&dir, "good", &format!("{KEY}\n{NEXT}\n"));
    let server = InferenceServer::start(&["--api-key-file", file.to_str().unwrap()]);
    let body = serde_json::to_vec(&chat_body("Say hi.", json!({"max_tokens": 4}))).unwrap();
    let chat = |headers: &[(&str, &str)]| {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        request(
            "POST",
            &server.url("/v1/chat/completions"),
            &all,
            Some(&body),
        )
    };

    let bearer = format!("Bearer {KEY}");
    let r = chat(&[("authorization", &bearer)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let generated = r.json()["usage"]["completion_tokens"].as_f64().unwrap();

    let wrong = format!("Bearer {KEY}0");
    for (headers, message) in [
        (vec![], "You didn't provide an API key"),
        (vec![("authorization", wrong.as_str())], "Incorrect API key"),
        (vec![("x-api-key", KEY)], "You didn't provide an API key"),
        (vec![("authorization", KEY)], "Incorrect API key"),
    ] {
        let r = chat(&headers);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let error = &r.json()["error"];
        assert_eq!(error["code"], "invalid_api_key", "{headers:?}");
        assert_eq!(error["type"], "invalid_request_error");
        assert!(
            error["message"].as_str().unwrap().starts_with(message),
            "{headers:?}: {error}"
        );
    }
    // Every API route, not only completions; nothing was generated for
    // the refused requests.
    for path in ["/v1/models", "/v1/models/smollm2-135m-instruct"] {
        assert_eq!(get(&server.url(path)).status, 401, "{path}");
        let r = request(
            "GET",
            &server.url(path),
            &[("authorization", &bearer)],
            None,
        );
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let r = request(
        "POST",
        &server.url("/v1/completions"),
        &[("content-type", "application/json")],
        Some(br#"{"model":"smollm2-135m-instruct","prompt":"Hi","max_tokens":2}"#),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let series = format!("inference_generated_tokens_total{{model=\"{MODEL}\"}}");
    assert_eq!(
        metric(&server, &series),
        generated,
        "only the admitted chat generated"
    );

    // While a key is rotated, the file's other line is as good.
    let next = format!("Bearer {NEXT}");
    let r = request(
        "GET",
        &server.url("/v1/models"),
        &[("authorization", &next)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Kubelet probes and Prometheus need no key.
    assert_eq!(get(&server.url("/health")).status, 200);
    assert_eq!(get(&server.url("/metrics")).status, 200);
}

#[test]
fn a_key_file_that_cannot_hold_a_key_stops_the_server_at_start() {
    let dir = ScratchDir::create().unwrap();
    for (file, says) in [
        (
            key_file(&dir, "empty", "\n"),
            "the file holds no key".to_string(),
        ),
        (
            key_file(&dir, "short", "abc123\n"),
            "line 1: the key is 6 characters long; at least 16 are needed".to_string(),
        ),
        (
            key_file(
                &dir,
                "spaced",
                &format!("{KEY}\nmaas model server key 0123"),
            ),
            "line 2: the key has a character other than printable ASCII (byte 4)".to_string(),
        ),
        (dir.join("missing"), "No such file".to_string()),
    ] {
        let out = Command::new(inference_server_binary())
            .args(["--port", "0", "--api-key-file"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{file:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("--api-key-file {}", file.display())) && err.contains(&says),
            "{file:?}: {err}"
        );
    }
}
