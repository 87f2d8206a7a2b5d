//! Who may mint a key for which subscription, and what the mint records.
//!
//! A caller's right to mint comes from their OIDC groups (or from being an
//! administrator); the key remembers the groups that gave it, so a later
//! change of the subscription's `groups` can take it away again (see the
//! store's `group_access`). The right is checked against one version of the
//! subscription, and the store writes the key only if that version is still
//! the current one.

use super::{ApiError, AppState};
use crate::oidc::Identity;
use crate::store::{Admission, KeyRow, StoreError};
use crate::subscription::SubscriptionSpec;

/// How often a mint is checked again when its subscription changed under it
/// before giving up with a 409: changes are an administrator's, rare, so a
/// second failure in a row is unlikely and a third means something is
/// rewriting the subscription in a loop.
const ATTEMPTS: u32 = 3;

/// A subscription the caller may mint keys for, as it was checked.
pub(super) struct Admitted {
    spec: SubscriptionSpec,
    version: u64,
}

impl Admitted {
    /// The groups a key `who` mints is recorded as minted through; `None`
    /// for an administrator, whose right comes from no group (and whose keys
    /// a change of `groups` therefore leaves alone).
    fn via_groups(&self, who: &Identity) -> Option<Vec<String>> {
        (!who.admin).then(|| self.spec.admitting(&who.groups))
    }

    fn admission<'a>(
        &self,
        via_groups: Option<&'a [String]>,
        max_minted_per_day: Option<u64>,
    ) -> Admission<'a> {
        Admission {
            max_live: self.spec.max_keys_per_owner(),
            subscription_version: self.version,
            via_groups,
            max_minted_per_day,
        }
    }
}

/// The subscription `name`, if `who` may mint keys for it. To anyone but
/// an administrator, one that does not exist reads exactly like one their
/// groups do not allow: the same status and body.
pub(super) async fn usable_subscription(
    app: &AppState,
    who: &Identity,
    name: &str,
) -> Result<Admitted, ApiError> {
    let row = app.store.get_subscription(name).await?;
    let admitted = row
        .map(|row| {
            serde_json::from_value::<SubscriptionSpec>(row.spec).map(|spec| Admitted {
                spec,
                version: row.version,
            })
        })
        .transpose()
        .map_err(|e| ApiError::from(StoreError::Corrupt(e.to_string())))?;
    match admitted {
        Some(a) if who.admin || a.spec.admits_any(&who.groups) => Ok(a),
        None if who.admin => Err(ApiError::Invalid(format!("unknown subscription {name:?}"))),
        // Not even the name asked for: the body is byte for byte the same.
        _ => Err(ApiError::Forbidden(
            "subscription: none by that name that your groups may use".into(),
        )),
    }
}

/// Writes `key`, minted by `who` for the subscription `admitted` lets them
/// use, recording the groups it was minted through. A change of the
/// subscription between the check and the write (its groups, say) refuses
/// the write; it is checked again against the new one, which may now refuse
/// `who`.
pub(super) async fn insert(
    app: &AppState,
    who: &Identity,
    key: &KeyRow,
    mut admitted: Admitted,
) -> Result<(), ApiError> {
    let mut attempts = 1;
    loop {
        let via_groups = admitted.via_groups(who);
        // Administrators mint without the daily bound (provisioning).
        let per_day = (!who.admin).then_some(app.max_keys_minted_per_day);
        let admission = admitted.admission(via_groups.as_deref(), per_day);
        match app
            .store
            .insert_admitted_key(key, &who.subject, &admission)
            .await
        {
            Err(StoreError::SubscriptionChanged(_)) if attempts < ATTEMPTS => {
                attempts += 1;
                admitted = usable_subscription(app, who, &key.subscription).await?;
            }
            result => return result.map(|_| ()).map_err(ApiError::from),
        }
    }
}
