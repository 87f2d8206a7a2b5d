//! Where the Envoy binary and the filter module are found. Both are build
//! products of `make test` (it fetches Envoy and builds the wasm filter), so a
//! missing one gets a message pointing there rather than a bare ENOENT.

use std::path::PathBuf;

use crate::gateway::workspace_root;

/// The Envoy release the project is tested against.
pub const ENVOY_VERSION: &str = "1.40.0";

/// `MAAS_ENVOY`, or where `make test` unpacks Envoy; `None` if that file does not exist.
pub fn find_envoy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("MAAS_ENVOY").map_or_else(
        || workspace_root().join(format!(".cache/envoy/{ENVOY_VERSION}/envoy/_bin/envoy")),
        PathBuf::from,
    );
    path.is_file().then_some(path)
}

/// `MAAS_FILTER_WASM`, or the release build of the filter; `None` if that file does not exist.
pub fn find_filter_wasm() -> Option<PathBuf> {
    let path = std::env::var_os("MAAS_FILTER_WASM").map_or_else(
        || workspace_root().join("target/wasm32-wasip1/release/maas_filter.wasm"),
        PathBuf::from,
    );
    path.is_file().then_some(path)
}

/// [`find_envoy_binary`], or a panic that says how to get one.
pub fn envoy_binary() -> PathBuf {
    find_envoy_binary().unwrap_or_else(|| {
        panic!(
            "no Envoy binary: set MAAS_ENVOY or run `make test`, which fetches Envoy {ENVOY_VERSION} into {:?}",
            workspace_root().join(".cache/envoy")
        )
    })
}

/// [`find_filter_wasm`], or a panic that says how to build it.
pub fn filter_wasm() -> PathBuf {
    find_filter_wasm().unwrap_or_else(|| {
        panic!(
            "no filter module: set MAAS_FILTER_WASM or run `make test`, which builds {:?}",
            workspace_root().join("target/wasm32-wasip1/release/maas_filter.wasm")
        )
    })
}
