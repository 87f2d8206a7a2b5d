//! Where the build products the harness runs are found: Envoy, the filter
//! module, the inference server, the control plane, the rate limiter and
//! Redis. Each comes from `make test` (it fetches Envoy and Redis and builds
//! the rest) at a fixed place under the workspace, or from the environment
//! variable named here; a missing one gets a message pointing at both rather
//! than a bare ENOENT.

use std::path::PathBuf;

use crate::gateway::workspace_root;

/// The Envoy release, as a literal so `concat!` can build paths with it.
macro_rules! envoy_version {
    () => {
        "1.40.0"
    };
}

/// The Envoy release the project is tested against.
pub const ENVOY_VERSION: &str = envoy_version!();

/// The Redis release `scripts/redis.sh` installs, as a literal for `concat!`.
macro_rules! redis_version {
    () => {
        "7.0.15"
    };
}

/// The Redis release the limiter is tested against.
pub const REDIS_VERSION: &str = redis_version!();

/// A build product: the variable that points at it, and where `make test`
/// puts it otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    /// The environment variable that overrides the default place.
    pub env: &'static str,
    /// The default place, relative to the workspace root.
    relative: &'static str,
    /// For messages: "Envoy binary".
    what: &'static str,
    /// For messages: what `make test` does to provide it.
    made_by: &'static str,
}

pub const ENVOY: Artifact = Artifact {
    env: "MAAS_ENVOY",
    relative: concat!(".cache/envoy/", envoy_version!(), "/envoy/_bin/envoy"),
    what: "Envoy binary",
    made_by: concat!("fetches Envoy ", envoy_version!(), " into"),
};

pub const FILTER_WASM: Artifact = Artifact {
    env: "MAAS_FILTER_WASM",
    relative: "target/wasm32-wasip1/release/maas_filter.wasm",
    what: "filter module",
    made_by: "builds",
};

pub const INFERENCE_SERVER: Artifact = Artifact {
    env: "MAAS_INFERENCE_SERVER",
    relative: "target/serve/inference-server",
    what: "inference server",
    made_by: "builds",
};

pub const CONTROL_PLANE: Artifact = Artifact {
    env: "MAAS_CONTROL_PLANE",
    relative: "target/serve/maas-control-plane",
    what: "control plane",
    made_by: "builds",
};

pub const LIMITER: Artifact = Artifact {
    env: "MAAS_LIMITER",
    relative: "target/serve/maas-limiter",
    what: "rate limiter",
    made_by: "builds",
};

pub const REDIS_SERVER: Artifact = Artifact {
    env: "MAAS_REDIS_SERVER",
    relative: concat!(".cache/redis/", redis_version!(), "/bin/redis-server"),
    what: "Redis server",
    made_by: concat!(
        "installs Debian's Redis ",
        redis_version!(),
        " (scripts/redis.sh) into"
    ),
};

impl Artifact {
    /// The variable's value, or the default place; whether or not it exists.
    pub fn path(&self) -> PathBuf {
        std::env::var_os(self.env)
            .map_or_else(|| workspace_root().join(self.relative), PathBuf::from)
    }

    /// [`Artifact::path`] if a file is there.
    pub fn find(&self) -> Option<PathBuf> {
        let path = self.path();
        path.is_file().then_some(path)
    }

    /// [`Artifact::find`], or a panic that says how to get it.
    pub fn require(&self) -> PathBuf {
        self.find().unwrap_or_else(|| {
            panic!(
                "no {}: set {} or run `make test`, which {} {:?}",
                self.what,
                self.env,
                self.made_by,
                workspace_root().join(self.relative)
            )
        })
    }
}

/// `MAAS_ENVOY`, or where `make test` unpacks Envoy; `None` if that file does not exist.
pub fn find_envoy_binary() -> Option<PathBuf> {
    ENVOY.find()
}

/// `MAAS_FILTER_WASM`, or the release build of the filter; `None` if that file does not exist.
pub fn find_filter_wasm() -> Option<PathBuf> {
    FILTER_WASM.find()
}

/// [`find_envoy_binary`], or a panic that says how to get one.
pub fn envoy_binary() -> PathBuf {
    ENVOY.require()
}

/// [`find_filter_wasm`], or a panic that says how to build it.
pub fn filter_wasm() -> PathBuf {
    FILTER_WASM.require()
}
