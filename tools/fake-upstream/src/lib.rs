//! A fake OpenAI-compatible upstream server — **test and benchmark tooling**, not part of the
//! product: a workspace crate of its own, so that the server's end-to-end tests, the load
//! generator (`tools/bench`) and the `fake-upstream` binary can all start one.
//!
//! [`start`] serves on `127.0.0.1:<free port>`:
//! - `POST /v1/chat/completions` (also `/chat/completions`): answers with OpenAI's exact chunk
//!   shapes when `stream` is true (a role chunk, content chunks, a finish chunk, a usage chunk
//!   with `"choices":[]` when `stream_options.include_usage` is asked, then `data: [DONE]`), or a
//!   whole `chat.completion` object otherwise;
//! - `GET /v1/models`.
//!
//! Its [`Behavior`] (latency, chunking, failures, dropped or hanging connections) can be changed
//! while it runs, through [`FakeUpstream::behavior`]. Every chat request is recorded (path,
//! headers, JSON body) for the test to inspect.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// How the fake upstream answers chat requests. Change it at runtime with
/// [`BehaviorHandle::set`] / [`BehaviorHandle::update`].
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Wait before the response headers (every request, failures included).
    pub latency: Duration,
    /// Content chunks of the default reply (default 4).
    pub chunks: usize,
    /// Pause before each content chunk after the first.
    pub chunk_gap: Duration,
    /// The content deltas, sent exactly as given (`chunks` is then ignored). Default: `"Hello"`,
    /// `" from"`, `" fake"`, `" upstream"` cycling to `chunks` deltas.
    pub reply_words: Option<Vec<String>>,
    /// The first `fail_first` chat requests (counted from when this behaviour was set) answer
    /// `fail_status` with an OpenAI error body.
    pub fail_first: usize,
    /// Status of the `fail_first` failures (default 500).
    pub fail_status: u16,
    /// `Retry-After` seconds sent with failures.
    pub retry_after: Option<u64>,
    /// Every chat request answers this status.
    pub fail_always: Option<u16>,
    /// Streaming only: send this many content chunks, then abort the connection (no finish
    /// chunk, no usage, no `[DONE]`).
    pub drop_after: Option<usize>,
    /// Accept the request and never send the headers (until shutdown).
    pub hang: bool,
    /// Send `200` headers, then nothing (until shutdown).
    pub hang_after_headers: bool,
    /// Honour `stream_options.include_usage` with a final usage chunk (default true); usage is
    /// `prompt_tokens = 10 × messages`, `completion_tokens = content chunks sent`.
    pub usage: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            chunks: 4,
            chunk_gap: Duration::ZERO,
            reply_words: None,
            fail_first: 0,
            fail_status: 500,
            retry_after: None,
            fail_always: None,
            drop_after: None,
            hang: false,
            hang_after_headers: false,
            usage: true,
        }
    }
}

const DEFAULT_WORDS: [&str; 4] = ["Hello", " from", " fake", " upstream"];
/// Recorded requests kept (the oldest are dropped past this; the count stays exact).
const MAX_RECORDED: usize = 10_000;

/// One chat request as the fake upstream received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// All headers (lower-case names; the last value of repeated ones).
    pub headers: HashMap<String, String>,
    /// The JSON body (`Value::Null` if it was not JSON).
    pub body: Value,
}

#[derive(Debug)]
struct Control {
    behavior: Behavior,
    /// `fail_first` failures still to give.
    failures_left: usize,
}

/// A shared handle on a running fake upstream's [`Behavior`].
#[derive(Clone, Debug)]
pub struct BehaviorHandle(Arc<Mutex<Control>>);

impl BehaviorHandle {
    fn new(behavior: Behavior) -> Self {
        let failures_left = behavior.fail_first;
        Self(Arc::new(Mutex::new(Control {
            behavior,
            failures_left,
        })))
    }

    /// A copy of the current behaviour.
    pub fn get(&self) -> Behavior {
        lock(&self.0).behavior.clone()
    }

    /// Replaces the behaviour; `fail_first` counts again from the next request.
    pub fn set(&self, behavior: Behavior) {
        let mut c = lock(&self.0);
        c.failures_left = behavior.fail_first;
        c.behavior = behavior;
    }

    /// Changes the behaviour in place; `fail_first` counts again from the next request.
    pub fn update(&self, f: impl FnOnce(&mut Behavior)) {
        let mut c = lock(&self.0);
        f(&mut c.behavior);
        c.failures_left = c.behavior.fail_first;
    }

