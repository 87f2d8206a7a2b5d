//! `maas-images`: the project's container images, written as OCI image
//! layouts directly (no container daemon, no buildah or skopeo to build).
//!
//! - [`inputs`]: what a build takes; [`images`]: what each image holds and
//!   the build that writes them;
//! - [`base`]: the distroless-style base (C runtime from the build host,
//!   users, CA bundle, `/tmp`), with [`elf`] (the loader path) and [`ldd`]
//!   (the libraries);
//! - [`wasm`]: the filter module checked and described for Istio's fetcher;
//! - [`tarball`], [`blobs`], [`layout`], [`oci`], [`digest`]: reproducible
//!   layers, content-addressed blobs, layouts and their `oci-archive`s;
//! - [`kustomize`], [`summary`]: the overlay that pins the manifests to the
//!   digests, `images.json`, and the push and deploy commands.
//!
//! Invariant: the same inputs (binaries, module, model, registry, tag,
//! labels, SOURCE_DATE_EPOCH) give byte-identical blobs, hence the same
//! digests, on every run.

pub mod base;
pub mod blobs;
pub mod digest;
pub mod elf;
pub mod error;
pub mod images;
pub mod inputs;
pub mod kustomize;
pub mod layout;
pub mod ldd;
pub mod oci;
pub mod reference;
pub mod summary;
pub mod tarball;
pub mod wasm;

pub use error::BuildError;
pub use images::{build, Built, BuiltImage, Role};
pub use inputs::{Inputs, Options};
