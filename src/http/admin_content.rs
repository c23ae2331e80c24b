//! Admin content (SPEC §11): CRUD for agents and articles, and replacing the app config.
//! Every route needs role `admin` (`forbidden` otherwise).

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::{check_label, check_len, check_text, check_url, parse_id};
use super::{Admin, Json, PageQuery, Path, Query};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::agents::{self, AdminAgentView, AgentRow};
use crate::storage::articles::{self, AdminArticleView, ArticleRow};
use crate::storage::{app_config, Paged};
use crate::time::now_ms;
use questech_engine::EngineError;

/// Largest app config accepted by `PUT /admin/config/app` (the raw body).
pub const APP_CONFIG_MAX_BYTES: usize = 64 * 1024;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(get_agent, patch_agent, delete_agent))
        .routes(routes!(list_articles, create_article))
        .routes(routes!(get_article, patch_article, delete_article))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(put_app_config))
                .layer(DefaultBodyLimit::max(APP_CONFIG_MAX_BYTES)),
        )
}

// ---- agents -----------------------------------------------------------------------------------

/// The fields of an agent that a create may leave out.
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct AgentFields {
    #[schema(max_length = 4000)]
    description: Option<String>,
    /// An http(s) URL or a `/static/` path; empty for none.
    #[schema(
        max_length = 1024,
        pattern = r"^(|https?://[^\x00-\x20\x7f-\xa0/?#]+([/?#][^\x00-\x20\x7f-\xa0]*)?|/static/(\.?[^.\x00-\x1f\x7f-\x9f])*\.?)$"
    )]
    avatar_url: Option<String>,
    /// Default 1.
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f64>,
    #[schema(max_length = 100000)]
    system_prompt: Option<String>,
    published: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewAgent {
    /// Trimmed.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// The id of an existing model (404 `model_not_found` otherwise).
    #[schema(min_length = 1, max_length = 64)]
    model: String,
    #[serde(flatten)]
    fields: AgentFields,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct AgentPatch {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: Option<String>,
    #[schema(min_length = 1, max_length = 64)]
    model: Option<String>,
    #[serde(flatten)]
    fields: AgentFields,
}

/// Applies a (partial) body onto a row, validating every field it sets.
async fn apply_agent(state: &AppState, row: &mut AgentRow, b: AgentPatch) -> Result<()> {
    if let Some(n) = b.name {
        check_label("name", &n, 1, 128)?;
        row.name = n.trim().to_owned();
    }
    if let Some(m) = b.model {
        check_len("model", &m, 1, 64)?;
        if state.models.get(&m).await?.is_none() {
            return Err(Error::Engine(EngineError::ModelNotFound(m)));
        }
        row.model = m;
    }
    let b = b.fields;
    if let Some(d) = b.description {
        check_text("description", &d, 0, 4000)?;
        row.description = d;
    }
    if let Some(a) = b.avatar_url {
        check_url("avatar_url", &a)?;
        row.avatar_url = a;
    }
    if let Some(t) = b.temperature {
        if !t.is_finite() || !(0.0..=2.0).contains(&t) {
            return Err(Error::invalid("temperature", "must be between 0 and 2"));
        }
        row.temperature = t;
    }
    if let Some(s) = b.system_prompt {
        check_text("system_prompt", &s, 0, 100_000)?;
        row.system_prompt = s;
    }
    if let Some(p) = b.published {
        row.published = i64::from(p);
    }
    Ok(())
}

async fn load_agent(state: &AppState, id: &str) -> Result<AgentRow> {
    agents::get(&state.db, parse_id(id, "agent")?)
        .await?
        .ok_or_else(|| Error::not_found("agent not found"))
}

#[utoipa::path(get, path = "/agents", tag = "admin", params(PageQuery), responses((status = 200, description = "every agent: {items, page, page_size, total}", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn list_agents(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<AdminAgentView>>> {
    let page = q.page();
    let (rows, total) = agents::list(&state.db, false, page).await?;
    let items = rows.iter().map(AgentRow::admin_view).collect();
    Ok(Json(Paged::new(items, page, total)))
}