    /// The behaviour for one new request, and whether it is one of the `fail_first` failures.
    fn for_request(&self) -> (Behavior, bool) {
        let mut c = lock(&self.0);
        let b = c.behavior.clone();
        let fail = !b.hang && b.fail_always.is_none() && c.failures_left > 0;
        if fail {
            c.failures_left -= 1;
        }
        (b, fail)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Shared {
    behavior: BehaviorHandle,
    requests: Mutex<VecDeque<RecordedRequest>>,
    count: AtomicUsize,
    ids: AtomicU64,
    cancel: CancellationToken,
}

/// A running fake upstream. Dropping it stops the server too (without waiting).
pub struct FakeUpstream {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>/v1`, the value for a provider's base URL.
    pub base_url: String,
    /// Changes how it answers, at runtime.
    pub behavior: BehaviorHandle,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts a fake upstream on a free loopback port.
pub async fn start(behavior: Behavior) -> std::io::Result<FakeUpstream> {
    start_on(0, behavior).await
}

/// Starts a fake upstream on `127.0.0.1:<port>` (0: a free port).
pub async fn start_on(port: u16, behavior: Behavior) -> std::io::Result<FakeUpstream> {
    use axum::serve::ListenerExt as _;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let shared = Arc::new(Shared {
        behavior: BehaviorHandle::new(behavior),
        requests: Mutex::new(VecDeque::new()),
        count: AtomicUsize::new(0),
        ids: AtomicU64::new(0),
        cancel: CancellationToken::new(),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .with_state(shared.clone());
    let cancel = shared.cancel.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "fake upstream stopped");
        }
    });
    Ok(FakeUpstream {
        addr,
        base_url: format!("http://{addr}/v1"),
        behavior: shared.behavior.clone(),
        shared,
        task: Some(task),
    })
}

impl FakeUpstream {
    /// Replaces the behaviour (see [`BehaviorHandle::set`]).
    pub fn set_behavior(&self, behavior: Behavior) {
        self.behavior.set(behavior);
    }

    /// Changes the behaviour in place (see [`BehaviorHandle::update`]).
    pub fn update_behavior(&self, f: impl FnOnce(&mut Behavior)) {
        self.behavior.update(f);
    }

    /// The chat requests received so far (at most the last 10 000), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// How many chat requests were received (exact, even past the recording limit).
    pub fn request_count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Forgets the recorded requests (the count stays).
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Stops the server: hanging and streaming responses are cut, then it waits (at most 5 s)
    /// for the server to finish.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

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

async fn not_found() -> Response {
    let body = json!({"error": {"message": "not found", "type": "invalid_request_error", "param": null, "code": null}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn models() -> Response {
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
fn content_deltas(b: &Behavior, max_tokens: Option<u64>) -> (Vec<String>, &'static str) {
    let mut words: Vec<String> = match &b.reply_words {
        Some(w) => w.clone(),
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

async fn chat_completions(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.count.fetch_add(1, Ordering::SeqCst);
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    {
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
            body: json.clone(),
        };
        let mut reqs = lock(&s.requests);
        if reqs.len() >= MAX_RECORDED {
            reqs.pop_front();
        }
        reqs.push_back(recorded);
    }
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

    let model = json["model"].as_str().unwrap_or("fake-model").to_owned();
    let n_messages = json["messages"].as_array().map_or(0, Vec::len) as u64;
    let streaming = json["stream"].as_bool().unwrap_or(false);
    let include_usage = b.usage && json["stream_options"]["include_usage"].as_bool() == Some(true);
    let (deltas, finish) = content_deltas(&b, json["max_tokens"].as_u64());
    let id = format!("chatcmpl-fake-{}", s.ids.fetch_add(1, Ordering::Relaxed));
    let created = now_secs();

    if b.hang_after_headers {
        let content_type = if streaming {
            "text/event-stream"
        } else {
            "application/json"
        };
        let body = stream::once(async move {
            cancel.cancelled().await;
            Err::<Bytes, std::io::Error>(std::io::Error::other("fake upstream shut down"))
        });
        return (
            [(header::CONTENT_TYPE, content_type)],
            Body::from_stream(body),
        )
            .into_response();
    }

    if !streaming {
        let n = deltas.len() as u64;
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": deltas.concat()},
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": {
                "prompt_tokens": 10 * n_messages,
                "completion_tokens": n,
                "total_tokens": 10 * n_messages + n,
            },
        });
        return axum::Json(body).into_response();
    }

    // The frames of the stream: (pause before it, what to send).
    let chunk = |delta: Value, finish_reason: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        Ok(Bytes::from(format!("data: {c}\n\n")))
    };
    let mut frames: VecDeque<(Duration, std::io::Result<Bytes>)> = VecDeque::new();
    frames.push_back((
        Duration::ZERO,
        chunk(json!({"role": "assistant"}), Value::Null),
    ));
    let mut sent = 0u64;
    let mut dropped = false;
    for (i, d) in deltas.iter().enumerate() {
        if b.drop_after == Some(i) {
            dropped = true;
            break;
        }
        let gap = if i == 0 { Duration::ZERO } else { b.chunk_gap };
        frames.push_back((gap, chunk(json!({"content": d}), Value::Null)));
        sent += 1;
    }
    if dropped || b.drop_after.is_some_and(|k| k >= deltas.len()) {
        // The pause lets the server flush what came before (an error in the body stream makes it
        // drop the connection at once, unsent data included).
        frames.push_back((
            b.chunk_gap.max(Duration::from_millis(20)),
            Err(std::io::Error::other(
                "fake upstream dropped the connection",
            )),
        ));
    } else {
        frames.push_back((Duration::ZERO, chunk(json!({}), json!(finish))));
        if include_usage {
            let usage = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": 10 * n_messages,
                    "completion_tokens": sent,
                    "total_tokens": 10 * n_messages + sent,
                },
            });
            frames.push_back((
                Duration::ZERO,
                Ok(Bytes::from(format!("data: {usage}\n\n"))),
            ));
        }
        frames.push_back((Duration::ZERO, Ok(Bytes::from_static(b"data: [DONE]\n\n"))));
    }

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    fn chat_body(stream: bool) -> Value {
        json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": stream,
            "stream_options": {"include_usage": true},
        })
    }

    async fn post(up: &FakeUpstream, body: Value) -> reqwest::Response {
        client()
            .post(format!("{}/chat/completions", up.base_url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn streams_openai_chunks() {
        let up = start(Behavior::default()).await.unwrap();
        let resp = post(&up, chat_body(true)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let text = resp.text().await.unwrap();
        let datas: Vec<&str> = text
            .split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| s.strip_prefix("data: ").unwrap())
            .collect();
        assert_eq!(datas.len(), 1 + 4 + 1 + 1 + 1, "{text}");
        assert_eq!(*datas.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = datas[..datas.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "m");
            assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
            assert!(c["created"].as_u64().is_some());
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant"})
        );
        let content: String = chunks[1..5]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(content, "Hello from fake upstream");
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[6]["choices"], json!([]));
        assert_eq!(chunks[6]["usage"]["prompt_tokens"], 10);
        assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);
        up.shutdown().await;
    }

    #[tokio::test]
    async fn whole_completion_when_not_streaming() {
        let up = start(Behavior {
            chunks: 6,
            ..Default::default()
        })
        .await
        .unwrap();
        let v: Value = post(&up, chat_body(false)).await.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Hello from fake upstreamHello from"
        );
        assert_eq!(v["usage"]["completion_tokens"], 6);
        assert_eq!(v["usage"]["total_tokens"], 16);
        up.shutdown().await;
    }

    #[tokio::test]
    async fn no_usage_chunk_unless_asked_and_max_tokens_cut() {
        let up = start(Behavior::default()).await.unwrap();
        let mut body = chat_body(true);
        body["stream_options"] = json!({"include_usage": false});
        body["max_tokens"] = json!(2);
        let text = post(&up, body).await.text().await.unwrap();
        assert!(!text.contains("\"usage\""), "{text}");
        assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
        assert!(!text.contains(" fake"), "{text}");
        up.shutdown().await;
    }

    #[tokio::test]
    async fn fail_first_then_succeed_and_runtime_change() {
        let up = start(Behavior {
            fail_first: 2,
            fail_status: 503,
            retry_after: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
        for _ in 0..2 {
            let r = post(&up, chat_body(true)).await;
            assert_eq!(r.status(), 503);
            assert_eq!(r.headers()[header::RETRY_AFTER], "1");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["type"], "server_error");
        }
        assert_eq!(post(&up, chat_body(true)).await.status(), 200);
        up.update_behavior(|b| b.fail_always = Some(418));
        assert_eq!(post(&up, chat_body(true)).await.status(), 418);
        up.set_behavior(Behavior {
            fail_first: 1,
            ..Default::default()
        });
        assert_eq!(post(&up, chat_body(true)).await.status(), 500);
        assert_eq!(post(&up, chat_body(true)).await.status(), 200);
        assert_eq!(up.request_count(), 6);
        assert_eq!(up.requests().len(), 6);
        up.clear_requests();
        assert!(up.requests().is_empty());
        assert_eq!(up.request_count(), 6);
        up.shutdown().await;
    }

    #[tokio::test]
    async fn hang_and_hang_after_headers_release_on_shutdown() {
        let up = start(Behavior {
            hang: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let url = format!("{}/chat/completions", up.base_url);
        let pending = tokio::spawn(client().post(url).json(&chat_body(true)).send());
        let waited = tokio::time::timeout(Duration::from_millis(200), async {
            while up.request_count() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pending.is_finished());

        up.set_behavior(Behavior {
            hang_after_headers: true,
            ..Default::default()
        });
        let resp = post(&up, chat_body(true)).await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let next = tokio::time::timeout(Duration::from_millis(100), body.next()).await;
        assert!(next.is_err(), "no body expected");

        tokio::time::timeout(Duration::from_secs(5), up.shutdown())
            .await
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn latency_delays_the_headers() {
        let up = start(Behavior {
            latency: Duration::from_millis(150),
            chunk_gap: Duration::from_millis(20),
            ..Default::default()
        })
        .await
        .unwrap();
        let t = std::time::Instant::now();
        let resp = post(&up, chat_body(true)).await;
        assert!(t.elapsed() >= Duration::from_millis(150));
        let _ = resp.text().await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(150 + 3 * 20));
        up.shutdown().await;
    }

    #[tokio::test]
    async fn models_and_unknown_routes() {
        let up = start(Behavior::default()).await.unwrap();
        let v: Value = client()
            .get(format!("{}/models", up.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["id"], "fake-model");
        let r = client()
            .get(format!("{}/nope", up.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(up.request_count(), 0);
        up.shutdown().await;
    }
}
