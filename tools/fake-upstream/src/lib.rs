//! A fake OpenAI-compatible upstream server — **test and benchmark tooling**, not part of the
//! product: a workspace crate of its own, so that the server's end-to-end tests, the load
//! generator (`tools/bench`) and the `fake-upstream` binary can all start one.
//!
//! [`start`] serves on `127.0.0.1:<free port>`:
//! - `POST /v1/chat/completions` (also `/chat/completions`): answers with OpenAI's exact chunk
//!   shapes when `stream` is true (a role chunk, content chunks, a finish chunk, a usage chunk
//!   with `"choices":[]` when `stream_options.include_usage` is asked, then `data: [DONE]`), or a
//!   whole `chat.completion` object otherwise;
//! - `GET /v1/models`;
//! - `POST /v1/embeddings` (see [`features`]): tool calls when tools are offered, JSON for
//!   `response_format`, and image parts counted in usage are there too.
//!
//! Its [`Behavior`] (latency, chunking, failures, dropped or hanging connections) can be changed
//! while it runs, through [`FakeUpstream::behavior`]. Every chat request is recorded (path,
//! headers, JSON body) for the test to inspect.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

mod chat;
mod features;
#[cfg(test)]
mod tests;

use chat::{chat_completions, models, not_found};

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
    /// Reply `"Echo:"` then `" <word>"` for each word of the last user message (like the
    /// built-in `echo` model), instead of the default words; `chunk_gap` apart.
    pub echo: bool,
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
            echo: false,
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
        .route("/v1/embeddings", post(features::embeddings))
        .route("/embeddings", post(features::embeddings))
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
