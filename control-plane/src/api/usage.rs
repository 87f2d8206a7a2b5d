//! Showback over HTTP: `GET /maas-api/v1/usage` (a priced report over a
//! range, as JSON or CSV) and `GET /maas-api/v1/usage/limits` (use against
//! each subscription's limits now).
//!
//! A caller sees the subscriptions their groups admit (administrators: all),
//! in reports and limits alike. Reports go further: anyone but an
//! administrator sees only the usage through their own keys. A subscription
//! is shared by its groups' members, but which keys the others hold, who
//! they are and what they spent is theirs, as the key API keeps it (another
//! member's key reads as absent there). Limits stay per subscription: they
//! are shared, so every member needs the whole use against them, and a sum
//! names no key or owner.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::extract::ApiQuery;
use super::{ApiError, AppState};
use crate::oidc::Identity;
use crate::showback::limits;
use crate::showback::price::Price;
use crate::showback::report::{self, Catalog, Filter, Grouping};
use crate::store::UsageDetail;
use crate::subscription::SubscriptionSpec;
use crate::time::unix_now;

/// The report's parameters, each checked with an error naming it.
struct UsageQuery {
    from: i64,
    to: i64,
    grouping: Grouping,
    filter: Filter,
    csv: bool,
}

/// The longest range one report covers: a year and a bit, so a yearly
/// report (and its leap day) is one call.
const MAX_RANGE_SECS: i64 = 400 * 86_400;

const PARAMETERS: &[&str] = &[
    "from",
    "to",
    "group_by",
    "subscription",
    "model",
    "key",
    "owner",
    "format",
];

impl UsageQuery {
    /// `to` defaults to now, `from` to a day before `to`; `format` (`json`
    /// or `csv`) wins over `Accept: text/csv`.
    fn parse(pairs: &[(String, String)], headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, value) in pairs {
            if !PARAMETERS.contains(&name.as_str()) {
                return Err(ApiError::Invalid(format!(
                    "{name}: unknown parameter (expected one of {})",
                    PARAMETERS.join(", ")
                )));
            }
            if seen.insert(name, value).is_some() {
                return Err(ApiError::Invalid(format!("{name}: given more than once")));
            }
        }
        let time = |name: &str| -> Result<Option<i64>, ApiError> {
            seen.get(name)
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        ApiError::Invalid(format!("{name}: {v:?} is not a time in Unix seconds"))
                    })
                })
                .transpose()
        };
        let to = time("to")?.unwrap_or_else(|| unix_now() + 1);
        let from = time("from")?.unwrap_or(to.saturating_sub(86_400));
        if from >= to {
            return Err(ApiError::Invalid(format!(
                "from: {from} must be before to ({to})"
            )));
        }
        // One report reads every bucket of its range: a range of decades
        // from every signed-in user would keep the database busy for all.
        if to.saturating_sub(from) > MAX_RANGE_SECS {
            return Err(ApiError::Invalid(format!(
                "from: the range {from}..{to} is over {} days; ask for it in parts",
                MAX_RANGE_SECS / 86_400
            )));
        }
        let grouping = match seen.get("group_by") {
            Some(v) => v
                .parse()
                .map_err(|e| ApiError::Invalid(format!("group_by: {e}")))?,
            None => Grouping::default(),
        };
        let text = |name: &str| seen.get(name).map(|v| v.to_string());
        let csv = match seen.get("format") {
            Some(&"csv") => true,
            Some(&"json") => false,
            Some(other) => {
                return Err(ApiError::Invalid(format!(
                    "format: {other:?} is not json or csv"
                )))
            }
            None => headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim().starts_with("text/csv"))),
        };
        Ok(UsageQuery {
            from,
            to,
            grouping,
            filter: Filter {
                subscription: text("subscription"),
                model: text("model"),
                key: text("key"),
                owner: text("owner"),
            },
            csv,
        })
    }
}

/// The subscriptions `who` may see, with their specs.
async fn visible_subscriptions(
    app: &AppState,
    who: &Identity,
) -> Result<Vec<SubscriptionSpec>, ApiError> {
    Ok(app
        .store
        .list_subscriptions()
        .await?
        .into_iter()
        .filter_map(|row| serde_json::from_value::<SubscriptionSpec>(row.spec).ok())
        .filter(|s| who.admin || s.admits_any(&who.groups))
        .collect())
}

