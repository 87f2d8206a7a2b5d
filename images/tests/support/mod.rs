//! What the image tests share: one build of every image from the real
//! binaries, module and model (the same inputs `make images` uses), a reader
//! that opens a layout the way a registry client would and verifies every
//! blob it touches, and a runner for a binary inside an unpacked image.

#![allow(dead_code)] // Each test binary uses part of it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use flate2::read::GzDecoder;
use maas_images::digest::Digest;
use maas_images::oci::{self, Descriptor, ImageConfig, Index, Manifest};
use maas_images::summary::Published;
use maas_images::Inputs;
use maas_testkit::artifacts::{CONTROL_PLANE, FILTER_WASM, INFERENCE_SERVER, LIMITER};

pub const REGISTRY: &str = "registry.example.com/maas";
pub const TAG: &str = "0.1.0";
pub const NONROOT: u32 = 65532;

/// The inputs, from the variables `make` exports (or their default places);
/// a missing one panics with the variable to set and the target that makes it.
pub fn inputs() -> Inputs {
    Inputs {
        inference_server: INFERENCE_SERVER.require(),
        control_plane: CONTROL_PLANE.require(),
        limiter: LIMITER.require(),
        filter_wasm: FILTER_WASM.require(),
        model: maas_testkit::inference::default_model(),
    }
}

pub fn workspace_root() -> PathBuf {
    maas_testkit::workspace_root()
}

/// A scratch directory under the target directory (reused between runs,
/// so nothing piles up in /tmp).
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("maas-images")
        .join(name);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `maas-images build --registry REGISTRY --tag TAG`, for more arguments.
pub fn maas_images_build() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_maas-images"));
    command.args(["build", "--registry", REGISTRY, "--tag", TAG]);
    command
}

/// The input binary image `name` is built from.
pub fn input(name: &str) -> PathBuf {
    let inputs = inputs();
    match name {
        "maas-inference-server" => inputs.inference_server,
        "maas-control-plane" => inputs.control_plane,
        "maas-limiter" => inputs.limiter,
        _ => panic!("no server image {name}"),
    }
}

/// A completed build: its output directory and `images.json`.
pub struct Build {
    pub out: PathBuf,
    pub images: BTreeMap<String, Published>,
    pub stdout: String,
}

