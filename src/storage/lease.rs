//! Leases on what a node holds in the database: turn locks (`conversations.turn_*`) and credit
//! reservations (`credit_reservations.expires_at`).
//!
//! A holding lasts as long as its node renews it: every node pushes the expiry of everything it
//! holds forward on each heartbeat ([`renew`], two statements whatever it holds). When a node
//! stops renewing (killed, paused, cut off from the database), any node that is itself renewing
//! takes its holdings over ([`take_over`]): the lost turn is stored as `failed` with the next
//! `seq`, its reservation released, and the caller tells the user's devices. The turn id in the
//! lock is the fence: a node that comes back and tries to finish a turn taken over finds the
//! lock is no longer its own and stores nothing, charges nothing (`writer::ops::finish`).

use super::Db;
use crate::error::Result;
use crate::time::now_ms;
use questech_engine::events::{MsgUsage, StoredMessage};

/// A turn whose node stopped renewing its lease, now stored as failed.
#[derive(Debug, Clone)]
pub struct LostTurn {
    pub user_id: i64,
    pub conversation_id: i64,
    pub turn_id: i64,
    /// The `client_msg_id` of the turn's user message (what its `chat.error` names).
    pub client_msg_id: Option<String>,
    /// The failed assistant message stored in its place.
    pub message: StoredMessage,
}

impl LostTurn {
    /// One warning line naming the turn and the seq of its failed message.
    pub fn log(&self, what: &str) {
        tracing::warn!(
            conversation_id = self.conversation_id,
            turn_id = self.turn_id,
            seq = self.message.seq,
            "{what}"
        );
    }
}

/// Pushes the expiry of this node's turn locks and reservations to `now + lease_ms`.
pub async fn renew(db: &Db, node_id: &str, lease_ms: i64) -> Result<()> {
    let until = now_ms() + lease_ms;
    sqlx::query(
        "UPDATE conversations SET turn_expires = ? WHERE turn_node = ? AND turn_id IS NOT NULL",
    )
    .bind(until)
    .bind(node_id)
    .execute(&db.write)
    .await?;
    sqlx::query("UPDATE credit_reservations SET expires_at = ? WHERE node_id = ?")
        .bind(until)
        .bind(node_id)
        .execute(&db.write)
        .await?;
    Ok(())
}

/// Records turns of this node whose end could not be stored (the database did not answer) as
/// failed, as a takeover would, as soon as the database answers again: the conversation is free
/// at once instead of after a lease. A lock that moved on (the end did commit after all) is left.
pub async fn abandon(db: &Db, node_id: &str, turns: &[(i64, i64)]) -> Result<Vec<LostTurn>> {
    let mut lost = Vec::new();
    for &(conversation_id, turn_id) in turns {
        let held: Option<(i64, String)> = sqlx::query_as(
            "SELECT user_id, model FROM conversations WHERE id = ? AND turn_id = ? AND turn_node = ?",
        )
        .bind(conversation_id)
        .bind(turn_id)
        .bind(node_id)
        .fetch_optional(&db.write)
        .await?;
        let Some((user_id, model)) = held else {
            continue;
        };
        let lock = Lock {
            conversation_id,
            user_id,
            turn_id,
        };
        // Its reservation goes with it, released uncharged.
        lost.extend(take_turn(db, lock, model, node_id).await?);
    }
    Ok(lost)
}

/// Takes over every turn lock and reservation whose lease ran out, and with `own` those of
/// that node whatever their lease (a node at start-up or after its drain: what its earlier run
/// left). Returns the turns it stored as failed; each is taken over exactly once, by whichever
/// node's transaction clears the lock first.
pub async fn take_over(db: &Db, own: Option<&str>) -> Result<Vec<LostTurn>> {
    let now = now_ms();
    // No node is named "": without `own` only expired leases match.
    let own = own.unwrap_or("");
    let locks: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "SELECT id, user_id, turn_id, model FROM conversations WHERE turn_id IS NOT NULL AND (turn_expires < ? OR turn_node = ?)",
    )
    .bind(now)
    .bind(own)
    .fetch_all(&db.write)
    .await?;
    let mut lost = Vec::with_capacity(locks.len());
    for (conversation_id, user_id, turn_id, model) in locks {
        let lock = Lock {
            conversation_id,
            user_id,
            turn_id,
        };
        if let Some(l) = take_turn(db, lock, model, own).await? {
            lost.push(l);
        }
    }
    let stale: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT id, user_id, amount FROM credit_reservations WHERE expires_at < ? OR node_id = ?",
    )
    .bind(now)
    .bind(own)
    .fetch_all(&db.write)
    .await?;
    for (id, user_id, amount) in stale {
        let mut tx = db.begin_write().await?;
        super::ledger::release_in_tx(&mut tx, id, user_id, amount).await?;
        tx.commit().await?;
    }
    Ok(lost)
}

struct Lock {
    conversation_id: i64,
    user_id: i64,
    turn_id: i64,
}

/// One lock taken over in one transaction: cleared only if it still names `turn_id` and its
/// lease is still out (a renewal that won the race keeps it) or it is `own`'s.
async fn take_turn(db: &Db, lock: Lock, model: String, own: &str) -> Result<Option<LostTurn>> {
    let Lock {
        conversation_id,
        user_id,
        turn_id,
    } = lock;
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    let cleared = sqlx::query(
        "UPDATE conversations SET last_seq = last_seq + 1, turn_id = NULL, turn_node = NULL, turn_expires = NULL, updated_at = ? \
         WHERE id = ? AND turn_id = ? AND (turn_expires < ? OR turn_node = ?)",
    )
    .bind(now)
    .bind(conversation_id)
    .bind(turn_id)
    .bind(now)
    .bind(own)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if cleared == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = ?")
        .bind(conversation_id)
        .fetch_one(&mut *tx)
        .await?;
    let client_msg_id: Option<Option<String>> = sqlx::query_scalar(
        "SELECT client_msg_id FROM messages WHERE conversation_id = ? AND seq = ? AND role = 'user'",
    )
    .bind(conversation_id)
    .bind(seq - 1)
    .fetch_optional(&mut *tx)
    .await?;
    let message = StoredMessage {
        id: crate::ids::next_id(),
        conversation_id,
        seq,
        role: "assistant".into(),
        content: String::new(),
        status: "failed".into(),
        model,
        usage: MsgUsage::default(),
        credits_charged: 0,
        client_msg_id: None,
        created_at: now,
        attachments: Vec::new(),
        extra: None,
    };
    sqlx::query(&format!(
        "INSERT INTO messages ({}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, 0, NULL, ?, NULL)",
        super::chat::MSG_COLS
    ))
    .bind(message.id)
    .bind(conversation_id)
    .bind(seq)
    .bind("assistant")
    .bind("")
    .bind("failed")
    .bind(&message.model)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let held: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, amount FROM credit_reservations WHERE ref_id = ?")
            .bind(turn_id.to_string())
            .fetch_all(&mut *tx)
            .await?;
    for (id, amount) in held {
        super::ledger::release_in_tx(&mut tx, id, user_id, amount).await?;
    }
    tx.commit().await?;
    Ok(Some(LostTurn {
        user_id,
        conversation_id,
        turn_id,
        client_msg_id: client_msg_id.flatten(),
        message,
    }))
}
