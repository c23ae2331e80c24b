//! Who uploaded which file (`POST /common/upload`): a chat message may attach only its
//! sender's own uploads (SPEC §7).

use super::Db;
use crate::error::Result;
use crate::time::now_ms;

/// Records that `user_id` uploaded the file `name`.
pub async fn record(
    db: &Db,
    name: &str,
    user_id: i64,
    content_type: &str,
    size: u64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO uploads (name, user_id, content_type, size, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(name)
    .bind(user_id)
    .bind(content_type)
    .bind(size as i64)
    .bind(now_ms())
    .execute(&db.write)
    .await?;
    Ok(())
}

/// The user who uploaded `name`, if it is a recorded upload.
pub async fn owner(db: &Db, name: &str) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT user_id FROM uploads WHERE name = ?")
            .bind(name)
            .fetch_optional(&db.write)
            .await?,
    )
}
