//! Limitador's engine behind one type, whichever storage holds the counters:
//!
//! - in memory: fast, exact, and private to this process, so not shared with
//!   another limiter and lost at exit: after a restart every limit starts
//!   afresh, and a gateway's commit of a hold made before it only counts its
//!   amount (as `Report` does). Calls run one at a time: Limitador's memory
//!   storage reads a counter and adds to it in two steps (and a reserve reads
//!   the counters before it locks its holds), so racing calls could each see
//!   room and pass a limit together; each call is microseconds;
//! - Redis (7.0 or later, checked at start: `redis_version`): counters
//!   *and* reserve holds live in Redis, so every limiter that points at the
//!   same Redis (one per gateway, or a replicated pool) shares them, and a
//!   limiter restart loses nothing. Reserve, and ShouldRateLimit's check and
//!   count, are each one Lua script, atomic in Redis, so racing calls from
//!   any number of limiters cannot pass a limit together.
//!
//! Holds are Limitador's reservations: a hold of `amount` is admitted when
//! every matching counter's value plus its live holds plus `amount` stays
//! within the limit, all counters or none; it ends at its commit, its TTL
//! (capped by `max_hold`), or its counter's window, whichever comes first.
//! The tests below pin those rules on the in-memory storage.
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

/// Where the counters live. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub enum Storage {
    Memory,
    /// `redis://host:port[/db]`, and the password to `AUTH` with (read from
    /// a file or the environment, never part of the URL on a command line).
    Redis {
        url: String,
        password: Option<String>,
    },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Memory => f.write_str("Memory"),
            Storage::Redis { url, password } => f
                .debug_struct("Redis")
                .field("url", &redacted(url))
                .field("password", &password.as_ref().map(|_| "***"))
                .finish(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to Redis at {url}: {reason}")]
    Redis { url: String, reason: String },
    #[error("Redis at {url} is unsupported: {source}")]
    RedisVersion {
        url: String,
        source: crate::redis_version::VersionError,
    },
    #[error("cannot install the limits: {0}")]
    Limits(String),
}

pub struct Engine {
    limiter: Limiter,
}

enum Limiter {
    /// Limitador's in-memory storage is synchronous (no I/O, short locks);
    /// the mutex makes each call whole (see the module's comment).
    Memory(std::sync::Mutex<limitador::RateLimiter>),
    Redis(AsyncRateLimiter),
}

