//! API keys: create, read, list by owner, revoke. Keys are never deleted, so
//! a revocation reaches the filter through incremental sync like any change.
//!
//! Invariant: with a cap ([`Store::insert_key_within`]) an owner never holds
//! more live keys (neither revoked nor expired) in a subscription than the
//! cap, however many mints race: the count is taken inside the writing
//! transaction, after the version bump that serialises writers.

use serde_json::json;
use sqlx::error::ErrorKind;

use super::audit::{self, AuditAction};
use super::rows::{key_from_row, to_json, version_to_db, KeyRow};
use super::{version, Store, StoreError};

impl Store {
    /// Stores a new key and returns its version. `k.version` is ignored.
    pub async fn insert_key(&self, k: &KeyRow, actor: &str) -> Result<u64, StoreError> {
        self.insert(k, actor, None).await
    }

    /// [`Store::insert_key`], refused with [`StoreError::TooManyKeys`] when
    /// `k.owner` already holds `max_live` keys in `k.subscription` that are
    /// neither revoked nor expired at `k.created_at`.
    pub async fn insert_key_within(
        &self,
        k: &KeyRow,
        actor: &str,
        max_live: u64,
    ) -> Result<u64, StoreError> {
        self.insert(k, actor, Some(max_live)).await
    }

    async fn insert(
        &self,
        k: &KeyRow,
        actor: &str,
        max_live: Option<u64>,
    ) -> Result<u64, StoreError> {
        let labels = to_json("key labels", &k.labels)?;
        let mut tx = self.pool.begin().await?;
        let version = version::next(&mut tx).await?;

        // Checked up front (writers are serialised, see `version`) so the
        // caller gets a typed error instead of a driver-specific constraint
        // message; the constraints below stay as the backstop.
        let subscription_exists =
            sqlx::query_scalar::<_, i64>("SELECT version FROM subscriptions WHERE name = $1")
                .bind(k.subscription.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        if !subscription_exists {
            return Err(StoreError::UnknownSubscription(k.subscription.clone()));
        }

        let id_taken = sqlx::query_scalar::<_, i64>("SELECT version FROM api_keys WHERE id = $1")
            .bind(k.id.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if id_taken {
            return Err(StoreError::Conflict(k.id.clone()));
        }

        if let Some(max) = max_live {
            // Race-free: every writer bumped the counter first and holds its
            // lock (the row lock on PostgreSQL, the write lock on SQLite)
            // until commit, so no other mint can commit between this count
            // and the insert.
            let live: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM api_keys \
                 WHERE owner = $1 AND subscription = $2 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > $3)",
            )
            .bind(k.owner.as_str())
            .bind(k.subscription.as_str())
            .bind(k.created_at)
            .fetch_one(&mut *tx)
            .await?;
            if u64::try_from(live).unwrap_or(0) >= max {
                // Dropping `tx` rolls the version bump back.
                return Err(StoreError::TooManyKeys {
                    owner: k.owner.clone(),
                    subscription: k.subscription.clone(),
                    max,
                });
            }
        }

        let inserted = sqlx::query(
            "INSERT INTO api_keys \
             (id, owner, subscription, name, labels, salt, hash, created_at, expires_at, revoked_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(k.id.as_str())
        .bind(k.owner.as_str())
        .bind(k.subscription.as_str())
        .bind(k.name.as_str())
        .bind(labels)
        .bind(k.salt.as_str())
        .bind(k.hash.as_str())
        .bind(k.created_at)
        .bind(k.expires_at)
        .bind(k.revoked_at)
        .bind(version_to_db(version))
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            return Err(constraint_error(e, k));
        }

        // Listed field by field: the salt and hash must never reach the log.
        let detail = json!({
            "version": version,
            "owner": k.owner,
            "subscription": k.subscription,
            "name": k.name,
            "labels": k.labels,
            "expires_at": k.expires_at,
        });
        audit::record(
            &mut tx,
            version,
            actor,
            AuditAction::KeyCreate,
            &k.id,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, owner, subscription, name, labels, salt, hash, created_at, expires_at, revoked_at, version \
             FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Keys of one owner, or of everyone when `owner` is `None` (admins);
    /// revoked keys included, oldest first.
    pub async fn list_keys(&self, owner: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
        let rows = match owner {
            Some(owner) => {
                sqlx::query(
                    "SELECT id, owner, subscription, name, labels, salt, hash, created_at, expires_at, revoked_at, version \
                     FROM api_keys WHERE owner = $1 ORDER BY created_at, id",
                )
                .bind(owner)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, owner, subscription, name, labels, salt, hash, created_at, expires_at, revoked_at, version \
                     FROM api_keys ORDER BY created_at, id",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(key_from_row).collect()
    }

    /// Marks a key revoked at `at` and returns it; `None` if there is no such
    /// key. Idempotent: a key already revoked is returned unchanged (first
    /// revocation time, same version) and no audit row is written, since
    /// nothing changed.
    pub async fn revoke_key(
        &self,
        id: &str,
        at: i64,
        actor: &str,
    ) -> Result<Option<KeyRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version = version::next(&mut tx).await?;

        let row = sqlx::query(
            "SELECT id, owner, subscription, name, labels, salt, hash, created_at, expires_at, revoked_at, version \
             FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut key) = row.as_ref().map(key_from_row).transpose()? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() {
            // Dropping `tx` rolls the version bump back.
            return Ok(Some(key));
        }

        sqlx::query("UPDATE api_keys SET revoked_at = $1, version = $2 WHERE id = $3")
            .bind(at)
            .bind(version_to_db(version))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let detail = json!({ "version": version, "owner": key.owner, "revoked_at": at });
        audit::record(&mut tx, version, actor, AuditAction::KeyRevoke, id, &detail).await?;
        tx.commit().await?;

        key.revoked_at = Some(at);
        key.version = version;
        Ok(Some(key))
    }
}

/// Maps the constraint a racing or out-of-band writer could still trip to
/// the same typed errors the up-front checks give.
fn constraint_error(e: sqlx::Error, k: &KeyRow) -> StoreError {
    match e.as_database_error().map(|d| d.kind()) {
        Some(ErrorKind::UniqueViolation) => StoreError::Conflict(k.id.clone()),
        Some(ErrorKind::ForeignKeyViolation) => {
            StoreError::UnknownSubscription(k.subscription.clone())
        }
        _ => StoreError::Database(e),
    }
}
