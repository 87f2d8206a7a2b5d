//! Limitador's engine behind one type, whichever storage holds the counters:
//!
//! - in memory: fast, exact, and private to this process, so lost at exit and
//!   not shared with another limiter;
//! - Redis: counters *and* reserve holds live in Redis, so every limiter that
//!   points at the same Redis (one per gateway, or a replicated pool) shares
//!   them, and a limiter restart loses nothing. Reserve is one Lua script
//!   (atomic); ShouldRateLimit reads then increments, so concurrent calls
//!   near a limit may pass it by a few hits, as with Limitador.
//!
//! Limits come from the limits file and never change while running.

use std::time::Duration;

use limitador::limit::{Context, Limit, Namespace};
use limitador::reservation::{CommitResult, ReservationId, ReservationLimits, ReserveResult};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::storage::AsyncStorage;
use limitador::{AsyncRateLimiter, AsyncRateLimiterBuilder, CheckResult, RateLimiterBuilder};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use limitador::errors::LimitadorError;

/// In-memory counters kept at most (least recently used go first).
const MEMORY_COUNTERS: u64 = 100_000;

/// How long to try reaching Redis at start before giving up.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one Redis connection attempt or command may take.
const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the counters live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    Memory,
    /// `redis://host:port[/db]`.
    Redis(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to Redis at {url}: {reason}")]
    Redis { url: String, reason: String },
    #[error("cannot install the limits: {0}")]
    Limits(String),
}

pub struct Engine {
    limiter: Limiter,
}

enum Limiter {
    /// Limitador's in-memory storage is synchronous (no I/O, short locks).
    Memory(limitador::RateLimiter),
    Redis(AsyncRateLimiter),
}

/// One call on whichever limiter: the in-memory one is called directly, the
/// Redis one awaited.
macro_rules! on_limiter {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.limiter {
            Limiter::Memory(limiter) => limiter.$method($($arg),*),
            Limiter::Redis(limiter) => limiter.$method($($arg),*).await,
        }
    };
}

impl Engine {
    /// Connects the storage and installs `limits`. `max_hold` caps a
    /// reserve's TTL, and is the TTL of one that names none.
    pub async fn start(
        storage: &Storage,
        limits: Vec<Limit>,
        max_hold: Duration,
    ) -> Result<Self, EngineError> {
        let holds = ReservationLimits {
            max_ttl: max_hold,
            ..ReservationLimits::default()
        };
        let limiter = match storage {
            Storage::Memory => {
                let limiter = RateLimiterBuilder::new(MEMORY_COUNTERS)
                    .reservation_limits(holds)
                    .build();
                limiter
                    .configure_with(limits)
                    .map_err(|e| EngineError::Limits(e.to_string()))?;
                Limiter::Memory(limiter)
            }
            Storage::Redis(url) => {
                let failed = |reason: String| EngineError::Redis {
                    url: redacted(url),
                    reason,
                };
                let redis = tokio::time::timeout(REDIS_CONNECT_TIMEOUT, connect(url))
                    .await
                    .map_err(|_| failed(format!("no answer in {REDIS_CONNECT_TIMEOUT:?}")))?
                    .map_err(|e| failed(e.to_string()))?;
                let limiter = AsyncRateLimiterBuilder::new(AsyncStorage::with_counter_storage(
                    Box::new(redis),
                ))
                .reservation_limits(holds)
                .build();
                limiter
                    .configure_with(limits)
                    .await
                    .map_err(|e| EngineError::Limits(e.to_string()))?;
                Limiter::Redis(limiter)
            }
        };
        Ok(Self { limiter })
    }

    /// Would `delta` more stay within every matching limit? Counts nothing.
    pub async fn check(
        &self,
        namespace: &Namespace,
        context: &Context<'_>,
        delta: u64,
    ) -> Result<CheckResult, LimitadorError> {
        on_limiter!(self.is_rate_limited(namespace, context, delta))
    }

    /// [`Engine::check`], and counts `delta` when it is allowed.
    pub async fn check_and_count(
        &self,
        namespace: &Namespace,
        context: &Context<'_>,
        delta: u64,
    ) -> Result<CheckResult, LimitadorError> {
        on_limiter!(self.check_rate_limited_and_update(namespace, context, delta))
    }

    /// Counts `delta` against every matching limit, over or not.
    pub async fn count(
        &self,
        namespace: &Namespace,
        context: &Context<'_>,
        delta: u64,
    ) -> Result<(), LimitadorError> {
        on_limiter!(self.update_counters(namespace, context, delta))
    }

    /// Holds `amount` against every matching counter unless that would pass
    /// a limit counting the live holds; `ttl` is capped by `max_hold`.
    pub async fn reserve(
        &self,
        namespace: &Namespace,
        context: &Context<'_>,
        amount: u64,
        ttl: Option<Duration>,
    ) -> Result<ReserveResult, LimitadorError> {
        on_limiter!(self.reserve(namespace, context, amount, ttl))
    }

    /// Counts `actual` and releases the hold `id` if it is still live.
    pub async fn commit(
        &self,
        namespace: &Namespace,
        context: &Context<'_>,
        id: Option<&ReservationId>,
        actual: u64,
    ) -> Result<CommitResult, LimitadorError> {
        on_limiter!(self.commit_reservation(namespace, context, id, actual))
    }

    pub fn storage_name(&self) -> &'static str {
        match self.limiter {
            Limiter::Memory(_) => "memory",
            Limiter::Redis(_) => "redis",
        }
    }
}

/// Limitador's Redis storage over a connection manager that gives up fast:
/// its defaults retry a lost connection for about 13 s and wait for an
/// answer forever, holding every call that long, where a gateway's deadline
/// is milliseconds. Failing within about a second answers UNAVAILABLE
/// instead, and a later call reconnects.
async fn connect(url: &str) -> redis::RedisResult<AsyncRedisStorage> {
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(REDIS_CALL_TIMEOUT)
        .set_response_timeout(REDIS_CALL_TIMEOUT);
    let manager = ConnectionManager::new_with_config(redis::Client::open(url)?, config).await?;
    AsyncRedisStorage::new_with_conn_manager(manager).await
}

/// `url` without its password, for messages and logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn redacts_credentials_only() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:secret@10.0.0.1:6379/2",
                "redis://***@10.0.0.1:6379/2",
            ),
            ("rediss://user:p@ss@host", "rediss://***@host"),
        ];
        for (url, shown) in cases {
            assert_eq!(redacted(url), shown);
        }
    }
}
