//! What must hold in the database after every cluster case, once nothing is in flight (SPEC §6,
//! §13, issue 13), checked with SQL over the whole test database:
//!
//! - every user: `credits == SUM(credit_ledger.delta)`, `credits >= 0`, `reserved == 0`;
//! - every user's ledger: `seq` is 1, 2, 3… up to `users.ledger_seq`, and each row's
//!   `balance_after` is the previous row's plus its `delta` (the last one is `credits`);
//! - no row in `credit_reservations`, no conversation with `turn_id` set;
//! - every conversation's messages have `seq` 1..=`last_seq` without gaps, and a final status;
//! - no double charge: one `chat` ledger row per charged assistant message, of minus its
//!   `credits_charged`, and no `chat` row without its message.

use std::time::{Duration, Instant};

use sqlx::AnyPool;

use crate::common::TestApp;

/// How long [`check`] waits for turns still being stored before it asserts.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

/// What the check looked at, so a case can assert that it was not vacuous.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub users: usize,
    pub conversations: usize,
    pub messages: i64,
    pub ledger_rows: usize,
    /// Assistant messages with `credits_charged > 0`.
    pub charged_messages: i64,
}

pub async fn check(app: &TestApp) -> Summary {
    let db = &app.state.db.write;
    wait_quiet(db).await;
    let mut sum = Summary::default();

    let users: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT id, credits, reserved, ledger_seq, \
         CAST(COALESCE((SELECT SUM(delta) FROM credit_ledger l WHERE l.user_id = u.id), 0) AS SIGNED) \
         FROM users u",
    )
    .fetch_all(db)
    .await
    .expect("select users");
    sum.users = users.len();
    let ledger: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT user_id, seq, delta, balance_after FROM credit_ledger ORDER BY user_id, seq",
    )
    .fetch_all(db)
    .await
    .expect("select ledger");
    sum.ledger_rows = ledger.len();
    for (uid, credits, reserved, ledger_seq, total) in users {
        assert_eq!(credits, total, "user {uid}: credits == sum(ledger.delta)");
        assert!(credits >= 0, "user {uid}: credits >= 0, got {credits}");
        assert_eq!(reserved, 0, "user {uid}: nothing reserved");
        let rows: Vec<_> = ledger.iter().filter(|r| r.0 == uid).collect();
        assert_eq!(
            rows.len() as i64,
            ledger_seq,
            "user {uid}: ledger_seq == rows"
        );
        let mut balance = 0;
        for (i, &&(_, seq, delta, after)) in rows.iter().enumerate() {
            assert_eq!(
                seq,
                i as i64 + 1,
                "user {uid}: ledger seq gap-free: {rows:?}"
            );
            balance += delta;
            assert_eq!(
                after, balance,
                "user {uid}: balance_after of seq {seq}: {rows:?}"
            );
        }
        assert_eq!(
            balance, credits,
            "user {uid}: the last balance_after is the balance"
        );
    }

    let open: i64 = scalar(db, "SELECT COUNT(*) FROM credit_reservations").await;
    assert_eq!(open, 0, "no open reservation");
    let locked: i64 = scalar(
        db,
        "SELECT COUNT(*) FROM conversations WHERE turn_id IS NOT NULL",
    )
    .await;
    assert_eq!(locked, 0, "no conversation locked by a turn");

    let convs: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT c.id, c.last_seq, COUNT(m.id), COALESCE(MIN(m.seq), 0), COALESCE(MAX(m.seq), 0) \
         FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id \
         GROUP BY c.id, c.last_seq",
    )
    .fetch_all(db)
    .await
    .expect("select conversations");
    sum.conversations = convs.len();
    for (id, last_seq, n, min, max) in convs {
        // Unique (conversation_id, seq) plus count == max == last_seq and min == 1: 1..=last_seq.
        let expected_min = if n == 0 { 0 } else { 1 };
        assert_eq!(
            (n, min, max),
            (last_seq, expected_min, last_seq),
            "conversation {id}: messages seq 1..=last_seq ({last_seq}) without gaps"
        );
        sum.messages += n;
    }
    let unfinished: i64 = scalar(
        db,
        "SELECT COUNT(*) FROM messages WHERE status NOT IN ('complete', 'cancelled', 'failed')",
    )
    .await;
    assert_eq!(unfinished, 0, "every message has a final status");

    sum.charged_messages = scalar(
        db,
        "SELECT COUNT(*) FROM messages WHERE role = 'assistant' AND credits_charged > 0",
    )
    .await;
    let mismatched: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT m.id, m.credits_charged, \
         CAST((SELECT COUNT(*) FROM credit_ledger l WHERE l.reason = 'chat' \
               AND CAST(l.ref_id AS SIGNED) = m.id AND l.delta = -m.credits_charged) AS SIGNED) AS n \
         FROM messages m WHERE m.role = 'assistant' AND m.credits_charged > 0 \
         HAVING n <> 1",
    )
    .fetch_all(db)
    .await
    .expect("charged messages vs ledger");
    assert!(
        mismatched.is_empty(),
        "charged assistant messages without exactly one matching ledger row (id, charged, rows): {mismatched:?}"
    );
    let orphans: i64 = scalar(
        db,
        "SELECT COUNT(*) FROM credit_ledger l WHERE l.reason = 'chat' AND NOT EXISTS \
         (SELECT 1 FROM messages m WHERE m.id = CAST(l.ref_id AS SIGNED) AND m.credits_charged > 0)",
    )
    .await;
    assert_eq!(orphans, 0, "every chat charge belongs to a charged message");
    sum
}

/// Waits until no turn holds a lock or a reservation (turns still being stored settle), for at
/// most [`SETTLE_WITHIN`]; the assertions then report whatever is left.
async fn wait_quiet(db: &AnyPool) {
    let t = Instant::now();
    while t.elapsed() < SETTLE_WITHIN {
        let busy: i64 = scalar(
            db,
            "SELECT (SELECT COUNT(*) FROM credit_reservations) \
             + (SELECT COUNT(*) FROM conversations WHERE turn_id IS NOT NULL)",
        )
        .await;
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scalar(db: &AnyPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
