//! The PostgreSQL server tests share: `make test` starts one
//! (`scripts/postgres.sh`) and names it in `MAAS_TEST_POSTGRES_URL`; each
//! test makes its own database on it.

pub const POSTGRES_URL_VAR: &str = "MAAS_TEST_POSTGRES_URL";

/// The server's URL without its database (`postgres://user@host:port`),
/// for a test to add its own; a missing variable fails the test saying how
/// to start one.
pub fn postgres_server() -> String {
    let url = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_URL_VAR} is not set: this test needs a PostgreSQL server. `make test` starts one; \
             by hand: export {POSTGRES_URL_VAR}=$(./scripts/postgres.sh start)"
        )
    });
    match url.rsplit_once('/') {
        Some((server, _)) if server.contains("://") && !server.ends_with('/') => server.to_string(),
        _ => {
            panic!("{POSTGRES_URL_VAR}={url} is not a database URL (postgres://user@host:port/db)")
        }
    }
}
