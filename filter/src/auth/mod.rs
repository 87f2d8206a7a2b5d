//! Who is calling: API keys from the configuration ([`keys`]), keys the
//! control plane mints ([`managed_keys`]) and syncs into shared data
//! ([`key_sync`]), and the claims of a token Envoy's `jwt_authn` verified
//! ([`claims`]); and the credentials the filter itself presents
//! ([`credential`]).
//!
//! Everything here is pure logic: shared data is reached through
//! [`crate::limits::CounterStore`] and the control plane through
//! [`crate::host::SyncHost`], so the host target tests all of it.

pub mod claims;
pub mod control_plane;
pub mod credential;
pub mod key_sync;
pub mod keys;
pub mod managed_keys;
