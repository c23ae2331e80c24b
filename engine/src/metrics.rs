//! Engine metrics kept as it runs: read by `/admin/actors` and `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::pool::ProviderSnapshot;
use crate::registry::Kind;

#[derive(Default)]
pub struct Metrics {
    pub restarts_user_session: AtomicU64,
    pub restarts_conversation: AtomicU64,
    pub ws_connections: AtomicI64,
    pub turns_started: AtomicU64,
    pub turns_completed: AtomicU64,
    pub turns_failed: AtomicU64,
    pub turns_cancelled: AtomicU64,
    /// Turns of nodes that stopped renewing their lease, stored as failed by this node.
    pub turns_taken_over: AtomicU64,
    pub credits_charged: AtomicU64,
    pub mailbox_rejections: AtomicU64,
}

impl Metrics {
    pub fn restart(&self, kind: Kind) {
        match kind {
            Kind::UserSession => &self.restarts_user_session,
            Kind::Conversation => &self.restarts_conversation,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct MailboxTop {
    pub kind: Kind,
    pub id: String,
    pub depth: usize,
}

/// The live engine state (SPEC §11 `GET /admin/actors`).
#[derive(Serialize, Debug, Clone)]
pub struct EngineSnapshot {
    pub node_id: String,
    pub actors: ActorCounts,
    pub websocket_connections: i64,
    pub mailbox: MailboxState,
    pub restarts: Restarts,
    pub turns: Turns,
    pub llm: Vec<ProviderSnapshot>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ActorCounts {
    pub user_session: usize,
    pub conversation: usize,
}

#[derive(Serialize, Debug, Clone)]
pub struct MailboxState {
    pub max_depth: usize,
    pub largest: Vec<MailboxTop>,
    pub rejected_total: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Restarts {
    pub user_session: u64,
    pub conversation: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Turns {
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Turns of stopped nodes this node stored as failed (lease takeover).
    pub taken_over: u64,
    pub per_second: f64,
    pub credits_charged: u64,
}

/// Turns per second over the time between two snapshots.
#[derive(Default)]
pub struct RateMeter {
    last: std::sync::Mutex<Option<(Instant, u64)>>,
}

impl RateMeter {
    pub fn rate(&self, total: u64) -> f64 {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return 0.0;
        };
        let r = match *last {
            Some((t, n)) if now > t => {
                (total.saturating_sub(n)) as f64 / now.duration_since(t).as_secs_f64()
            }
            _ => 0.0,
        };
        *last = Some((now, total));
        r
    }
}
