//! The conversation actor: one per active conversation on this node. Owns the context window
//! (system prompt always kept, then as many recent turns as fit the model's context minus its
//! max output), the one turn in flight, and the order of messages. The database stays the
//! authority (sequence numbers, the cross-node turn lock, credits); this actor's state is a cache
//! it rebuilds after a restart.
//!
//! The upstream stream never runs inside `handle`: the LLM pool feeds it back chunk by chunk as
//! `Upstream` messages, so `Cancel` (and everything else) is handled between chunks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::{Core, Engine};
use crate::error::EngineError;
use crate::events::{Credits, ErrorBody, Frame, MsgUsage, StoredMessage};
use crate::llm::{ChatMessage, ChatRequest, Usage};
use crate::pool::{Job, JobEvent, Route};
use crate::ports::{BeginOutcome, BeginTurn, FinishTurn, ModelInfo};
use crate::tokens;

/// The first answer to a send.
#[derive(Debug)]
pub enum Ack {
    /// Stored (with its seq) and on its way upstream; the assistant message will have this id.
    Started {
        user_message: StoredMessage,
        assistant_id: i64,
    },
    /// The `client_msg_id` was seen before: the stored messages, nothing charged again.
    Duplicate {
        user_message: StoredMessage,
        assistant_message: Option<StoredMessage>,
    },
}

/// Updates of a started turn, for the requester (REST/SSE); devices get frames instead.
#[derive(Debug, Clone)]
pub enum TurnUpdate {
    Delta {
        message_id: i64,
        index: u64,
        delta: String,
    },
    Done {
        message: StoredMessage,
        credits: Credits,
    },
    Failed {
        error: EngineError,
        message: Option<StoredMessage>,
    },
}

pub struct TurnHandle {
    pub ack: oneshot::Receiver<Result<Ack, EngineError>>,
    pub updates: mpsc::UnboundedReceiver<TurnUpdate>,
}

pub struct SendTurn {
    pub user_id: i64,
    pub unlimited: bool,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub model: Option<String>,
    pub ack: oneshot::Sender<Result<Ack, EngineError>>,
    pub updates: Option<mpsc::UnboundedSender<TurnUpdate>>,
}

// `Poison` is hidden, not a marker of non-exhaustiveness.
#[allow(clippy::manual_non_exhaustive)]
pub enum ConvMsg {
    Send(Box<SendTurn>),
    Cancel {
        user_id: i64,
    },
    Upstream {
        turn_id: i64,
        event: JobEvent,
    },
    /// Drop the cached state (model or prompt changed); rebuilt on the next message.
    Reload,
    /// End the turn in flight as failed (the server is shutting down and its grace is over).
    Abort,
    Tick,
    /// Test hook: makes the actor panic, to prove supervision. Not reachable from the network.
    #[doc(hidden)]
    Poison,
}

pub struct Conversation;

pub struct ConvArgs {
    pub conversation_id: i64,
    pub core: Arc<Core>,
    pub depth: Arc<AtomicUsize>,
    pub owner: Arc<AtomicI64>,
    /// The turn in flight (0: none), for the supervisor.
    pub turn: Arc<AtomicI64>,
}

struct Loaded {
    user_id: i64,
    model: String,
    system_prompt: Option<String>,
    /// Recent complete turns, oldest first, each with its token count.
    history: VecDeque<(ChatMessage, u64)>,
}

struct Turn {
    id: i64,
    user_id: i64,
    unlimited: bool,
    client_msg_id: Option<String>,
    assistant_id: i64,
    model: ModelInfo,
    reservation_id: i64,
    reserved: i64,
    prompt_tokens_local: u64,
    user_content: String,
    text: String,
    index: u64,
    usage: Option<Usage>,
    cancel: CancellationToken,
    /// Stops the upstream job when the turn is dropped without an end (the actor crashed).
    _cancel_on_drop: tokio_util::sync::DropGuard,
    /// Set by `Abort`: the cancellation ends the turn as failed, not cancelled.
    aborted: bool,
    updates: Option<mpsc::UnboundedSender<TurnUpdate>>,
    started: Instant,
}

pub struct ConvState {
    id: i64,
    core: Arc<Core>,
    depth: Arc<AtomicUsize>,
    owner: Arc<AtomicI64>,
    turn_in_flight: Arc<AtomicI64>,
    loaded: Option<Loaded>,
    turn: Option<Turn>,
    last_active: Instant,
}

const HISTORY_KEEP: usize = 400;

