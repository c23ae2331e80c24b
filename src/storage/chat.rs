//! Conversations, messages, and the two transactions of a chat turn.
//!
//! `begin_turn` takes the conversation's cross-node turn lock, assigns the user message its
//! `seq`, stores it and reserves the turn's maximum cost — all or nothing. `finish_turn` stores
//! the assistant message with the next `seq`, releases the reservation, charges the actual
//! cost with its ledger row and usage log, and frees the lock — all or nothing. Between the two
//! no transaction is open (never across an LLM call). Both are applied by the group-commit
//! writer (`storage::writer`), sharing a transaction with whatever else commits at that moment.

use serde::Serialize;
use sqlx::{AnyConnection, FromRow};

use super::{Db, Page};
use crate::error::Result;
use crate::time::now_ms;
use questech_engine::events::{MsgUsage, StoredMessage};
use questech_engine::ports::{
    BeginOutcome, BeginTurn, ConversationSnapshot, FinishOutcome, FinishTurn,
};

#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct ConversationRow {
    #[serde(serialize_with = "crate::time::ser_id")]
    #[schema(value_type = String)]
    pub id: i64,
    #[serde(skip)]
    pub user_id: i64,
    pub title: String,
    pub model: String,
    #[serde(serialize_with = "crate::time::ser_opt_id")]
    #[schema(value_type = Option<String>)]
    pub agent_id: Option<i64>,
    #[serde(skip)]
    #[sqlx(try_from = "super::OptText")]
    pub system_prompt: Option<String>,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
    pub last_seq: i64,
}

const CONV_COLS: &str =
    "id, user_id, title, model, agent_id, system_prompt, created_at, updated_at, last_seq";

#[derive(Debug, Clone, FromRow)]
pub struct MessageRow {
    pub id: i64,
    pub conversation_id: i64,
    pub seq: i64,
    pub role: String,
    #[sqlx(try_from = "super::Text")]
    pub content: String,
    pub status: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub credits_charged: i64,
    pub client_msg_id: Option<String>,
    pub created_at: i64,
    /// Images and the wire form, as JSON ([`StoredMessage::meta_json`]).
    #[sqlx(try_from = "super::OptText")]
    pub meta: Option<String>,
}

pub(super) const MSG_COLS: &str = "id, conversation_id, seq, role, content, status, model, prompt_tokens, completion_tokens, credits_charged, client_msg_id, created_at, meta";

impl From<MessageRow> for StoredMessage {
    fn from(m: MessageRow) -> Self {
        let mut out = StoredMessage {
            id: m.id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            role: m.role,
            content: m.content,
            status: m.status,
            model: m.model,
            usage: MsgUsage {
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.completion_tokens,
            },
            credits_charged: m.credits_charged,
            client_msg_id: m.client_msg_id,
            created_at: m.created_at,
            attachments: Vec::new(),
            extra: None,
        };
        out.set_meta(m.meta.as_deref());
        out
    }
}

pub struct NewConversation<'a> {
    pub id: i64,
    pub user_id: i64,
    pub title: &'a str,
    pub model: &'a str,
    pub agent_id: Option<i64>,
    pub system_prompt: Option<&'a str>,
}

pub async fn create_conversation(db: &Db, c: NewConversation<'_>) -> Result<ConversationRow> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO conversations (id, user_id, title, model, agent_id, system_prompt, last_seq, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
    )
    .bind(c.id)
    .bind(c.user_id)
    .bind(c.title)
    .bind(c.model)
    .bind(c.agent_id)
    .bind(c.system_prompt)
    .bind(now)
    .bind(now)
    .execute(&db.write)
    .await?;
    Ok(ConversationRow {
        id: c.id,
        user_id: c.user_id,
        title: c.title.to_owned(),
        model: c.model.to_owned(),
        agent_id: c.agent_id,
        system_prompt: c.system_prompt.map(str::to_owned),
        created_at: now,
        updated_at: now,
        last_seq: 0,
    })
}

/// A live conversation of this user (another user's or a deleted one is `None`).
pub async fn get_conversation(db: &Db, user_id: i64, id: i64) -> Result<Option<ConversationRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CONV_COLS} FROM conversations WHERE id = ? AND user_id = ? AND deleted_at IS NULL"
    ))
    .bind(id)
    .bind(user_id)
    .fetch_optional(&db.write)
    .await?)
}

pub async fn list_conversations(
    db: &Db,
    user_id: i64,
    page: Page,
) -> Result<(Vec<ConversationRow>, i64)> {
    super::paged(
        db,
        CONV_COLS,
        "conversations WHERE user_id = ? AND deleted_at IS NULL",
        "updated_at DESC, id DESC",
        Some(user_id),
        page,
    )
    .await
}

pub async fn update_conversation(
    db: &Db,
    user_id: i64,
    id: i64,
    title: Option<&str>,
    model: Option<&str>,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE conversations SET title = COALESCE(?, title), model = COALESCE(?, model), updated_at = ? WHERE id = ? AND user_id = ? AND deleted_at IS NULL",
    )
    .bind(title)
    .bind(model)
    .bind(now_ms())
    .bind(id)
    .bind(user_id)
    .execute(&db.write)
    .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn delete_conversation(db: &Db, user_id: i64, id: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE conversations SET deleted_at = ? WHERE id = ? AND user_id = ? AND deleted_at IS NULL",
    )
    .bind(now_ms())
    .bind(id)
    .bind(user_id)
    .execute(&db.write)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Messages after `after_seq`, ascending; one more than `limit` is fetched to tell `has_more`.
