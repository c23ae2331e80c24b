//! Models and prices (SPEC §6, admin CRUD in §11).

use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::Db;
use crate::error::Result;
use crate::time::now_ms;
use questech_engine::ports::ModelInfo;

/// A `models` row. Also the form the model list takes in the shared cache (JSON).
#[derive(Debug, Clone, FromRow, Serialize, Deserialize)]
pub struct ModelRow {
    pub id: String,
    pub provider: String,
    pub upstream_model: Option<String>,
    pub display_name: String,
    pub context_window: i64,
    pub max_output_tokens: i64,
    pub prompt_per_1k: f64,
    pub completion_per_1k: f64,
    pub per_request: i64,
    #[sqlx(try_from = "super::Text")]
    pub fallbacks: String,
    pub enabled: i64,
    pub sort_order: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Capabilities, 0 or 1 each.
    #[serde(default)]
    pub cap_vision: i64,
    #[serde(default)]
    pub cap_tools: i64,
    #[serde(default)]
    pub cap_json: i64,
    #[serde(default)]
    pub cap_embeddings: i64,
}

const COLS: &str = "id, provider, upstream_model, display_name, context_window, max_output_tokens, prompt_per_1k, completion_per_1k, per_request, fallbacks, enabled, sort_order, created_at, updated_at, cap_vision, cap_tools, cap_json, cap_embeddings";

/// What a model can do beyond text (SPEC §6): admin-set, shown in every model list.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Capabilities {
    /// Reads `image_url` content parts.
    #[serde(default)]
    pub vision: bool,
    /// Function calling (`tools`).
    #[serde(default)]
    pub tools: bool,
    /// Structured output (`response_format` `json_object` and `json_schema`).
    #[serde(default)]
    pub json: bool,
    /// Creates embeddings (`POST /v1/embeddings`).
    #[serde(default)]
    pub embeddings: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Price {
    pub prompt_per_1k: f64,
    pub completion_per_1k: f64,
    pub per_request: i64,
}

/// The public model object (`GET /config/models`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    pub id: String,
    pub provider: String,
    pub display_name: String,
    pub context_window: i64,
    pub max_output_tokens: i64,
    pub price: Price,
    pub enabled: bool,
    pub capabilities: Capabilities,
}

/// The admin model object: the public one plus routing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdminModelView {
    #[serde(flatten)]
    pub public: ModelView,
    pub upstream_model: Option<String>,
    pub fallbacks: Vec<String>,
    pub sort_order: i64,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl ModelRow {
    pub fn fallback_list(&self) -> Vec<String> {
        serde_json::from_str(&self.fallbacks).unwrap_or_default()
    }

    /// `usable`: enabled by the admin and its provider configured on this node.
    pub fn view(&self, usable: bool) -> ModelView {
        ModelView {
            id: self.id.clone(),
            provider: self.provider.clone(),
            display_name: self.display_name.clone(),
            context_window: self.context_window,
            max_output_tokens: self.max_output_tokens,
            price: Price {
                prompt_per_1k: self.prompt_per_1k,
                completion_per_1k: self.completion_per_1k,
                per_request: self.per_request,
            },
            enabled: usable,
            capabilities: self.capabilities(),
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            vision: self.cap_vision != 0,
            tools: self.cap_tools != 0,
            json: self.cap_json != 0,
            embeddings: self.cap_embeddings != 0,
        }
    }

    pub fn set_capabilities(&mut self, c: Capabilities) {
        self.cap_vision = i64::from(c.vision);
        self.cap_tools = i64::from(c.tools);
        self.cap_json = i64::from(c.json);
        self.cap_embeddings = i64::from(c.embeddings);
    }

    pub fn admin_view(&self) -> AdminModelView {
        AdminModelView {
            public: self.view(self.enabled != 0),
            upstream_model: self.upstream_model.clone(),
            fallbacks: self.fallback_list(),
            sort_order: self.sort_order,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            id: self.id.clone(),
            provider: self.provider.clone(),
            upstream_model: self
                .upstream_model
                .clone()
                .unwrap_or_else(|| self.id.clone()),
            context_window: self.context_window.max(1) as u64,
            max_output_tokens: self.max_output_tokens.max(1) as u64,
            prompt_per_1k: self.prompt_per_1k,
            completion_per_1k: self.completion_per_1k,
            per_request: self.per_request,
            fallbacks: self.fallback_list(),
            enabled: self.enabled != 0,
            caps: questech_engine::llm::Caps {
                vision: self.cap_vision != 0,
                tools: self.cap_tools != 0,
                json: self.cap_json != 0,
                embeddings: self.cap_embeddings != 0,
            },
        }
    }
}

