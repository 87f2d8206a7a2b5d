//! The oldest Redis the limiter runs on. Limitador's counter scripts set a
//! counter's window with `EXPIRE key ttl NX` (Redis 7.0): on an older server
//! the script's `INCRBY` runs and then `EXPIRE` fails, leaving a counter
//! without a TTL, whose window never resets. So the limiter reads the
//! server's version (`INFO server`) at start and refuses an older one, or
//! one that does not say.

/// Major and minor version of the oldest Redis with `EXPIRE … NX`.
const OLDEST: (u32, u32) = (7, 0);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("it is Redis {found}; maas-limiter needs Redis {}.{} or later (its counter scripts use EXPIRE ... NX)", OLDEST.0, OLDEST.1)]
    TooOld { found: String },
    #[error("its INFO server answer has no readable redis_version (found {found:?}); maas-limiter needs Redis {}.{} or later", OLDEST.0, OLDEST.1)]
    Unknown { found: Option<String> },
}

/// Checks the `redis_version` field of an `INFO server` answer.
pub fn check(info: &str) -> Result<(), VersionError> {
    let found = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
        .map(str::trim);
    let Some(version) = found.and_then(major_minor) else {
        return Err(VersionError::Unknown {
            found: found.map(str::to_string),
        });
    };
    if version < OLDEST {
        return Err(VersionError::TooOld {
            found: found.unwrap_or_default().to_string(),
        });
    }
    Ok(())
}

/// `7.0.15` → (7, 0); a missing minor is 0.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = match parts.next() {
        Some(minor) => minor.parse().ok()?,
        None => 0,
    };
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: &str) -> String {
        format!("# Server\r\nredis_version:{version}\r\nredis_git_sha1:00000000\r\nredis_mode:standalone\r\n")
    }

    #[test]
    fn redis_7_and_later_is_accepted() {
        for v in ["7.0.0", "7.0.15", "7.2.4", "8.0.1", "10.1"] {
            assert_eq!(check(&info(v)), Ok(()), "{v}");
        }
    }

    #[test]
    fn older_redis_is_refused_naming_its_version_and_the_need() {
        for v in ["6.2.14", "6.0.0", "5.0.7", "2.8.24"] {
            let err = check(&info(v)).unwrap_err();
            assert_eq!(err, VersionError::TooOld { found: v.into() });
            let message = err.to_string();
            assert!(
                message.contains(&format!("Redis {v}")) && message.contains("7.0 or later"),
                "{message}"
            );
        }
    }

    #[test]
    fn an_answer_without_a_readable_version_is_refused() {
        assert_eq!(
            check("# Server\r\nredis_mode:standalone\r\n"),
            Err(VersionError::Unknown { found: None })
        );
        assert_eq!(
            check(&info("unstable")),
            Err(VersionError::Unknown {
                found: Some("unstable".into())
            })
        );
    }
}
