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

// ---- the writer task ----------------------------------------------------------------------------

async fn run(pool: AnyPool, dialect: Dialect, mut rx: mpsc::Receiver<Pending>, stats: Arc<Stats>) {
    let mut conn: Option<PoolConnection<Any>> = None;
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let c = match conn.take() {
            Some(c) => c,
            None => match pool.acquire().await {
                Ok(mut c) => {
                    // A long-lived connection of its own; never handed back mid-transaction.
                    c.close_on_drop();
                    c
                }
                Err(e) => {
                    let msg = format!("no database connection: {e}");
                    for p in batch.drain(..) {
                        p.fail(&msg);
                    }
                    continue;
                }
            },
        };
        conn = write_batch(c, dialect, std::mem::take(&mut batch), &stats).await;
        batch.reserve(MAX_BATCH);
    }
}

/// Applies a batch and answers every operation of it. Returns the connection when it is still
/// in a known state (no open transaction).
async fn write_batch(
    mut conn: PoolConnection<Any>,
    dialect: Dialect,
    batch: Vec<Pending>,
    stats: &Stats,
) -> Option<PoolConnection<Any>> {
    let started = Instant::now();
    match attempt(&mut conn, dialect, &batch).await {
        Ok(applied) => {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .batched_ops
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            metrics::histogram!("questech_db_group_commit_ops").record(batch.len() as f64);
            metrics::histogram!("questech_db_group_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            for (p, a) in batch.into_iter().zip(applied) {
                p.answer(Ok(a));
            }
            return Some(conn);
        }
        Err(Failure::Commit(e)) => {
            // Unknown whether it committed: tell everyone, retry nothing, drop the connection.
            let msg = format!("database commit failed: {e}");
            for p in batch {
                p.fail(&msg);
            }
            conn.close_on_drop();
            return None;
        }
        Err(Failure::Statement(e)) => {
            if batch.len() == 1 {
                let mut it = batch.into_iter();
                if let Some(p) = it.next() {
                    let answer = single_failure(&mut conn, &p, e).await;
                    p.answer(answer);
                }
                return Some(conn);
            }
        }
        Err(Failure::Rollback(e)) => {
            let msg = format!("database error: {e}");
            for p in batch {
                p.fail(&msg);
            }
            conn.close_on_drop();
            return None;
        }
    }
    // The batch failed on a statement and was rolled back: apply each operation alone, so the
    // one at fault fails by itself.
    stats.split_batches.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("questech_db_group_commit_splits_total").increment(1);
    let mut ops = batch.into_iter();
    while let Some(p) = ops.next() {
        let one = std::slice::from_ref(&p);
        match attempt(&mut conn, dialect, one).await {
            Ok(mut applied) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                match applied.pop() {
                    Some(a) => p.answer(Ok(a)),
                    None => p.fail("nothing applied"),
                }
            }
            Err(Failure::Statement(e)) => {
                let answer = single_failure(&mut conn, &p, e).await;
                p.answer(answer);
            }
            Err(Failure::Commit(e) | Failure::Rollback(e)) => {
                let msg = format!("database error: {e}");
                p.fail(&msg);
                for rest in ops {
                    rest.fail(&msg);
                }
                conn.close_on_drop();
                return None;
            }
        }
    }
    Some(conn)
}

/// The answer to an operation that failed alone (its transaction is rolled back). A user
/// message whose `client_msg_id` raced in from another device is a duplicate, not an error.
async fn single_failure(conn: &mut AnyConnection, p: &Pending, e: Error) -> Result<Applied> {
    if let (Error::Conflict(_), Pending::Begin(t, _)) = (&e, p) {
        if let Some(cid) = &t.user_message.client_msg_id {
            if let Some((u, a)) =
                super::chat::find_by_client_id(conn, t.conversation_id, cid).await?
            {
                return Ok(Applied::Refused(BeginOutcome::Duplicate {
                    user_message: u,
                    assistant_message: a,
                }));
            }
        }
    }
    Err(e)
}

enum Failure {
    /// A statement failed; the transaction was rolled back.
    Statement(Error),
    /// The rollback itself failed: the connection's state is unknown.
    Rollback(Error),
    /// `COMMIT` failed: whether it happened is unknown.
    Commit(Error),
}

