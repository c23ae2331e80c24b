//! Admin user management (SPEC §11): search users, change a user's role, disable or re-enable
//! an account.
//!
//! Disabling an account revokes every session of the user (their access tokens get 401 on the
//! next request, refresh tokens stop working, login answers 403) and closes their WebSockets on
//! every node. A role change does the same minus the flag: tokens carry the role, so the user
//! signs in again and gets tokens with the new one (a demoted admin keeps no admin token).
//! Admins cannot disable or demote themselves.

use axum::extract::State;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Admin;
use super::{Json, Path, Query};
use crate::auth::{self, Role};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::{sessions, users, Page, Paged};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(patch_user))
}

fn admin_view(state: &AppState, u: &users::UserRow) -> users::UserView {
    let mut v = crate::auth::account::user_view(state, u);
    v.disabled = Some(u.is_disabled());
    v
}

#[derive(Deserialize, utoipa::IntoParams)]
struct UsersQuery {
    page: Option<i64>,
    page_size: Option<i64>,
    /// Case-insensitive substring of the username or nickname (trimmed).
    #[param(max_length = 64)]
    q: Option<String>,
}

#[utoipa::path(get, path = "/users", tag = "admin", params(UsersQuery), responses((status = 200, description = "users, newest first, each with `disabled`: {items, page, page_size, total}", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn list_users(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<UsersQuery>,
) -> Result<Json<Paged<users::UserView>>> {
    let page = Page::new(q.page, q.page_size);
    if q.q.as_deref().is_some_and(|t| t.chars().count() > 64) {
        return Err(Error::invalid("q", "must be at most 64 characters"));
    }
    let term = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let (rows, total) = users::search(&state.db, term, page).await?;
    let items = rows.iter().map(|u| admin_view(&state, u)).collect();
    Ok(Json(Paged::new(items, page, total)))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct PatchUser {
    role: Option<Role>,
    disabled: Option<bool>,
}

#[utoipa::path(patch, path = "/users/{id}", tag = "admin", params(("id" = String, Path, description = "user id")), request_body = PatchUser, responses((status = 200, description = "the updated user, with `disabled`", body = users::UserView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn patch_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<PatchUser>,
) -> Result<Json<users::UserView>> {
    let role = body.role;
    let target = crate::ids::parse(&id).ok_or_else(|| Error::not_found("user not found"))?;
    let row = users::by_id(&state.db, target)
        .await?
        .ok_or_else(|| Error::not_found("user not found"))?;
    if target == admin.0.user_id {
        if body.disabled == Some(true) {
            return Err(Error::Forbidden(
                "disabled: you cannot disable your own account".into(),
            ));
        }
        if role == Some(Role::User) {
            return Err(Error::Forbidden(
                "role: you cannot remove your own admin role".into(),
            ));
        }
    }
    let role_changed = role.is_some_and(|r| r.as_str() != row.role);
    let disabling = body.disabled == Some(true);
    users::set_role_disabled(&state.db, target, role.map(Role::as_str), body.disabled).await?;
    if disabling || role_changed {
        sign_out_everywhere(&state, target).await?;
    }
    let row = users::by_id(&state.db, target)
        .await?
        .ok_or_else(|| Error::not_found("user not found"))?;
    Ok(Json(admin_view(&state, &row)))
}

/// Revokes every session of the user (database and cache, so their access tokens fail at once
/// on any node) and closes their sockets on this node and, through Redis, on every other.
async fn sign_out_everywhere(state: &AppState, user_id: i64) -> Result<()> {
    let sids = sessions::revoke_all(&state.db, user_id).await?;
    auth::revoke_sessions(state, user_id, &sids).await?;
    // API keys stay valid but their cached look-ups (owner, role, disabled) are dropped, so a
    // disabled owner's keys are refused on the very next request.
    crate::auth::api_keys::forget_user_keys(state, user_id).await?;
    state.engine.kick(user_id);
    tracing::info!(user_id, sessions = sids.len(), "user signed out everywhere");
    Ok(())
}
