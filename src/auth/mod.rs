//! Authentication: JWT access tokens, opaque rotating refresh tokens, bcrypt passwords, and the
//! extractor that turns a bearer token into an [`AuthUser`] (checking the session is live).

pub mod account;
pub mod api_keys;
pub mod apple;
pub mod crypto;
pub mod jwt;
pub mod password;
pub mod sms;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub user_id: i64,
    pub session_id: i64,
    pub role: Role,
    /// Set when the caller used an API key (only accepted on `/v1`).
    pub api_key_id: Option<i64>,
}

impl AuthUser {
    pub fn require_admin(&self) -> Result<()> {
        match self.role {
            Role::Admin => Ok(()),
            Role::User => Err(Error::Forbidden("admin role required".into())),
        }
    }
}

/// A new opaque token: 32 random bytes, URL-safe base64, with a readable prefix.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Tokens are stored as SHA-256 hex: a database leak reveals no usable token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn session_key(sid: i64) -> String {
    format!("sess:{sid}")
}

/// Checks that the session behind a verified access token is still live. The cache holds
/// `"live"` or `"revoked"`; a miss reads the database (the authority) and fills the cache.
pub async fn check_session(state: &AppState, user_id: i64, sid: i64) -> Result<()> {
    let key = session_key(sid);
    // The cache only speeds this up: if it is unreachable, the database answers.
    match state.cache.get(&key).await {
        Ok(Some(v)) if v == "live" => return Ok(()),
        Ok(Some(_)) => return Err(Error::Unauthorized("session revoked".into())),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "session cache unavailable; asking the database");
            return check_session_db(state, user_id, sid).await.map(|_| ());
        }
    }
    // A database error is not a verdict: never cache it as "revoked".
    let live = match check_session_db(state, user_id, sid).await {
        Ok(()) => true,
        Err(Error::Unauthorized(_)) => false,
        Err(e) => return Err(e),
    };
    let ttl = state.config.jwt_access_ttl;
    if let Err(e) = state
        .cache
        .set(&key, if live { "live" } else { "revoked" }, Some(ttl))
        .await
    {
        tracing::warn!(error = %e, "could not cache a session check");
    }
    if live {
        Ok(())
    } else {
        Err(Error::Unauthorized("session revoked".into()))
    }
}

async fn check_session_db(state: &AppState, user_id: i64, sid: i64) -> Result<()> {
    let row = storage::sessions::get(&state.db, sid).await?;
    match row {
        Some(s) if s.user_id == user_id && s.revoked_at.is_none() => Ok(()),
        _ => Err(Error::Unauthorized("session revoked".into())),
    }
}

/// Marks sessions revoked in the database and the cache, so their access tokens fail on their
/// very next request on any node.
pub async fn revoke_sessions(state: &AppState, user_id: i64, sids: &[i64]) -> Result<()> {
    for sid in sids {
        storage::sessions::revoke(&state.db, *sid).await?;
        state
            .cache
            .set(
                &session_key(*sid),
                "revoked",
                Some(state.config.jwt_access_ttl),
            )
            .await?;
        // Its sockets close too, on every node: a signed-out device stops receiving.
        state.engine.kick_session(user_id, *sid);
    }
    Ok(())
}

/// Verifies an access token (signature, expiry, algorithm) and its session.
pub async fn authenticate(state: &AppState, token: &str) -> Result<AuthUser> {
    let claims = state.jwt.verify(token)?;
    let user_id = crate::ids::parse(&claims.sub)
        .ok_or_else(|| Error::Unauthorized("invalid token".into()))?;
    let session_id = crate::ids::parse(&claims.sid)
        .ok_or_else(|| Error::Unauthorized("invalid token".into()))?;
    let role =
        Role::parse(&claims.role).ok_or_else(|| Error::Unauthorized("invalid token".into()))?;
    check_session(state, user_id, session_id).await?;
    // The request's log line names its user.
    tracing::Span::current().record("user_id", user_id);
    Ok(AuthUser {
        user_id,
        session_id,
        role,
        api_key_id: None,
    })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token =
            bearer(parts).ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        authenticate(state, token).await
    }
}
