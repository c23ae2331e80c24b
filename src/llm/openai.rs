//! The OpenAI-compatible HTTP provider: OpenAI, DeepSeek, or any server speaking the same
//! `/chat/completions` streaming protocol (vLLM, Ollama, ...).
//!
//! One [`reqwest::Client`] per provider keeps a pool of warm connections. The provider applies no
//! overall timeout of its own: the LLM pool actor applies the first-token and total timeouts, and
//! cancels an attempt by dropping its stream (which closes the connection).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use questech_engine::llm::{ChatRequest, EventStream, Provider, ProviderError, StreamEvent, Usage};
use serde::Deserialize;

use super::sse::SseParser;

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
    messages: &'a [questech_engine::llm::ChatMessage],
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
}

#[derive(serde::Serialize)]
struct StreamOptions {
    include_usage: bool,
}

pub fn request_body(req: &ChatRequest) -> RequestBody<'_> {
    RequestBody {
        model: &req.model,
        messages: &req.messages,
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: &req.stop,
    }
}

impl Provider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.name
    }

    fn stream(&self, req: ChatRequest) -> BoxFuture<'static, Result<EventStream, ProviderError>> {
        let mut builder = self
            .client
            .post(self.url())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&request_body(&req));
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        Box::pin(async move {
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

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    delta: Option<WireMessage>,
    /// Non-streaming answers carry `message` instead of `delta`.
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

/// Turns an SSE body into stream events.
///
/// Usage is held back and sent once, just before the end (some servers repeat it on every chunk),
/// so the order is always: deltas, at most one usage, then `Done` or an error.
fn sse_events(body: BoxStream<'static, reqwest::Result<Bytes>>) -> EventStream {
    struct State {
        body: BoxStream<'static, reqwest::Result<Bytes>>,
        parser: SseParser,
        out: VecDeque<Result<StreamEvent, ProviderError>>,
        finish_reason: Option<String>,
        usage: Option<Usage>,
        ended: bool,
    }

    impl State {
        /// Handles one event's data; returns true when the stream is over.
        fn data(&mut self, data: &str) -> bool {
            let data = data.trim();
            if data == "[DONE]" {
                self.end(Ok(StreamEvent::Done(self.finish_reason.clone())));
                return true;
            }
            if data.is_empty() {
                return false;
            }
            let chunk: WireChunk = match serde_json::from_str(data) {
                Ok(c) => c,
                Err(e) => {
                    let what = truncate_chars(data, 200);
                    self.end(Err(ProviderError::Protocol(format!(
                        "unparsable stream chunk ({e}): {what}"
                    ))));
                    return true;
                }
            };
            if let Some(err) = chunk.error {
                let message = err
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| err.to_string());
                self.end(Err(ProviderError::Protocol(format!(
                    "error in stream: {}",
                    truncate_chars(&message, MAX_ERROR_MESSAGE_CHARS)
                ))));
                return true;
            }
            if let Some(choice) = chunk.choices.into_iter().next() {
                if let Some(text) = choice.delta.and_then(|d| d.content) {
                    if !text.is_empty() {
                        self.out.push_back(Ok(StreamEvent::Delta(text)));
                    }
                }
                if choice.finish_reason.is_some() {
                    self.finish_reason = choice.finish_reason;
                }
            }
            if let Some(u) = chunk.usage {
                self.usage = Some(u.into());
            }
            false
        }

        /// Queues the held usage, then the final item.
        fn end(&mut self, last: Result<StreamEvent, ProviderError>) {
            if let Some(u) = self.usage.take() {
                self.out.push_back(Ok(StreamEvent::Usage(u)));
            }
            self.out.push_back(last);
            self.ended = true;
        }
    }

    let state = State {
        body,
        parser: SseParser::new(),
        out: VecDeque::new(),
        finish_reason: None,
        usage: None,
        ended: false,
    };
    stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.out.pop_front() {
                return Some((item, st));
            }
            if st.ended {
                return None;
            }
            match st.body.next().await {
                Some(Ok(bytes)) => {
                    for data in st.parser.feed(&bytes) {
                        if st.data(&data) {
                            break;
                        }
                    }
                    if !st.ended && st.parser.pending_bytes() > MAX_PENDING_SSE_BYTES {
                        st.end(Err(ProviderError::Protocol(
                            "stream event too large".to_owned(),
                        )));
                    }
                }
                Some(Err(e)) => st.end(Err(ProviderError::Network(error_chain(&e)))),
                None => {
                    if let Some(data) = st.parser.finish() {
                        st.data(&data);
                    }
                    if !st.ended {
                        st.end(Err(ProviderError::Network("stream ended early".to_owned())));
                    }
                }
            }
        }
    })
    .boxed()
}

