//! Shared application state: configuration, storage, cache, keys and the engine. Cheap to clone
//! (one `Arc`).

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::{CacheLimits, ModelCache};
use crate::auth::jwt::JwtKeys;
use crate::cache::Cache;
use crate::config::Config;
use crate::storage::Db;
use crate::uploads::Store;
use questech_engine::Engine;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub db: Db,
    pub cache: Cache,
    pub jwt: JwtKeys,
    pub engine: Engine,
    pub models: ModelCache,
    pub limits: Arc<CacheLimits>,
    /// Where uploads are kept (`UPLOAD_STORE`).
    pub uploads: Store,
    /// Background work (turn finalisers, fan-out) that shutdown waits for.
    pub tracker: TaskTracker,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Cancelled after the drain: this node's leases are renewed until its turns have ended.
    pub leases: CancellationToken,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Connects storage and cache, applies migrations, seeds what an empty database needs,
    /// releases what a previous run of this node left reserved, and starts the engine.
    pub async fn build(config: Config) -> anyhow::Result<AppState> {
        crate::metrics::install();
        let db = Db::connect(&config.database_url, config.database_read_url.as_deref()).await?;
        db.migrate().await?;
        let cache = Cache::connect(config.redis_url.as_deref(), &config.redis_prefix).await?;
        let jwt = JwtKeys::new(&config.jwt_secret.0, config.jwt_access_ttl.as_secs());
        let uploads = Store::new(&config)?;
        tracing::info!(store = %uploads.describe(), "uploads");
        let providers = crate::llm::build_providers(
            &config,
            std::time::Duration::from_millis(config.echo_delay_ms),
            None,
        );
        crate::storage::models::seed(&db, |p| providers.contains_key(p)).await?;
        drop(providers);
        let models = ModelCache::new(db.clone(), cache.clone());
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let built = crate::adapters::start(
            &config,
            &db,
            &cache,
            &uploads,
            models.clone(),
            tracker.clone(),
            shutdown.clone(),
        )
        .await?;
        let state = AppState(Arc::new(Inner {
            config: Arc::new(config),
            db,
            cache,
            jwt,
            engine: built.engine,
            models,
            limits: built.limits,
            uploads,
            tracker,
            shutdown,
            leases: CancellationToken::new(),
        }));
        // What an earlier run of this node held is taken over before it serves; then the
        // heartbeat keeps this run's leases and takes over those of stopped nodes.
        let taken = state.heartbeat().take_over_own().await?;
        if taken > 0 {
            tracing::warn!(taken, "took over turns an earlier run of this node left");
        }
        state.heartbeat().spawn(state.leases.clone());
        Ok(state)
    }

    /// The node's lease keeper over this state's database, limits and engine.
    pub fn heartbeat(&self) -> crate::adapters::lease::Heartbeat {
        crate::adapters::lease::Heartbeat {
            db: self.db.clone(),
            limits: self.limits.clone(),
            engine: self.engine.clone(),
            node_id: self.config.node_id.clone(),
            lease: self.config.node_lease,
        }
    }
}
