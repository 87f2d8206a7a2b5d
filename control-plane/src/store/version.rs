//! The change counter: one row, bumped once by every write transaction.
//!
//! Invariant: the bump is the first statement of each write transaction. On
//! PostgreSQL the row lock it takes is held until commit, and on SQLite the
//! first write takes the database write lock, so writers are serialised and a
//! version becomes visible only after every lower version has committed. That
//! is what lets `changes_since` bound its reads by the counter without missing
//! a change. Taking the write lock first also avoids SQLite's
//! read-then-upgrade deadlock (SQLITE_BUSY without waiting).

use sqlx::AnyConnection;

use super::rows::version_from_db;
use super::StoreError;

/// Assigns the next version. Rolled back with its transaction, so a refused
/// write leaves no gap.
pub(super) async fn next(conn: &mut AnyConnection) -> Result<u64, StoreError> {
    let v: i64 = sqlx::query_scalar(
        "UPDATE change_counter SET value = value + 1 WHERE id = 1 RETURNING value",
    )
    .fetch_one(conn)
    .await?;
    version_from_db(v)
}

/// The last version handed out (0 on an empty store).
pub(super) async fn current(conn: &mut AnyConnection) -> Result<u64, StoreError> {
    let v: i64 = sqlx::query_scalar("SELECT value FROM change_counter WHERE id = 1")
        .fetch_one(conn)
        .await?;
    version_from_db(v)
}
