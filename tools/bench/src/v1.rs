//! `v1`: `POST /v1/chat/completions`, streaming or not, at a fixed concurrency (closed loop) or a
//! fixed total rate; the same request mix is sent to the baseline upstream when one is given.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use questech::llm::sse::SseParser;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::api::{self, error_code};
use crate::stats::{Bounds, Stats};
use crate::Ctx;

#[derive(Args, Debug)]
pub struct V1Args {
    /// Requests in flight at once (closed loop: each worker sends the next after an answer).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Total requests per second (open loop, still at most `--concurrency` in flight).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Streaming requests (`stream: true`, with usage).
    #[arg(long)]
    pub stream: bool,
    /// Bench users the requests are spread over (default: one per worker, at most 256).
    #[arg(long)]
    pub users: Option<usize>,
    /// `max_tokens` of each request.
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// The user message of each request.
    #[arg(long, default_value = "Hello! Please tell me something interesting.")]
    pub content: String,
    /// Authenticate with API keys (`qt-…`) instead of access tokens.
    #[arg(long)]
    pub api_key: bool,
}

/// A global schedule for `--rate`: slot k starts at `start + k / rate`.
pub struct Pacer {
    start: tokio::time::Instant,
    period: Duration,
    next: AtomicU64,
}

impl Pacer {
    pub fn new(rate: f64) -> Option<Arc<Pacer>> {
        (rate.is_finite() && rate > 0.0).then(|| {
            Arc::new(Pacer {
                start: tokio::time::Instant::now(),
                period: Duration::from_secs_f64(1.0 / rate),
                next: AtomicU64::new(0),
            })
        })
    }

    /// Waits for the next free slot; returns how late the caller is for it.
    pub async fn wait(&self) -> Duration {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let at = self.start + self.period.mul_f64(k as f64);
        tokio::time::sleep_until(at).await;
        tokio::time::Instant::now().saturating_duration_since(at)
    }
}

/// Where a phase sends its requests.
pub struct Target {
    /// The full `…/chat/completions` URL.
    pub url: String,
    /// Bearer tokens, used round-robin by worker index.
    pub tokens: Vec<String>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrBody<'a>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrBody<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Whole {
    #[serde(default)]
    choices: Vec<serde::de::IgnoredAny>,
}

pub fn body(model: &str, content: &str, stream: bool, max_tokens: Option<u64>) -> Bytes {
    let mut b = json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    });
    if stream {
        b["stream_options"] = json!({"include_usage": true});
    }
    if let Some(m) = max_tokens {
        b["max_tokens"] = json!(m);
    }
    Bytes::from(b.to_string())
}

enum Outcome {
    Ok,
    Err(String),
}

