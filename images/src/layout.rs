//! One OCI image layout per image (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), and the `oci-archive` of it: the same files in one
//! reproducible tar, which `skopeo copy oci-archive:FILE docker://…` pushes
//! blob for blob, so the digests written here are the digests in the registry.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;

use crate::blobs::BlobStore;
use crate::digest::Digest;
use crate::error::BuildError;
use crate::oci::{self, Descriptor, Index};
use crate::tarball::{self, Contents, Entry};

/// Writes a fresh layout at `dir` (whatever was there is removed, so no
/// stale blob lingers) holding `blobs` from `staging` and an index naming
/// `manifest` as `tag`.
pub fn write(
    dir: &Path,
    staging: &BlobStore,
    blobs: &[&Digest],
    manifest: &Descriptor,
    tag: &str,
) -> Result<(), BuildError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(BuildError::io("remove", dir))?;
    }
    let store = BlobStore::create(dir)?;
    for digest in blobs {
        store.import(staging, digest)?;
    }
    let mut named = manifest.clone();
    named.annotations.insert(oci::REF_NAME.into(), tag.into());
    let index = Index {
        schema_version: 2,
        media_type: oci::INDEX.into(),
        manifests: vec![named],
    };
    let index = serde_json::to_vec_pretty(&index).map_err(BuildError::Serialize)?;
    write_file(&dir.join("index.json"), &index)?;
    write_file(&dir.join("oci-layout"), oci::LAYOUT_VERSION.as_bytes())
}

/// Writes the layout at `dir` as a tar at `archive`: `oci-layout`,
/// `index.json` and the blobs, each dated `mtime`.
pub fn archive(dir: &Path, archive: &Path, mtime: u64) -> Result<(), BuildError> {
    let file = |name: &str, source: &Path| {
        Entry::new(name, 0o644, Contents::HostFile(source.to_path_buf()))
    };
    let mut entries = vec![
        file("oci-layout", &dir.join("oci-layout"))?,
        file("index.json", &dir.join("index.json"))?,
    ];
    let blobs = dir.join("blobs").join("sha256");
    for blob in fs::read_dir(&blobs).map_err(BuildError::io("list", &blobs))? {
        let blob = blob.map_err(BuildError::io("list", &blobs))?;
        let name = blob.file_name();
        let name = name.to_string_lossy();
        entries.push(file(&format!("blobs/sha256/{name}"), &blob.path())?);
    }
    let partial = archive.with_extension("partial");
    let out = File::create(&partial).map_err(BuildError::io("create", &partial))?;
    let out = tarball::write_tar(entries, mtime, BufWriter::new(out))?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|file| file.sync_all())
        .map_err(BuildError::io("write", &partial))?;
    fs::rename(&partial, archive).map_err(BuildError::io("rename", &partial))
}

/// Writes `bytes` to `path` whole or not at all (temporary file, rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let partial = path.with_extension("partial");
    fs::write(&partial, bytes).map_err(BuildError::io("write", &partial))?;
    fs::rename(&partial, path).map_err(BuildError::io("rename", &partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_holds_exactly_its_blobs_and_names_the_tag() {
        let root = tempfile::tempdir().unwrap();
        let staging = BlobStore::create(&root.path().join("staging")).unwrap();
        let wanted = staging.put("text/plain", b"wanted").unwrap();
        let other = staging.put("text/plain", b"other").unwrap();
        let dir = root.path().join("image");
        // A stale blob from an earlier build must not survive.
        BlobStore::create(&dir)
            .unwrap()
            .put("text/plain", b"stale")
            .unwrap();
        write(&dir, &staging, &[&wanted.digest], &wanted, "0.1.0").unwrap();

        let blobs: Vec<String> = fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(blobs, [wanted.digest.hex()]);
        assert_ne!(wanted.digest, other.digest);
        let index: Index =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(index.manifests[0].annotations[oci::REF_NAME], "0.1.0");
        assert_eq!(
            fs::read_to_string(dir.join("oci-layout")).unwrap(),
            oci::LAYOUT_VERSION
        );

        let tar = root.path().join("image.oci.tar");
        archive(&dir, &tar, 0).unwrap();
        let bytes = fs::read(&tar).unwrap();
        let mut names: Vec<String> = tar::Archive::new(bytes.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "blobs/".to_string(),
                "blobs/sha256/".into(),
                format!("blobs/sha256/{}", wanted.digest.hex()),
                "index.json".into(),
                "oci-layout".into(),
            ]
        );
        archive(&dir, &tar, 0).unwrap();
        assert_eq!(
            fs::read(&tar).unwrap(),
            bytes,
            "the same layout, the same archive"
        );
    }
}
