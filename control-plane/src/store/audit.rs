//! The audit trail: one row per change, written in the same transaction as
//! the change, so the log holds exactly the changes that committed.
//!
//! Invariant: details never carry a key's salt or hash; callers build them
//! from the fields listed in `keys.rs`, not from the whole row.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::AnyConnection;

use super::rows::{audit_from_row, to_json, version_to_db, AuditRow};
use super::{Store, StoreError};

/// What a change did; the strings are the stable names consumers filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuditAction {
    SubscriptionPut,
    SubscriptionDelete,
    KeyCreate,
    KeyRevoke,
    PricePut,
    PriceDelete,
}

impl AuditAction {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AuditAction::SubscriptionPut => "subscription.put",
            AuditAction::SubscriptionDelete => "subscription.delete",
            AuditAction::KeyCreate => "key.create",
            AuditAction::KeyRevoke => "key.revoke",
            AuditAction::PricePut => "price.put",
            AuditAction::PriceDelete => "price.delete",
        }
    }
}

/// Records the change that was assigned `version`.
pub(super) async fn record(
    conn: &mut AnyConnection,
    version: u64,
    actor: &str,
    action: AuditAction,
    target: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, target, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(version_to_db(version))
    .bind(unix_now())
    .bind(actor)
    .bind(action.as_str())
    .bind(target)
    .bind(to_json("audit detail", detail)?)
    .execute(conn)
    .await?;
    Ok(())
}

/// Wall-clock time of the write. Row timestamps (created_at, revoked_at) are
/// the caller's; the audit time is when the store saw the change.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        // A clock before 1970 is broken; 0 marks the row as suspect rather
        // than failing the change it records.
        .unwrap_or(0)
}

impl Store {
    /// What names the change of `version` in this database and no other:
    /// the first 8 bytes of a SHA-256 of its audit row (`None` when there is
    /// none: version 0, or a version this database never reached). A
    /// database restored from a backup keeps its id and reuses the versions
    /// after the backup for other changes, so a gateway that synced up to
    /// version V asks with V's mark, and another one means its versions are
    /// not this database's.
    pub async fn change_mark(&self, version: u64) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, at, actor, action, target, detail FROM audit_log WHERE seq = $1",
        )
        .bind(version_to_db(version))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .as_ref()
            .map(audit_from_row)
            .transpose()?
            .map(|row| mark(&row)))
    }

    /// The `limit` most recent audit rows, newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, target, detail FROM audit_log \
             ORDER BY seq DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }
}

/// The audit row's fields, each length-prefixed so no two rows share a
/// digest input.
fn mark(row: &AuditRow) -> u64 {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(row.seq.to_le_bytes());
    hash.update(row.at.to_le_bytes());
    for field in [
        row.actor.as_str(),
        row.action.as_str(),
        row.target.as_str(),
        &row.detail.to_string(),
    ] {
        hash.update((field.len() as u64).to_le_bytes());
        hash.update(field.as_bytes());
    }
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}
