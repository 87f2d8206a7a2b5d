//! The right to add sampled usage: the gateways' counters are cumulative,
//! so if two control planes each read them and added the difference, every
//! figure would count twice. One replica at a time holds the lease.
//!
//! On PostgreSQL the lease is a session advisory lock taken on a connection
//! of its own (out of the pool), and the usage is written through that same
//! connection: if its session dies, the lock is released for another replica
//! to take, and this one's writes fail with it, so two replicas can never
//! both add. Waiting replicas ask again each interval. On SQLite the database
//! is one file of one replica (see `istio/base/control-plane.yaml`): the
//! lease is always granted.

use sqlx::{AnyConnection, Connection as _};

use super::sampler_baselines::{self, BaselineUpdate, GatewayCounters};
use super::usage::{add_rows, UsageRow};
use super::{Store, StoreError};

/// The advisory lock's key: "maassamp" in ASCII. Advisory locks are per
/// database, so this only has to be unique among the lock users of the
/// control plane's own database.
const SAMPLER_LOCK: i64 = 0x6d61_6173_7361_6d70;

/// Held while this replica samples; dropping it releases the lock (its
/// connection closes).
pub struct SamplerLease {
    conn: AnyConnection,
}

impl std::fmt::Debug for SamplerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerLease")
            .field("backend", &self.conn.backend_name())
            .finish()
    }
}

impl Store {
    /// The sampler's lease, or `None` while another replica holds it.
    pub async fn try_sampler_lease(&self) -> Result<Option<SamplerLease>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if conn.backend_name() == "PostgreSQL" {
            let granted: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(SAMPLER_LOCK)
                .fetch_one(&mut *conn)
                .await?;
            if !granted {
                // Holds nothing: back to the pool.
                return Ok(None);
            }
        }
        // Out of the pool once granted: the lock lives as long as the
        // session, which must not serve other work or be closed as idle.
        Ok(Some(SamplerLease {
            conn: conn.detach(),
        }))
    }
}

impl SamplerLease {
    /// The last holder's stored readings: where this holder counts on from.
    pub async fn baselines(&mut self) -> Result<Vec<GatewayCounters>, StoreError> {
        sampler_baselines::load(&mut self.conn).await
    }

    /// [`Store::add_usage`], through the lease's own session, and the
    /// reading the usage was counted up to, in one transaction.
    pub async fn add_usage(
        &mut self,
        bucket_start: i64,
        rows: &[UsageRow],
        reading: &BaselineUpdate,
    ) -> Result<(), StoreError> {
        let mut tx = self.conn.begin().await?;
        add_rows(&mut tx, bucket_start, rows).await?;
        sampler_baselines::store(&mut tx, reading).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the lease's session still answers: after a failed write, it
    /// tells a passing error (keep the lease, count the usage next time)
    /// from a lost session (whose lock another replica may now hold).
    pub async fn is_held(&mut self) -> bool {
        sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .is_ok()
    }
}
