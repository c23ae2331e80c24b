//! Shared application state: configuration, storage, cache, keys. Cheap to clone (one `Arc`).

use std::ops::Deref;
use std::sync::Arc;

use crate::auth::jwt::JwtKeys;
use crate::cache::Cache;
use crate::config::Config;
use crate::storage::Db;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub db: Db,
    pub cache: Cache,
    pub jwt: JwtKeys,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Connects storage and cache, applies migrations, and seeds what an empty database needs.
    pub async fn build(config: Config) -> anyhow::Result<AppState> {
        let db = Db::connect(&config.database_url, config.database_read_url.as_deref()).await?;
        db.migrate().await?;
        let cache = Cache::connect(config.redis_url.as_deref(), &config.redis_prefix).await?;
        let jwt = JwtKeys::new(&config.jwt_secret.0, config.jwt_access_ttl.as_secs());
        Ok(AppState(Arc::new(Inner {
            config: Arc::new(config),
            db,
            cache,
            jwt,
        })))
    }
}
