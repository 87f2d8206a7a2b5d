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

/// The model with one more metadata entry, `key` of GGUF value type
/// `kind` and encoded `value`, first in the header (its entry count
/// raised by one).
fn with_metadata(name: &str, key: &str, kind: u32, value: &[u8]) -> std::path::PathBuf {
    edited_model(name, |b| {
        // magic (4), version (4), tensors (8), then the entry count (8).
        let count = u64::from_le_bytes(b[16..24].try_into().unwrap());
        b[16..24].copy_from_slice(&(count + 1).to_le_bytes());
        let mut entry = Vec::new();
        entry.extend_from_slice(&(key.len() as u64).to_le_bytes());
        entry.extend_from_slice(key.as_bytes());
        entry.extend_from_slice(&kind.to_le_bytes());
        entry.extend_from_slice(value);
        b.splice(24..24, entry);
    })
}

#[test]
fn metadata_candle_would_read_badly_is_refused_naming_its_key() {
    // An alignment of 0: a division by zero in candle's reader.
    let model = with_metadata("alignment-0", "general.alignment", 4, &0u32.to_le_bytes());
    let err = refused(&model);
    assert!(
        err.contains("general.alignment") && err.contains("must be a power of two, not 0"),
        "{err}"
    );
    // 17 million one-byte items: about 32 bytes each once candle holds them.
    let items: u64 = 17 << 20;
    let mut array = Vec::new();
    array.extend_from_slice(&0u32.to_le_bytes()); // u8 items
    array.extend_from_slice(&items.to_le_bytes());
    array.resize(array.len() + items as usize, 7);
    let model = with_metadata("huge-array", "x.huge", 9, &array);
    let err = refused(&model);
    assert!(
        err.contains("x.huge") && err.contains(&format!("an array of {items} items")),
        "{err}"
    );
    // Arrays in arrays, 100,000 deep (each an array of one array).
    let mut nested = Vec::new();
    for _ in 0..100_000 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    nested.extend_from_slice(&4u32.to_le_bytes());
    nested.extend_from_slice(&0u64.to_le_bytes());
    let model = with_metadata("nested", "x.deep", 9, &nested[..]);
    let err = refused(&model);
    assert!(
        err.contains("x.deep") && err.contains("arrays nested deeper than 64"),
        "{err}"
    );
}

/// Sets the rows (`ne[1]`) of `tensor` in the model's tensor table.
fn set_rows(b: &mut [u8], tensor: &[u8], rows: u64) {
    let at = b.windows(tensor.len()).position(|w| w == tensor).unwrap() + tensor.len();
    let dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(dims, 2, "a matrix");
    let ne1 = at + 4 + 8;
    b[ne1..ne1 + 8].copy_from_slice(&rows.to_le_bytes());
}

#[test]
fn a_projection_part_of_the_wrong_size_is_refused_though_the_parts_add_up() {
    // SmolLM2-135M: Q has 576 rows, K and V 192. Q with K's rows and K
    // with Q's add up to the stacked projection's 960, and were taken:
    // sliced by the configured widths, Q's outputs read K's weights.
    let model = edited_model("swapped-qk", |b| {
        set_rows(b, b"blk.0.attn_q.weight", 192);
        set_rows(b, b"blk.0.attn_k.weight", 576);
    });
    let err = refused(&model);
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("192 rows, expected 576"),
        "{err}"
    );
}

#[test]
fn a_size_no_model_has_is_refused_before_anything_is_allocated_for_it() {
    // Four billion layers: a vector of them was allocated before any
    // tensor could say otherwise, and the process aborted.
    let key = b"llama.block_count";
    let model = edited_model("layers", |b| {
        let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        assert_eq!(
            u32::from_le_bytes(b[at..at + 4].try_into().unwrap()),
            4,
            "a u32"
        );
        b[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    });
    let err = refused(&model);
    assert!(
        err.contains("llama.block_count") && err.contains("more than any model has"),
        "{err}"
    );
}
