//! The conversation actor: one per active conversation on this node. Owns the context window
//! (system prompt always kept, then as many recent turns as fit the model's context minus its
//! max output), the one turn in flight, and the order of messages. The database stays the
//! authority (sequence numbers, the cross-node turn lock, credits); this actor's state is a cache
//! it rebuilds after a restart.
//!
//! The upstream stream never runs inside `handle`: a task of the turn runs it through the LLM
//! pool and feeds it back chunk by chunk as `Upstream` messages, so `Cancel` (and everything
//! else) is handled between chunks. Planning, the pool, the bill and the settle retry are the
//! engine's one metered call ([`crate::meter`]); this actor adds what is its own: the context,
//! `seq` and the turn lock (through `begin_turn`/`finish_turn`), and the fan-out to devices.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::{Core, Engine};
use crate::error::EngineError;
use crate::events::{Frame, StoredMessage};
use crate::llm::ChatMessage;
use crate::meter::{Collector, Plan};
use crate::pool::JobEvent;
use crate::ports::ModelInfo;
use crate::tokens;

mod context;
mod prepare;
mod turn;

pub use context::{build_context, Context, Past, IMAGE_TOKENS};

/// What a turn carries beyond a text message: images, the message's wire form, and the
/// per-turn request fields of the Responses API.
#[derive(Clone, Debug, Default)]
pub struct TurnExtras {
    /// The message's images, as shown.
    pub attachments: Vec<crate::events::Attachment>,
    /// The message as it goes upstream (images as the model gets them, tool results, several
    /// input items); `None`: its role and text.
    pub wire: Option<Vec<serde_json::Value>>,
    /// Its images' tokens (kept with it in the history).
    pub image_tokens: u64,
    /// This turn's other prompt tokens (tool definitions).
    pub request_tokens: u64,
    /// In place of the conversation's system prompt, for this turn.
    pub instructions: Option<String>,
    /// Request fields forwarded upstream (`tools`, `tool_choice`, `response_format`, ...).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// What the model must be able to do.
    pub needs: crate::llm::Caps,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Stored with the user's message and with the reply (the Responses API's records).
    pub user_record: Option<serde_json::Value>,
    pub reply_record: Option<serde_json::Value>,
}

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

/// A started turn, for its requester (REST/SSE): the first answer, then the same frames the
/// user's devices get (`chat.delta`…, then `chat.done` or `chat.error`).
pub struct TurnHandle {
    pub ack: oneshot::Receiver<Result<Ack, EngineError>>,
    pub updates: mpsc::UnboundedReceiver<Frame>,
}

pub struct SendTurn {
    pub user_id: i64,
    pub unlimited: bool,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub model: Option<String>,
    pub extras: Option<Box<TurnExtras>>,
    pub ack: oneshot::Sender<Result<Ack, EngineError>>,
    pub updates: Option<mpsc::UnboundedSender<Frame>>,
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
    /// End the turn in flight as failed `unavailable` if it began before the instant: this node
    /// went longer than a lease without renewing, so such a turn may have been taken over.
    AbortStartedBefore(Instant),
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
    history: VecDeque<Past>,
    /// The seq of the newest stored message this cache knows. Another node may store turns
    /// of the same conversation: a turn whose message is not `last_seq + 1` finds the cache
    /// behind and reloads it (SPEC §13).
    last_seq: i64,
}

impl Loaded {
    /// A turn's context for `model`: the system prompt (or the turn's `instructions`), then
    /// the newest turns that fit the model's window less its output, then the new message.
    fn context(&self, model: &ModelInfo, new: &Past, instructions: Option<&str>) -> Context {
        let budget = model
            .context_window
            .saturating_sub(model.max_output_tokens)
            .max(1);
        build_context(
            &self.history,
            instructions.or(self.system_prompt.as_deref()),
            new,
            budget,
            model.caps.vision,
        )
    }
}

/// The turn in flight.
struct Turn {
    id: i64,
    user_id: i64,
    unlimited: bool,
    client_msg_id: Option<String>,
    assistant_id: i64,
    /// Where it goes and what it reserved.
    plan: Plan,
    reservation_id: i64,
    /// The user's message as context.
    user: Past,
    /// Its per-turn fields, the reply's record.
    extras: Option<Box<TurnExtras>>,
    /// What the upstream did so far.
    collector: Collector,
    /// Index of the next delta.
    index: u64,
    cancel: CancellationToken,
    /// Stops the upstream job when the turn is dropped without an end (the actor crashed).
    _cancel_on_drop: tokio_util::sync::DropGuard,
    /// Set by `Abort`: the cancellation ends the turn as failed with this error, not cancelled.
    aborted: Option<EngineError>,
    updates: Option<mpsc::UnboundedSender<Frame>>,
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
                if core.store.abort_turn(conv, Some(turn.id)).await.is_err() {
                    crate::Engine(core.clone()).abandon_turn(conv, turn.id);
                }
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
                    t.aborted = Some(EngineError::Internal("the server is shutting down".into()));
                    t.cancel.cancel();
                }
            }
            ConvMsg::AbortStartedBefore(before) => {
                if let Some(t) = state.turn.as_mut().filter(|t| t.started < before) {
                    t.aborted = Some(EngineError::Unavailable { retry_after: 1 });
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

/// A stored message as context (`None`: nothing to send, an empty reply).
fn past(m: StoredMessage) -> Option<Past> {
    let wire = m.extra.as_ref().and_then(|e| e.wire.clone());
    if m.content.is_empty() && wire.is_none() {
        return None;
    }
    let images = m.attachments.len() as u64 * IMAGE_TOKENS;
    let wire_tokens = wire.as_ref().map_or(0, |w| {
        w.iter()
            .map(|x| match &x["tool_calls"] {
                serde_json::Value::Array(calls) => {
                    tokens::count(&serde_json::to_string(calls).unwrap_or_default())
                }
                _ => 0,
            })
            .sum()
    });
    Some(Past {
        msg: ChatMessage::new(&m.role, &m.content),
        tokens: tokens::count(&m.content) + 4 + images + wire_tokens,
        wire: wire.map(Into::into),
    })
}

impl ConvState {
    fn engine(&self) -> Engine {
        Engine(self.core.clone())
    }

    async fn ensure_loaded(&mut self) -> Result<&mut Loaded, EngineError> {
        if self.loaded.is_none() {
            let loaded = self.load(i64::MAX).await?;
            self.owner.store(loaded.user_id, Ordering::Relaxed);
            self.loaded = Some(loaded);
        }
        self.loaded
            .as_mut()
            .ok_or_else(|| EngineError::Internal("conversation state missing".into()))
    }

    /// The conversation as stored, with the messages before `before_seq` as history.
    async fn load(&self, before_seq: i64) -> Result<Loaded, EngineError> {
        let snap = self
            .core
            .store
            .load_conversation(self.id)
            .await?
            .ok_or_else(|| EngineError::NotFound("conversation not found".into()))?;
        let history = snap
            .history
            .into_iter()
            .filter(|m| m.seq < before_seq)
            .filter_map(past)
            .collect();
        Ok(Loaded {
            user_id: snap.user_id,
            model: snap.model,
            system_prompt: snap.system_prompt,
            history,
            last_seq: snap.last_seq.min(before_seq - 1),
        })
    }
}
