//! Subscriptions: upsert (revoking the keys a change of `groups` leaves
//! without a group, see `group_access`), read, and delete-unless-referenced.

use serde_json::json;

use super::audit::{self, AuditAction};
use super::rows::{subscription_from_row, to_json, version_to_db, SubscriptionRow};
use super::{group_access, version, Store, StoreError};

/// What [`Store::put_subscription_admitting`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionPut {
    /// The subscription's new version.
    pub version: u64,
    /// Keys revoked because the new `groups` admit none of the groups they
    /// were minted through, in id order.
    pub revoked_keys: Vec<String>,
}

impl Store {
    /// Creates or replaces a subscription and returns its new version,
    /// keeping every key whatever the new spec admits: for callers that
    /// apply no group rule (seeding, benchmarks). The API changes
    /// subscriptions with [`Store::put_subscription_admitting`].
    ///
    /// `created_at` is taken from `s` only when the name is new; an update
    /// keeps the stored one and takes `spec` and `updated_at` from `s`.
    /// `s.version` is ignored.
    pub async fn put_subscription(
        &self,
        s: &SubscriptionRow,
        actor: &str,
    ) -> Result<u64, StoreError> {
        Ok(self.put(s, None, actor).await?.version)
    }

    /// [`Store::put_subscription`] for a spec whose OIDC `groups` are
    /// `groups`: in the same transaction, every live key of the subscription
    /// recorded as minted through groups none of which is in `groups` is
    /// revoked at `s.updated_at` (see `group_access`).
    pub async fn put_subscription_admitting(
        &self,
        s: &SubscriptionRow,
        groups: &[String],
        actor: &str,
    ) -> Result<SubscriptionPut, StoreError> {
        self.put(s, Some(groups), actor).await
    }

    async fn put(
        &self,
        s: &SubscriptionRow,
        groups: Option<&[String]>,
        actor: &str,
    ) -> Result<SubscriptionPut, StoreError> {
        let spec = to_json("subscription spec", &s.spec)?;
        let mut tx = self.pool.begin().await?;
        let version = version::next(&mut tx).await?;

        // Writers are serialised by the counter bump, so this read cannot
        // race another put of the same name; it only feeds the audit detail.
        let existed =
            sqlx::query_scalar::<_, i64>("SELECT version FROM subscriptions WHERE name = $1")
                .bind(s.name.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        sqlx::query(
            "INSERT INTO subscriptions (name, spec, created_at, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET \
             spec = excluded.spec, updated_at = excluded.updated_at, version = excluded.version",
        )
        .bind(s.name.as_str())
        .bind(spec)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(version_to_db(version))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM subscription_tombstones WHERE name = $1")
            .bind(s.name.as_str())
            .execute(&mut *tx)
            .await?;
        let revoked_keys = match groups {
            Some(groups) => {
                group_access::revoke_outside(&mut tx, &s.name, groups, s.updated_at, actor).await?
            }
            None => Vec::new(),
        };

        let mut detail = json!({ "created": !existed, "version": version, "spec": s.spec });
        if !revoked_keys.is_empty() {
            detail["revoked_keys"] = json!(revoked_keys);
        }
        audit::record(
            &mut tx,
            version,
            actor,
            AuditAction::SubscriptionPut,
            &s.name,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(SubscriptionPut {
            version,
            revoked_keys,
        })
    }

    pub async fn get_subscription(
        &self,
        name: &str,
    ) -> Result<Option<SubscriptionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT name, spec, created_at, updated_at, version FROM subscriptions WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    /// All subscriptions, ordered by name.
    pub async fn list_subscriptions(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, spec, created_at, updated_at, version FROM subscriptions ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(subscription_from_row).collect()
    }

    /// Deletes a subscription that no key references; `Ok(false)` when it
    /// does not exist. Revoked keys still count: they are kept for sync and
    /// audit, and the foreign key would refuse the delete anyway.
    pub async fn delete_subscription(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version = version::next(&mut tx).await?;

        let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE subscription = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        if keys > 0 {
            // Dropping `tx` rolls back, returning the version unused.
            return Err(StoreError::InUse {
                subscription: name.to_owned(),
                keys: usize::try_from(keys).unwrap_or(usize::MAX),
            });
        }
        let deleted = sqlx::query("DELETE FROM subscriptions WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO subscription_tombstones (name, version) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET version = excluded.version",
        )
        .bind(name)
        .bind(version_to_db(version))
        .execute(&mut *tx)
        .await?;

        let detail = json!({ "version": version });
        audit::record(
            &mut tx,
            version,
            actor,
            AuditAction::SubscriptionDelete,
            name,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
