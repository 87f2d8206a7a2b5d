//! Incremental sync for the gateway filter: "what changed after version V".
//!
//! Invariant: applying `changes_since(V)` on top of the state at V yields the
//! state at `Changes::version` or later, and never loses a change. The reads
//! are bounded by the counter value read first: every version at or below it
//! has committed (see `version`), so nothing at or below it can appear later.
//! A row changed again after the counter read is left out and comes back in
//! the next sync with its newer version, so no snapshot isolation is needed
//! and the same code works on PostgreSQL's READ COMMITTED and on SQLite.

use sqlx::Row;

use super::rows::{key_from_row, subscription_from_row, version_to_db, Changes};
use super::{version, Store, StoreError};

impl Store {
    /// Keys (revoked ones included) and subscriptions changed after
    /// `since`, deleted subscription names, and the version to sync from next.
    /// `since = 0` is a full sync. A `since` ahead of the store (the database
    /// was replaced) returns nothing and the store's lower version, which the
    /// caller should treat as a reason to resync from 0.
    pub async fn changes_since(&self, since: u64) -> Result<Changes, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let upto = version::current(&mut conn).await?;
        if upto <= since {
            return Ok(Changes {
                version: upto,
                ..Changes::default()
            });
        }
        let (lo, hi) = (version_to_db(since), version_to_db(upto));

        let keys = sqlx::query(
            "SELECT id, owner, subscription, name, labels, salt, hash, created_at, expires_at, revoked_at, version \
             FROM api_keys WHERE version > $1 AND version <= $2 ORDER BY version",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<Vec<_>, _>>()?;

        let subscriptions = sqlx::query(
            "SELECT name, spec, created_at, updated_at, version \
             FROM subscriptions WHERE version > $1 AND version <= $2 ORDER BY version",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(subscription_from_row)
        .collect::<Result<Vec<_>, _>>()?;

        let deleted_subscriptions = sqlx::query(
            "SELECT name FROM subscription_tombstones \
             WHERE version > $1 AND version <= $2 ORDER BY version",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("name"))
        .collect::<Result<Vec<_>, _>>()?;

        Ok(Changes {
            version: upto,
            keys,
            subscriptions,
            deleted_subscriptions,
        })
    }
}
