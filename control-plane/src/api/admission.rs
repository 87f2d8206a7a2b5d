//! How many of the callers' requests run at once.
//!
//! The self-service API and the gateways' key sync share one process and
//! one database pool. Without a bound, a signed-in user (or a script of
//! theirs) holding many requests open, each with a database connection
//! (a year's usage report, a slow upload), would leave the gateways' sync
//! waiting for connections, and with it every revocation. So the callers'
//! requests (everything but the sync, health, metrics and the page) run at
//! most [`Admission::total`] at once, leaving the rest of the pool to the
//! sync and the usage sampler, and one caller (one subject, whatever
//! token it holds) at most [`Admission::per_caller`]: one user cannot take
//! every place from the others.
//!
//! A caller over their share is answered at once (429 `too_many_requests`);
//! a request that finds every place taken waits up to [`Admission::wait`]
//! for one, then gets a 503 `control_plane_busy`. Both carry `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// The callers' requests at once: the database pool
/// ([`crate::store::POOL_CONNECTIONS`]) less what the gateways' syncs (one
/// in flight per gateway, each short) and the sampler (one held
/// connection) need.
pub const CALLERS_AT_ONCE: usize = 12;
const _: () = assert!(CALLERS_AT_ONCE + 4 <= crate::store::POOL_CONNECTIONS as usize);

/// One caller's requests at once: the page asks for three in parallel.
pub const PER_CALLER_AT_ONCE: usize = 4;

/// How long a request waits for a place before it is answered 503.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Admission {
    total: Arc<Semaphore>,
    per_caller: usize,
    wait: Duration,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// A running request's place; given back when dropped.
pub struct Ticket {
    _permit: OwnedSemaphorePermit,
    _counted: Counted,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(CALLERS_AT_ONCE, PER_CALLER_AT_ONCE, WAIT)
    }
}

impl Admission {
    pub fn new(total: usize, per_caller: usize, wait: Duration) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total.max(1))),
            per_caller: per_caller.max(1),
            wait,
            running: Arc::default(),
        }
    }

    /// A place for a request of `subject`, or why there is none.
    pub async fn enter(&self, subject: &str) -> Result<Ticket, ApiError> {
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            let mine = running.entry(subject.to_string()).or_insert(0);
            if *mine >= self.per_caller {
                return Err(ApiError::TooManyRequests(self.per_caller));
            }
            *mine += 1;
        }
        // Counted from here: dropped on any way out, the ticket gives the
        // caller's count back.
        let counted = Counted {
            subject: subject.to_string(),
            running: Arc::clone(&self.running),
        };
        let permit = tokio::time::timeout(self.wait, Arc::clone(&self.total).acquire_owned())
            .await
            .map_err(|_| ApiError::Busy)?
            // The semaphore is never closed.
            .map_err(|_| ApiError::Busy)?;
        Ok(Ticket {
            _permit: permit,
            _counted: counted,
        })
    }
}

/// One of a caller's running requests, counted in [`Admission::enter`]
/// until dropped (with its ticket, or on the way out of `enter`).
struct Counted {
    subject: String,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mine) = running.get_mut(&self.subject) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                running.remove(&self.subject);
            }
        }
    }
}

/// Whether requests to `path` take a place: the callers' API, not the
/// gateways' sync (its own token, and what the places protect) nor the
/// health and page, which touch no database, nor the metrics, read from
/// it at most every few seconds (`prices::Exposition`).
pub fn takes_a_place(path: &str) -> bool {
    path.starts_with("/maas-api/v1/") && !path.starts_with("/maas-api/v1/sync")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ApiError) -> &'static str {
        match e {
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::Busy => "control_plane_busy",
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn a_caller_gets_their_share_and_others_theirs() {
        let a = Admission::new(3, 2, Duration::from_millis(50));
        let alice = [
            a.enter("alice").await.unwrap(),
            a.enter("alice").await.unwrap(),
        ];
        assert_eq!(
            code(a.enter("alice").await.err().unwrap()),
            "too_many_requests"
        );
        let bob = a.enter("bob").await.unwrap();
        // Every place taken: a wait, then busy.
        assert_eq!(
            code(a.enter("carol").await.err().unwrap()),
            "control_plane_busy"
        );
        drop(bob);
        let carol = a.enter("carol").await.unwrap();
        drop(alice);
        let again = a.enter("alice").await.unwrap();
        drop((carol, again));
        assert!(
            a.running.lock().unwrap().is_empty(),
            "every count given back"
        );
    }

    #[tokio::test]
    async fn a_request_that_waited_in_vain_gives_its_count_back() {
        let a = Admission::new(1, 1, Duration::from_millis(20));
        let bob = a.enter("bob").await.unwrap();
        assert!(a.enter("alice").await.is_err());
        drop(bob);
        assert!(a.running.lock().unwrap().is_empty());
        assert!(a.enter("alice").await.is_ok());
    }

    #[test]
    fn the_sync_and_the_page_take_no_place() {
        assert!(takes_a_place("/maas-api/v1/usage"));
        assert!(takes_a_place("/maas-api/v1/api-keys/abc"));
        for path in [
            "/maas-api/v1/sync",
            "/maas-api/v1/sync/keys/abc",
            "/maas-api/health",
            "/maas-api/ui",
            "/metrics",
        ] {
            assert!(!takes_a_place(path), "{path}");
        }
    }
}