async fn attempt(
    conn: &mut AnyConnection,
    dialect: Dialect,
    batch: &[Pending],
) -> std::result::Result<Vec<Applied>, Failure> {
    let begin = match dialect {
        // Take the write lock now: a deferred transaction that reads first could fail with
        // SQLITE_BUSY instead of waiting.
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::MySql => "BEGIN",
    };
    if let Err(e) = conn.execute(begin).await {
        return Err(Failure::Rollback(e.into()));
    }
    let now = now_ms();
    let mut rows = Rows::default();
    let mut applied = Vec::with_capacity(batch.len());
    let mut result = Ok(());
    for p in batch {
        match apply(conn, dialect, p, now, &mut rows).await {
            Ok(a) => applied.push(a),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = rows.insert(conn).await;
    }
    if let Err(e) = result {
        return match conn.execute("ROLLBACK").await {
            Ok(_) => Err(Failure::Statement(e)),
            Err(r) => Err(Failure::Rollback(r.into())),
        };
    }
    match conn.execute("COMMIT").await {
        Ok(_) => Ok(applied),
        Err(e) => Err(Failure::Commit(e.into())),
    }
}

impl Pending {
    fn fail(self, msg: &str) {
        self.answer(Err(Error::Internal(anyhow::anyhow!("{msg}"))));
    }

    /// Sends the caller its answer (moving the operation's message into it). A caller that
    /// went away no longer needs its answer; what was written stands.
    fn answer(self, a: Result<Applied>) {
        match self {
            Pending::Reserve(_, tx) => {
                let _ = tx.send(a.and_then(|a| match a {
                    Applied::Reserved(r) => Ok(r),
                    _ => Err(mismatch()),
                }));
            }
            Pending::Settle(_, tx) => {
                let _ = tx.send(a.and_then(|a| match a {
                    Applied::Settled(s) => Ok(s),
                    _ => Err(mismatch()),
                }));
            }
            Pending::Begin(t, tx) => {
                let _ = tx.send(a.and_then(|a| match a {
                    Applied::Started {
                        seq,
                        reservation_id,
                    } => {
                        let mut user_message = t.user_message;
                        user_message.seq = seq;
                        Ok(BeginOutcome::Started {
                            user_message,
                            reservation_id,
                        })
                    }
                    Applied::Refused(o) => Ok(o),
                    _ => Err(mismatch()),
                }));
            }
            Pending::Finish(t, tx) => {
                let _ = tx.send(a.and_then(|a| match a {
                    Applied::Finished {
                        seq,
                        charged,
                        balance,
                    } => {
                        let mut assistant = t.assistant;
                        assistant.seq = seq;
                        assistant.credits_charged = charged;
                        Ok(FinishOutcome {
                            assistant,
                            charged,
                            balance,
                        })
                    }
                    Applied::AlreadyFinished(o) => Ok(o),
                    _ => Err(mismatch()),
                }));
            }
        }
    }
}

fn mismatch() -> Error {
    Error::Internal(anyhow::anyhow!("database writer: answer of the wrong kind"))
}

// ---- applying one operation ---------------------------------------------------------------------

async fn apply<'a>(
    conn: &mut AnyConnection,
    dialect: Dialect,
    op: &'a Pending,
    now: i64,
    rows: &mut Rows<'a>,
) -> Result<Applied> {
    match op {
        Pending::Reserve(r, _) => {
            let id = reserve(conn, r.user_id, r.amount.max(0)).await?.then(|| {
                rows.reservation(
                    r.user_id,
                    r.amount.max(0),
                    &r.node_id,
                    &r.ref_id,
                    now,
                    r.ttl_ms,
                )
            });
            Ok(Applied::Reserved(id))
        }
        Pending::Settle(s, _) => settle(conn, dialect, s, now, rows).await,
        Pending::Begin(t, _) => begin(conn, t, now, rows).await,
        Pending::Finish(t, _) => finish(conn, dialect, t, now, rows).await,
    }
}

/// Holds `amount` of the user's spendable balance (credits minus open reservations); `false`
/// when it cannot be covered (nothing changed). The reservation row is added by the caller.
async fn reserve(conn: &mut AnyConnection, user_id: i64, amount: i64) -> Result<bool> {
    let changed = sqlx::query(
        "UPDATE users SET reserved = reserved + ? WHERE id = ? AND credits - reserved >= ?",
    )
    .bind(amount)
    .bind(user_id)
    .bind(amount)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

/// The user's `(credits, reserved)`, row-locked on MySQL (SQLite's writer already holds the
/// database's write lock). Taken first in every operation that touches a user, so every
/// transaction locks the user's row before anything else of theirs.
async fn lock_balance(
    conn: &mut AnyConnection,
    dialect: Dialect,
    user_id: i64,
) -> Result<(i64, i64)> {
    let sql = match dialect {
        Dialect::Sqlite => "SELECT credits, reserved FROM users WHERE id = ?",
        Dialect::MySql => "SELECT credits, reserved FROM users WHERE id = ? FOR UPDATE",
    };
    sqlx::query_as(sql)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::not_found("user"))
}

