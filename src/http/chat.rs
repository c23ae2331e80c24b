//! Stateful chat over REST and SSE (SPEC §7). Conversations and history are read from the
//! database; sending goes through the engine (user-session → conversation actor → LLM pool).

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Json, PageQuery, Path, Query};
use crate::auth::{AuthUser, Role};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::{self, chat, Paged};
use questech_engine::conversation::Ack;
use questech_engine::engine::SendTurnRequest;
use questech_engine::events::{Credits, ErrorBody, Frame};
use questech_engine::EngineError;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, patch, delete))
        .routes(routes!(messages, send))
}

pub fn parse_id(s: &str) -> Result<i64> {
    crate::ids::parse(s).ok_or_else(|| Error::not_found("not found"))
}

fn check_text(field: &str, v: &str, max_chars: usize) -> Result<()> {
    if v.chars().count() > max_chars {
        return Err(Error::invalid(
            field,
            &format!("must be at most {max_chars} characters"),
        ));
    }
    Ok(())
}

/// The model a new conversation or turn uses: usable (enabled, provider configured) or
/// `model_not_found`.
pub async fn usable_model(state: &AppState, id: &str) -> Result<storage::models::ModelRow> {
    match state.models.get(id).await? {
        Some(m) if state.engine.is_usable(&m.info()) => Ok(m),
        _ => Err(Error::Engine(EngineError::ModelNotFound(id.to_owned()))),
    }
}

/// `DEFAULT_MODEL`, else `echo` in debug, else the first usable model.
pub async fn default_model(state: &AppState) -> Result<String> {
    if let Some(m) = &state.config.default_model {
        return Ok(m.clone());
    }
    let all = state.models.all().await?;
    if state.config.service_debug && all.iter().any(|m| m.id == "echo" && m.enabled != 0) {
        return Ok("echo".into());
    }
    all.into_iter()
        .find(|m| state.engine.is_usable(&m.info()))
        .map(|m| m.id)
        .ok_or_else(|| Error::Engine(EngineError::ModelNotFound("no model is enabled".into())))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CreateBody {
    title: Option<String>,
    model: Option<String>,
    agent_id: Option<String>,
    system_prompt: Option<String>,
}

#[utoipa::path(post, path = "/conversations", tag = "chat", request_body = CreateBody, responses((status = 201, description = "success", body = chat::ConversationRow), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<CreateBody>,
) -> Result<impl IntoResponse> {
    let title = body.title.unwrap_or_default();
    check_text("title", &title, 255)?;
    if let Some(sp) = &body.system_prompt {
        check_text("system_prompt", sp, 100_000)?;
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
    chat::get_conversation(&state.db, user.user_id, parse_id(id)?)
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
struct PatchBody {
    title: Option<String>,
    model: Option<String>,
}

#[utoipa::path(patch, path = "/conversations/{id}", tag = "chat", params(("id" = String, Path, description = "id")), request_body = PatchBody, responses((status = 200, description = "success", body = chat::ConversationRow), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    Json(body): Json<PatchBody>,
) -> Result<Json<chat::ConversationRow>> {
    let conv = load(&state, &user, &id).await?;
    if let Some(t) = &body.title {
        check_text("title", t, 255)?;
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
    let id = parse_id(&id)?;
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
struct SendBody {
    content: String,
    client_msg_id: Option<String>,
    model: Option<String>,
    stream: Option<bool>,
}

/// Validates a chat message's fields (shared with the WebSocket).
pub fn validate_send(content: &str, client_msg_id: Option<&str>) -> Result<()> {
    if content.trim().is_empty() {
        return Err(Error::invalid("content", "must not be empty"));
    }
    check_text("content", content, 32_000)?;
    if let Some(c) = client_msg_id {
        if c.is_empty() || c.len() > 128 {
            return Err(Error::invalid(
                "client_msg_id",
                "must be 1 to 128 characters",
            ));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/conversations/{id}/messages", tag = "chat", params(("id" = String, Path, description = "id")), request_body = SendBody, responses((status = 200, description = "success", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn send(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<SendBody>,
) -> Result<Response> {
    validate_send(&body.content, body.client_msg_id.as_deref())?;
    let conv = load(&state, &user, &id).await?;
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
            let balance = storage::users::by_id(&state.db, user.user_id)
                .await?
                .map(|u| u.credits)
                .unwrap_or(0);
            let charged = assistant_message
                .as_ref()
                .map(|m| m.credits_charged)
                .unwrap_or(0);
            Ok(Json(json!({
                "user_message": user_message,
                "assistant_message": assistant_message,
                "credits": Credits { charged, balance },
                "duplicate": true,
            }))
            .into_response())
        }
        Ack::Started { user_message, .. } if wants_sse => {
            let ack = Frame::Ack {
                id: body.client_msg_id,
                conversation_id: conv.id,
                message: user_message,
            };
            Ok(sse(conv.id, ack, handle.updates).into_response())
        }
        Ack::Started { user_message, .. } => {
            while let Some(frame) = handle.updates.recv().await {
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
    }
}

fn event(frame: &Frame) -> Event {
    Event::default()
        .event(frame.kind())
        .data(String::from_utf8_lossy(&frame.to_bytes()))
}

/// The turn as SSE: `chat.ack`, then the turn's frames (`chat.delta`…, then `chat.done` or
/// `chat.error`), each as the event of its type.
fn sse(
    conversation_id: i64,
    ack: Frame,
    mut updates: tokio::sync::mpsc::UnboundedReceiver<Frame>,
) -> Sse<impl Stream<Item = std::result::Result<Event, Infallible>>> {
    let stream = async_stream_lite(move |tx| async move {
        let _ = tx.send(event(&ack));
        while let Some(frame) = updates.recv().await {
            let last = matches!(frame, Frame::Done { .. } | Frame::ChatError { .. });
            if tx.send(event(&frame)).is_err() {
                // The client went away; the turn goes on and is stored.
                return;
            }
            if last {
                return;
            }
        }
        // The turn ended without an answer (its actor crashed or was stopped): say so rather
        // than end the stream in silence.
        let err = EngineError::Internal("the turn was lost; please retry".into());
        let _ = tx.send(event(&Frame::ChatError {
            id: None,
            conversation_id,
            error: ErrorBody::from(&err),
        }));
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A tiny generator: runs `f` with a sender and yields what it sends.
fn async_stream_lite<F, Fut>(f: F) -> impl Stream<Item = std::result::Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(f(tx));
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}
