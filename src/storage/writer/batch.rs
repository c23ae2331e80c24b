//! The writer task: batches, their transaction, and the one-by-one retry after a failed batch.

use super::*;
use questech_engine::EngineError;

// ---- the writer task ----------------------------------------------------------------------------

pub(super) async fn run(
    pool: AnyPool,
    dialect: Dialect,
    mut rx: mpsc::Receiver<Pending>,
    stats: Arc<Stats>,
) {
    let mut conn: Option<PoolConnection<Any>> = None;
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut todo = std::mem::take(&mut batch);
        // A connection kept from an earlier batch may have broken while idle (the database
        // restarted, a proxy dropped it): when its BEGIN fails nothing was sent, so the batch
        // goes once more on a fresh connection instead of failing.
        let mut reused = conn.is_some();
        loop {
            let c = match conn.take() {
                Some(c) => c,
                None => match pool.acquire().await {
                    Ok(mut c) => {
                        // A long-lived connection of its own; never handed back mid-transaction.
                        c.close_on_drop();
                        c
                    }
                    Err(e) => {
                        // What queued up meanwhile would wait for the same pool in turn, each
                        // for its own timeout: it gets the answer now, so no operation waits
                        // much longer than one timeout for its 503.
                        let e = Error::from(e);
                        while let Ok(p) = rx.try_recv() {
                            todo.push(p);
                        }
                        for p in todo.drain(..) {
                            p.fail("no database connection", &e);
                        }
                        break;
                    }
                },
            };
            match write_batch(c, dialect, todo, &stats).await {
                Done(c) => {
                    conn = c;
                    break;
                }
                NotBegun(again, _) if reused => {
                    todo = again;
                    reused = false;
                }
                NotBegun(failed, e) => {
                    for p in failed {
                        p.fail("database error", &e);
                    }
                    break;
                }
            }
        }
        batch.reserve(MAX_BATCH);
    }
}

/// What became of a batch given to [`write_batch`].
pub(super) enum BatchEnd {
    /// Every operation was answered; the connection, when it is still in a known state.
    Done(Option<PoolConnection<Any>>),
    /// `BEGIN` failed: nothing of the batch was sent, nobody was answered, the connection is
    /// dropped.
    NotBegun(Vec<Pending>, Error),
}
use BatchEnd::{Done, NotBegun};

/// Applies a batch and answers every operation of it, unless it could not even begin.
pub(super) async fn write_batch(
    mut conn: PoolConnection<Any>,
    dialect: Dialect,
    batch: Vec<Pending>,
    stats: &Stats,
) -> BatchEnd {
    let started = Instant::now();
    match attempt_again_on_deadlock(&mut conn, dialect, &batch).await {
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
            return Done(Some(conn));
        }
        Err(Failure::Begin(e)) => {
            conn.close_on_drop();
            return NotBegun(batch, e);
        }
        Err(Failure::Commit(e)) => {
            // Unknown whether it committed: tell everyone, retry nothing, drop the connection.
            for p in batch {
                p.fail("database commit failed", &e);
            }
            conn.close_on_drop();
            return Done(None);
        }
        Err(Failure::Statement(e)) => {
            if batch.len() == 1 {
                let mut it = batch.into_iter();
                if let Some(p) = it.next() {
                    let answer = single_failure(&mut conn, &p, e).await;
                    p.answer(answer);
                }
                return Done(Some(conn));
            }
        }
        Err(Failure::Rollback(e)) => {
            for p in batch {
                p.fail("database error", &e);
            }
            conn.close_on_drop();
            return Done(None);
        }
    }
    // The batch failed on a statement and was rolled back: apply each operation alone, so the
    // one at fault fails by itself.
    stats.split_batches.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("questech_db_group_commit_splits_total").increment(1);
    let mut ops = batch.into_iter();
    while let Some(p) = ops.next() {
        let one = std::slice::from_ref(&p);
        match attempt_again_on_deadlock(&mut conn, dialect, one).await {
            Ok(mut applied) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                match applied.pop() {
                    Some(a) => p.answer(Ok(a)),
                    None => p.answer(Err(Error::Internal(anyhow::anyhow!("nothing applied")))),
                }
            }
            Err(Failure::Statement(e)) => {
                let answer = single_failure(&mut conn, &p, e).await;
                p.answer(answer);
            }
            Err(Failure::Begin(e) | Failure::Commit(e) | Failure::Rollback(e)) => {
                p.fail("database error", &e);
                for rest in ops {
                    rest.fail("database error", &e);
                }
                conn.close_on_drop();
                return Done(None);
            }
        }
    }
    Done(Some(conn))
}

