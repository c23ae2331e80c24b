//! Login sessions (one per device) and their rotating refresh tokens. The database is the
//! authority: the cache only speeds up the per-request check (see `auth::sessions`).

use sqlx::FromRow;

use super::Db;
use crate::error::Result;
use crate::time::now_ms;

#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub id: i64,
    pub user_id: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// Creates a session with its first refresh token (stored as a hash).
pub async fn create(
    db: &Db,
    session_id: i64,
    user_id: i64,
    device: &str,
    ip: &str,
    refresh_hash: &str,
    expires_at: i64,
) -> Result<()> {
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO sessions (id, user_id, device, ip, created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, NULL)",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(truncate(device, 255))
    .bind(truncate(ip, 64))
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at, rotated_at) VALUES (?, ?, ?, ?, NULL)",
    )
    .bind(refresh_hash)
    .bind(session_id)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub async fn get(db: &Db, id: i64) -> Result<Option<SessionRow>> {
    Ok(
        sqlx::query_as("SELECT id, user_id, expires_at, revoked_at FROM sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(&db.write)
            .await?,
    )
}

/// What presenting a refresh token led to.
pub enum Rotation {
    /// The token was current: it is now rotated and `new_hash` is the session's current one.
    Rotated { session_id: i64, user_id: i64 },
    /// The token had already been rotated: theft suspected, the whole session is now revoked.
    Reused { session_id: i64, user_id: i64 },
    /// Unknown, expired, or its session is revoked.
    Invalid,
}

/// Rotates a refresh token: marks the presented one used and stores `new_hash`, atomically.
/// The first statement is the conditional write, so two concurrent uses of one token cannot
/// both succeed: the loser sees it as a reuse.
pub async fn rotate(
    db: &Db,
    presented_hash: &str,
    new_hash: &str,
    ttl_ms: i64,
) -> Result<Rotation> {
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    let marked = sqlx::query(
        "UPDATE refresh_tokens SET rotated_at = ? WHERE token_hash = ? AND rotated_at IS NULL AND expires_at > ?",
    )
    .bind(now)
    .bind(presented_hash)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let row: Option<(i64, Option<i64>, i64, i64)> = sqlx::query_as(
        "SELECT s.id, s.revoked_at, s.user_id, s.expires_at FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = ?",
    )
    .bind(presented_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((session_id, revoked_at, user_id, _)) = row else {
        tx.rollback().await?;
        return Ok(Rotation::Invalid);
    };
    if revoked_at.is_some() {
        tx.rollback().await?;
        return Ok(Rotation::Invalid);
    }
    if marked == 0 {
        // Known token, not current: either expired or already rotated. An already-rotated
        // token means someone replays it: revoke the session.
        let rotated: Option<i64> =
            sqlx::query_scalar("SELECT rotated_at FROM refresh_tokens WHERE token_hash = ?")
                .bind(presented_hash)
                .fetch_one(&mut *tx)
                .await?;
        if rotated.is_some() {
            sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Rotation::Reused {
                session_id,
                user_id,
            });
        }
        tx.rollback().await?;
        return Ok(Rotation::Invalid);
    }
    let expires_at = now + ttl_ms;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at, rotated_at) VALUES (?, ?, ?, ?, NULL)",
    )
    .bind(new_hash)
    .bind(session_id)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE sessions SET expires_at = ? WHERE id = ?")
        .bind(expires_at)
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Rotation::Rotated {
        session_id,
        user_id,
    })
}

pub async fn revoke(db: &Db, session_id: i64) -> Result<()> {
    sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
        .bind(now_ms())
        .bind(session_id)
        .execute(&db.write)
        .await?;
    Ok(())
}

/// Revokes every live session of a user; returns their ids (to evict from the cache).
pub async fn revoke_all(db: &Db, user_id: i64) -> Result<Vec<i64>> {
    let now = now_ms();
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM sessions WHERE user_id = ? AND revoked_at IS NULL")
            .bind(user_id)
            .fetch_all(&db.write)
            .await?;
    sqlx::query("UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL")
        .bind(now)
        .bind(user_id)
        .execute(&db.write)
        .await?;
    Ok(ids)
}

/// The live sessions of a user other than `keep` (password change: other devices must log in
/// again with the new password; the caller revokes them).
pub async fn live_others(db: &Db, user_id: i64, keep: i64) -> Result<Vec<i64>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM sessions WHERE user_id = ? AND id <> ? AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(keep)
    .fetch_all(&db.write)
    .await?;
    Ok(ids)
}
