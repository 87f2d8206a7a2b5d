//! A proxy-wasm module that does nothing, for exercising Envoy and the
//! harness without the real filter (the filter's tests need the filter; the
//! harness's own tests, and a bench baseline, do not). Envoy loads it, calls
//! `proxy_on_vm_start`/`proxy_on_configure` (both succeed, whatever the
//! configuration) and lets every request through untouched. Its source, as
//! compiled by `wat::parse_str`:
//!
//! ```text
//! (module
//!   (memory (export "memory") 1)
//!   (func (export "proxy_abi_version_0_2_1"))
//!   (func (export "malloc") (param i32) (result i32) (i32.const 1024))
//!   (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
//!   (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
//!   (func (export "proxy_on_context_create") (param i32 i32))
//! )
//! ```
//!
//! `malloc` is required by the host even though the module never asks for data.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The compiled module (182 bytes).
pub const PASSTHROUGH_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x14, 0x04, 0x60, 0x00, 0x00, 0x60, 0x01,
    0x7f, 0x01, 0x7f, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f, 0x60, 0x02, 0x7f, 0x7f, 0x00, 0x03, 0x06,
    0x05, 0x00, 0x01, 0x02, 0x02, 0x03, 0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x70, 0x06, 0x06, 0x6d,
    0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x17, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x5f, 0x61, 0x62,
    0x69, 0x5f, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x5f, 0x30, 0x5f, 0x32, 0x5f, 0x31, 0x00,
    0x00, 0x06, 0x6d, 0x61, 0x6c, 0x6c, 0x6f, 0x63, 0x00, 0x01, 0x11, 0x70, 0x72, 0x6f, 0x78, 0x79,
    0x5f, 0x6f, 0x6e, 0x5f, 0x76, 0x6d, 0x5f, 0x73, 0x74, 0x61, 0x72, 0x74, 0x00, 0x02, 0x12, 0x70,
    0x72, 0x6f, 0x78, 0x79, 0x5f, 0x6f, 0x6e, 0x5f, 0x63, 0x6f, 0x6e, 0x66, 0x69, 0x67, 0x75, 0x72,
    0x65, 0x00, 0x03, 0x17, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x5f, 0x6f, 0x6e, 0x5f, 0x63, 0x6f, 0x6e,
    0x74, 0x65, 0x78, 0x74, 0x5f, 0x63, 0x72, 0x65, 0x61, 0x74, 0x65, 0x00, 0x04, 0x0a, 0x17, 0x05,
    0x02, 0x00, 0x0b, 0x05, 0x00, 0x41, 0x80, 0x08, 0x0b, 0x04, 0x00, 0x41, 0x01, 0x0b, 0x04, 0x00,
    0x41, 0x01, 0x0b, 0x02, 0x00, 0x0b,
];

/// Writes [`PASSTHROUGH_WASM`] into the temp dir and returns its path. The
/// name carries a hash of the bytes, so every test process shares one file and
/// a changed module never meets a stale one.
pub fn passthrough_wasm_file() -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
    let hash = PASSTHROUGH_WASM
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
    let path = std::env::temp_dir().join(format!("maas-passthrough-{hash:016x}.wasm"));
    if std::fs::read(&path).is_ok_and(|bytes| bytes == PASSTHROUGH_WASM) {
        return Ok(path);
    }
    // Write then rename, so a parallel test never loads a half-written module.
    let partial = path.with_extension(format!(
        "{}-{}.partial",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&partial, PASSTHROUGH_WASM)?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_wasm_module_with_the_proxy_wasm_exports() {
        assert_eq!(&PASSTHROUGH_WASM[..8], b"\0asm\x01\0\0\0");
        let text = String::from_utf8_lossy(PASSTHROUGH_WASM);
        for export in [
            "memory",
            "proxy_abi_version_0_2_1",
            "malloc",
            "proxy_on_vm_start",
            "proxy_on_configure",
            "proxy_on_context_create",
        ] {
            assert!(text.contains(export), "{export}");
        }
        assert_eq!(
            std::fs::read(passthrough_wasm_file().expect("written")).expect("read"),
            PASSTHROUGH_WASM
        );
    }
}
