//! The admin back office (SPEC §11), role `admin` only: models and credit grants here; users,
//! agents, articles and app config come with the surface work.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Admin, Json, PageQuery, Path, Query};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::models::{AdminModelView, ModelRow};
use crate::storage::{self, ledger, Paged};
use questech_engine::events::Frame;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models, create_model))
        .routes(routes!(get_model, patch_model, delete_model))
        .routes(routes!(grant))
        .routes(routes!(actors))
}

#[utoipa::path(get, path = "/actors", tag = "admin", responses((status = 200, description = "success", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn actors(State(state): State<AppState>, _: Admin) -> Result<impl IntoResponse> {
    Ok(Json(state.engine.snapshot()))
}

const PROVIDERS: [&str; 3] = ["echo", "openai", "deepseek"];

fn check_model_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "id",
            "must be 1 to 64 characters of letters, digits and - _ . : /",
        ))
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
struct PriceBody {
    prompt_per_1k: Option<f64>,
    completion_per_1k: Option<f64>,
    per_request: Option<i64>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
struct ModelBody {
    id: Option<String>,
    provider: Option<String>,
    upstream_model: Option<String>,
    display_name: Option<String>,
    context_window: Option<i64>,
    max_output_tokens: Option<i64>,
    price: Option<PriceBody>,
    fallbacks: Option<Vec<String>>,
    enabled: Option<bool>,
    sort_order: Option<i64>,
}

/// Applies a (partial) body onto a row, validating every field it sets.
fn apply(row: &mut ModelRow, b: ModelBody) -> Result<()> {
    if let Some(p) = b.provider {
        if !PROVIDERS.contains(&p.as_str()) {
            return Err(Error::invalid(
                "provider",
                "must be echo, openai or deepseek",
            ));
        }
        row.provider = p;
    }
    if let Some(u) = b.upstream_model {
        if u.is_empty() || u.len() > 128 {
            return Err(Error::invalid(
                "upstream_model",
                "must be 1 to 128 characters",
            ));
        }
        row.upstream_model = Some(u);
    }
    if let Some(d) = b.display_name {
        if d.chars().count() > 128 {
            return Err(Error::invalid(
                "display_name",
                "must be at most 128 characters",
            ));
        }
        row.display_name = d;
    }
    if let Some(c) = b.context_window {
        if !(1..=10_000_000).contains(&c) {
            return Err(Error::invalid(
                "context_window",
                "must be between 1 and 10000000",
            ));
        }
        row.context_window = c;
    }
    if let Some(m) = b.max_output_tokens {
        if !(1..=1_000_000).contains(&m) {
            return Err(Error::invalid(
                "max_output_tokens",
                "must be between 1 and 1000000",
            ));
        }
        row.max_output_tokens = m;
    }
    if row.max_output_tokens >= row.context_window {
        return Err(Error::invalid(
            "max_output_tokens",
            "must be smaller than context_window",
        ));
    }
    if let Some(p) = b.price {
        let ok = |v: f64| v.is_finite() && (0.0..=1_000_000.0).contains(&v);
        if let Some(v) = p.prompt_per_1k {
            if !ok(v) {
                return Err(Error::invalid(
                    "price.prompt_per_1k",
                    "must be between 0 and 1000000",
                ));
            }
            row.prompt_per_1k = v;
        }
        if let Some(v) = p.completion_per_1k {
            if !ok(v) {
                return Err(Error::invalid(
                    "price.completion_per_1k",
                    "must be between 0 and 1000000",
                ));
            }
            row.completion_per_1k = v;
        }
        if let Some(v) = p.per_request {
            if !(0..=1_000_000).contains(&v) {
                return Err(Error::invalid(
                    "price.per_request",
                    "must be between 0 and 1000000",
                ));
            }
            row.per_request = v;
        }
    }
    if let Some(f) = b.fallbacks {
        if f.len() > 8 || f.iter().any(|x| x == &row.id || check_model_id(x).is_err()) {
            return Err(Error::invalid(
                "fallbacks",
                "must be at most 8 other model ids",
            ));
        }
        row.fallbacks = serde_json::to_string(&f).map_err(Error::internal)?;
    }
    if let Some(e) = b.enabled {
        row.enabled = i64::from(e);
    }
    if let Some(s) = b.sort_order {
        row.sort_order = s;
    }
    Ok(())
}

#[utoipa::path(get, path = "/models", tag = "admin", params(PageQuery), responses((status = 200, description = "success", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn list_models(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<AdminModelView>>> {
    let page = q.page();
    let all = storage::models::list(&state.db).await?;
    let total = all.len() as i64;
    let items = all
        .iter()
        .skip(page.offset() as usize)
        .take(page.page_size as usize)
        .map(ModelRow::admin_view)
        .collect();
    Ok(Json(Paged::new(items, page, total)))
}

