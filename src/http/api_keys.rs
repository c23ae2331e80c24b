//! API keys and usage history (SPEC §5), under `/user`: `POST/GET /api-keys`,
//! `DELETE /api-keys/{id}`, `GET /usage`. These endpoints take the access token only; the keys
//! they mint are accepted on `/v1` alone (see [`crate::auth::api_keys`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::check_label;
use super::{Json, PageQuery, Path, Query};
use crate::auth::{self, AuthUser};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::{api_keys, usage, Paged};

/// Live keys a user may hold at once.
pub const MAX_KEYS_PER_USER: i64 = 50;
/// Characters of the key shown in lists (`qt-` and the first 8 of the token).
const PREFIX_CHARS: usize = 11;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
        .routes(routes!(usage_list))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewApiKey {
    /// A label for the key (trimmed).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
}

/// The new key, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
struct Created {
    #[serde(serialize_with = "crate::time::ser_id")]
    #[schema(value_type = String)]
    id: i64,
    name: String,
    /// The key itself (`qt-…`): it cannot be shown again.
    key: String,
    prefix: String,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct KeyList {
    items: Vec<api_keys::ApiKeyRow>,
}

fn validate_name(name: &str) -> Result<String> {
    check_label("name", name, 1, 64)?;
    Ok(name.trim().to_owned())
}

#[utoipa::path(post, path = "/api-keys", tag = "user", request_body = NewApiKey, responses((status = 201, description = "the key, shown once", body = Created), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<NewApiKey>,
) -> Result<impl IntoResponse> {
    let name = validate_name(&body.name)?;
    if api_keys::count_live(&state.db, user.user_id).await? >= MAX_KEYS_PER_USER {
        return Err(Error::Conflict(format!(
            "too many API keys: at most {MAX_KEYS_PER_USER} live keys per user; revoke one first"
        )));
    }
    let key = auth::random_token("qt-");
    let prefix: String = key.chars().take(PREFIX_CHARS).collect();
    let row = api_keys::create(
        &state.db,
        api_keys::NewKey {
            id: crate::ids::next_id(),
            user_id: user.user_id,
            name: &name,
            key_hash: &auth::token_hash(&key),
            prefix: &prefix,
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id: row.id,
            name: row.name,
            key,
            prefix: row.prefix,
            created_at: row.created_at,
        }),
    ))
}

#[utoipa::path(get, path = "/api-keys", tag = "user", responses((status = 200, description = "the user's live keys, newest first", body = KeyList), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn list(State(state): State<AppState>, user: AuthUser) -> Result<Json<KeyList>> {
    Ok(Json(KeyList {
        items: api_keys::list(&state.db, user.user_id).await?,
    }))
}

#[utoipa::path(delete, path = "/api-keys/{id}", tag = "user", params(("id" = String, Path, description = "key id")), responses((status = 204, description = "revoked"), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn revoke(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let not_found = || Error::not_found("API key not found");
    let id = crate::ids::parse(&id).ok_or_else(not_found)?;
    let hash = api_keys::revoke(&state.db, user.user_id, id)
        .await?
        .ok_or_else(not_found)?;
    // The next request with this key misses the cache and finds it revoked, on every node.
    crate::auth::api_keys::invalidate(&state, &hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/usage", tag = "user", params(PageQuery), responses((status = 200, description = "per-request usage history (`/v1`, chat, toolkit), newest first", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn usage_list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<usage::UsageLogRow>>> {
    let page = q.page();
    let (items, total) = usage::list(&state.db, user.user_id, page).await?;
    Ok(Json(Paged::new(items, page, total)))
}