/// One request; records `latency`, `ttft`, `chunk_gap`, `overhead_header`.
async fn one(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    body: Bytes,
    stream: bool,
    st: &mut Stats,
) -> Outcome {
    let t0 = Instant::now();
    let res = client
        .post(&target.url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let mut res = match res {
        Ok(r) => r,
        Err(e) => return Outcome::Err(api::ApiError::transport(&e).code),
    };
    let status = res.status();
    if let Some(ms) = res
        .headers()
        .get("x-questech-overhead-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
    {
        st.lat("overhead_header")
            .record_us((ms.max(0.0) * 1000.0) as u64);
    }
    if !status.is_success() {
        let bytes = res.bytes().await.unwrap_or_default();
        return Outcome::Err(error_code(status, &bytes));
    }
    if !stream {
        let bytes = match res.bytes().await {
            Ok(b) => b,
            Err(e) => return Outcome::Err(api::ApiError::transport(&e).code),
        };
        st.lat("latency").record(t0.elapsed());
        return match serde_json::from_slice::<Whole>(&bytes) {
            Ok(w) if !w.choices.is_empty() => Outcome::Ok,
            _ => Outcome::Err("bad_answer".into()),
        };
    }
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut last_chunk: Option<Instant> = None;
    loop {
        let chunk = match res.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return Outcome::Err("stream_incomplete".into()),
            Err(e) => return Outcome::Err(api::ApiError::transport(&e).code),
        };
        parser.feed_into(&chunk, &mut events);
        for data in events.drain(..) {
            if data == "[DONE]" {
                st.lat("latency").record(t0.elapsed());
                return Outcome::Ok;
            }
            let Ok(c) = serde_json::from_str::<Chunk>(&data) else {
                return Outcome::Err("bad_chunk".into());
            };
            if let Some(e) = c.error {
                return Outcome::Err(
                    e.code
                        .map_or_else(|| "stream_error".into(), Cow::into_owned),
                );
            }
            let has_content = c
                .choices
                .first()
                .and_then(|ch| ch.delta.as_ref())
                .and_then(|d| d.content.as_ref())
                .is_some_and(|s| !s.is_empty());
            if has_content {
                let now = Instant::now();
                match last_chunk {
                    None => st.lat("ttft").record(now - t0),
                    Some(prev) => st.lat("chunk_gap").record(now - prev),
                }
                last_chunk = Some(now);
                st.bump("chunks", 1);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    client: reqwest::Client,
    target: Arc<Target>,
    idx: usize,
    body: Bytes,
    stream: bool,
    bounds: Arc<Bounds>,
    pacer: Option<Arc<Pacer>>,
) -> Stats {
    let mut st = Stats::default();
    let token = target
        .tokens
        .get(idx % target.tokens.len().max(1))
        .cloned()
        .unwrap_or_else(|| "x".into());
    loop {
        if let Some(p) = &pacer {
            tokio::select! {
                lag = p.wait() => st.lat("schedule_lag").record(lag),
                _ = bounds.stop.cancelled() => break,
            }
        }
        if !bounds.try_take() {
            break;
        }
        let outcome = tokio::select! {
            o = one(&client, &target, &token, body.clone(), stream, &mut st) => o,
            _ = bounds.stop.cancelled() => {
                st.error("abandoned");
                break;
            }
        };
        match outcome {
            Outcome::Ok => {
                st.ok += 1;
                st.last = Some(Instant::now());
                bounds.done(true);
            }
            Outcome::Err(code) => {
                let backoff = matches!(code.as_str(), "rate_limited" | "overloaded" | "transport");
                st.error(code);
                bounds.done(false);
                if backoff {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    st
}

/// Runs one phase of `concurrency` workers against `target`.
pub async fn phase(
    ctx: &Ctx,
    label: &'static str,
    target: Target,
    concurrency: usize,
    rate: Option<f64>,
    body: Bytes,
    stream: bool,
) -> (Stats, Duration) {
    let bounds = Arc::new(Bounds::new(ctx.common.duration, ctx.common.turns));
    let pacer = rate.and_then(Pacer::new);
    let target = Arc::new(target);
    let mut set = JoinSet::new();
    for i in 0..concurrency.max(1) {
        set.spawn(worker(
            ctx.client.clone(),
            target.clone(),
            i,
            body.clone(),
            stream,
            bounds.clone(),
            pacer.clone(),
        ));
    }
    crate::run_phase(ctx, label, bounds, set).await
}

pub async fn run(ctx: &Ctx, a: &V1Args) -> Result<Value, String> {
    let n_users = a.users.unwrap_or(a.concurrency.min(256)).max(1);
    let users = ctx.users(n_users, true).await?;
    let mut tokens = Vec::with_capacity(users.len());
    for u in &users {
        if a.api_key {
            tokens.push(
                api::create_api_key(&ctx.client, &ctx.base, &u.access)
                    .await
                    .map_err(|e| format!("creating an API key: {e}"))?,
            );
        } else {
            tokens.push(u.access.clone());
        }
    }
    let body = body(&ctx.common.model, &a.content, a.stream, a.max_tokens);
    let target = Target {
        url: format!("{}/v1/chat/completions", ctx.base),
        tokens,
    };
    let (stats, elapsed) = phase(
        ctx,
        "server",
        target,
        a.concurrency,
        a.rate,
        body.clone(),
        a.stream,
    )
    .await;
    let mut report = json!({
        "config": {
            "concurrency": a.concurrency,
            "rate": a.rate,
            "stream": a.stream,
            "users": n_users,
            "auth": if a.api_key { "api_key" } else { "access_token" },
            "model": ctx.common.model,
            "duration_s": ctx.common.duration.as_secs_f64(),
            "turns": ctx.common.turns,
            "max_tokens": a.max_tokens,
            "baseline": ctx.baseline,
        },
        "result": stats.to_json(elapsed),
    });
    if let Some(b) = &ctx.baseline {
        let target = Target {
            url: format!("{b}/chat/completions"),
            tokens: Vec::new(),
        };
        let (bstats, belapsed) = phase(
            ctx,
            "baseline",
            target,
            a.concurrency,
            a.rate,
            body,
            a.stream,
        )
        .await;
        report["baseline"] = bstats.to_json(belapsed);
        report["overhead"] = crate::overhead(
            &stats,
            &bstats,
            &[
                ("latency", "latency"),
                ("ttft", "ttft"),
                ("chunk_gap", "chunk_gap"),
            ],
        );
    }
    Ok(report)
}
