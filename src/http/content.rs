//! Public content (SPEC §10): published agents, published articles, and the app config.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::parse_id;
use super::{Json, PageQuery, Path, Query};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::{agents, app_config, articles, Page, Paged};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents))
        .routes(routes!(get_agent))
        .routes(routes!(list_articles))
        .routes(routes!(get_article))
        .routes(routes!(get_app_config))
}

#[utoipa::path(get, path = "/intelligent/agents", tag = "content", params(PageQuery), responses((status = 200, description = "published agents: {items, page, page_size, total}", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn list_agents(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<agents::AgentView>>> {
    let page = q.page();
    let (rows, total) = agents::list(&state.db, true, page).await?;
    let items = rows.iter().map(agents::AgentRow::view).collect();
    Ok(Json(Paged::new(items, page, total)))
}

#[utoipa::path(get, path = "/intelligent/agents/{id}", tag = "content", params(("id" = String, Path, description = "agent id")), responses((status = 200, description = "a published agent", body = agents::AgentView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn get_agent(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<agents::AgentView>> {
    let row = agents::get_published(&state.db, &id)
        .await?
        .ok_or_else(|| Error::not_found("agent not found"))?;
    Ok(Json(row.view()))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct ArticlesQuery {
    page: Option<i64>,
    page_size: Option<i64>,
    /// Only articles of this category.
    category: Option<String>,
}

#[utoipa::path(get, path = "/content/articles", tag = "content", params(ArticlesQuery), responses((status = 200, description = "published articles, newest first: {items, page, page_size, total}", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn list_articles(
    State(state): State<AppState>,
    Query(q): Query<ArticlesQuery>,
) -> Result<Json<Paged<articles::ArticleView>>> {
    let page = Page::new(q.page, q.page_size);
    let category = q
        .category
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if category.is_some_and(|c| c.chars().count() > 64) {
        return Err(Error::invalid("category", "must be at most 64 characters"));
    }
    let (rows, total) = articles::list_published(&state.db, category, page).await?;
    let items = rows.iter().map(articles::ArticleRow::view).collect();
    Ok(Json(Paged::new(items, page, total)))
}

#[utoipa::path(get, path = "/content/articles/{id}", tag = "content", params(("id" = String, Path, description = "article id")), responses((status = 200, description = "a published article", body = articles::ArticleView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn get_article(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<articles::ArticleView>> {
    let row = articles::get_published(&state.db, parse_id(&id, "article")?)
        .await?
        .ok_or_else(|| Error::not_found("article not found"))?;
    Ok(Json(row.view()))
}

/// Cache key of the app config's JSON text. Deleted by `PUT /admin/config/app`; the short TTL
/// bounds how long a read racing a write can keep the old value.
pub const APP_CONFIG_KEY: &str = "config:app";
const APP_CONFIG_TTL: Duration = Duration::from_secs(60);

/// The app config's JSON text (`{}` when never set), through the shared cache.
pub async fn app_config_text(state: &AppState) -> Result<String> {
    if let Some(text) = state.cache.get(APP_CONFIG_KEY).await? {
        return Ok(text);
    }
    let text = app_config::get(&state.db)
        .await?
        .unwrap_or_else(|| "{}".to_owned());
    state
        .cache
        .set(APP_CONFIG_KEY, &text, Some(APP_CONFIG_TTL))
        .await?;
    Ok(text)
}

#[utoipa::path(get, path = "/config/app", tag = "content", responses((status = 200, description = "the app config object set by the admin (`{}` when never set)", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn get_app_config(State(state): State<AppState>) -> Result<Response> {
    let text = app_config_text(&state).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}
