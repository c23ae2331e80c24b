//! The LLM pool: owns all outbound concurrency to model providers.
//!
//! Per provider: a concurrency limit (a semaphore), a bounded queue of requests waiting for a
//! slot (`overloaded` once full), and a circuit breaker. The pool is not an actor: admission is
//! an atomic check on the first provider's counters, and a job runs in the caller's own task
//! ([`Pool::run`]), reporting its events through the caller's sink, so a call costs no hop
//! through a mailbox. A job tries its model, then the model's fallbacks; retries happen only
//! before the first content byte, with exponential backoff and jitter that honours the
//! provider's `Retry-After`; a first-token timeout applies per attempt and a total timeout per
//! job.

mod run;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::EngineError;
use crate::llm::{ChatRequest, Provider, Usage};
use slot::Slot;
pub use slot::{BreakerState, ProviderSnapshot};

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub max_concurrency: usize,
    pub queue_capacity: usize,
    pub first_token_timeout: Duration,
    pub total_timeout: Duration,
    pub max_retries: u32,
    pub retryable_statuses: Vec<u16>,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// Base of the exponential backoff (doubled per retry, with full jitter).
    pub backoff_base: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_concurrency: 256,
            queue_capacity: 1024,
            first_token_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            max_retries: 2,
            retryable_statuses: vec![429, 500, 502, 503, 504],
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            backoff_base: Duration::from_millis(200),
        }
    }
}

/// One place a job may be sent: a provider and the request in its own model name.
#[derive(Clone, Debug)]
pub struct Route {
    pub provider: String,
    pub request: ChatRequest,
}

/// What a running job reports, in order: `Answering` once, before any content, then deltas,
/// at most one usage, and one end (`Done`, `Cancelled` or `Failed`).
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    /// The route (index into the job's routes) whose answer follows: the model that answered.
    Answering(usize),
    Delta(String),
    ToolCall(crate::llm::ToolCallDelta),
    Logprobs(serde_json::Value),
    Embeddings(serde_json::Value),
    Usage(Usage),
    /// Normal end.
    Done(Option<String>),
    /// The job was cancelled by its owner; deltas already sent stand.
    Cancelled,
    /// The job failed; `delivered` tells whether any content had been sent.
    Failed {
        error: EngineError,
        delivered: bool,
    },
}

/// Where a job's events go. Called in order from the task that runs the job.
pub type Sink<'a> = &'a mut (dyn FnMut(JobEvent) + Send);

/// The pool's shared table of providers. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    slots: Arc<HashMap<String, Arc<Slot>>>,
    total_timeout: Duration,
}

impl Pool {
    pub fn new(providers: HashMap<String, Arc<dyn Provider>>, cfg: PoolConfig) -> Pool {
        let slots = providers
            .into_iter()
            .map(|(k, p)| (k, Arc::new(Slot::new(p, &cfg))))
            .collect();
        Pool {
            slots: Arc::new(slots),
            total_timeout: cfg.total_timeout,
        }
    }

    pub fn has_provider(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }

    pub fn is_dev(&self, name: &str) -> bool {
        self.slots.get(name).is_some_and(|s| s.provider.is_dev())
    }

    pub fn snapshot(&self) -> Vec<ProviderSnapshot> {
        let mut v: Vec<_> = self.slots.values().map(|s| s.snapshot()).collect();
        v.sort_by(|a, b| a.provider.cmp(&b.provider));
        v
    }

    /// Runs a job to its end in the caller's task: every event goes to `sink`, in order, and
    /// the last one is always `Done`, `Cancelled` or `Failed`. Refused at once (`overloaded`)
    /// when the first provider's queue is full.
    pub async fn run(&self, routes: &[Route], cancel: &CancellationToken, sink: Sink<'_>) {
        let Some(first) = routes.first() else {
            sink(JobEvent::Failed {
                error: EngineError::ModelNotFound("no route".into()),
                delivered: false,
            });
            return;
        };
        let queued = match self.slots.get(&first.provider) {
            Some(slot) if !slot.try_enqueue() => {
                sink(JobEvent::Failed {
                    error: EngineError::Overloaded { retry_after: 1 },
                    delivered: false,
                });
                return;
            }
            Some(slot) => Some(slot.clone()),
            None => None,
        };
        run::Job {
            slots: &self.slots,
            routes,
            cancel,
            sink,
            deadline: tokio::time::Instant::now() + self.total_timeout,
        }
        .run(queued)
        .await;
    }
}

/// The wait before retry number `attempt + 1`: exponential with full jitter, at least what the
/// provider asked for (`Retry-After`), capped.
fn backoff(cfg: &PoolConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = cfg
        .backoff_base
        .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .min(Duration::from_secs(10));
    let jitter = exp.mul_f64(rand::random::<f64>());
    match retry_after {
        Some(r) => r.max(jitter).min(Duration::from_secs(30)),
        None => jitter.max(Duration::from_millis(5)),
    }
}