pub async fn list(db: &Db) -> Result<Vec<ModelRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM models ORDER BY sort_order, id"
    ))
    .fetch_all(&db.read)
    .await?)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<ModelRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLS} FROM models WHERE id = ?"))
            .bind(id)
            .fetch_optional(&db.write)
            .await?,
    )
}

pub async fn insert(db: &Db, m: &ModelRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO models ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&m.id)
    .bind(&m.provider)
    .bind(&m.upstream_model)
    .bind(&m.display_name)
    .bind(m.context_window)
    .bind(m.max_output_tokens)
    .bind(m.prompt_per_1k)
    .bind(m.completion_per_1k)
    .bind(m.per_request)
    .bind(&m.fallbacks)
    .bind(m.enabled)
    .bind(m.sort_order)
    .bind(m.created_at)
    .bind(m.updated_at)
    .bind(m.cap_vision)
    .bind(m.cap_tools)
    .bind(m.cap_json)
    .bind(m.cap_embeddings)
    .execute(&db.write)
    .await?;
    Ok(())
}

pub async fn update(db: &Db, m: &ModelRow) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE models SET provider = ?, upstream_model = ?, display_name = ?, context_window = ?, max_output_tokens = ?, \
         prompt_per_1k = ?, completion_per_1k = ?, per_request = ?, fallbacks = ?, enabled = ?, sort_order = ?, \
         cap_vision = ?, cap_tools = ?, cap_json = ?, cap_embeddings = ?, updated_at = ? WHERE id = ?",
    )
    .bind(&m.provider)
    .bind(&m.upstream_model)
    .bind(&m.display_name)
    .bind(m.context_window)
    .bind(m.max_output_tokens)
    .bind(m.prompt_per_1k)
    .bind(m.completion_per_1k)
    .bind(m.per_request)
    .bind(&m.fallbacks)
    .bind(m.enabled)
    .bind(m.sort_order)
    .bind(m.cap_vision)
    .bind(m.cap_tools)
    .bind(m.cap_json)
    .bind(m.cap_embeddings)
    .bind(now_ms())
    .bind(&m.id)
    .execute(&db.write)
    .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn delete(db: &Db, id: &str) -> Result<bool> {
    let r = sqlx::query("DELETE FROM models WHERE id = ?")
        .bind(id)
        .execute(&db.write)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Seeds the three built-in models once, on an empty table. `configured(provider)` tells
/// whether that provider is set up here; a model starts enabled only if it is.
pub async fn seed(db: &Db, configured: impl Fn(&str) -> bool) -> Result<()> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM models")
        .fetch_one(&db.write)
        .await?;
    if n > 0 {
        return Ok(());
    }
    let now = now_ms();
    let seeds = [
        (
            "echo",
            "echo",
            "echo",
            "Echo (dev)",
            8192,
            1024,
            1.0,
            2.0,
            0,
            0,
            (0, 0, 0, 1),
        ),
        (
            "gpt-4o-mini",
            "openai",
            "gpt-4o-mini",
            "GPT-4o mini",
            128_000,
            16_384,
            0.15,
            0.6,
            1,
            1,
            (1, 1, 1, 0),
        ),
        (
            "deepseek-chat",
            "deepseek",
            "deepseek-chat",
            "DeepSeek Chat",
            64_000,
            8192,
            0.27,
            1.1,
            1,
            2,
            (0, 1, 1, 0),
        ),
    ];
    for (id, provider, upstream, name, ctx, max_out, pp, cp, per_req, order, caps) in seeds {
        let row = ModelRow {
            id: id.into(),
            provider: provider.into(),
            upstream_model: Some(upstream.into()),
            display_name: name.into(),
            context_window: ctx,
            max_output_tokens: max_out,
            prompt_per_1k: pp,
            completion_per_1k: cp,
            per_request: per_req,
            fallbacks: "[]".into(),
            enabled: i64::from(configured(provider)),
            sort_order: order,
            created_at: now,
            updated_at: now,
            cap_vision: caps.0,
            cap_tools: caps.1,
            cap_json: caps.2,
            cap_embeddings: caps.3,
        };
        // Two nodes seeding at once: the loser's duplicate key is fine.
        if let Err(e) = insert(db, &row).await {
            if !matches!(e, crate::error::Error::Conflict(_)) {
                return Err(e);
            }
        }
    }
    Ok(())
}
