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
    /// The context as text: what is counted, stored and (without `wire.messages`) sent.
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    /// What the OpenAI wire carries beyond text, when the request has any.
    pub wire: Option<Arc<WireExtras>>,
    /// What a model must be able to do to answer it (fallbacks that cannot are skipped).
    pub needs: Caps,
    /// An embeddings request instead of a chat: the body's fields beside `model` (`input`,
    /// `encoding_format`, `dimensions`, `user`, ...), forwarded as given. The answer comes as
    /// one [`StreamEvent::Embeddings`].
    pub embed: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// The parts of an OpenAI-compatible request the engine does not interpret, only forwards.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireExtras {
    /// The messages as sent upstream when they hold more than a role and text (image parts,
    /// assistant `tool_calls`, `tool` results); same order and meaning as `messages`.
    pub messages: Option<Vec<serde_json::Value>>,
    /// Other request fields, forwarded as given (`tools`, `tool_choice`, `response_format`,
    /// `seed`, penalties, `logit_bias`, `logprobs`, `user`, `metadata`, ...).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// What a model can do beyond text (admin-set, SPEC §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Reads `image_url` parts.
    pub vision: bool,
    /// Calls functions (`tools`).
    pub tools: bool,
    /// Structured output (`response_format` `json_object` / `json_schema`).
    pub json: bool,
    /// Creates embeddings (`POST /v1/embeddings`).
    #[serde(default)]
    pub embeddings: bool,
}

impl Caps {
    /// Whether a model with these capabilities can do everything `needs` asks for.
    pub fn covers(self, needs: Caps) -> bool {
        (self.vision || !needs.vision)
            && (self.tools || !needs.tools)
            && (self.json || !needs.json)
            && (self.embeddings || !needs.embeddings)
    }
}

/// A piece of a tool call as streamed (OpenAI's `delta.tool_calls[]`): the first piece of a
/// call has its `id` and `name`, the rest add to its `arguments`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// A whole tool call of an answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    /// Adds a streamed piece to the calls it belongs to (by `index`).
    pub fn merge(calls: &mut Vec<ToolCall>, d: &ToolCallDelta) {
        let i = d.index as usize;
        if calls.len() <= i {
            calls.resize_with(i + 1, ToolCall::default);
        }
        let c = &mut calls[i];
        if let Some(id) = &d.id {
            c.id.clone_from(id);
        }
        if let Some(n) = &d.name {
            c.name.push_str(n);
        }
        c.arguments.push_str(&d.arguments);
    }

    /// OpenAI's `tool_calls[]` item.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

/// What an upstream stream yields, in order: deltas, then at most one usage, then the end.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// A piece of the reply's text.
    Delta(String),
    /// A piece of a tool call.
    ToolCall(ToolCallDelta),
    /// Log probabilities of the tokens just sent (OpenAI's `logprobs.content` items).
    Logprobs(serde_json::Value),
    /// An embeddings answer's `data` (its vectors, as the provider encoded them).
    Embeddings(serde_json::Value),
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