/// Whether a report for `who` counts `row`: everything for an
/// administrator; for anyone else only usage through a key they own (not
/// usage through no key, whose owner is empty: token holders', and what
/// was sampled before keys were counted).
fn is_own(who: &Identity, row: &UsageDetail) -> bool {
    who.admin || (!row.owner.is_empty() && row.owner == who.subject)
}

async fn prices_by_model(app: &AppState) -> Result<BTreeMap<String, Price>, ApiError> {
    Ok(app
        .store
        .list_prices()
        .await?
        .into_iter()
        .map(|p| (p.model.clone(), p))
        .collect())
}

pub(super) async fn usage(
    State(app): State<Arc<AppState>>,
    super::Caller(who): super::Caller,
    headers: HeaderMap,
    ApiQuery(pairs): ApiQuery<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let q = UsageQuery::parse(&pairs, &headers)?;
    let subscriptions = visible_subscriptions(&app, &who).await?;
    let cost_centers: BTreeMap<String, String> = subscriptions
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.cost_center.clone()?)))
        .collect();
    let visible = |name: &str| who.admin || subscriptions.iter().any(|s| s.name == name);
    // Anyone but an administrator sees only their own keys' use: the
    // database reads those rows alone, and none when no subscription is
    // visible, so any signed-in caller cannot make it sum everyone's.
    let detail: Vec<_> = if who.admin {
        app.store.usage_detail(q.from, q.to).await?
    } else if subscriptions.is_empty() || who.subject.is_empty() {
        Vec::new()
    } else {
        app.store
            .usage_detail_of(&who.subject, q.from, q.to)
            .await?
    }
    .into_iter()
    .filter(|d| visible(&d.subscription) && is_own(&who, d))
    .collect();
    let prices = prices_by_model(&app).await?;
    let catalog = Catalog {
        prices: &prices,
        cost_centers: &cost_centers,
    };
    let report = report::build(&detail, &q.grouping, &q.filter, &catalog);
    if q.csv {
        let disposition = format!(
            "attachment; filename=\"maas-usage-{}-{}.csv\"",
            q.from, q.to
        );
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, disposition),
            ],
            report.csv(),
        )
            .into_response());
    }
    let group_by: Vec<&str> = q.grouping.dimensions().iter().map(|d| d.as_str()).collect();
    Ok(Json(json!({
        "object": "list",
        "from": q.from,
        "to": q.to,
        "group_by": group_by,
        "currency": report.currency,
        "data": report.rows_json(),
        "total": report.total_json(),
    }))
    .into_response())
}

/// Each visible subscription's limits, each with its current window and
/// what the sampled usage used of it.
pub(super) async fn usage_limits(
    State(app): State<Arc<AppState>>,
    super::Caller(who): super::Caller,
) -> Result<Response, ApiError> {
    let now = unix_now();
    let mut data = Vec::new();
    for spec in visible_subscriptions(&app, &who).await? {
        for window in limits::windows(&spec, now) {
            let used = app
                .store
                .usage_since(&spec.name, window.measured_from)
                .await?;
            let mut row = window.json(&spec.name, &used);
            row["cost_center"] = json!(spec.cost_center);
            data.push(row);
        }
    }
    Ok(Json(json!({"object": "list", "at": now, "data": data})).into_response())
}

#[cfg(test)]
mod tests {
    use super::is_own;
    use crate::oidc::Identity;
    use crate::showback::Usage;
    use crate::store::UsageDetail;

    fn row(key: &str, owner: &str) -> UsageDetail {
        UsageDetail {
            day: 0,
            subscription: "team-a".into(),
            model: "m".into(),
            key: key.into(),
            owner: owner.into(),
            usage: Usage::default(),
        }
    }

    fn caller(subject: &str, admin: bool) -> Identity {
        Identity {
            subject: subject.into(),
            groups: vec!["team-a".into()],
            admin,
        }
    }

    #[test]
    fn a_member_counts_only_usage_through_their_own_keys() {
        for (who, row, counted) in [
            (caller("alice", false), row("k-alice", "alice"), true),
            (caller("alice", false), row("k-bob", "bob"), false),
            // Through no key: nobody's to claim.
            (caller("alice", false), row("", ""), false),
            // An empty subject (never issued, but) matches no keyless row.
            (caller("", false), row("", ""), false),
            (caller("maas:admin", true), row("k-bob", "bob"), true),
            (caller("maas:admin", true), row("", ""), true),
        ] {
            assert_eq!(is_own(&who, &row), counted, "{who:?} on {row:?}");
        }
    }
}
