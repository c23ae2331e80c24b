//! The one error type of the HTTP surface. Every variant renders the OpenAI error shape
//! `{"error":{"message","type","code"}}` with the status the spec (§4) gives its code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
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
    /// Malformed JSON or a failed validation; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("insufficient credits")]
    InsufficientCredits,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("model not found: {0}")]
    ModelNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("a turn is already in flight in this conversation")]
    ConversationBusy,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("rate limited, retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UpstreamError(String),
    #[error("the model pool is overloaded, retry after {retry_after} s")]
    Overloaded { retry_after: u64 },
    #[error("the model did not answer in time")]
    UpstreamTimeout,
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

impl Error {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Error::Internal(e.into())
    }

    pub fn invalid(field: &str, why: &str) -> Self {
        Error::InvalidRequest(format!("{field}: {why}"))
    }

    /// The spec's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::InsufficientCredits => "insufficient_credits",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::ModelNotFound(_) => "model_not_found",
            Error::Conflict(_) => "conflict",
            Error::ConversationBusy => "conversation_busy",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::RateLimited { .. } => "rate_limited",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::UpstreamError(_) => "upstream_error",
            Error::Overloaded { .. } => "overloaded",
            Error::UpstreamTimeout => "upstream_timeout",
            Error::Internal(_) => "internal_error",
        }
    }

    /// The OpenAI-style category (`type`), so OpenAI SDKs classify our errors as theirs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_)
            | Error::PayloadTooLarge(_)
            | Error::MethodNotAllowed(_)
            | Error::ConversationBusy
            | Error::Conflict(_) => "invalid_request_error",
            Error::Unauthorized(_) => "authentication_error",
            Error::InsufficientCredits => "insufficient_quota",
            Error::Forbidden(_) => "permission_error",
            Error::NotFound(_) | Error::ModelNotFound(_) => "not_found_error",
            Error::RateLimited { .. } => "rate_limit_error",
            Error::UpstreamError(_) | Error::UpstreamTimeout | Error::Overloaded { .. } => {
                "upstream_error"
            }
            Error::Internal(_) => "server_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::InsufficientCredits => StatusCode::PAYMENT_REQUIRED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) | Error::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) | Error::ConversationBusy => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::UpstreamError(_) => StatusCode::BAD_GATEWAY,
            Error::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait, for the codes that carry `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after } | Error::Overloaded { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// The message shown to clients: never internals.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The JSON body alone, for transports that are not plain HTTP responses (SSE, WebSocket).
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.public_message(), "type": self.kind(), "code": self.code()}})
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error");
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

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return Error::Conflict("already exists".into());
            }
        }
        Error::Internal(e.into())
    }
}

impl From<crate::cache::CacheError> for Error {
    fn from(e: crate::cache::CacheError) -> Self {
        Error::Internal(e.into())
    }
}

impl From<axum::extract::rejection::JsonRejection> for Error {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Error::PayloadTooLarge("request body too large".into());
        }
        Error::InvalidRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for Error {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Error::InvalidRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for Error {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        Error::NotFound(format!("not found ({})", r.body_text()))
    }
}
