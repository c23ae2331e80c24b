//! The user-session actor: one per online user on this node. Owns the user's live connections
//! (every device; each with a bounded outbound queue), admits chat turns against the user's
//! shared limits, and routes them to conversation actors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conversation::{ConvMsg, SendTurn};
use crate::engine::{Core, Engine};

/// One live connection of the user: where its frames go and how to close it.
pub struct Connection {
    pub tx: mpsc::Sender<Bytes>,
    /// Cancelled to close the socket (slow client, account disabled, session signed out).
    pub close: CancellationToken,
    /// The login session the socket authenticated with.
    pub session_id: i64,
}

pub enum UserMsg {
    Attach {
        conn_id: u64,
        conn: Connection,
    },
    Detach {
        conn_id: u64,
    },
    /// A frame for every device of the user on this node.
    Deliver(Bytes),
    /// A chat turn to admit and route.
    Chat {
        conversation_id: i64,
        send: Box<SendTurn>,
    },
    /// Close the connections of one session (signed out), or every one (account disabled).
    Kick {
        session: Option<i64>,
    },
    Tick,
}

pub struct UserSession;

pub struct UserArgs {
    pub user_id: i64,
    pub core: Arc<Core>,
    pub depth: Arc<AtomicUsize>,
}

pub struct UserState {
    user_id: i64,
    core: Arc<Core>,
    depth: Arc<AtomicUsize>,
    conns: HashMap<u64, Connection>,
    last_active: Instant,
}

impl Actor for UserSession {
    type Msg = UserMsg;
    type State = UserState;
    type Arguments = UserArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<UserMsg>,
        args: UserArgs,
    ) -> Result<UserState, ActorProcessingErr> {
        // Idle checks come from the engine's one sweep (`Tick`), not a timer per actor.
        Ok(UserState {
            user_id: args.user_id,
            core: args.core,
            depth: args.depth,
            conns: HashMap::new(),
            last_active: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<UserMsg>,
        msg: UserMsg,
        state: &mut UserState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(msg, UserMsg::Tick) {
            state.depth.fetch_sub(1, Ordering::Relaxed);
            state.last_active = Instant::now();
        }
        match msg {
            UserMsg::Attach { conn_id, conn } => {
                state.conns.insert(conn_id, conn);
            }
            UserMsg::Detach { conn_id } => {
                state.conns.remove(&conn_id);
            }
            UserMsg::Deliver(bytes) => {
                state
                    .conns
                    .retain(|_, c| match c.tx.try_send(bytes.clone()) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // Too slow to read: disconnect rather than grow memory. The client
                            // reconnects and syncs what it missed.
                            tracing::warn!("websocket client too slow; disconnecting");
                            c.close.cancel();
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    });
            }
            UserMsg::Chat {
                conversation_id,
                send,
            } => {
                let engine = Engine(state.core.clone());
                // Per-user limits (shared across nodes) before anything else.
                if let Err(e) = state
                    .core
                    .limits
                    .acquire(state.user_id, send.unlimited)
                    .await
                {
                    let _ = send.ack.send(Err(e));
                    return Ok(());
                }
                let user_id = state.user_id;
                let unlimited = send.unlimited;
                if let Err(e) = engine
                    .send_conversation(conversation_id, ConvMsg::Send(send))
                    .await
                {
                    // The turn never reached the conversation: give its slot back. (The ack
                    // channel went with the message; its receiver sees it closed.)
                    state.core.limits.release(user_id, unlimited).await;
                    tracing::warn!(conversation_id, error = %e, "could not route turn");
                }
            }
            UserMsg::Kick { session } => {
                state.conns.retain(|_, c| {
                    let hit = session.is_none_or(|s| s == c.session_id);
                    if hit {
                        c.close.cancel();
                    }
                    !hit
                });
            }
            UserMsg::Tick => {
                state.conns.retain(|_, c| !c.tx.is_closed());
                if state.conns.is_empty()
                    && state.last_active.elapsed() >= state.core.cfg.actor_idle
                {
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}
