//! The self-service HTTP API, under `/maas-api` (the path the gateway routes
//! to the control plane):
//!
//! - `POST /maas-api/v1/api-keys`: mint a key for a subscription the caller's
//!   groups allow (administrators: any), up to the subscription's
//!   `max_keys_per_owner` live keys per owner, living at most the
//!   configured maximum key lifetime; the plaintext is in this response
//!   only. A subscription that does not exist and one the caller may not use
//!   get the same 403, so callers cannot probe which exist. The key records
//!   the caller's groups that admitted it.
//! - `GET /maas-api/v1/api-keys`: the caller's keys (administrators: all, or
//!   `?owner=`), never secrets.
//! - `DELETE /maas-api/v1/api-keys/{id}`: revoke one of the caller's keys.
//! - `GET /maas-api/v1/subscriptions`: what the caller may use;
//!   `PUT /maas-api/v1/subscriptions/{name}`: create or replace
//!   (administrators); a change of `groups` revokes the live keys minted
//!   through groups it no longer admits.
//! - `GET /maas-api/v1/usage?from=T&to=T`: tokens, requests and cost over
//!   a time range (Unix seconds; default the last 24 hours), through the
//!   caller's own keys (administrators: everything), per subscription and
//!   model or any `group_by` of day, subscription, model, key, owner and
//!   cost center, filtered, as JSON or CSV; `GET /maas-api/v1/usage/limits`: use in each
//!   limit's current window against the limit (see [`usage`]).
//! - `GET /maas-api/v1/prices`, `PUT|DELETE /maas-api/v1/prices/{model}`:
//!   what each model costs per million tokens (changed by administrators).
//! - `GET /maas-api/ui`: the showback page (one self-contained HTML file;
//!   it asks for a token and reads `/v1/usage` with it).
//! - `GET /metrics`: the prices as Prometheus gauges, for dashboards.
//! - `GET /maas-api/v1/sync?since=V`: for the gateway filter (its own token):
//!   what changed after version `V` (keys as salted digests, subscriptions in
//!   the filter's configuration shape), or 304 when nothing did.
//! - `GET /maas-api/v1/sync/keys/{id}`: for the gateway filter: one key (and
//!   its subscription) in the sync answer's shape, or 404; how a key minted
//!   a moment ago works before the next sync brings it.
//!
//! Every change is written to the audit log by the store, in the same
//! transaction as the change. Every refusal is an [`ApiError`]: handlers
//! take the [`extract`] wrappers, never axum's own extractors, so axum's
//! rejections get the same body as the API's.

pub mod admission;
mod auth;
mod error;
mod extract;
mod mint;
pub mod prices;
mod usage;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

pub use auth::{Authenticator, Caller, GatewayCaller, ADMIN_SUBJECT};
pub use error::ApiError;
use extract::{ApiBody, ApiPath, ApiQuery};
pub use prices::price_exposition;

use crate::apikey;
use crate::key_lifetime::{self, KeyLifetime, LifetimeError};
use crate::store::{KeyRow, Store, SubscriptionRow};
use crate::strict_json::StrictValue;
use crate::subscription::SubscriptionSpec;
use crate::time::unix_now;

pub struct AppState {
    pub store: Store,
    pub auth: Authenticator,
    /// The longest a minted key may live (`serve --max-key-lifetime`); it is
    /// also the lifetime of keys minted without `expires_in`. `None`: no
    /// maximum, and such keys never expire.
    pub max_key_lifetime: Option<KeyLifetime>,
    /// The most keys one owner may mint in any 24 hours
    /// (`serve --max-keys-minted-per-day`); administrators are not bound.
    pub max_keys_minted_per_day: u64,
    /// How many callers' requests run at once ([`admission`]).
    pub admission: admission::Admission,
    /// `/metrics`, read at most every few seconds.
    pub price_exposition: prices::Exposition,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/maas-api/v1/api-keys", get(list_keys).post(create_key))
        .route("/maas-api/v1/api-keys/{id}", delete(revoke_key))
        .route("/maas-api/v1/subscriptions", get(list_subscriptions))
        .route("/maas-api/v1/subscriptions/{name}", put(put_subscription))
        .route("/maas-api/v1/sync", get(sync))
        .route("/maas-api/v1/sync/keys/{id}", get(sync_key))
        .route("/maas-api/v1/usage", get(usage::usage))
        .route("/maas-api/v1/usage/limits", get(usage::usage_limits))
        .route("/maas-api/v1/prices", get(prices::list_prices))
        .route(
            "/maas-api/v1/prices/{model}",
            put(prices::put_price).delete(prices::delete_price),
        )
        .route("/metrics", get(prices::metrics))
        .route("/maas-api/ui", get(page))
        .route(
            "/maas-api/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .fallback(|| async { ApiError::NotFound("unknown path".into()) })
        // After every route: it applies to the routes added before it.
        .method_not_allowed_fallback(extract::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::admit,
        ))
        .layer(axum::middleware::map_response(protective_headers))
        .with_state(state)
}

