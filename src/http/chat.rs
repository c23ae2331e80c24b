//! Stateful chat over REST and SSE (SPEC §7). Conversations and history are read from the
//! database; sending goes through the engine (user-session → conversation actor → LLM pool).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::{check_len, default_model, parse_id, usable_model, validate_send};
use super::{sse, Json, PageQuery, Path, Query};
use crate::auth::{AuthUser, Role};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::{self, chat, Paged};
use questech_engine::conversation::Ack;
use questech_engine::engine::SendTurnRequest;
use questech_engine::events::{Credits, Frame, StoredMessage};
use questech_engine::EngineError;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, patch, delete))
        .routes(routes!(messages, send))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewConversation {
    #[schema(max_length = 255)]
    title: Option<String>,
    /// A usable model id; default: the agent's model, else `DEFAULT_MODEL`.
    #[schema(min_length = 1, max_length = 128)]
    model: Option<String>,
    agent_id: Option<String>,
    #[schema(max_length = 100000)]
    system_prompt: Option<String>,
}

#[utoipa::path(post, path = "/conversations", tag = "chat", request_body = NewConversation, responses((status = 201, description = "success", body = chat::ConversationRow), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<NewConversation>,
) -> Result<impl IntoResponse> {
    let title = body.title.unwrap_or_default();
    check_len("title", &title, 0, 255)?;
    if let Some(sp) = &body.system_prompt {
        check_len("system_prompt", sp, 0, 100_000)?;
    }
    let agent = match &body.agent_id {
        Some(a) => Some(
            storage::agents::get_published(&state.db, a)
                .await?
                .ok_or_else(|| Error::not_found("agent not found"))?,
        ),
        None => None,
    };
    let model = match (&body.model, &agent) {
        (Some(m), _) => m.clone(),
        (None, Some(a)) => a.model.clone(),
        (None, None) => default_model(&state).await?,
    };
    usable_model(&state, &model).await?;
    let system_prompt = body
        .system_prompt
        .or_else(|| agent.as_ref().map(|a| a.system_prompt.clone()));
    let conv = chat::create_conversation(
        &state.db,
        chat::NewConversation {
            id: crate::ids::next_id(),
            user_id: user.user_id,
            title: &title,
            model: &model,
            agent_id: agent.as_ref().map(|a| a.id),
            system_prompt: system_prompt.as_deref(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(conv)))
}

#[utoipa::path(get, path = "/conversations", tag = "chat", params(PageQuery), responses((status = 200, description = "success", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<chat::ConversationRow>>> {
    let page = q.page();
    let (items, total) = chat::list_conversations(&state.db, user.user_id, page).await?;
    Ok(Json(Paged::new(items, page, total)))
}

async fn load(state: &AppState, user: &AuthUser, id: &str) -> Result<chat::ConversationRow> {
    chat::get_conversation(&state.db, user.user_id, parse_id(id, "conversation")?)
        .await?
        .ok_or_else(|| Error::not_found("conversation not found"))
}

