//! One `/v1` call through the engine's metered call, answered whole or as a stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Instant;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::chunks::Chunks;
use super::overhead::{with_timing, UpstreamTiming};
use super::request::{validate, CompletionRequest, Valid};
use crate::auth::{AuthUser, Role};
use crate::error::{Error, Result};
use crate::http::{sse, Json};
use crate::state::AppState;
use std::sync::Arc;

use questech_engine::llm::{Caps, ChatRequest, WireExtras};
use questech_engine::meter::{CallEvent, CallKind, CallSpec, Called};
use questech_engine::ports::ModelInfo;
use questech_engine::{tokens, EngineError};

/// What the call's task tells the response.
pub enum Relay {
    Event(CallEvent),
    End(Box<std::result::Result<Called, EngineError>>),
}

/// `POST /v1/chat/completions`: validate, plan, run in its own task, answer.
pub async fn complete(
    state: AppState,
    user: AuthUser,
    body: CompletionRequest,
) -> Result<Response> {
    let req = validate(body)?;
    let stream = req.stream;
    let (spec, chunks) = prepare(&state, &user, req).await?;
    let mut rx = start(&state, spec);
    let submitted = match rx.recv().await {
        Some(Relay::Event(CallEvent::Submitted(at))) => at,
        Some(Relay::End(r)) => return Err(r.err().map_or_else(ended_early, Error::from)),
        _ => return Err(ended_early()),
    };
    if stream {
        streamed(rx, chunks, submitted).await
    } else {
        whole(rx, chunks, submitted).await
    }
}

