//! Incremental sync for the gateway filter: "what changed after version V",
//! in pages of at most N keys.
//!
//! Invariant: applying `changes_page(V, n)` on top of the state at V yields
//! the state at `Changes::version` or later for keys, and never loses a
//! change; a page carries, at their latest state, every subscription changed
//! after V, so a key never arrives before its subscription.
//!
//! Keys and tombstones are bounded by the counter value read first: every
//! version at or below it has committed (see `version`), so nothing at or
//! below it can appear later, and a row changed again after the counter read
//! is left out and comes back in the next sync with its newer version.
//! Subscriptions are not bounded above: one changed between the counter read
//! and its own read has moved past the bound, and leaving it out would send
//! its keys without it (on a full sync the filter replaces its whole
//! subscription map, so the subscription would vanish until the next sync).
//! Sending a subscription's latest state early is harmless, and it is sent
//! again with the sync that reaches its version. So no snapshot isolation is
//! needed and the same code works on PostgreSQL's READ COMMITTED and on
//! SQLite.

use sqlx::{AnyConnection, Row};

use super::rows::{key_from_row, subscription_from_row, version_to_db, Changes};
use super::{version, Store, StoreError};

impl Store {
    /// Keys (revoked ones included) and subscriptions changed after
    /// `since`, deleted subscription names, and the version to sync from next.
    /// `since = 0` is a full sync. A `since` ahead of the store (the database
    /// was replaced) returns nothing and the store's lower version, which the
    /// caller should treat as a reason to resync from 0.
    pub async fn changes_since(&self, since: u64) -> Result<Changes, StoreError> {
        self.changes_page(since, None).await
    }

    /// [`Store::changes_since`] with at most `max_keys` keys: the oldest
    /// changes first; `more` says another page follows, to be asked for
    /// with `since` = this page's `version`.
    pub async fn changes_page(
        &self,
        since: u64,
        max_keys: Option<usize>,
    ) -> Result<Changes, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let upto = version::current(&mut conn).await?;
        changes_upto(&mut conn, since, upto, max_keys).await
    }

    /// [`Store::changes_page`] with the counter read as `upto`: how a test
    /// puts a change between the counter read and the row reads.
    #[cfg(test)]
    pub(crate) async fn changes_page_read_at(
        &self,
        since: u64,
        upto: u64,
        max_keys: Option<usize>,
    ) -> Result<Changes, StoreError> {
        let mut conn = self.pool.acquire().await?;
        changes_upto(&mut conn, since, upto, max_keys).await
    }
}

/// The rows of a page whose counter read gave `upto`.
async fn changes_upto(
    conn: &mut AnyConnection,
    since: u64,
    upto: u64,
    max_keys: Option<usize>,
) -> Result<Changes, StoreError> {
    if upto <= since {
        return Ok(Changes {
            version: upto,
            ..Changes::default()
        });
    }
    let (lo, hi) = (version_to_db(since), version_to_db(upto));

    // One more than asked for tells whether another page follows.
    let fetch = max_keys.map_or(i64::MAX, |n| {
        i64::try_from(n.max(1)).unwrap_or(i64::MAX - 1) + 1
    });
    let mut keys = sqlx::query(
            "SELECT id, owner, subscription, name, labels, salt, hash, created_at, expires_at, revoked_at, version \
             FROM api_keys WHERE version > $1 AND version <= $2 ORDER BY version LIMIT $3",
        )
        .bind(lo)
        .bind(hi)
        .bind(fetch)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let mut version = upto;
    let mut more = false;
    if let Some(n) = max_keys.map(|n| n.max(1)) {
        if keys.len() > n {
            keys.truncate(n);
            // Versions are unique per change, so every key change up to
            // the page's last one is in it.
            version = keys.last().map_or(upto, |k| k.version);
            more = true;
        }
    }

    // No upper bound: see the module's comment.
    let subscriptions = sqlx::query(
        "SELECT name, spec, created_at, updated_at, version \
             FROM subscriptions WHERE version > $1 ORDER BY version",
    )
    .bind(lo)
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
        version,
        keys,
        subscriptions,
        deleted_subscriptions,
        more,
    })
}
