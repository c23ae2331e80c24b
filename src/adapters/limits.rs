//! Per-user limits in the shared cache (Redis across nodes).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::cache::Cache;
use crate::error::Error;
use questech_engine::ports::{Limits, PortResult};

/// Per-user limits in the shared cache: a per-minute counter and an in-flight counter.
pub struct CacheLimits {
    pub cache: Cache,
    pub rpm: u32,
    pub max_inflight: u32,
}

impl CacheLimits {
    pub async fn check(&self, user_id: i64, unlimited: bool) -> Result<(), Error> {
        if unlimited {
            return Ok(());
        }
        if self.rpm > 0 {
            let now = crate::time::now_ms() / 1000;
            let minute = now / 60;
            let n = self
                .cache
                .incr(&format!("rpm:{user_id}:{minute}"), Duration::from_secs(61))
                .await?;
            if n > i64::from(self.rpm) {
                return Err(Error::rate_limited((60 - (now % 60)).max(1) as u64));
            }
        }
        if self.max_inflight > 0 {
            let key = format!("inflight:{user_id}");
            // The window only guards against a counter leaked by a dead node.
            let n = self.cache.incr(&key, Duration::from_secs(900)).await?;
            if n > i64::from(self.max_inflight) {
                self.cache.decr(&key).await?;
                return Err(Error::rate_limited(1));
            }
        }
        Ok(())
    }

    pub async fn done(&self, user_id: i64, unlimited: bool) {
        if unlimited || self.max_inflight == 0 {
            return;
        }
        if let Err(e) = self.cache.decr(&format!("inflight:{user_id}")).await {
            tracing::warn!(error = %e, "could not release an in-flight slot");
        }
    }
}

impl Limits for CacheLimits {
    fn acquire(&self, user_id: i64, unlimited: bool) -> BoxFuture<'_, PortResult<()>> {
        async move { Ok(self.check(user_id, unlimited).await?) }.boxed()
    }

    fn release(&self, user_id: i64, unlimited: bool) -> BoxFuture<'_, ()> {
        self.done(user_id, unlimited).boxed()
    }
}
