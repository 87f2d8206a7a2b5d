//! `maas-mesh`: the gateway filter in an Istio mesh, and its limits as
//! Kuadrant policies.
//!
//! - [`istio`] renders the `EnvoyFilter`s (or the `WasmPlugin`) that load the
//!   filter into the ingress gateway or the inference workload's sidecar. The
//!   filter's settings come from `envoy/gateway.template.yaml` and its
//!   configuration from the same JSON the local Envoy uses, so the mesh and
//!   local configurations cannot drift apart; the configuration is checked by
//!   the filter's own parser before anything is written. Its `providers`
//!   module renders what the gateway needs for external model providers
//!   (ServiceEntry, DestinationRule, route, the filter's backend role and
//!   the credential injector in each provider's cluster, the failover
//!   routes of models with fallbacks, mounts).
//! - [`kuadrant`] renders `TokenRateLimitPolicy`/`RateLimitPolicy` resources
//!   equivalent to the subscriptions' limits.
//! - [`access`] renders who may call what: mutual TLS, an
//!   `AuthorizationPolicy` and a `NetworkPolicy` per workload, and the trust
//!   table of the README, from one table of grants.
//! - [`crd`] validates resources against their CRDs' OpenAPI schemas offline.
//! - [`manifest`] reads and writes multi-document YAML.

pub mod access;
pub mod crd;
pub mod istio;
pub mod kuadrant;
pub mod manifest;

/// The identity the filter publishes for the layers after it (Kuadrant's
/// wasm-shim, the model server): request headers it sets itself after
/// removing any a client sent, and the same values as Envoy filter state
/// `wasm.maas_subscription`, `wasm.maas_key_id`, `wasm.maas_user` (a wasm
/// filter can write filter state, not dynamic metadata).
pub mod identity {
    pub const SUBSCRIPTION_HEADER: &str = "x-maas-subscription";
    pub const KEY_ID_HEADER: &str = "x-maas-key-id";
    pub const USER_HEADER: &str = "x-maas-user";
}
