//! The pool's retry, backoff, `Retry-After`, breaker, failover and timeouts, with a scripted
//! provider and paused time (so waits of seconds take none).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::llm::{ChatRequest, EventStream, ProviderError, StreamEvent};

/// What one request to the scripted provider does.
#[derive(Clone)]
enum Script {
    Status(u16, Option<Duration>),
    /// Never answers.
    Hang,
    /// Answers these deltas, then usage and done.
    Reply(Vec<&'static str>),
    /// Answers these deltas, then the stream breaks.
    Break(Vec<&'static str>),
}

struct Scripted {
    name: &'static str,
    script: Mutex<VecDeque<Script>>,
    /// When each request arrived.
    calls: Mutex<Vec<Instant>>,
}

impl Scripted {
    fn new(name: &'static str, script: Vec<Script>) -> Arc<Scripted> {
        Arc::new(Scripted {
            name,
            script: Mutex::new(script.into()),
            calls: Mutex::new(Vec::new()),
        })
    }
    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Provider for Scripted {
    fn name(&self) -> &str {
        self.name
    }
    fn stream(&self, _req: ChatRequest) -> BoxFuture<'static, Result<EventStream, ProviderError>> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(Instant::now());
        }
        let next = self
            .script
            .lock()
            .ok()
            .and_then(|mut s| s.pop_front())
            .unwrap_or(Script::Status(500, None));
        Box::pin(async move {
            let events: Vec<Result<StreamEvent, ProviderError>> = match next {
                Script::Status(status, retry_after) => {
                    return Err(ProviderError::Status {
                        status,
                        message: "scripted".into(),
                        retry_after,
                    })
                }
                Script::Hang => {
                    futures::future::pending::<()>().await;
                    Vec::new()
                }
                Script::Reply(words) => words
                    .into_iter()
                    .map(|w| Ok(StreamEvent::Delta(w.into())))
                    .chain([
                        Ok(StreamEvent::Usage(Usage {
                            prompt_tokens: 7,
                            completion_tokens: 2,
                        })),
                        Ok(StreamEvent::Done(Some("stop".into()))),
                    ])
                    .collect(),
                Script::Break(words) => words
                    .into_iter()
                    .map(|w| Ok(StreamEvent::Delta(w.into())))
                    .chain([Err(ProviderError::Network("reset".into()))])
                    .collect(),
            };
            Ok(Box::pin(futures::stream::iter(events)) as EventStream)
        })
    }
}

fn cfg() -> PoolConfig {
    PoolConfig {
        max_concurrency: 2,
        queue_capacity: 1,
        first_token_timeout: Duration::from_secs(5),
        total_timeout: Duration::from_secs(60),
        max_retries: 2,
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(30),
        backoff_base: Duration::from_millis(200),
        ..PoolConfig::default()
    }
}

fn pool(providers: &[Arc<Scripted>], cfg: PoolConfig) -> Pool {
    let map: HashMap<String, Arc<dyn Provider>> = providers
        .iter()
        .map(|p| (p.name.to_owned(), p.clone() as Arc<dyn Provider>))
        .collect();
    Pool::new(map, cfg)
}

fn routes(names: &[&str]) -> Vec<Route> {
    names
        .iter()
        .map(|n| Route {
            provider: (*n).to_owned(),
            request: ChatRequest::default(),
        })
        .collect()
}

async fn run(pool: &Pool, names: &[&str]) -> Vec<JobEvent> {
    let mut events = Vec::new();
    let cancel = CancellationToken::new();
    pool.run(&routes(names), &cancel, &mut |e| events.push(e))
        .await;
    events
}

fn failed(error: EngineError, delivered: bool) -> JobEvent {
    JobEvent::Failed { error, delivered }
}

#[tokio::test(start_paused = true)]
async fn retries_retryable_statuses_with_backoff_then_answers() {
    let p = Scripted::new(
        "a",
        vec![
            Script::Status(503, None),
            Script::Status(429, None),
            Script::Reply(vec!["hi"]),
        ],
    );
    let events = run(&pool(std::slice::from_ref(&p), cfg()), &["a"]).await;
    assert_eq!(events[0], JobEvent::Answering(0));
    assert_eq!(events[1], JobEvent::Delta("hi".into()));
    assert_eq!(events.last(), Some(&JobEvent::Done(Some("stop".into()))));
    let calls = p.calls();
    assert_eq!(calls.len(), 3);
    // Full jitter, at least 5 ms, under base × 2^attempt.
    let gap1 = calls[1] - calls[0];
    let gap2 = calls[2] - calls[1];
    assert!(
        gap1 >= Duration::from_millis(5) && gap1 <= Duration::from_millis(200),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(5) && gap2 <= Duration::from_millis(400),
        "{gap2:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn honours_retry_after() {
    let p = Scripted::new(
        "a",
        vec![
            Script::Status(429, Some(Duration::from_secs(3))),
            Script::Reply(vec!["ok"]),
        ],
    );
    run(&pool(std::slice::from_ref(&p), cfg()), &["a"]).await;
    let calls = p.calls();
    assert!(calls[1] - calls[0] >= Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_not_retried() {
    let p = Scripted::new(
        "a",
        vec![Script::Status(400, None), Script::Reply(vec!["x"])],
    );
    let events = run(&pool(std::slice::from_ref(&p), cfg()), &["a"]).await;
    assert_eq!(
        events,
        vec![failed(
            EngineError::UpstreamError("status 400".into()),
            false
        )]
    );
    assert_eq!(p.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn fails_over_and_names_the_answering_route() {
    let a = Scripted::new("a", vec![Script::Status(503, None); 3]);
    let b = Scripted::new("b", vec![Script::Reply(vec!["from b"])]);
    let events = run(&pool(&[a.clone(), b.clone()], cfg()), &["a", "b"]).await;
    assert_eq!(events[0], JobEvent::Answering(1), "{events:?}");
    assert_eq!(a.calls().len(), 3);
    assert_eq!(b.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_first_token_timeout_stays_a_timeout_when_the_breaker_opens() {
    // One failure opens the breaker: the retry is stopped by it, and the client must still
    // hear what ended the call — the timeout.
    let p = Scripted::new("a", vec![Script::Hang, Script::Hang, Script::Hang]);
    let c = PoolConfig {
        breaker_failures: 1,
        ..cfg()
    };
    let started = Instant::now();
    let events = run(&pool(std::slice::from_ref(&p), c), &["a"]).await;
    assert_eq!(events, vec![failed(EngineError::UpstreamTimeout, false)]);
    assert_eq!(p.calls().len(), 1, "the open breaker stopped the retries");
    assert!(Instant::now() - started >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn retries_after_timeouts_report_a_timeout() {
    let p = Scripted::new("a", vec![Script::Hang, Script::Hang, Script::Hang]);
    let events = run(&pool(std::slice::from_ref(&p), cfg()), &["a"]).await;
    assert_eq!(events, vec![failed(EngineError::UpstreamTimeout, false)]);
    assert_eq!(p.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_then_lets_one_probe_through() {
    let p = Scripted::new("a", vec![Script::Status(500, None); 3]);
    let pl = pool(std::slice::from_ref(&p), cfg());
    run(&pl, &["a"]).await;
    assert_eq!(pl.snapshot()[0].breaker, BreakerState::Open);
    // Open: refused without a request.
    let events = run(&pl, &["a"]).await;
    assert_eq!(
        events,
        vec![failed(
            EngineError::UpstreamError("a circuit open".into()),
            false
        )]
    );
    assert_eq!(p.calls().len(), 3);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(pl.snapshot()[0].breaker, BreakerState::HalfOpen);
    if let Ok(mut s) = p.script.lock() {
        s.push_back(Script::Reply(vec!["back"]));
    }
    let events = run(&pl, &["a"]).await;
    assert_eq!(events[1], JobEvent::Delta("back".into()));
    assert_eq!(pl.snapshot()[0].breaker, BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn no_retry_after_content() {
    let p = Scripted::new(
        "a",
        vec![Script::Break(vec!["par", "tial"]), Script::Reply(vec!["x"])],
    );
    let events = run(&pool(std::slice::from_ref(&p), cfg()), &["a"]).await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(
        events[3],
        JobEvent::Failed {
            delivered: true,
            ..
        }
    ));
    assert_eq!(p.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_answers_overloaded_at_once() {
    let p = Scripted::new(
        "a",
        vec![Script::Hang, Script::Hang, Script::Hang, Script::Hang],
    );
    let pl = pool(std::slice::from_ref(&p), cfg());
    let cancel = CancellationToken::new();
    // Two hold the permits, one waits in the queue (capacity 1).
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (pl, cancel) = (pl.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            let mut ev = Vec::new();
            pl.run(&routes(&["a"]), &cancel, &mut |e| ev.push(e)).await;
            ev
        }));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(pl.snapshot()[0].in_flight, 2);
    assert_eq!(pl.snapshot()[0].queued, 1);
    let events = run(&pl, &["a"]).await;
    assert_eq!(
        events,
        vec![failed(EngineError::Overloaded { retry_after: 1 }, false)]
    );
    cancel.cancel();
    for t in tasks {
        let ev = t.await.unwrap_or_default();
        assert_eq!(ev, vec![JobEvent::Cancelled]);
    }
    assert_eq!(pl.snapshot()[0].queued, 0);
    assert_eq!(pl.snapshot()[0].in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_ends_a_stalled_stream() {
    let p = Scripted::new("a", vec![Script::Hang]);
    let c = PoolConfig {
        total_timeout: Duration::from_secs(2),
        ..cfg()
    };
    let events = run(&pool(&[p], c), &["a"]).await;
    assert_eq!(events, vec![failed(EngineError::UpstreamTimeout, false)]);
}