/// With the user's `(credits, reserved)` as locked by [`lock_balance`] in this transaction:
/// releases the reservation (if still open) and charges `cost`, clamped so that the balance
/// covers the user's other open reservations (`credits >= reserved` always, so never below
/// zero). Returns `(open, charged, balance)`; the caller adds the ledger row.
#[allow(clippy::too_many_arguments)]
async fn release_and_charge(
    conn: &mut AnyConnection,
    (credits, reserved): (i64, i64),
    user_id: i64,
    reservation_id: i64,
    reserved_amount: i64,
    cost: i64,
    charge_when_released_only: bool,
    now: i64,
) -> Result<(bool, i64, i64)> {
    let open = sqlx::query("DELETE FROM credit_reservations WHERE id = ?")
        .bind(reservation_id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        > 0;
    let released = if open { reserved_amount } else { 0 };
    let charge = if charge_when_released_only && !open {
        0
    } else {
        cost.clamp(0, (credits - (reserved - released)).max(0))
    };
    if charge > 0 || released != 0 {
        sqlx::query(
            "UPDATE users SET credits = credits - ?, reserved = reserved - ?, updated_at = ? WHERE id = ?",
        )
        .bind(charge)
        .bind(released)
        .bind(now)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok((open, charge, credits - charge))
}

/// A settlement charges only while its reservation is still open: retried after a commit whose
/// outcome was unknown, it finds the reservation gone and charges nothing a second time.
async fn settle<'a>(
    conn: &mut AnyConnection,
    dialect: Dialect,
    s: &'a SettleOp,
    now: i64,
    rows: &mut Rows<'a>,
) -> Result<Applied> {
    let locked = lock_balance(conn, dialect, s.user_id).await?;
    let (open, charged, balance) = release_and_charge(
        conn,
        locked,
        s.user_id,
        s.reservation_id,
        s.reserved,
        s.charge,
        true,
        now,
    )
    .await?;
    if open {
        if charged > 0 {
            rows.ledger(
                s.user_id,
                -charged,
                balance,
                s.ledger_reason,
                s.ref_id.clone(),
                now,
            );
        }
        rows.usage.push(UsageIns {
            user_id: s.user_id,
            kind: s.usage_kind,
            model: &s.model,
            api_key_id: s.api_key_id,
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            credits: charged,
            latency_ms: s.latency_ms,
            status: s.status.usage_status(),
            created_at: now,
        });
    }
    Ok(Applied::Settled(Settled { charged, balance }))
}

/// Reserves the turn's credits, takes the conversation's cross-node turn lock with the next
/// `seq`, and adds the user message. Refusals change nothing; their order (not found, busy, no
/// credits) is what the client is told.
async fn begin<'a>(
    conn: &mut AnyConnection,
    t: &'a BeginTurn,
    now: i64,
    rows: &mut Rows<'a>,
) -> Result<Applied> {
    let amount = t.reserve.max(0);
    if !reserve(conn, t.user_id, amount).await? {
        return Ok(Applied::Refused(
            match refusal(conn, t.conversation_id, t.user_id, now).await? {
                Some(r) => r,
                None => BeginOutcome::InsufficientCredits,
            },
        ));
    }
    let locked = sqlx::query(
        "UPDATE conversations SET last_seq = last_seq + 1, turn_id = ?, turn_node = ?, turn_expires = ?, updated_at = ? \
         WHERE id = ? AND user_id = ? AND deleted_at IS NULL AND (turn_id IS NULL OR turn_expires < ?)",
    )
    .bind(t.turn_id)
    .bind(&t.node_id)
    .bind(now + t.lock_ms)
    .bind(now)
    .bind(t.conversation_id)
    .bind(t.user_id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if locked == 0 {
        // Give the reservation back (same transaction, so nothing of it is ever visible).
        sqlx::query("UPDATE users SET reserved = reserved - ? WHERE id = ?")
            .bind(amount)
            .bind(t.user_id)
            .execute(&mut *conn)
            .await?;
        let r = refusal(conn, t.conversation_id, t.user_id, now).await?;
        return Ok(Applied::Refused(r.unwrap_or(BeginOutcome::Busy)));
    }
    let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = ?")
        .bind(t.conversation_id)
        .fetch_one(&mut *conn)
        .await?;
    let reservation_id = rows.reservation(
        t.user_id,
        amount,
        &t.node_id,
        &t.turn_id.to_string(),
        now,
        t.lock_ms,
    );
    rows.messages
        .push((&t.user_message, seq, t.user_message.credits_charged));
    Ok(Applied::Started {
        seq,
        reservation_id,
    })
}

/// Why a turn cannot start on this conversation, if it cannot: not found, or busy.
async fn refusal(
    conn: &mut AnyConnection,
    conversation_id: i64,
    user_id: i64,
    now: i64,
) -> Result<Option<BeginOutcome>> {
    let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT turn_id, turn_expires FROM conversations WHERE id = ? AND user_id = ? AND deleted_at IS NULL",
    )
    .bind(conversation_id)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        None => Some(BeginOutcome::NotFound),
        Some((Some(_), Some(expires))) if expires >= now => Some(BeginOutcome::Busy),
        Some(_) => None,
    })
}

