//! Usage buckets: added to by the sampler, summed over a time range by the
//! showback API. Not audit-logged and not versioned: usage is measurement,
//! not configuration.

use sqlx::Row;

use super::{Store, StoreError};
use crate::showback::Usage;

/// Usage of one subscription on one model over a queried range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub subscription: String,
    pub model: String,
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
            usage: Usage {
                requests,
                prompt_tokens,
                completion_tokens,
            },
        }
    }
}

fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Adds `rows` to the bucket starting at `bucket_start` (Unix seconds),
    /// in one transaction.
    pub async fn add_usage(&self, bucket_start: i64, rows: &[UsageRow]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            // Portable upsert: SQLite ≥ 3.24 and PostgreSQL share this form.
            sqlx::query(
                "INSERT INTO usage_buckets \
                 (bucket_start, subscription, model, requests, prompt_tokens, completion_tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (bucket_start, subscription, model) DO UPDATE SET \
                 requests = usage_buckets.requests + excluded.requests, \
                 prompt_tokens = usage_buckets.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = usage_buckets.completion_tokens + excluded.completion_tokens",
            )
            .bind(bucket_start)
            .bind(r.subscription.as_str())
            .bind(r.model.as_str())
            .bind(to_db(r.usage.requests))
            .bind(to_db(r.usage.prompt_tokens))
            .bind(to_db(r.usage.completion_tokens))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Usage per subscription and model in buckets starting in `[from, to)`.
    pub async fn usage(&self, from: i64, to: i64) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT subscription, model, \
             CAST(SUM(requests) AS BIGINT) AS requests, \
             CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
             CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens \
             FROM usage_buckets WHERE bucket_start >= $1 AND bucket_start < $2 \
             GROUP BY subscription, model ORDER BY subscription, model",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let count = |name: &str| -> Result<u64, StoreError> {
                    let v: i64 = row.try_get(name)?;
                    u64::try_from(v).map_err(|_| {
                        StoreError::Corrupt(format!("negative {name} in usage_buckets"))
                    })
                };
                Ok(UsageRow {
                    subscription: row.try_get("subscription")?,
                    model: row.try_get("model")?,
                    usage: Usage {
                        requests: count("requests")?,
                        prompt_tokens: count("prompt_tokens")?,
                        completion_tokens: count("completion_tokens")?,
                    },
                })
            })
            .collect()
    }
}