/// One call on whichever limiter: the in-memory one is called directly,
/// alone, the Redis one awaited. A call that panicked holding the mutex
/// left the counters as they were between two of Limitador's steps, which
/// is what a racing call would have seen; the next ones go on.
macro_rules! on_limiter {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.limiter {
            Limiter::Memory(limiter) => limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .$method($($arg),*),
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
                Limiter::Memory(std::sync::Mutex::new(limiter))
            }
            Storage::Redis { url, password } => {
                let redis = tokio::time::timeout(REDIS_CONNECT_TIMEOUT, connect(url, password))
                    .await
                    .map_err(|_| EngineError::Redis {
                        url: redacted(url),
                        reason: format!("no answer in {REDIS_CONNECT_TIMEOUT:?}"),
                    })??;
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
/// instead, and a later call reconnects. A server too old for Limitador's
/// scripts is refused here, before any counter is written.
async fn connect(url: &str, password: &Option<String>) -> Result<AsyncRedisStorage, EngineError> {
    use redis::IntoConnectionInfo as _;
    let failed = |e: redis::RedisError| EngineError::Redis {
        url: redacted(url),
        reason: e.to_string(),
    };
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(REDIS_CALL_TIMEOUT)
        .set_response_timeout(REDIS_CALL_TIMEOUT);
    let mut info = url.into_connection_info().map_err(failed)?;
    if password.is_some() {
        info.redis.password.clone_from(password);
    }
    let client = redis::Client::open(info).map_err(failed)?;
    let mut manager = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(failed)?;
    let server: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut manager)
        .await
        .map_err(|e| EngineError::Redis {
            url: redacted(url),
            reason: format!("INFO server (to check its version): {e}"),
        })?;
    crate::redis_version::check(&server).map_err(|source| EngineError::RedisVersion {
        url: redacted(url),
        source,
    })?;
    AsyncRedisStorage::new_with_conn_manager(manager)
        .await
        .map_err(failed)
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
    use super::*;
    use crate::request::Subject;
    use limitador::limit::Expression;
    use maas_ratelimit_proto::RateLimitDescriptor;

    /// `max` per minute per `descriptors[0].user`, holds capped at `max_hold`.
    async fn memory(max: u64, max_hold: Duration) -> Engine {
        let limit = Limit::new(
            "ns",
            max,
            60,
            Vec::new(),
            vec![Expression::parse("descriptors[0].user").unwrap()],
        );
        Engine::start(&Storage::Memory, vec![limit], max_hold)
            .await
            .unwrap()
    }

    fn user(name: &str) -> Subject {
        Subject::new("ns".into(), &[RateLimitDescriptor::new([("user", name)])]).unwrap()
    }

    /// Reserves `amount` for `name`: the hold's id, or `None` when refused.
    async fn hold(
        engine: &Engine,
        name: &str,
        amount: u64,
        ttl: Option<Duration>,
    ) -> Option<ReservationId> {
        let subject = user(name);
        let result = engine
            .reserve(&subject.namespace, &subject.context(), amount, ttl)
            .await
            .unwrap();
        assert_eq!(result.limited, result.reservation_id.is_none());
        result.reservation_id
    }

    async fn commit(engine: &Engine, name: &str, id: Option<&ReservationId>, actual: u64) -> bool {
        let subject = user(name);
        engine
            .commit(&subject.namespace, &subject.context(), id, actual)
            .await
            .unwrap()
            .reservation_released
    }

    async fn fits(engine: &Engine, name: &str, delta: u64) -> bool {
        let subject = user(name);
        !engine
            .check(&subject.namespace, &subject.context(), delta)
            .await
            .unwrap()
            .limited
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn holds_count_against_the_limit_until_committed() {
        let engine = memory(10, MINUTE).await;
        let first = hold(&engine, "a", 6, None).await.unwrap();
        assert!(hold(&engine, "a", 5, None).await.is_none());
        assert!(hold(&engine, "a", 4, None).await.is_some());
        assert!(hold(&engine, "a", 1, None).await.is_none());
        assert!(
            hold(&engine, "b", 10, None).await.is_some(),
            "holds are per counter"
        );

        // The commit counts 2 and frees the 6 held; the other hold (4) stays.
        assert!(commit(&engine, "a", Some(&first), 2).await);
        assert!(hold(&engine, "a", 4, None).await.is_some());
        assert!(hold(&engine, "a", 1, None).await.is_none());
        // Holds are not counts: a check sees only the 2 committed.
        assert!(fits(&engine, "a", 8).await && !fits(&engine, "a", 9).await);
    }

    #[tokio::test]
    async fn a_hold_expires_and_a_late_commit_counts_like_report() {
        let engine = memory(10, MINUTE).await;
        let id = hold(&engine, "a", 10, Some(Duration::from_millis(50)))
            .await
            .unwrap();
        assert!(hold(&engine, "a", 1, None).await.is_none());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(
            hold(&engine, "a", 3, None).await.is_some(),
            "the expired hold is gone"
        );
        assert!(
            !commit(&engine, "a", Some(&id), 4).await,
            "nothing left to release"
        );
        assert!(
            fits(&engine, "a", 6).await && !fits(&engine, "a", 7).await,
            "the 4 counted"
        );
        // And the live hold of 3 still counts against further holds.
        assert!(hold(&engine, "a", 4, None).await.is_none());
        assert!(hold(&engine, "a", 3, None).await.is_some());
    }

    #[tokio::test]
    async fn max_hold_caps_a_requested_ttl_and_is_the_default() {
        let engine = memory(10, Duration::from_millis(50)).await;
        assert!(hold(&engine, "a", 10, Some(MINUTE)).await.is_some());
        assert!(hold(&engine, "b", 10, None).await.is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(hold(&engine, "a", 10, None).await.is_some());
        assert!(hold(&engine, "b", 10, None).await.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_holds_never_pass_the_limit() {
        let engine = std::sync::Arc::new(memory(100, MINUTE).await);
        let tasks: Vec<_> = (0..60)
            .map(|_| {
                let engine = std::sync::Arc::clone(&engine);
                tokio::spawn(async move { hold(&engine, "a", 3, None).await.is_some() })
            })
            .collect();
        let mut granted = 0;
        for task in tasks {
            granted += u64::from(task.await.unwrap());
        }
        // 33 holds of 3 fit in 100; a 34th would make 102.
        assert_eq!(granted, 33);
    }

    #[tokio::test]
    async fn an_amount_of_zero_holds_nothing() {
        let engine = memory(1, MINUTE).await;
        let subject = user("a");
        let result = engine
            .reserve(&subject.namespace, &subject.context(), 0, None)
            .await
            .unwrap();
        assert!(!result.limited && result.reservation_id.is_none());
        assert!(hold(&engine, "a", 1, None).await.is_some());
    }

    #[test]
    fn storage_debug_hides_the_password() {
        let storage = Storage::Redis {
            url: "redis://127.0.0.1:6379".into(),
            password: Some("hunter2".into()),
        };
        let shown = format!("{storage:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
    }

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
