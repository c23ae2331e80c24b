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
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, AuthUser, Role};
use crate::error::{Error, Result};
use crate::http::rules::{parse_id, validate_send};
use crate::state::AppState;
use crate::storage;
use questech_engine::conversation::Ack;
use questech_engine::engine::SendTurnRequest;
use questech_engine::events::{ErrorBody, Frame};
use questech_engine::user_session::{Connection, UserMsg};

pub const MAX_FRAME: usize = 64 * 1024;
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENT_LIMIT: Duration = Duration::from_secs(90);

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

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

/// Client → server frames (SPEC §8). Public so benchmarks parse exactly what the server parses.
#[derive(Deserialize, Debug)]
#[serde(tag = "type")]
pub enum ClientFrame {
    #[serde(rename = "chat.send")]
    Send {
        id: Option<String>,
        conversation_id: String,
        content: String,
        model: Option<String>,
    },
    #[serde(rename = "chat.cancel")]
    Cancel { conversation_id: String },
    #[serde(rename = "conversation.sync")]
    Sync {
        conversation_id: String,
        after_seq: Option<i64>,
    },
    #[serde(rename = "ping")]
    Ping,
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
                    let write = async {
                        sink.feed(text(bytes)).await?;
                        for _ in 0..64 {
                            match rx.try_recv() {
                                Ok(more) => sink.feed(text(more)).await?,
                                Err(_) => break,
                            }
                        }
                        sink.flush().await
                    };
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
                match msg {
                    Message::Text(t) => {
                        if t.len() > MAX_FRAME { break Some((1009, "frame too large")); }
                        if let Some(reply) = handle_frame(&state, &user, t.as_str(), &tx).await {
                            let _ = tx.try_send(reply.to_bytes());
                        }
                    }
                    Message::Binary(b) => {
                        if b.len() > MAX_FRAME { break Some((1009, "frame too large")); }
                        let f = Frame::Error { error: ErrorBody { code: "invalid_request".into(), message: "binary frames are not supported; send JSON text".into(), retry_after: None } };
                        let _ = tx.try_send(f.to_bytes());
                    }
                    Message::Close(_) => break None,
                    Message::Ping(_) | Message::Pong(_) => {}
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
    let goodbye = async {
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
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
    state.engine.socket(false);
    state.engine.detach(user.user_id, conn_id);
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

fn protocol_error(code: &str, message: impl Into<String>) -> Frame {
    Frame::Error {
        error: ErrorBody {
            code: code.into(),
            message: message.into(),
            retry_after: None,
        },
    }
}

fn chat_error(id: Option<String>, conversation_id: i64, e: &Error) -> Frame {
    Frame::ChatError {
        id,
        conversation_id,
        error: ErrorBody {
            code: e.code().into(),
            message: e.public_message(),
            retry_after: e.retry_after(),
        },
    }
}

/// Handles one client frame; returns a direct reply for this connection, if any.
async fn handle_frame(
    state: &AppState,
    user: &AuthUser,
    text: &str,
    tx: &mpsc::Sender<Bytes>,
) -> Option<Frame> {
    // Frames are JSON objects (SPEC §8): serde would also read a tagged enum from an array.
    if !text.trim_start().starts_with('{') {
        return Some(protocol_error(
            "invalid_request",
            "a frame is a JSON object with a \"type\"",
        ));
    }
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            return Some(protocol_error(
                "invalid_request",
                format!("unparsable or unknown frame: {e}"),
            ))
        }
    };
    match frame {
        ClientFrame::Ping => Some(Frame::Pong),
        ClientFrame::Send {
            id,
            conversation_id,
            content,
            model,
        } => {
            let conv = match parse_id(&conversation_id, "conversation") {
                Ok(c) => c,
                Err(e) => return Some(chat_error(id, 0, &e)),
            };
            if let Err(e) = validate_send(&content, id.as_deref()) {
                return Some(chat_error(id, conv, &e));
            }
            let handle = state
                .engine
                .send_chat(
                    conv,
                    SendTurnRequest {
                        user_id: user.user_id,
                        unlimited: user.role == Role::Admin,
                        content,
                        client_msg_id: id.clone(),
                        model,
                    },
                )
                .await;
            let handle = match handle {
                Ok(h) => h,
                Err(e) => return Some(chat_error(id, conv, &e.into())),
            };
            // Wait for the ack off the read loop: a rejection goes to this device only; a
            // success reaches every device as `chat.ack`.
            let tx = tx.clone();
            state.tracker.spawn(async move {
                let reply = match handle.ack.await {
                    Ok(Ok(Ack::Started { .. })) => None,
                    Ok(Ok(Ack::Duplicate {
                        user_message,
                        assistant_message,
                    })) => {
                        let _ = tx.try_send(
                            Frame::Message {
                                message: user_message,
                            }
                            .to_bytes(),
                        );
                        assistant_message.map(|m| Frame::Message { message: m })
                    }
                    Ok(Err(e)) => Some(chat_error(id, conv, &e.into())),
                    Err(_) => Some(chat_error(
                        id,
                        conv,
                        &Error::Internal(anyhow::anyhow!("turn dropped")),
                    )),
                };
                if let Some(f) = reply {
                    let _ = tx.try_send(f.to_bytes());
                }
            });
            None
        }
        ClientFrame::Cancel { conversation_id } => {
            let Ok(conv) = parse_id(&conversation_id, "conversation") else {
                return Some(protocol_error("not_found", "conversation not found"));
            };
            state.engine.cancel(user.user_id, conv);
            None
        }
        ClientFrame::Sync {
            conversation_id,
            after_seq,
        } => {
            let Ok(conv) = parse_id(&conversation_id, "conversation") else {
                return Some(protocol_error("not_found", "conversation not found"));
            };
            match sync(state, user, conv, after_seq.unwrap_or(0), tx).await {
                Ok(f) => Some(f),
                Err(e) => Some(protocol_error(e.code(), e.public_message())),
            }
        }
    }
}

async fn sync(
    state: &AppState,
    user: &AuthUser,
    conv: i64,
    after_seq: i64,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Frame> {
    let c = storage::chat::get_conversation(&state.db, user.user_id, conv)
        .await?
        .ok_or_else(|| Error::not_found("conversation not found"))?;
    let mut after = after_seq.max(0);
    loop {
        let (items, more) = storage::chat::messages_after(&state.db, c.id, after, 200).await?;
        for m in items {
            after = m.seq;
            // Awaiting here applies back-pressure to a large replay instead of dropping it.
            if tx
                .send(Frame::Message { message: m }.to_bytes())
                .await
                .is_err()
            {
                return Err(Error::Internal(anyhow::anyhow!("connection closed")));
            }
        }
        if !more {
            break;
        }
    }
    Ok(Frame::SyncDone {
        conversation_id: c.id,
        last_seq: after.max(after_seq),
    })
}
