//! API keys: create, read, list by owner, revoke. Keys are never deleted, so
//! a revocation reaches the filter through incremental sync like any change.
//!
//! Invariants:
//! - with a cap ([`Store::insert_key_within`], [`Store::insert_admitted_key`])
//!   an owner never holds more live keys (neither revoked nor expired) in a
//!   subscription than the cap, however many mints race: the count is taken
//!   inside the writing transaction, after the version bump that serialises
//!   writers;
//! - an admitted key is written only if its subscription is still at the
//!   version its minter's rights were checked against, so a mint racing a
//!   change of the subscription's `groups` cannot slip a key past the
//!   revocation that change makes (see `group_access`);
//! - every revocation, whoever asks for it, goes through [`revoke_within`]:
//!   a version of its own (which key sync brings the gateways) and one
//!   `key.revoke` audit row.

use serde_json::json;
use sqlx::error::ErrorKind;
use sqlx::AnyConnection;

use super::audit::{self, AuditAction};
use super::rows::{key_from_row, to_json, version_to_db, via_groups_from_row, KeyRow};
use super::{version, Store, StoreError};

/// How the API admitted a mint; checked again inside the writing
/// transaction.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// The most live keys the owner may hold in the subscription.
    pub max_live: u64,
    /// The subscription's version the minter's rights were checked against;
    /// if it changed since, the mint is refused with
    /// [`StoreError::SubscriptionChanged`] (check again and retry).
    pub subscription_version: u64,
    /// The minter's groups the subscription admitted, recorded with the key:
    /// it is revoked when none of them is among the subscription's `groups`
    /// any more. `None` when the right came from no group (an
    /// administrator): the key is kept whatever the groups become.
    pub via_groups: Option<&'a [String]>,
    /// The most keys the owner may mint in any 24 hours, in every
    /// subscription together, revoked and expired ones included; `None`
    /// (an administrator's mint): no such bound.
    pub max_minted_per_day: Option<u64>,
}

const DAY_SECS: i64 = 86_400;

/// What `Store::insert` checks beyond the subscription's existence.
#[derive(Default)]
struct Checks<'a> {
    max_live: Option<u64>,
    max_minted_per_day: Option<u64>,
    subscription_version: Option<u64>,
    via_groups: Option<&'a [String]>,
}

impl Store {
    /// Stores a new key and returns its version. `k.version` is ignored.
    pub async fn insert_key(&self, k: &KeyRow, actor: &str) -> Result<u64, StoreError> {
        self.insert(k, actor, Checks::default()).await
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
        let checks = Checks {
            max_live: Some(max_live),
            ..Checks::default()
        };
        self.insert(k, actor, checks).await
    }

    /// How the API mints: [`Store::insert_key_within`] the admission's cap,
    /// refused if the subscription changed since the minter's rights were
    /// checked, and with the groups it was minted through recorded.
    pub async fn insert_admitted_key(
        &self,
        k: &KeyRow,
        actor: &str,
        admission: &Admission<'_>,
    ) -> Result<u64, StoreError> {
        let checks = Checks {
            max_live: Some(admission.max_live),
            max_minted_per_day: admission.max_minted_per_day,
            subscription_version: Some(admission.subscription_version),
            via_groups: admission.via_groups,
        };
        self.insert(k, actor, checks).await
    }

    /// The groups key `id` was minted through: `None` if there is no such
    /// key, `Some(None)` if it was minted without a record of them.
    pub async fn key_via_groups(
        &self,
        id: &str,
    ) -> Result<Option<Option<Vec<String>>>, StoreError> {
        let row = sqlx::query("SELECT id, via_groups FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(via_groups_from_row).transpose()
    }

    async fn insert(&self, k: &KeyRow, actor: &str, checks: Checks<'_>) -> Result<u64, StoreError> {
        let labels = to_json("key labels", &k.labels)?;
        let via_groups = checks
            .via_groups
            .map(|g| to_json("key groups", &g))
            .transpose()?;
        let mut tx = self.pool.begin().await?;
        let version = version::next(&mut tx).await?;

        // Checked up front (writers are serialised, see `version`) so the
        // caller gets a typed error instead of a driver-specific constraint
        // message; the constraints below stay as the backstop.
        let subscription_version =
            sqlx::query_scalar::<_, i64>("SELECT version FROM subscriptions WHERE name = $1")
                .bind(k.subscription.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::UnknownSubscription(k.subscription.clone()))?;
        // The minter was admitted by the subscription as it was at that
        // version; a change since (its groups, say) may have taken the right
        // away, and the revocation that change made did not see this key.
        if checks
            .subscription_version
            .is_some_and(|v| version_to_db(v) != subscription_version)
        {
            return Err(StoreError::SubscriptionChanged(k.subscription.clone()));
        }

        let id_taken = sqlx::query_scalar::<_, i64>("SELECT version FROM api_keys WHERE id = $1")
            .bind(k.id.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if id_taken {
            return Err(StoreError::Conflict(k.id.clone()));
        }

        if let Some(max) = checks.max_live {
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

        if let Some(max) = checks.max_minted_per_day {
            // Under the same lock as the count above. Revoking a key frees
            // a place among the live ones, not this: without it, minting
            // and revoking in a loop grows the key table, and every
            // gateway's copy of it, without bound.
            // Keys an administrator minted for the owner record no groups
            // and count against no one's bound.
            let minted: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM api_keys \
                 WHERE owner = $1 AND created_at > $2 AND via_groups IS NOT NULL",
            )
            .bind(k.owner.as_str())
            .bind(k.created_at.saturating_sub(DAY_SECS))
            .fetch_one(&mut *tx)
            .await?;
            if u64::try_from(minted).unwrap_or(0) >= max {
                return Err(StoreError::TooManyMints {
                    owner: k.owner.clone(),
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
        // Set apart from the insert, which thereby stays the one a schema
        // before migration 6 accepts too (the migration tests seed old
        // databases through it).
        if let Some(via_groups) = via_groups {
            sqlx::query("UPDATE api_keys SET via_groups = $1 WHERE id = $2")
                .bind(via_groups)
                .bind(k.id.as_str())
                .execute(&mut *tx)
                .await?;
        }

        // Listed field by field: the salt and hash must never reach the log.
        let detail = json!({
            "version": version,
            "owner": k.owner,
            "subscription": k.subscription,
            "name": k.name,
            "labels": k.labels,
            "expires_at": k.expires_at,
            "via_groups": checks.via_groups,
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

        revoke_within(&mut tx, &mut key, version, at, actor, None).await?;
        tx.commit().await?;
        Ok(Some(key))
    }
}

/// Marks `key`, live and read in this transaction, revoked at `at` under
/// `version` (the transaction's own, from `version::next`), with its
/// `key.revoke` audit row; `reason` says why when it was not the owner's or
/// an administrator's own request. Updates `key` to match.
pub(super) async fn revoke_within(
    tx: &mut AnyConnection,
    key: &mut KeyRow,
    version: u64,
    at: i64,
    actor: &str,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE api_keys SET revoked_at = $1, version = $2 WHERE id = $3")
        .bind(at)
        .bind(version_to_db(version))
        .bind(key.id.as_str())
        .execute(&mut *tx)
        .await?;
    let mut detail = json!({ "version": version, "owner": key.owner, "revoked_at": at });
    if let Some(reason) = reason {
        detail["reason"] = json!(reason);
    }
    audit::record(tx, version, actor, AuditAction::KeyRevoke, &key.id, &detail).await?;
    key.revoked_at = Some(at);
    key.version = version;
    Ok(())
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
