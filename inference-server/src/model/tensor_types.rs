//! ggml's tensor types by name (the one table of them), and a walk of a
//! GGUF file's header (v2/v3, every length bounded by the file's size) that
//! says what candle's reader would not:
//!
//! - which tensor has a type this server cannot run: candle stops at the
//!   first type it does not know with "unknown dtype for tensor 20",
//!   naming neither the tensor nor the type, where a user who brought an
//!   IQ-quant or a ternary file deserves "tensor blk.0.attn_q.weight is
//!   IQ4_NL" (consulted after candle refused a file);
//! - metadata candle would read badly, checked before it reads any: arrays
//!   whose items it would hold at about 32 bytes each whatever their size
//!   in the file (a 1 GiB array of bytes, 32 GiB of memory), nesting deeper
//!   than it reads, and a `general.alignment` of 0 (a division by zero in
//!   candle) or not a power of two.

use std::io::{self, Read, Seek, SeekFrom};

use candle_core::quantized::GgmlDType;

/// ggml's type names by id (ggml.h `enum ggml_type`; ids 4, 5 and 31-33 are
/// retired).
const NAMES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// The types candle's GGUF reader (and so this server) loads.
const LOADED: [GgmlDType; 15] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q8_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q8K,
];

/// ggml's id for a type candle loads (candle keeps its own map, `to_u32`,
/// private to its crate).
const fn id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn supported(ggml_id: u32) -> bool {
    LOADED.iter().any(|&t| id(t) == ggml_id)
}

fn known(id: u32) -> Option<&'static str> {
    NAMES.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

/// ggml's name for type `id`, or `type N` for an id ggml does not define.
pub(crate) fn name(id: u32) -> String {
    known(id).map_or_else(|| format!("type {id}"), str::to_string)
}

/// ggml's name for a type candle loaded (`Q4_K`, where candle's `Debug`
/// says `Q4K`).
pub(crate) fn dtype_name(t: GgmlDType) -> &'static str {
    // Every loaded type is in the table (tested).
    known(id(t)).unwrap_or("unknown")
}

/// The supported types' names, for error messages.
pub(crate) fn supported_names() -> String {
    let mut ids: Vec<u32> = LOADED.iter().map(|&t| id(t)).collect();
    ids.sort_unstable();
    ids.into_iter().map(name).collect::<Vec<_>>().join(", ")
}

/// The first tensor (name, type id) in `file`'s header whose type is not in
/// [`LOADED`]; `None` when all are, or the header cannot be walked (the
/// caller then reports the reader's own error).
pub(crate) fn first_unsupported(file: &mut (impl Read + Seek)) -> Option<(String, u32)> {
    Header::at_start(file)?.walk().ok().flatten()
}

/// Metadata items (array elements, all arrays together) read at most:
/// a real model's vocabulary, scores, types and merges are a few million
/// at most (Gemma 3's 262,144 tokens, three arrays of them).
const MAX_METADATA_ITEMS: u64 = 16 << 20;

/// Nested arrays deeper than candle's reader reads.
const MAX_NESTING: u32 = 64;

/// What is wrong with `file`'s metadata, as (key, problem), before candle
/// reads it; `None` when nothing is, or the header cannot be walked (candle
/// then reports its own error). Leaves `file` at its start.
pub(crate) fn metadata_problem(file: &mut (impl Read + Seek)) -> Option<KeyProblem> {
    let found = Header::at_start(&mut *file)?
        .metadata()
        .ok()
        .flatten()
        .and_then(|(_, problem)| problem);
    file.seek(SeekFrom::Start(0)).ok()?;
    found
}

/// A metadata key and what is wrong with it.
type KeyProblem = (String, String);

struct Header<'a, R> {
    file: &'a mut R,
    size: u64,
    /// Array items walked so far.
    items: u64,
}

/// A problem of the metadata (not of reading it).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(problem: String) -> io::Error {
    io::Error::other(Refused(problem))
}

impl<'a, R: Read + Seek> Header<'a, R> {
    /// `file`'s header, read from its start.
    fn at_start(file: &'a mut R) -> Option<Self> {
        let size = file.seek(SeekFrom::End(0)).ok()?;
        file.seek(SeekFrom::Start(0)).ok()?;
        Some(Header {
            file,
            size,
            items: 0,
        })
    }

    fn walk(&mut self) -> io::Result<Option<(String, u32)>> {
        // A file whose metadata has a problem was refused before candle.
        let Some((tensors, None)) = self.metadata()? else {
            return Ok(None);
        };
        for _ in 0..tensors {
            let name = String::from_utf8_lossy(&self.string()?).into_owned();
            let dims = self.u32()?;
            self.skip(8 * u64::from(dims))?;
            let kind = self.u32()?;
            self.skip(8)?;
            if !supported(kind) {
                return Ok(Some((name, kind)));
            }
        }
        Ok(None)
    }

