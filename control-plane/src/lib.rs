//! The control plane of the MaaS gateway: it owns subscriptions and API keys
//! (stored in SQLite or PostgreSQL), lets developers mint and revoke their
//! own keys, feeds the gateway filter the current key set, and reports usage.
//!
//! - [`apikey`]: the key format users see (`sk-maas-<id>-<secret>`) and the
//!   salted digest that is all the database keeps.
//! - [`key_lifetime`]: how long a minted key lives, within the operator's
//!   optional maximum.
//! - [`subscription`]: what a subscription may use and at what rates,
//!   validated with the filter's own configuration parser.
//! - [`oidc`]: OIDC bearer tokens checked against the issuer's JWKS.
//! - [`store`]: subscriptions, keys, the audit log and the change counter
//!   key sync reads, in SQLite or PostgreSQL through one query layer.
//! - [`api`]: the self-service HTTP API.

pub mod api;
pub mod apikey;
pub mod cli;
pub mod key_lifetime;
pub mod oidc;
pub mod serve;
pub mod showback;
pub mod store;
pub mod strict_json;
pub mod subscription;
pub mod time;
pub mod tokens;
