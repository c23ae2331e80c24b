//! Account helpers shared by every way in (password, SMS, Sign in with Apple, the CLI and
//! admin views): the rules of a username and a password, opening a session with its first
//! token pair, and the user object as its owner sees it.

use axum::http::HeaderMap;
use serde::Serialize;

use crate::auth;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::{sessions, users};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserAndTokens {
    pub user: users::UserView,
    pub tokens: Tokens,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
}

pub fn validate_username(u: &str) -> Result<()> {
    let ok =
        (3..=20).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "username",
            "must be 3 to 20 characters of letters, digits and underscore",
        ))
    }
}

pub fn validate_password(p: &str, field: &str) -> Result<()> {
    let n = p.chars().count();
    if (8..=128).contains(&n) {
        Ok(())
    } else {
        Err(Error::invalid(field, "must be 8 to 128 characters"))
    }
}

// ---- sessions -----------------------------------------------------------------------------------

/// Opens a session (one per device/login) and issues its first token pair.
pub async fn open_session(
    state: &AppState,
    user: &users::UserRow,
    headers: &HeaderMap,
    ip: &str,
) -> Result<Tokens> {
    let sid = crate::ids::next_id();
    let refresh = auth::random_token("rt_");
    let ttl_ms = state.config.jwt_refresh_ttl.as_millis() as i64;
    let device = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    sessions::create(
        &state.db,
        sid,
        user.id,
        device,
        ip,
        &auth::token_hash(&refresh),
        crate::time::now_ms() + ttl_ms,
    )
    .await?;
    Ok(Tokens {
        access_token: state.jwt.issue(user.id, sid, &user.role)?,
        refresh_token: refresh,
        token_type: "Bearer",
        expires_in: state.jwt.ttl_secs(),
    })
}

/// The user object as the owner sees it (phone masked).
pub fn user_view(state: &AppState, u: &users::UserRow) -> users::UserView {
    let masked = u.phone_enc.as_deref().and_then(|enc| {
        let phone = auth::crypto::decrypt(&state.config.encryption_key, enc);
        if phone.is_none() {
            tracing::warn!(
                user_id = u.id,
                "phone_enc does not decrypt (ENCRYPTION_KEY changed?)"
            );
        }
        phone.map(|p| auth::crypto::mask_phone(&p))
    });
    u.view(masked)
}
