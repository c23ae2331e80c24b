//! The metered call with in-memory ports: the bill rule, failover pricing, the reservation of
//! the chain's maximum, refusals that change nothing, the one settle retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::engine::{Engine, EngineConfig};
use crate::llm::{ChatMessage, EventStream, Provider, ProviderError, StreamEvent, Usage};
use crate::pool::{Pool, PoolConfig};
use crate::ports::*;

/// Balance, open reservations, and the settlements made.
#[derive(Default)]
struct Mem {
    models: HashMap<String, ModelInfo>,
    credits: AtomicI64,
    reserved: AtomicI64,
    settled: Mutex<Vec<SettleCall>>,
    /// Settlements to fail before one succeeds.
    settle_failures: AtomicU32,
}

impl Store for Mem {
    fn model(&self, id: &str) -> BoxFuture<'_, PortResult<Option<ModelInfo>>> {
        let m = self.models.get(id).cloned();
        Box::pin(async move { Ok(m) })
    }
    fn load_conversation(&self, _: i64) -> BoxFuture<'_, PortResult<Option<ConversationSnapshot>>> {
        Box::pin(async { Ok(None) })
    }
    fn begin_turn(&self, _: BeginTurn) -> BoxFuture<'_, PortResult<BeginOutcome>> {
        Box::pin(async { Ok(BeginOutcome::NotFound) })
    }
    fn finish_turn(&self, _: FinishTurn) -> BoxFuture<'_, PortResult<FinishOutcome>> {
        Box::pin(async { Err(EngineError::Internal("no chat here".into())) })
    }
    fn abort_turn(&self, _: i64, _: Option<i64>) -> BoxFuture<'_, PortResult<bool>> {
        Box::pin(async { Ok(false) })
    }
    fn balance(&self, _: i64) -> BoxFuture<'_, PortResult<i64>> {
        let b = self.credits.load(Ordering::SeqCst);
        Box::pin(async move { Ok(b) })
    }
    fn reserve(&self, r: Reserve) -> BoxFuture<'_, PortResult<Option<i64>>> {
        Box::pin(async move {
            let free = self.credits.load(Ordering::SeqCst) - self.reserved.load(Ordering::SeqCst);
            if free < r.amount {
                return Ok(None);
            }
            self.reserved.fetch_add(r.amount, Ordering::SeqCst);
            Ok(Some(1))
        })
    }
    fn settle(&self, s: SettleCall) -> BoxFuture<'_, PortResult<Settled>> {
        Box::pin(async move {
            if self
                .settle_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(EngineError::Internal("database hiccup".into()));
            }
            self.reserved.fetch_sub(s.reserved, Ordering::SeqCst);
            let charged = s.charge.min(self.credits.load(Ordering::SeqCst));
            let balance = self.credits.fetch_sub(charged, Ordering::SeqCst) - charged;
            if let Ok(mut v) = self.settled.lock() {
                v.push(s);
            }
            Ok(Settled { charged, balance })
        })
    }
}

#[derive(Default)]
struct CountingLimits {
    held: AtomicI64,
}

impl Limits for CountingLimits {
    fn acquire(&self, _: i64, _: bool) -> BoxFuture<'_, PortResult<()>> {
        self.held.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
    fn release(&self, _: i64, _: bool) -> BoxFuture<'_, ()> {
        self.held.fetch_sub(1, Ordering::SeqCst);
        Box::pin(async {})
    }
}

/// Fails with 503, or answers `words` (with usage 10 + 20), or breaks after `words`.
struct Upstream {
    name: &'static str,
    mode: &'static str,
    calls: AtomicU32,
}

impl Provider for Upstream {
    fn name(&self) -> &str {
        self.name
    }
    fn stream(&self, _: ChatRequest) -> BoxFuture<'static, Result<EventStream, ProviderError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mode = self.mode;
        Box::pin(async move {
            let words = [
                Ok(StreamEvent::Delta("hello".into())),
                Ok(StreamEvent::Delta(" there".into())),
            ];
            let tail = match mode {
                "fail" => {
                    return Err(ProviderError::Status {
                        status: 503,
                        message: "down".into(),
                        retry_after: None,
                    })
                }
                "break" => vec![Err(ProviderError::Network("reset".into()))],
                _ => vec![
                    Ok(StreamEvent::Usage(Usage {
                        prompt_tokens: 10,
                        completion_tokens: 20,
                    })),
                    Ok(StreamEvent::Done(Some("stop".into()))),
                ],
            };
            let events: Vec<_> = words.into_iter().chain(tail).collect();
            Ok(Box::pin(futures::stream::iter(events)) as EventStream)
        })
    }
}