/// On every answer: never stored by a cache (a freshly minted key is in
/// one, usage and key lists in others), never sniffed as another type, and
/// no `Referer` sent from the page.
async fn protective_headers(mut response: Response) -> Response {
    use axum::http::{header, HeaderValue};
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Bodies are parsed here rather than by axum's `Json`, so a malformed one
/// gets a 400 in the API's own error shape. A key given twice at any depth
/// is refused, not settled by whichever came last (a map such as a key's
/// `labels` would otherwise keep the last without a word).
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let invalid = |e: serde_json::Error| ApiError::Invalid(format!("request body: {e}"));
    let StrictValue(value) = serde_json::from_slice(body).map_err(invalid)?;
    serde_json::from_value(value).map_err(invalid)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    subscription: String,
    #[serde(default)]
    expires_in: Option<Value>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    /// Administrators may mint for someone else.
    #[serde(default)]
    owner: Option<String>,
}

const MAX_LABELS: usize = 16;

fn key_json(k: &KeyRow, now: i64) -> Value {
    let status = if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": k.id,
        "name": k.name,
        "owner": k.owner,
        "subscription": k.subscription,
        "labels": k.labels,
        "created_at": k.created_at,
        "expires_at": k.expires_at,
        "revoked_at": k.revoked_at,
        "status": status,
    })
}

async fn create_key(
    State(app): State<Arc<AppState>>,
    Caller(who): Caller,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let req: CreateKey = parse(&body)?;
    let control = |text: &str| text.chars().any(char::is_control);
    if req.name.trim().is_empty() || req.name.len() > 128 || control(&req.name) {
        return Err(ApiError::Invalid(
            "name: 1–128 characters without control characters".into(),
        ));
    }
    if req.labels.len() > MAX_LABELS
        || req
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 256 || control(k) || control(v))
    {
        return Err(ApiError::Invalid(format!(
            "labels: at most {MAX_LABELS}, keys 1–64 and values up to 256 bytes, without control characters"
        )));
    }
    // No subscription's name has one (and PostgreSQL refuses a NUL).
    if control(&req.subscription) {
        return Err(ApiError::Invalid(
            "subscription: no control characters".into(),
        ));
    }
    let owner = match req.owner {
        // The rule OIDC subjects follow: it becomes `x-maas-user` at the
        // gateway, and may not pass for the administrator.
        Some(o) if who.admin => {
            maas_filter::auth::keys::check_subject(&o)
                .map_err(|e| ApiError::Invalid(format!("owner: {e}")))?;
            o
        }
        Some(_) => {
            return Err(ApiError::Forbidden(
                "only administrators mint keys for others".into(),
            ))
        }
        None => who.subject.clone(),
    };
    let admitted = mint::usable_subscription(&app, &who, &req.subscription).await?;
    let created_at = unix_now();
    let expires_in_error = |e: LifetimeError| ApiError::Invalid(format!("expires_in: {e}"));
    let asked = req
        .expires_in
        .as_ref()
        .map(KeyLifetime::from_json)
        .transpose()
        .map_err(expires_in_error)?;
    let expires_at =
        key_lifetime::expiry(asked, app.max_key_lifetime, created_at).map_err(expires_in_error)?;
    let minted = apikey::mint().map_err(|e| ApiError::Internal(e.to_string()))?;
    let row = KeyRow {
        id: minted.id.clone(),
        owner,
        subscription: req.subscription,
        name: req.name,
        labels: req.labels,
        salt: minted.digest.salt_hex(),
        hash: minted.digest.hash_hex(),
        created_at,
        expires_at,
        revoked_at: None,
        version: 0,
    };
    mint::insert(&app, &who, &row, admitted).await?;
    let mut body = key_json(&row, created_at);
    body["key"] = json!(minted.plaintext);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    owner: Option<String>,
}

