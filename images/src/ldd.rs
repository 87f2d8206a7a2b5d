//! The shared libraries a dynamically linked binary loads, as the build
//! host's own loader resolves them (`ldd`).
//!
//! Why `ldd` and not a walk over the ELF `DT_NEEDED` entries: the loader
//! already knows where each library is found on this host (`ld.so.cache`,
//! `RUNPATH`, `ld.so.conf.d`, hwcaps subdirectories) and gives the whole
//! transitive closure; a `DT_NEEDED` walker would have to reimplement that
//! search and could disagree with it. The cost is that `ldd` runs the loader
//! over the binary, which is fine for binaries this build just made.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum LddError {
    #[error("cannot run ldd (is it installed? it comes with the C library): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("ldd failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("ldd finds no {0} on this machine")]
    NotFound(String),
    #[error("unexpected line in ldd's output: {0:?}")]
    Unparsed(String),
}

/// The absolute paths of every library `binary` loads (the loader included,
/// when ldd lists it), in ldd's order; empty for a static binary.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>, LddError> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(LddError::Spawn)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if is_static(&stdout) || is_static(&stderr) {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(LddError::Failed {
            status: output.status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    parse(&stdout)
}

/// glibc's ldd says "not a dynamic executable" (exit 1), musl's and some
/// glibc versions "statically linked".
fn is_static(text: &str) -> bool {
    text.contains("not a dynamic executable") || text.trim() == "statically linked"
}

/// Parses ldd's listing: `NAME => /PATH (0xADDR)` for a library found by
/// name, `/PATH (0xADDR)` for one named by path (the loader), and
/// `NAME (0xADDR)` for the kernel's vDSO, which is in no file and skipped.
pub fn parse(listing: &str) -> Result<Vec<PathBuf>, LddError> {
    let mut paths = Vec::new();
    for line in listing
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
    {
        let (name, resolved) = match line.split_once(" => ") {
            Some((name, resolved)) => (name.trim(), resolved.trim()),
            None => ("", line),
        };
        if resolved == "not found" {
            return Err(LddError::NotFound(name.to_string()));
        }
        let path = strip_address(resolved).ok_or_else(|| LddError::Unparsed(line.into()))?;
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        } else if !name.is_empty() || path.contains('/') || path.contains(' ') {
            // A name that resolved to something other than a path, or a
            // path-like thing that is not absolute: not ldd's format.
            return Err(LddError::Unparsed(line.into()));
        }
    }
    Ok(paths)
}

/// `X (0x7f…)` → `X`; `X` alone (some ldd versions omit addresses) stays.
fn strip_address(text: &str) -> Option<&str> {
    match text.rsplit_once(" (") {
        Some((before, address)) => {
            let hex = address.strip_suffix(')')?.strip_prefix("0x")?;
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then_some(before.trim_end())
        }
        None => Some(text),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GLIBC: &str = "\
\tlinux-vdso.so.1 (0x00007ffd1d5f4000)
\tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007f3e21957000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f59165bd000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f591581e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f59165f0000)
";

    const MUSL: &str = "\
\t/lib/ld-musl-x86_64.so.1 (0x7f2a6c6d3000)
\tlibc.musl-x86_64.so.1 => /lib/ld-musl-x86_64.so.1 (0x7f2a6c6d3000)
";

    #[test]
    fn parses_listings() {
        let cases: [(&str, &[&str]); 4] = [
            (
                GLIBC,
                &[
                    "/lib/x86_64-linux-gnu/libssl.so.3",
                    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                    "/lib/x86_64-linux-gnu/libc.so.6",
                    "/lib64/ld-linux-x86-64.so.2",
                ],
            ),
            (
                MUSL,
                &["/lib/ld-musl-x86_64.so.1", "/lib/ld-musl-x86_64.so.1"],
            ),
            ("\tlibm.so.6 => /lib/libm.so.6\n", &["/lib/libm.so.6"]),
            ("", &[]),
        ];
        for (listing, expected) in cases {
            let paths = parse(listing).unwrap();
            let expected: Vec<PathBuf> = expected.iter().map(PathBuf::from).collect();
            assert_eq!(paths, expected, "{listing}");
        }
    }

    #[test]
    fn a_missing_library_is_named() {
        let listing = "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n";
        assert!(matches!(parse(listing), Err(LddError::NotFound(name)) if name == "libfoo.so.1"));
    }

    #[test]
    fn other_text_is_refused() {
        for listing in [
            "\tlibc.so.6 => libc.so.6 (0x1)\n",
            "ldd: warning: you do not have execution permission\n",
        ] {
            assert!(
                matches!(parse(listing), Err(LddError::Unparsed(_))),
                "{listing}"
            );
        }
    }

    #[test]
    fn static_binaries_need_nothing() {
        assert!(is_static("\tnot a dynamic executable\n"));
        assert!(is_static("\tstatically linked\n"));
        assert!(!is_static(GLIBC));
    }

    proptest! {
        /// Whatever ldd printed, parsing returns; it never panics.
        #[test]
        fn parse_never_panics(listing in "(\\PC{0,40}\n?){0,6}") {
            let _ = parse(&listing);
        }

        /// Every `NAME => PATH (ADDR)` line gives back its path, in order.
        #[test]
        fn resolved_lines_give_their_paths(
            libraries in prop::collection::vec(("[a-z][a-z0-9_+-]{0,12}\\.so(\\.[0-9]){0,2}", "(/[a-z0-9_.-]{1,12}){1,4}", any::<u64>()), 0..8),
        ) {
            let listing: String = libraries
                .iter()
                .map(|(name, path, address)| format!("\t{name} => {path} (0x{address:x})\n"))
                .collect();
            let expected: Vec<PathBuf> = libraries.iter().map(|(_, path, _)| PathBuf::from(path)).collect();
            prop_assert_eq!(parse(&listing).unwrap(), expected);
        }
    }
}
