//! The server's adapters of the engine's ports: SQL storage and the model catalogue
//! ([`store`]), cache-backed shared limits ([`limits`]), cross-node fan-out over Redis pub/sub
//! ([`fanout`]). Also builds and starts the engine over them.

mod fanout;
pub mod lease;
mod limits;
mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::config::Config;
use crate::storage::Db;
pub use fanout::RedisFanout;
pub use limits::CacheLimits;
use questech_engine::engine::{Engine, EngineConfig};
use questech_engine::pool::{Pool, PoolConfig};
use questech_engine::ports::{Fanout, LocalOnly};
pub use store::{ModelCache, SqlStore};

/// Everything the engine runs on, built from the configuration.
pub struct Built {
    pub engine: Engine,
    pub limits: Arc<CacheLimits>,
}

pub fn pool_config(cfg: &Config) -> PoolConfig {
    PoolConfig {
        max_concurrency: cfg.llm_max_concurrency,
        queue_capacity: cfg.llm_queue_capacity,
        first_token_timeout: cfg.llm_first_token_timeout,
        total_timeout: cfg.llm_total_timeout,
        max_retries: cfg.llm_max_retries,
        retryable_statuses: cfg.llm_retryable_statuses.clone(),
        breaker_failures: cfg.llm_breaker_failures,
        breaker_cooldown: cfg.llm_breaker_cooldown,
        backoff_base: Duration::from_millis(cfg.llm_backoff_base_ms),
    }
}

pub async fn start(
    cfg: &Config,
    db: &Db,
    cache: &Cache,
    uploads: &crate::uploads::Store,
    models: ModelCache,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<Built> {
    let providers =
        crate::llm::build_providers(cfg, Duration::from_millis(cfg.echo_delay_ms), Some(uploads));
    let pool = Pool::new(providers, pool_config(cfg));
    let limits = Arc::new(CacheLimits::new(
        cache.clone(),
        cfg.user_rpm,
        cfg.user_max_inflight,
        cfg.node_lease,
        &cfg.node_id,
    ));
    let fanout = match cache {
        Cache::Redis(r) => Some(Arc::new(RedisFanout::new(
            r.client().clone(),
            format!("{}events", r.prefix()),
            cfg.node_id.clone(),
            redis::aio::ConnectionManager::new_with_config(
                r.client().clone(),
                crate::cache::connection_manager_config(),
            )
            .await?,
        ))),
        Cache::Memory(_) => None,
    };
    let fanout_port: Arc<dyn Fanout> = match &fanout {
        Some(f) => f.clone(),
        None => Arc::new(LocalOnly),
    };
    let store = Arc::new(SqlStore {
        db: db.clone(),
        models,
        node_id: cfg.node_id.clone(),
    });
    let engine_cfg = EngineConfig {
        node_id: cfg.node_id.clone(),
        actor_idle: cfg.actor_idle,
        // Leases the node renews while it lives (`lease`); a stopped node's run out and are
        // taken over by the survivors.
        turn_lock: cfg.node_lease,
        reservation_ttl: cfg.node_lease,
        ..EngineConfig::default()
    };
    let engine = Engine::start(
        engine_cfg,
        store,
        limits.clone(),
        fanout_port,
        pool,
        tracker.clone(),
        shutdown.clone(),
    )
    .await?;
    if let Some(f) = &fanout {
        f.clone().listen(engine.clone(), shutdown, &tracker);
    }
    Ok(Built { engine, limits })
}
