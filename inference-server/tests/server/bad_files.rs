//! A model file the server cannot run (cut short, not a GGUF at all, or a
//! tensor type we have no kernel for) stops the server at start with exit
//! status 1 and a message naming the problem, never a panic or a server
//! that listens without a model.

use std::path::Path;
use std::process::Command;

use maas_testkit::inference_server_binary;

use crate::support::edited_model;

/// Starts the server on `model`; returns its stderr after asserting it
/// exited with status 1 without panicking.
fn refused(model: &Path) -> String {
    let out = Command::new(inference_server_binary())
        .arg("--model")
        .arg(model)
        .args(["--port", "0"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    std::fs::remove_file(model).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn a_truncated_file_names_the_first_tensor_it_lacks() {
    // Half the file: the header and the first tensors are whole.
    let model = edited_model("truncated", |b| b.truncate(b.len() / 2));
    let err = refused(&model);
    assert!(
        err.contains("cannot load") && err.contains("tensor blk.") && err.contains("remaining"),
        "{err}"
    );
    // Cut inside the header: the header itself is reported.
    let model = edited_model("truncated-header", |b| b.truncate(1000));
    let err = refused(&model);
    assert!(err.contains("not a readable GGUF file"), "{err}");
}

#[test]
fn a_file_that_is_not_gguf_is_refused() {
    let model = edited_model("not-gguf", |b| b[..4].copy_from_slice(b"PK\x03\x04"));
    let err = refused(&model);
    assert!(err.contains("not a readable GGUF file"), "{err}");
}

#[test]
fn an_unsupported_tensor_type_is_named_with_the_tensor() {
    let tensor = b"blk.0.attn_q.weight";
    let model = edited_model("iq4-nl", |b| {
        // The tensor table entry: name, n_dims (u32), dims (u64 each),
        // then the type (u32), here set to ggml's IQ4_NL (20).
        let at = b.windows(tensor.len()).position(|w| w == tensor).unwrap() + tensor.len();
        let dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let kind = at + 4 + 8 * dims;
        b[kind..kind + 4].copy_from_slice(&20u32.to_le_bytes());
    });
    let err = refused(&model);
    assert!(
        err.contains("tensor blk.0.attn_q.weight: its type IQ4_NL is not one this server runs")
            && err.contains("Q4_K"),
        "{err}"
    );
}
