//! The credit ledger: every balance change is one row, written in the same transaction as the
//! change itself, so `users.credits == SUM(credit_ledger.delta)` holds at every commit.

use serde::Serialize;
use sqlx::FromRow;

use super::{Db, Page};
use crate::error::{Error, Result};
use crate::time::now_ms;

#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct LedgerRow {
    #[serde(serialize_with = "crate::time::ser_id")]
    #[schema(value_type = String)]
    pub id: i64,
    #[serde(skip)]
    pub user_id: i64,
    pub delta: i64,
    pub balance_after: i64,
    /// The row's place in the user's ledger, 1, 2, 3… in commit order (the list's order).
    pub seq: i64,
    pub reason: String,
    pub note: Option<String>,
    pub ref_id: Option<String>,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

pub async fn list(db: &Db, user_id: i64, page: Page) -> Result<(Vec<LedgerRow>, i64)> {
    super::paged(
        db,
        "id, user_id, delta, balance_after, seq, reason, note, ref_id, created_at",
        "credit_ledger WHERE user_id = ?",
        "seq DESC",
        Some(user_id),
        page,
    )
    .await
}

/// Applies `delta` to a user's balance with its ledger row, atomically. A debit that would take
/// the spendable balance (credits minus open reservations) below zero is refused and changes
/// nothing. Returns the new balance, or `None` for an unknown user.
pub async fn adjust(
    db: &Db,
    user_id: i64,
    delta: i64,
    reason: &str,
    note: Option<&str>,
    ref_id: Option<&str>,
) -> Result<Option<i64>> {
    let mut tx = db.begin_write().await?;
    let changed = sqlx::query(
        "UPDATE users SET credits = credits + ?, ledger_seq = ledger_seq + 1, updated_at = ? WHERE id = ? AND credits + ? >= reserved",
    )
    .bind(delta)
    .bind(now_ms())
    .bind(user_id)
    .bind(delta)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        tx.rollback().await?;
        let exists = super::users::by_id(db, user_id).await?.is_some();
        return if exists {
            Err(Error::Conflict(
                "delta: the debit would take the balance below zero".into(),
            ))
        } else {
            Ok(None)
        };
    }
    // The update holds the user's row lock: `ledger_seq` is this row's place in commit order.
    let (balance, seq): (i64, i64) =
        sqlx::query_as("SELECT credits, ledger_seq FROM users WHERE id = ?")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO credit_ledger (id, user_id, delta, balance_after, seq, reason, note, ref_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(crate::ids::next_id())
    .bind(user_id)
    .bind(delta)
    .bind(balance)
    .bind(seq)
    .bind(reason)
    .bind(note)
    .bind(ref_id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(balance))
}

/// `(credits, SUM(ledger.delta))` for a user: the two must always be equal.
pub async fn balance_check(db: &Db, user_id: i64) -> Result<(i64, i64)> {
    let credits: i64 = sqlx::query_scalar("SELECT credits FROM users WHERE id = ?")
        .bind(user_id)
        .fetch_one(&db.write)
        .await?;
    let sum: i64 = sqlx::query_scalar(&format!(
        "SELECT {} FROM credit_ledger WHERE user_id = ?",
        db.dialect.sum_i64("delta")
    ))
    .bind(user_id)
    .fetch_one(&db.write)
    .await?;
    Ok((credits, sum))
}

/// Releases a reservation (if still open) inside a transaction; returns whether it was open.
/// Deleting the row is the guard: a reservation is given back exactly once.
pub async fn release_in_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    reservation_id: i64,
    user_id: i64,
    amount: i64,
) -> Result<bool> {
    let gone = sqlx::query("DELETE FROM credit_reservations WHERE id = ?")
        .bind(reservation_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if gone > 0 {
        sqlx::query("UPDATE users SET reserved = reserved - ? WHERE id = ?")
            .bind(amount)
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(gone > 0)
}
