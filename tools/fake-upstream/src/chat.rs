//! The chat completion handler: OpenAI's exact shapes, streamed or whole, with the failures the
//! [`Behavior`] asks for.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::features::{Reply, IMAGE_TOKENS};
use crate::{lock, Behavior, RecordedRequest, Shared, DEFAULT_WORDS, MAX_RECORDED};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error_response(status: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({
        "error": {
            "message": format!("fake upstream failure ({})", status.as_u16()),
            "type": kind,
            "param": null,
            "code": null,
        }
    });
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

pub(crate) async fn not_found() -> Response {
    let body = json!({"error": {"message": "not found", "type": "invalid_request_error", "param": null, "code": null}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

pub(crate) async fn models() -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [
            {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake-upstream"}
        ]
    }))
    .into_response()
}

/// Sleeps, or returns false if the server shuts down first.
async fn sleep_unless_cancelled(d: Duration, cancel: &CancellationToken) -> bool {
    if d.is_zero() {
        return !cancel.is_cancelled();
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

/// The content deltas for a request (after a `max_tokens` cut, one token per chunk) and the
/// finish reason.
fn content_deltas(b: &Behavior, req: &Value) -> (Vec<String>, &'static str) {
    let max_tokens = req["max_tokens"].as_u64();
    let mut words: Vec<String> = match &b.reply_words {
        Some(w) => w.clone(),
        None if b.echo => echo_words(req),
        None => DEFAULT_WORDS
            .iter()
            .cycle()
            .take(b.chunks)
            .map(|s| (*s).to_owned())
            .collect(),
    };
    match max_tokens {
        Some(m) if (m as usize) < words.len() => {
            words.truncate(m as usize);
            (words, "length")
        }
        _ => (words, "stop"),
    }
}

/// `"Echo:"`, `" word"`, … of the last user message's text.
fn echo_words(req: &Value) -> Vec<String> {
    let last = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| crate::features::text_of(&m["content"]))
        .unwrap_or_default();
    let mut words = vec!["Echo:".to_owned()];
    words.extend(last.split_whitespace().map(|w| format!(" {w}")));
    words
}

/// Records a chat request for the test to inspect (the last [`MAX_RECORDED`] are kept).
fn record(s: &Shared, uri: &Uri, headers: &HeaderMap, body: &Value) {
    let recorded = RecordedRequest {
        path: uri.path().to_owned(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body: body.clone(),
    };
    let mut reqs = lock(&s.requests);
    if reqs.len() >= MAX_RECORDED {
        reqs.pop_front();
    }
    reqs.push_back(recorded);
}

/// What one answer says, streamed or whole.
struct Answer {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u64,
    deltas: Vec<String>,
    /// A tool call instead of text: `(id, name, arguments)`.
    tool_call: Option<(String, String, String)>,
    finish: &'static str,
    include_usage: bool,
    /// `logprobs: true` was asked: each text piece carries one (made-up) log probability.
    logprobs: bool,
}

impl Answer {
    fn usage(&self, completion_tokens: u64) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// A whole `chat.completion` object.
    fn whole(&self) -> Response {
        axum::Json(json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": self.message(),
                "logprobs": if self.logprobs && self.tool_call.is_none() {
                    json!({"content": self.deltas.iter().map(|d| logprob(d)).collect::<Vec<_>>()})
                } else {
                    Value::Null
                },
                "finish_reason": self.finish,
            }],
            "usage": self.usage(self.content().len() as u64),
        }))
        .into_response()
    }

    fn message(&self) -> Value {
        match &self.tool_call {
            None => json!({"role": "assistant", "content": self.deltas.concat()}),
            Some((id, name, args)) => json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": name, "arguments": args}}
            ]}),
        }
    }

    /// The content deltas of the stream: text pieces or tool-call pieces.
    fn content(&self) -> Vec<Value> {
        match &self.tool_call {
            None => self.deltas.iter().map(|d| json!({"content": d})).collect(),
            Some((id, name, args)) => crate::features::tool_call_deltas(id, name, args),
        }
    }

    fn chunk(&self, choices: Value, usage: Value) -> std::io::Result<Bytes> {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            c["usage"] = usage;
        }
        Ok(Bytes::from(format!("data: {c}\n\n")))
    }

    fn delta(&self, delta: Value, finish_reason: Value) -> std::io::Result<Bytes> {
        let logprobs = match delta["content"].as_str() {
            Some(t) if self.logprobs => json!({"content": [logprob(t)]}),
            _ => Value::Null,
        };
        let choice = json!([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]);
        self.chunk(choice, Value::Null)
    }

    /// The frames of the stream: (pause before it, what to send), with the drop `b` asks for.
    fn frames(&self, b: &Behavior) -> VecDeque<(Duration, std::io::Result<Bytes>)> {
        let mut frames = VecDeque::new();
        frames.push_back((
            Duration::ZERO,
            self.delta(json!({"role": "assistant"}), Value::Null),
        ));
        let mut sent = 0u64;
        for (i, d) in self.content().into_iter().enumerate() {
            if b.drop_after == Some(i) {
                break;
            }
            let gap = if i == 0 { Duration::ZERO } else { b.chunk_gap };
            frames.push_back((gap, self.delta(d, Value::Null)));
            sent += 1;
        }
        if b.drop_after.is_some() {
            // The pause lets the server flush what came before (an error in the body stream
            // makes it drop the connection at once, unsent data included).
            let err = std::io::Error::other("fake upstream dropped the connection");
            frames.push_back((b.chunk_gap.max(Duration::from_millis(20)), Err(err)));
            return frames;
        }
        frames.push_back((Duration::ZERO, self.delta(json!({}), json!(self.finish))));
        if self.include_usage {
            frames.push_back((Duration::ZERO, self.chunk(json!([]), self.usage(sent))));
        }
        frames.push_back((Duration::ZERO, Ok(Bytes::from_static(b"data: [DONE]\n\n"))));
        frames
    }
}

