//! Applying one operation inside the batch's transaction.

use super::*;

// ---- applying one operation ---------------------------------------------------------------------

pub(super) async fn apply<'a>(
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
pub(super) async fn reserve(conn: &mut AnyConnection, user_id: i64, amount: i64) -> Result<bool> {
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

/// The user's `(credits, reserved, ledger_seq)`, row-locked on MySQL (SQLite's writer already
/// holds the database's write lock). Taken first in every operation that touches a user, so
/// every transaction locks the user's row before anything else of theirs — which is also what
/// makes `ledger_seq + 1` the next ledger row's place in commit order.
pub(super) async fn lock_balance(
    conn: &mut AnyConnection,
    dialect: Dialect,
    user_id: i64,
) -> Result<(i64, i64, i64)> {
    let sql = match dialect {
        Dialect::Sqlite => "SELECT credits, reserved, ledger_seq FROM users WHERE id = ?",
        Dialect::MySql => "SELECT credits, reserved, ledger_seq FROM users WHERE id = ? FOR UPDATE",
    };
    sqlx::query_as(sql)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::not_found("user"))
}

/// With the user's `(credits, reserved, ledger_seq)` as locked by [`lock_balance`] in this
/// transaction: releases the reservation (if still open) and charges `cost`, clamped so that the
/// balance covers the user's other open reservations (`credits >= reserved` always, so never
/// below zero). Returns `(open, charged, balance, ledger seq)`; a charge takes the next ledger
/// seq, and the caller adds the ledger row with it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn release_and_charge(
    conn: &mut AnyConnection,
    (credits, reserved, ledger_seq): (i64, i64, i64),
    user_id: i64,
    reservation_id: i64,
    reserved_amount: i64,
    cost: i64,
    charge_when_released_only: bool,
    now: i64,
) -> Result<(bool, i64, i64, i64)> {
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
    let seq_step = i64::from(charge > 0);
    if charge > 0 || released != 0 {
        sqlx::query(
            "UPDATE users SET credits = credits - ?, reserved = reserved - ?, ledger_seq = ledger_seq + ?, updated_at = ? WHERE id = ?",
        )
        .bind(charge)
        .bind(released)
        .bind(seq_step)
        .bind(now)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok((open, charge, credits - charge, ledger_seq + seq_step))
}

/// A settlement charges only while its reservation is still open: retried after a commit whose
/// outcome was unknown, it finds the reservation gone and charges nothing a second time.
pub(super) async fn settle<'a>(
    conn: &mut AnyConnection,
    dialect: Dialect,
    s: &'a SettleOp,
    now: i64,
    rows: &mut Rows<'a>,
) -> Result<Applied> {
    let locked = lock_balance(conn, dialect, s.user_id).await?;
    let (open, charged, balance, ledger_seq) = release_and_charge(
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
                (-charged, balance, ledger_seq),
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
pub(super) async fn begin<'a>(
    conn: &mut AnyConnection,
    t: &'a BeginTurn,
    now: i64,
    rows: &mut Rows<'a>,
) -> Result<Applied> {
    let amount = t.reserve.max(0);
    if !reserve(conn, t.user_id, amount).await? {
        return Ok(Applied::Refused(
            match refusal(conn, t.conversation_id, t.user_id).await? {
                Some(r) => r,
                None => BeginOutcome::InsufficientCredits,
            },
        ));
    }
    let locked = sqlx::query(
        "UPDATE conversations SET last_seq = last_seq + 1, turn_id = ?, turn_node = ?, turn_expires = ?, updated_at = ? \
         WHERE id = ? AND user_id = ? AND deleted_at IS NULL AND turn_id IS NULL",
    )
    .bind(t.turn_id)
    .bind(&t.node_id)
    .bind(now + t.lock_ms)
    .bind(now)
    .bind(t.conversation_id)
    .bind(t.user_id)
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
        let r = refusal(conn, t.conversation_id, t.user_id).await?;
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
pub(super) async fn refusal(
    conn: &mut AnyConnection,
    conversation_id: i64,
    user_id: i64,
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
        // A lock whose lease ran out is still held until a node takes it over
        // (`storage::lease`), which stores its turn as failed: never silently stolen here.
        Some((Some(_), _)) => Some(BeginOutcome::Busy),
        Some(_) => None,
    })
}

/// Frees the turn lock with the assistant message's `seq`, releases the reservation, charges
/// the turn with its ledger row and usage row. A finish retried after a commit whose outcome
/// was unknown finds its message stored and answers with it.
pub(super) async fn finish<'a>(
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
        if let Some(stored) = super::super::chat::message_by_id(conn, t.assistant.id).await? {
            return Ok(Applied::AlreadyFinished(FinishOutcome {
                charged: stored.credits_charged,
                assistant: stored,
                balance: locked.0,
                taken_over: false,
            }));
        }
        // The same finish twice in one batch: the first one's message is not inserted yet.
        if let Some((m, seq, charged)) = rows.messages.iter().find(|(m, ..)| m.id == t.assistant.id)
        {
            let mut assistant = (*m).clone();
            assistant.seq = *seq;
            assistant.credits_charged = *charged;
            return Ok(Applied::AlreadyFinished(FinishOutcome {
                charged: *charged,
                assistant,
                balance: locked.0,
                taken_over: false,
            }));
        }
        // Fencing: the lock is no longer this turn's (its lease ran out and another node took
        // it over, storing the turn as failed, or it was undone after a crash). Nothing is
        // stored or charged; a reservation still open is given back.
        release_and_charge(
            conn,
            locked,
            t.user_id,
            t.reservation_id,
            t.reserved,
            0,
            true,
            now,
        )
        .await?;
        return Ok(Applied::TakenOver);
    }
    let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = ?")
        .bind(t.conversation_id)
        .fetch_one(&mut *conn)
        .await?;
    let (_, charged, balance, ledger_seq) = release_and_charge(
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
        let row = (-charged, balance, ledger_seq);
        rows.ledger(t.user_id, row, "chat", m.id.to_string(), now);
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
