//! The admin back office (SPEC §11), role `admin` only: models and credit grants here; users,
//! agents, articles and app config come with the surface work.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::{check_len, check_text, matches, pattern};
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

fn check_model_id(field: &str, id: &str) -> Result<()> {
    if matches(pattern::MODEL_ID, id) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be 1 to 64 characters of letters, digits and - _ . : /",
        ))
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
struct PriceBody {
    #[schema(minimum = 0, maximum = 1000000)]
    prompt_per_1k: Option<f64>,
    #[schema(minimum = 0, maximum = 1000000)]
    completion_per_1k: Option<f64>,
    #[schema(minimum = 0, maximum = 1000000)]
    #[serde(default, deserialize_with = "super::de::opt_int")]
    per_request: Option<i64>,
}

/// The fields of a model that a create may leave out.
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct ModelFields {
    /// The provider's name of the model; default: the id.
    #[schema(min_length = 1, max_length = 128)]
    upstream_model: Option<String>,
    /// Default: the id.
    #[schema(max_length = 128)]
    display_name: Option<String>,
    /// Default 8192.
    #[schema(minimum = 1, maximum = 10000000)]
    #[serde(default, deserialize_with = "super::de::opt_int")]
    context_window: Option<i64>,
    /// Default 1024; a turn's output is bounded by this and by what the window leaves.
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(default, deserialize_with = "super::de::opt_int")]
    max_output_tokens: Option<i64>,
    #[serde(default, deserialize_with = "super::de::opt_object")]
    price: Option<PriceBody>,
    /// Models tried in order when this one's provider fails; the model's own id and repeats
    /// are dropped.
    #[schema(max_items = 8)]
    fallbacks: Option<Vec<ModelId>>,
    enabled: Option<bool>,
    /// What the model can do beyond text; a create defaults to none, a patch replaces them all (one left out is off).
    #[serde(default, deserialize_with = "super::de::opt_object")]
    capabilities: Option<crate::storage::models::Capabilities>,
    /// Lower first in lists.
    #[schema(minimum = -1000000000, maximum = 1000000000)]
    #[serde(default, deserialize_with = "super::de::opt_int")]
    sort_order: Option<i64>,
}

/// A model id.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(pattern = r"^[A-Za-z0-9_.:/-]{1,64}$")]
struct ModelId(String);

#[derive(Deserialize, utoipa::ToSchema)]
struct NewModel {
    #[schema(pattern = r"^[A-Za-z0-9_.:/-]{1,64}$")]
    id: String,
    provider: Provider,
    #[serde(flatten)]
    fields: ModelFields,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ModelPatch {
    provider: Option<Provider>,
    #[serde(flatten)]
    fields: ModelFields,
}

/// The providers a model can be served by.
#[derive(Deserialize, Clone, Copy, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Provider {
    Echo,
    Openai,
    Deepseek,
}

impl Provider {
    fn as_str(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Openai => "openai",
            Self::Deepseek => "deepseek",
        }
    }
}

fn in_range<T: PartialOrd + Copy>(field: &str, v: T, lo: T, hi: T, why: &str) -> Result<T> {
    if v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(Error::invalid(field, why))
    }
}

/// Applies a (partial) body onto a row, validating every field it sets.
fn apply(row: &mut ModelRow, provider: Option<Provider>, b: ModelFields) -> Result<()> {
    if let Some(p) = provider {
        row.provider = p.as_str().to_owned();
    }
    if let Some(u) = b.upstream_model {
        check_len("upstream_model", &u, 1, 128)?;
        row.upstream_model = Some(u);
    }
    if let Some(d) = b.display_name {
        check_len("display_name", &d, 0, 128)?;
        row.display_name = d;
    }
    let window = "must be between 1 and 10000000";
    if let Some(c) = b.context_window {
        row.context_window = in_range("context_window", c, 1, 10_000_000, window)?;
    }
    let output = "must be between 1 and 1000000";
    if let Some(m) = b.max_output_tokens {
        row.max_output_tokens = in_range("max_output_tokens", m, 1, 1_000_000, output)?;
    }
    if let Some(p) = b.price {
        let why = "must be between 0 and 1000000";
        if let Some(v) = p.prompt_per_1k {
            row.prompt_per_1k = in_range("price.prompt_per_1k", v, 0.0, 1e6, why)?;
        }
        if let Some(v) = p.completion_per_1k {
            row.completion_per_1k = in_range("price.completion_per_1k", v, 0.0, 1e6, why)?;
        }
        if let Some(v) = p.per_request {
            row.per_request = in_range("price.per_request", v, 0, 1_000_000, why)?;
        }
    }
    if let Some(f) = b.fallbacks {
        row.fallbacks = fallbacks(&row.id, f)?;
    }
    if let Some(e) = b.enabled {
        row.enabled = i64::from(e);
    }
    if let Some(c) = b.capabilities {
        row.set_capabilities(c);
    }
    if let Some(s) = b.sort_order {
        row.sort_order = in_range(
            "sort_order",
            s,
            -1_000_000_000,
            1_000_000_000,
            "must be between -1e9 and 1e9",
        )?;
    }
    Ok(())
}

/// At most 8 model ids, stored without the model's own id and without repeats.
fn fallbacks(own: &str, f: Vec<ModelId>) -> Result<String> {
    if f.len() > 8 {
        return Err(Error::invalid("fallbacks", "at most 8 model ids"));
    }
    let mut ids: Vec<String> = Vec::with_capacity(f.len());
    for (i, ModelId(x)) in f.into_iter().enumerate() {
        check_model_id(&format!("fallbacks[{i}]"), &x)?;
        if x != own && !ids.contains(&x) {
            ids.push(x);
        }
    }
    serde_json::to_string(&ids).map_err(Error::internal)
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

#[utoipa::path(post, path = "/models", tag = "admin", request_body = NewModel, responses((status = 201, description = "success", body = AdminModelView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn create_model(
    State(state): State<AppState>,
    _: Admin,
    Json(body): Json<NewModel>,
) -> Result<impl IntoResponse> {
    let id = body.id;
    check_model_id("id", &id)?;
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
        cap_vision: 0,
        cap_tools: 0,
        cap_json: 0,
        cap_embeddings: 0,
    };
    apply(&mut row, Some(body.provider), body.fields)?;
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

#[utoipa::path(patch, path = "/models/{id}", tag = "admin", params(("id" = String, Path, description = "id")), request_body = ModelPatch, responses((status = 200, description = "success", body = AdminModelView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn patch_model(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    Json(body): Json<ModelPatch>,
) -> Result<Json<AdminModelView>> {
    let mut row = storage::models::get(&state.db, &id)
        .await?
        .ok_or_else(|| Error::not_found("model not found"))?;
    apply(&mut row, body.provider, body.fields)?;
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
    /// Credits to add (negative to take away): not zero, at most 1e9 either way.
    #[schema(schema_with = delta_schema)]
    #[serde(deserialize_with = "super::de::int")]
    delta: i64,
    /// Shown in the user's ledger.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"[^\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    reason: String,
}

/// A non-zero whole number from -1e9 to 1e9.
fn delta_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let range = |lo: f64, hi: f64| {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(lo))
            .maximum(Some(hi))
    };
    OneOfBuilder::new()
        .item(range(-1e9, -1.0))
        .item(range(1.0, 1e9))
        .build()
        .into()
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
    check_text("reason", &body.reason, 1, 255)?;
    let reason = body.reason.trim();
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
