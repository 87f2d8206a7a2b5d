//! The filter's configuration: deserialised once per VM at `on_configure`
//! into serde types that mirror the JSON ([`raw`]), validated completely and
//! turned into the indexed form the request path uses ([`Config`]). A
//! configuration error names the field (`subscriptions.free.limits.
//! tokens[1]`) and the reason, and makes Envoy refuse the plugin: a gateway
//! that starts with a half-understood policy is worse than one that does not
//! start.
//!
//! - [`raw`]: the document as written (`deny_unknown_fields`, defaults);
//!   its [`raw::RawSubscription`] is also the control plane's schema.
//! - `validate`: raw → validated, the one home of every check.
//! - `validated`: [`Config`] and what it holds.
//!
//! The domain types a configuration produces (subscriptions, limits) are
//! [`crate::subscription`]'s, so the limits and the keys use them without
//! depending on the parser.
//!
//! Shape (JSON):
//! ```json
//! {
//!   "max_body_bytes": 1048576,
//!   "default_max_tokens": 4096,
//!   "prompt_bytes_per_token": 1,
//!   "models": ["smollm2-135m-instruct"],
//!   "providers": [
//!     { "name": "openai", "kind": "openai-compatible" },
//!     { "name": "azure-east", "kind": "azure-openai", "api_version": "2024-10-21" }
//!   ],
//!   "external_models": [
//!     { "id": "gpt-4o", "provider": "azure-east", "model": "gpt-4o-prod" }
//!   ],
//!   "subscriptions": {
//!     "free": {
//!       "models": ["smollm2-135m-instruct"],
//!       "limits": { "requests": ["10/min"], "tokens": ["20000/min", "1000000/day"] },
//!       "key_limits": { "requests": ["5/min"] },
//!       "key_limits_per": "key",
//!       "max_keys_per_owner": 10,
//!       "max_tokens": { "cap": 512, "mode": "clamp" }
//!     },
//!     "internal": { "models": ["smollm2-135m-instruct"], "limits": "unlimited" }
//!   },
//!   "keys": [
//!     { "id": "alice-1", "owner": "alice@example.com", "subscription": "free",
//!       "sha256": "<hex of SHA-256 of the key>", "expires_at": "2027-01-01T00:00:00Z",
//!       "revoked": false }
//!   ]
//! }
//! ```

pub mod raw;
mod validate;
mod validated;

pub use raw::Oidc;
pub use validate::{synced_subscription, validate_served};
pub use validated::{Config, ConfigError, ExternalModel};

#[cfg(test)]
mod tests;