/// The answer to an operation that failed alone (its transaction is rolled back). A user
/// message whose `client_msg_id` raced in from another device is a duplicate, not an error.
pub(super) async fn single_failure(
    conn: &mut AnyConnection,
    p: &Pending,
    e: Error,
) -> Result<Applied> {
    if let (Error::Conflict(_), Pending::Begin(t, _)) = (&e, p) {
        if let Some(cid) = &t.user_message.client_msg_id {
            if let Some((u, a)) =
                super::super::chat::find_by_client_id(conn, t.conversation_id, cid).await?
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

pub(super) enum Failure {
    /// `BEGIN` failed: nothing was sent.
    Begin(Error),
    /// A statement failed; the transaction was rolled back.
    Statement(Error),
    /// The rollback itself failed: the connection's state is unknown.
    Rollback(Error),
    /// `COMMIT` failed: whether it happened is unknown.
    Commit(Error),
}

/// How many times a transaction chosen as a deadlock victim is applied again.
const DEADLOCK_RETRIES: usize = 2;

/// [`attempt`], applied again when MySQL picked it as a deadlock victim: InnoDB rolled it back
/// whole, so nothing of it stands and trying again is safe. (A turn beginning while a takeover
/// records a lost turn of the same conversation locks the same rows in another order.)
async fn attempt_again_on_deadlock(
    conn: &mut AnyConnection,
    dialect: Dialect,
    batch: &[Pending],
) -> std::result::Result<Vec<Applied>, Failure> {
    let mut tries = 0;
    loop {
        match attempt(conn, dialect, batch).await {
            Err(Failure::Statement(e)) if tries < DEADLOCK_RETRIES && is_deadlock(&e) => {
                tries += 1;
                tracing::debug!(error = %e, "deadlock victim; applying the transaction again");
            }
            other => return other,
        }
    }
}

/// SQLSTATE 40001: the transaction was rolled back as a deadlock victim (or serialization
/// failure) and may be tried again.
fn is_deadlock(e: &Error) -> bool {
    let Error::Internal(e) = e else {
        return false;
    };
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Database(db)) if db.code().as_deref() == Some("40001")
        )
    })
}

pub(super) async fn attempt(
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
        return Err(Failure::Begin(e.into()));
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
    /// Answers the failure `e` of the batch: an outage (the database does not answer) as
    /// such — 503 `unavailable`, so clients retry — anything else as internal.
    pub(super) fn fail(self, context: &str, e: &Error) {
        let answer = match e {
            Error::Engine(EngineError::Unavailable { retry_after }) => {
                Error::Engine(EngineError::Unavailable {
                    retry_after: *retry_after,
                })
            }
            _ => Error::Internal(anyhow::anyhow!("{context}: {e}")),
        };
        self.answer(Err(answer));
    }

    /// Sends the caller its answer (moving the operation's message into it). A caller that
    /// went away no longer needs its answer; what was written stands.
    pub(super) fn answer(self, a: Result<Applied>) {
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
                            taken_over: false,
                        })
                    }
                    Applied::AlreadyFinished(o) => Ok(o),
                    Applied::TakenOver => Ok(FinishOutcome {
                        assistant: t.assistant,
                        charged: 0,
                        balance: 0,
                        taken_over: true,
                    }),
                    _ => Err(mismatch()),
                }));
            }
        }
    }
}

pub(super) fn mismatch() -> Error {
    Error::Internal(anyhow::anyhow!("database writer: answer of the wrong kind"))
}
