//! The LLM pool actor: owns all outbound concurrency to model providers.
//!
//! Per provider: a concurrency limit (a semaphore), a bounded queue of requests waiting for a
//! slot (`overloaded` once full), and a circuit breaker. Each submitted job runs in its own task
//! (tracked, so shutdown can wait for it): the actor's `handle` never awaits an upstream, it only
//! admits jobs and answers snapshots. A job tries its model, then the model's fallbacks; retries
//! happen only before the first content byte, with exponential backoff and jitter that honours
//! the provider's `Retry-After`; a first-token timeout applies per attempt and a total timeout
//! per job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::EngineError;
use crate::llm::{ChatRequest, Provider, ProviderError, StreamEvent, Usage};

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

/// What a running job reports, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    Delta(String),
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

pub type Sink = Arc<dyn Fn(JobEvent) + Send + Sync>;

pub struct Job {
    /// The model's own route first, then its fallbacks.
    pub routes: Vec<Route>,
    pub cancel: CancellationToken,
    pub sink: Sink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Consecutive failures open the breaker for a cool-down; then one probe is let through
/// (half-open): its success closes the breaker, its failure opens it again.
#[derive(Debug)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
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
pub struct Slot {
    provider: Arc<dyn Provider>,
    permits: Semaphore,
    limit: usize,
    capacity: usize,
    queued: AtomicUsize,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    breaker: Mutex<Breaker>,
    cfg: PoolConfig,
}

impl Slot {
    fn new(provider: Arc<dyn Provider>, cfg: &PoolConfig) -> Self {
        Slot {
            provider,
            permits: Semaphore::new(cfg.max_concurrency),
            limit: cfg.max_concurrency,
            capacity: cfg.queue_capacity,
            queued: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            breaker: Mutex::new(Breaker {
                failures: 0,
                open_until: None,
                probing: false,
            }),
            cfg: cfg.clone(),
        }
    }

    /// May a request go to this provider now?
    fn admit(&self) -> bool {
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

    fn record(&self, ok: bool) {
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

    pub fn snapshot(&self) -> ProviderSnapshot {
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
            limit: self.limit,
            queue_capacity: self.capacity,
            breaker: state,
            requests_total: self.requests.load(Ordering::Relaxed),
            failures_total: self.failures.load(Ordering::Relaxed),
        }
    }
}

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

/// The pool's shared table; the actor admits jobs against it and tasks run on it.
#[derive(Clone)]
pub struct PoolHandle {
    pub actor: ActorRef<PoolMsg>,
    slots: Arc<HashMap<String, Arc<Slot>>>,
}

impl PoolHandle {
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

