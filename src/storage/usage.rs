//! Stateless billing of one-shot model calls (`/v1`), and the per-request usage history
//! (SPEC §5 `GET /user/usage`, §6 reserve-then-settle).
//!
//! `reserve` holds the call's maximum cost before anything goes upstream; `settle` releases it
//! and charges the actual cost with its ledger row and usage log, all in one transaction (shared
//! with whatever else commits at that moment: see `storage::writer`). No
//! transaction is open between the two (never across an LLM call).

use serde::Serialize;
use sqlx::FromRow;

use super::writer::ReserveOp;
pub use super::writer::Settled;
use super::{Db, Page};
use crate::error::Result;
use questech_engine::ports::SettleCall;

/// Reserves `amount` credits of the user's spendable balance (credits minus open
/// reservations) under a `credit_reservations` row owned by this node. `None`: the balance
/// cannot cover it, nothing changed. Written by the group-commit writer.
pub async fn reserve(
    db: &Db,
    user_id: i64,
    amount: i64,
    node_id: &str,
    ref_id: &str,
    ttl_ms: i64,
) -> Result<Option<i64>> {
    db.writer
        .reserve(ReserveOp {
            user_id,
            amount,
            node_id: node_id.to_owned(),
            ref_id: ref_id.to_owned(),
            ttl_ms,
        })
        .await
}

/// Releases the reservation, charges `min(charge, credits - reserved)` with one ledger row, and
/// writes one usage row — all or nothing, and only while the reservation is still open: a
/// settlement retried after a commit of unknown outcome never charges twice. Written by the
/// group-commit writer.
pub async fn settle(db: &Db, s: &SettleCall) -> Result<Settled> {
    db.writer.settle(s.clone()).await
}

/// Gives a reservation back without charging anything or logging usage (the call never
/// started). Returns whether it was still open.
pub async fn release(db: &Db, user_id: i64, reservation_id: i64, amount: i64) -> Result<bool> {
    let mut tx = db.begin_write().await?;
    let gone = super::ledger::release_in_tx(&mut tx, reservation_id, user_id, amount).await?;
    tx.commit().await?;
    Ok(gone)
}

/// One row of the usage history.
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct UsageLogRow {
    #[serde(serialize_with = "crate::time::ser_id")]
    #[schema(value_type = String)]
    pub id: i64,
    #[serde(skip)]
    pub user_id: i64,
    /// `v1`, `chat` or `toolkit`.
    pub kind: String,
    pub model: String,
    #[serde(serialize_with = "crate::time::ser_opt_id")]
    #[schema(value_type = Option<String>)]
    pub api_key_id: Option<i64>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub credits: i64,
    pub latency_ms: i64,
    /// `ok`, `failed` or `cancelled`.
    pub status: String,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

/// The user's usage rows, newest first.
pub async fn list(db: &Db, user_id: i64, page: Page) -> Result<(Vec<UsageLogRow>, i64)> {
    super::paged(
        db,
        "id, user_id, kind, model, api_key_id, prompt_tokens, completion_tokens, credits, latency_ms, status, created_at",
        "usage_logs WHERE user_id = ?",
        "id DESC",
        Some(user_id),
        page,
    )
    .await
}