/// The events of a non-streaming `chat.completion` body.
fn full_completion_events(body: &[u8]) -> Result<Vec<StreamEvent>, ProviderError> {
    let c: WireChunk = serde_json::from_slice(body).map_err(|e| {
        ProviderError::Protocol(format!(
            "unparsable completion ({e}): {}",
            truncate_chars(&String::from_utf8_lossy(body), 200)
        ))
    })?;
    let mut events = Vec::new();
    let mut finish_reason = None;
    if let Some(choice) = c.choices.into_iter().next() {
        if let Some(text) = choice.message.or(choice.delta).and_then(|m| m.content) {
            if !text.is_empty() {
                events.push(StreamEvent::Delta(text));
            }
        }
        finish_reason = choice.finish_reason;
    }
    if let Some(u) = c.usage {
        events.push(StreamEvent::Usage(u.into()));
    }
    events.push(StreamEvent::Done(finish_reason));
    Ok(events)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use questech_engine::llm::ChatMessage;
    use questech_fake_upstream::{self as fake_upstream, Behavior};

    fn req() -> ChatRequest {
        ChatRequest {
            model: "gpt-test".into(),
            messages: vec![
                ChatMessage {
                    role: "system".into(),
                    content: "Be brief.".into(),
                },
                ChatMessage {
                    role: "user".into(),
                    content: "Hi".into(),
                },
            ],
            ..Default::default()
        }
    }

    fn provider(base_url: &str, key: Option<&str>) -> OpenAiCompatible {
        OpenAiCompatible::new("openai", base_url, key.map(str::to_owned)).unwrap()
    }

    async fn collect(s: EventStream) -> Vec<Result<StreamEvent, ProviderError>> {
        s.collect().await
    }

    fn events_of(body: &str) -> Vec<Result<StreamEvent, ProviderError>> {
        let chunks: Vec<reqwest::Result<Bytes>> = body
            .as_bytes()
            .chunks(5)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::executor::block_on(sse_events(stream::iter(chunks).boxed()).collect())
    }

    fn delta(s: &str) -> StreamEvent {
        StreamEvent::Delta(s.into())
    }

    #[test]
    fn body_has_the_openai_shape() {
        let mut r = req();
        let b = serde_json::to_value(request_body(&r)).unwrap();
        assert_eq!(b["model"], "gpt-test");
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["messages"][1]["role"], "user");
        assert_eq!(b["messages"][1]["content"], "Hi");
        for absent in ["max_tokens", "temperature", "top_p", "stop"] {
            assert!(b.get(absent).is_none(), "{absent}");
        }
        r.max_tokens = Some(50);
        r.temperature = Some(0.5);
        r.top_p = Some(0.9);
        r.stop = vec!["\n\n".into()];
        let b = serde_json::to_value(request_body(&r)).unwrap();
        assert_eq!(b["max_tokens"], 50);
        assert_eq!(b["temperature"], 0.5);
        assert_eq!(b["top_p"], 0.9);
        assert_eq!(b["stop"], serde_json::json!(["\n\n"]));
    }

    #[test]
    fn error_messages() {
        let body = br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#;
        assert_eq!(error_message(body), "Rate limit reached");
        assert_eq!(error_message(b"  Bad Gateway \n"), "Bad Gateway");
        assert_eq!(error_message(br#"{"error":"plain"}"#), "plain");
        let long = "é".repeat(600);
        let m = error_message(long.as_bytes());
        assert_eq!(m.chars().count(), 501);
        assert!(m.ends_with('…'));
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1.5 "),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn stream_mapping() {
        let body = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
                    data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n\
                    : keep-alive\n\n\
                    data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}],\"usage\":null}\n\n\
                    data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":null}\n\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
                    data: [DONE]\n\n";
        let ev: Vec<StreamEvent> = events_of(body).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            ev,
            [
                delta("Hel"),
                delta("lo"),
                StreamEvent::Usage(Usage {
                    prompt_tokens: 9,
                    completion_tokens: 2
                }),
                StreamEvent::Done(Some("length".into())),
            ]
        );
    }

    #[test]
    fn repeated_usage_is_sent_once_before_done() {
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n\
                    data: {\"choices\":[{\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
                    data: [DONE]";
        let ev: Vec<StreamEvent> = events_of(body).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            ev,
            [
                delta("a"),
                delta("b"),
                StreamEvent::Usage(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 2
                }),
                StreamEvent::Done(Some("stop".into())),
            ]
        );
    }

    #[test]
    fn early_eof_and_bad_json() {
        let ev = events_of("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].as_ref().unwrap(), &delta("a"));
        assert!(
            matches!(&ev[1], Err(ProviderError::Network(m)) if m == "stream ended early"),
            "{ev:?}"
        );

        let ev = events_of("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {nope\n\ndata: [DONE]\n\n");
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(&ev[1], Err(ProviderError::Protocol(_))), "{ev:?}");

        let ev = events_of("data: {\"error\":{\"message\":\"overloaded\"}}\n\n");
        assert!(
            matches!(&ev[0], Err(ProviderError::Protocol(m)) if m.contains("overloaded")),
            "{ev:?}"
        );
    }

    #[test]
    fn full_completion_fallback() {
        let body = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        assert_eq!(
            full_completion_events(body).unwrap(),
            [
                delta("Hi!"),
                StreamEvent::Usage(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2
                }),
                StreamEvent::Done(Some("stop".into())),
            ]
        );
    }

    #[tokio::test]
    async fn normal_stream_against_fake_upstream() {
        let up = fake_upstream::start(Behavior::default()).await.unwrap();
        let p = provider(&up.base_url, Some("sk-test"));
        let ev: Vec<StreamEvent> = collect(p.stream(req()).await.unwrap())
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            ev,
            [
                delta("Hello"),
                delta(" from"),
                delta(" fake"),
                delta(" upstream"),
                StreamEvent::Usage(Usage {
                    prompt_tokens: 20,
                    completion_tokens: 4
                }),
                StreamEvent::Done(Some("stop".into())),
            ]
        );
        up.shutdown().await;
    }

    #[tokio::test]
    async fn request_is_recorded_with_usage_option_and_key() {
        let up = fake_upstream::start(Behavior::default()).await.unwrap();
        let p = provider(&up.base_url, Some("sk-test"));
        let mut r = req();
        r.max_tokens = Some(100);
        let _ = collect(p.stream(r).await.unwrap()).await;
        assert_eq!(up.request_count(), 1);
        let recorded = up.requests();
        assert_eq!(recorded.len(), 1);
        let rec = &recorded[0];
        assert_eq!(rec.path, "/v1/chat/completions");
        assert_eq!(rec.authorization.as_deref(), Some("Bearer sk-test"));
        assert_eq!(rec.body["stream"], true);
        assert_eq!(rec.body["stream_options"]["include_usage"], true);
        assert_eq!(rec.body["model"], "gpt-test");
        assert_eq!(rec.body["max_tokens"], 100);
        assert_eq!(rec.body["messages"].as_array().unwrap().len(), 2);

        // No key, no Authorization header.
        let p = provider(&up.base_url, None);
        let _ = collect(p.stream(req()).await.unwrap()).await;
        assert_eq!(up.requests()[1].authorization, None);
        up.shutdown().await;
    }

    #[tokio::test]
    async fn status_500_is_a_status_error() {
        let up = fake_upstream::start(Behavior {
            fail_always: Some(500),
            ..Default::default()
        })
        .await
        .unwrap();
        let p = provider(&up.base_url, Some("k"));
        match p.stream(req()).await {
            Err(ProviderError::Status {
                status,
                message,
                retry_after,
            }) => {
                assert_eq!(status, 500);
                assert!(
                    !message.is_empty() && !message.starts_with('{'),
                    "{message}"
                );
                assert_eq!(retry_after, None);
            }
            Err(e) => panic!("unexpected error {e:?}"),
            Ok(_) => panic!("expected an error"),
        }
        up.shutdown().await;
    }

    #[tokio::test]
    async fn status_429_carries_retry_after_then_recovers() {
        let up = fake_upstream::start(Behavior {
            fail_first: 1,
            fail_status: 429,
            retry_after: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
        let p = provider(&up.base_url, Some("k"));
        match p.stream(req()).await {
            Err(ProviderError::Status {
                status,
                retry_after,
                ..
            }) => {
                assert_eq!(status, 429);
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
            }
            Err(e) => panic!("unexpected error {e:?}"),
            Ok(_) => panic!("expected an error"),
        }
        // The second request goes through.
        let ev = collect(p.stream(req()).await.unwrap()).await;
        assert!(
            matches!(ev.last(), Some(Ok(StreamEvent::Done(_)))),
            "{ev:?}"
        );
        assert_eq!(up.request_count(), 2);
        up.shutdown().await;
    }

    #[tokio::test]
    async fn dropped_connection_is_a_network_error_after_the_deltas() {
        let up = fake_upstream::start(Behavior {
            drop_after: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
        let p = provider(&up.base_url, Some("k"));
        let ev = collect(p.stream(req()).await.unwrap()).await;
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert_eq!(ev[0].as_ref().unwrap(), &delta("Hello"));
        assert_eq!(ev[1].as_ref().unwrap(), &delta(" from"));
        assert!(matches!(&ev[2], Err(ProviderError::Network(_))), "{ev:?}");
        up.shutdown().await;
    }

    #[tokio::test]
    async fn connection_refused_is_a_network_error() {
        // Bind then free a port so nothing listens there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = provider(&format!("http://127.0.0.1:{port}/v1"), None);
        assert!(matches!(
            p.stream(req()).await,
            Err(ProviderError::Network(_))
        ));
    }

    #[tokio::test]
    async fn behaviour_changes_at_runtime_and_custom_words() {
        let up = fake_upstream::start(Behavior::default()).await.unwrap();
        up.update_behavior(|b| {
            b.reply_words = Some(vec!["你好".into(), "，世界".into()]);
            b.usage = false;
        });
        let p = provider(&up.base_url, None);
        let ev: Vec<StreamEvent> = collect(p.stream(req()).await.unwrap())
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            ev,
            [
                delta("你好"),
                delta("，世界"),
                StreamEvent::Done(Some("stop".into()))
            ]
        );
        up.shutdown().await;
    }
}
