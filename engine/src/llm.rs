//! The provider port: what the LLM pool needs from an upstream (OpenAI-compatible HTTP, the
//! built-in `echo` model, ...). Implementations live in the server crate (`src/llm/`).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One message of a chat context. Shared strings: a conversation's history is handed to every
/// turn's request (and its fallbacks) without copying the texts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Arc<str>,
    pub content: Arc<str>,
}

impl ChatMessage {
    /// A message with this role and text.
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Token usage as reported by a provider (or counted locally when it reports none).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One upstream request. `model` is the provider's own model name (`upstream_model`).
#[derive(Clone, Debug, Default)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
}

/// What an upstream stream yields, in order: deltas, then at most one usage, then the end.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// A piece of the reply's text.
    Delta(String),
    /// The provider's own token count (OpenAI sends it in the last chunk with
    /// `stream_options.include_usage`).
    Usage(Usage),
    /// The stream ended normally (`finish_reason`, if the provider gave one).
    Done(Option<String>),
}

/// Why an upstream attempt failed. The provider's real status and message are kept for logs;
/// clients only ever see the spec's error code.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("upstream answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("upstream timed out")]
    Timeout,
    #[error("network error: {0}")]
    Network(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

pub type EventStream = BoxStream<'static, Result<StreamEvent, ProviderError>>;

/// An upstream LLM provider. `stream` resolves once the upstream accepted the request (status
/// line seen); the stream then yields the reply as it arrives.
pub trait Provider: Send + Sync + 'static {
    /// The provider's id (`echo`, `openai`, `deepseek`, ...).
    fn name(&self) -> &str;
    /// True for development-only providers (the `echo` model).
    fn is_dev(&self) -> bool {
        false
    }
    fn stream(&self, req: ChatRequest) -> BoxFuture<'static, Result<EventStream, ProviderError>>;
}