/// Frees the turn lock with the assistant message's `seq`, releases the reservation, charges
/// the turn with its ledger row and usage row. A finish retried after a commit whose outcome
/// was unknown finds its message stored and answers with it.
async fn finish<'a>(
    conn: &mut AnyConnection,
    dialect: Dialect,
    t: &'a FinishTurn,
    now: i64,
    rows: &mut Rows<'a>,
) -> Result<Applied> {
    let locked = lock_balance(conn, dialect, t.user_id).await?;
    let mine = sqlx::query(
        "UPDATE conversations SET last_seq = last_seq + 1, turn_id = NULL, turn_node = NULL, turn_expires = NULL, updated_at = ? WHERE id = ? AND turn_id = ?",
    )
    .bind(now)
    .bind(t.conversation_id)
    .bind(t.turn_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if mine == 0 {
        if let Some(stored) = super::chat::message_by_id(conn, t.assistant.id).await? {
            return Ok(Applied::AlreadyFinished(FinishOutcome {
                charged: stored.credits_charged,
                assistant: stored,
                balance: locked.0,
            }));
        }
        // The lock was taken from this turn (expired, or undone after a crash): the reply is
        // still stored after what is there now.
        sqlx::query(
            "UPDATE conversations SET last_seq = last_seq + 1, updated_at = ? WHERE id = ?",
        )
        .bind(now)
        .bind(t.conversation_id)
        .execute(&mut *conn)
        .await?;
    }
    let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = ?")
        .bind(t.conversation_id)
        .fetch_one(&mut *conn)
        .await?;
    let (_, charged, balance) = release_and_charge(
        conn,
        locked,
        t.user_id,
        t.reservation_id,
        t.reserved,
        t.charge,
        false,
        now,
    )
    .await?;
    let m = &t.assistant;
    if charged > 0 {
        rows.ledger(t.user_id, -charged, balance, "chat", m.id.to_string(), now);
    }
    rows.messages.push((m, seq, charged));
    rows.usage.push(UsageIns {
        user_id: t.user_id,
        kind: "chat",
        model: &m.model,
        api_key_id: None,
        prompt_tokens: m.usage.prompt_tokens,
        completion_tokens: m.usage.completion_tokens,
        credits: charged,
        latency_ms: t.latency_ms,
        status: TurnStatus::parse_message_status(&m.status).usage_status(),
        created_at: now,
    });
    Ok(Applied::Finished {
        seq,
        charged,
        balance,
    })
}

// ---- the batch's insert-only rows ---------------------------------------------------------------

struct ReservationIns<'a> {
    id: i64,
    user_id: i64,
    amount: i64,
    node_id: &'a str,
    ref_id: String,
    created_at: i64,
    expires_at: i64,
}

struct LedgerIns<'a> {
    user_id: i64,
    delta: i64,
    balance_after: i64,
    reason: &'a str,
    ref_id: String,
    created_at: i64,
}

struct UsageIns<'a> {
    user_id: i64,
    kind: &'a str,
    model: &'a str,
    api_key_id: Option<i64>,
    prompt_tokens: i64,
    completion_tokens: i64,
    credits: i64,
    latency_ms: i64,
    status: &'a str,
    created_at: i64,
}

