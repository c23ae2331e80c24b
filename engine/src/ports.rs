//! Ports: what the engine needs from the outside world, implemented by the server crate
//! (SQL storage, the cache, cross-node fan-out). The database behind [`Store`] is the authority
//! for messages, sequence numbers, turn locks and credits; actors only cache.

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::EngineError;
use crate::events::StoredMessage;
use crate::meter::TurnStatus;

pub type PortResult<T> = Result<T, EngineError>;

/// A model as the engine sees it (prices in credits).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    pub provider: String,
    pub upstream_model: String,
    pub context_window: u64,
    pub max_output_tokens: u64,
    pub prompt_per_1k: f64,
    pub completion_per_1k: f64,
    pub per_request: i64,
    pub fallbacks: Vec<String>,
    pub enabled: bool,
    /// What it can do beyond text.
    pub caps: crate::llm::Caps,
}

impl ModelInfo {
    /// SPEC §6: `ceil(prompt × p/1000 + completion × c/1000) + per_request`.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64, with_per_request: bool) -> i64 {
        let variable = (prompt_tokens as f64) * self.prompt_per_1k / 1000.0
            + (completion_tokens as f64) * self.completion_per_1k / 1000.0;
        // Guard against float noise such as 2.0000000000000004 → 3.
        let variable = ((variable * 1e9).round() / 1e9).ceil().max(0.0) as i64;
        variable
            + if with_per_request {
                self.per_request
            } else {
                0
            }
    }
}

/// The state a conversation actor rebuilds itself from.
#[derive(Clone, Debug)]
pub struct ConversationSnapshot {
    pub id: i64,
    pub user_id: i64,
    pub model: String,
    pub system_prompt: Option<String>,
    pub last_seq: i64,
    /// Recent complete messages, oldest first (enough to fill any context window).
    pub history: Vec<StoredMessage>,
}

pub struct BeginTurn {
    pub conversation_id: i64,
    pub user_id: i64,
    pub turn_id: i64,
    pub node_id: String,
    pub user_message: StoredMessage,
    pub reserve: i64,
    /// The turn lock's first lease; the node renews it while it lives (`storage::lease`).
    pub lock_ms: i64,
}

pub enum BeginOutcome {
    /// The user message is stored (with its `seq`) and the credits are reserved.
    Started {
        user_message: StoredMessage,
        reservation_id: i64,
    },
    /// Another turn holds the conversation (possibly on another node).
    Busy,
    InsufficientCredits,
    /// Unknown, deleted, or another user's conversation.
    NotFound,
    /// `client_msg_id` was already used in this conversation: these are the stored messages.
    Duplicate {
        user_message: StoredMessage,
        assistant_message: Option<StoredMessage>,
    },
}

#[derive(Clone, Debug)]
pub struct FinishTurn {
    pub conversation_id: i64,
    pub user_id: i64,
    pub turn_id: i64,
    pub reservation_id: i64,
    pub reserved: i64,
    /// The assistant message to store (its `seq` is assigned by the store).
    pub assistant: StoredMessage,
    pub charge: i64,
    pub latency_ms: i64,
}

pub struct FinishOutcome {
    pub assistant: StoredMessage,
    pub charged: i64,
    pub balance: i64,
    /// The turn's lock was no longer its own (its node's lease ran out and another node took
    /// the turn over): nothing was stored or charged, the devices were told by that node.
    pub taken_over: bool,
}

/// A stateless call's reservation (`/v1`, toolkit).
#[derive(Clone, Debug)]
pub struct Reserve {
    pub user_id: i64,
    pub amount: i64,
    /// The call's id, kept with the reservation.
    pub ref_id: String,
    /// How long the reservation holds if it is never settled (the node died).
    pub ttl_ms: i64,
}

/// A stateless call's settlement: release the reservation, charge, log the usage.
#[derive(Clone, Debug)]
pub struct SettleCall {
    pub user_id: i64,
    pub reservation_id: i64,
    pub reserved: i64,
    /// The cost to charge (clamped to what the balance can cover).
    pub charge: i64,
    /// Ledger reason (`api`, `toolkit`) and usage kind (`v1`, `toolkit`).
    pub ledger_reason: &'static str,
    pub usage_kind: &'static str,
    pub ref_id: String,
    /// The model that answered.
    pub model: String,
    pub api_key_id: Option<i64>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms: i64,
    pub status: TurnStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub charged: i64,
    pub balance: i64,
}

/// Durable storage used by the engine.
pub trait Store: Send + Sync + 'static {
    fn model(&self, id: &str) -> BoxFuture<'_, PortResult<Option<ModelInfo>>>;
    fn load_conversation(&self, id: i64)
        -> BoxFuture<'_, PortResult<Option<ConversationSnapshot>>>;
    fn begin_turn(&self, t: BeginTurn) -> BoxFuture<'_, PortResult<BeginOutcome>>;
    fn finish_turn(&self, t: FinishTurn) -> BoxFuture<'_, PortResult<FinishOutcome>>;
    /// Undoes a turn lost to a crash: clears its lock, releases its reservation. `true` if the
    /// turn was still open and is now undone.
    fn abort_turn(
        &self,
        conversation_id: i64,
        turn_id: Option<i64>,
    ) -> BoxFuture<'_, PortResult<bool>>;
    fn balance(&self, user_id: i64) -> BoxFuture<'_, PortResult<i64>>;
    /// Reserves credits for a stateless call; `None` when balance minus open reservations
    /// cannot cover it.
    fn reserve(&self, r: Reserve) -> BoxFuture<'_, PortResult<Option<i64>>>;
    fn settle(&self, s: SettleCall) -> BoxFuture<'_, PortResult<Settled>>;
}

/// Shared per-user limits (requests per minute, turns in flight), held across nodes.
pub trait Limits: Send + Sync + 'static {
    /// Counts one model call against the user's per-minute budget and takes an in-flight slot.
    fn acquire(&self, user_id: i64, unlimited: bool) -> BoxFuture<'_, PortResult<()>>;
    /// Gives back the in-flight slot.
    fn release(&self, user_id: i64, unlimited: bool) -> BoxFuture<'_, ()>;
}

/// Reaches the user's devices and turns on other nodes.
pub trait Fanout: Send + Sync + 'static {
    /// Delivers a frame to the user's devices on the other nodes.
    fn publish(&self, user_id: i64, frame: Bytes);
    /// Cancels the user's turn in a conversation on whichever node runs it.
    fn cancel(&self, user_id: i64, conversation_id: i64);
    /// Closes the user's sockets on the other nodes: those of one session, or all.
    fn kick(&self, user_id: i64, session: Option<i64>);
}

/// Single-node fan-out: nothing to do.
pub struct LocalOnly;

impl Fanout for LocalOnly {
    fn publish(&self, _user_id: i64, _frame: Bytes) {}
    fn cancel(&self, _user_id: i64, _conversation_id: i64) {}
    fn kick(&self, _user_id: i64, _session: Option<i64>) {}
}