#[utoipa::path(post, path = "/agents", tag = "admin", request_body = NewAgent, responses((status = 201, description = "created", body = AdminAgentView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn create_agent(
    State(state): State<AppState>,
    _admin: Admin,
    Json(body): Json<NewAgent>,
) -> Result<impl IntoResponse> {
    let now = now_ms();
    let mut row = AgentRow {
        id: crate::ids::next_id(),
        name: String::new(),
        description: String::new(),
        avatar_url: String::new(),
        model: String::new(),
        temperature: 1.0,
        system_prompt: String::new(),
        published: 0,
        created_at: now,
        updated_at: now,
    };
    let body = AgentPatch {
        name: Some(body.name),
        model: Some(body.model),
        fields: body.fields,
    };
    apply_agent(&state, &mut row, body).await?;
    agents::insert(&state.db, &row).await?;
    Ok((StatusCode::CREATED, Json(row.admin_view())))
}

#[utoipa::path(get, path = "/agents/{id}", tag = "admin", params(("id" = String, Path, description = "agent id")), responses((status = 200, description = "the agent", body = AdminAgentView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn get_agent(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<AdminAgentView>> {
    Ok(Json(load_agent(&state, &id).await?.admin_view()))
}

#[utoipa::path(patch, path = "/agents/{id}", tag = "admin", params(("id" = String, Path, description = "agent id")), request_body = AgentPatch, responses((status = 200, description = "the updated agent", body = AdminAgentView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn patch_agent(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<AgentPatch>,
) -> Result<Json<AdminAgentView>> {
    let mut row = load_agent(&state, &id).await?;
    apply_agent(&state, &mut row, body).await?;
    row.updated_at = now_ms();
    agents::update(&state.db, &row).await?;
    Ok(Json(load_agent(&state, &id).await?.admin_view()))
}

#[utoipa::path(delete, path = "/agents/{id}", tag = "admin", params(("id" = String, Path, description = "agent id")), responses((status = 204, description = "deleted"), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn delete_agent(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if !agents::delete(&state.db, parse_id(&id, "agent")?).await? {
        return Err(Error::not_found("agent not found"));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- articles ---------------------------------------------------------------------------------

/// The fields of an article that a create may leave out.
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct ArticleFields {
    #[schema(max_length = 4000)]
    summary: Option<String>,
    #[schema(max_length = 200000)]
    body: Option<String>,
    /// Trimmed.
    #[schema(max_length = 64, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    category: Option<String>,
    /// An http(s) URL or a `/static/` path; empty for none.
    #[schema(
        max_length = 1024,
        pattern = r"^(|https?://[^\x00-\x20\x7f-\xa0/?#]+([/?#][^\x00-\x20\x7f-\xa0]*)?|/static/(\.?[^.\x00-\x1f\x7f-\x9f])*\.?)$"
    )]
    cover_url: Option<String>,
    /// Publishing for the first time sets `published_at`; it is kept from then on.
    published: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewArticle {
    /// Trimmed.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    title: String,
    #[serde(flatten)]
    fields: ArticleFields,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ArticlePatch {
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    title: Option<String>,
    #[serde(flatten)]
    fields: ArticleFields,
}

fn apply_article(row: &mut ArticleRow, b: ArticlePatch, now: i64) -> Result<()> {
    if let Some(t) = b.title {
        check_label("title", &t, 1, 255)?;
        row.title = t.trim().to_owned();
    }
    let b = b.fields;
    if let Some(s) = b.summary {
        check_text("summary", &s, 0, 4000)?;
        row.summary = s;
    }
    if let Some(x) = b.body {
        check_text("body", &x, 0, 200_000)?;
        row.body = x;
    }
    if let Some(c) = b.category {
        check_label("category", &c, 0, 64)?;
        row.category = c.trim().to_owned();
    }
    if let Some(u) = b.cover_url {
        check_url("cover_url", &u)?;
        row.cover_url = u;
    }
    if let Some(p) = b.published {
        row.published = i64::from(p);
        if p && row.published_at.is_none() {
            row.published_at = Some(now);
        }
    }
    Ok(())
}

async fn load_article(state: &AppState, id: &str) -> Result<ArticleRow> {
    articles::get(&state.db, parse_id(id, "article")?)
        .await?
        .ok_or_else(|| Error::not_found("article not found"))
}

#[utoipa::path(get, path = "/articles", tag = "admin", params(PageQuery), responses((status = 200, description = "every article, newest first: {items, page, page_size, total}", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn list_articles(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<AdminArticleView>>> {
    let page = q.page();
    let (rows, total) = articles::list_all(&state.db, page).await?;
    let items = rows.iter().map(ArticleRow::admin_view).collect();
    Ok(Json(Paged::new(items, page, total)))
}