#[utoipa::path(get, path = "/conversations/{id}", tag = "chat", params(("id" = String, Path, description = "id")), responses((status = 200, description = "success", body = chat::ConversationRow), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<chat::ConversationRow>> {
    Ok(Json(load(&state, &user, &id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ConversationPatch {
    #[schema(max_length = 255)]
    title: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    model: Option<String>,
}

#[utoipa::path(patch, path = "/conversations/{id}", tag = "chat", params(("id" = String, Path, description = "id")), request_body = ConversationPatch, responses((status = 200, description = "success", body = chat::ConversationRow), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    Json(body): Json<ConversationPatch>,
) -> Result<Json<chat::ConversationRow>> {
    let conv = load(&state, &user, &id).await?;
    if let Some(t) = &body.title {
        check_len("title", t, 0, 255)?;
    }
    if let Some(m) = &body.model {
        usable_model(&state, m).await?;
    }
    chat::update_conversation(
        &state.db,
        user.user_id,
        conv.id,
        body.title.as_deref(),
        body.model.as_deref(),
    )
    .await?;
    state.engine.reload_conversation(conv.id);
    Ok(Json(load(&state, &user, &id).await?))
}

#[utoipa::path(delete, path = "/conversations/{id}", tag = "chat", params(("id" = String, Path, description = "id")), responses((status = 204, description = "success"), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let id = parse_id(&id, "conversation")?;
    if !chat::delete_conversation(&state.db, user.user_id, id).await? {
        return Err(Error::not_found("conversation not found"));
    }
    state.engine.stop_conversation(id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
struct MessagesQuery {
    after_seq: Option<i64>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/conversations/{id}/messages", tag = "chat", params(("id" = String, Path, description = "id"), MessagesQuery), responses((status = 200, description = "success", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn messages(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Result<Json<serde_json::Value>> {
    let conv = load(&state, &user, &id).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let (items, has_more) =
        chat::messages_after(&state.db, conv.id, q.after_seq.unwrap_or(0).max(0), limit).await?;
    Ok(Json(json!({"items": items, "has_more": has_more})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ChatSend {
    #[schema(
        min_length = 1,
        max_length = 32000,
        pattern = r"[^\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    content: String,
    /// The client's id of this message: a repeat with the same id answers the first turn again.
    #[schema(min_length = 1, max_length = 128)]
    client_msg_id: Option<String>,
    /// A usable model for this turn only; default: the conversation's.
    #[schema(min_length = 1, max_length = 128)]
    model: Option<String>,
    /// Answer as `text/event-stream` (also chosen by `Accept: text/event-stream`).
    stream: Option<bool>,
    /// Images, for models that read them: the sender's uploads or `https` URLs.
    #[schema(max_items = 4)]
    attachments: Option<Vec<super::attachments::AttachmentIn>>,
}

#[utoipa::path(post, path = "/conversations/{id}/messages", tag = "chat", params(("id" = String, Path, description = "id")), request_body = ChatSend, responses((status = 200, description = "the turn: `{user_message, assistant_message, charged, balance}` as JSON, or with `stream` (or `Accept: text/event-stream`) its events as SSE", content((Object = "application/json"), (crate::http::sse::SseEvent = "text/event-stream"))), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn send(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ChatSend>,
) -> Result<Response> {
    validate_send(&body.content, body.client_msg_id.as_deref())?;
    let conv = load(&state, &user, &id).await?;
    let extras = super::attachments::turn_extras(
        &state,
        user.user_id,
        &body.content,
        body.attachments.as_deref(),
    )
    .await?;
    if let Some(m) = &body.model {
        usable_model(&state, m).await?;
    }
    let wants_sse = body.stream.unwrap_or(false)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    let mut handle = state
        .engine
        .send_chat(
            conv.id,
            SendTurnRequest {
                user_id: user.user_id,
                unlimited: user.role == Role::Admin,
                content: body.content,
                client_msg_id: body.client_msg_id.clone(),
                model: body.model,
                extras,
            },
        )
        .await?;
    let ack = (&mut handle.ack)
        .await
        .map_err(|_| Error::Internal(anyhow::anyhow!("turn dropped before acknowledgement")))??;
    match ack {
        Ack::Duplicate {
            user_message,
            assistant_message,
        } => {
            let first = (user_message, assistant_message);
            duplicate(&state, &user, conv.id, body.client_msg_id, first, wants_sse).await
        }
        Ack::Started { user_message, .. } if wants_sse => {
            let ack = Frame::Ack {
                id: body.client_msg_id,
                conversation_id: conv.id,
                message: user_message,
            };
            Ok(sse::turn(conv.id, ack, handle.updates))
        }
        Ack::Started { user_message, .. } => whole(user_message, handle.updates).await,
    }
}

/// A repeated `client_msg_id`: the first turn's messages again, as JSON or as its events.
async fn duplicate(
    state: &AppState,
    user: &AuthUser,
    conversation_id: i64,
    client_msg_id: Option<String>,
    (user_message, assistant_message): (StoredMessage, Option<StoredMessage>),
    wants_sse: bool,
) -> Result<Response> {
    let balance = storage::users::by_id(&state.db, user.user_id)
        .await?
        .map(|u| u.credits)
        .unwrap_or(0);
    let charged = assistant_message
        .as_ref()
        .map(|m| m.credits_charged)
        .unwrap_or(0);
    let credits = Credits { charged, balance };
    if wants_sse {
        let frames = replayed(
            client_msg_id,
            conversation_id,
            user_message,
            assistant_message,
            credits,
        );
        return Ok(sse::replay(frames));
    }
    Ok(Json(json!({
        "user_message": user_message,
        "assistant_message": assistant_message,
        "credits": credits,
        "duplicate": true,
    }))
    .into_response())
}

/// Waits for the turn's end and answers it as one JSON object.
async fn whole(
    user_message: StoredMessage,
    mut updates: tokio::sync::mpsc::UnboundedReceiver<Frame>,
) -> Result<Response> {
    while let Some(frame) = updates.recv().await {
        match frame {
            Frame::Done {
                message, credits, ..
            } => {
                return Ok(Json(json!({
                    "user_message": user_message,
                    "assistant_message": message,
                    "credits": credits,
                }))
                .into_response())
            }
            Frame::ChatError { error, .. } => return Err(EngineError::from(&error).into()),
            _ => {}
        }
    }
    Err(Error::Internal(anyhow::anyhow!(
        "turn ended without an answer"
    )))
}

/// The events a turn gave, rebuilt from what was stored: `chat.ack`, its text as one
/// `chat.delta`, and `chat.done` with the stored assistant message (whose `status` says whether
/// it completed, was cancelled or failed). A turn with no stored answer replays its ack only.
fn replayed(
    id: Option<String>,
    conversation_id: i64,
    user_message: StoredMessage,
    assistant: Option<StoredMessage>,
    credits: Credits,
) -> Vec<Frame> {
    let mut frames = vec![Frame::Ack {
        id,
        conversation_id,
        message: user_message,
    }];
    if let Some(message) = assistant {
        if !message.content.is_empty() {
            frames.push(Frame::Delta {
                conversation_id,
                message_id: message.id,
                index: 0,
                delta: message.content.to_string(),
            });
        }
        frames.push(Frame::Done {
            conversation_id,
            message,
            credits,
        });
    }
    frames
}
