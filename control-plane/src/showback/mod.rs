//! Showback: how much each subscription, key and owner used, per model,
//! and what it cost.
//!
//! The gateway filter counts usage in Envoy (`/stats/prometheus`) per
//! subscription, model and key; the control plane reads those counters from
//! each gateway's admin endpoint at a fixed interval and adds the difference
//! into per-minute buckets in the database ([`sampler`], [`counters`]), one
//! replica at a time, each gateway listed once ([`gateways`]).
//! `GET /maas-api/v1/usage` sums the buckets over any range into a
//! [`report`], priced with the administrators' [`price`]s and exported as
//! JSON or [`csv`]; `GET /maas-api/v1/usage/limits` sets each subscription's
//! use in its limits' current windows against the limits ([`limits`]).

pub mod counters;
pub mod csv;
pub mod gateways;
pub mod limits;
pub mod price;
pub mod report;
pub mod sampler;

pub use counters::delta;
pub use counters::{Snapshot, Usage, UsageKey};
