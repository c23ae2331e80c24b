//! Accounts (SPEC §5): register, login, refresh, logout, profile, ledger.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::check_len;
use super::{ClientIp, Json, PageQuery, Query};
use crate::auth::account::{
    open_session, user_view, validate_password, validate_username, Tokens, UserAndTokens,
};
use crate::auth::{self, password, AuthUser};
use crate::error::{Error, Result};
use crate::patterns::{matches, pattern};
use crate::state::AppState;
use crate::storage::{self, ledger, sessions, users, Paged};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me, patch_me))
        .routes(routes!(ledger_list))
}

// ---- validation -------------------------------------------------------------------------------

fn validate_nickname(n: &str) -> Result<()> {
    if n.chars().count() > 64 || !matches(pattern::LINE, n) {
        return Err(Error::invalid(
            "nickname",
            "must be at most 64 characters with no control characters",
        ));
    }
    Ok(())
}

// ---- handlers -----------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
struct RegisterBody {
    #[schema(pattern = r"^[A-Za-z0-9_]{3,20}$")]
    username: String,
    #[schema(min_length = 8, max_length = 128)]
    password: String,
    /// Default: the username.
    #[schema(max_length = 64, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    nickname: Option<String>,
}

#[utoipa::path(post, path = "/register", tag = "user", request_body = RegisterBody, responses((status = 201, description = "success", body = UserAndTokens), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(body): Json<RegisterBody>,
) -> Result<impl IntoResponse> {
    validate_username(&body.username)?;
    validate_password(&body.password, "password")?;
    let nickname = body.nickname.unwrap_or_else(|| body.username.clone());
    validate_nickname(&nickname)?;
    if users::by_username(&state.db, &body.username)
        .await?
        .is_some()
    {
        return Err(Error::Conflict("username already taken".into()));
    }
    let hash = password::hash(body.password, state.config.bcrypt_cost).await?;
    let user = users::create(
        &state.db,
        users::NewUser {
            id: crate::ids::next_id(),
            username: &body.username,
            password_hash: Some(&hash),
            nickname: &nickname,
            role: "user",
            phone_enc: None,
            phone_hash: None,
            apple_sub: None,
            signup_bonus: state.config.signup_bonus_credits,
        },
    )
    .await?;
    let tokens = open_session(&state, &user, &headers, &ip).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserAndTokens {
            user: user_view(&state, &user),
            tokens,
            created: None,
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct LoginBody {
    /// The username (any case).
    #[schema(min_length = 1, max_length = 64)]
    username: String,
    #[schema(min_length = 1, max_length = 512)]
    password: String,
}

/// Per-account and per-IP failure counters (fixed window, shared through the cache).
struct LoginLimiter<'a> {
    state: &'a AppState,
    acct_key: String,
    ip_key: String,
}

impl LoginLimiter<'_> {
    async fn check(&self) -> Result<()> {
        let cfg = &self.state.config;
        for (key, max) in [
            (&self.acct_key, cfg.login_max_failures_per_account),
            (&self.ip_key, cfg.login_max_failures_per_ip),
        ] {
            if max == 0 {
                continue;
            }
            let n: i64 = self
                .state
                .cache
                .get(key)
                .await?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if n >= i64::from(max) {
                let ttl = self.state.cache.ttl(key).await?.unwrap_or_default();
                return Err(Error::rate_limited(ttl.as_secs().max(1)));
            }
        }
        Ok(())
    }

    async fn failed(&self) -> Result<()> {
        let w = self.state.config.login_failure_window;
        self.state.cache.incr(&self.acct_key, w).await?;
        self.state.cache.incr(&self.ip_key, w).await?;
        Ok(())
    }

    async fn succeeded(&self) -> Result<()> {
        self.state.cache.del(&self.acct_key).await?;
        Ok(())
    }
}

