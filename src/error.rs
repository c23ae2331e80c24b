//! The one error type of the HTTP surface. Every variant renders the OpenAI error shape
//! `{"error":{"message","type","code"}}` with the status the spec (§4) gives its code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use questech_engine::EngineError;
use serde::Serialize;

/// The error body every error response carries (for the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiError {
    pub error: ApiErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiErrorDetail {
    /// Human readable.
    pub message: String,
    /// The category (`invalid_request_error`, `authentication_error`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The spec's error code (`invalid_request`, `unauthorized`, ...).
    pub code: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the engine reports: bad input, missing things, limits, credits, models, the model
    /// providers. Its code and message are the engine's ([`EngineError::code`]).
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A provider other than a model's (SMS, Sign in with Apple) failed; the message is shown.
    #[error("{0}")]
    AuthProvider(String),
    /// Anything else. The inner error is logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
}

/// The one table of SPEC §4: each code's HTTP status and OpenAI error `type` (so the OpenAI
/// SDKs classify our errors as theirs).
fn table(code: &str) -> (StatusCode, &'static str) {
    match code {
        "invalid_request" | "method_not_allowed" | "payload_too_large" | "conflict"
        | "conversation_busy" => (
            match code {
                "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
                "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                "conflict" | "conversation_busy" => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            },
            "invalid_request_error",
        ),
        "unauthorized" => (StatusCode::UNAUTHORIZED, "authentication_error"),
        "insufficient_credits" => (StatusCode::PAYMENT_REQUIRED, "insufficient_quota"),
        "forbidden" => (StatusCode::FORBIDDEN, "permission_error"),
        "not_found" | "model_not_found" => (StatusCode::NOT_FOUND, "not_found_error"),
        "rate_limited" => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        "upstream_error" => (StatusCode::BAD_GATEWAY, "upstream_error"),
        "overloaded" => (StatusCode::SERVICE_UNAVAILABLE, "upstream_error"),
        "unavailable" => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
        "upstream_timeout" => (StatusCode::GATEWAY_TIMEOUT, "upstream_error"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

impl Error {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Error::Internal(e.into())
    }

    /// 400 `invalid_request` naming the field.
    pub fn invalid(field: &str, why: &str) -> Self {
        Error::bad_request(format!("{field}: {why}"))
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::Engine(EngineError::InvalidRequest(message.into()))
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::Engine(EngineError::NotFound(message.into()))
    }

    /// 429 `rate_limited`.
    pub fn rate_limited(retry_after: u64) -> Self {
        Error::Engine(EngineError::RateLimited { retry_after })
    }

    /// The spec's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Engine(e) => e.code(),
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::Conflict(_) => "conflict",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::AuthProvider(_) => "upstream_error",
            Error::Internal(_) => "internal_error",
        }
    }

    /// The OpenAI-style category (`type`).
    pub fn kind(&self) -> &'static str {
        table(self.code()).1
    }

    pub fn status(&self) -> StatusCode {
        table(self.code()).0
    }

    /// Seconds a client should wait, for the codes that carry `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Engine(e) => e.retry_after(),
            _ => None,
        }
    }

    /// The message shown to clients: never internals, nor a model provider's own words.
    pub fn public_message(&self) -> String {
        match self {
            Error::Engine(e) => e.public_message(),
            Error::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The JSON body alone, for transports that are not plain HTTP responses (SSE, WebSocket).
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.public_message(), "type": self.kind(), "code": self.code()}})
    }
}

/// What the engine sees of a server error (from its ports): its own errors as they are,
/// anything else as internal (logged).
impl From<Error> for EngineError {
    fn from(e: Error) -> Self {
        match e {
            Error::Engine(e) => e,
            other => {
                tracing::error!(error = ?other, "storage error in the engine");
                EngineError::Internal(other.to_string())
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::Internal(e) => tracing::error!(error = ?e, "internal error"),
            Error::Engine(EngineError::Internal(e)) => {
                tracing::error!(error = %e, "internal error")
            }
            Error::Engine(EngineError::UpstreamError(detail)) => {
                tracing::warn!(detail = %detail, "a model provider failed");
            }
            _ => {}
        }
        let status = self.status();
        let body = Body {
            error: Inner {
                message: self.public_message(),
                kind: self.kind(),
                code: self.code(),
            },
        };
        let mut res = (status, axum::Json(body)).into_response();
        let headers = res.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}

/// Seconds a client is asked to wait when the database or the cache does not answer.
pub const OUTAGE_RETRY_AFTER: u64 = 2;

impl Error {
    /// 503 `unavailable` with `Retry-After`: a store this request needs does not answer.
    pub fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(store = what, error = %e, "a store does not answer");
        Error::Engine(EngineError::Unavailable {
            retry_after: OUTAGE_RETRY_AFTER,
        })
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::Conflict("already exists".into())
            }
            // No connection to be had (or it broke): an outage, not a bug of this request.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Error::unavailable("database", &e),
            _ => Error::Internal(e.into()),
        }
    }
}

impl From<crate::cache::CacheError> for Error {
    fn from(e: crate::cache::CacheError) -> Self {
        if e.is_unreachable() {
            return Error::unavailable("cache", &e);
        }
        Error::Internal(e.into())
    }
}

impl From<axum::extract::rejection::JsonRejection> for Error {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Error::PayloadTooLarge("request body too large".into());
        }
        Error::bad_request(r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for Error {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Error::bad_request(r.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for Error {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        Error::not_found(format!("not found ({})", r.body_text()))
    }
}
