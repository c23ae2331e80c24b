//! A small WebSocket client for the chat tests (SPEC §8): connects with a header or `?token=`,
//! reads the `hello`, sends JSON frames and waits for server frames with timeouts.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::TestApp;

/// How long a test waits for one expected frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `hello` frame the server sent first.
    pub hello: Value,
}

/// How a connection attempt authenticates.
pub enum Auth<'a> {
    Header(&'a str),
    Query(&'a str),
    None,
}

/// A refused upgrade: the HTTP status, the `WWW-Authenticate` header and the JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub www_authenticate: Option<String>,
    pub body: Value,
}

impl Ws {
    /// Connects with `Authorization: Bearer <token>`; panics unless it works.
    pub async fn connect(app: &TestApp, token: &str) -> Ws {
        Self::try_connect(app, Auth::Header(token))
            .await
            .unwrap_or_else(|r| panic!("websocket refused: {r:?}"))
    }

    pub async fn try_connect(app: &TestApp, auth: Auth<'_>) -> Result<Ws, Refused> {
        Self::try_connect_to(&app.base, auth).await
    }

    /// Connects to the server at `base` (`http://host:port`), e.g. a node in a child process.
    pub async fn connect_to(base: &str, token: &str) -> Ws {
        Self::try_connect_to(base, Auth::Header(token))
            .await
            .unwrap_or_else(|r| panic!("websocket refused: {r:?}"))
    }

    pub async fn try_connect_to(base: &str, auth: Auth<'_>) -> Result<Ws, Refused> {
        let ws_base = base.replacen("http://", "ws://", 1);
        let url = match auth {
            Auth::Query(t) => format!("{ws_base}/ws?token={t}"),
            _ => format!("{ws_base}/ws"),
        };
        let mut req = url.into_client_request().expect("ws request");
        if let Auth::Header(t) = auth {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header value"),
            );
        }
        let connected = tokio::time::timeout(
            Duration::from_secs(15),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .expect("websocket connect timed out");
        let stream = match connected {
            Ok((s, _)) => s,
            Err(WsError::Http(resp)) => {
                let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
                let www_authenticate = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                return Err(Refused {
                    status,
                    www_authenticate,
                    body,
                });
            }
            Err(e) => panic!("websocket connect failed: {e}"),
        };
        let mut ws = Ws {
            stream,
            hello: Value::Null,
        };
        let hello = ws.recv().await;
        assert_eq!(hello["type"], "hello", "first frame is hello: {hello}");
        ws.hello = hello;
        Ok(ws)
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.stream
            .send(Message::text(s.to_owned()))
            .await
            .expect("websocket send");
    }

    pub async fn send_message(&mut self, m: Message) {
        self.stream.send(m).await.expect("websocket send");
    }

    /// Sends without insisting: the server may close mid-way through a huge frame.
    pub async fn send_lenient(&mut self, m: Message) {
        let _ = self.stream.send(m).await;
    }

    /// `chat.send` with client id `id`.
    pub async fn chat(&mut self, conversation_id: &str, id: &str, content: &str) {
        self.send(json!({
            "type": "chat.send",
            "id": id,
            "conversation_id": conversation_id,
            "content": content,
        }))
        .await;
    }