#[utoipa::path(post, path = "/login", tag = "user", request_body = LoginBody, responses((status = 200, description = "success", body = UserAndTokens), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(body): Json<LoginBody>,
) -> Result<Json<UserAndTokens>> {
    check_len("username", &body.username, 1, 64)?;
    check_len("password", &body.password, 1, 512)?;
    let limiter = LoginLimiter {
        state: &state,
        acct_key: format!("lf:acct:{}", body.username.to_ascii_lowercase()),
        ip_key: format!("lf:ip:{ip}"),
    };
    limiter.check().await?;
    let user = users::by_username(&state.db, &body.username).await?;
    let ok = match user.as_ref().and_then(|u| u.password_hash.clone()) {
        Some(hash) => password::verify(body.password, hash).await?,
        None => {
            password::dummy_verify(body.password, state.config.bcrypt_cost).await;
            false
        }
    };
    let user = match (ok, user) {
        (true, Some(u)) => u,
        _ => {
            limiter.failed().await?;
            return Err(Error::Unauthorized("invalid username or password".into()));
        }
    };
    limiter.succeeded().await?;
    if user.is_disabled() {
        return Err(Error::Forbidden("this account is disabled".into()));
    }
    let tokens = open_session(&state, &user, &headers, &ip).await?;
    Ok(Json(UserAndTokens {
        user: user_view(&state, &user),
        tokens,
        created: None,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TokensOnly {
    tokens: Tokens,
}

#[utoipa::path(post, path = "/token/refresh", tag = "user", request_body = RefreshBody, responses((status = 200, description = "success", body = TokensOnly), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> Result<Json<TokensOnly>> {
    if body.refresh_token.is_empty() || body.refresh_token.len() > 256 {
        return Err(Error::Unauthorized("invalid refresh token".into()));
    }
    let new_refresh = auth::random_token("rt_");
    let ttl_ms = state.config.jwt_refresh_ttl.as_millis() as i64;
    let rotation = sessions::rotate(
        &state.db,
        &auth::token_hash(&body.refresh_token),
        &auth::token_hash(&new_refresh),
        ttl_ms,
    )
    .await?;
    match rotation {
        sessions::Rotation::Rotated {
            session_id,
            user_id,
        } => {
            let user = users::by_id(&state.db, user_id)
                .await?
                .filter(|u| !u.is_disabled())
                .ok_or_else(|| Error::Unauthorized("invalid refresh token".into()))?;
            Ok(Json(TokensOnly {
                tokens: Tokens {
                    access_token: state.jwt.issue(user.id, session_id, &user.role)?,
                    refresh_token: new_refresh,
                    token_type: "Bearer",
                    expires_in: state.jwt.ttl_secs(),
                },
            }))
        }
        sessions::Rotation::Reused {
            session_id,
            user_id,
        } => {
            tracing::warn!(session_id, "refresh token reuse: session revoked");
            auth::revoke_sessions(&state, user_id, &[session_id]).await?;
            Err(Error::Unauthorized(
                "refresh token reused; session revoked".into(),
            ))
        }
        sessions::Rotation::Invalid => Err(Error::Unauthorized("invalid refresh token".into())),
    }
}

#[utoipa::path(post, path = "/logout", tag = "user", responses((status = 204, description = "success"), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode> {
    auth::revoke_sessions(&state, user.user_id, &[user.session_id]).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn load_user(state: &AppState, user: &AuthUser) -> Result<users::UserRow> {
    users::by_id(&state.db, user.user_id)
        .await?
        .ok_or_else(|| Error::Unauthorized("user no longer exists".into()))
}

#[utoipa::path(get, path = "/me", tag = "user", responses((status = 200, description = "success", body = users::UserView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<users::UserView>> {
    let row = load_user(&state, &user).await?;
    Ok(Json(user_view(&state, &row)))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct PatchMe {
    #[schema(max_length = 64, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    nickname: Option<String>,
    /// An http(s) URL or a `/static/` path (e.g. from `POST /common/upload`); empty clears it.
    #[schema(
        max_length = 1024,
        pattern = r"^(|https?://[^\x00-\x20\x7f-\xa0/?#]+([/?#][^\x00-\x20\x7f-\xa0]*)?|/static/(\.?[^.\x00-\x1f\x7f-\x9f])*\.?)$"
    )]
    avatar_url: Option<String>,
    /// The new password; needs `old_password` when the account has one (403 without it).
    #[schema(min_length = 8, max_length = 128)]
    password: Option<String>,
    old_password: Option<String>,
}

#[utoipa::path(patch, path = "/me", tag = "user", request_body = PatchMe, responses((status = 200, description = "success", body = users::UserView), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn patch_me(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<PatchMe>,
) -> Result<Json<users::UserView>> {
    if let Some(n) = &body.nickname {
        validate_nickname(n)?;
    }
    if let Some(a) = &body.avatar_url {
        super::rules::check_url("avatar_url", a)?;
    }
    let row = load_user(&state, &user).await?;
    let mut patch = users::ProfilePatch {
        nickname: body.nickname,
        avatar_url: body.avatar_url,
        password_hash: None,
    };
    if let Some(new) = body.password {
        validate_password(&new, "password")?;
        // Changing a password needs the old one, unless the account never had one (SMS/Apple).
        if let Some(hash) = row.password_hash.clone() {
            let old = body.old_password.ok_or_else(|| {
                Error::Forbidden("old_password is required to change the password".into())
            })?;
            if !password::verify(old, hash).await? {
                return Err(Error::Unauthorized("old_password is wrong".into()));
            }
        }
        patch.password_hash = Some(password::hash(new, state.config.bcrypt_cost).await?);
    }
    let password_changed = patch.password_hash.is_some();
    users::update_profile(&state.db, row.id, patch).await?;
    if password_changed {
        // Other devices must log in again with the new password; this one stays signed in.
        let others = sessions::live_others(&state.db, row.id, user.session_id).await?;
        auth::revoke_sessions(&state, user.user_id, &others).await?;
    }
    let row = load_user(&state, &user).await?;
    Ok(Json(user_view(&state, &row)))
}

#[utoipa::path(get, path = "/credits/ledger", tag = "user", params(PageQuery), responses((status = 200, description = "success", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn ledger_list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<ledger::LedgerRow>>> {
    let page = q.page();
    let (items, total) = ledger::list(&state.db, user.user_id, page).await?;
    Ok(Json(storage::Paged::new(items, page, total)))
}
