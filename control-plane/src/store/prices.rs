//! Model prices: upsert, list, delete, each change audit-logged like a
//! subscription's (prices turn usage into money, so who changed one and
//! when must be on record).
//!
//! Invariant: every stored price has the same currency, so any sum of
//! costs is in one currency; a price in another is refused.

use serde_json::json;
use sqlx::Row;

use super::audit::{self, AuditAction};
use super::{version, Store, StoreError};
use crate::showback::price::{Micros, Price};

fn micros_to_db(m: Micros) -> i64 {
    // Prices are bounded far below i64::MAX at validation.
    i64::try_from(m.0).unwrap_or(i64::MAX)
}

fn micros_from_db(v: i64) -> Result<Micros, StoreError> {
    u64::try_from(v)
        .map(Micros)
        .map_err(|_| StoreError::Corrupt("negative price in model_prices".into()))
}

impl Store {
    /// Creates or replaces the price of `p.model`, unless another model is
    /// priced in another currency.
    pub async fn put_price(&self, p: &Price, now: i64, actor: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version = version::next(&mut tx).await?;
        // Writers are serialised by the counter bump: no other put can slip
        // a second currency in between this check and the write.
        let other: Option<(String, String)> = sqlx::query(
            "SELECT model, currency FROM model_prices WHERE currency <> $1 AND model <> $2 LIMIT 1",
        )
        .bind(p.currency.as_str())
        .bind(p.model.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| Ok::<_, sqlx::Error>((row.try_get("model")?, row.try_get("currency")?)))
        .transpose()?;
        if let Some((model, currency)) = other {
            return Err(StoreError::OtherCurrency {
                currency: p.currency.clone(),
                model,
                existing: currency,
            });
        }
        sqlx::query(
            "INSERT INTO model_prices (model, currency, prompt_micros, completion_micros, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (model) DO UPDATE SET currency = excluded.currency, \
             prompt_micros = excluded.prompt_micros, \
             completion_micros = excluded.completion_micros, updated_at = excluded.updated_at",
        )
        .bind(p.model.as_str())
        .bind(p.currency.as_str())
        .bind(micros_to_db(p.prompt))
        .bind(micros_to_db(p.completion))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            version,
            actor,
            AuditAction::PricePut,
            &p.model,
            &p.json(),
        )
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Every price, ordered by model.
    pub async fn list_prices(&self) -> Result<Vec<Price>, StoreError> {
        let rows = sqlx::query(
            "SELECT model, currency, prompt_micros, completion_micros FROM model_prices ORDER BY model",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Price {
                    model: row.try_get("model")?,
                    currency: row.try_get("currency")?,
                    prompt: micros_from_db(row.try_get("prompt_micros")?)?,
                    completion: micros_from_db(row.try_get("completion_micros")?)?,
                })
            })
            .collect()
    }

    /// Removes the price of `model`; `Ok(false)` when it had none.
    pub async fn delete_price(&self, model: &str, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version = version::next(&mut tx).await?;
        let deleted = sqlx::query("DELETE FROM model_prices WHERE model = $1")
            .bind(model)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            // Dropping `tx` rolls back, returning the version unused.
            return Ok(false);
        }
        audit::record(
            &mut tx,
            version,
            actor,
            AuditAction::PriceDelete,
            model,
            &json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
