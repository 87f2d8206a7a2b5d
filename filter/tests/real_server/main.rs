//! The filter on the real stack: Envoy with the release filter in front of
//! the real inference server (SmolLM2), one key of an unlimited-enough
//! subscription, so what is asserted is what the server computed and what
//! the gateway charged for it.

// Test code may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cut_streams;
mod sampling_fields;
mod structured_outputs;

use maas_testkit::{Gateway, InferenceServer};
use serde_json::json;

pub const MODEL: &str = "smollm2-135m-instruct";

/// Envoy with the release filter routing [`MODEL`] to `server`, with `key`
/// in a subscription whose token limit no test reaches.
pub fn gateway(server: &InferenceServer, key: &str) -> Gateway {
    Gateway::builder()
        .filter_config(json!({
            "models": [MODEL],
            "subscriptions": {
                "team": {"models": [MODEL], "limits": {"tokens": ["10000000/day"]}}
            },
            "keys": [{
                "id": "team-1", "owner": "team", "subscription": "team",
                "sha256": maas_filter::auth::keys::KeyDigest::of(key).to_hex()
            }]
        }))
        .model(MODEL, server.addr())
        .start()
}
