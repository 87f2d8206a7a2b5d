//! What each image holds, and the build that writes them all.
//!
//! | image                           | layers                                      |
//! |---------------------------------|---------------------------------------------|
//! | `maas-inference-server`         | base, [own libraries], `/usr/local/bin/inference-server` |
//! | `maas-inference-server-smollm2` | the same, then `/models/<model>.gguf`       |
//! | `maas-control-plane`            | base, [own libraries], `/usr/local/bin/maas-control-plane` |
//! | `maas-limiter`                  | base, [own libraries], `/usr/local/bin/maas-limiter` |
//! | `maas-filter`                   | the Wasm image spec's runtime config and the raw module |
//!
//! The base layer holds the system files and the libraries *every* server
//! needs, so a registry stores it once; a server that needs more (the limiter
//! links OpenSSL) gets a layer of its own libraries next. Every image runs as
//! 65532:65532 and writes nothing to its root file system.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::base::{self, NONROOT};
use crate::blobs::{BlobStore, Layer};
use crate::digest::Digest;
use crate::error::BuildError;
use crate::inputs::{manifests_dir, Inputs, Options};
use crate::kustomize::{self, Pin};
use crate::layout;
use crate::oci::{
    self, Annotations, Descriptor, ExecConfig, ImageConfig, Manifest, Platform, RootFs,
};
use crate::summary;
use crate::tarball::{Contents, Entry};
use crate::wasm;

/// The model id the SmolLM2 image serves under (the manifests' and
/// the local stack's).
pub const SMOLLM2_MODEL_ID: &str = "smollm2-135m-instruct";
/// Where server binaries live in the images (on the images' `PATH`).
pub const BIN_DIR: &str = "/usr/local/bin";
/// Where the SmolLM2 image keeps its model.
pub const MODEL_DIR: &str = "/models";

/// What an image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server the manifests in `istio/` deploy (pinned in the kustomization).
    Server,
    /// A server image with extras the manifests do not use (the model).
    Variant,
    /// The filter, for Istio's WasmPlugin (`oci://`).
    WasmPlugin,
}

#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub name: &'static str,
    pub role: Role,
    /// The manifest's descriptor: its digest is the image's identity.
    pub manifest: Descriptor,
    /// Manifest, config and layers together, compressed: what a pull moves.
    pub size: u64,
    pub layout: PathBuf,
    pub archive: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Built {
    pub images: Vec<BuiltImage>,
    pub images_json: PathBuf,
    pub kustomization: PathBuf,
}

/// A server image: its name and the binary it runs.
struct Server<'a> {
    name: &'static str,
    binary: &'a Path,
    /// The binary's name in the image (under [`BIN_DIR`]).
    command: &'static str,
    /// Whether a variant with the model baked in is built too.
    with_model: bool,
}

/// An image ready to be written as a layout: its manifest and every blob.
struct Assembled {
    name: &'static str,
    role: Role,
    manifest: Descriptor,
    /// Every blob (manifest, config, layers) once, with its size.
    blobs: BTreeMap<Digest, u64>,
}

/// Builds every image into `options.out`.
pub fn build(inputs: &Inputs, options: &Options) -> Result<Built, BuildError> {
    inputs.check()?;
    let istio = manifests_dir(&options.istio)?;
    let platform = oci::host_platform().ok_or(BuildError::UnsupportedPlatform {
        arch: std::env::consts::ARCH,
        os: std::env::consts::OS,
    })?;
    fs::create_dir_all(&options.out).map_err(BuildError::io("create", &options.out))?;
    let staging_dir = options.out.join(".staging");
    if staging_dir.exists() {
        fs::remove_dir_all(&staging_dir).map_err(BuildError::io("remove", &staging_dir))?;
    }
    let staging = BlobStore::create(&staging_dir)?;
    let builder = ImageBuilder {
        store: &staging,
        options,
        platform,
    };

    let mut assembled = builder.servers(inputs)?;
    assembled.push(builder.filter(&inputs.filter_wasm)?);

    let mut images = Vec::new();
    for image in assembled {
        images.push(publish(&staging, options, image)?);
    }
    fs::remove_dir_all(&staging_dir).map_err(BuildError::io("remove", &staging_dir))?;

    let images_json = options.out.join("images.json");
    layout::write_file(&images_json, &summary::images_json(&images, options)?)?;
    let kustomization = options.out.join("kustomization.yaml");
    layout::write_file(
        &kustomization,
        overlay(&images, options, &istio)?.as_bytes(),
    )?;
    Ok(Built {
        images,
        images_json,
        kustomization,
    })
}