/// The engine's call for a validated request, and the objects its answer is written in.
async fn prepare(state: &AppState, user: &AuthUser, req: Valid) -> Result<(CallSpec, Chunks)> {
    let model = state.engine.usable_model(&req.model).await?;
    let needs = needs(&req, &model)?;
    let images: u64 = req.messages.images.iter().map(|(_, t)| t).sum();
    let prompt_local = tokens::count_messages_off_runtime(&req.messages.text).await
        + tokens::count_off_runtime(&req.forwarded.tools_text).await
        + images;
    if prompt_local >= model.context_window {
        return Err(Error::invalid(
            "messages",
            &format!(
                "the prompt ({prompt_local} tokens) does not fit the model's context window ({} tokens)",
                model.context_window
            ),
        ));
    }
    // Never more than the model can give, nor than the context leaves.
    let max_tokens = req
        .max_tokens
        .unwrap_or(model.max_output_tokens)
        .min(model.max_output_tokens)
        .min(model.context_window - prompt_local)
        .max(1);
    let wire = (req.messages.wire.is_some() || !req.forwarded.fields.is_empty()).then(|| {
        Arc::new(WireExtras {
            messages: req.messages.wire,
            fields: req.forwarded.fields,
        })
    });
    let request = ChatRequest {
        model: String::new(),
        messages: req.messages.text,
        max_tokens: Some(max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        stop: req.stop,
        wire,
        needs,
        embed: None,
    };
    let completion_id = format!("chatcmpl-{}", crate::ids::next_id());
    let chunks = Chunks {
        id: completion_id.clone(),
        created: chrono::Utc::now().timestamp(),
        model: model.id.clone(),
        include_usage: req.include_usage,
    };
    let spec = CallSpec {
        user_id: user.user_id,
        unlimited: user.role == Role::Admin,
        kind: CallKind::V1 {
            api_key_id: user.api_key_id,
        },
        ref_id: completion_id,
        plan: state.engine.plan(model, request, prompt_local).await,
        // A stream shows output as it comes; a plain answer comes whole or not at all.
        partial_reaches_user: req.stream,
    };
    Ok((spec, chunks))
}

/// What the request asks of a model beyond text, refused (400, naming the field) when the
/// model asked for cannot do it.
fn needs(req: &Valid, model: &ModelInfo) -> Result<Caps> {
    let needs = Caps {
        vision: !req.messages.images.is_empty(),
        tools: req.forwarded.tools || req.messages.uses_tools,
        json: req.forwarded.json,
        embeddings: false,
    };
    let id = &model.id;
    if needs.vision && !model.caps.vision {
        let field = req
            .messages
            .images
            .first()
            .map_or("messages", |(f, _)| f.as_str());
        return Err(Error::invalid(
            field,
            &format!("the model {id} does not read images"),
        ));
    }
    if needs.tools && !model.caps.tools {
        let field = if req.forwarded.tools {
            "tools"
        } else {
            "messages"
        };
        return Err(Error::invalid(
            field,
            &format!("the model {id} does not call tools"),
        ));
    }
    if needs.json && !model.caps.json {
        return Err(Error::invalid(
            "response_format",
            &format!("the model {id} has no structured output"),
        ));
    }
    Ok(needs)
}

/// Runs the call in its own task: from here on it has effects (limits, credits, upstream), and
/// a client going away must not leave any of them half done.
pub(super) fn start(state: &AppState, spec: CallSpec) -> mpsc::UnboundedReceiver<Relay> {
    let (tx, rx) = mpsc::unbounded_channel::<Relay>();
    let engine = state.engine.clone();
    state.tracker.spawn(async move {
        let events = tx.clone();
        let r = engine
            .call(spec, &mut |ev| {
                // The client may be gone: the upstream is still read to its end.
                let _ = events.send(Relay::Event(ev));
            })
            .await;
        let _ = tx.send(Relay::End(Box::new(r)));
    });
    rx
}

/// A plain answer: the whole `chat.completion`, or the error that ended the call.
async fn whole(
    mut rx: mpsc::UnboundedReceiver<Relay>,
    chunks: Chunks,
    submitted: Instant,
) -> Result<Response> {
    loop {
        match rx.recv().await {
            Some(Relay::Event(_)) => {}
            Some(Relay::End(r)) => {
                let called = (*r)?;
                let timing = UpstreamTiming {
                    submitted,
                    ended: Some(called.ended),
                };
                let res = match &called.bill.error {
                    Some(e) => Error::from(e.clone()).into_response(),
                    None => Json(chunks.completion(&called)).into_response(),
                };
                return Ok(with_timing(res, timing));
            }
            None => return Err(ended_early()),
        }
    }
}

/// A stream. Its status is decided by the first thing the upstream does: a call that fails
/// before any text is an error response, not a stream that carries one.
async fn streamed(
    mut rx: mpsc::UnboundedReceiver<Relay>,
    chunks: Chunks,
    submitted: Instant,
) -> Result<Response> {
    let first = rx.recv().await;
    let mut pending = VecDeque::new();
    pending.push_back(chunks.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
    let finished = match first {
        Some(Relay::End(r))
            if r.as_ref()
                .as_ref()
                .is_ok_and(|c| c.bill.error.is_some() && c.text.is_empty()) =>
        {
            let called = (*r)?;
            let timing = UpstreamTiming {
                submitted,
                ended: Some(called.ended),
            };
            let e = called.bill.error.map_or_else(ended_early, Error::from);
            return Ok(with_timing(e.into_response(), timing));
        }
        None => return Err(ended_early()),
        Some(relay) => chunks.frames(relay, &mut pending),
    };
    let body = futures::stream::unfold(
        (rx, pending, finished, chunks),
        |(mut rx, mut pending, mut finished, chunks)| async move {
            loop {
                if let Some(b) = pending.pop_front() {
                    return Some((Ok::<Bytes, Infallible>(b), (rx, pending, finished, chunks)));
                }
                if finished {
                    return None;
                }
                finished = match rx.recv().await {
                    Some(relay) => chunks.frames(relay, &mut pending),
                    None => {
                        pending.push_back(sse::data(&ended_early().body_json().to_string()));
                        pending.push_back(sse::data("[DONE]"));
                        true
                    }
                };
            }
        },
    );
    let timing = UpstreamTiming {
        submitted,
        ended: None,
    };
    Ok(with_timing(sse::response(body), timing))
}

pub(super) fn ended_early() -> Error {
    Error::Internal(anyhow::anyhow!("the call ended without an answer"))
}
