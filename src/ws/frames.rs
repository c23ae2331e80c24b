//! What a client's frames do: parsing (frames are JSON objects, SPEC §8), `chat.send`,
//! `chat.cancel`, `conversation.sync`, `ping`, and the error frames that answer bad ones.

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::{AuthUser, Role};
use crate::error::{Error, Result};
use crate::http::rules::{parse_id, validate_send};
use crate::state::AppState;
use crate::storage;
use questech_engine::conversation::Ack;
use questech_engine::engine::SendTurnRequest;
use questech_engine::events::{ErrorBody, Frame};

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
        /// Images (SPEC §7).
        #[serde(default)]
        attachments: Option<Vec<crate::http::attachments::AttachmentIn>>,
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

pub(super) fn protocol_error(code: &str, message: impl Into<String>) -> Frame {
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
pub(super) async fn handle_frame(
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
            attachments,
        } => {
            let turn = Turn {
                id,
                content,
                model,
                attachments,
            };
            send(state, user, tx, &conversation_id, turn).await
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

/// What `chat.send` asks for.
struct Turn {
    id: Option<String>,
    content: String,
    model: Option<String>,
    attachments: Option<Vec<crate::http::attachments::AttachmentIn>>,
}

/// `chat.send`: starts the turn; the ack is awaited off the read loop.
async fn send(
    state: &AppState,
    user: &AuthUser,
    tx: &mpsc::Sender<Bytes>,
    conversation_id: &str,
    turn: Turn,
) -> Option<Frame> {
    let Turn {
        id,
        content,
        model,
        attachments,
    } = turn;
    let conv = match parse_id(conversation_id, "conversation") {
        Ok(c) => c,
        Err(e) => return Some(chat_error(id, 0, &e)),
    };
    if let Err(e) = validate_send(&content, id.as_deref()) {
        return Some(chat_error(id, conv, &e));
    }
    let extras = crate::http::attachments::turn_extras(
        state,
        user.user_id,
        &content,
        attachments.as_deref(),
    )
    .await;
    let extras = match extras {
        Ok(x) => x,
        Err(e) => return Some(chat_error(id, conv, &e)),
    };
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
                extras,
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
