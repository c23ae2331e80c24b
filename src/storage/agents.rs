//! Agents: preset assistants (a system prompt and a model).

use sqlx::FromRow;

use super::Db;
use crate::error::Result;

#[derive(Debug, Clone, FromRow)]
pub struct AgentRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub avatar_url: String,
    pub model: String,
    pub temperature: f64,
    pub system_prompt: String,
    pub published: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const COLS: &str = "id, name, description, avatar_url, model, temperature, system_prompt, published, created_at, updated_at";

/// A published agent by its wire id.
pub async fn get_published(db: &Db, id: &str) -> Result<Option<AgentRow>> {
    let Some(id) = crate::ids::parse(id) else {
        return Ok(None);
    };
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM agents WHERE id = ? AND published = 1"
    ))
    .bind(id)
    .fetch_optional(&db.read)
    .await?)
}
