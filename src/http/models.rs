//! `GET /config/models` (public): the model list with prices, from the cache.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::Json;
use crate::error::Result;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/config/models", get(list))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>> {
    let rows = state.models.all().await?;
    let data: Vec<_> = rows
        .iter()
        .map(|m| m.view(m.enabled != 0 && state.engine.pool.has_provider(&m.provider)))
        .collect();
    Ok(Json(json!({ "data": data })))
}
