//! Errors the engine reports; the server maps each onto the spec's error code (§4).

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("insufficient credits")]
    InsufficientCredits,
    #[error("{0}")]
    NotFound(String),
    #[error("model not found: {0}")]
    ModelNotFound(String),
    #[error("a turn is already in flight in this conversation")]
    ConversationBusy,
    #[error("rate limited, retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("the model pool is overloaded, retry after {retry_after} s")]
    Overloaded { retry_after: u64 },
    #[error("the model provider failed")]
    UpstreamError(String),
    #[error("the model did not answer in time")]
    UpstreamTimeout,
    #[error("internal error")]
    Internal(String),
    /// The database or the cache does not answer (an outage, not a bug): retry shortly.
    #[error("a service this request needs is unavailable, retry after {retry_after} s")]
    Unavailable { retry_after: u64 },
}

impl EngineError {
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::InvalidRequest(_) => "invalid_request",
            EngineError::InsufficientCredits => "insufficient_credits",
            EngineError::NotFound(_) => "not_found",
            EngineError::ModelNotFound(_) => "model_not_found",
            EngineError::ConversationBusy => "conversation_busy",
            EngineError::RateLimited { .. } => "rate_limited",
            EngineError::Overloaded { .. } => "overloaded",
            EngineError::UpstreamError(_) => "upstream_error",
            EngineError::UpstreamTimeout => "upstream_timeout",
            EngineError::Internal(_) => "internal_error",
            EngineError::Unavailable { .. } => "unavailable",
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            EngineError::RateLimited { retry_after }
            | EngineError::Overloaded { retry_after }
            | EngineError::Unavailable { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// What a client may see: never upstream or internal detail.
    pub fn public_message(&self) -> String {
        match self {
            EngineError::Internal(_) => "internal error".into(),
            EngineError::UpstreamError(_) => "the model provider failed".into(),
            other => other.to_string(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        EngineError::Internal(e.to_string())
    }
}
