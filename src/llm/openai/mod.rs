//! The OpenAI-compatible HTTP provider: OpenAI, DeepSeek, or any server speaking the same
//! `/chat/completions` streaming protocol (vLLM, Ollama, ...).
//!
//! One [`reqwest::Client`] per provider keeps a pool of warm connections. The provider applies no
//! overall timeout of its own: the LLM pool actor applies the first-token and total timeouts, and
//! cancels an attempt by dropping its stream (which closes the connection).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use questech_engine::llm::{ChatRequest, EventStream, Provider, ProviderError};

mod images;
#[cfg(test)]
mod tests;
mod wire;

use wire::{full_completion_events, sse_events};

/// Longest provider error message kept (in characters).
const MAX_ERROR_MESSAGE_CHARS: usize = 500;
/// Most bytes read from an error response's body.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// An upstream that sends more than this without ending a line or an event is refused.
const MAX_PENDING_SSE_BYTES: usize = 8 * 1024 * 1024;

/// A provider speaking OpenAI's chat-completions API.
#[derive(Clone, Debug)]
pub struct OpenAiCompatible {
    pub name: String,
    /// e.g. `https://api.openai.com/v1` (no trailing slash needed).
    pub base_url: String,
    pub api_key: Option<String>,
    pub client: reqwest::Client,
    /// Where this server keeps uploads: images attached from there are sent inline.
    pub uploads: Option<crate::uploads::Store>,
}

impl OpenAiCompatible {
    /// Builds the provider with its own pooled HTTP client.
    pub fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        api_key: Option<String>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            name: name.into(),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            api_key,
            client: build_client()?,
            uploads: None,
        })
    }

    fn url(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }
}

/// The HTTP client of one provider: pooled keep-alive connections, `TCP_NODELAY` (small SSE
/// chunks must not wait for Nagle), a connect timeout, and no overall timeout.
pub fn build_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("questech/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The JSON body of a streaming chat-completions request, serialized straight from the
/// request's messages (no intermediate `Value` tree: a long context is not copied twice).
#[derive(serde::Serialize)]
pub struct RequestBody<'a> {
    model: &'a str,
    messages: Messages<'a>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    /// Forwarded fields (`tools`, `response_format`, ...).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    fields: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// The messages as text, or as the client's own JSON when they hold more.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Messages<'a> {
    Text(&'a [questech_engine::llm::ChatMessage]),
    Wire(&'a [serde_json::Value]),
}

#[derive(serde::Serialize)]
struct StreamOptions {
    include_usage: bool,
}

pub fn request_body(req: &ChatRequest) -> RequestBody<'_> {
    RequestBody {
        model: &req.model,
        messages: match req.wire.as_ref().and_then(|w| w.messages.as_deref()) {
            Some(wire) => Messages::Wire(wire),
            None => Messages::Text(&req.messages),
        },
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: &req.stop,
        fields: req.wire.as_ref().map(|w| &w.fields),
    }
}

impl Provider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.name
    }

    fn stream(&self, req: ChatRequest) -> BoxFuture<'static, Result<EventStream, ProviderError>> {
        if let Some(fields) = &req.embed {
            return self.embed(&req.model, fields);
        }
        if let Some(store) = self.uploads.clone().filter(|_| images::has_local(&req)) {
            let me = self.clone();
            return Box::pin(async move {
                let req = images::inline(req, &store).await?;
                me.send_chat(&req).await
            });
        }
        let open = self.send_chat(&req);
        Box::pin(open)
    }
}

impl OpenAiCompatible {
    /// Sends a chat request; resolves once the upstream answered its status line.
    fn send_chat(
        &self,
        req: &ChatRequest,
    ) -> impl std::future::Future<Output = Result<EventStream, ProviderError>> + Send + 'static
    {
        let mut builder = self
            .client
            .post(self.url())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&request_body(req));
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        async move {
            let resp = builder
                .send()
                .await
                .map_err(|e| ProviderError::Network(error_chain(&e)))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(status_error(resp).await);
            }
            let is_json = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
            if is_json {
                // The server ignored `stream: true` and sent the whole completion at once.
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| ProviderError::Network(error_chain(&e)))?;
                let events = full_completion_events(&body)?;
                return Ok(stream::iter(events.into_iter().map(Ok)).boxed());
            }
            Ok(sse_events(resp.bytes_stream().boxed()))
        }
    }

    /// `POST /embeddings`: one JSON answer, as the events of a stream (the vectors, the
    /// usage, the end), so that it runs through the pool like a chat.
    fn embed(
        &self,
        model: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> BoxFuture<'static, Result<EventStream, ProviderError>> {
        let mut body = fields.clone();
        body.insert("model".into(), model.into());
        let mut builder = self
            .client
            .post(format!("{}/embeddings", self.base_url))
            .json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        Box::pin(async move {
            let resp = builder
                .send()
                .await
                .map_err(|e| ProviderError::Network(error_chain(&e)))?;
            if !resp.status().is_success() {
                return Err(status_error(resp).await);
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| ProviderError::Network(error_chain(&e)))?;
            let events = wire::embedding_events(&body)?;
            Ok(stream::iter(events.into_iter().map(Ok)).boxed())
        })
    }
}

/// `e` and its sources, e.g. "error sending request: connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// A non-2xx answer as a [`ProviderError::Status`].
async fn status_error(resp: reqwest::Response) -> ProviderError {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    ProviderError::Status {
        status,
        message: error_message(&body),
        retry_after,
    }
}

/// `Retry-After` in seconds (whole or fractional); HTTP dates are not honoured.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
}

/// The provider's error message: `error.message` of an OpenAI error body, else the body's text,
/// cut to [`MAX_ERROR_MESSAGE_CHARS`].
pub fn error_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("message")
                .and_then(|m| m.as_str())
                .or_else(|| e.as_str())
                .map(str::to_owned)
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    truncate_chars(&text, MAX_ERROR_MESSAGE_CHARS)
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
