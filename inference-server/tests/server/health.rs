//! `/health` describes what is served: the model file's format and size,
//! where the chat template came from, and the memory the process holds.

use std::time::Duration;

use maas_testkit::{default_model, eventually, get, InferenceServer};
use serde_json::json;

use crate::support::*;

#[test]
fn health_reports_the_format_size_and_memory_of_the_embedded_model() {
    let server = InferenceServer::start(&[]);
    let r = get(&server.url("/health"));
    assert_eq!(r.status, 200, "{}", r.text());
    let health = r.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], MODEL);
    assert_eq!(health["architecture"], "llama");
    assert_eq!(health["format"], "Q4_1");
    assert_eq!(
        health["tensor_types"],
        json!({"Q8_0": 1, "F32": 61, "Q4_1": 210})
    );
    assert_eq!(
        health["file_bytes"].as_u64(),
        Some(std::fs::metadata(default_model()).unwrap().len())
    );
    assert_eq!(health["chat_template"], "file");
    assert_loaded_within_bound(&health);
    // The default 4 GiB in blocks of 16 positions of 22.5 KiB each.
    assert_eq!(
        health["memory"]["kv_cache"],
        json!({"blocks": 11650, "block_size": 16, "usage": 0.0, "prefix_caching": true})
    );

    // A running sequence holds KV blocks, and /health shows them.
    let sock = open_stream(&server, &endless_stream());
    eventually(Duration::from_secs(10), || {
        let health = get(&server.url("/health")).json();
        let memory = &health["memory"];
        match (
            memory["kv_cache_bytes"].as_u64(),
            memory["kv_cache"]["usage"].as_f64(),
        ) {
            (Some(b), Some(u)) if b > 0 && u > 0.0 => Ok(()),
            _ => Err(format!("no KV cache reported: {health}")),
        }
    });
    drop(sock);
}

#[test]
fn health_names_the_k_quant_mix_of_the_gemma_file() {
    let server = gemma_server(&[]);
    let health = get(&server.url("/health")).json();
    assert_eq!(health["model"], GEMMA);
    assert_eq!(health["architecture"], "gemma3");
    assert_eq!(health["format"], "Q4_K_M");
    // llama.cpp's Q4_K_M: Q6_K for some matrices, and Q5_0/Q8_0 where a
    // row (640 wide) is not a whole number of 256-value K-quant blocks.
    assert_eq!(
        health["tensor_types"],
        json!({"F32": 109, "Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10})
    );
    assert_loaded_within_bound(&health);
}

/// Loaded and before any request (so no KV cache), the process holds at
/// most 1.2× the model file: packed weights, tokenizer and runtime together
/// (1.11× for SmolLM2 Q4_1 and 1.14× for Gemma 3 when this was written).
fn assert_loaded_within_bound(health: &serde_json::Value) {
    let memory = &health["memory"];
    assert_eq!(memory["kv_cache_bytes"], 0, "{health}");
    let resident = memory["resident_bytes"].as_u64().unwrap_or(0);
    let file = health["file_bytes"].as_u64().unwrap_or(0);
    assert!(resident > 0 && file > 0, "{health}");
    assert!(
        resident as f64 <= 1.2 * file as f64,
        "{resident} bytes resident for a {file}-byte file: {:.3}× (bound 1.2×)",
        resident as f64 / file as f64
    );
}
