//! Reproducible tar archives: what a layer holds, and the `oci-archive` of a
//! layout. The same entries give the same bytes whatever order they come in
//! and whatever the files on disk say about themselves: entries are sorted by
//! path, every parent directory is present (before its children), and owner,
//! mode and mtime are the ones given here, never the build host's.

use std::collections::{btree_map, BTreeMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::error::BuildError;

/// Mode of the directories added as parents (and of `/`-style directories).
pub const DIR_MODE: u32 = 0o755;

/// What an entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Directory,
    Bytes(Vec<u8>),
    /// A file on the build host, read when the archive is written (symlinks
    /// followed: the archive holds the target's bytes at this entry's path).
    HostFile(PathBuf),
}

/// One file or directory in an archive. Owned by root unless
/// [`Entry::owned_by`] says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the archive's root, `/`-separated, no trailing slash.
    path: String,
    contents: Contents,
    mode: u32,
    uid: u64,
    gid: u64,
}

impl Entry {
    /// `path` may start with `/` (an absolute path in the image); it is made
    /// relative, as layer tarballs store it.
    pub fn new(path: &str, mode: u32, contents: Contents) -> Result<Self, BuildError> {
        Ok(Self {
            path: normalize(path)?,
            contents,
            mode,
            uid: 0,
            gid: 0,
        })
    }

    pub fn directory(path: &str, mode: u32) -> Result<Self, BuildError> {
        Self::new(path, mode, Contents::Directory)
    }

    pub fn owned_by(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// `/usr/lib/x` and `usr/lib/x/` → `usr/lib/x`; `.`, `..` or an empty path
/// are refused (an image path means one place).
fn normalize(path: &str) -> Result<String, BuildError> {
    let invalid = || BuildError::InvalidEntryPath(path.into());
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => parts.push(part.to_str().ok_or_else(invalid)?),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid())
            }
        }
    }
    if parts.is_empty() || path.split('/').any(|part| part == "." || part == "..") {
        return Err(invalid());
    }
    Ok(parts.join("/"))
}

/// Writes `entries` (plus any missing parent directories) as a tar stream to
/// `out`, each with modification time `mtime`, and returns `out`.
pub fn write_tar<W: Write>(entries: Vec<Entry>, mtime: u64, out: W) -> Result<W, BuildError> {
    let mut builder = tar::Builder::new(out);
    for entry in complete(entries)?.into_values() {
        append(&mut builder, &entry, mtime)?;
    }
    builder.into_inner().map_err(BuildError::io(
        "finish a tar stream in",
        Path::new("memory"),
    ))
}

/// The entries by path, with a root-owned [`DIR_MODE`] directory for every
/// parent that was not listed itself. A path given twice is an error.
fn complete(entries: Vec<Entry>) -> Result<BTreeMap<String, Entry>, BuildError> {
    let mut by_path = BTreeMap::new();
    for entry in entries {
        if let Some(previous) = by_path.insert(entry.path.clone(), entry) {
            return Err(BuildError::DuplicateEntry(previous.path));
        }
    }
    let parents: Vec<String> = by_path
        .keys()
        .flat_map(|path| {
            path.match_indices('/')
                .map(|(at, _)| path[..at].to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for parent in parents {
        if let btree_map::Entry::Vacant(slot) = by_path.entry(parent) {
            let directory = Entry::directory(slot.key(), DIR_MODE)?;
            slot.insert(directory);
        }
    }
    Ok(by_path)
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    entry: &Entry,
    mtime: u64,
) -> Result<(), BuildError> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(mtime);
    let written = Path::new(&entry.path);
    let fail = BuildError::io("write to a tar stream", written);
    match &entry.contents {
        Contents::Directory => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{}/", entry.path), std::io::empty())
                .map_err(fail)
        }
        Contents::Bytes(bytes) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            builder
                .append_data(&mut header, &entry.path, bytes.as_slice())
                .map_err(fail)
        }
        Contents::HostFile(source) => {
            let file = File::open(source).map_err(BuildError::io("open", source))?;
            let len = file
                .metadata()
                .map_err(BuildError::io("read the size of", source))?
                .len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(len);
            // `take`: a file that grows while it is read cannot overrun the
            // size the header announced.
            builder
                .append_data(&mut header, &entry.path, file.take(len))
                .map_err(fail)
        }
    }
}

/// One entry of an archive as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// As stored: relative, directories ending in `/`.
    pub path: String,
    pub directory: bool,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
}

