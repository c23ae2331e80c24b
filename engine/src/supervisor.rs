//! The supervisor actor: spawns user-session and conversation actors on demand, links them, and
//! decides what happens when one stops or fails (ractor has no restart strategies of its own, and
//! its default would stop the supervisor with its child).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use crate::conversation::{ConvArgs, ConvMsg, Conversation};
use crate::error::EngineError;
use crate::events::{ErrorBody, Frame};
use crate::registry::{Entry, Kind};
use crate::user_session::{UserArgs, UserMsg, UserSession};

use crate::engine::{Core, Engine};

pub enum SupMsg {
    GetUser(i64, oneshot::Sender<Result<Entry<UserMsg>, EngineError>>),
    GetConv(i64, oneshot::Sender<Result<Entry<ConvMsg>, EngineError>>),
}

/// Starts user-session and conversation actors linked to itself, and restarts them when they
/// fail (ractor has no restart strategies, and its default would stop the supervisor).
pub(crate) struct Supervisor;

pub(crate) struct SupState {
    core: Arc<Core>,
    children: HashMap<ActorId, (Kind, i64)>,
    failures: HashMap<(Kind, i64), VecDeque<Instant>>,
}

impl SupState {
    async fn spawn_user(
        &mut self,
        myself: &ActorRef<SupMsg>,
        user_id: i64,
    ) -> Result<Entry<UserMsg>, EngineError> {
        if let Some(e) = self.core.registry.user(user_id) {
            return Ok(e);
        }
        let depth = Arc::new(AtomicUsize::new(0));
        let (actor, _) = Actor::spawn_linked(
            None,
            UserSession,
            UserArgs {
                user_id,
                core: self.core.clone(),
                depth: depth.clone(),
            },
            myself.get_cell(),
        )
        .await
        .map_err(EngineError::internal)?;
        self.children
            .insert(actor.get_id(), (Kind::UserSession, user_id));
        let entry = Entry {
            actor,
            depth,
            owner: Arc::new(AtomicI64::new(user_id)),
            turn: Arc::new(AtomicI64::new(0)),
        };
        self.core.registry.users.insert(user_id, entry.clone());
        Ok(entry)
    }

    async fn spawn_conv(
        &mut self,
        myself: &ActorRef<SupMsg>,
        conv_id: i64,
    ) -> Result<Entry<ConvMsg>, EngineError> {
        if let Some(e) = self.core.registry.conversation(conv_id) {
            return Ok(e);
        }
        let depth = Arc::new(AtomicUsize::new(0));
        let owner = Arc::new(AtomicI64::new(0));
        let turn = Arc::new(AtomicI64::new(0));
        let (actor, _) = Actor::spawn_linked(
            None,
            Conversation,
            ConvArgs {
                conversation_id: conv_id,
                core: self.core.clone(),
                depth: depth.clone(),
                owner: owner.clone(),
                turn: turn.clone(),
            },
            myself.get_cell(),
        )
        .await
        .map_err(EngineError::internal)?;
        self.children
            .insert(actor.get_id(), (Kind::Conversation, conv_id));
        let entry = Entry {
            actor,
            depth,
            owner,
            turn,
        };
        self.core
            .registry
            .conversations
            .insert(conv_id, entry.clone());
        Ok(entry)
    }

    /// Forgets a stopped child; returns its kind, id and (for a conversation) owner and turn in
    /// flight (0: none).
    fn forget(&mut self, cell: &ActorCell) -> Option<(Kind, i64, i64, i64)> {
        let (kind, id) = self.children.remove(&cell.get_id())?;
        let mut owner = 0;
        let mut turn = 0;
        match kind {
            Kind::UserSession => {
                self.core
                    .registry
                    .users
                    .remove_if(&id, |_, e| e.actor.get_id() == cell.get_id());
            }
            Kind::Conversation => {
                if let Some((_, e)) = self
                    .core
                    .registry
                    .conversations
                    .remove_if(&id, |_, e| e.actor.get_id() == cell.get_id())
                {
                    owner = e.owner.load(Ordering::Relaxed);
                    turn = e.turn.load(Ordering::Relaxed);
                }
            }
        }
        Some((kind, id, owner, turn))
    }
}

impl Actor for Supervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = Arc<Core>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupMsg>,
        core: Arc<Core>,
    ) -> Result<SupState, ActorProcessingErr> {
        Ok(SupState {
            core,
            children: HashMap::new(),
            failures: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupMsg>,
        msg: SupMsg,
        state: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::GetUser(id, reply) => {
                let r = state.spawn_user(&myself, id).await;
                let _ = reply.send(r);
            }
            SupMsg::GetConv(id, reply) => {
                let r = state.spawn_conv(&myself, id).await;
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        state: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                // A normal stop (idle, deleted): the next message starts it again.
                state.forget(&cell);
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some((kind, id, owner, turn)) = state.forget(&cell) else {
                    return Ok(());
                };
                tracing::error!(?kind, id, error = %err, "actor failed; restarting");
                state.core.metrics.restart(kind);
                if kind == Kind::Conversation && turn != 0 {
                    // The turn in flight is lost: release what it held and tell the user, so
                    // the client sees an error rather than a silent hang. Only that turn (a
                    // turn of another node holding the conversation is not ours to undo), and
                    // only if it was still open (its end may have been stored just before).
                    let core = state.core.clone();
                    core.tracker.clone().spawn(async move {
                        let aborted = match core.store.abort_turn(id, Some(turn)).await {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::error!(conversation_id = id, error = %e, "abort of lost turn failed");
                                // Its lock stops being renewed: a takeover records the turn.
                                Engine(core.clone()).abandon_turn(id, turn);
                                false
                            }
                        };
                        if aborted && owner != 0 {
                            let engine = Engine(core.clone());
                            let err = EngineError::Internal("the turn was lost; please retry".into());
                            engine.publish(
                                owner,
                                &Frame::ChatError {
                                    id: None,
                                    conversation_id: id,
                                    error: ErrorBody::from(&err),
                                },
                            );
                            core.limits.release(owner, false).await;
                        }
                    });
                }
                // Give up restarting an actor that keeps failing; it is started again on demand.
                let window = state.core.cfg.restart_window;
                let max = state.core.cfg.max_restarts;
                let hist = state.failures.entry((kind, id)).or_default();
                let now = Instant::now();
                hist.push_back(now);
                while hist
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > window)
                {
                    hist.pop_front();
                }
                if hist.len() > max {
                    tracing::error!(?kind, id, "actor keeps failing; not restarting it");
                    return Ok(());
                }
                // Restart: the new actor rebuilds its state from the database.
                let restarted = match kind {
                    Kind::UserSession => state.spawn_user(&myself, id).await.map(|_| ()),
                    Kind::Conversation => state.spawn_conv(&myself, id).await.map(|_| ()),
                };
                if let Err(e) = restarted {
                    tracing::error!(?kind, id, error = %e, "restart failed");
                }
            }
            _ => {}
        }
        Ok(())
    }
}
