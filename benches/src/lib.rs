//! Benchmarks of the MaaS gateway.
//!
//! - `benches/benches/*.rs`: criterion benches of the filter's hot paths
//!   (`cargo bench -p maas-benches`).
//! - `benches/load.sh`: the whole-system load comparison (Envoy without a
//!   filter, with an empty wasm filter, with ours), driven by wrk. This
//!   library and the `load-bench` example (a tool, see Cargo.toml) are its typed half: [`load::variants`]
//!   renders the Envoy bootstraps from the one gateway template, and
//!   [`load::report`] turns the raw measurements into the table of medians,
//!   ratios and targets.
//! - `benches/inference.sh`: the inference server's prefill, single-stream
//!   decode and batched throughput; [`inference`] is its report, client
//!   and llama.cpp peer, the `inference-bench` example its driver.
//! - `benches/prefix-cache.sh`: time to first token with a shared system
//!   prompt, with our prefix cache, without it and on llama-server;
//!   [`inference::prefix_cache`] is its workload and report, the
//!   `prefix-cache-bench` example its driver.
//! - `benches/soak.sh`: the bounded soak under faults (the limiter, Redis,
//!   the control plane and the inference server killed and restarted during
//!   mixed traffic), ending in a comparison of the ledgers; [`soak`] is its
//!   plan, clients and comparison, the `soak` example the process owner.

pub mod inference;
pub mod load;
pub mod soak;