#[utoipa::path(post, path = "/models", tag = "admin", request_body = ModelBody, responses((status = 201, description = "success", body = AdminModelView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn create_model(
    State(state): State<AppState>,
    _: Admin,
    Json(body): Json<ModelBody>,
) -> Result<impl IntoResponse> {
    let id = body
        .id
        .clone()
        .ok_or_else(|| Error::invalid("id", "required"))?;
    check_model_id(&id)?;
    if body.provider.is_none() {
        return Err(Error::invalid("provider", "required"));
    }
    let now = crate::time::now_ms();
    let mut row = ModelRow {
        id: id.clone(),
        provider: String::new(),
        upstream_model: None,
        display_name: id.clone(),
        context_window: 8192,
        max_output_tokens: 1024,
        prompt_per_1k: 0.0,
        completion_per_1k: 0.0,
        per_request: 0,
        fallbacks: "[]".into(),
        enabled: 1,
        sort_order: 100,
        created_at: now,
        updated_at: now,
    };
    apply(&mut row, body)?;
    storage::models::insert(&state.db, &row)
        .await
        .map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict("a model with this id exists".into()),
            other => other,
        })?;
    state.models.invalidate().await?;
    Ok((StatusCode::CREATED, Json(row.admin_view())))
}

#[utoipa::path(get, path = "/models/{id}", tag = "admin", params(("id" = String, Path, description = "id")), responses((status = 200, description = "success", body = AdminModelView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn get_model(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<AdminModelView>> {
    let row = storage::models::get(&state.db, &id)
        .await?
        .ok_or_else(|| Error::not_found("model not found"))?;
    Ok(Json(row.admin_view()))
}

#[utoipa::path(patch, path = "/models/{id}", tag = "admin", params(("id" = String, Path, description = "id")), request_body = ModelBody, responses((status = 200, description = "success", body = AdminModelView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn patch_model(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    Json(body): Json<ModelBody>,
) -> Result<Json<AdminModelView>> {
    let mut row = storage::models::get(&state.db, &id)
        .await?
        .ok_or_else(|| Error::not_found("model not found"))?;
    if body.id.as_deref().is_some_and(|b| b != id) {
        return Err(Error::invalid("id", "cannot be changed"));
    }
    apply(&mut row, body)?;
    storage::models::update(&state.db, &row).await?;
    // A change reaches new turns at once: every node reads models through the shared cache.
    state.models.invalidate().await?;
    let row = storage::models::get(&state.db, &id)
        .await?
        .ok_or_else(|| Error::not_found("model not found"))?;
    Ok(Json(row.admin_view()))
}

#[utoipa::path(delete, path = "/models/{id}", tag = "admin", params(("id" = String, Path, description = "id")), responses((status = 204, description = "success"), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn delete_model(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if !storage::models::delete(&state.db, &id).await? {
        return Err(Error::not_found("model not found"));
    }
    state.models.invalidate().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct GrantBody {
    delta: i64,
    reason: String,
}

#[utoipa::path(post, path = "/users/{id}/credits", tag = "admin", params(("id" = String, Path, description = "id")), request_body = GrantBody, responses((status = 200, description = "success", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn grant(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    Json(body): Json<GrantBody>,
) -> Result<Json<serde_json::Value>> {
    let target = crate::ids::parse(&id).ok_or_else(|| Error::not_found("user not found"))?;
    if body.delta == 0 || body.delta.unsigned_abs() > 1_000_000_000 {
        return Err(Error::invalid(
            "delta",
            "must be a non-zero whole number up to 1e9 in size",
        ));
    }
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 255 {
        return Err(Error::invalid("reason", "must be 1 to 255 characters"));
    }
    let balance = ledger::adjust(
        &state.db,
        target,
        body.delta,
        "admin_grant",
        Some(reason),
        None,
    )
    .await?
    .ok_or_else(|| Error::not_found("user not found"))?;
    state.engine.publish(
        target,
        &Frame::CreditsUpdated {
            balance,
            delta: body.delta,
            reason: "admin_grant".into(),
        },
    );
    Ok(Json(
        json!({"user_id": target.to_string(), "balance": balance, "delta": body.delta}),
    ))
}
