//! The model server's own key (`--api-key-file`), which the filter presents
//! (`model_server_api_key`): through the gateway a client's key is enough;
//! around it, nothing is; and a gateway whose key the server does not take
//! tells the client it is the gateway's fault, charging nothing.

use maas_testkit::envoy::ScratchDir;
use maas_testkit::private_file::write_private;
use maas_testkit::{get, request, InferenceServer};
use serde_json::json;

use super::{charged, chat_ok, filter_config, gateway_with, usage_of, MODEL};

const KEY: &str = "sk-server-key-client";
const AUTH: &str = "Bearer sk-server-key-client";
const SERVER_KEY: &str = "maas-model-server-5b0e9d2c71f84a36";

/// The server reads its key file at start: the directory may go after.
fn server_with_key() -> InferenceServer {
    let dir = ScratchDir::create().unwrap();
    let file = dir.join("api-key");
    write_private(&file, format!("{SERVER_KEY}\n")).unwrap();
    InferenceServer::start(&["--api-key-file", file.to_str().unwrap()])
}

fn body() -> serde_json::Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
    })
}

#[test]
fn the_filter_presents_the_servers_key_and_nothing_else_gets_in() {
    let server = server_with_key();
    let mut config = filter_config(KEY);
    config["model_server_api_key"] = json!(SERVER_KEY);
    let gateway = gateway_with(&server, config);

    let answer = chat_ok(&gateway, AUTH, &body()).json();
    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(charged(&record), usage_of(&answer["usage"]), "{record}");

    // Around the gateway: the client's own key, or none, is refused.
    let direct = serde_json::to_vec(&body()).unwrap();
    for headers in [
        vec![("content-type", "application/json")],
        vec![
            ("content-type", "application/json"),
            ("authorization", AUTH),
        ],
    ] {
        let r = request(
            "POST",
            &server.url("/v1/chat/completions"),
            &headers,
            Some(&direct),
        );
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    }
    assert_eq!(get(&server.url("/health")).status, 200);
}

#[test]
fn a_gateway_with_the_wrong_server_key_answers_502_and_charges_nothing() {
    let server = server_with_key();
    let mut config = filter_config(KEY);
    config["model_server_api_key"] = json!("maas-model-server-not-the-one");
    let gateway = gateway_with(&server, config);

    let r = gateway.post_json("/v1/chat/completions", &[("authorization", AUTH)], &body());
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), None);
    let error = &r.json()["error"];
    assert_eq!(error["code"], "model_server_credential_rejected", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("model_server_api_key"),
        "{error}"
    );
    let record = gateway.await_access_log(1).remove(0);
    assert_eq!(record["status"], 502, "{record}");
    assert_eq!(record["usage"], "none", "{record}");
    assert_eq!(record["total_tokens"], 0, "{record}");
}
