//! The wire format of `/chat/completions` answers: chunks of a stream and whole completions, read
//! into the engine's [`StreamEvent`]s.

use std::collections::VecDeque;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use questech_engine::llm::{EventStream, ProviderError, StreamEvent, ToolCallDelta, Usage};
use serde::Deserialize;

use super::{error_chain, truncate_chars, MAX_ERROR_MESSAGE_CHARS, MAX_PENDING_SSE_BYTES};
use crate::llm::sse::SseParser;

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
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Deserialize)]
struct WireLogprobs {
    #[serde(default)]
    content: Option<serde_json::Value>,
}

impl WireChoice {
    /// The choice's log probabilities, if it has any.
    fn logprobs(&mut self) -> Option<StreamEvent> {
        let items = self.logprobs.take()?.content?;
        let any = items.as_array().is_some_and(|a| !a.is_empty());
        any.then_some(StreamEvent::Logprobs(items))
    }
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

/// A tool call, whole (`message`) or a piece of one (`delta`).
#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

impl WireMessage {
    /// The message's content as events: its text, then its tool calls (the k-th call
    /// without an index is call k).
    fn events(self, out: &mut impl Extend<Result<StreamEvent, ProviderError>>) {
        if let Some(text) = self.content.filter(|t| !t.is_empty()) {
            out.extend([Ok(StreamEvent::Delta(text))]);
        }
        for (k, c) in self.tool_calls.into_iter().enumerate() {
            let (name, arguments) = c
                .function
                .map(|f| (f.name, f.arguments.unwrap_or_default()))
                .unwrap_or_default();
            out.extend([Ok(StreamEvent::ToolCall(ToolCallDelta {
                index: c.index.unwrap_or(k as u32),
                id: c.id,
                name,
                arguments,
            }))]);
        }
    }
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
/// What a streamed response has read so far, and the events it has still to hand out.
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
        if let Some(mut choice) = chunk.choices.into_iter().next() {
            let logprobs = choice.logprobs();
            if let Some(d) = choice.delta {
                d.events(&mut self.out);
            }
            self.out.extend(logprobs.map(Ok));
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

/// The events of a streamed (`text/event-stream`) response body.
pub(super) fn sse_events(body: BoxStream<'static, reqwest::Result<Bytes>>) -> EventStream {
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
pub(super) fn full_completion_events(body: &[u8]) -> Result<Vec<StreamEvent>, ProviderError> {
    let c: WireChunk = serde_json::from_slice(body).map_err(|e| {
        ProviderError::Protocol(format!(
            "unparsable completion ({e}): {}",
            truncate_chars(&String::from_utf8_lossy(body), 200)
        ))
    })?;
    let mut events = Vec::new();
    let mut finish_reason = None;
    if let Some(mut choice) = c.choices.into_iter().next() {
        let logprobs = choice.logprobs();
        if let Some(m) = choice.message.or(choice.delta) {
            let mut out = Vec::new();
            m.events(&mut out);
            events.extend(out.into_iter().flatten());
        }
        events.extend(logprobs);
        finish_reason = choice.finish_reason;
    }
    if let Some(u) = c.usage {
        events.push(StreamEvent::Usage(u.into()));
    }
    events.push(StreamEvent::Done(finish_reason));
    Ok(events)
}

#[derive(Deserialize)]
struct WireEmbeddings {
    data: serde_json::Value,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// A `/embeddings` answer as events: its `data` (vectors as encoded), its usage, the end.
pub(super) fn embedding_events(body: &[u8]) -> Result<Vec<StreamEvent>, ProviderError> {
    let e: WireEmbeddings = serde_json::from_slice(body).map_err(|e| {
        ProviderError::Protocol(format!(
            "unparsable embeddings ({e}): {}",
            truncate_chars(&String::from_utf8_lossy(body), 200)
        ))
    })?;
    if !e.data.is_array() {
        return Err(ProviderError::Protocol(
            "embeddings without a data list".into(),
        ));
    }
    let mut events = vec![StreamEvent::Embeddings(e.data)];
    if let Some(u) = e.usage {
        events.push(StreamEvent::Usage(Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: 0,
        }));
    }
    events.push(StreamEvent::Done(None));
    Ok(events)
}