fn model(id: &str, provider: &str, price: f64, per_request: i64, fallbacks: &[&str]) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        provider: provider.into(),
        upstream_model: format!("up-{id}"),
        context_window: 8192,
        max_output_tokens: 1000,
        prompt_per_1k: price,
        completion_per_1k: price,
        per_request,
        fallbacks: fallbacks.iter().map(|s| (*s).to_owned()).collect(),
        enabled: true,
        caps: Default::default(),
    }
}

struct Setup {
    engine: Engine,
    store: Arc<Mem>,
    limits: Arc<CountingLimits>,
    primary: Arc<Upstream>,
    backup: Arc<Upstream>,
}

async fn setup(primary_mode: &'static str, backup_mode: &'static str, credits: i64) -> Setup {
    let mut store = Mem::default();
    // The primary is cheap, the fallback dear: the bill must be the fallback's when it answers.
    store
        .models
        .insert("cheap".into(), model("cheap", "a", 1000.0, 1, &["dear"]));
    store
        .models
        .insert("dear".into(), model("dear", "b", 3000.0, 5, &[]));
    store.credits.store(credits, Ordering::SeqCst);
    let store = Arc::new(store);
    let primary = Arc::new(Upstream {
        name: "a",
        mode: primary_mode,
        calls: AtomicU32::new(0),
    });
    let backup = Arc::new(Upstream {
        name: "b",
        mode: backup_mode,
        calls: AtomicU32::new(0),
    });
    let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
    providers.insert("a".into(), primary.clone());
    providers.insert("b".into(), backup.clone());
    let pool = Pool::new(
        providers,
        PoolConfig {
            max_retries: 0,
            ..PoolConfig::default()
        },
    );
    let limits = Arc::new(CountingLimits::default());
    let engine = Engine::start(
        EngineConfig::default(),
        store.clone(),
        limits.clone(),
        Arc::new(LocalOnly),
        pool,
        TaskTracker::new(),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| unreachable!("engine start: {e}"));
    Setup {
        engine,
        store,
        limits,
        primary,
        backup,
    }
}

async fn spec(s: &Setup, partial: bool) -> CallSpec {
    let m = s
        .engine
        .usable_model("cheap")
        .await
        .unwrap_or_else(|e| unreachable!("{e}"));
    let request = ChatRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }],
        max_tokens: Some(100),
        ..Default::default()
    };
    CallSpec {
        user_id: 7,
        unlimited: false,
        kind: CallKind::V1 { api_key_id: None },
        ref_id: "call-1".into(),
        plan: s.engine.plan(m, request, 10).await,
        partial_reaches_user: partial,
    }
}

#[tokio::test]
async fn the_plan_reserves_the_dearest_route_of_the_chain() {
    let s = setup("ok", "ok", 1_000_000).await;
    let plan = spec(&s, false).await.plan;
    assert_eq!(plan.models.len(), 2);
    assert_eq!(plan.routes[1].request.model, "up-dear");
    // cheap: ceil(110 × 1000/1000) + 1 = 111; dear: ceil(110 × 3) + 5 = 335.
    assert_eq!(plan.reserve, 335);
}

#[tokio::test]
async fn a_fallback_answer_is_billed_at_the_fallbacks_prices() {
    let s = setup("fail", "ok", 1_000_000).await;
    let called = s
        .engine
        .call(spec(&s, false).await, &mut |_| {})
        .await
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(called.bill.model.id, "dear");
    // dear: ceil((10 + 20) × 3) + 5.
    assert_eq!(called.charged, 95);
    assert_eq!(called.text, "hello there");
    let settled = s
        .store
        .settled
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    assert_eq!(settled[0].model, "dear");
    assert_eq!(settled[0].status, TurnStatus::Complete);
    assert_eq!(s.primary.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        s.store.reserved.load(Ordering::SeqCst),
        0,
        "the reservation is released"
    );
    assert_eq!(
        s.limits.held.load(Ordering::SeqCst),
        0,
        "the in-flight slot is released"
    );
}