async fn list_keys(
    State(app): State<Arc<AppState>>,
    Caller(who): Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let owner = match (who.admin, q.owner) {
        (true, owner) => owner,
        (false, Some(o)) if o != who.subject => {
            return Err(ApiError::Forbidden(
                "you may list only your own keys".into(),
            ))
        }
        (false, _) => Some(who.subject.clone()),
    };
    let now = unix_now();
    let keys = app.store.list_keys(owner.as_deref()).await?;
    let data: Vec<Value> = keys.iter().map(|k| key_json(k, now)).collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

async fn revoke_key(
    State(app): State<Arc<AppState>>,
    Caller(who): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    // Someone else's key reads as absent: ids are not secret, but which
    // exist is nobody else's business.
    let not_found = || ApiError::NotFound(format!("no key {id:?}"));
    let key = app.store.get_key(&id).await?.ok_or_else(not_found)?;
    if !who.admin && key.owner != who.subject {
        return Err(not_found());
    }
    let revoked = app
        .store
        .revoke_key(&id, unix_now(), &who.subject)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(key_json(&revoked, unix_now())).into_response())
}

fn subscription_json(row: &SubscriptionRow) -> Value {
    let mut v = row.spec.clone();
    v["created_at"] = json!(row.created_at);
    v["updated_at"] = json!(row.updated_at);
    v
}