struct ImageBuilder<'a> {
    store: &'a BlobStore,
    options: &'a Options,
    platform: Platform,
}

impl ImageBuilder<'_> {
    /// The three server images and the SmolLM2 variant, sharing one base.
    fn servers(&self, inputs: &Inputs) -> Result<Vec<Assembled>, BuildError> {
        let servers = [
            Server {
                name: "maas-inference-server",
                binary: &inputs.inference_server,
                command: "inference-server",
                with_model: true,
            },
            Server {
                name: "maas-control-plane",
                binary: &inputs.control_plane,
                command: "maas-control-plane",
                with_model: false,
            },
            Server {
                name: "maas-limiter",
                binary: &inputs.limiter,
                command: "maas-limiter",
                with_model: false,
            },
        ];
        let runtimes = servers
            .iter()
            .map(|server| base::runtime_files(server.binary))
            .collect::<Result<Vec<_>, _>>()?;
        let shared = runtimes.iter().skip(1).fold(
            runtimes.first().cloned().unwrap_or_default(),
            |all, next| all.intersection(next).cloned().collect(),
        );
        let mut base_entries = base::system_entries(self.options.ca_bundle.as_deref())?;
        base_entries.extend(base::library_entries(&shared)?);
        let base = self.store.put_layer(base_entries, self.options.mtime)?;

        let mut images = Vec::new();
        for (server, runtime) in servers.iter().zip(&runtimes) {
            let mut layers = vec![base.clone()];
            let own: BTreeSet<&PathBuf> = runtime.difference(&shared).collect();
            if !own.is_empty() {
                layers.push(
                    self.store
                        .put_layer(base::library_entries(own)?, self.options.mtime)?,
                );
            }
            let entrypoint = format!("{BIN_DIR}/{}", server.command);
            layers.push(self.store.put_layer(
                vec![Entry::new(
                    &entrypoint,
                    0o755,
                    Contents::HostFile(server.binary.to_path_buf()),
                )?],
                self.options.mtime,
            )?);
            let variant = if server.with_model {
                Some(self.with_model(&layers, &entrypoint, &inputs.model)?)
            } else {
                None
            };
            images.push(self.image(server.name, Role::Server, layers, &entrypoint, Vec::new())?);
            images.extend(variant);
        }
        Ok(images)
    }

    /// The inference server's layers plus the model, served by default.
    fn with_model(
        &self,
        layers: &[Layer],
        entrypoint: &str,
        model: &Path,
    ) -> Result<Assembled, BuildError> {
        let file = model
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| BuildError::InvalidEntryPath(model.to_string_lossy().into_owned()))?;
        let in_image = format!("{MODEL_DIR}/{file}");
        let mut layers = layers.to_vec();
        layers.push(self.store.put_layer(
            vec![Entry::new(
                &in_image,
                0o644,
                Contents::HostFile(model.to_path_buf()),
            )?],
            self.options.mtime,
        )?);
        let cmd = vec![
            "--host=0.0.0.0".to_string(),
            format!("--model={in_image}"),
            format!("--model-id={SMOLLM2_MODEL_ID}"),
        ];
        self.image(
            "maas-inference-server-smollm2",
            Role::Variant,
            layers,
            entrypoint,
            cmd,
        )
    }

    /// A runnable image: config (non-root user, entrypoint, labels) and manifest.
    fn image(
        &self,
        name: &'static str,
        role: Role,
        layers: Vec<Layer>,
        entrypoint: &str,
        cmd: Vec<String>,
    ) -> Result<Assembled, BuildError> {
        let mut env = vec![format!("PATH={BIN_DIR}:/usr/bin:/bin")];
        if self.options.ca_bundle.is_some() {
            // OpenSSL (the limiter's Redis TLS) reads it; so would rustls'
            // native-certs, should a server grow an HTTPS client.
            env.push(format!("SSL_CERT_FILE={}", base::CA_BUNDLE));
        }
        let config = ImageConfig {
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            config: ExecConfig {
                user: format!("{NONROOT}:{NONROOT}"),
                env,
                entrypoint: vec![entrypoint.to_string()],
                cmd,
                working_dir: "/".into(),
                labels: self.labels(name),
            },
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: layers.iter().map(|layer| layer.diff_id.clone()).collect(),
            },
        };
        let config = self.store.put_json(oci::IMAGE_CONFIG, &config)?;
        let layers = layers.into_iter().map(|layer| layer.descriptor).collect();
        let mut assembled = self.manifest(name, role, config, layers)?;
        assembled.manifest.platform = Some(self.platform.clone());
        Ok(assembled)
    }

    /// The filter in the *oci* variant of the Wasm image spec, the one Istio's
    /// fetcher (pkg/wasm/imagefetcher.go, `extractOCIArtifactImage`) reads:
    /// it requires exactly two layers and takes the one whose media type is
    /// `application/vnd.module.wasm.content.layer.v1+wasm`, read as is (not
    /// decompressed). The other layer is the runtime configuration
    /// (`application/vnd.module.wasm.config.v1+json`), which also serves as
    /// the manifest's config, as the spec names that media type for it. (The
    /// fetcher tries the *compat* variant first: a last layer of type
    /// `…tar+gzip` holding `plugin.wasm`; this artifact is not that.)
    fn filter(&self, module: &Path) -> Result<Assembled, BuildError> {
        let bytes = fs::read(module).map_err(BuildError::io("read", module))?;
        let runtime = wasm::runtime_config(&bytes).map_err(|source| BuildError::Wasm {
            module: module.to_path_buf(),
            source,
        })?;
        let config = self.store.put_json(oci::WASM_CONFIG, &runtime)?;
        let mut config_layer = config.clone();
        config_layer
            .annotations
            .insert(oci::TITLE.into(), "runtime-config.json".into());
        let mut content = self.store.put(oci::WASM_CONTENT, &bytes)?;
        content
            .annotations
            .insert(oci::TITLE.into(), "plugin.wasm".into());
        self.manifest(
            "maas-filter",
            Role::WasmPlugin,
            config,
            vec![config_layer, content],
        )
    }

    fn manifest(
        &self,
        name: &'static str,
        role: Role,
        config: Descriptor,
        layers: Vec<Descriptor>,
    ) -> Result<Assembled, BuildError> {
        let manifest = Manifest {
            schema_version: 2,
            media_type: oci::MANIFEST.into(),
            config: config.clone(),
            layers: layers.clone(),
            annotations: self.labels(name),
        };
        let descriptor = self.store.put_json(oci::MANIFEST, &manifest)?;
        let blobs = [&descriptor, &config]
            .into_iter()
            .chain(&layers)
            .map(|blob| (blob.digest.clone(), blob.size))
            .collect();
        Ok(Assembled {
            name,
            role,
            manifest: descriptor,
            blobs,
        })
    }

    /// The OCI annotations on manifests and labels on configs: only what the
    /// inputs determine, so the same inputs give the same digests.
    fn labels(&self, name: &str) -> Annotations {
        let options = self.options;
        let mut labels = Annotations::from([
            (oci::TITLE.to_string(), name.to_string()),
            (oci::VERSION.to_string(), options.tag.to_string()),
        ]);
        if let Some(revision) = &options.revision {
            labels.insert(oci::REVISION.into(), revision.clone());
        }
        if let Some(source) = &options.source {
            labels.insert(oci::SOURCE.into(), source.clone());
        }
        labels
    }
}

