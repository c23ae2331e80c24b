//! The app config (SPEC §10/§11): one JSON object the admin replaces as a whole, kept in the
//! single row `id = 1` of `app_config`.

use super::{Db, Dialect, Text};
use crate::error::Result;
use crate::time::now_ms;

const ROW_ID: i64 = 1;

/// The stored JSON text, or `None` when no admin ever set it.
pub async fn get(db: &Db) -> Result<Option<String>> {
    let value: Option<Text> = sqlx::query_scalar("SELECT value FROM app_config WHERE id = ?")
        .bind(ROW_ID)
        .fetch_optional(&db.write)
        .await?;
    Ok(value.map(String::from))
}

/// Replaces the whole config with `value` (a JSON object's text), in one statement.
pub async fn put(db: &Db, value: &str) -> Result<()> {
    let sql = match db.dialect {
        Dialect::Sqlite => {
            "INSERT INTO app_config (id, value, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
        }
        Dialect::MySql => {
            "INSERT INTO app_config (id, value, updated_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = VALUES(updated_at)"
        }
    };
    sqlx::query(sql)
        .bind(ROW_ID)
        .bind(value)
        .bind(now_ms())
        .execute(&db.write)
        .await?;
    Ok(())
}
