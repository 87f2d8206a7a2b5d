//! The one error type of the store. Each variant is a distinct outcome the
//! API layer maps to exactly one response (not found, conflict, server
//! error), so callers never parse messages.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// A key names a subscription that does not exist.
    #[error("unknown subscription {0:?}")]
    UnknownSubscription(String),

    /// A row with this identity already exists (duplicate key id).
    #[error("already exists: {0:?}")]
    Conflict(String),

    /// The owner already holds the most live keys the subscription allows.
    #[error("{owner:?} already holds {max} live keys in subscription {subscription:?}")]
    TooManyKeys {
        owner: String,
        subscription: String,
        max: u64,
    },

    /// The owner minted the most keys a day allows (see
    /// `Admission::max_minted_per_day`).
    #[error("{owner:?} minted {max} keys in the last 24 hours")]
    TooManyMints { owner: String, max: u64 },

    /// A mint was checked against an older version of its subscription than
    /// the one now stored (it changed in between): check again.
    #[error("subscription {0:?} changed while the key was minted")]
    SubscriptionChanged(String),

    /// The subscription cannot be deleted while keys (revoked ones included)
    /// still reference it.
    #[error("subscription {subscription:?} is still referenced by {keys} key(s)")]
    InUse { subscription: String, keys: usize },

    /// A price in another currency than the prices already stored.
    #[error("prices are kept in one currency: {model:?} is priced in {existing}, not {currency}")]
    OtherCurrency {
        currency: String,
        model: String,
        existing: String,
    },

    /// The database could not be opened. `url` is redacted
    /// ([`super::redacted_url`]); the driver's message never holds the
    /// password.
    #[error("cannot open the database {url}: {error}")]
    Connect { url: String, error: sqlx::Error },

    #[error("database error")]
    Database(#[source] sqlx::Error),

    #[error("schema migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),

    /// A stored value could not be decoded (bad JSON, negative version):
    /// someone wrote to the tables behind the store's back.
    #[error("corrupt row: {0}")]
    Corrupt(String),

    /// A value could not be encoded as JSON for storage.
    #[error("cannot encode {what} as JSON")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}