/// Writes `image` as a layout and an archive under `options.out`.
fn publish(
    staging: &BlobStore,
    options: &Options,
    image: Assembled,
) -> Result<BuiltImage, BuildError> {
    let dir = options.out.join(image.name);
    let archive = options.out.join(format!("{}.oci.tar", image.name));
    layout::write(
        &dir,
        staging,
        &image.blobs.keys().collect::<Vec<_>>(),
        &image.manifest,
        options.tag.as_str(),
    )?;
    layout::archive(&dir, &archive, options.mtime)?;
    Ok(BuiltImage {
        name: image.name,
        role: image.role,
        manifest: image.manifest,
        // A blob listed twice (the filter's config is also a layer) is
        // stored and counted once.
        size: image.blobs.values().sum(),
        layout: dir,
        archive,
    })
}

/// The kustomization pinning the [`Role::Server`] images over `istio`.
fn overlay(images: &[BuiltImage], options: &Options, istio: &Path) -> Result<String, BuildError> {
    let out = options
        .out
        .canonicalize()
        .map_err(BuildError::io("resolve", &options.out))?;
    let resource = kustomize::relative_path(&out, istio);
    let pins: Vec<Pin> = images
        .iter()
        .filter(|image| image.role == Role::Server)
        .map(|image| Pin {
            name: image.name.to_string(),
            repository: options.registry.repository(image.name),
            digest: image.manifest.digest.clone(),
        })
        .collect();
    Ok(kustomize::render(&resource.to_string_lossy(), &pins))
}
