//! Planning a turn: whether it may run, its context for the model (and its catch-up when another
//! node stored turns since), and the first transaction's record.

use std::sync::Arc;

use super::{ConvState, Past, TurnExtras};
use crate::error::EngineError;
use crate::events::{MessageExtra, MsgUsage, StoredMessage};
use crate::llm::{ChatRequest, WireExtras};
use crate::meter::{Plan, TurnStatus};
use crate::ports::BeginTurn;
use crate::tokens;

impl ConvState {
    /// Makes the turn's context every stored turn's: when the new message is not the one
    /// after the newest this cache knows, another node stored turns since; the history is
    /// reloaded (without the new message) and the context rebuilt in the same window. The
    /// reservation stays as planned: the charge never exceeds what the user can pay.
    pub(super) async fn catch_up(
        &mut self,
        plan: &mut Plan,
        user_seq: i64,
        new: &Past,
        extras: Option<&TurnExtras>,
    ) {
        let behind = self
            .loaded
            .as_ref()
            .is_some_and(|l| l.last_seq + 1 != user_seq);
        if behind {
            match self.load(user_seq).await {
                Ok(fresh) => {
                    tracing::debug!(conversation_id = self.id, "context was behind; reloaded");
                    if let Some(model) = plan.primary() {
                        let instructions = extras.and_then(|e| e.instructions.as_deref());
                        let ctx = fresh.context(model, new, instructions);
                        for r in &mut plan.routes {
                            r.request.messages = ctx.messages.clone();
                            set_wire(&mut r.request, ctx.wire.clone());
                        }
                        plan.prompt_local = ctx.tokens + extras.map_or(0, |e| e.request_tokens);
                    }
                    self.loaded = Some(fresh);
                }
                Err(e) => {
                    tracing::warn!(conversation_id = self.id, error = %e, "could not reload a context that was behind");
                }
            }
        }
        if let Some(l) = self.loaded.as_mut() {
            l.last_seq = user_seq;
        }
    }

    /// The first transaction of a turn: lock, reservation and the user's message.
    pub(super) fn begin(
        &self,
        user_id: i64,
        turn_id: i64,
        user_message: StoredMessage,
        reserve: i64,
    ) -> BeginTurn {
        BeginTurn {
            conversation_id: self.id,
            user_id,
            turn_id,
            node_id: self.core.cfg.node_id.clone(),
            user_message,
            reserve,
            lock_ms: self.core.cfg.turn_lock.as_millis() as i64,
        }
    }

    /// Checks that the turn may run (owner, not busy, usable model) and plans it: the context
    /// that fits the model's window and the routes with their reservation.
    pub(super) async fn prepare(
        &mut self,
        user_id: i64,
        content: &str,
        client_msg_id: Option<&String>,
        model: Option<String>,
        extras: Option<&TurnExtras>,
    ) -> Result<(Plan, StoredMessage, Past), EngineError> {
        let engine = self.engine();
        let busy = self.turn.is_some();
        let in_flight_same = self.turn.as_ref().is_some_and(|t| {
            t.client_msg_id.is_some() && t.client_msg_id.as_ref() == client_msg_id
        });
        let loaded = self.ensure_loaded().await?;
        if loaded.user_id != user_id {
            return Err(EngineError::NotFound("conversation not found".into()));
        }
        if busy && !in_flight_same {
            return Err(EngineError::ConversationBusy);
        }
        let model_id = model.unwrap_or_else(|| loaded.model.clone());
        let model = engine.usable_model(&model_id).await?;
        let needs = extras.map(|e| e.needs).unwrap_or_default();
        if !model.caps.covers(needs) {
            let what = if needs.vision && !model.caps.vision {
                ("attachments", "read images")
            } else if needs.tools && !model.caps.tools {
                ("tools", "call tools")
            } else {
                ("text", "give structured output")
            };
            return Err(EngineError::InvalidRequest(format!(
                "{}: the model {} cannot {}",
                what.0, model.id, what.1
            )));
        }
        let user = Past {
            tokens: tokens::count(content) + 4 + extras.map_or(0, |e| e.image_tokens),
            wire: extras.and_then(|e| e.wire.clone()).map(Into::into),
            ..Past::text("user", content)
        };
        let ctx = loaded.context(
            &model,
            &user,
            extras.and_then(|e| e.instructions.as_deref()),
        );
        let max_tokens = extras
            .and_then(|e| e.max_tokens)
            .map_or(model.max_output_tokens, |m| m.min(model.max_output_tokens));
        let mut request = ChatRequest {
            messages: ctx.messages,
            max_tokens: Some(max_tokens.max(1)),
            temperature: extras.and_then(|e| e.temperature),
            top_p: extras.and_then(|e| e.top_p),
            needs,
            ..Default::default()
        };
        let fields = extras.map(|e| e.fields.clone()).unwrap_or_default();
        if ctx.wire.is_some() || !fields.is_empty() {
            request.wire = Some(Arc::new(WireExtras {
                messages: ctx.wire,
                fields,
            }));
        }
        let prompt = ctx.tokens + extras.map_or(0, |e| e.request_tokens);
        let plan = engine.plan(model, request, prompt).await;
        let user_message = StoredMessage {
            id: crate::ids::next_id(),
            conversation_id: self.id,
            seq: 0,
            role: "user".into(),
            content: content.to_owned(),
            status: TurnStatus::Complete.message_status().into(),
            model: model_id,
            usage: MsgUsage::default(),
            credits_charged: 0,
            client_msg_id: client_msg_id.cloned(),
            created_at: chrono::Utc::now().timestamp_millis(),
            attachments: extras.map(|e| e.attachments.clone()).unwrap_or_default(),
            extra: extras
                .filter(|e| e.wire.is_some() || e.user_record.is_some())
                .map(|e| {
                    Arc::new(MessageExtra {
                        wire: e.wire.clone(),
                        response: e.user_record.clone(),
                    })
                }),
        };
        Ok((plan, user_message, user))
    }
}

/// Sets (or clears) the wire messages of a request, keeping its forwarded fields.
fn set_wire(request: &mut ChatRequest, messages: Option<Vec<serde_json::Value>>) {
    let fields = request
        .wire
        .as_ref()
        .map(|w| w.fields.clone())
        .unwrap_or_default();
    request.wire = (messages.is_some() || !fields.is_empty())
        .then(|| Arc::new(WireExtras { messages, fields }));
}
