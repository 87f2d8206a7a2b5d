//! Database URLs as logs and errors may show them: a password in the
//! user-info (`postgres://u:PASSWORD@h/db`) or in the query
//! (`?password=PASSWORD`, or any parameter whose name says it is a secret,
//! however it is percent-encoded) becomes `***`.
//!
//! The rule errs towards hiding: an odd URL (a password holding an unencoded
//! `@`, `/` or `?`, a query holding an `@`) may lose more than its password,
//! never less.

const MASK: &str = "***";

/// `url` with every password replaced by `***`; the scheme, user, host,
/// database and other parameters are kept, so an operator can still tell
/// which database is meant.
pub fn redacted(url: &str) -> String {
    let url = redact_userinfo(url);
    match url.split_once('?') {
        Some((head, query)) => format!("{head}?{}", redact_query(query)),
        None => url,
    }
}

/// `scheme://user:password@rest` → `scheme://user:***@rest`. The last `@`
/// ends the user-info: libpq accepts an unencoded `@` in a password.
fn redact_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:{MASK}{}", &url[..start], &rest[at..]),
        // A user alone is no secret.
        None => url.to_string(),
    }
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret(key) => format!("{key}={MASK}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `password` (libpq, sqlx), `sslpassword`, `passwd`, `pwd`, and anything
/// naming a secret or a token: over-matching hides a harmless value.
fn is_secret(key: &str) -> bool {
    let key = percent_decoded(key).to_ascii_lowercase();
    ["pass", "pwd", "secret", "token"]
        .iter()
        .any(|word| key.contains(word))
}

fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        // (URL, as shown, the secret that must not show)
        let cases = [
            (
                "postgres://maas:s3cret@db:5432/maas",
                "postgres://maas:***@db:5432/maas",
                "s3cret",
            ),
            ("postgres://u:p@h/db", "postgres://u:***@h/db", ":p@"),
            (
                "postgres://h/db?password=hunter2&sslmode=require",
                "postgres://h/db?password=***&sslmode=require",
                "hunter2",
            ),
            (
                "postgres://u:p1@h/db?sslmode=require&password=p2",
                "postgres://u:***@h/db?sslmode=require&password=***",
                "p2",
            ),
            // URL-encoded: the value, and the parameter's name too.
            (
                "postgres://u:p%40ss%2Fw@h/db",
                "postgres://u:***@h/db",
                "p%40ss",
            ),
            (
                "postgres://h/db?pass%77ord=hun%74er2",
                "postgres://h/db?pass%77ord=***",
                "hun%74er2",
            ),
            (
                "postgres://h/db?PASSWORD=hunter2&sslpassword=k3y",
                "postgres://h/db?PASSWORD=***&sslpassword=***",
                "k3y",
            ),
            // An unencoded '@' or '?' in a password still hides all of it.
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db", "ss@h"),
            ("postgres://u:p?ss@h/db", "postgres://u:***@h/db", "p?ss"),
            // Nothing secret: unchanged.
            ("postgres://u@h:5432/db", "postgres://u@h:5432/db", "\0"),
            (
                "postgres://h/db?sslmode=require&application_name=cp",
                "postgres://h/db?sslmode=require&application_name=cp",
                "\0",
            ),
            (
                "sqlite:///data/maas.db?mode=rwc",
                "sqlite:///data/maas.db?mode=rwc",
                "\0",
            ),
            (
                "sqlite://.cache/control-plane/maas.db?mode=rwc",
                "sqlite://.cache/control-plane/maas.db?mode=rwc",
                "\0",
            ),
            ("sqlite::memory:", "sqlite::memory:", "\0"),
        ];
        for (url, shown, secret) in cases {
            let got = redacted(url);
            assert_eq!(got, shown, "{url}");
            assert!(!got.contains(secret), "{url}: {got}");
        }
    }
}
