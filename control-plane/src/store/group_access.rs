//! Keys follow their subscription's `groups`. A key minted by a member of
//! group A keeps working only while the subscription admits A (or another
//! group it was minted through): when an administrator takes A off the
//! subscription, the key is revoked in the same transaction as the change.
//! The gateway filter checks no groups for managed keys, so this revocation
//! is what ends the access, and it reaches the gateways by key sync like an
//! owner's own.
//!
//! Invariants:
//! - after a subscription change commits, no live key of it has recorded
//!   groups that miss all of its new `groups` (a mint racing the change is
//!   refused by the version check in `keys`);
//! - keys without a record (an administrator's mint, or one from before
//!   migration 6) are never revoked here, and neither are keys already
//!   revoked or expired: there is nothing left to take away;
//! - each revocation is its own change (version, `key.revoke` audit row with
//!   a reason), through `keys::revoke_within`, the path every revocation takes.

use sqlx::AnyConnection;

use super::keys::revoke_within;
use super::rows::{key_from_row, via_groups_from_row};
use super::{version, StoreError};

/// The audit reason of a revocation made here.
pub(super) const REASON: &str =
    "the subscription no longer admits any group the key was minted through";

/// Whether a key minted through `via_groups` (`None`: no record) may still
/// be used once its subscription admits `groups`.
pub(super) fn still_admitted(via_groups: Option<&[String]>, groups: &[String]) -> bool {
    via_groups.is_none_or(|via| via.iter().any(|g| groups.contains(g)))
}

/// Revokes, at `at` and on `actor`'s behalf, every live key of
/// `subscription` that [`still_admitted`] refuses under `groups`; returns
/// their ids in id order. Runs inside the caller's write transaction (the
/// counter already bumped, so no mint can interleave).
pub(super) async fn revoke_outside(
    tx: &mut AnyConnection,
    subscription: &str,
    groups: &[String],
    at: i64,
    actor: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, owner, subscription, name, labels, salt, hash, created_at, expires_at, revoked_at, version, via_groups \
         FROM api_keys WHERE subscription = $1 AND revoked_at IS NULL \
         AND (expires_at IS NULL OR expires_at > $2) AND via_groups IS NOT NULL \
         ORDER BY id",
    )
    .bind(subscription)
    .bind(at)
    .fetch_all(&mut *tx)
    .await?;
    let mut revoked = Vec::new();
    for row in &rows {
        if still_admitted(via_groups_from_row(row)?.as_deref(), groups) {
            continue;
        }
        let mut key = key_from_row(row)?;
        // One version per key, as for any revocation: sync pages end on a
        // key's version, so two keys sharing one could split across pages.
        let version = version::next(tx).await?;
        revoke_within(tx, &mut key, version, at, actor, Some(REASON)).await?;
        revoked.push(key.id);
    }
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::still_admitted;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_key_is_kept_while_any_group_it_was_minted_through_remains() {
        for (via, groups, kept) in [
            (Some(&["a"][..]), &["a", "b"][..], true),
            (Some(&["a"][..]), &["b"][..], false),
            (Some(&["a", "b"][..]), &["b"][..], true),
            (Some(&["a", "b"][..]), &["c"][..], false),
            (Some(&["a"][..]), &[][..], false),
            // No record: an administrator's mint, or one from before the
            // record was kept; no group rule applies.
            (None, &["b"][..], true),
            (None, &[][..], true),
            // A record of no group (the API never writes one) admits nothing.
            (Some(&[][..]), &["a"][..], false),
        ] {
            let via = via.map(strings);
            assert_eq!(
                still_admitted(via.as_deref(), &strings(groups)),
                kept,
                "{via:?} under {groups:?}"
            );
        }
    }
}
