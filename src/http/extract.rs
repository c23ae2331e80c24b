//! Every extractor of the front door in one place, each rejecting in the spec's error shape:
//! a JSON body (UTF-8 checked as a whole), the query string, the path, paging, the client's
//! address and the admin caller.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::auth::AuthUser;
use crate::error::Error;
use crate::state::AppState;

/// A JSON body. Refused with 400 `invalid_request` unless the content type is JSON, the whole
/// body is valid UTF-8 (also in fields the endpoint ignores: RFC 8259 §8.1) and it parses as
/// `T`; 413 `payload_too_large` past the body limit.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        if !is_json(req.headers()) {
            return Err(Error::bad_request(
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|r| match r.status() {
                axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                    Error::PayloadTooLarge("request body too large".into())
                }
                _ => Error::bad_request(format!("could not read the body: {}", r.body_text())),
            })?;
        parse(&bytes).map(Json)
    }
}

/// `bytes` as JSON of `T`: UTF-8 first, then the shape.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(Error::bad_request(format!(
            "the body is not valid UTF-8 (byte {})",
            e.valid_up_to()
        )));
    }
    // Every body of this API is a JSON object; serde would also read a struct from an array
    // (`[null, true]` as `{role, disabled}`), which the schema does not allow.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::bad_request(
            "invalid JSON body: expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." => Error::bad_request(format!("invalid JSON body: {}", e.inner())),
            _ => Error::bad_request(format!("invalid JSON body: {path}: {}", e.inner())),
        }
    })?;
    de.end()
        .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query-string extractor whose rejections are `invalid_request`.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);

/// Path extractor whose rejections are `not_found`.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

/// `?page=&page_size=` of every paginated list.
#[derive(serde::Deserialize, Default, utoipa::IntoParams)]
pub struct PageQuery {
    pub page: Option<i64>,
    pub page_size: Option<i64>,
}

impl PageQuery {
    pub fn page(&self) -> crate::storage::Page {
        crate::storage::Page::new(self.page, self.page_size)
    }
}

/// The client's address: the socket peer, or the first `X-Forwarded-For` hop when
/// `TRUST_PROXY_HEADERS=true` (behind nginx).
pub struct ClientIp(pub String);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        if state.config.trust_proxy_headers {
            if let Some(ip) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                return Ok(ClientIp(ip.to_owned()));
            }
        }
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok(ClientIp(ip))
    }
}

/// The caller, who must be an admin: `unauthorized` without a valid token, `forbidden` for any
/// other role. A parts extractor, so it answers before the body is even read.
pub struct Admin(pub AuthUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        user.require_admin()?;
        Ok(Admin(user))
    }
}

/// The caller of a `/v1` request: an access token (JWT), or an API key (`qt-…`). API keys are
/// accepted here and nowhere else.
pub struct V1Auth(pub AuthUser);

impl FromRequestParts<AppState> for V1Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = crate::auth::bearer(parts)
            .ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        if token.starts_with("qt-") {
            crate::auth::api_keys::user_of_key(state, token)
                .await
                .map(V1Auth)
        } else {
            crate::auth::authenticate(state, token).await.map(V1Auth)
        }
    }
}
