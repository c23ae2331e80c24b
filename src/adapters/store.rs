//! The engine's storage port over SQL, and the model catalogue it reads (cached).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::cache::Cache;
use crate::error::Error;
use crate::storage::{self, Db};
use questech_engine::ports::{
    BeginOutcome, BeginTurn, ConversationSnapshot, FinishOutcome, FinishTurn, ModelInfo,
    PortResult, Reserve, SettleCall, Settled, Store,
};

/// Models, cached in the shared cache under one key (invalidated by admin changes).
#[derive(Clone)]
pub struct ModelCache {
    db: Db,
    cache: Cache,
}

const MODELS_KEY: &str = "models:all";

impl ModelCache {
    pub fn new(db: Db, cache: Cache) -> Self {
        ModelCache { db, cache }
    }

    pub async fn all(&self) -> Result<Vec<storage::models::ModelRow>, Error> {
        if let Some(json) = self.cache.get(MODELS_KEY).await? {
            if let Ok(rows) = serde_json::from_str::<Vec<storage::models::ModelRow>>(&json) {
                return Ok(rows);
            }
        }
        let rows = storage::models::list(&self.db).await?;
        if let Ok(json) = serde_json::to_string(&rows) {
            self.cache
                .set(MODELS_KEY, &json, Some(Duration::from_secs(300)))
                .await?;
        }
        Ok(rows)
    }

    pub async fn get(&self, id: &str) -> Result<Option<storage::models::ModelRow>, Error> {
        Ok(self.all().await?.into_iter().find(|m| m.id == id))
    }

    pub async fn invalidate(&self) -> Result<(), Error> {
        self.cache.del(MODELS_KEY).await?;
        Ok(())
    }
}

/// The engine's storage port over SQL.
pub struct SqlStore {
    pub db: Db,
    pub models: ModelCache,
    /// This node's id, kept with its reservations (released at its next start).
    pub node_id: String,
}

impl Store for SqlStore {
    fn model(&self, id: &str) -> BoxFuture<'_, PortResult<Option<ModelInfo>>> {
        let id = id.to_owned();
        async move { Ok(self.models.get(&id).await?.map(|m| m.info())) }.boxed()
    }

    fn load_conversation(
        &self,
        id: i64,
    ) -> BoxFuture<'_, PortResult<Option<ConversationSnapshot>>> {
        async move { Ok(storage::chat::load_snapshot(&self.db, id, 400).await?) }.boxed()
    }

    fn begin_turn(&self, t: BeginTurn) -> BoxFuture<'_, PortResult<BeginOutcome>> {
        async move { Ok(storage::chat::begin_turn(&self.db, t).await?) }.boxed()
    }

    fn finish_turn(&self, t: FinishTurn) -> BoxFuture<'_, PortResult<FinishOutcome>> {
        // Retried (once) by the engine's metered call, not here.
        async move { Ok(storage::chat::finish_turn(&self.db, t).await?) }.boxed()
    }

    fn abort_turn(
        &self,
        conversation_id: i64,
        turn_id: Option<i64>,
    ) -> BoxFuture<'_, PortResult<bool>> {
        async move { Ok(storage::chat::abort_turn(&self.db, conversation_id, turn_id).await?) }
            .boxed()
    }

    fn balance(&self, user_id: i64) -> BoxFuture<'_, PortResult<i64>> {
        async move {
            Ok(storage::users::by_id(&self.db, user_id)
                .await?
                .map(|u| u.credits)
                .unwrap_or(0))
        }
        .boxed()
    }

    fn reserve(&self, r: Reserve) -> BoxFuture<'_, PortResult<Option<i64>>> {
        async move {
            Ok(storage::usage::reserve(
                &self.db,
                r.user_id,
                r.amount,
                &self.node_id,
                &r.ref_id,
                r.ttl_ms,
            )
            .await?)
        }
        .boxed()
    }

    fn settle(&self, s: SettleCall) -> BoxFuture<'_, PortResult<Settled>> {
        async move { Ok(storage::usage::settle(&self.db, &s).await?) }.boxed()
    }
}
