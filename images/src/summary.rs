//! What a build tells its user: `images.json` (each image's repository, tag
//! and manifest digest, for scripts) and the commands that push and deploy
//! what was built.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::BuildError;
use crate::images::{Built, BuiltImage, Role};
use crate::inputs::Options;

/// One `images.json` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// `<registry>/<name>`.
    pub repository: String,
    pub tag: String,
    /// The manifest digest.
    pub digest: Digest,
    /// `<repository>@<digest>`: what to deploy.
    pub reference: String,
    /// The `oci-archive` to push, relative to the output directory.
    pub archive: PathBuf,
}

/// `images.json`: image name → [`Published`], pretty-printed.
pub fn images_json(images: &[BuiltImage], options: &Options) -> Result<Vec<u8>, BuildError> {
    let entries: BTreeMap<&str, Published> = images
        .iter()
        .map(|image| (image.name, published(image, options)))
        .collect();
    let mut json = serde_json::to_vec_pretty(&entries).map_err(BuildError::Serialize)?;
    json.push(b'\n');
    Ok(json)
}

fn published(image: &BuiltImage, options: &Options) -> Published {
    Published {
        repository: options.registry.repository(image.name),
        tag: options.tag.to_string(),
        digest: image.manifest.digest.clone(),
        reference: options.registry.pinned(image.name, &image.manifest.digest),
        archive: PathBuf::from(format!("{}.oci.tar", image.name)),
    }
}

/// The table of images and the commands to push and deploy them.
pub fn instructions(built: &Built, options: &Options) -> String {
    let out = options.out.display();
    let mut text = format!("Images in {out}:\n");
    for image in &built.images {
        let _ = writeln!(
            text,
            "  {:<31} {:>8.1} MB  {}",
            image.name,
            image.size as f64 / 1e6,
            image.manifest.digest
        );
    }
    text.push_str(
        "\nPush (the archives hold the exact blobs, so the digests above are the\n\
         digests in the registry; --preserve-digests makes skopeo refuse to change them):\n",
    );
    for image in &built.images {
        let _ = writeln!(
            text,
            "  skopeo copy --preserve-digests oci-archive:{} docker://{}:{}",
            image.archive.display(),
            options.registry.repository(image.name),
            options.tag
        );
    }
    let _ = writeln!(
        text,
        "\nDeploy (istio/ with each server image pinned by digest):\n  kubectl apply -k {out}"
    );
    for image in built.images.iter().filter(|i| i.role == Role::WasmPlugin) {
        let _ = writeln!(
            text,
            "\nWasmPlugin spec.url (pinned by manifest digest):\n  url: oci://{}",
            options.registry.pinned(image.name, &image.manifest.digest)
        );
    }
    text
}