    /// The next JSON frame within `within`; `None` on timeout. Panics if the socket closes.
    pub async fn next_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("websocket closed while waiting for a frame"),
                Ok(Some(Err(e))) => panic!("websocket error while waiting for a frame: {e}"),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    return Some(
                        serde_json::from_str(t.as_str())
                            .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {t}")),
                    )
                }
                Message::Close(c) => panic!("websocket closed while waiting for a frame: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next JSON frame; panics after [`FRAME_WAIT`].
    pub async fn recv(&mut self) -> Value {
        self.next_within(FRAME_WAIT)
            .await
            .expect("no frame within the wait")
    }

    /// Reads frames until one satisfies `pred`; returns the ones before it and the match.
    pub async fn until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> (Vec<Value>, Value) {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + FRAME_WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.next_within(left).await else {
                panic!("no matching frame within the wait; saw: {seen:#?}");
            };
            if pred(&f) {
                return (seen, f);
            }
            seen.push(f);
        }
    }

    /// Reads frames until one of type `kind`.
    pub async fn until_type(&mut self, kind: &str) -> (Vec<Value>, Value) {
        self.until(|f| f["type"] == kind).await
    }

    /// Reads the frames of one turn in `conversation_id` up to and including its `chat.done` or
    /// `chat.error`; frames of other conversations are skipped.
    pub async fn turn(&mut self, conversation_id: &str) -> Vec<Value> {
        let (seen, last) = self
            .until(|f| {
                f["conversation_id"] == conversation_id
                    && (f["type"] == "chat.done" || f["type"] == "chat.error")
            })
            .await;
        let mut out: Vec<Value> = seen
            .into_iter()
            .filter(|f| f["conversation_id"] == conversation_id)
            .collect();
        out.push(last);
        out
    }

    /// Waits for the server to close the socket; returns its close frame.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        let deadline = tokio::time::Instant::now() + FRAME_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => panic!("socket not closed within the wait"),
                Ok(None) => return None,
                Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(c)))) => return c,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// The concatenated `delta`s of `chat.delta` frames, after asserting their indexes are 0, 1, 2…
pub fn deltas_text(frames: &[Value]) -> String {
    let deltas: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "chat.delta")
        .collect();
    for (i, d) in deltas.iter().enumerate() {
        assert_eq!(d["index"], i as u64, "delta index in order: {d}");
    }
    deltas
        .iter()
        .map(|d| d["delta"].as_str().expect("delta is a string"))
        .collect()
}

// ---- chat helpers shared by the chat test modules ----------------------------------------------

/// `both_backends!(name, super::body_fn)`: tests `name::sqlite` and `name::mysql_redis` that call
/// `body_fn(Backend)` (for bodies that must set things up before the app, e.g. a fake upstream).
macro_rules! both_backends {
    ($name:ident, $f:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $f($crate::common::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql_redis() {
                $f($crate::common::Backend::MySqlRedis).await
            }
        }
    };
}

/// Starts a fake OpenAI-compatible upstream with `behavior`, then an app whose `openai`
/// provider points at it (so `gpt-4o-mini` is enabled), plus `env`. `None` when skipped.
pub async fn with_fake(
    backend: crate::common::Backend,
    behavior: questech_fake_upstream::Behavior,
    env: &[(&str, &str)],
) -> Option<(TestApp, questech_fake_upstream::FakeUpstream)> {
    let fake = questech_fake_upstream::start(behavior)
        .await
        .expect("start fake upstream");
    let mut all: Vec<(&str, &str)> = vec![
        ("OPENAI_API_KEY", "sk-test"),
        ("OPENAI_BASE_URL", fake.base_url.as_str()),
        ("LLM_BACKOFF_BASE_MS", "1"),
    ];
    all.extend_from_slice(env);
    let app = crate::common::spawn_app(backend, &all).await?;
    Some((app, fake))
}

/// Creates a conversation (201) with `body`; returns it.
pub async fn new_conv(app: &TestApp, token: &str, body: Value) -> Value {
    let (s, _, b) = app
        .post("/chat/conversations", Some(token), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "create conversation: {b}");
    b
}

/// Creates a conversation with `model`; returns its id.
pub async fn conv_id(app: &TestApp, token: &str, model: &str) -> String {
    new_conv(app, token, json!({ "model": model })).await["id"]
        .as_str()
        .expect("conversation id")
        .to_owned()
}

/// Sends a message over REST (non-stream) and returns status and body.
pub async fn say(app: &TestApp, token: &str, conv: &str, content: &str) -> (StatusCode, Value) {
    let (s, _, b) = app
        .post(
            &format!("/chat/conversations/{conv}/messages"),
            Some(token),
            Some(json!({ "content": content })),
        )
        .await;
    (s, b)
}

