//! Per-user limits in the shared cache (Redis across nodes).
//!
//! The per-minute budget is a fixed-window counter. Turns in flight are *leased slots* on Redis:
//! a sorted set per user whose members are this node's slots, scored by their lease's expiry.
//! The node renews the leases of the slots it holds on every heartbeat ([`CacheLimits::renew`]);
//! a node that dies stops renewing and its slots drop out of the count within one lease, so a
//! user is never `rate_limited` by turns that are no longer running. The in-process cache (one
//! node) keeps a plain counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::cache::Cache;
use crate::error::Error;
use crate::time::now_ms;
use questech_engine::ports::{Limits, PortResult};

/// Per-user limits in the shared cache: a per-minute counter and leased in-flight slots.
pub struct CacheLimits {
    pub cache: Cache,
    pub rpm: u32,
    pub max_inflight: u32,
    /// A slot's lease on Redis (the node lease).
    pub lease: Duration,
    /// This node's name: the prefix of its slot members.
    pub node_id: String,
    /// The slots this node holds on Redis, per user (members of `inflight:{user}`).
    held: DashMap<i64, Vec<String>>,
    next_slot: AtomicU64,
}

fn slot_key(user_id: i64) -> String {
    format!("inflight:{user_id}")
}

impl CacheLimits {
    pub fn new(cache: Cache, rpm: u32, max_inflight: u32, lease: Duration, node_id: &str) -> Self {
        CacheLimits {
            cache,
            rpm,
            max_inflight,
            lease,
            node_id: node_id.to_owned(),
            held: DashMap::new(),
            next_slot: AtomicU64::new(0),
        }
    }

    pub async fn check(&self, user_id: i64, unlimited: bool) -> Result<(), Error> {
        if unlimited {
            return Ok(());
        }
        if self.rpm > 0 {
            let now = now_ms() / 1000;
            let minute = now / 60;
            let n = self
                .cache
                .incr(&format!("rpm:{user_id}:{minute}"), Duration::from_secs(61))
                .await?;
            if n > i64::from(self.rpm) {
                return Err(Error::rate_limited((60 - (now % 60)).max(1) as u64));
            }
        }
        if self.max_inflight == 0 {
            return Ok(());
        }
        let key = slot_key(user_id);
        match &self.cache {
            Cache::Redis(r) => {
                let n = self.next_slot.fetch_add(1, Ordering::Relaxed);
                let member = format!("{}:{n}", self.node_id);
                let took = r
                    .slot_acquire(&key, &member, self.max_inflight, now_ms(), self.lease)
                    .await?;
                if !took {
                    return Err(Error::rate_limited(1));
                }
                self.held.entry(user_id).or_default().push(member);
            }
            Cache::Memory(_) => {
                let n = self.cache.incr(&key, Duration::from_secs(900)).await?;
                if n > i64::from(self.max_inflight) {
                    self.cache.decr(&key).await?;
                    return Err(Error::rate_limited(1));
                }
            }
        }
        Ok(())
    }

    pub async fn done(&self, user_id: i64, unlimited: bool) {
        if unlimited || self.max_inflight == 0 {
            return;
        }
        let key = slot_key(user_id);
        let r = match &self.cache {
            Cache::Redis(r) => {
                let member = self.held.get_mut(&user_id).and_then(|mut v| v.pop());
                self.held.remove_if(&user_id, |_, v| v.is_empty());
                match member {
                    Some(m) => r.slot_release(&key, &m).await,
                    None => Ok(()),
                }
            }
            Cache::Memory(_) => self.cache.decr(&key).await.map(|_| ()),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not release an in-flight slot");
        }
    }

    /// Renews the leases of every slot this node holds (one pipelined round trip).
    pub async fn renew(&self) -> Result<(), Error> {
        let Cache::Redis(r) = &self.cache else {
            return Ok(());
        };
        let held: Vec<(String, String)> = self
            .held
            .iter()
            .flat_map(|e| {
                let key = slot_key(*e.key());
                e.value()
                    .iter()
                    .map(|m| (key.clone(), m.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(r.slot_renew(&held, now_ms(), self.lease).await?)
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