impl Actor for Conversation {
    type Msg = ConvMsg;
    type State = ConvState;
    type Arguments = ConvArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ConvMsg>,
        args: ConvArgs,
    ) -> Result<ConvState, ActorProcessingErr> {
        // Cheap start: the state is loaded from the database on the first message. Idle checks
        // come from the engine's one sweep (`Tick`), not a timer per actor.
        Ok(ConvState {
            id: args.conversation_id,
            core: args.core,
            depth: args.depth,
            owner: args.owner,
            turn_in_flight: args.turn,
            loaded: None,
            turn: None,
            last_active: Instant::now(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConvMsg>,
        state: &mut ConvState,
    ) -> Result<(), ActorProcessingErr> {
        // Stopped with a turn in flight (conversation deleted): end it cleanly.
        if let Some(turn) = state.turn.take() {
            state.turn_in_flight.store(0, Ordering::Relaxed);
            turn.cancel.cancel();
            let core = state.core.clone();
            let conv = state.id;
            let user = turn.user_id;
            let unlimited = turn.unlimited;
            core.tracker.clone().spawn(async move {
                let _ = core.store.abort_turn(conv, Some(turn.id)).await;
                core.limits.release(user, unlimited).await;
            });
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConvMsg>,
        msg: ConvMsg,
        state: &mut ConvState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(msg, ConvMsg::Tick) {
            state.depth.fetch_sub(1, Ordering::Relaxed);
            state.last_active = Instant::now();
        }
        match msg {
            ConvMsg::Send(send) => state.on_send(&myself, *send).await,
            ConvMsg::Cancel { user_id } => {
                if let Some(t) = &state.turn {
                    if t.user_id == user_id {
                        t.cancel.cancel();
                    }
                }
            }
            ConvMsg::Upstream { turn_id, event } => state.on_upstream(turn_id, event).await,
            ConvMsg::Abort => {
                if let Some(t) = state.turn.as_mut() {
                    t.aborted = true;
                    t.cancel.cancel();
                }
            }
            ConvMsg::Reload => {
                if state.turn.is_none() {
                    state.loaded = None;
                }
            }
            ConvMsg::Tick => {
                if state.turn.is_none() && state.last_active.elapsed() >= state.core.cfg.actor_idle
                {
                    myself.stop(Some("idle".into()));
                }
            }
            ConvMsg::Poison => {
                #[allow(clippy::panic)]
                {
                    panic!("poisoned conversation actor (test hook)");
                }
            }
        }
        Ok(())
    }
}

impl ConvState {
    fn engine(&self) -> Engine {
        Engine(self.core.clone())
    }

    async fn ensure_loaded(&mut self) -> Result<&mut Loaded, EngineError> {
        if self.loaded.is_none() {
            let snap = self
                .core
                .store
                .load_conversation(self.id)
                .await?
                .ok_or_else(|| EngineError::NotFound("conversation not found".into()))?;
            self.owner.store(snap.user_id, Ordering::Relaxed);
            let history = snap
                .history
                .into_iter()
                .filter(|m| !m.content.is_empty())
                .map(|m| {
                    let t = tokens::count(&m.content) + 4;
                    (
                        ChatMessage {
                            role: m.role.into(),
                            content: m.content.into(),
                        },
                        t,
                    )
                })
                .collect();
            self.loaded = Some(Loaded {
                user_id: snap.user_id,
                model: snap.model,
                system_prompt: snap.system_prompt,
                history,
            });
        }
        self.loaded
            .as_mut()
            .ok_or_else(|| EngineError::Internal("conversation state missing".into()))
    }

    async fn on_send(&mut self, myself: &ActorRef<ConvMsg>, send: SendTurn) {
        let user_id = send.user_id;
        let unlimited = send.unlimited;
        match self.start_turn(myself, send).await {
            Ok(()) => {}
            Err((e, ack)) => {
                // The turn never started: give back its in-flight slot *before* answering, so
                // a client that retries at once finds it free.
                self.core.limits.release(user_id, unlimited).await;
                let _ = ack.send(Err(e));
            }
        }
    }

    /// Admits and starts a turn. On rejection, gives the ack channel back with the error.
    async fn start_turn(
        &mut self,
        myself: &ActorRef<ConvMsg>,
        send: SendTurn,
    ) -> Result<(), (EngineError, oneshot::Sender<Result<Ack, EngineError>>)> {
        let SendTurn {
            user_id,
            unlimited,
            content,
            client_msg_id,
            model,
            ack,
            updates,
        } = send;
        let core = self.core.clone();
        let busy = self.turn.is_some();
        let in_flight_same = self
            .turn
            .as_ref()
            .is_some_and(|t| t.client_msg_id.is_some() && t.client_msg_id == client_msg_id);
        let loaded = match self.ensure_loaded().await {
            Ok(l) => l,
            Err(e) => return Err((e, ack)),
        };
        if loaded.user_id != user_id {
            return Err((EngineError::NotFound("conversation not found".into()), ack));
        }
        if busy && !in_flight_same {
            return Err((EngineError::ConversationBusy, ack));
        }
        let model_id = model.unwrap_or_else(|| loaded.model.clone());
        let model = match core.store.model(&model_id).await {
            Ok(Some(m)) if m.enabled && core.pool.has_provider(&m.provider) => m,
            Ok(_) => return Err((EngineError::ModelNotFound(model_id), ack)),
            Err(e) => return Err((e, ack)),
        };
        // Context: system prompt, then the newest turns that fit, then the new message.
        let budget = model
            .context_window
            .saturating_sub(model.max_output_tokens)
            .max(1);
        let (messages, used) = build_context(
            &loaded.history,
            loaded.system_prompt.as_deref(),
            &content,
            budget,
        );
        let prompt_tokens = used;
        let reserve = model.cost(prompt_tokens, model.max_output_tokens, true);
        let turn_id = crate::ids::next_id();
        let now = chrono::Utc::now().timestamp_millis();
        let user_message = StoredMessage {
            id: crate::ids::next_id(),
            conversation_id: self.id,
            seq: 0,
            role: "user".into(),
            content: content.clone(),
            status: "complete".into(),
            model: model.id.clone(),
            usage: MsgUsage::default(),
            credits_charged: 0,
            client_msg_id: client_msg_id.clone(),
            created_at: now,
        };
        let outcome = core
            .store
            .begin_turn(BeginTurn {
                conversation_id: self.id,
                user_id,
                turn_id,
                node_id: core.cfg.node_id.clone(),
                user_message,
                reserve,
                lock_ms: core.cfg.turn_lock.as_millis() as i64,
            })
            .await;
        let (user_message, reservation_id) = match outcome {
            Ok(BeginOutcome::Started {
                user_message,
                reservation_id,
            }) => (user_message, reservation_id),
            Ok(BeginOutcome::Busy) => return Err((EngineError::ConversationBusy, ack)),
            Ok(BeginOutcome::InsufficientCredits) => {
                return Err((EngineError::InsufficientCredits, ack))
            }
            Ok(BeginOutcome::NotFound) => {
                return Err((EngineError::NotFound("conversation not found".into()), ack))
            }
            Ok(BeginOutcome::Duplicate {
                user_message,
                assistant_message,
            }) => {
                self.core.limits.release(user_id, unlimited).await;
                let _ = ack.send(Ok(Ack::Duplicate {
                    user_message,
                    assistant_message,
                }));
                return Ok(());
            }
            Err(e) => return Err((e, ack)),
        };
        self.turn_in_flight.store(turn_id, Ordering::Relaxed);
        core.metrics.turns_started.fetch_add(1, Ordering::Relaxed);
        let assistant_id = crate::ids::next_id();
        // Stored: acknowledge to the requester and to every device of the user.
        let engine = self.engine();
        engine.publish(
            user_id,
            &Frame::Ack {
                id: client_msg_id.clone(),
                conversation_id: self.id,
                message: user_message.clone(),
            },
        );
        let _ = ack.send(Ok(Ack::Started {
            user_message,
            assistant_id,
        }));
        // Upstream: the pool streams back into this actor's mailbox.
        let cancel = CancellationToken::new();
        let mut routes = vec![Route {
            provider: model.provider.clone(),
            request: ChatRequest {
                model: model.upstream_model.clone(),
                messages,
                max_tokens: Some(model.max_output_tokens),
                ..Default::default()
            },
        }];
        for fb in &model.fallbacks {
            if let Ok(Some(m)) = core.store.model(fb).await {
                if m.enabled && core.pool.has_provider(&m.provider) {
                    let mut req = routes[0].request.clone();
                    req.model = m.upstream_model.clone();
                    routes.push(Route {
                        provider: m.provider.clone(),
                        request: req,
                    });
                }
            }
        }
        let me = myself.clone();
        let depth = self.depth.clone();
        core.pool.submit(Job {
            routes,
            cancel: cancel.clone(),
            sink: Arc::new(move |event| {
                depth.fetch_add(1, Ordering::Relaxed);
                if me.cast(ConvMsg::Upstream { turn_id, event }).is_err() {
                    depth.fetch_sub(1, Ordering::Relaxed);
                }
            }),
        });
        self.turn = Some(Turn {
            id: turn_id,
            user_id,
            unlimited,
            client_msg_id,
            assistant_id,
            model,
            reservation_id,
            reserved: reserve,
            prompt_tokens_local: prompt_tokens,
            user_content: content,
            text: String::new(),
            index: 0,
            usage: None,
            _cancel_on_drop: cancel.clone().drop_guard(),
            cancel,
            aborted: false,
            updates,
            started: Instant::now(),
        });
        Ok(())
    }

    async fn on_upstream(&mut self, turn_id: i64, event: JobEvent) {
        let Some(turn) = self.turn.as_mut().filter(|t| t.id == turn_id) else {
            return; // a late event of a finished turn
        };
        match event {
            JobEvent::Delta(d) => {
                let index = turn.index;
                turn.index += 1;
                turn.text.push_str(&d);
                if let Some(u) = &turn.updates {
                    let _ = u.send(TurnUpdate::Delta {
                        message_id: turn.assistant_id,
                        index,
                        delta: d.clone(),
                    });
                }
                let frame = Frame::Delta {
                    conversation_id: self.id,
                    message_id: turn.assistant_id,
                    index,
                    delta: d,
                };
                let user = turn.user_id;
                self.engine().publish(user, &frame);
            }
            JobEvent::Usage(u) => turn.usage = Some(u),
            JobEvent::Done(_) => self.finish("complete", None).await,
            JobEvent::Cancelled if turn.aborted => {
                let err = EngineError::Internal("the server is shutting down".into());
                self.finish("failed", Some(err)).await
            }
            JobEvent::Cancelled => self.finish("cancelled", None).await,
            JobEvent::Failed { error, .. } => self.finish("failed", Some(error)).await,
        }
    }

    /// Ends the turn: stores the assistant message, settles credits, tells everyone.
    async fn finish(&mut self, status: &'static str, error: Option<EngineError>) {
        let Some(turn) = self.turn.take() else { return };
        self.turn_in_flight.store(0, Ordering::Relaxed);
        let core = self.core.clone();
        let delivered = !turn.text.is_empty();
        let completion_local = if delivered {
            tokens::count(&turn.text)
        } else {
            0
        };
        // The provider's own count when it gave one (only meaningful for complete turns; a
        // cancelled or broken stream is billed for what was delivered).
        let (prompt, completion) = match (status, turn.usage) {
            ("complete", Some(u)) => (u.prompt_tokens, u.completion_tokens),
            (_, Some(u)) if delivered => (u.prompt_tokens, completion_local),
            _ => (turn.prompt_tokens_local, completion_local),
        };
        let charge = match status {
            "complete" => turn.model.cost(prompt, completion, true),
            _ if delivered => turn.model.cost(prompt, completion, false),
            _ => 0,
        };
        let assistant = StoredMessage {
            id: turn.assistant_id,
            conversation_id: self.id,
            seq: 0,
            role: "assistant".into(),
            content: turn.text.clone(),
            status: status.into(),
            model: turn.model.id.clone(),
            usage: MsgUsage {
                prompt_tokens: if delivered || status == "complete" {
                    prompt as i64
                } else {
                    0
                },
                completion_tokens: completion as i64,
            },
            credits_charged: 0,
            client_msg_id: None,
            created_at: chrono::Utc::now().timestamp_millis(),
        };
        let result = core
            .store
            .finish_turn(FinishTurn {
                conversation_id: self.id,
                user_id: turn.user_id,
                turn_id: turn.id,
                reservation_id: turn.reservation_id,
                reserved: turn.reserved,
                assistant,
                charge,
                kind: "chat",
                latency_ms: turn.started.elapsed().as_millis() as i64,
            })
            .await;
        let engine = self.engine();
        let user = turn.user_id;
        core.limits.release(user, turn.unlimited).await;
        match status {
            "complete" => core.metrics.turns_completed.fetch_add(1, Ordering::Relaxed),
            "cancelled" => core.metrics.turns_cancelled.fetch_add(1, Ordering::Relaxed),
            _ => core.metrics.turns_failed.fetch_add(1, Ordering::Relaxed),
        };
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(conversation_id = self.id, error = %e, "could not store the end of a turn");
                let err = EngineError::Internal("could not store the reply".into());
                engine.publish(
                    user,
                    &Frame::ChatError {
                        id: turn.client_msg_id.clone(),
                        conversation_id: self.id,
                        error: ErrorBody::from(&err),
                    },
                );
                if let Some(u) = &turn.updates {
                    let _ = u.send(TurnUpdate::Failed {
                        error: err,
                        message: None,
                    });
                }
                // Unknown what was committed: rebuild from the database next time.
                self.loaded = None;
                return;
            }
        };
        core.metrics
            .credits_charged
            .fetch_add(done.charged.max(0) as u64, Ordering::Relaxed);
        // Context for the next turn.
        if let Some(l) = self.loaded.as_mut() {
            let t = tokens::count(&turn.user_content) + 4;
            l.history.push_back((
                ChatMessage {
                    role: "user".into(),
                    content: turn.user_content.into(),
                },
                t,
            ));
            if delivered {
                l.history.push_back((
                    ChatMessage {
                        role: "assistant".into(),
                        content: turn.text.as_str().into(),
                    },
                    completion_local + 4,
                ));
            }
            while l.history.len() > HISTORY_KEEP {
                l.history.pop_front();
            }
        }
        let credits = Credits {
            charged: done.charged,
            balance: done.balance,
        };
        match error {
            None => {
                engine.publish(
                    user,
                    &Frame::Done {
                        conversation_id: self.id,
                        message: done.assistant.clone(),
                        credits,
                    },
                );
                if let Some(u) = &turn.updates {
                    let _ = u.send(TurnUpdate::Done {
                        message: done.assistant,
                        credits,
                    });
                }
            }
            Some(err) => {
                engine.publish(
                    user,
                    &Frame::ChatError {
                        id: turn.client_msg_id.clone(),
                        conversation_id: self.id,
                        error: ErrorBody::from(&err),
                    },
                );
                if let Some(u) = &turn.updates {
                    let _ = u.send(TurnUpdate::Failed {
                        error: err,
                        message: Some(done.assistant),
                    });
                }
            }
        }
        if done.charged > 0 {
            engine.publish(
                user,
                &Frame::CreditsUpdated {
                    balance: done.balance,
                    delta: -done.charged,
                    reason: "chat".into(),
                },
            );
        }
    }
}

/// The context of a turn: the system prompt (always kept), then the newest turns of `history`
/// (each with its token count) that fit `budget` tokens, then the new message. Returns the
/// messages and the prompt's token count.
pub fn build_context(
    history: &VecDeque<(ChatMessage, u64)>,
    system_prompt: Option<&str>,
    content: &str,
    budget: u64,
) -> (Vec<ChatMessage>, u64) {
    let mut used = tokens::count(content) + 4 + 3;
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(sp) = system_prompt.filter(|s| !s.is_empty()) {
        used += tokens::count(sp) + 4;
        messages.push(ChatMessage {
            role: "system".into(),
            content: sp.into(),
        });
    }
    let mut take = 0;
    for (_, t) in history.iter().rev() {
        if used + t > budget {
            break;
        }
        used += t;
        take += 1;
    }
    messages.extend(
        history
            .iter()
            .skip(history.len() - take)
            .map(|(m, _)| m.clone()),
    );
    messages.push(ChatMessage {
        role: "user".into(),
        content: content.into(),
    });
    (messages, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> (ChatMessage, u64) {
        (
            ChatMessage {
                role: role.into(),
                content: content.into(),
            },
            tokens::count(content) + 4,
        )
    }

    #[test]
    fn context_keeps_the_system_prompt_and_the_newest_turns_that_fit() {
        let history: VecDeque<_> = (0..50)
            .map(|i| {
                msg(
                    if i % 2 == 0 { "user" } else { "assistant" },
                    &format!("turn number {i}"),
                )
            })
            .collect();
        let (all, used_all) = build_context(&history, Some("be brief"), "hello", 100_000);
        assert_eq!(all.len(), 52);
        assert_eq!(&*all[0].role, "system");
        assert_eq!(all.last().map(|m| &*m.content), Some("hello"));
        let (few, used_few) = build_context(&history, Some("be brief"), "hello", 60);
        assert!(used_few <= 60 && used_few < used_all);
        assert_eq!(
            &*few[0].content, "be brief",
            "the system prompt is always kept"
        );
        // What is kept is the newest turns, in order.
        let kept: Vec<_> = few[1..few.len() - 1]
            .iter()
            .map(|m| m.content.clone())
            .collect();
        assert!(!kept.is_empty());
        assert_eq!(kept.last().map(|k| &**k), Some("turn number 49"));
        // A budget smaller than the prompt itself still sends the system prompt and message.
        let (min, _) = build_context(&history, Some("be brief"), "hello", 1);
        assert_eq!(min.len(), 2);
    }
}
