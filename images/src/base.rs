//! The distroless-style base every server image starts from: no shell, no
//! package manager, only what a dynamically linked binary needs to start and
//! to run as the unprivileged `nonroot` user on a read-only root:
//!
//! - the C runtime: the dynamic loader at the binary's `PT_INTERP` path and
//!   the shared libraries `ldd` resolves, copied from the build host at the
//!   same paths (the binaries were linked against exactly these);
//! - `/etc/passwd` and `/etc/group` with `root` and `nonroot` (65532), so the
//!   numeric user has a name;
//! - `/etc/nsswitch.conf` (`hosts: files dns`) and the host's CA bundle, for
//!   TLS clients: the limiter's `rediss://` connections (OpenSSL, through
//!   native-tls). The control plane reads its JWKS from a file and makes no
//!   TLS calls today;
//! - an empty, sticky, world-writable `/tmp`, for a volume to be mounted on.
//!
//! Everything is owned by root and read-only to `nonroot`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::elf;
use crate::error::BuildError;
use crate::ldd;
use crate::tarball::{Contents, Entry};

/// The uid and gid the images run as (distroless's `nonroot`).
pub const NONROOT: u32 = 65532;

/// Where the CA bundle is, in the image and (Debian, Ubuntu, Alpine, Arch)
/// on the build host.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";
/// Without this file glibc asks DNS before /etc/hosts; Kubernetes writes
/// /etc/hosts for the pod, so files come first, as on a distribution.
const NSSWITCH: &str = "hosts: files dns\n";

/// The files of the runtime `binary` needs from the build host: its loader
/// (`PT_INTERP`) and every library `ldd` lists, as absolute paths. Empty for
/// a static binary.
pub fn runtime_files(binary: &Path) -> Result<BTreeSet<PathBuf>, BuildError> {
    let bytes = std::fs::read(binary).map_err(BuildError::io("read", binary))?;
    let interpreter = elf::interpreter(&bytes).map_err(|source| BuildError::Elf {
        binary: binary.to_path_buf(),
        source,
    })?;
    let Some(interpreter) = interpreter else {
        return Ok(BTreeSet::new());
    };
    let mut files = BTreeSet::from([PathBuf::from(interpreter)]);
    files.extend(ldd::libraries(binary).map_err(|source| BuildError::Ldd {
        binary: binary.to_path_buf(),
        source,
    })?);
    Ok(files)
}

/// The base's own files: users, name service, CA bundle (when `ca_bundle`
/// names a file on the host) and `/tmp`.
pub fn system_entries(ca_bundle: Option<&Path>) -> Result<Vec<Entry>, BuildError> {
    let text = |path: &str, text: &str| Entry::new(path, 0o644, Contents::Bytes(text.into()));
    let mut entries = vec![
        text("/etc/passwd", PASSWD)?,
        text("/etc/group", GROUP)?,
        text("/etc/nsswitch.conf", NSSWITCH)?,
        Entry::directory("/tmp", 0o1777)?,
    ];
    if let Some(bundle) = ca_bundle {
        entries.push(Entry::new(
            CA_BUNDLE,
            0o644,
            Contents::HostFile(bundle.to_path_buf()),
        )?);
    }
    Ok(entries)
}

/// Each runtime file at its own path. Mode 0755: the kernel opens the loader
/// for execution, and libraries keep the mode they have on a distribution.
pub fn library_entries<'a>(
    files: impl IntoIterator<Item = &'a PathBuf>,
) -> Result<Vec<Entry>, BuildError> {
    files
        .into_iter()
        .map(|path| {
            let image_path = path
                .to_str()
                .ok_or_else(|| BuildError::InvalidEntryPath(path.to_string_lossy().into_owned()))?;
            Entry::new(image_path, 0o755, Contents::HostFile(path.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonroot_is_a_user_and_a_group() {
        let user = format!("nonroot:x:{NONROOT}:{NONROOT}:");
        assert!(PASSWD.lines().any(|line| line.starts_with(&user)));
        let group = format!("nonroot:x:{NONROOT}:");
        assert!(GROUP.lines().any(|line| line == group));
        assert!(PASSWD.lines().all(|line| line.split(':').count() == 7));
    }

    #[test]
    fn the_ca_bundle_is_included_only_when_given() {
        let paths = |entries: Vec<Entry>| -> Vec<String> {
            entries.iter().map(|e| e.path().to_string()).collect()
        };
        assert_eq!(
            paths(system_entries(None).unwrap()),
            ["etc/passwd", "etc/group", "etc/nsswitch.conf", "tmp"]
        );
        let with = paths(system_entries(Some(Path::new("/host/ca.crt"))).unwrap());
        assert_eq!(
            with.last().map(String::as_str),
            Some("etc/ssl/certs/ca-certificates.crt")
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn this_test_binary_needs_its_loader_and_libc() {
        let files = runtime_files(&std::env::current_exe().unwrap()).unwrap();
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
        assert!(names.iter().any(|n| n == "libc.so.6"), "{names:?}");
        assert!(
            files.iter().all(|p| p.is_absolute() && p.is_file()),
            "{files:?}"
        );
    }
}