#[utoipa::path(post, path = "/articles", tag = "admin", request_body = NewArticle, responses((status = 201, description = "created", body = AdminArticleView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn create_article(
    State(state): State<AppState>,
    _admin: Admin,
    Json(body): Json<NewArticle>,
) -> Result<impl IntoResponse> {
    let body = ArticlePatch {
        title: Some(body.title),
        fields: body.fields,
    };
    let now = now_ms();
    let mut row = ArticleRow {
        id: crate::ids::next_id(),
        title: String::new(),
        summary: String::new(),
        body: String::new(),
        category: String::new(),
        cover_url: String::new(),
        published: 0,
        published_at: None,
        created_at: now,
        updated_at: now,
    };
    apply_article(&mut row, body, now)?;
    articles::insert(&state.db, &row).await?;
    Ok((StatusCode::CREATED, Json(row.admin_view())))
}

#[utoipa::path(get, path = "/articles/{id}", tag = "admin", params(("id" = String, Path, description = "article id")), responses((status = 200, description = "the article", body = AdminArticleView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn get_article(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<AdminArticleView>> {
    Ok(Json(load_article(&state, &id).await?.admin_view()))
}

#[utoipa::path(patch, path = "/articles/{id}", tag = "admin", params(("id" = String, Path, description = "article id")), request_body = ArticlePatch, responses((status = 200, description = "the updated article", body = AdminArticleView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn patch_article(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<ArticlePatch>,
) -> Result<Json<AdminArticleView>> {
    let mut row = load_article(&state, &id).await?;
    let now = now_ms();
    apply_article(&mut row, body, now)?;
    row.updated_at = now;
    articles::update(&state.db, &row).await?;
    Ok(Json(load_article(&state, &id).await?.admin_view()))
}

#[utoipa::path(delete, path = "/articles/{id}", tag = "admin", params(("id" = String, Path, description = "article id")), responses((status = 204, description = "deleted"), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn delete_article(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if !articles::delete(&state.db, parse_id(&id, "article")?).await? {
        return Err(Error::not_found("article not found"));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- app config -------------------------------------------------------------------------------

#[utoipa::path(put, path = "/config/app", tag = "admin", request_body(content = Object, description = "the whole app config: a JSON object of at most 64 KiB"), responses((status = 200, description = "the stored config", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn put_app_config(
    State(state): State<AppState>,
    _admin: Admin,
    Json(body): Json<serde_json::Value>,
) -> Result<Json<serde_json::Value>> {
    if !body.is_object() {
        return Err(Error::invalid("body", "must be a JSON object"));
    }
    let text = serde_json::to_string(&body).map_err(Error::internal)?;
    app_config::put(&state.db, &text).await?;
    // Every node reads through the shared cache: dropping the key publishes the change.
    state.cache.del(super::content::APP_CONFIG_KEY).await?;
    Ok(Json(body))
}
