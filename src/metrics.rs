//! Prometheus metrics (SPEC §12). Request counters and latencies are recorded by a middleware;
//! the engine's live state (actors, mailboxes, pool) is read from its snapshot at scrape time, so
//! the hot path pays nothing for it. LLM latency and time to first token are recorded by the pool.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::Error;
use crate::state::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (later calls reuse it).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .as_ref()
}

/// Counts every request and its latency by route template (not raw path: ids would explode the
/// label set) and status.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("questech_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("questech_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

/// `GET /metrics`: Prometheus text; needs `Authorization: Bearer <METRICS_TOKEN>` (or an admin's
/// access token) when `METRICS_TOKEN` is set.
pub async fn render(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.0.as_str()) {
            // An admin's access token reads them too (the ops console at `/ops`).
            let admin = match given {
                Some(t) => crate::auth::authenticate(&state, t)
                    .await
                    .and_then(|u| u.require_admin()),
                None => Err(Error::Unauthorized("metrics token required".into())),
            };
            if let Err(e) = admin {
                return e.into_response();
            }
        }
    }
    let Some(handle) = install() else {
        return Error::Internal(anyhow::anyhow!("metrics recorder unavailable")).into_response();
    };
    let snap = state.engine.snapshot();
    metrics::gauge!("questech_ws_connections").set(snap.websocket_connections as f64);
    metrics::gauge!("questech_engine", "kind" => "user_session")
        .set(snap.actors.user_session as f64);
    metrics::gauge!("questech_engine", "kind" => "conversation")
        .set(snap.actors.conversation as f64);
    metrics::gauge!("questech_mailbox_depth_max").set(snap.mailbox.max_depth as f64);
    metrics::counter!("questech_mailbox_rejections_total").absolute(snap.mailbox.rejected_total);
    metrics::counter!("questech_actor_restarts_total", "kind" => "user_session")
        .absolute(snap.restarts.user_session);
    metrics::counter!("questech_actor_restarts_total", "kind" => "conversation")
        .absolute(snap.restarts.conversation);
    for (status, n) in [
        ("started", snap.turns.started),
        ("complete", snap.turns.completed),
        ("failed", snap.turns.failed),
        ("cancelled", snap.turns.cancelled),
        ("taken_over", snap.turns.taken_over),
    ] {
        metrics::counter!("questech_chat_turns_total", "status" => status).absolute(n);
    }
    metrics::gauge!("questech_chat_turns_per_second").set(snap.turns.per_second);
    metrics::counter!("questech_credits_charged_total").absolute(snap.turns.credits_charged);
    for p in &snap.llm {
        let provider = p.provider.clone();
        metrics::gauge!("questech_llm_in_flight", "provider" => provider.clone())
            .set(p.in_flight as f64);
        metrics::gauge!("questech_llm_queued", "provider" => provider.clone()).set(p.queued as f64);
        metrics::gauge!("questech_llm_concurrency_limit", "provider" => provider.clone())
            .set(p.limit as f64);
        metrics::counter!("questech_llm_requests_total", "provider" => provider.clone())
            .absolute(p.requests_total);
        metrics::counter!("questech_llm_failures_total", "provider" => provider.clone())
            .absolute(p.failures_total);
        let open = !matches!(p.breaker, questech_engine::pool::BreakerState::Closed);
        metrics::gauge!("questech_llm_breaker_open", "provider" => provider).set(if open {
            1.0
        } else {
            0.0
        });
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
        .into_response()
}
