//! Model prices over HTTP: `GET /maas-api/v1/prices` (every caller: prices
//! are not secret), `PUT|DELETE /maas-api/v1/prices/{model}`
//! (administrators), and `GET /metrics`, the prices as Prometheus gauges.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::extract::{ApiBody, ApiPath};
use super::{ApiError, AppState};
use crate::oidc::Identity;
use crate::showback::price::Price;
use crate::time::unix_now;

pub(super) async fn list_prices(
    State(app): State<Arc<AppState>>,
    super::Caller(_who): super::Caller,
) -> Result<Response, ApiError> {
    let data: Vec<Value> = app
        .store
        .list_prices()
        .await?
        .iter()
        .map(Price::json)
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

fn admin_only(who: &Identity) -> Result<(), ApiError> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only administrators change prices".into(),
        ))
    }
}

pub(super) async fn put_price(
    State(app): State<Arc<AppState>>,
    super::Caller(who): super::Caller,
    ApiPath(model): ApiPath<String>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    admin_only(&who)?;
    let price = Price::from_json(&model, &body).map_err(|e| ApiError::Invalid(e.to_string()))?;
    app.store
        .put_price(&price, unix_now(), &who.subject)
        .await?;
    app.price_exposition.forget().await;
    Ok(Json(price.json()).into_response())
}

pub(super) async fn delete_price(
    State(app): State<Arc<AppState>>,
    super::Caller(who): super::Caller,
    ApiPath(model): ApiPath<String>,
) -> Result<Response, ApiError> {
    admin_only(&who)?;
    if !app.store.delete_price(&model, &who.subject).await? {
        return Err(ApiError::NotFound(format!("no price for {model:?}")));
    }
    app.price_exposition.forget().await;
    Ok(Json(json!({"model": model, "deleted": true})).into_response())
}

/// The last `/metrics` text and when it was read. `/metrics` needs no
/// login and takes no admission place, so scrapes within [`EXPOSITION_TTL`]
/// share one read, and a flood of them waits on the lock holding no
/// database connection (the pool the gateways' sync needs).
#[derive(Default)]
pub struct Exposition(tokio::sync::Mutex<Option<(Instant, String)>>);

/// How stale `/metrics` may be after another replica changed a price
/// (this one's changes show at once).
const EXPOSITION_TTL: Duration = Duration::from_secs(5);

impl Exposition {
    async fn forget(&self) {
        *self.0.lock().await = None;
    }
}

/// Prometheus text for the control plane's own series: each model's price
/// as `maas_model_price_per_million{model,kind="prompt|completion",currency}`,
/// so dashboards can turn the filter's token rates into money.
pub(super) async fn metrics(State(app): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let mut cached = app.price_exposition.0.lock().await;
    let text = match &*cached {
        Some((read, text)) if read.elapsed() < EXPOSITION_TTL => text.clone(),
        _ => {
            let text = price_exposition(&app.store.list_prices().await?);
            *cached = Some((Instant::now(), text.clone()));
            text
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The exposition text of `prices`.
pub fn price_exposition(prices: &[Price]) -> String {
    // Model names may hold quotes and backslashes; currencies are A-Z.
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from(
        "# HELP maas_model_price_per_million Price per million tokens of a model, by token kind.\n\
         # TYPE maas_model_price_per_million gauge\n",
    );
    for p in prices {
        for (kind, amount) in [("prompt", p.prompt), ("completion", p.completion)] {
            out.push_str(&format!(
                "maas_model_price_per_million{{model=\"{}\",kind=\"{kind}\",currency=\"{}\"}} {}\n",
                escape(&p.model),
                p.currency,
                amount.decimal()
            ));
        }
    }
    out
}
