//! Stores to run the suite against: a fresh SQLite file, and a fresh
//! PostgreSQL database per test on the server `MAAS_TEST_POSTGRES_URL` names
//! (e.g. `postgres://postgres@127.0.0.1:5432/postgres`; `make test` starts
//! one), so tests never share state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::migrate::MigrateDatabase;
use sqlx::Any;

use crate::store::Store;

pub const POSTGRES_URL_VAR: &str = "MAAS_TEST_POSTGRES_URL";

pub struct TestStore {
    pub store: Store,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(TempFile),
    Postgres,
}

impl TestStore {
    pub async fn sqlite() -> TestStore {
        Self::sqlite_through(i64::MAX).await
    }

    /// A fresh SQLite store whose schema stops at migration `last`, as an
    /// older release left it.
    pub async fn sqlite_through(last: i64) -> TestStore {
        let file = TempFile(std::env::temp_dir().join(format!("{}.sqlite", unique_name())));
        let url = format!("sqlite://{}?mode=rwc", file.0.display());
        let store = Store::connect_through(&url, last)
            .await
            .expect("open sqlite store");
        TestStore {
            store,
            url,
            cleanup: Cleanup::Sqlite(file),
        }
    }

    /// A fresh database on the configured server; fails the test, saying
    /// how to get one, when none is configured.
    pub async fn postgres() -> TestStore {
        Self::postgres_through(i64::MAX).await
    }

    /// [`TestStore::postgres`] with the schema up to migration `last`.
    pub async fn postgres_through(last: i64) -> TestStore {
        let base = postgres_url();
        let url = with_database(&base, &unique_name());
        sqlx::any::install_default_drivers();
        Any::create_database(&url)
            .await
            .expect("create test database");
        let store = Store::connect_through(&url, last)
            .await
            .expect("open postgres store");
        TestStore {
            store,
            url,
            cleanup: Cleanup::Postgres,
        }
    }

    /// Drops the database. Not run when a test fails, which leaves the
    /// database (or file) behind for inspection.
    pub async fn finish(self) {
        self.store.close().await;
        match self.cleanup {
            Cleanup::Sqlite(file) => drop(file),
            Cleanup::Postgres => Any::force_drop_database(&self.url)
                .await
                .expect("drop test database"),
        }
    }
}

/// Lower-case, so PostgreSQL keeps the database name as written.
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "maas_store_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// `base` with its database (path) replaced by `db`, query string kept.
fn with_database(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let authority_start = head.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    format!("{server}/{db}{query}")
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[test]
fn with_database_replaces_only_the_path() {
    let cases = [
        ("postgres://u:p@h:5432/postgres", "postgres://u:p@h:5432/t"),
        (
            "postgres://u@h:5432/postgres?sslmode=disable",
            "postgres://u@h:5432/t?sslmode=disable",
        ),
        ("postgres://h", "postgres://h/t"),
    ];
    for (base, want) in cases {
        assert_eq!(with_database(base, "t"), want, "{base}");
    }
}

/// The server the PostgreSQL half of the suite runs on: required.
pub fn postgres_url() -> String {
    std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_URL_VAR} is not set: this test needs a PostgreSQL server. `make test` starts one; \
             by hand: export {POSTGRES_URL_VAR}=$(./scripts/postgres.sh start)"
        )
    })
}