    /// Reads the header up to its tensor table: the number of tensors, and
    /// the metadata's first problem (see [`metadata_problem`]), where the
    /// walk stops; `None` for a file that is not GGUF v2 or v3.
    fn metadata(&mut self) -> io::Result<Option<(u64, Option<KeyProblem>)>> {
        if self.bytes(4)? != b"GGUF" || !matches!(self.u32()?, 2 | 3) {
            return Ok(None);
        }
        let tensors = self.u64()?;
        let entries = self.u64()?;
        let problem = |key, problem| Ok(Some((tensors, Some((key, problem)))));
        for _ in 0..entries {
            let key = String::from_utf8_lossy(&self.string()?).into_owned();
            let kind = self.u32()?;
            if key == "general.alignment" {
                let alignment = match kind {
                    0 | 1 => u64::from(self.bytes(1)?[0]),
                    2 | 3 => {
                        let b = self.bytes(2)?;
                        u64::from(u16::from_le_bytes([b[0], b[1]]))
                    }
                    4 | 5 => u64::from(self.u32()?),
                    10 | 11 => self.u64()?,
                    _ => {
                        self.skip_value(kind, 0)?;
                        continue;
                    }
                };
                if !alignment.is_power_of_two() {
                    return problem(key, format!("must be a power of two, not {alignment}"));
                }
                continue;
            }
            if let Err(e) = self.skip_value(kind, 0) {
                return match e.get_ref().and_then(|e| e.downcast_ref::<Refused>()) {
                    Some(refused) => problem(key, refused.to_string()),
                    None => Err(e),
                };
            }
        }
        Ok(Some((tensors, None)))
    }

    fn skip_value(&mut self, kind: u32, depth: u32) -> io::Result<()> {
        match kind {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => self.skip_string(),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(refused(format!("arrays nested deeper than {MAX_NESTING}")));
                }
                let item = self.u32()?;
                let len = self.u64()?;
                self.items = self.items.saturating_add(len);
                if self.items > MAX_METADATA_ITEMS {
                    return Err(refused(format!(
                        "an array of {len} items takes the metadata past the {MAX_METADATA_ITEMS} \
                         items read (a vocabulary is a few hundred thousand)"
                    )));
                }
                match item {
                    // Fixed-size items: one bounded skip.
                    0 | 1 | 7 => self.skip(len),
                    2 | 3 => self.skip(len.saturating_mul(2)),
                    4..=6 => self.skip(len.saturating_mul(4)),
                    10..=12 => self.skip(len.saturating_mul(8)),
                    _ => {
                        // Each item takes at least 8 bytes (a string's length).
                        self.check(len.saturating_mul(8))?;
                        (0..len).try_for_each(|_| self.skip_value(item, depth + 1))
                    }
                }
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unknown value type",
            )),
        }
    }

    fn string(&mut self) -> io::Result<Vec<u8>> {
        let len = self.u64()?;
        self.bytes(len)
    }

    fn skip_string(&mut self) -> io::Result<()> {
        let len = self.u64()?;
        self.skip(len)
    }

    /// Fails unless `n` more bytes lie within the file.
    fn check(&mut self, n: u64) -> io::Result<()> {
        let at = self.file.stream_position()?;
        if at.saturating_add(n) > self.size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        self.check(n)?;
        // Short skips (a vocabulary's strings) are read through: a seek
        // would drop a buffered reader's buffer, a read per string.
        if n <= 256 {
            let mut scratch = [0u8; 256];
            return self.file.read_exact(&mut scratch[..n as usize]);
        }
        let n = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        self.file.seek(SeekFrom::Current(n)).map(drop)
    }

    fn bytes(&mut self, n: u64) -> io::Result<Vec<u8>> {
        self.check(n)?;
        let mut buf = vec![0; usize::try_from(n).map_err(|_| io::ErrorKind::InvalidData)?];
        self.file.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.file.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0; 8];
        self.file.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::model::tiny::tiny_gguf;

    /// The tiny model with `tensor`'s type id replaced by `id`.
    fn with_type(tensor: &str, id: u32) -> Vec<u8> {
        let path = tiny_gguf();
        let mut bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(path).unwrap();
        let at = bytes
            .windows(tensor.len())
            .position(|w| w == tensor.as_bytes())
            .unwrap()
            + tensor.len();
        let dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = at + 4 + 8 * dims;
        bytes[kind..kind + 4].copy_from_slice(&id.to_le_bytes());
        bytes
    }

    #[test]
    fn the_first_unsupported_tensor_is_named_with_its_type() {
        let bytes = with_type("blk.1.ffn_up.weight", 20);
        assert_eq!(
            first_unsupported(&mut Cursor::new(bytes)),
            Some(("blk.1.ffn_up.weight".into(), 20))
        );
        assert_eq!(name(20), "IQ4_NL");
        assert_eq!(name(77), "type 77");
    }

    #[test]
    fn a_supported_file_has_none_and_a_truncated_header_gives_up_quietly() {
        let bytes = with_type("blk.1.ffn_up.weight", 12);
        assert_eq!(first_unsupported(&mut Cursor::new(bytes.clone())), None);
        for len in [0, 3, 24, 200, 2000] {
            assert_eq!(first_unsupported(&mut Cursor::new(&bytes[..len])), None);
        }
    }

    #[test]
    fn every_loaded_type_has_its_ggml_name() {
        for t in LOADED {
            assert_ne!(dtype_name(t), "unknown", "{t:?}");
        }
        assert_eq!(dtype_name(GgmlDType::Q4K), "Q4_K");
        assert_eq!(dtype_name(GgmlDType::Q6K), "Q6_K");
        assert_eq!(dtype_name(GgmlDType::BF16), "BF16");
        assert!(supported_names().starts_with("F32, F16, Q4_0, Q4_1, Q5_0"));
    }
}
