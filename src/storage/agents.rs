//! Agents: preset assistants (a system prompt and a model). Public views hide the system prompt;
//! admin views show it.

use serde::Serialize;
use sqlx::FromRow;

use super::{Db, Page};
use crate::error::Result;

#[derive(Debug, Clone, FromRow)]
pub struct AgentRow {
    pub id: i64,
    pub name: String,
    #[sqlx(try_from = "super::Text")]
    pub description: String,
    pub avatar_url: String,
    pub model: String,
    pub temperature: f64,
    #[sqlx(try_from = "super::Text")]
    pub system_prompt: String,
    pub published: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const COLS: &str = "id, name, description, avatar_url, model, temperature, system_prompt, published, created_at, updated_at";

/// The public agent object of SPEC §10 (no system prompt).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentView {
    #[serde(serialize_with = "crate::time::ser_id")]
    #[schema(value_type = String)]
    pub id: i64,
    pub name: String,
    pub description: String,
    pub avatar_url: String,
    pub model: String,
    pub temperature: f64,
    pub published: bool,
}

/// The admin agent object: the public one plus the system prompt and timestamps.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdminAgentView {
    #[serde(flatten)]
    pub public: AgentView,
    pub system_prompt: String,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl AgentRow {
    pub fn view(&self) -> AgentView {
        AgentView {
            id: self.id,
            name: self.name.clone(),
            description: self.description.clone(),
            avatar_url: self.avatar_url.clone(),
            model: self.model.clone(),
            temperature: self.temperature,
            published: self.published != 0,
        }
    }

    pub fn admin_view(&self) -> AdminAgentView {
        AdminAgentView {
            public: self.view(),
            system_prompt: self.system_prompt.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

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

/// Any agent (published or not), for admins. Reads the primary so an edit is seen at once.
pub async fn get(db: &Db, id: i64) -> Result<Option<AgentRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLS} FROM agents WHERE id = ?"))
            .bind(id)
            .fetch_optional(&db.write)
            .await?,
    )
}

/// A page of agents, oldest first (a stable catalogue order); `published_only` for the public.
pub async fn list(db: &Db, published_only: bool, page: Page) -> Result<(Vec<AgentRow>, i64)> {
    let filter = if published_only {
        "WHERE published = 1"
    } else {
        ""
    };
    super::paged(db, COLS, &format!("agents {filter}"), "id", None, page).await
}

pub async fn insert(db: &Db, a: &AgentRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO agents ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(a.id)
    .bind(&a.name)
    .bind(&a.description)
    .bind(&a.avatar_url)
    .bind(&a.model)
    .bind(a.temperature)
    .bind(&a.system_prompt)
    .bind(a.published)
    .bind(a.created_at)
    .bind(a.updated_at)
    .execute(&db.write)
    .await?;
    Ok(())
}

/// Writes every editable column of `a`; false if the agent is gone.
pub async fn update(db: &Db, a: &AgentRow) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE agents SET name = ?, description = ?, avatar_url = ?, model = ?, temperature = ?, \
         system_prompt = ?, published = ?, updated_at = ? WHERE id = ?",
    )
    .bind(&a.name)
    .bind(&a.description)
    .bind(&a.avatar_url)
    .bind(&a.model)
    .bind(a.temperature)
    .bind(&a.system_prompt)
    .bind(a.published)
    .bind(a.updated_at)
    .bind(a.id)
    .execute(&db.write)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Deletes an agent. Conversations created from it keep their copy of the prompt and model.
pub async fn delete(db: &Db, id: i64) -> Result<bool> {
    let r = sqlx::query("DELETE FROM agents WHERE id = ?")
        .bind(id)
        .execute(&db.write)
        .await?;
    Ok(r.rows_affected() > 0)
}
