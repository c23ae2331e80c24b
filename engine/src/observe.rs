//! What the engine tells operators (`/admin/actors`, `/metrics`) and the notice of a turn
//! taken over from a stopped node.

use std::sync::atomic::Ordering;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::events::Frame;
use crate::metrics::{ActorCounts, EngineSnapshot, MailboxState, MailboxTop, Restarts, Turns};

impl Engine {
    pub fn snapshot(&self) -> EngineSnapshot {
        let (max_depth, largest) = self.registry.depths(5);
        let m = &self.metrics;
        let completed = m.turns_completed.load(Ordering::Relaxed);
        let failed = m.turns_failed.load(Ordering::Relaxed);
        let cancelled = m.turns_cancelled.load(Ordering::Relaxed);
        EngineSnapshot {
            node_id: self.cfg.node_id.clone(),
            actors: ActorCounts {
                user_session: self.registry.users.len(),
                conversation: self.registry.conversations.len(),
            },
            websocket_connections: m.ws_connections.load(Ordering::Relaxed),
            mailbox: MailboxState {
                max_depth,
                largest: largest
                    .into_iter()
                    .map(|(kind, id, depth)| MailboxTop {
                        kind,
                        id: id.to_string(),
                        depth,
                    })
                    .collect(),
                rejected_total: m.mailbox_rejections.load(Ordering::Relaxed),
            },
            restarts: Restarts {
                user_session: m.restarts_user_session.load(Ordering::Relaxed),
                conversation: m.restarts_conversation.load(Ordering::Relaxed),
            },
            turns: Turns {
                started: m.turns_started.load(Ordering::Relaxed),
                completed,
                failed,
                cancelled,
                taken_over: m.turns_taken_over.load(Ordering::Relaxed),
                per_second: self.turn_rate.rate(completed + failed + cancelled),
                credits_charged: m.credits_charged.load(Ordering::Relaxed),
            },
            llm: self.pool.snapshot(),
        }
    }

    /// The LLM pool's providers as operators see them.
    pub fn providers(&self) -> Vec<crate::pool::ProviderSnapshot> {
        self.pool.snapshot()
    }

    /// A turn of a node that stopped renewing its lease was taken over by this node (stored as
    /// failed): every device of the user is told, on every node, with a retryable code.
    pub fn turn_lost(&self, user_id: i64, conversation_id: i64, client_msg_id: Option<String>) {
        self.metrics
            .turns_taken_over
            .fetch_add(1, Ordering::Relaxed);
        self.reload_conversation(conversation_id);
        let err = EngineError::Unavailable { retry_after: 1 };
        let mut error = crate::events::ErrorBody::from(&err);
        error.message =
            "the node running this turn stopped; the turn is stored as failed, send it again"
                .into();
        self.publish(
            user_id,
            &Frame::ChatError {
                id: client_msg_id,
                conversation_id,
                error,
            },
        );
    }

    /// A turn whose end could not be stored (the database did not answer): handed to the lease
    /// keeper, which stores it as failed once the database answers and frees the conversation.
    pub fn abandon_turn(&self, conversation_id: i64, turn_id: i64) {
        if let Ok(mut v) = self.abandoned.lock() {
            v.push((conversation_id, turn_id));
        }
    }

    /// The abandoned turns not yet handed over (the caller gives back what it could not do).
    pub fn take_abandoned(&self) -> Vec<(i64, i64)> {
        self.abandoned
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}
