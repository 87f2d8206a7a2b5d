//! Where the limiter's Redis password comes from: a file (a mounted
//! Kubernetes Secret, or the one `make run` writes with mode 0600) or the
//! environment, never the command line, where any local user reads it in
//! `ps`, and never a log line.
//!
//! A `--redis` URL carrying a password is refused for the same reason.

use std::path::{Path, PathBuf};

/// The environment variable that may hold the password.
pub const PASSWORD_ENV: &str = "MAAS_LIMITER_REDIS_PASSWORD";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("--redis: the URL carries a password, which every local user can read on the command line; give it in --redis-password-file or {PASSWORD_ENV} instead")]
    InUrl,
    #[error("--redis-password-file {path:?}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{PASSWORD_ENV} is set but empty")]
    EmptyEnv,
    #[error("both --redis-password-file and {PASSWORD_ENV} are set: give one")]
    Both,
    #[error("a Redis password was given but no --redis")]
    WithoutRedis,
}

/// The password to `AUTH` with, if any: the file's content without its
/// trailing line break, or the environment's value.
pub fn resolve(
    url: Option<&str>,
    file: Option<&Path>,
    env: Option<String>,
) -> Result<Option<String>, PasswordError> {
    if url.is_some_and(url_has_password) {
        return Err(PasswordError::InUrl);
    }
    let password = match (file, env) {
        (Some(_), Some(_)) => return Err(PasswordError::Both),
        (Some(path), None) => Some(read_file(path)?),
        (None, Some(value)) if value.is_empty() => return Err(PasswordError::EmptyEnv),
        (None, value) => value,
    };
    if password.is_some() && url.is_none() {
        return Err(PasswordError::WithoutRedis);
    }
    Ok(password)
}

fn read_file(path: &Path) -> Result<String, PasswordError> {
    let failed = |reason: String| PasswordError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(failed("empty".into()));
    }
    if password.contains(['\n', '\r']) {
        return Err(failed("more than one line".into()));
    }
    Ok(password.to_string())
}

/// `scheme://[user]:password@host…` (a password between `:` and `@` in the
/// authority), or a `pass`/`password` query parameter (`redis+unix://`).
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let in_query = query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password")
    });
    in_userinfo || in_query
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: Option<&str> = Some("redis://127.0.0.1:6379");

    fn file_with(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("maas-limiter-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn urls_with_a_password_are_refused() {
        let cases = [
            ("redis://127.0.0.1:6379", false),
            ("redis://127.0.0.1:6379/2", false),
            ("redis://user@host:6379", false),
            ("redis://:secret@10.0.0.1:6379/2", true),
            ("rediss://user:p@ss@host", true),
            ("redis://host/0?x=a:b@c", false),
            ("redis+unix:///run/redis.sock?db=0&pass=secret", true),
            ("redis+unix:///run/redis.sock?Password=secret", true),
            ("redis+unix:///run/redis.sock?db=1", false),
        ];
        for (url, refused) in cases {
            assert_eq!(url_has_password(url), refused, "{url}");
            assert_eq!(
                resolve(Some(url), None, None) == Err(PasswordError::InUrl),
                refused,
                "{url}"
            );
        }
    }

    #[test]
    fn password_from_a_file_or_the_environment() {
        let file = file_with("ok", "s3cret\n");
        assert_eq!(
            resolve(URL, Some(&file), None),
            Ok(Some("s3cret".to_string()))
        );
        assert_eq!(
            resolve(URL, None, Some("from-env".into())),
            Ok(Some("from-env".to_string()))
        );
        assert_eq!(resolve(URL, None, None), Ok(None));
        assert_eq!(resolve(None, None, None), Ok(None));
    }

    #[test]
    fn unusable_passwords_are_refused_with_the_reason() {
        let empty = file_with("empty", "\n");
        let two = file_with("two", "a\nb\n");
        let missing = PathBuf::from("/nonexistent/redis-password");
        let ok = file_with("ok2", "x");
        for (result, expected) in [
            (resolve(URL, Some(&empty), None), "empty"),
            (resolve(URL, Some(&two), None), "more than one line"),
            (resolve(URL, Some(&missing), None), "No such file"),
            (resolve(URL, None, Some(String::new())), "set but empty"),
            (resolve(URL, Some(&ok), Some("y".into())), "give one"),
            (resolve(None, Some(&ok), None), "no --redis"),
        ] {
            let message = result.unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("s3cret"));
        }
    }
}
