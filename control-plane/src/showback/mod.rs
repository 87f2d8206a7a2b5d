//! Showback: how much each subscription used, per model.
//!
//! The gateway filter counts usage in Envoy (`/stats/prometheus`); the
//! control plane reads those counters from each gateway's admin endpoint at
//! a fixed interval and adds the difference into per-minute buckets in the
//! database, which `GET /maas-api/v1/usage` sums over any time range.

pub mod counters;
pub mod sampler;

pub use counters::delta;
pub use counters::{Usage, UsageKey};
