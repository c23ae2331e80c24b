//! The WebSocket front door (SPEC §8). One task per connection reads frames and routes them to
//! the engine; the user's session actor pushes frames into the connection's bounded queue, which
//! a writer loop drains to the socket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::Response;
use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, AuthUser};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage;
use questech_engine::events::Frame;
use questech_engine::user_session::{Connection, UserMsg};

pub const MAX_FRAME: usize = 64 * 1024;
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENT_LIMIT: Duration = Duration::from_secs(90);

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

mod frames;

pub use frames::ClientFrame;
use frames::{handle_frame, protocol_error};

/// Authenticates from the `Authorization` header or `?token=`, before the upgrade.
pub struct WsAuth(pub AuthUser);

impl axum::extract::FromRequestParts<AppState> for WsAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let from_query = parts.uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        });
        let token = match auth::bearer(parts) {
            Some(t) => t.to_owned(),
            None => from_query.ok_or_else(|| Error::Unauthorized("missing token".into()))?,
        };
        Ok(WsAuth(auth::authenticate(state, &token).await?))
    }
}

pub async fn upgrade(
    State(state): State<AppState>,
    WsAuth(user): WsAuth,
    ws: WebSocketUpgrade,
) -> Result<Response> {
    let credits = storage::users::by_id(&state.db, user.user_id)
        .await?
        .filter(|u| !u.is_disabled())
        .ok_or_else(|| Error::Unauthorized("user not found".into()))?
        .credits;
    // Frames above 64 KiB are refused by us with close 1009; the transport limit is set above
    // that so we see the frame and can answer properly.
    // Small I/O buffers: tungstenite's default 128 KiB read buffer is zero-filled on every read
    // and made an idle socket cost ~140 KiB (measured: 4 KiB buffers → ~20 KiB per socket).
    Ok(ws
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(MAX_FRAME * 4)
        .max_frame_size(MAX_FRAME * 4)
        .on_upgrade(move |socket| run(state, user, credits, socket)))
}

fn text(b: Bytes) -> Message {
    match Utf8Bytes::try_from(b) {
        Ok(t) => Message::Text(t),
        Err(_) => Message::Text(Utf8Bytes::from_static("{}")),
    }
}

async fn run(state: AppState, user: AuthUser, credits: i64, socket: WebSocket) {
    let conn_id = CONN_IDS.fetch_add(1, Ordering::Relaxed);
    state.engine.socket(true);
    let (mut sink, mut stream) = socket.split();
    let close = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<Bytes>(state.engine.ws_queue());
    let attach = |tx: mpsc::Sender<Bytes>| UserMsg::Attach {
        conn_id,
        conn: Connection {
            tx,
            close: close.clone(),
            session_id: user.session_id,
        },
    };
    // `hello` is queued before the connection is attached, so that it is the first frame even
    // when the user's other devices are mid-turn.
    let hello = Frame::Hello {
        user_id: user.user_id.to_string(),
        session_id: user.session_id.to_string(),
        credits,
        server_time: crate::time::rfc3339(crate::time::now_ms()),
    };
    let _ = tx.send(hello.to_bytes()).await;
    if state
        .engine
        .send_user(user.user_id, attach(tx.clone()))
        .await
        .is_err()
    {
        state.engine.socket(false);
        return;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let close_code: Option<(u16, &'static str)> = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(bytes) => {
                    // A client that stops reading blocks this write once the TCP buffers are
                    // full; its queue then fills and the session actor cancels `close`, which
                    // must end the write too (bounded memory, no stuck task).
                    // Whatever else is already queued goes out in the same write (one flush per
                    // burst, not one per frame).
                    let write = write_burst(&mut sink, &mut rx, bytes);
                    tokio::select! {
                        r = write => if r.is_err() { break None; },
                        _ = close.cancelled() => break Some((1008, "connection closed by the server")),
                    }
                }
                None => {
                    // The session actor went away (restarted): attach to its successor.
                    let (ntx, nrx) = mpsc::channel::<Bytes>(state.engine.ws_queue());
                    if state.engine.send_user(user.user_id, attach(ntx)).await.is_err() {
                        break Some((1011, "session unavailable"));
                    }
                    rx = nrx;
                }
            },
            incoming = stream.next() => {
                let msg = match incoming {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => break read_failure(e),
                    None => break None,
                };
                last_heard = tokio::time::Instant::now();
                if let Some(end) = on_message(&state, &user, msg, &tx).await {
                    break end;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= SILENT_LIMIT { break Some((1001, "idle timeout")); }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() { break None; }
            }
            _ = close.cancelled() => break Some((1008, "connection closed by the server")),
            _ = state.shutdown.cancelled() => break Some((1001, "server shutting down")),
        }
    };
    // Bounded: a peer that does not read must not keep this task alive.
    let _ = tokio::time::timeout(Duration::from_secs(2), goodbye(&mut sink, close_code)).await;
    state.engine.socket(false);
    state.engine.detach(user.user_id, conn_id);
}

/// Closes the socket, with `close_code` if there is one.
async fn goodbye(
    sink: &mut SplitSink<WebSocket, Message>,
    close_code: Option<(u16, &'static str)>,
) {
    if let Some((code, reason)) = close_code {
        if code == 1007 {
            // Say it in the protocol's words too, as every bad frame is answered.
            let f = protocol_error("invalid_request", "text frames must be UTF-8");
            let _ = sink.send(text(f.to_bytes())).await;
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
    }
    let _ = sink.close().await;
}

/// Writes `first` and whatever else is already queued (up to 64 more) with one flush.
async fn write_burst(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Bytes>,
    first: Bytes,
) -> std::result::Result<(), axum::Error> {
    sink.feed(text(first)).await?;
    for _ in 0..64 {
        match rx.try_recv() {
            Ok(more) => sink.feed(text(more)).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

/// Handles one message from the client; `Some(close)` ends the connection (with that close
/// frame, or none).
async fn on_message(
    state: &AppState,
    user: &AuthUser,
    msg: Message,
    tx: &mpsc::Sender<Bytes>,
) -> Option<Option<(u16, &'static str)>> {
    match msg {
        Message::Text(t) => {
            if t.len() > MAX_FRAME {
                return Some(Some((1009, "frame too large")));
            }
            if let Some(reply) = handle_frame(state, user, t.as_str(), tx).await {
                let _ = tx.try_send(reply.to_bytes());
            }
        }
        Message::Binary(b) => {
            if b.len() > MAX_FRAME {
                return Some(Some((1009, "frame too large")));
            }
            let f = protocol_error(
                "invalid_request",
                "binary frames are not supported; send JSON text",
            );
            let _ = tx.try_send(f.to_bytes());
        }
        Message::Close(_) => return Some(None),
        Message::Ping(_) | Message::Pong(_) => {}
    }
    None
}

/// Why a read failed, as the close frame to answer with: a frame or message past the transport
/// limit is 1009 like any frame over [`MAX_FRAME`], a text frame that is not UTF-8 is 1007
/// (RFC 6455 §8.1), and a broken protocol 1002. A vanished peer gets no close frame.
fn read_failure(e: axum::Error) -> Option<(u16, &'static str)> {
    use tungstenite::error::Error as WsError;
    match e.into_inner().downcast::<WsError>().map(|b| *b) {
        Ok(WsError::Capacity(_)) => Some((1009, "frame too large")),
        Ok(WsError::Utf8(_)) => Some((1007, "text frames must be UTF-8")),
        Ok(WsError::Protocol(_)) => Some((1002, "protocol error")),
        _ => None,
    }
}
