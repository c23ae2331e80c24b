//! Sign in with Apple (SPEC §5): `POST /user/login/apple`. The identity token is verified in
//! [`crate::auth::apple`]; accounts are linked by Apple's `sub` (`users.apple_sub`).

use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::check_label;
use super::sms::{find_or_create, Identity};
use super::{ClientIp, Json};
use crate::auth::account::{open_session, user_view, UserAndTokens};
use crate::error::{Error, Result};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(login_apple))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct AppleLoginBody {
    /// The `identityToken` the app received from Apple.
    identity_token: String,
    /// Used only when this login creates the account (Apple tells the app the name only once).
    #[schema(max_length = 64, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    nickname: Option<String>,
    /// The raw nonce whose SHA-256 (hex) the app passed to Apple; required when the token
    /// carries a `nonce`. Each nonce logs in once.
    #[schema(min_length = 1, max_length = 256)]
    nonce: Option<String>,
}

/// How long a used nonce is remembered: longer than an identity token lives (10 minutes).
const NONCE_MEMORY: std::time::Duration = std::time::Duration::from_secs(15 * 60);

fn clean_nickname(n: Option<String>) -> Result<Option<String>> {
    let Some(n) = n else {
        return Ok(None);
    };
    check_label("nickname", &n, 0, 64)?;
    Ok(Some(n.trim().to_owned()).filter(|n| !n.is_empty()))
}

#[utoipa::path(post, path = "/login/apple", tag = "user", request_body = AppleLoginBody, responses((status = 200, description = "logged in; `created` when this login made the account", body = UserAndTokens), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn login_apple(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(body): Json<AppleLoginBody>,
) -> Result<Json<UserAndTokens>> {
    let nickname = clean_nickname(body.nickname)?;
    if let Some(n) = &body.nonce {
        if n.is_empty() || n.chars().count() > 256 {
            return Err(Error::invalid("nonce", "must be 1 to 256 characters"));
        }
    }
    let cfg = &state.config;
    let claims = crate::auth::apple::verify(
        &cfg.apple_jwks_url,
        &cfg.apple_client_ids,
        &body.identity_token,
    )
    .await?;
    crate::auth::apple::check_nonce(&claims, body.nonce.as_deref())?;
    if let Some(n) = &claims.nonce {
        // One login per nonce, on every node: a replayed token with its nonce is refused.
        let key = format!("apple-nonce:{}", crate::auth::token_hash(n));
        if !state.cache.set_nx(&key, "1", NONCE_MEMORY).await? {
            return Err(Error::Unauthorized(
                "Apple identity token nonce already used".into(),
            ));
        }
    }
    let sub = claims.sub.trim();
    let nickname = nickname.unwrap_or_else(|| "Apple user".to_owned());
    let (user, created) = find_or_create(&state, Identity::Apple { sub }, &nickname).await?;
    if user.is_disabled() {
        return Err(Error::Forbidden("this account is disabled".into()));
    }
    if created {
        tracing::info!(user_id = user.id, "account created by Sign in with Apple");
    }
    let tokens = open_session(&state, &user, &headers, &ip).await?;
    Ok(Json(UserAndTokens {
        user: user_view(&state, &user),
        tokens,
        created: Some(created),
    }))
}