pub async fn messages_after(
    db: &Db,
    conversation_id: i64,
    after_seq: i64,
    limit: i64,
) -> Result<(Vec<StoredMessage>, bool)> {
    let mut rows: Vec<MessageRow> = sqlx::query_as(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND seq > ? ORDER BY seq LIMIT ?"
    ))
    .bind(conversation_id)
    .bind(after_seq)
    .bind(limit + 1)
    .fetch_all(&db.read)
    .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok((rows.into_iter().map(Into::into).collect(), has_more))
}

pub async fn load_snapshot(db: &Db, id: i64, keep: i64) -> Result<Option<ConversationSnapshot>> {
    let Some(c): Option<ConversationRow> = sqlx::query_as(&format!(
        "SELECT {CONV_COLS} FROM conversations WHERE id = ? AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(&db.write)
    .await?
    else {
        return Ok(None);
    };
    let mut rows: Vec<MessageRow> = sqlx::query_as(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND status IN ('complete', 'cancelled') ORDER BY seq DESC LIMIT ?"
    ))
    .bind(id)
    .bind(keep)
    .fetch_all(&db.write)
    .await?;
    rows.reverse();
    Ok(Some(ConversationSnapshot {
        id: c.id,
        user_id: c.user_id,
        model: c.model,
        system_prompt: c.system_prompt,
        last_seq: c.last_seq,
        history: rows.into_iter().map(Into::into).collect(),
    }))
}

/// The user message stored under `client_msg_id` in a conversation, with its reply if any.
pub(super) async fn find_by_client_id(
    conn: &mut AnyConnection,
    conversation_id: i64,
    client_msg_id: &str,
) -> Result<Option<(StoredMessage, Option<StoredMessage>)>> {
    let user: Option<MessageRow> = sqlx::query_as(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND client_msg_id = ?"
    ))
    .bind(conversation_id)
    .bind(client_msg_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(user) = user else { return Ok(None) };
    let reply: Option<MessageRow> = sqlx::query_as(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND seq = ? AND role = 'assistant'"
    ))
    .bind(conversation_id)
    .bind(user.seq + 1)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Some((user.into(), reply.map(Into::into))))
}

/// One message by id.
pub(super) async fn message_by_id(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<Option<StoredMessage>> {
    let row: Option<MessageRow> =
        sqlx::query_as(&format!("SELECT {MSG_COLS} FROM messages WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(Into::into))
}

/// Starts a turn (see the module's head); written by the group-commit writer.
pub async fn begin_turn(db: &Db, t: BeginTurn) -> Result<BeginOutcome> {
    // A retransmitted message is answered from what is stored, before anything is locked or
    // reserved (a read, off the writer; the writer catches the rare race of two devices).
    if let Some(cid) = &t.user_message.client_msg_id {
        let mut conn = db.write.acquire().await?;
        if let Some((u, a)) = find_by_client_id(&mut conn, t.conversation_id, cid).await? {
            return Ok(BeginOutcome::Duplicate {
                user_message: u,
                assistant_message: a,
            });
        }
    }
    db.writer.begin_turn(t).await
}

/// Ends a turn (see the module's head); written by the group-commit writer.
pub async fn finish_turn(db: &Db, t: FinishTurn) -> Result<FinishOutcome> {
    db.writer.finish_turn(t).await
}

/// Undoes a turn lost to a crash: frees the conversation's lock and releases the turn's
/// reservation. With `turn_id` None, whatever turn the conversation holds. Returns whether a
/// turn was undone.
pub async fn abort_turn(db: &Db, conversation_id: i64, turn_id: Option<i64>) -> Result<bool> {
    let current: Option<Option<i64>> =
        sqlx::query_scalar("SELECT turn_id FROM conversations WHERE id = ?")
            .bind(conversation_id)
            .fetch_optional(&db.write)
            .await?;
    let Some(Some(current)) = current else {
        return Ok(false);
    };
    if turn_id.is_some_and(|t| t != current) {
        return Ok(false);
    }
    let mut tx = db.begin_write().await?;
    let freed = sqlx::query(
        "UPDATE conversations SET turn_id = NULL, turn_node = NULL, turn_expires = NULL WHERE id = ? AND turn_id = ?",
    )
    .bind(conversation_id)
    .bind(current)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if freed == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    let res: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT id, user_id, amount FROM credit_reservations WHERE ref_id = ?")
            .bind(current.to_string())
            .fetch_all(&mut *tx)
            .await?;
    for (id, user_id, amount) in res {
        super::ledger::release_in_tx(&mut tx, id, user_id, amount).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// One message by id, with the conversation's owner (read from the primary: a reply just
/// stored must be found).
pub async fn message_with_owner(db: &Db, id: i64) -> Result<Option<(StoredMessage, i64)>> {
    let mut conn = db.write.acquire().await?;
    let Some(m) = message_by_id(&mut conn, id).await? else {
        return Ok(None);
    };
    let owner: Option<i64> =
        sqlx::query_scalar("SELECT user_id FROM conversations WHERE id = ? AND deleted_at IS NULL")
            .bind(m.conversation_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(owner.map(|o| (m, o)))
}

/// The message at `seq` of a conversation.
pub async fn message_at(db: &Db, conversation_id: i64, seq: i64) -> Result<Option<StoredMessage>> {
    let row: Option<MessageRow> = sqlx::query_as(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? AND seq = ?"
    ))
    .bind(conversation_id)
    .bind(seq)
    .fetch_optional(&db.write)
    .await?;
    Ok(row.map(Into::into))
}
