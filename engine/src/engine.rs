//! The engine: the registry, the supervisor, the LLM pool and the ports, behind one handle the
//! front door uses. The front door holds no chat state: it calls these methods.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conversation::{ConvMsg, SendTurn, TurnHandle};
use crate::error::EngineError;
use crate::events::Frame;
use crate::metrics::{Metrics, RateMeter};
use crate::pool::Pool;
use crate::ports::{Fanout, Limits, Store};
use crate::registry::{Entry, Registry};
use crate::user_session::UserMsg;

use crate::supervisor::{SupMsg, Supervisor};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub node_id: String,
    /// Idle actors stop after this.
    pub actor_idle: Duration,
    /// How long a turn's cross-node lock holds if its node dies mid-turn.
    pub turn_lock: Duration,
    /// Outbound frames queued per WebSocket before the client counts as too slow.
    pub ws_queue: usize,
    /// Messages waiting in one actor's mailbox above which new work is refused.
    pub mailbox_limit: usize,
    /// Restarts of one actor within `restart_window` after which the supervisor gives up.
    pub max_restarts: usize,
    pub restart_window: Duration,
    /// How long a stateless call's reservation holds if it is never settled (its node died):
    /// one lifetime for `/v1` and toolkit, longer than the longest call.
    pub reservation_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: "node".into(),
            actor_idle: Duration::from_secs(300),
            turn_lock: Duration::from_secs(600),
            ws_queue: 1024,
            mailbox_limit: 10_000,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            reservation_ttl: Duration::from_secs(600),
        }
    }
}

/// The engine's shared state. Private: the front door uses [`Engine`]'s methods.
pub struct Core {
    /// Limits and timings.
    pub(crate) cfg: EngineConfig,
    /// The database: messages, seq, turn locks, credits (the authority).
    pub(crate) store: Arc<dyn Store>,
    /// Per-user limits shared by the nodes.
    pub(crate) limits: Arc<dyn Limits>,
    /// The other nodes: frames, cancels, kicks.
    pub(crate) fanout: Arc<dyn Fanout>,
    /// All outbound concurrency to model providers.
    pub(crate) pool: Pool,
    /// The actors running on this node.
    pub(crate) registry: Registry,
    /// Counters operators see.
    pub(crate) metrics: Metrics,
    /// Work shutdown waits for (turn tasks, finalisers).
    pub(crate) tracker: TaskTracker,
    /// Cancelled at shutdown.
    pub(crate) shutdown: CancellationToken,
    pub(crate) turn_rate: RateMeter,
    /// Turns whose end could not be stored (`(conversation_id, turn_id)`): the lease keeper
    /// stores them as failed once the database answers ([`Engine::take_abandoned`]).
    pub(crate) abandoned: std::sync::Mutex<Vec<(i64, i64)>>,
    supervisor: OnceLock<ActorRef<SupMsg>>,
}

/// Cheap-to-clone handle to the engine.
#[derive(Clone)]
pub struct Engine(pub(crate) Arc<Core>);

impl std::ops::Deref for Engine {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.0
    }
}