    /// Hands a job to the pool. Its outcome arrives through the job's sink.
    pub fn submit(&self, job: Job) {
        if let Err(ractor::MessagingErr::SendErr(PoolMsg::Submit(job))) =
            self.actor.cast(PoolMsg::Submit(job))
        {
            (job.sink)(JobEvent::Failed {
                error: EngineError::Internal("model pool stopped".into()),
                delivered: false,
            });
        }
    }
}

pub enum PoolMsg {
    Submit(Job),
}

pub struct LlmPool;

pub struct PoolArgs {
    pub slots: Arc<HashMap<String, Arc<Slot>>>,
    pub tracker: TaskTracker,
}

pub struct PoolState {
    slots: Arc<HashMap<String, Arc<Slot>>>,
    tracker: TaskTracker,
}

impl LlmPool {
    /// Starts the pool actor over the given providers.
    pub async fn start(
        providers: HashMap<String, Arc<dyn Provider>>,
        cfg: PoolConfig,
        tracker: TaskTracker,
    ) -> Result<PoolHandle, ractor::SpawnErr> {
        let slots: HashMap<String, Arc<Slot>> = providers
            .into_iter()
            .map(|(k, p)| (k, Arc::new(Slot::new(p, &cfg))))
            .collect();
        let slots = Arc::new(slots);
        let (actor, _) = Actor::spawn(
            None,
            LlmPool,
            PoolArgs {
                slots: slots.clone(),
                tracker,
            },
        )
        .await?;
        Ok(PoolHandle { actor, slots })
    }
}

impl Actor for LlmPool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        Ok(PoolState {
            slots: args.slots,
            tracker: args.tracker,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Submit(job) => {
                // Admission: the first route's provider must exist and its queue have room.
                let Some(first) = job.routes.first() else {
                    (job.sink)(JobEvent::Failed {
                        error: EngineError::ModelNotFound("no route".into()),
                        delivered: false,
                    });
                    return Ok(());
                };
                if let Some(slot) = state.slots.get(&first.provider) {
                    let busy = slot.permits.available_permits() == 0;
                    if busy && slot.queued.load(Ordering::Relaxed) >= slot.capacity {
                        (job.sink)(JobEvent::Failed {
                            error: EngineError::Overloaded { retry_after: 1 },
                            delivered: false,
                        });
                        return Ok(());
                    }
                    // Counted as queued from admission, so a burst cannot overshoot the queue.
                    slot.queued.fetch_add(1, Ordering::Relaxed);
                }
                let slots = state.slots.clone();
                state.tracker.spawn(run_job(slots, job));
            }
        }
        Ok(())
    }
}

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

enum Attempt {
    /// The job ended (done, failed after content, or cancelled): nothing more to try.
    Finished,
    /// Failed before any content: may be retried / failed over.
    Retry(EngineError, Option<Duration>),
    /// Failed before any content, not retryable.
    Fatal(EngineError),
}

async fn run_job(slots: Arc<HashMap<String, Arc<Slot>>>, job: Job) {
    let started = Instant::now();
    let mut queued_on_first = slots.get(&job.routes[0].provider).cloned();
    let mut last_error = EngineError::ModelNotFound("no configured provider".into());
    let total = slots
        .values()
        .next()
        .map(|s| s.cfg.total_timeout)
        .unwrap_or(Duration::from_secs(300));
    let deadline = started + total;
    'routes: for route in &job.routes {
        let Some(slot) = slots.get(&route.provider).cloned() else {
            continue;
        };
        let cfg = slot.cfg.clone();
        for attempt in 0..=cfg.max_retries {
            if !slot.admit() {
                last_error = EngineError::UpstreamError(format!("{} circuit open", route.provider));
                continue 'routes;
            }
            // Wait for a slot (counted as queued while waiting).
            // The admission already counted this job as queued on its first provider.
            let was_queued = match queued_on_first.take() {
                Some(q) if Arc::ptr_eq(&q, &slot) => true,
                Some(q) => {
                    q.queued.fetch_sub(1, Ordering::Relaxed);
                    false
                }
                None => false,
            };
            if !was_queued {
                slot.queued.fetch_add(1, Ordering::Relaxed);
            }
            let permit = tokio::select! {
                p = slot.permits.acquire() => p.ok(),
                _ = job.cancel.cancelled() => None,
                _ = tokio::time::sleep_until(deadline.into()) => None,
            };
            slot.queued.fetch_sub(1, Ordering::Relaxed);
            let Some(_permit) = permit else {
                if job.cancel.is_cancelled() {
                    (job.sink)(JobEvent::Cancelled);
                } else {
                    (job.sink)(JobEvent::Failed {
                        error: EngineError::UpstreamTimeout,
                        delivered: false,
                    });
                }
                return;
            };
            slot.in_flight.fetch_add(1, Ordering::Relaxed);
            slot.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = attempt_once(&slot, route, &job, deadline).await;
            slot.in_flight.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Attempt::Finished => return,
                Attempt::Fatal(e) => {
                    (job.sink)(JobEvent::Failed {
                        error: e,
                        delivered: false,
                    });
                    return;
                }
                Attempt::Retry(e, retry_after) => {
                    last_error = e;
                    if attempt < cfg.max_retries {
                        let wait = backoff(&cfg, attempt, retry_after);
                        if Instant::now() + wait >= deadline {
                            break 'routes;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {},
                            _ = job.cancel.cancelled() => {
                                (job.sink)(JobEvent::Cancelled);
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(q) = queued_on_first {
        q.queued.fetch_sub(1, Ordering::Relaxed);
    }
    if Instant::now() >= deadline {
        last_error = EngineError::UpstreamTimeout;
    }
    (job.sink)(JobEvent::Failed {
        error: last_error,
        delivered: false,
    });
}

fn classify(slot: &Slot, e: ProviderError) -> Attempt {
    tracing::warn!(provider = slot.provider.name(), error = %e, "upstream attempt failed");
    match e {
        ProviderError::Status {
            status,
            retry_after,
            ..
        } if slot.cfg.retryable_statuses.contains(&status) => {
            slot.record(false);
            Attempt::Retry(
                EngineError::UpstreamError(format!("status {status}")),
                retry_after,
            )
        }
        ProviderError::Status { status, .. } => {
            // A request the provider refuses (400, 401, ...) will not get better by retrying,
            // and says nothing about the provider's health.
            Attempt::Fatal(EngineError::UpstreamError(format!("status {status}")))
        }
        ProviderError::Timeout => {
            slot.record(false);
            Attempt::Retry(EngineError::UpstreamTimeout, None)
        }
        ProviderError::Network(m) | ProviderError::Protocol(m) => {
            slot.record(false);
            Attempt::Retry(EngineError::UpstreamError(m), None)
        }
    }
}

async fn attempt_once(slot: &Slot, route: &Route, job: &Job, deadline: Instant) -> Attempt {
    let t0 = Instant::now();
    let provider = slot.provider.name().to_owned();
    let first_deadline = (t0 + slot.cfg.first_token_timeout).min(deadline);
    let open = slot.provider.stream(route.request.clone());
    let mut stream = tokio::select! {
        r = open => match r {
            Ok(s) => s,
            Err(e) => return classify(slot, e),
        },
        _ = tokio::time::sleep_until(first_deadline.into()) => {
            return classify(slot, ProviderError::Timeout);
        }
        _ = job.cancel.cancelled() => {
            (job.sink)(JobEvent::Cancelled);
            return Attempt::Finished;
        }
    };
    let mut delivered = false;
    loop {
        let limit = if delivered { deadline } else { first_deadline };
        let next = tokio::select! {
            n = stream.next() => n,
            _ = tokio::time::sleep_until(limit.into()) => {
                if delivered {
                    slot.record(false);
                    (job.sink)(JobEvent::Failed { error: EngineError::UpstreamTimeout, delivered: true });
                    return Attempt::Finished;
                }
                return classify(slot, ProviderError::Timeout);
            }
            _ = job.cancel.cancelled() => {
                (job.sink)(JobEvent::Cancelled);
                return Attempt::Finished;
            }
        };
        match next {
            Some(Ok(StreamEvent::Delta(d))) => {
                if !delivered {
                    delivered = true;
                    slot.record(true);
                    metrics::histogram!("questech_llm_time_to_first_token_seconds", "provider" => provider.clone())
                        .record(t0.elapsed().as_secs_f64());
                }
                (job.sink)(JobEvent::Delta(d));
            }
            Some(Ok(StreamEvent::Usage(u))) => (job.sink)(JobEvent::Usage(u)),
            Some(Ok(StreamEvent::Done(reason))) => {
                if !delivered {
                    slot.record(true);
                }
                metrics::histogram!("questech_llm_request_duration_seconds", "provider" => provider.clone())
                    .record(t0.elapsed().as_secs_f64());
                (job.sink)(JobEvent::Done(reason));
                return Attempt::Finished;
            }
            Some(Err(e)) if !delivered => return classify(slot, e),
            Some(Err(e)) => {
                // Content already reached the client: no retry, the turn ends as failed.
                tracing::warn!(provider = slot.provider.name(), error = %e, "upstream stream broke");
                slot.record(false);
                (job.sink)(JobEvent::Failed {
                    error: EngineError::UpstreamError(e.to_string()),
                    delivered: true,
                });
                return Attempt::Finished;
            }
            None if !delivered => {
                return classify(slot, ProviderError::Network("stream ended early".into()))
            }
            None => {
                slot.record(false);
                (job.sink)(JobEvent::Failed {
                    error: EngineError::UpstreamError("stream ended early".into()),
                    delivered: true,
                });
                return Attempt::Finished;
            }
        }
    }
}