/// Rows collected while a batch is applied, inserted together before its commit.
#[derive(Default)]
struct Rows<'a> {
    reservations: Vec<ReservationIns<'a>>,
    /// A message with the `seq` and `credits_charged` it is stored with.
    messages: Vec<(&'a StoredMessage, i64, i64)>,
    ledger: Vec<LedgerIns<'a>>,
    usage: Vec<UsageIns<'a>>,
}

/// `INSERT INTO {head} VALUES (?, …), (?, …)…` for `n` rows of `cols` columns.
fn values_sql(head: &str, cols: usize, n: usize) -> String {
    let mut row = String::with_capacity(cols * 3 + 2);
    row.push('(');
    for i in 0..cols {
        row.push_str(if i == 0 { "?" } else { ", ?" });
    }
    row.push(')');
    let mut sql = String::with_capacity(head.len() + 20 + n * (row.len() + 2));
    sql.push_str("INSERT INTO ");
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&row);
    }
    sql
}

impl<'a> Rows<'a> {
    fn reservation(
        &mut self,
        user_id: i64,
        amount: i64,
        node_id: &'a str,
        ref_id: &str,
        now: i64,
        ttl_ms: i64,
    ) -> i64 {
        let id = crate::ids::next_id();
        self.reservations.push(ReservationIns {
            id,
            user_id,
            amount,
            node_id,
            ref_id: ref_id.to_owned(),
            created_at: now,
            expires_at: now + ttl_ms,
        });
        id
    }

    fn ledger(
        &mut self,
        user_id: i64,
        delta: i64,
        balance_after: i64,
        reason: &'a str,
        ref_id: String,
        now: i64,
    ) {
        self.ledger.push(LedgerIns {
            user_id,
            delta,
            balance_after,
            reason,
            ref_id,
            created_at: now,
        });
    }

    async fn insert(&self, conn: &mut AnyConnection) -> Result<()> {
        for chunk in self.reservations.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                "credit_reservations (id, user_id, amount, node_id, ref_id, created_at, expires_at)",
                7,
                chunk.len(),
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(r.id)
                    .bind(r.user_id)
                    .bind(r.amount)
                    .bind(r.node_id)
                    .bind(r.ref_id.as_str())
                    .bind(r.created_at)
                    .bind(r.expires_at);
            }
            q.execute(&mut *conn).await?;
        }
        for chunk in self.messages.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                &format!("messages ({})", super::chat::MSG_COLS),
                12,
                chunk.len(),
            );
            let mut q = sqlx::query(&sql);
            for (m, seq, credits) in chunk {
                q = q
                    .bind(m.id)
                    .bind(m.conversation_id)
                    .bind(*seq)
                    .bind(m.role.as_str())
                    .bind(m.content.as_str())
                    .bind(m.status.as_str())
                    .bind(m.model.as_str())
                    .bind(m.usage.prompt_tokens)
                    .bind(m.usage.completion_tokens)
                    .bind(*credits)
                    .bind(m.client_msg_id.as_deref())
                    .bind(m.created_at);
            }
            q.execute(&mut *conn).await?;
        }
        for chunk in self.ledger.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                "credit_ledger (id, user_id, delta, balance_after, reason, ref_id, created_at)",
                7,
                chunk.len(),
            );
            let mut q = sqlx::query(&sql);
            for l in chunk {
                q = q
                    .bind(crate::ids::next_id())
                    .bind(l.user_id)
                    .bind(l.delta)
                    .bind(l.balance_after)
                    .bind(l.reason)
                    .bind(l.ref_id.as_str())
                    .bind(l.created_at);
            }
            q.execute(&mut *conn).await?;
        }
        for chunk in self.usage.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                "usage_logs (id, user_id, kind, model, api_key_id, prompt_tokens, completion_tokens, credits, latency_ms, status, created_at)",
                11,
                chunk.len(),
            );
            let mut q = sqlx::query(&sql);
            for u in chunk {
                q = q
                    .bind(crate::ids::next_id())
                    .bind(u.user_id)
                    .bind(u.kind)
                    .bind(u.model)
                    .bind(u.api_key_id)
                    .bind(u.prompt_tokens)
                    .bind(u.completion_tokens)
                    .bind(u.credits)
                    .bind(u.latency_ms)
                    .bind(u.status)
                    .bind(u.created_at);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::values_sql;

    #[test]
    fn values_sql_has_one_placeholder_per_value() {
        assert_eq!(
            values_sql("t (a, b)", 2, 3),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)"
        );
        assert_eq!(values_sql("t (a)", 1, 1), "INSERT INTO t (a) VALUES (?)");
    }
}
