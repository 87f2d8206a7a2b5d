//! A content-addressed blob directory (`blobs/sha256/<hex>`), the heart of an
//! OCI image layout. Blobs are streamed to a temporary file while they are
//! hashed and renamed to their digest when complete, so a blob on disk is
//! always whole, and a layer (a 100 MB model included) is never held in
//! memory. Storing the same content twice is a no-op.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use serde::Serialize;

use crate::digest::{Digest, HashingWriter};
use crate::error::BuildError;
use crate::oci::{self, Descriptor};
use crate::tarball::{self, Entry};

/// A layer as a manifest lists it, and as the image config's `diff_ids`
/// lists it (the digest of the tar before compression).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
}

pub struct BlobStore {
    /// `<root>/blobs/sha256`.
    dir: PathBuf,
}

impl BlobStore {
    /// The blob directory under `root`, created if missing.
    pub fn create(root: &Path) -> Result<Self, BuildError> {
        let dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(BuildError::io("create", &dir))?;
        Ok(Self { dir })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Stores `bytes` as a blob of `media_type`.
    pub fn put(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, BuildError> {
        let ((), digest, size) = self.stream(|out| {
            out.write_all(bytes)
                .map_err(BuildError::io("write", Path::new("a blob")))
        })?;
        Ok(Descriptor::new(media_type, digest, size))
    }

    /// Stores `value` as compact JSON (fixed field order: the same value is
    /// the same blob).
    pub fn put_json<T: Serialize>(
        &self,
        media_type: &str,
        value: &T,
    ) -> Result<Descriptor, BuildError> {
        let bytes = serde_json::to_vec(value).map_err(BuildError::Serialize)?;
        self.put(media_type, &bytes)
    }

    /// Stores a copy of the file at `source`, byte for byte.
    pub fn put_file(&self, media_type: &str, source: &Path) -> Result<Descriptor, BuildError> {
        let ((), digest, size) = self.stream(|out| {
            let mut file = File::open(source).map_err(BuildError::io("open", source))?;
            std::io::copy(&mut file, out).map_err(BuildError::io("copy", source))?;
            Ok(())
        })?;
        Ok(Descriptor::new(media_type, digest, size))
    }

    /// Stores `entries` as a gzipped tar layer. The gzip header is fixed
    /// (no name, mtime 0, OS "unknown"), so the same entries always give the
    /// same digest with the same compressor (pinned by Cargo.lock).
    pub fn put_layer(&self, entries: Vec<Entry>, mtime: u64) -> Result<Layer, BuildError> {
        let (diff_id, digest, size) = self.stream(|out| {
            let gzip = GzBuilder::new().mtime(0).write(out, Compression::default());
            let tar = tarball::write_tar(entries, mtime, HashingWriter::new(gzip))?;
            let (gzip, uncompressed, _) = tar.finish();
            gzip.finish()
                .map_err(BuildError::io("compress", Path::new("a layer")))?;
            Ok(uncompressed)
        })?;
        Ok(Layer {
            descriptor: Descriptor::new(oci::LAYER_TAR_GZIP, digest, size),
            diff_id,
        })
    }

    /// Makes the blob `digest` of `other` a blob of this store: a hard link
    /// where the file system allows one (layouts share the base layer and the
    /// model without copying them), a copy otherwise.
    pub fn import(&self, other: &BlobStore, digest: &Digest) -> Result<(), BuildError> {
        let target = self.path(digest);
        if target.exists() {
            return Ok(());
        }
        let source = other.path(digest);
        if fs::hard_link(&source, &target).is_err() {
            fs::copy(&source, &target).map_err(BuildError::io("copy", &source))?;
        }
        Ok(())
    }

    /// Writes what `write` produces to a temporary file, then names it by its
    /// digest. Returns what `write` returned, the digest and the size.
    fn stream<T>(
        &self,
        write: impl FnOnce(&mut HashingWriter<BufWriter<File>>) -> Result<T, BuildError>,
    ) -> Result<(T, Digest, u64), BuildError> {
        let partial = self.dir.join(format!(".partial-{}", std::process::id()));
        let file = File::create(&partial).map_err(BuildError::io("create", &partial))?;
        let mut out = HashingWriter::new(BufWriter::new(file));
        let result = write(&mut out).and_then(|value| {
            let (buffered, digest, size) = out.finish();
            buffered
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|file| file.sync_all())
                .map_err(BuildError::io("write", &partial))?;
            Ok((value, digest, size))
        });
        match result {
            Ok((value, digest, size)) => {
                let target = self.path(&digest);
                fs::rename(&partial, &target).map_err(BuildError::io("rename", &partial))?;
                Ok((value, digest, size))
            }
            Err(error) => {
                let _ = fs::remove_file(&partial);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;
    use crate::tarball::Contents;

    fn entries() -> Vec<Entry> {
        vec![
            Entry::new(
                "/etc/passwd",
                0o644,
                Contents::Bytes(b"root:x:0:0\n".to_vec()),
            )
            .unwrap(),
            Entry::directory("/tmp", 0o1777).unwrap(),
        ]
    }

    #[test]
    fn a_layer_is_named_by_its_gzip_and_carries_the_digest_of_its_tar() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::create(dir.path()).unwrap();
        let layer = store.put_layer(entries(), 0).unwrap();
        let compressed = fs::read(store.path(&layer.descriptor.digest)).unwrap();
        assert_eq!(Digest::of(&compressed), layer.descriptor.digest);
        assert_eq!(compressed.len() as u64, layer.descriptor.size);
        // Fixed gzip header: magic, deflate, no flags, mtime 0, OS unknown.
        assert_eq!(compressed[..8], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        assert_eq!(compressed[9], 255);
        let mut tar = Vec::new();
        GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(Digest::of(&tar), layer.diff_id);
        assert_eq!(layer.descriptor.media_type, oci::LAYER_TAR_GZIP);
    }

    #[test]
    fn the_same_layer_twice_is_one_blob_with_one_digest() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = BlobStore::create(a.path())
            .unwrap()
            .put_layer(entries(), 0)
            .unwrap();
        let store = BlobStore::create(b.path()).unwrap();
        let second = store.put_layer(entries(), 0).unwrap();
        assert_eq!(first, second);
        assert_eq!(store.put_layer(entries(), 0).unwrap(), second);
        let blobs: Vec<_> = fs::read_dir(b.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert_eq!(blobs.len(), 1);
    }

    #[test]
    fn imported_blobs_keep_their_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from = BlobStore::create(a.path()).unwrap();
        let to = BlobStore::create(b.path()).unwrap();
        let descriptor = from.put("text/plain", b"blob").unwrap();
        to.import(&from, &descriptor.digest).unwrap();
        to.import(&from, &descriptor.digest).unwrap();
        assert_eq!(fs::read(to.path(&descriptor.digest)).unwrap(), b"blob");
    }
}
