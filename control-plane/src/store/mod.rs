//! Persistent state of the control plane: subscriptions, API keys (salted
//! hashes only), the audit log, and the version stream the gateway filter
//! syncs from.
//!
//! One code path serves SQLite and PostgreSQL through sqlx's `Any` driver:
//! the SQL is written to run unchanged on both, values are always bound
//! (`$1`, `$2`, … — both drivers accept them), never spliced into the text,
//! and sqlx only accepts `'static` SQL strings here, which enforces that.
//!
//! Invariants:
//! - every change gets the next value of one counter as its `version`, and
//!   versions become visible in increasing order (see `version`);
//! - every change writes exactly one audit row, in its own transaction, whose
//!   `seq` is that version; a refused or no-op call writes nothing;
//! - keys are never deleted, only revoked; a subscription cannot be deleted
//!   while any key references it;
//! - a key recorded as minted through OIDC groups is revoked, in the same
//!   transaction, by the subscription change that leaves it none of them
//!   (`group_access`);
//! - sampled usage is added by one replica at a time (`sampler_lease`),
//!   with the reading it was counted up to (`sampler_baselines`).

mod audit;
mod database_url;
mod error;
mod group_access;
mod keys;
mod migrate;
mod prices;
mod rows;
mod sampler_baselines;
mod sampler_lease;
mod subscriptions;
mod sync;
mod usage;
mod version;

#[cfg(test)]
mod tests;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

pub use database_url::redacted as redacted_url;
pub use error::StoreError;
pub use keys::Admission;
pub use rows::{AuditRow, Changes, KeyRow, SubscriptionRow};
pub use sampler_baselines::{BaselineUpdate, GatewayCounters};
pub use sampler_lease::SamplerLease;
pub use subscriptions::SubscriptionPut;
pub use usage::{UsageDetail, UsageRow};

/// Connections in the database pool (sqlx's default is 10): the callers'
/// requests take at most `api::admission::CALLERS_AT_ONCE` of them, the
/// gateways' syncs and the usage sampler the rest.
pub const POOL_CONNECTIONS: u32 = 20;

/// Handle to the database; cheap to clone (a shared pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    identity: std::sync::Arc<str>,
}

impl Store {
    /// Opens `url` (`sqlite://path?mode=rwc` or `postgres://…`) and applies
    /// pending migrations. An error names the URL without its password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, migrate::migrator()).await
    }

    /// A store whose schema stops at migration `last`: a database as an
    /// older release left it, for testing the migrations after it.
    #[cfg(test)]
    pub(crate) async fn connect_through(url: &str, last: i64) -> Result<Self, StoreError> {
        Self::open(url, migrate::migrator_through(last)).await
    }

    async fn open(url: &str, migrator: sqlx::migrate::Migrator) -> Result<Self, StoreError> {
        // Idempotent; must run before the first `Any` connection.
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .connect(url)
            .await
            .map_err(|error| StoreError::Connect {
                url: redacted_url(url),
                error,
            })?;
        migrator.run(&pool).await?;
        let identity = identity(&pool).await?;
        Ok(Store { pool, identity })
    }

    /// The database's random id, fixed at its creation (see
    /// `0003_store_identity.sql`): sync answers carry it.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Closes every pooled connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Reads the database's id, creating it on first use. Replicas starting at
/// once on a new PostgreSQL database race to insert; the one row wins and
/// every replica reads it.
async fn identity(pool: &AnyPool) -> Result<std::sync::Arc<str>, StoreError> {
    let mut fresh = [0u8; 16];
    getrandom::fill(&mut fresh).map_err(|e| StoreError::Corrupt(format!("no randomness: {e}")))?;
    let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
    sqlx::query("INSERT INTO store_identity (one, id) VALUES (1, $1) ON CONFLICT (one) DO NOTHING")
        .bind(fresh)
        .execute(pool)
        .await?;
    let id: String = sqlx::query_scalar("SELECT id FROM store_identity WHERE one = 1")
        .fetch_one(pool)
        .await?;
    Ok(id.into())
}
