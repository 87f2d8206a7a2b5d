//! Why a build failed: one variant per cause, each naming the input or file
//! concerned, so `maas-images` can print one line that says what to fix.

use std::io;
use std::path::{Path, PathBuf};

use crate::elf::ElfError;
use crate::ldd::LddError;
use crate::wasm::WasmError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An input file is not there; `hint` says which flag or variable names it
    /// and what makes it.
    #[error("no {what} at {path:?} ({hint})")]
    MissingInput {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },
    #[error("cannot {action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{binary:?}: {source}")]
    Elf {
        binary: PathBuf,
        #[source]
        source: ElfError,
    },
    #[error("cannot list the shared libraries of {binary:?}: {source}")]
    Ldd {
        binary: PathBuf,
        #[source]
        source: LddError,
    },
    #[error("{module:?} is not a proxy-wasm module: {source}")]
    Wasm {
        module: PathBuf,
        #[source]
        source: WasmError,
    },
    #[error("cannot serialise a JSON document: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("invalid registry {0:?}: expected HOST[:PORT][/PATH] in lowercase letters, digits, '.', '_', '-', ':' and '/'")]
    InvalidRegistry(String),
    #[error("invalid tag {0:?}: expected 1 to 128 of letters, digits, '_', '.', '-', not starting with '.' or '-'")]
    InvalidTag(String),
    #[error(
        "invalid path {0:?} in a layer: expected a relative path without '.' or '..' components"
    )]
    InvalidEntryPath(String),
    #[error("{0:?} is in one layer twice")]
    DuplicateEntry(String),
    #[error("no OCI platform name for this machine ({arch}/{os}); build on linux amd64, arm64, ppc64le, s390x or riscv64")]
    UnsupportedPlatform {
        arch: &'static str,
        os: &'static str,
    },
}

impl BuildError {
    /// An `Io` error for `action` on `path`, for `map_err`.
    pub fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