/// Builds every image into `scratch(name)/out` (a fixed revision, so the
/// labels do not depend on the checkout).
pub fn build(name: &str) -> Build {
    let inputs = inputs();
    let out = scratch(name).join("out");
    let istio = workspace_root().join("istio");
    let args: Vec<&std::ffi::OsStr> = vec![
        "--inference-server".as_ref(),
        inputs.inference_server.as_os_str(),
        "--control-plane".as_ref(),
        inputs.control_plane.as_os_str(),
        "--limiter".as_ref(),
        inputs.limiter.as_os_str(),
        "--filter-wasm".as_ref(),
        inputs.filter_wasm.as_os_str(),
        "--model".as_ref(),
        inputs.model.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--istio".as_ref(),
        istio.as_os_str(),
        "--revision".as_ref(),
        "test-revision".as_ref(),
    ];
    let output = maas_images_build().args(&args).output().unwrap();
    assert!(
        output.status.success(),
        "maas-images build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let images = serde_json::from_slice(&fs::read(out.join("images.json")).unwrap()).unwrap();
    Build {
        out,
        images,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

/// The build every test reads (made once per test binary).
pub fn built() -> &'static Build {
    static BUILT: OnceLock<Build> = OnceLock::new();
    BUILT.get_or_init(|| build("a"))
}

impl Build {
    pub fn layout(&self, name: &str) -> Layout {
        Layout::open(&self.out.join(name))
    }

    pub fn digest(&self, name: &str) -> &Digest {
        &self.images[name].digest
    }
}

/// An image layout, opened from `index.json` down.
pub struct Layout {
    pub dir: PathBuf,
    pub index: Index,
    pub manifest: Manifest,
    /// The index's descriptor of the manifest.
    pub manifest_descriptor: Descriptor,
}

impl Layout {
    pub fn open(dir: &Path) -> Self {
        assert_eq!(
            fs::read_to_string(dir.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        let index: Index =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(index.schema_version, 2);
        assert_eq!(index.media_type, oci::INDEX);
        assert_eq!(index.manifests.len(), 1, "{dir:?}: one manifest per layout");
        let manifest_descriptor = index.manifests[0].clone();
        assert_eq!(manifest_descriptor.media_type, oci::MANIFEST);
        let manifest: Manifest =
            serde_json::from_slice(&read_blob(dir, &manifest_descriptor)).unwrap();
        assert_eq!(manifest.schema_version, 2);
        assert_eq!(manifest.media_type, oci::MANIFEST);
        Self {
            dir: dir.to_path_buf(),
            index,
            manifest,
            manifest_descriptor,
        }
    }

    /// The blob `descriptor` points at, after checking its digest and size.
    pub fn blob(&self, descriptor: &Descriptor) -> Vec<u8> {
        read_blob(&self.dir, descriptor)
    }

    pub fn config(&self) -> ImageConfig {
        assert_eq!(self.manifest.config.media_type, oci::IMAGE_CONFIG);
        serde_json::from_slice(&self.blob(&self.manifest.config)).unwrap()
    }

    /// Each layer as an uncompressed tar, in order.
    pub fn layer_tars(&self) -> Vec<Vec<u8>> {
        self.manifest
            .layers
            .iter()
            .map(|layer| {
                assert_eq!(layer.media_type, oci::LAYER_TAR_GZIP);
                let mut tar = Vec::new();
                GzDecoder::new(self.blob(layer).as_slice())
                    .read_to_end(&mut tar)
                    .unwrap();
                tar
            })
            .collect()
    }

    /// The names of the files under `blobs/sha256`.
    pub fn blob_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Unpacks every layer, in order, into a fresh `scratch(name)/rootfs`.
    pub fn unpack(&self, name: &str) -> PathBuf {
        let rootfs = scratch(name).join("rootfs");
        if rootfs.exists() {
            fs::remove_dir_all(&rootfs).unwrap();
        }
        fs::create_dir_all(&rootfs).unwrap();
        // The image's `/`: traversable by the unprivileged user.
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755)).unwrap();
        for tar in self.layer_tars() {
            let mut archive = tar::Archive::new(tar.as_slice());
            archive.set_preserve_permissions(true);
            archive.set_preserve_ownerships(is_root());
            archive.set_overwrite(true);
            archive.unpack(&rootfs).unwrap();
        }
        rootfs
    }
}

/// The blob of layout `dir` that `descriptor` points at, after checking its
/// digest and size.
fn read_blob(dir: &Path, descriptor: &Descriptor) -> Vec<u8> {
    let path = dir.join("blobs/sha256").join(descriptor.digest.hex());
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(Digest::of(&bytes), descriptor.digest, "{path:?}: digest");
    assert_eq!(bytes.len() as u64, descriptor.size, "{path:?}: size");
    bytes
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `argv` inside `rootfs` as uid and gid 65532 with only the environment
/// `env` (the image's `Env`): `chroot --userspec` when the tests run as root;
/// otherwise a user namespace that maps this user to 65532 (`unshare
/// --map-user`), which needs unprivileged user namespaces.
pub fn in_rootfs(rootfs: &Path, env: &[String], argv: &[String]) -> Command {
    let mut command = if is_root() {
        let mut command = Command::new(on_path("chroot"));
        command.arg(format!("--userspec={NONROOT}:{NONROOT}"));
        command.arg(rootfs);
        command
    } else {
        let mut command = Command::new(on_path("unshare"));
        command.args([
            "--user".to_string(),
            format!("--map-user={NONROOT}"),
            format!("--map-group={NONROOT}"),
        ]);
        command.arg(format!("--root={}", rootfs.display()));
        command
    };
    command.args(argv).env_clear().stdin(Stdio::null());
    for variable in env {
        let (name, value) = variable.split_once('=').unwrap();
        command.env(name, value);
    }
    command
}

/// Where `tool` is on this process's PATH (the child's PATH is the image's).
fn on_path(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("no `{tool}` on PATH: it runs the images' binaries in their root file systems (util-linux / coreutils)"))
}

/// Runs `argv` in `rootfs` (see [`in_rootfs`]) to completion.
pub fn run_in_rootfs(rootfs: &Path, env: &[String], argv: &[String]) -> Output {
    let how = if is_root() {
        "chroot"
    } else {
        "unshare --user (not root: unprivileged user namespaces must be enabled)"
    };
    in_rootfs(rootfs, env, argv)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?} in {rootfs:?} with {how}: {e}"))
}

/// A process that is killed when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The user id process `pid` runs as, inside its user namespace: 65532 for
/// a server started by [`in_rootfs`]. As root that is its uid; otherwise
/// /proc shows this user's uid, and the namespace's `uid_map` says what it
/// is inside.
pub fn uid_inside(pid: u32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uid: u32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let map = fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    // "inside outside count" lines; the initial namespace maps 0 → 0.
    map.lines()
        .filter_map(|line| {
            let fields: Vec<u32> = line
                .split_whitespace()
                .map(|f| f.parse().unwrap())
                .collect();
            let [inside, outside, count] = fields[..] else {
                panic!("uid_map line {line:?}")
            };
            (outside..outside.saturating_add(count))
                .contains(&uid)
                .then(|| inside + (uid - outside))
        })
        .next()
        .unwrap_or_else(|| panic!("uid {uid} of {pid} is unmapped: {map}"))
}
