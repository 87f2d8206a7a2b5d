//! How the filter reaches the control plane, validated once at load (see
//! `config::validate`): the key sync and the lookups of managed keys both
//! call it with these settings, so they live beside them rather than in the
//! configuration that holds them.

use super::credential::BearerCredential;

/// The control plane the filter syncs managed keys and subscriptions from.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub cluster: String,
    pub authority: String,
    /// The gateway token, as the `authorization` value of every call.
    pub token: BearerCredential,
    pub sync_interval_ms: u64,
    pub timeout_ms: u64,
    pub sync_page_keys: u64,
    pub lookups_per_second: u64,
    pub negative_cache_ms: u64,
}