/// A token's made-up log probability, in OpenAI's shape.
fn logprob(token: &str) -> Value {
    json!({"token": token, "logprob": -0.25, "bytes": token.as_bytes(), "top_logprobs": []})
}

/// Sends `frames` with their pauses; a shutdown ends the body with an error.
fn stream_response(
    frames: VecDeque<(Duration, std::io::Result<Bytes>)>,
    cancel: CancellationToken,
) -> Response {
    let body = stream::unfold((frames, cancel), |(mut frames, cancel)| async move {
        let (pause, item) = frames.pop_front()?;
        if !sleep_unless_cancelled(pause, &cancel).await {
            let err = std::io::Error::other("fake upstream shut down");
            return Some((Err(err), (VecDeque::new(), cancel)));
        }
        Some((item, (frames, cancel)))
    })
    .boxed();
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Headers, then nothing until the server shuts down.
fn hang_after_headers(streaming: bool, cancel: CancellationToken) -> Response {
    let content_type = if streaming {
        "text/event-stream"
    } else {
        "application/json"
    };
    let body = stream::once(async move {
        cancel.cancelled().await;
        Err::<Bytes, std::io::Error>(std::io::Error::other("fake upstream shut down"))
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

pub(crate) async fn chat_completions(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.count.fetch_add(1, Ordering::SeqCst);
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&s, &uri, &headers, &json);
    let (b, fail) = s.behavior.for_request();
    let cancel = s.cancel.clone();

    if !sleep_unless_cancelled(b.latency, &cancel).await {
        return error_response(503, None);
    }
    if b.hang {
        cancel.cancelled().await;
        return error_response(503, None);
    }
    if let Some(status) = b.fail_always {
        return error_response(status, b.retry_after);
    }
    if fail {
        return error_response(b.fail_status, b.retry_after);
    }
    if !json.is_object() {
        return error_response(400, None);
    }
    let streaming = json["stream"].as_bool().unwrap_or(false);
    if b.hang_after_headers {
        return hang_after_headers(streaming, cancel);
    }
    let (mut deltas, mut finish) = content_deltas(&b, &json);
    let call_no = s.ids.fetch_add(1, Ordering::Relaxed);
    let mut tool_call = None;
    match crate::features::reply(&json, call_no) {
        Some(Reply::Text(t)) => (deltas, finish) = (t, "stop"),
        Some(Reply::ToolCall {
            id,
            name,
            arguments,
        }) => {
            (deltas, finish) = (Vec::new(), "tool_calls");
            tool_call = Some((id, name, arguments));
        }
        None => {}
    }
    let answer = Answer {
        id: format!("chatcmpl-fake-{call_no}"),
        created: now_secs(),
        model: json["model"].as_str().unwrap_or("fake-model").to_owned(),
        prompt_tokens: 10 * json["messages"].as_array().map_or(0, Vec::len) as u64
            + IMAGE_TOKENS * crate::features::images(&json),
        deltas,
        tool_call,
        finish,
        include_usage: b.usage && json["stream_options"]["include_usage"].as_bool() == Some(true),
        logprobs: json["logprobs"] == true,
    };
    if streaming {
        stream_response(answer.frames(&b), cancel)
    } else {
        answer.whole()
    }
}