/// Every message of a conversation (asserts 200).
pub async fn all_messages(app: &TestApp, token: &str, conv: &str) -> Vec<Value> {
    let (s, _, b) = app
        .get(
            &format!("/chat/conversations/{conv}/messages?limit=200"),
            Some(token),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "messages: {b}");
    b["items"].as_array().expect("items").clone()
}

/// Asserts the seqs are 1, 2, 3… without gaps.
pub fn assert_gap_free(msgs: &[Value]) {
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["seq"], i as i64 + 1, "seq gap-free: {msgs:#?}");
    }
}

/// The open reservations of a user (`users.reserved`).
pub async fn reserved(app: &TestApp, uid: i64) -> i64 {
    sqlx::query_scalar("SELECT reserved FROM users WHERE id = ?")
        .bind(uid)
        .fetch_one(&app.state.db.write)
        .await
        .expect("select reserved")
}

/// The spec's credit invariants for one user, once no turn is in flight: `credits ==
/// sum(ledger.delta)`, `credits >= 0`, nothing reserved, no ledger `ref_id` twice. Returns the
/// balance.
pub async fn assert_credit_invariants(app: &TestApp, uid: i64) -> i64 {
    // A turn's end is stored just before its last frame; give the store a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reserved(app, uid).await != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (credits, sum) = questech::storage::ledger::balance_check(&app.state.db, uid)
        .await
        .expect("balance_check");
    assert_eq!(credits, sum, "credits == sum(ledger.delta)");
    assert!(credits >= 0, "credits >= 0: {credits}");
    assert_eq!(reserved(app, uid).await, 0, "reserved == 0 after all turns");
    let dups: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT ref_id, COUNT(*) FROM credit_ledger WHERE ref_id IS NOT NULL GROUP BY ref_id HAVING COUNT(*) > 1",
    )
    .fetch_all(&app.state.db.write)
    .await
    .expect("ledger ref_id duplicates");
    assert!(dups.is_empty(), "a ledger ref_id appears twice: {dups:?}");
    let open: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM credit_reservations WHERE user_id = ?")
            .bind(uid)
            .fetch_one(&app.state.db.write)
            .await
            .expect("count reservations");
    assert_eq!(open, 0, "no open reservation rows");
    credits
}

/// Number of ledger rows of a user.
pub async fn ledger_rows(app: &TestApp, uid: i64) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM credit_ledger WHERE user_id = ?")
        .bind(uid)
        .fetch_one(&app.state.db.write)
        .await
        .expect("count ledger")
}

/// The price of a model from `GET /config/models`: (prompt_per_1k, completion_per_1k,
/// per_request).
pub async fn price(app: &TestApp, model: &str) -> (f64, f64, i64) {
    let (s, _, b) = app.get("/config/models", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let m = b["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|m| m["id"] == model)
        .unwrap_or_else(|| panic!("model {model} listed: {b}"))
        .clone();
    (
        m["price"]["prompt_per_1k"].as_f64().expect("prompt_per_1k"),
        m["price"]["completion_per_1k"]
            .as_f64()
            .expect("completion_per_1k"),
        m["price"]["per_request"].as_i64().expect("per_request"),
    )
}

/// SPEC §6 cost: `ceil(p × pp/1000 + c × cp/1000) + per_request` (per_request only if `full`).
pub fn cost(price: (f64, f64, i64), prompt: i64, completion: i64, full: bool) -> i64 {
    let v = prompt as f64 * price.0 / 1000.0 + completion as f64 * price.1 / 1000.0;
    let v = ((v * 1e9).round() / 1e9).ceil() as i64;
    v + if full { price.2 } else { 0 }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses an SSE body into (event name, JSON data) pairs, asserting each data's `type` equals
/// its event name.
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = Some(e.trim().to_owned());
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if let Some(e) = event {
            let v: Value = serde_json::from_str(&data)
                .unwrap_or_else(|err| panic!("SSE data is JSON ({err}): {data}"));
            assert_eq!(v["type"], e.as_str(), "SSE data type == event name");
            out.push((e, v));
        }
    }
    out
}