#[tokio::test]
async fn partial_output_is_billed_only_when_it_reached_the_user() {
    for (partial, expected) in [(true, true), (false, false)] {
        let s = setup("break", "ok", 1_000_000).await;
        let called = s
            .engine
            .call(spec(&s, partial).await, &mut |_| {})
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(called.bill.status, TurnStatus::Failed);
        assert!(called.bill.error.is_some());
        assert_eq!(
            called.charged > 0,
            expected,
            "partial_reaches_user = {partial}"
        );
        if expected {
            // Prompt 10 (local) + the delivered completion, cheap's prices, no per_request.
            let c = crate::tokens::count("hello there");
            assert_eq!(called.charged, 10 + c as i64);
        }
        assert_eq!(
            s.backup.calls.load(Ordering::SeqCst),
            0,
            "no failover after content"
        );
    }
}

#[tokio::test]
async fn insufficient_credits_change_nothing_and_send_nothing() {
    let s = setup("ok", "ok", 300).await;
    let r = s.engine.call(spec(&s, false).await, &mut |_| {}).await;
    assert!(matches!(r, Err(EngineError::InsufficientCredits)), "{r:?}");
    assert_eq!(s.primary.calls.load(Ordering::SeqCst), 0);
    assert_eq!(s.store.credits.load(Ordering::SeqCst), 300);
    assert_eq!(s.limits.held.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_failed_settlement_is_retried_once() {
    let s = setup("ok", "ok", 1_000_000).await;
    s.store.settle_failures.store(1, Ordering::SeqCst);
    let called = s
        .engine
        .call(spec(&s, false).await, &mut |_| {})
        .await
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert!(called.bill.error.is_none());
    assert_eq!(s.store.settled.lock().map(|v| v.len()).unwrap_or(0), 1);
    // Twice: not retried again; the call reports that it could not be recorded.
    s.store.settle_failures.store(2, Ordering::SeqCst);
    let called = s
        .engine
        .call(spec(&s, false).await, &mut |_| {})
        .await
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert!(matches!(called.bill.error, Some(EngineError::Internal(_))));
    assert_eq!(s.store.settled.lock().map(|v| v.len()).unwrap_or(0), 1);
}

#[tokio::test]
async fn failure_before_output_costs_nothing() {
    let s = setup("fail", "fail", 1_000_000).await;
    let called = s
        .engine
        .call(spec(&s, true).await, &mut |_| {})
        .await
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(called.charged, 0);
    assert_eq!(called.bill.status, TurnStatus::Failed);
    assert_eq!(s.store.reserved.load(Ordering::SeqCst), 0);
}

/// A passing error is retried; a store that waited out its connection timeout is not (the
/// client's 503 would take twice as long, and the second wait would fail the same way).
#[tokio::test(start_paused = true)]
async fn retry_once_skips_a_store_that_is_down() {
    let calls = AtomicU32::new(0);
    let fast: Result<(), _> = retry_once("fast", || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(EngineError::Unavailable { retry_after: 2 })
    })
    .await;
    assert!(fast.is_err());
    assert_eq!(
        calls.swap(0, Ordering::SeqCst),
        2,
        "a quick failure is retried"
    );

    let started = tokio::time::Instant::now();
    let slow: Result<(), _> = retry_once("slow", || async {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(750)).await;
        Err(EngineError::Unavailable { retry_after: 2 })
    })
    .await;
    assert!(matches!(slow, Err(EngineError::Unavailable { .. })));
    assert_eq!(
        calls.swap(0, Ordering::SeqCst),
        1,
        "a timed-out store is not"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(750));

    let other: Result<(), _> = retry_once("slow internal", || async {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(750)).await;
        Err(EngineError::Internal("deadlock".into()))
    })
    .await;
    assert!(other.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2, "other errors are retried");
}
