//! Usage buckets: added to by the sampler, summed over a time range by the
//! showback API. Not audit-logged and not versioned: usage is measurement,
//! not configuration.

use std::collections::BTreeMap;

use sqlx::{AnyConnection, Connection, Row};

use super::{Store, StoreError};
use crate::showback::Usage;

/// Usage of one subscription on one model through one key (`key` empty:
/// token holders, and usage sampled before keys were counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub subscription: String,
    pub model: String,
    pub key: String,
    pub usage: Usage,
}

/// Usage on one UTC day of one subscription, model and key, with the key's
/// owner (empty when the key is not one this control plane minted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDetail {
    /// Unix seconds of the day's midnight UTC.
    pub day: i64,
    pub subscription: String,
    pub model: String,
    pub key: String,
    pub owner: String,
    pub usage: Usage,
}

impl UsageRow {
    pub fn new(
        subscription: &str,
        model: &str,
        requests: u64,
        prompt_tokens: u64,
        completion_tokens: u64,
    ) -> Self {
        Self {
            subscription: subscription.into(),
            model: model.into(),
            key: String::new(),
            usage: Usage {
                requests,
                prompt_tokens,
                completion_tokens,
            },
        }
    }

    /// The same usage, through key `key`.
    pub fn through_key(self, key: &str) -> Self {
        Self {
            key: key.into(),
            ..self
        }
    }
}

pub(super) fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The query of [`Store::usage_detail`], over every key (usage through no
/// key included) or over one owner's keys.
macro_rules! detail_sql {
    ($join:literal, $of_owner:literal) => {
        concat!(
            "SELECT u.bucket_start - (u.bucket_start % 86400) AS day, ",
            "u.subscription, u.model, u.key_id, COALESCE(k.owner, '') AS owner, ",
            "CAST(SUM(u.requests) AS BIGINT) AS requests, ",
            "CAST(SUM(u.prompt_tokens) AS BIGINT) AS prompt_tokens, ",
            "CAST(SUM(u.completion_tokens) AS BIGINT) AS completion_tokens ",
            "FROM usage_buckets u ",
            $join,
            " api_keys k ON k.id = u.key_id ",
            "WHERE u.bucket_start >= $1 AND u.bucket_start < $2 ",
            $of_owner,
            " GROUP BY u.bucket_start - (u.bucket_start % 86400), u.subscription, u.model, u.key_id, k.owner ",
            "ORDER BY day, u.subscription, u.model, u.key_id"
        )
    };
}
const DETAIL: &str = detail_sql!("LEFT JOIN", "");
const DETAIL_OF_OWNER: &str = detail_sql!("JOIN", "AND k.owner = $3");

impl Store {
    /// Adds `rows` to the bucket starting at `bucket_start` (Unix seconds),
    /// in one transaction. The sampler writes through its
    /// [`super::SamplerLease`] instead, so that only one replica adds.
    pub async fn add_usage(&self, bucket_start: i64, rows: &[UsageRow]) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        add_usage_on(&mut conn, bucket_start, rows).await
    }

    /// Usage per subscription and model in buckets starting in `[from, to)`,
    /// every key together: [`Store::usage_detail`] summed over days and keys.
    pub async fn usage(&self, from: i64, to: i64) -> Result<Vec<UsageRow>, StoreError> {
        let mut sums: BTreeMap<(String, String), Usage> = BTreeMap::new();
        for d in self.usage_detail(from, to).await? {
            *sums.entry((d.subscription, d.model)).or_default() += d.usage;
        }
        Ok(sums
            .into_iter()
            .map(|((subscription, model), usage)| UsageRow {
                subscription,
                model,
                key: String::new(),
                usage,
            })
            .collect())
    }

    /// Usage per UTC day (86,400 s), subscription, model and key in buckets starting in
    /// `[from, to)`, each key with its owner: what every showback grouping
    /// is summed from. Ordered by day, subscription, model, key.
    pub async fn usage_detail(&self, from: i64, to: i64) -> Result<Vec<UsageDetail>, StoreError> {
        self.detail(from, to, None).await
    }

    /// [`Store::usage_detail`] of the keys `owner` holds: the database
    /// reads their rows only, not everyone's to be filtered afterwards.
    pub async fn usage_detail_of(
        &self,
        owner: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageDetail>, StoreError> {
        self.detail(from, to, Some(owner)).await
    }

    async fn detail(
        &self,
        from: i64,
        to: i64,
        owner: Option<&str>,
    ) -> Result<Vec<UsageDetail>, StoreError> {
        let sql = if owner.is_some() {
            DETAIL_OF_OWNER
        } else {
            DETAIL
        };
        let mut query = sqlx::query(sql).bind(from).bind(to);
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(UsageDetail {
                    day: row.try_get("day")?,
                    subscription: row.try_get("subscription")?,
                    model: row.try_get("model")?,
                    key: row.try_get("key_id")?,
                    owner: row.try_get("owner")?,
                    usage: usage_of(row)?,
                })
            })
            .collect()
    }

    /// A subscription's usage (all models and keys) in buckets starting at
    /// or after `from`: what it used of a limit whose window began then.
    pub async fn usage_since(&self, subscription: &str, from: i64) -> Result<Usage, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT) AS requests, \
             CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
             CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens \
             FROM usage_buckets WHERE subscription = $1 AND bucket_start >= $2",
        )
        .bind(subscription)
        .bind(from)
        .fetch_one(&self.pool)
        .await?;
        usage_of(&row)
    }
}

/// The summed counters of a usage query's row.
pub(super) fn usage_of(row: &sqlx::any::AnyRow) -> Result<Usage, StoreError> {
    let count = |name: &str| -> Result<u64, StoreError> {
        let v: i64 = row.try_get(name)?;
        u64::try_from(v)
            .map_err(|_| StoreError::Corrupt(format!("negative {name} stored as usage")))
    };
    Ok(Usage {
        requests: count("requests")?,
        prompt_tokens: count("prompt_tokens")?,
        completion_tokens: count("completion_tokens")?,
    })
}

/// [`Store::add_usage`] on one connection, in one transaction.
pub(super) async fn add_usage_on(
    conn: &mut AnyConnection,
    bucket_start: i64,
    rows: &[UsageRow],
) -> Result<(), StoreError> {
    let mut tx = conn.begin().await?;
    add_rows(&mut tx, bucket_start, rows).await?;
    tx.commit().await?;
    Ok(())
}

/// Adds `rows` to the bucket starting at `bucket_start`, within the
/// caller's transaction.
pub(super) async fn add_rows(
    conn: &mut AnyConnection,
    bucket_start: i64,
    rows: &[UsageRow],
) -> Result<(), StoreError> {
    for r in rows {
        // Portable upsert: SQLite ≥ 3.24 and PostgreSQL share this form.
        sqlx::query(
            "INSERT INTO usage_buckets \
             (bucket_start, subscription, model, key_id, requests, prompt_tokens, completion_tokens) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (bucket_start, subscription, model, key_id) DO UPDATE SET \
             requests = usage_buckets.requests + excluded.requests, \
             prompt_tokens = usage_buckets.prompt_tokens + excluded.prompt_tokens, \
             completion_tokens = usage_buckets.completion_tokens + excluded.completion_tokens",
        )
        .bind(bucket_start)
        .bind(r.subscription.as_str())
        .bind(r.model.as_str())
        .bind(r.key.as_str())
        .bind(to_db(r.usage.requests))
        .bind(to_db(r.usage.prompt_tokens))
        .bind(to_db(r.usage.completion_tokens))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
