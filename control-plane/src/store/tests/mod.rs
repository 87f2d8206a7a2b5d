//! The store's suite: each case in `cases` is one generic async fn taking a
//! `&Store`, and `for_each_backend!` turns it into a test per backend, so
//! SQLite and PostgreSQL are held to exactly the same behaviour.

mod backend;
mod cases;

/// For each case, `sqlite::<case>` and `postgres::<case>`; the latter needs
/// `MAAS_TEST_POSTGRES_URL` (`make test` starts a server and sets it) and
/// fails, saying so, without it: a test never passes without running.
macro_rules! for_each_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::backend::TestStore::sqlite().await;
                    super::cases::$case(&db.store).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::backend::TestStore::postgres().await;
                    super::cases::$case(&db.store).await;
                    db.finish().await;
                }
            )*
        }
    };
}

for_each_backend!(
    subscription_round_trip,
    upsert_bumps_version_and_keeps_created_at,
    key_round_trip,
    unknown_subscription_is_refused,
    duplicate_key_id_is_conflict,
    list_keys_by_owner,
    revoke_is_idempotent,
    changes_since_returns_exactly_what_changed,
    changes_are_paged_without_loss,
    a_subscription_changed_after_the_counter_read_comes_with_its_keys,
    delete_subscription_refused_while_keys_exist,
    audit_rows_in_order_without_secrets,
    hostile_strings_are_stored_verbatim,
    concurrent_inserts_get_distinct_versions,
    usage_adds_up_per_bucket_and_sums_over_a_range,
    sampled_usage_is_stored_with_the_reading_it_was_counted_to,
    key_cap_counts_live_keys_of_one_owner_in_one_subscription,
    concurrent_mints_never_exceed_the_cap,
    usage_is_kept_per_key_and_detailed_per_day_with_owners,
    prices_are_stored_in_one_currency_and_audited,
    a_change_of_groups_revokes_the_keys_minted_through_groups_it_drops,
    a_mint_checked_against_an_older_subscription_is_refused,
    the_daily_mint_bound_counts_the_owners_last_24_hours,
);

/// Reopening runs the migrator again over an up-to-date schema: it must be a
/// no-op that keeps the data (every restart of the control plane does this).
#[tokio::test]
async fn reopening_keeps_data_sqlite() {
    let db = backend::TestStore::sqlite().await;
    cases::reopen_keeps_data(&db.store, &db.url).await;
    db.finish().await;
}

#[tokio::test]
async fn reopening_keeps_data_postgres() {
    let db = backend::TestStore::postgres().await;
    cases::reopen_keeps_data(&db.store, &db.url).await;
    db.finish().await;
}

/// Migration 4 on a database an older release left: keys the administrator
/// token owned as "admin" move to its new identity.
#[tokio::test]
async fn old_admin_keys_move_sqlite() {
    let db = backend::TestStore::sqlite_through(3).await;
    cases::keys_of_the_old_admin_identity_move_to_the_new_one(&db.store, &db.url).await;
    db.finish().await;
}

#[tokio::test]
async fn old_admin_keys_move_postgres() {
    let db = backend::TestStore::postgres_through(3).await;
    cases::keys_of_the_old_admin_identity_move_to_the_new_one(&db.store, &db.url).await;
    db.finish().await;
}

/// Migration 5 on a database an older release left: its usage stays.
#[tokio::test]
async fn old_usage_survives_sqlite() {
    let db = backend::TestStore::sqlite_through(4).await;
    cases::usage_before_keys_were_counted_survives_migration_5(&db.store, &db.url).await;
    db.finish().await;
}

#[tokio::test]
async fn old_usage_survives_postgres() {
    let db = backend::TestStore::postgres_through(4).await;
    cases::usage_before_keys_were_counted_survives_migration_5(&db.store, &db.url).await;
    db.finish().await;
}

/// Migration 6 on a database an older release left: its keys have no record
/// of their groups, and keep working when the groups change.
#[tokio::test]
async fn old_keys_survive_a_change_of_groups_sqlite() {
    let db = backend::TestStore::sqlite_through(5).await;
    cases::keys_from_before_migration_6_survive_a_change_of_groups(&db.store, &db.url).await;
    db.finish().await;
}

#[tokio::test]
async fn old_keys_survive_a_change_of_groups_postgres() {
    let db = backend::TestStore::postgres_through(5).await;
    cases::keys_from_before_migration_6_survive_a_change_of_groups(&db.store, &db.url).await;
    db.finish().await;
}
