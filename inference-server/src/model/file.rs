//! What the served GGUF file is, as `/health` reports it: its architecture,
//! its quantization under llama.cpp's name (`general.file_type`, e.g.
//! `Q4_K_M`), how many tensors it holds of each ggml type, and its size.
//!
//! Built by the loader from the header it reads anyway (metadata and tensor
//! table, no tensor data), so neither loading nor a health check reads it
//! twice.

use std::collections::BTreeMap;

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Serialize;

use super::tensor_types;

const KEY_ARCHITECTURE: &str = "general.architecture";
const KEY_FILE_TYPE: &str = "general.file_type";

/// llama.cpp's file types (`enum llama_ftype` in include/llama.h, named as
/// `llama-quantize` names them). Ids 4-6 and 33-35 are retired there.
const FILE_TYPES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (7, "Q8_0"),
    (8, "Q5_0"),
    (9, "Q5_1"),
    (10, "Q2_K"),
    (11, "Q3_K_S"),
    (12, "Q3_K_M"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (15, "Q4_K_M"),
    (16, "Q5_K_S"),
    (17, "Q5_K_M"),
    (18, "Q6_K"),
    (19, "IQ2_XXS"),
    (20, "IQ2_XS"),
    (21, "Q2_K_S"),
    (22, "IQ3_XS"),
    (23, "IQ3_XXS"),
    (24, "IQ1_S"),
    (25, "IQ4_NL"),
    (26, "IQ3_S"),
    (27, "IQ3_M"),
    (28, "IQ2_S"),
    (29, "IQ2_M"),
    (30, "IQ4_XS"),
    (31, "IQ1_M"),
    (32, "BF16"),
    (36, "TQ1_0"),
    (37, "TQ2_0"),
    (38, "MXFP4_MOE"),
    (39, "NVFP4"),
    (40, "Q1_0"),
    (41, "Q2_0"),
];

/// The static description of the model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelFile {
    /// `general.architecture`, e.g. `llama` or `gemma3`.
    pub architecture: Option<String>,
    /// `general.file_type` under llama.cpp's name; `unknown(N)` for a number
    /// llama.cpp does not define, `None` when the file does not say.
    pub format: Option<String>,
    /// Tensors per ggml type, e.g. `{"Q4_K": 27, "Q6_K": 9, "F32": 61}`.
    pub tensor_types: BTreeMap<&'static str, usize>,
    pub file_bytes: u64,
}

impl ModelFile {
    /// Describes the file whose header is `content`.
    pub(crate) fn from_header(content: &Content, file_bytes: u64) -> Self {
        let mut tensor_types = BTreeMap::new();
        for info in content.tensor_infos.values() {
            *tensor_types
                .entry(tensor_types::dtype_name(info.ggml_dtype))
                .or_insert(0) += 1;
        }
        let md = &content.metadata;
        Self {
            architecture: md.get(KEY_ARCHITECTURE).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                _ => None,
            }),
            format: md.get(KEY_FILE_TYPE).map(|v| match integer(v) {
                Some(n) => file_type_name(n),
                None => "unknown(not an integer)".to_string(),
            }),
            tensor_types,
            file_bytes,
        }
    }
}

/// An integer metadata value of any width (writers differ: llama.cpp's
/// converter writes `general.file_type` as u32, others as i32 or u64).
fn integer(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(n) => Some(n.into()),
        Value::U16(n) => Some(n.into()),
        Value::U32(n) => Some(n.into()),
        Value::U64(n) => Some(n),
        Value::I8(n) => u64::try_from(n).ok(),
        Value::I16(n) => u64::try_from(n).ok(),
        Value::I32(n) => u64::try_from(n).ok(),
        Value::I64(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

/// llama.cpp's name for file type `n`, or `unknown(n)`.
pub fn file_type_name(n: u64) -> String {
    FILE_TYPES
        .iter()
        .find(|(id, _)| u64::from(*id) == n)
        .map_or_else(|| format!("unknown({n})"), |(_, name)| (*name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_types_are_named_as_llama_cpp_names_them() {
        // Spot checks against include/llama.h, around the retired ids.
        for (n, name) in [
            (0, "F32"),
            (3, "Q4_1"),
            (4, "unknown(4)"),
            (7, "Q8_0"),
            (15, "Q4_K_M"),
            (18, "Q6_K"),
            (32, "BF16"),
            (33, "unknown(33)"),
            (36, "TQ1_0"),
            (1024, "unknown(1024)"),
        ] {
            assert_eq!(file_type_name(n), name, "file type {n}");
        }
    }

    #[test]
    fn the_table_has_no_repeated_ids_or_names() {
        for (i, (id, name)) in FILE_TYPES.iter().enumerate() {
            for (other_id, other_name) in &FILE_TYPES[i + 1..] {
                assert!(id < other_id, "ids out of order at {id}");
                assert_ne!(name, other_name);
            }
        }
    }

    #[test]
    fn integer_metadata_of_any_width_is_read() {
        assert_eq!(integer(&Value::U32(15)), Some(15));
        assert_eq!(integer(&Value::I32(7)), Some(7));
        assert_eq!(integer(&Value::U64(3)), Some(3));
        assert_eq!(integer(&Value::I32(-1)), None);
        assert_eq!(integer(&Value::String("15".into())), None);
    }

    #[test]
    fn the_tiny_model_is_described_from_its_header() {
        let path = crate::model::tiny::tiny_gguf();
        let file = crate::model::load_gguf(&path, None).unwrap().file;
        let bytes = std::fs::metadata(&path).unwrap().len();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.architecture.as_deref(), Some("llama"));
        assert_eq!(file.file_bytes, bytes);
        for dtype in ["Q4_1", "Q4_0", "Q8_0", "F32"] {
            assert!(file.tensor_types.contains_key(dtype), "{file:?}");
        }
    }
}
