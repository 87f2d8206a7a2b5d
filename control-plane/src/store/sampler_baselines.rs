//! The sampler's last stored reading of each gateway (migration 0008),
//! written in the transaction that adds the usage counted from it, so the
//! usage and the reading it was counted up to never disagree: a replica
//! that takes the lease later counts on from exactly there.

use std::collections::BTreeMap;

use sqlx::{AnyConnection, Row};

use super::usage::{to_db, usage_of};
use super::StoreError;
use crate::showback::{Usage, UsageKey};

/// A gateway's cumulative counters at one reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayCounters {
    /// The gateway's admin URL, as the sampler is given it.
    pub gateway: String,
    /// Unix seconds of the reading.
    pub read_at: i64,
    /// Envoy's uptime then, in seconds.
    pub uptime: u64,
    pub counters: BTreeMap<UsageKey, Usage>,
}

/// What a reading changes in its gateway's stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineUpdate {
    pub gateway: String,
    pub read_at: i64,
    pub uptime: u64,
    /// The stored series are dropped first (the gateway restarted, or has
    /// no stored reading); otherwise series not in `counters` keep theirs.
    pub replace: bool,
    /// The series whose counters moved, at their new values.
    pub counters: Vec<(UsageKey, Usage)>,
}

/// Every gateway's stored reading.
pub(super) async fn load(conn: &mut AnyConnection) -> Result<Vec<GatewayCounters>, StoreError> {
    let mut gateways: BTreeMap<String, GatewayCounters> = BTreeMap::new();
    for row in sqlx::query("SELECT gateway, read_at, uptime FROM sampler_gateways")
        .fetch_all(&mut *conn)
        .await?
    {
        let gateway: String = row.try_get("gateway")?;
        let uptime: i64 = row.try_get("uptime")?;
        let counters = GatewayCounters {
            gateway: gateway.clone(),
            read_at: row.try_get("read_at")?,
            uptime: u64::try_from(uptime)
                .map_err(|_| StoreError::Corrupt(format!("negative uptime of {gateway}")))?,
            counters: BTreeMap::new(),
        };
        gateways.insert(gateway, counters);
    }
    for row in sqlx::query(
        "SELECT gateway, subscription, model, key_id, requests, prompt_tokens, completion_tokens \
         FROM sampler_counters",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let gateway: String = row.try_get("gateway")?;
        // Written only with their gateway's row; one without is no baseline.
        let Some(stored) = gateways.get_mut(&gateway) else {
            continue;
        };
        let key = UsageKey {
            subscription: row.try_get("subscription")?,
            model: row.try_get("model")?,
            key: row.try_get("key_id")?,
        };
        stored.counters.insert(key, usage_of(&row)?);
    }
    Ok(gateways.into_values().collect())
}

/// Applies `update` within the caller's transaction.
pub(super) async fn store(
    conn: &mut AnyConnection,
    update: &BaselineUpdate,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sampler_gateways (gateway, read_at, uptime) VALUES ($1, $2, $3) \
         ON CONFLICT (gateway) DO UPDATE SET read_at = excluded.read_at, uptime = excluded.uptime",
    )
    .bind(update.gateway.as_str())
    .bind(update.read_at)
    .bind(to_db(update.uptime))
    .execute(&mut *conn)
    .await?;
    if update.replace {
        sqlx::query("DELETE FROM sampler_counters WHERE gateway = $1")
            .bind(update.gateway.as_str())
            .execute(&mut *conn)
            .await?;
    }
    for (key, usage) in &update.counters {
        sqlx::query(
            "INSERT INTO sampler_counters \
             (gateway, subscription, model, key_id, requests, prompt_tokens, completion_tokens) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (gateway, subscription, model, key_id) DO UPDATE SET \
             requests = excluded.requests, prompt_tokens = excluded.prompt_tokens, \
             completion_tokens = excluded.completion_tokens",
        )
        .bind(update.gateway.as_str())
        .bind(key.subscription.as_str())
        .bind(key.model.as_str())
        .bind(key.key.as_str())
        .bind(to_db(usage.requests))
        .bind(to_db(usage.prompt_tokens))
        .bind(to_db(usage.completion_tokens))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
