//! The cache: one interface, two implementations. Redis when `REDIS_URL` is set (shared by all
//! nodes), an in-process map otherwise (single node only). Used for session checks, login-failure
//! counters, SMS codes, shared rate limits and the model list. Never the authority: whatever is
//! here can be rebuilt from the database.

mod memory;
mod redis_cache;

use std::time::{Duration, Instant};

pub use memory::MemoryCache;
pub use redis_cache::{connection_manager_config, RedisCache};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl CacheError {
    /// Redis does not answer (refused, dropped, timed out), as opposed to a wrong command.
    pub fn is_unreachable(&self) -> bool {
        match self {
            CacheError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_timeout()
            }
        }
    }
}

pub type CacheResult<T> = Result<T, CacheError>;

/// The cache interface. An enum rather than a trait object: two known backends, no boxing of
/// futures on the hot path.
// One per process, passed by reference: the size of the Redis variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Cache {
    Memory(MemoryCache),
    Redis(RedisCache),
}

impl Cache {
    pub async fn connect(redis_url: Option<&str>, prefix: &str) -> anyhow::Result<Cache> {
        Ok(match redis_url {
            Some(url) => Cache::Redis(RedisCache::connect(url, prefix).await?),
            None => Cache::Memory(MemoryCache::new()),
        })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Cache::Memory(_) => "memory",
            Cache::Redis(_) => "redis",
        }
    }

    pub async fn get(&self, key: &str) -> CacheResult<Option<String>> {
        match self {
            Cache::Memory(m) => Ok(m.get(key)),
            Cache::Redis(r) => r.get(key).await,
        }
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> CacheResult<()> {
        match self {
            Cache::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            Cache::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Sets only if absent; true when this call set it.
    pub async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<bool> {
        match self {
            Cache::Memory(m) => Ok(m.set_nx(key, value, ttl)),
            Cache::Redis(r) => r.set_nx(key, value, ttl).await,
        }
    }

    pub async fn del(&self, key: &str) -> CacheResult<()> {
        match self {
            Cache::Memory(m) => {
                m.del(key);
                Ok(())
            }
            Cache::Redis(r) => r.del(key).await,
        }
    }

    /// Increments a counter; the first increment starts its `window` (fixed-window counting).
    pub async fn incr(&self, key: &str, window: Duration) -> CacheResult<i64> {
        match self {
            Cache::Memory(m) => Ok(m.incr(key, window)),
            Cache::Redis(r) => r.incr(key, window).await,
        }
    }

    /// Decrements a counter, never below zero.
    pub async fn decr(&self, key: &str) -> CacheResult<i64> {
        match self {
            Cache::Memory(m) => Ok(m.decr(key)),
            Cache::Redis(r) => r.decr(key).await,
        }
    }

    /// Remaining lifetime of a key, if it exists and expires.
    pub async fn ttl(&self, key: &str) -> CacheResult<Option<Duration>> {
        match self {
            Cache::Memory(m) => Ok(m.ttl(key)),
            Cache::Redis(r) => r.ttl(key).await,
        }
    }

    pub async fn ping(&self) -> CacheResult<Duration> {
        let t = Instant::now();
        match self {
            Cache::Memory(_) => {}
            Cache::Redis(r) => r.ping().await?,
        }
        Ok(t.elapsed())
    }
}