impl Engine {
    pub async fn start(
        cfg: EngineConfig,
        store: Arc<dyn Store>,
        limits: Arc<dyn Limits>,
        fanout: Arc<dyn Fanout>,
        pool: Pool,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Engine, ractor::SpawnErr> {
        let core = Arc::new(Core {
            cfg,
            store,
            limits,
            fanout,
            pool,
            registry: Registry::default(),
            metrics: Metrics::default(),
            tracker,
            shutdown,
            turn_rate: RateMeter::default(),
            abandoned: std::sync::Mutex::new(Vec::new()),
            supervisor: OnceLock::new(),
        });
        let (sup, _) = Actor::spawn(None, Supervisor, core.clone()).await?;
        let _ = core.supervisor.set(sup);
        let engine = Engine(core);
        engine.start_idle_sweep();
        Ok(engine)
    }

    /// One task ticks every live actor now and then so idle ones stop themselves: cheaper than
    /// a timer task per actor (which would cost every idle user memory and a wake-up).
    fn start_idle_sweep(&self) {
        let every =
            (self.cfg.actor_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let core = Arc::downgrade(&self.0);
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let Some(core) = core.upgrade() else { return };
                // Ticks are not counted in the mailbox depth (handlers skip them).
                for e in core.registry.users.iter() {
                    let _ = e.actor.cast(UserMsg::Tick);
                }
                for e in core.registry.conversations.iter() {
                    let _ = e.actor.cast(ConvMsg::Tick);
                }
            }
        });
    }

    fn supervisor(&self) -> Result<&ActorRef<SupMsg>, EngineError> {
        self.supervisor
            .get()
            .ok_or_else(|| EngineError::Internal("engine not started".into()))
    }

    /// The user's session actor on this node, started if needed.
    pub async fn user(&self, user_id: i64) -> Result<Entry<UserMsg>, EngineError> {
        if let Some(e) = self.registry.user(user_id) {
            return Ok(e);
        }
        let (tx, rx) = oneshot::channel();
        self.supervisor()?
            .cast(SupMsg::GetUser(user_id, tx))
            .map_err(|_| EngineError::Internal("supervisor stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Internal("supervisor dropped request".into()))?
    }

    /// The conversation's actor on this node, started if needed.
    pub async fn conversation(&self, conv_id: i64) -> Result<Entry<ConvMsg>, EngineError> {
        if let Some(e) = self.registry.conversation(conv_id) {
            return Ok(e);
        }
        let (tx, rx) = oneshot::channel();
        self.supervisor()?
            .cast(SupMsg::GetConv(conv_id, tx))
            .map_err(|_| EngineError::Internal("supervisor stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Internal("supervisor dropped request".into()))?
    }

    /// Sends to a conversation actor, starting it if needed (also if it just stopped).
    pub async fn send_conversation(&self, conv_id: i64, msg: ConvMsg) -> Result<(), EngineError> {
        self.send_to(&self.registry.conversations, conv_id, msg, || {
            self.conversation(conv_id)
        })
        .await
    }

    /// Sends to a user session actor, starting it if needed (also if it just stopped).
    pub async fn send_user(&self, user_id: i64, msg: UserMsg) -> Result<(), EngineError> {
        self.send_to(&self.registry.users, user_id, msg, || self.user(user_id))
            .await
    }

    /// Sends `msg` to the actor `get` finds or starts, refusing it above the mailbox limit. An
    /// actor that stopped between lookup and send (idle stop) is forgotten and started again.
    async fn send_to<M, F, Fut>(
        &self,
        map: &DashMap<i64, Entry<M>>,
        id: i64,
        mut msg: M,
        get: F,
    ) -> Result<(), EngineError>
    where
        M: ractor::Message,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Entry<M>, EngineError>>,
    {
        for _ in 0..3 {
            let entry = get().await?;
            if entry.depth() >= self.cfg.mailbox_limit {
                self.metrics
                    .mailbox_rejections
                    .fetch_add(1, Ordering::Relaxed);
                return Err(EngineError::Overloaded { retry_after: 1 });
            }
            match entry.send(msg) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    map.remove_if(&id, |_, e| e.actor.get_id() == entry.actor.get_id());
                    msg = back;
                }
            }
        }
        Err(EngineError::Internal("actor unavailable".into()))
    }

    /// Starts a chat turn for a user. The turn's first answer (stored user message, or a
    /// rejection) comes on `ack`; later updates on `updates`.
    pub async fn send_chat(
        &self,
        conversation_id: i64,
        turn: SendTurnRequest,
    ) -> Result<TurnHandle, EngineError> {
        let (ack_tx, ack_rx) = oneshot::channel();
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let send = SendTurn {
            user_id: turn.user_id,
            unlimited: turn.unlimited,
            content: turn.content,
            client_msg_id: turn.client_msg_id,
            model: turn.model,
            extras: turn.extras,
            ack: ack_tx,
            updates: Some(up_tx),
        };
        self.send_user(
            turn.user_id,
            UserMsg::Chat {
                conversation_id,
                send: Box::new(send),
            },
        )
        .await?;
        Ok(TurnHandle {
            ack: ack_rx,
            updates: up_rx,
        })
    }

    /// Delivers a frame to the user's devices on this node and, through the fan-out, on the
    /// others.
    pub fn publish(&self, user_id: i64, frame: &Frame) {
        let bytes = frame.to_bytes();
        self.deliver_local(user_id, bytes.clone());
        self.fanout.publish(user_id, bytes);
    }

    /// Delivers a frame to this node's devices of the user only (used for frames that came
    /// from another node).
    pub fn deliver_local(&self, user_id: i64, bytes: Bytes) {
        if let Some(e) = self.registry.user(user_id) {
            let _ = e.send(UserMsg::Deliver(bytes));
        }
    }

    /// Closes the user's sockets on this node: those of `session`, or all of them.
    pub fn kick_local(&self, user_id: i64, session: Option<i64>) {
        if let Some(e) = self.registry.user(user_id) {
            let _ = e.send(UserMsg::Kick { session });
        }
    }

    /// Closes every socket of the user, on this node and every other (account disabled, role
    /// changed).
    pub fn kick(&self, user_id: i64) {
        self.kick_local(user_id, None);
        self.fanout.kick(user_id, None);
    }

    /// Closes the sockets opened with one login session, on this node and every other (signed
    /// out, its refresh token reused, revoked by a password change).
    pub fn kick_session(&self, user_id: i64, session_id: i64) {
        self.kick_local(user_id, Some(session_id));
        self.fanout.kick(user_id, Some(session_id));
    }

    /// Cancels the user's turn in a conversation, wherever it runs.
    pub fn cancel(&self, user_id: i64, conv_id: i64) {
        self.cancel_local(user_id, conv_id);
        self.fanout.cancel(user_id, conv_id);
    }

    /// Cancels the user's turn in a conversation if it runs on this node.
    pub fn cancel_local(&self, user_id: i64, conv_id: i64) {
        if let Some(e) = self.registry.conversation(conv_id) {
            let _ = e.send(ConvMsg::Cancel { user_id });
        }
    }

    /// Stops a conversation's actor (conversation deleted).
    pub fn stop_conversation(&self, conv_id: i64) {
        if let Some((_, e)) = self.registry.conversations.remove(&conv_id) {
            e.actor.stop(Some("deleted".into()));
        }
    }

    /// Ends every turn in flight on this node as failed (shutdown, after the grace period).
    pub fn abort_all_turns(&self) {
        for e in self.registry.conversations.iter() {
            let _ = e.send(ConvMsg::Abort);
        }
    }

    /// Ends as failed `unavailable` every turn in flight on this node that began before
    /// `before`: the node went longer than a lease without renewing, so their locks may have been
    /// taken over (their ends are fenced either way). Turns begun since hold fresh leases.
    pub fn abort_turns_started_before(&self, before: std::time::Instant) {
        for e in self.registry.conversations.iter() {
            let _ = e.send(ConvMsg::AbortStartedBefore(before));
        }
    }

    /// Invalidates a conversation actor's cached state (model or title changed).
    pub fn reload_conversation(&self, conv_id: i64) {
        if let Some(e) = self.registry.conversation(conv_id) {
            let _ = e.send(ConvMsg::Reload);
        }
    }

    /// Outbound frames queued per WebSocket before the client counts as too slow.
    pub fn ws_queue(&self) -> usize {
        self.cfg.ws_queue
    }

    /// Counts a WebSocket opened (`true`) or closed (`false`).
    pub fn socket(&self, opened: bool) {
        if opened {
            self.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Tells the user's session actor on this node that a connection closed.
    pub fn detach(&self, user_id: i64, conn_id: u64) {
        if let Some(e) = self.registry.user(user_id) {
            let _ = e.send(UserMsg::Detach { conn_id });
        }
    }

    /// Test hook: makes a conversation's actor panic, to prove supervision. `false` if it does
    /// not run here. Not reachable from the network.
    #[doc(hidden)]
    pub fn poison_conversation(&self, conv_id: i64) -> bool {
        self.registry
            .conversation(conv_id)
            .is_some_and(|e| e.send(ConvMsg::Poison).is_ok())
    }

    /// Whether a conversation's actor runs on this node (operators, tests).
    pub fn runs_conversation(&self, conv_id: i64) -> bool {
        self.registry.conversation(conv_id).is_some()
    }

    /// Whether a user's session actor runs on this node (operators, tests).
    pub fn runs_user(&self, user_id: i64) -> bool {
        self.registry.user(user_id).is_some()
    }

    /// Number of turns in flight on this node (for graceful shutdown).
    pub fn turns_in_flight(&self) -> u64 {
        let m = &self.metrics;
        m.turns_started.load(Ordering::Relaxed).saturating_sub(
            m.turns_completed.load(Ordering::Relaxed)
                + m.turns_failed.load(Ordering::Relaxed)
                + m.turns_cancelled.load(Ordering::Relaxed),
        )
    }
}

/// What the front door passes to start a turn.
pub struct SendTurnRequest {
    pub user_id: i64,
    /// Role `admin`: no per-user limits.
    pub unlimited: bool,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub model: Option<String>,
    /// Images, a wire form, per-turn fields (the Responses API), if any.
    pub extras: Option<Box<crate::conversation::TurnExtras>>,
}
