//! API keys (SPEC §5): `qt-…` bearer tokens for `/v1`, stored as their SHA-256 only.

use serde::Serialize;
use sqlx::FromRow;

use super::Db;
use crate::error::Result;
use crate::time::now_ms;

/// A key as its owner sees it in lists: never the key itself, never its hash.
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct ApiKeyRow {
    #[serde(serialize_with = "crate::time::ser_id")]
    #[schema(value_type = String)]
    pub id: i64,
    #[serde(skip)]
    pub user_id: i64,
    pub name: String,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<i64>,
}

const COLS: &str = "id, user_id, name, prefix, created_at, last_used_at";

pub struct NewKey<'a> {
    pub id: i64,
    pub user_id: i64,
    pub name: &'a str,
    pub key_hash: &'a str,
    pub prefix: &'a str,
}

pub async fn create(db: &Db, k: NewKey<'_>) -> Result<ApiKeyRow> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, name, key_hash, prefix, created_at, last_used_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
    )
    .bind(k.id)
    .bind(k.user_id)
    .bind(k.name)
    .bind(k.key_hash)
    .bind(k.prefix)
    .bind(now)
    .execute(&db.write)
    .await?;
    Ok(ApiKeyRow {
        id: k.id,
        user_id: k.user_id,
        name: k.name.to_owned(),
        prefix: k.prefix.to_owned(),
        created_at: now,
        last_used_at: None,
    })
}

/// The user's live (not revoked) keys, newest first.
pub async fn list(db: &Db, user_id: i64) -> Result<Vec<ApiKeyRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM api_keys WHERE user_id = ? AND revoked_at IS NULL ORDER BY id DESC"
    ))
    .bind(user_id)
    .fetch_all(&db.read)
    .await?)
}

/// How many live keys the user has.
pub async fn count_live(db: &Db, user_id: i64) -> Result<i64> {
    Ok(
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(&db.write)
        .await?,
    )
}

/// Revokes one of the user's live keys. Returns its hash (to drop it from the cache), or `None`
/// when there is no such live key of this user.
pub async fn revoke(db: &Db, user_id: i64, id: i64) -> Result<Option<String>> {
    let hash: Option<String> = sqlx::query_scalar(
        "SELECT key_hash FROM api_keys WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(user_id)
    .fetch_optional(&db.write)
    .await?;
    let Some(hash) = hash else { return Ok(None) };
    let n = sqlx::query(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(id)
    .bind(user_id)
    .execute(&db.write)
    .await?
    .rows_affected();
    Ok((n > 0).then_some(hash))
}

/// Hashes of all the user's live keys (to drop them from the cache when the user is disabled).
pub async fn live_hashes(db: &Db, user_id: i64) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar(
            "SELECT key_hash FROM api_keys WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(user_id)
        .fetch_all(&db.write)
        .await?,
    )
}

/// The owner of a live key whose owner is not disabled: `(key id, user id, role)`.
#[derive(Debug, Clone, FromRow)]
pub struct KeyOwner {
    pub key_id: i64,
    pub user_id: i64,
    pub role: String,
}

pub async fn lookup(db: &Db, key_hash: &str) -> Result<Option<KeyOwner>> {
    Ok(sqlx::query_as(
        "SELECT k.id AS key_id, u.id AS user_id, u.role AS role FROM api_keys k JOIN users u ON u.id = k.user_id \
         WHERE k.key_hash = ? AND k.revoked_at IS NULL AND u.disabled = 0",
    )
    .bind(key_hash)
    .fetch_optional(&db.write)
    .await?)
}

/// Records that a key was used now.
pub async fn touch(db: &Db, id: i64) -> Result<()> {
    sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
        .bind(now_ms())
        .bind(id)
        .execute(&db.write)
        .await?;
    Ok(())
}
