//! Retry an assertion about state that settles asynchronously (a counter Envoy
//! flushes, an access-log line written after the response).

use std::time::{Duration, Instant};

/// How often the check is retried.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `check` until it returns `Ok`, at least once and for at most
/// `timeout`; panics with the last error when time runs out.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(error) if Instant::now() >= deadline => {
                panic!("not true after {timeout:?}: {error}")
            }
            Err(_) => std::thread::sleep(RETRY_INTERVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_check_passes() {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), || {
            calls += 1;
            if calls < 3 {
                Err(format!("call {calls}"))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(value, 3);
    }

    #[test]
    #[should_panic(expected = "still false")]
    fn panics_with_the_last_error() {
        eventually::<()>(Duration::from_millis(50), || Err("still false".into()));
    }
}
