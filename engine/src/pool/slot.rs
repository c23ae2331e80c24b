//! One provider's slot in the pool: its concurrency limit, queue counters and circuit breaker.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;

use super::PoolConfig;
use crate::llm::Provider;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Consecutive failures open the breaker for a cool-down; then one probe is let through
/// (half-open): its success closes the breaker, its failure opens it again.
#[derive(Debug, Default)]
struct Breaker {
    /// Failures in a row since the last success.
    failures: u32,
    /// Open until then; `None` while closed.
    open_until: Option<Instant>,
    /// A half-open probe is on its way.
    probing: bool,
}

impl Breaker {
    fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(t) if t > now => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }
}

/// A provider with its limits, queue and breaker.
pub(crate) struct Slot {
    pub(crate) provider: Arc<dyn Provider>,
    /// One permit per request allowed upstream at once.
    pub(crate) permits: Semaphore,
    /// Jobs admitted and waiting for a permit.
    pub(crate) queued: AtomicUsize,
    /// Requests upstream right now.
    pub(crate) in_flight: AtomicUsize,
    /// Attempts sent, and attempts that failed (for the snapshot).
    pub(crate) requests: AtomicU64,
    failures: AtomicU64,
    breaker: Mutex<Breaker>,
    pub(crate) cfg: PoolConfig,
}

impl Slot {
    pub(crate) fn new(provider: Arc<dyn Provider>, cfg: &PoolConfig) -> Self {
        Slot {
            provider,
            permits: Semaphore::new(cfg.max_concurrency),
            queued: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            breaker: Mutex::new(Breaker::default()),
            cfg: cfg.clone(),
        }
    }

    /// Admission of a new job: refused (overloaded) when every permit is taken and the queue
    /// is full. An admitted job counts as queued until it gets a permit or gives up.
    pub(crate) fn try_enqueue(&self) -> bool {
        let busy = self.permits.available_permits() == 0;
        if busy && self.queued.load(Ordering::Relaxed) >= self.cfg.queue_capacity {
            return false;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// May a request go to this provider now?
    pub(crate) fn admit(&self) -> bool {
        let Ok(mut b) = self.breaker.lock() else {
            return true;
        };
        match b.state(Instant::now()) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if b.probing => false,
            BreakerState::HalfOpen => {
                b.probing = true;
                true
            }
        }
    }

    pub(crate) fn record(&self, ok: bool) {
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        b.probing = false;
        if ok {
            b.failures = 0;
            b.open_until = None;
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            b.failures += 1;
            if b.failures >= self.cfg.breaker_failures.max(1) || b.open_until.is_some() {
                b.open_until = Some(Instant::now() + self.cfg.breaker_cooldown);
                tracing::warn!(provider = self.provider.name(), "circuit breaker opened");
            }
        }
    }

    pub(crate) fn snapshot(&self) -> ProviderSnapshot {
        let state = self
            .breaker
            .lock()
            .map(|b| b.state(Instant::now()))
            .unwrap_or(BreakerState::Closed);
        ProviderSnapshot {
            provider: self.provider.name().to_owned(),
            dev: self.provider.is_dev(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            limit: self.cfg.max_concurrency,
            queue_capacity: self.cfg.queue_capacity,
            breaker: state,
            requests_total: self.requests.load(Ordering::Relaxed),
            failures_total: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// What operators see of one provider.
#[derive(Clone, Debug, Serialize)]
pub struct ProviderSnapshot {
    pub provider: String,
    pub dev: bool,
    pub in_flight: usize,
    pub queued: usize,
    pub limit: usize,
    pub queue_capacity: usize,
    pub breaker: BreakerState,
    pub requests_total: u64,
    pub failures_total: u64,
}