/// The entries of the tar `tar`, in order: the reader side of [`write_tar`],
/// for checking what a layer or an archive holds.
pub fn list(tar: &[u8]) -> std::io::Result<Vec<Listed>> {
    tar::Archive::new(tar)
        .entries()?
        .map(|entry| {
            let entry = entry?;
            let header = entry.header();
            Ok(Listed {
                path: entry.path()?.to_string_lossy().into_owned(),
                directory: header.entry_type().is_dir(),
                mode: header.mode()?,
                uid: header.uid()?,
                gid: header.gid()?,
                mtime: header.mtime()?,
                size: header.size()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: u32, bytes: &[u8]) -> Entry {
        Entry::new(path, mode, Contents::Bytes(bytes.to_vec())).unwrap()
    }

    /// (path, type, mode, uid, gid, mtime, size) of each entry, in order.
    fn listing(tar: &[u8]) -> Vec<(String, char, u32, u64, u64, u64, u64)> {
        list(tar)
            .unwrap()
            .into_iter()
            .map(|e| {
                let kind = if e.directory { 'd' } else { 'f' };
                (e.path, kind, e.mode, e.uid, e.gid, e.mtime, e.size)
            })
            .collect()
    }

    #[test]
    fn the_same_entries_in_any_order_give_the_same_bytes() {
        let entries = vec![
            file("/etc/passwd", 0o644, b"root:x:0:0::/:/sbin/nologin\n"),
            file("/usr/local/bin/x", 0o755, b"\x7fELF"),
            Entry::directory("/tmp", 0o1777).unwrap(),
        ];
        let mut reversed = entries.clone();
        reversed.reverse();
        let a = write_tar(entries, 0, Vec::new()).unwrap();
        let b = write_tar(reversed, 0, Vec::new()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn parents_come_first_with_fixed_owner_mode_and_mtime() {
        let tar = write_tar(
            vec![
                file("usr/local/bin/x", 0o755, b"abc"),
                Entry::directory("tmp", 0o1777).unwrap(),
                file("etc/group", 0o644, b"g").owned_by(65532, 65532),
            ],
            1_700_000_000,
            Vec::new(),
        )
        .unwrap();
        let t = 1_700_000_000;
        assert_eq!(
            listing(&tar),
            vec![
                ("etc/".into(), 'd', 0o755, 0, 0, t, 0),
                ("etc/group".into(), 'f', 0o644, 65532, 65532, t, 1),
                ("tmp/".into(), 'd', 0o1777, 0, 0, t, 0),
                ("usr/".into(), 'd', 0o755, 0, 0, t, 0),
                ("usr/local/".into(), 'd', 0o755, 0, 0, t, 0),
                ("usr/local/bin/".into(), 'd', 0o755, 0, 0, t, 0),
                ("usr/local/bin/x".into(), 'f', 0o755, 0, 0, t, 3),
            ]
        );
    }

    #[test]
    fn host_files_are_read_at_their_size_under_the_given_path() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("lib.so");
        std::fs::write(&source, b"library bytes").unwrap();
        let tar = write_tar(
            vec![Entry::new("/lib/x.so", 0o755, Contents::HostFile(source)).unwrap()],
            0,
            Vec::new(),
        )
        .unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().unwrap();
        assert_eq!(
            entries.next().unwrap().unwrap().path().unwrap(),
            Path::new("lib/")
        );
        let mut lib = entries.next().unwrap().unwrap();
        let mut bytes = Vec::new();
        lib.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, b"library bytes");
    }

    #[test]
    fn paths_are_normalized_or_refused() {
        for (given, expected) in [
            ("/usr/lib/x", Some("usr/lib/x")),
            ("usr/lib/x/", Some("usr/lib/x")),
            ("tmp", Some("tmp")),
            ("/", None),
            ("", None),
            ("usr/../etc", None),
            ("./etc", None),
        ] {
            assert_eq!(normalize(given).ok().as_deref(), expected, "{given:?}");
        }
    }

    #[test]
    fn a_path_given_twice_is_an_error() {
        let result = write_tar(
            vec![
                file("etc/passwd", 0o644, b"a"),
                file("/etc/passwd", 0o644, b"b"),
            ],
            0,
            Vec::new(),
        );
        assert!(matches!(result, Err(BuildError::DuplicateEntry(path)) if path == "etc/passwd"));
    }
}
