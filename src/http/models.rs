//! `GET /config/models` (public): the model list with prices, from the cache.

use axum::extract::State;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Json;
use crate::error::Result;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[utoipa::path(get, path = "/config/models", tag = "config", responses((status = 200, description = "success", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn list(State(state): State<AppState>) -> Result<Json<Value>> {
    let rows = state.models.all().await?;
    let data: Vec<_> = rows
        .iter()
        .map(|m| m.view(state.engine.is_usable(&m.info())))
        .collect();
    Ok(Json(json!({ "data": data })))
}