async fn list_subscriptions(
    State(app): State<Arc<AppState>>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let rows = app.store.list_subscriptions().await?;
    let data: Vec<Value> = rows
        .iter()
        .filter(|row| {
            who.admin
                || serde_json::from_value::<SubscriptionSpec>(row.spec.clone())
                    .is_ok_and(|s| s.admits_any(&who.groups))
        })
        .map(subscription_json)
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

async fn put_subscription(
    State(app): State<Arc<AppState>>,
    Caller(who): Caller,
    ApiPath(name): ApiPath<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    if !who.admin {
        return Err(ApiError::Forbidden(
            "only administrators change subscriptions".into(),
        ));
    }
    let spec = SubscriptionSpec::from_json(&body)?;
    if spec.name != name {
        return Err(ApiError::Invalid(format!(
            "name: the body says {:?}, the path {name:?}",
            spec.name
        )));
    }
    let now = unix_now();
    let row = SubscriptionRow {
        name: spec.name.clone(),
        spec: serde_json::to_value(&spec).map_err(|e| ApiError::Invalid(e.to_string()))?,
        created_at: now,
        updated_at: now,
        version: 0,
    };
    let put = app
        .store
        .put_subscription_admitting(&row, &spec.gateway.groups, &who.subject)
        .await?;
    if !put.revoked_keys.is_empty() {
        tracing::info!(
            subscription = %name,
            revoked = ?put.revoked_keys,
            "keys revoked: minted through groups the subscription no longer admits"
        );
    }
    let stored = app
        .store
        .get_subscription(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(name.clone()))?;
    Ok(Json(subscription_json(&stored)).into_response())
}

#[derive(Deserialize)]
struct SyncQuery {
    #[serde(default)]
    since: u64,
    /// Keys per page (at most [`MAX_SYNC_PAGE`]); default: all.
    limit: Option<usize>,
    /// The mark of the change at `since`, as the answer that led there gave
    /// it (16 hex digits; see [`Store::change_mark`]).
    mark: Option<String>,
}

/// Names the database a sync answer comes from (also in its body): a
/// gateway that sees another one than it synced from resyncs from scratch.
const STORE_HEADER: &str = "x-maas-store";

/// The largest page of keys one sync answer carries (about 12 MB of JSON).
const MAX_SYNC_PAGE: usize = 50_000;

/// Incremental key sync. The response's `version` is the next `since`, and
/// its `mark` the next `mark`; a `since` the store has never reached (a
/// reset database), or whose change is not the one `mark` names (a database
/// restored from a backup, whose versions after it are other changes), gets
/// everything with `"full": true`, so the gateway replaces rather than
/// merges. Keys come in pages of `limit`; `"more": true` asks for the next
/// page at once.
async fn sync(
    State(app): State<Arc<AppState>>,
    _gateway: GatewayCaller,
    ApiQuery(q): ApiQuery<SyncQuery>,
) -> Result<Response, ApiError> {
    let limit = Some(q.limit.unwrap_or(MAX_SYNC_PAGE).clamp(1, MAX_SYNC_PAGE));
    let mark = q
        .mark
        .as_deref()
        .map(|text| {
            maas_filter::auth::managed_keys::parse_mark(text)
                .ok_or_else(|| ApiError::Invalid(format!("mark {text:?}: expected 16 hex digits")))
        })
        .transpose()?;
    let mut changes = app.store.changes_page(q.since, limit).await?;
    let mut full = q.since == 0;
    let other_history =
        mark.is_some() && q.since > 0 && app.store.change_mark(q.since).await? != mark;
    if q.since > changes.version || other_history {
        changes = app.store.changes_page(0, limit).await?;
        full = true;
    }
    // Nothing changed, or nothing exists yet (an empty store has nothing
    // to resync, and a gateway asking from 0 again and again would otherwise
    // start a new epoch every time).
    let store = [(STORE_HEADER, app.store.identity().to_string())];
    if changes.version == q.since && (!full || q.since == 0) {
        return Ok((StatusCode::NOT_MODIFIED, store).into_response());
    }
    let subscriptions: Vec<Value> = changes
        .subscriptions
        .iter()
        .filter_map(synced_subscription)
        .collect();
    let keys: Vec<Value> = changes.keys.iter().map(synced_key).collect();
    let next_mark = app.store.change_mark(changes.version).await?;
    Ok((
        store,
        Json(json!({
        "store": app.store.identity(),
        "version": changes.version,
        "mark": next_mark.map(|m| format!("{m:016x}")),
        "full": full,
        "subscriptions": subscriptions,
        "deleted_subscriptions": changes.deleted_subscriptions,
        "keys": keys,
        "more": changes.more,
        })),
    )
        .into_response())
}

/// A subscription as the filter reads it: its configuration shape plus `name`.
fn synced_subscription(row: &SubscriptionRow) -> Option<Value> {
    let spec: SubscriptionSpec = serde_json::from_value(row.spec.clone()).ok()?;
    let mut v = spec.filter_json();
    v["name"] = json!(spec.name);
    Some(v)
}

fn synced_key(k: &KeyRow) -> Value {
    json!({
        "id": k.id,
        "owner": k.owner,
        "subscription": k.subscription,
        "salt": k.salt,
        "sha256": k.hash,
        "expires_at": k.expires_at,
        "revoked": k.revoked_at.is_some(),
        "version": k.version,
    })
}

/// One key for a gateway that has never seen it. `version` 0: this answer
/// does not advance the gateway's sync position.
async fn sync_key(
    State(app): State<Arc<AppState>>,
    _gateway: GatewayCaller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let key = app
        .store
        .get_key(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no key {id:?}")))?;
    let subscription = app.store.get_subscription(&key.subscription).await?;
    Ok(Json(json!({
        "store": app.store.identity(),
        "version": 0,
        "full": false,
        "more": false,
        "deleted_subscriptions": [],
        "keys": [synced_key(&key)],
        "subscriptions": subscription.as_ref().and_then(synced_subscription).into_iter().collect::<Vec<_>>(),
    }))
    .into_response())
}

/// Served as is: no build step, no external assets, nothing secret in it.
const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page talks only to this origin, loads nothing else, and
            // is shown in no other site's frame (`frame-ancestors`,
            // `base-uri` and `form-action` do not fall back to
            // `default-src`; X-Frame-Options for older browsers).
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (axum::http::header::X_FRAME_OPTIONS, "DENY"),
        ],
        PAGE,
    )
        .into_response()
}
