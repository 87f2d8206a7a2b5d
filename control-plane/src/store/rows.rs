//! Row types as the rest of the control plane sees them, and their decoding
//! from database rows. Decoding is strict: a value the store could not have
//! written (bad JSON, negative version) is reported as `Corrupt`, never
//! replaced by a default.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::StoreError;

/// A subscription: a named plan that keys draw their limits from.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRow {
    pub name: String,
    /// JSON: models, limits, key_limits, max_tokens, cost_center, unlimited.
    /// The store keeps it opaque; the API layer owns its typed form.
    pub spec: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    /// Version of the last change; ignored on input, assigned by the store.
    pub version: u64,
}

/// An API key as stored: only a salted hash of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub owner: String,
    pub subscription: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub salt: String,
    /// Hex SHA-256; see the key module of the API for how it is computed.
    pub hash: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Version of the last change; ignored on input, assigned by the store.
    pub version: u64,
}

// Written by hand so that logging a key (or a failed assert) never prints
// the material an offline guessing attack would start from.
impl fmt::Debug for KeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRow")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("subscription", &self.subscription)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("salt", &"<redacted>")
            .field("hash", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("version", &self.version)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    /// Equal to the version of the change this row records.
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// What changed after a given version; see `Store::changes_since`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Changes {
    /// Sync from here next time.
    pub version: u64,
    /// Keys created or revoked, in version order.
    pub keys: Vec<KeyRow>,
    /// Subscriptions created or updated, in version order.
    pub subscriptions: Vec<SubscriptionRow>,
    /// Names of subscriptions deleted (and not re-created), in version order.
    pub deleted_subscriptions: Vec<String>,
    /// Another page of keys follows (see `Store::changes_page`).
    pub more: bool,
}

pub(super) fn subscription_from_row(row: &AnyRow) -> Result<SubscriptionRow, StoreError> {
    let name: String = row.try_get("name")?;
    let spec = json_column(row, "spec", &name)?;
    Ok(SubscriptionRow {
        spec,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: version_from_db(row.try_get("version")?)?,
        name,
    })
}

pub(super) fn key_from_row(row: &AnyRow) -> Result<KeyRow, StoreError> {
    let id: String = row.try_get("id")?;
    let labels = json_column(row, "labels", &id)?;
    Ok(KeyRow {
        labels,
        owner: row.try_get("owner")?,
        subscription: row.try_get("subscription")?,
        name: row.try_get("name")?,
        salt: row.try_get("salt")?,
        hash: row.try_get("hash")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        version: version_from_db(row.try_get("version")?)?,
        id,
    })
}

/// A key's `via_groups` (migration 6): `None` for a key minted without a
/// record of the groups it was minted through.
pub(super) fn via_groups_from_row(row: &AnyRow) -> Result<Option<Vec<String>>, StoreError> {
    let id: String = row.try_get("id")?;
    let text: Option<String> = row.try_get("via_groups")?;
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::Corrupt(format!("via_groups of {id:?}: {e}")))
    })
    .transpose()
}

pub(super) fn audit_from_row(row: &AnyRow) -> Result<AuditRow, StoreError> {
    let seq: i64 = row.try_get("seq")?;
    let detail = json_column(row, "detail", &seq.to_string())?;
    Ok(AuditRow {
        seq,
        detail,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
    })
}

/// JSON is stored as TEXT because the two databases share no JSON type the
/// `Any` driver can bind.
fn json_column<T: DeserializeOwned>(
    row: &AnyRow,
    column: &str,
    owner: &str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("{column} of {owner:?}: {e}")))
}

pub(super) fn to_json<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { what, source })
}

/// Versions are u64 in the API and BIGINT in the schema; the counter starts
/// at 0 and only grows, so a negative value means the table was tampered with.
pub(super) fn version_from_db(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative version {v}")))
}

/// Versions past i64::MAX cannot exist in the table, so clamping is exact for
/// "greater than" comparisons.
pub(super) fn version_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
