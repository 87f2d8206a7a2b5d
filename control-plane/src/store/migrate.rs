//! Schema migrations, embedded in the binary so a deployment needs no
//! migrations folder at run time. The `migrate!` macro would do this but
//! needs sqlx's `macros` feature; listing the files by hand keeps the build
//! free of compile-time database tooling. A test checks that every file in
//! `migrations/` is listed here.
//!
//! The same SQL runs on SQLite and PostgreSQL (see the header of
//! 0001_init.sql). Applied migrations are checksummed by sqlx: never edit a
//! released file, add a new one.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::SqlSafeStr;

/// (version, description, SQL) in the `NNNN_description.sql` naming of
/// `sqlx migrate`, so the sqlx CLI sees the same versions.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (2, "usage", include_str!("../../migrations/0002_usage.sql")),
    (
        3,
        "store_identity",
        include_str!("../../migrations/0003_store_identity.sql"),
    ),
    (
        4,
        "admin_identity",
        include_str!("../../migrations/0004_admin_identity.sql"),
    ),
    (
        5,
        "showback_keys_and_prices",
        include_str!("../../migrations/0005_showback_keys_and_prices.sql"),
    ),
    (
        6,
        "key_groups",
        include_str!("../../migrations/0006_key_groups.sql"),
    ),
    (
        7,
        "usage_by_key",
        include_str!("../../migrations/0007_usage_by_key.sql"),
    ),
    (
        8,
        "sampler_baselines",
        include_str!("../../migrations/0008_sampler_baselines.sql"),
    ),
];

pub(super) fn migrator() -> Migrator {
    migrator_through(i64::MAX)
}

/// The migrations up to version `last`: tests build a database as an older
/// release left it, then open it with [`migrator`].
pub(super) fn migrator_through(last: i64) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .filter(|(version, _, _)| *version <= last)
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|(v, d, _)| format!("{v:04}_{d}.sql"))
            .collect();
        assert_eq!(on_disk, embedded);
    }
}
