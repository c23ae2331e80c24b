//! Group commit: the hot write paths of every actor and request on this node — credit
//! reservations, settlements, and the two transactions of a chat turn — go through a writer
//! task that applies everything queued since its last commit in **one** transaction and
//! answers each caller only after that transaction committed. Nothing is acknowledged before it
//! is durable; what changes is that many operations share one commit (one fsync, one redo-log
//! flush) and that the insert-only rows of a batch (reservations, messages, ledger rows, usage
//! rows) go in as one multi-row `INSERT` per table.
//!
//! No artificial delay: a batch is whatever queued while the previous one committed, so a lone
//! request is written at once and a busy node gets large batches.
//!
//! Failure isolation: an operation's expected refusals (no credits, conversation busy) change
//! nothing and are answers, not errors. Any statement error aborts the batch; it is rolled back
//! and every operation of it is then applied alone in its own transaction, so one bad operation
//! (say a duplicate `client_msg_id` racing in from another device) fails only itself. An error
//! at `COMMIT` is reported to every operation of the batch and nothing is retried here: the
//! commit may or may not have happened, and both settlement paths are safe to retry (a
//! settlement charges only while its reservation is open; a turn finishes only once).
//!
//! SQLite has one writer per database, so there is one writer task. On MySQL/MariaDB there are
//! several, and a user always goes to the same one: one user's operations stay in order and
//! two writers of a node never wait for the same user's row.

mod batch;
mod ops;
mod rows;

use self::{batch::*, ops::*, rows::*};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};
use tokio::sync::{mpsc, oneshot};

use super::Dialect;
use crate::error::{Error, Result};
use crate::time::now_ms;
use questech_engine::events::StoredMessage;
use questech_engine::meter::TurnStatus;
use questech_engine::ports::{BeginOutcome, BeginTurn, FinishOutcome, FinishTurn};

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 256;
/// Rows per multi-row `INSERT` (well under both databases' bind-parameter limits).
const INSERT_CHUNK: usize = 128;
/// Queued operations per writer before callers wait (back-pressure, not a drop).
const QUEUE: usize = 8192;

/// Handle to the writer tasks of one database.
#[derive(Clone, Debug)]
pub struct Writer {
    shards: Arc<[mpsc::Sender<Pending>]>,
    stats: Arc<Stats>,
}

/// Counters of one database's writers (also exported as Prometheus metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Transactions committed by the writers.
    pub commits: AtomicU64,
    /// Operations answered from a batch that committed as a whole.
    pub batched_ops: AtomicU64,
    /// Batches that failed on a statement and were applied one operation at a time.
    pub split_batches: AtomicU64,
}

/// A credit reservation (see [`super::usage::reserve`]).
#[derive(Debug)]
pub struct ReserveOp {
    pub user_id: i64,
    pub amount: i64,
    pub node_id: String,
    pub ref_id: String,
    pub ttl_ms: i64,
}

/// The end of a one-shot call (see [`super::usage::settle`]).
/// A stateless call's settlement is the engine's own type.
pub use questech_engine::ports::SettleCall as SettleOp;

pub use questech_engine::ports::Settled;

/// A queued operation with the channel its caller awaits the answer on.
enum Pending {
    Reserve(ReserveOp, oneshot::Sender<Result<Option<i64>>>),
    Settle(SettleOp, oneshot::Sender<Result<Settled>>),
    Begin(BeginTurn, oneshot::Sender<Result<BeginOutcome>>),
    Finish(FinishTurn, oneshot::Sender<Result<FinishOutcome>>),
}

/// What applying an operation decided; turned into the caller's answer after the commit
/// (so that message texts are moved, not copied).
enum Applied {
    Reserved(Option<i64>),
    Settled(Settled),
    Started {
        seq: i64,
        reservation_id: i64,
    },
    Refused(BeginOutcome),
    Finished {
        seq: i64,
        charged: i64,
        balance: i64,
    },
    /// A retried finish whose first attempt had committed: the stored reply.
    AlreadyFinished(FinishOutcome),
    /// A finish fenced off: the turn's lock was taken over by another node.
    TakenOver,
}

impl Writer {
    /// Starts `shards` writer tasks on `pool` (at least one). They end when every handle is
    /// dropped, after answering what was queued.
    pub fn spawn(pool: AnyPool, dialect: Dialect, shards: usize) -> Writer {
        let stats = Arc::new(Stats::default());
        let shards: Vec<_> = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run(pool.clone(), dialect, rx, stats.clone()));
                tx
            })
            .collect();
        Writer {
            shards: shards.into(),
            stats,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    async fn submit<T>(
        &self,
        user_id: i64,
        pending: impl FnOnce(oneshot::Sender<Result<T>>) -> Pending,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let shard = &self.shards[user_id.unsigned_abs() as usize % self.shards.len()];
        if shard.send(pending(tx)).await.is_err() {
            return Err(Error::Internal(anyhow::anyhow!(
                "the database writer stopped"
            )));
        }
        rx.await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the database writer stopped")))?
    }

    pub async fn reserve(&self, op: ReserveOp) -> Result<Option<i64>> {
        self.submit(op.user_id, |tx| Pending::Reserve(op, tx)).await
    }

    pub async fn settle(&self, op: SettleOp) -> Result<Settled> {
        self.submit(op.user_id, |tx| Pending::Settle(op, tx)).await
    }

    pub async fn begin_turn(&self, t: BeginTurn) -> Result<BeginOutcome> {
        self.submit(t.user_id, |tx| Pending::Begin(t, tx)).await
    }

    pub async fn finish_turn(&self, t: FinishTurn) -> Result<FinishOutcome> {
        self.submit(t.user_id, |tx| Pending::Finish(t, tx)).await
    }
}
