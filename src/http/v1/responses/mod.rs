//! The stateful Responses API (SPEC §9): `POST /v1/responses`, `GET|DELETE /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items`.
//!
//! A chain of responses **is a conversation** of the user's, run by its conversation actor like
//! every chat turn: the context is the stored messages (the client sends only the new input),
//! seq stays gap-free, a turn goes on when the client leaves, and any device or node continues
//! the chain with `previous_response_id`. A response's id names its reply message
//! (`resp_<message id>`); the request's record (input items, instructions, tools, metadata) is
//! stored with the turn's messages.

mod input;
mod object;
mod schema;
mod stream;

use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::auth::{AuthUser, Role};
use crate::error::{Error, Result};
use crate::http::Json;
use crate::state::AppState;
use crate::storage::chat;
use questech_engine::conversation::Ack;
use questech_engine::engine::SendTurnRequest;
use questech_engine::events::{Frame, StoredMessage};
use questech_engine::EngineError;

pub use input::ResponseRequest;
pub use schema::overrides;

fn not_found() -> Error {
    Error::not_found("response not found")
}

/// The reply of a stored response of the user's (404 for anything else).
async fn stored(state: &AppState, user: &AuthUser, id: &str) -> Result<StoredMessage> {
    let msg_id = object::parse_response_id(id).ok_or_else(not_found)?;
    match chat::message_with_owner(&state.db, msg_id).await? {
        Some((m, owner))
            if owner == user.user_id && m.role == "assistant" && object::record(&m).is_some() =>
        {
            Ok(m)
        }
        _ => Err(not_found()),
    }
}

/// The conversation a new turn of the chain goes to: `previous_response_id`'s, which must be
/// the newest response of its chain.
async fn chain(state: &AppState, user: &AuthUser, previous: &str) -> Result<i64> {
    let prev = stored(state, user, previous).await?;
    let conv = chat::get_conversation(&state.db, user.user_id, prev.conversation_id)
        .await?
        .ok_or_else(not_found)?;
    if conv.last_seq != prev.seq {
        return Err(Error::invalid(
            "previous_response_id",
            "a chain continues from its newest response only",
        ));
    }
    Ok(conv.id)
}

/// `POST /v1/responses`.
pub async fn create(state: AppState, user: AuthUser, body: ResponseRequest) -> Result<Response> {
    crate::http::rules::check_len("model", &body.model, 1, 128)?;
    let model = state.engine.usable_model(&body.model).await?;
    if body.store == Some(false) {
        return Err(Error::invalid(
            "store",
            "only stored responses are supported: each is a turn of a conversation",
        ));
    }
    let read = input::read(&body)?;
    let conv_id = match &body.previous_response_id {
        Some(p) => Some(chain(&state, &user, p).await?),
        None => None,
    };
    let mut extras = read.extras;
    let reply_record = json!({
        "instructions": body.instructions, "metadata": body.metadata, "tools": body.tools,
        "tool_choice": body.tool_choice, "parallel_tool_calls": body.parallel_tool_calls,
        "temperature": body.temperature, "top_p": body.top_p,
        "max_output_tokens": body.max_output_tokens, "text": body.text,
        "previous_response_id": body.previous_response_id,
    });
    extras.user_record = Some(json!({"input": read.items}));
    extras.reply_record = Some(reply_record.clone());
    let (conv_id, created) = match conv_id {
        Some(c) => (c, false),
        None => {
            let title: String = read.content.chars().take(60).collect();
            let conv = chat::create_conversation(
                &state.db,
                chat::NewConversation {
                    id: crate::ids::next_id(),
                    user_id: user.user_id,
                    title: &title,
                    model: &model.id,
                    agent_id: None,
                    system_prompt: None,
                },
            )
            .await?;
            (conv.id, true)
        }
    };
    let turn = SendTurnRequest {
        user_id: user.user_id,
        unlimited: user.role == Role::Admin,
        content: read.content,
        client_msg_id: None,
        model: Some(model.id.clone()),
        extras: Some(Box::new(extras)),
    };
    let started = async {
        let mut handle = state.engine.send_chat(conv_id, turn).await?;
        let ack = (&mut handle.ack)
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("turn dropped")))??;
        Ok::<_, Error>((ack, handle.updates))
    }
    .await;
    let (ack, updates) = match started {
        Ok(s) => s,
        Err(e) => {
            // A new chain whose first turn never started leaves nothing behind.
            if created {
                let _ = chat::delete_conversation(&state.db, user.user_id, conv_id).await;
                state.engine.stop_conversation(conv_id);
            }
            return Err(e);
        }
    };
    let Ack::Started { assistant_id, .. } = ack else {
        return Err(Error::Internal(anyhow::anyhow!(
            "a response turn answered as a repeat"
        )));
    };
    if body.stream.unwrap_or(false) {
        let now = chrono::Utc::now().timestamp();
        let shell = object::shell(&reply_record, assistant_id, now, &model.id, "in_progress");
        return Ok(stream::respond(assistant_id, shell, updates));
    }
    whole(updates).await
}

/// Waits for the turn's reply and answers the `response` object.
async fn whole(mut updates: tokio::sync::mpsc::UnboundedReceiver<Frame>) -> Result<Response> {
    while let Some(frame) = updates.recv().await {
        match frame {
            Frame::Done { message, .. } => {
                return Ok(Json(object::response(&message)).into_response())
            }
            Frame::ChatError { error, .. } => return Err(EngineError::from(&error).into()),
            _ => {}
        }
    }
    Err(Error::Internal(anyhow::anyhow!(
        "the turn ended without an answer"
    )))
}

/// `GET /v1/responses/{id}`.
pub async fn get(state: AppState, user: AuthUser, id: String) -> Result<Json<Value>> {
    Ok(Json(object::response(&stored(&state, &user, &id).await?)))
}

/// `DELETE /v1/responses/{id}`: the chain is a conversation; deleting it deletes them all.
pub async fn delete(state: AppState, user: AuthUser, id: String) -> Result<Json<Value>> {
    let m = stored(&state, &user, &id).await?;
    if !chat::delete_conversation(&state.db, user.user_id, m.conversation_id).await? {
        return Err(not_found());
    }
    state.engine.stop_conversation(m.conversation_id);
    Ok(Json(
        json!({"id": id, "object": "response", "deleted": true}),
    ))
}

/// `GET /v1/responses/{id}/input_items`: the items of the turn's input, newest first unless
/// `order=asc`.
pub async fn input_items(
    state: AppState,
    user: AuthUser,
    id: String,
    asc: bool,
) -> Result<Json<Value>> {
    let reply = stored(&state, &user, &id).await?;
    let user_msg = chat::message_at(&state.db, reply.conversation_id, reply.seq - 1)
        .await?
        .ok_or_else(not_found)?;
    let mut items = object::input_items(&user_msg);
    if !asc {
        items.reverse();
    }
    Ok(Json(json!({
        "object": "list",
        "first_id": items.first().map(|i| i["id"].clone()),
        "last_id": items.last().map(|i| i["id"].clone()),
        "has_more": false,
        "data": items,
    })))
}
