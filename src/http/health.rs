//! `GET /health` (SPEC §12): database and cache round trips with their latencies.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

fn check(result: Result<anyhow::Result<Duration>, tokio::time::error::Elapsed>) -> (bool, Value) {
    match result {
        Ok(Ok(d)) => (
            true,
            json!({"status": "up", "latency_ms": (d.as_secs_f64() * 1e6).round() / 1e3}),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check failed");
            (false, json!({"status": "down", "error": "unreachable"}))
        }
        Err(_) => (false, json!({"status": "down", "error": "timeout"})),
    }
}

#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, description = "success", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (db, cache) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.db.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, async {
            state.cache.ping().await.map_err(anyhow::Error::from)
        }),
    );
    let (db_ok, mut db_json) = check(db);
    let (cache_ok, mut cache_json) = check(cache);
    db_json["dialect"] = json!(format!("{:?}", state.db.dialect).to_lowercase());
    cache_json["backend"] = json!(state.cache.backend());
    // Providers: one whose circuit breaker is not closed is down for now; the service still
    // answers (other providers, fallbacks), so that is "degraded", not "unhealthy".
    let providers = state.engine.providers();
    let degraded = providers
        .iter()
        .any(|p| p.breaker != questech_engine::pool::BreakerState::Closed);
    let llm = json!({
        "status": if degraded { "degraded" } else { "up" },
        "providers": providers
            .iter()
            .map(|p| json!({"provider": p.provider, "breaker": p.breaker, "in_flight": p.in_flight, "queued": p.queued}))
            .collect::<Vec<_>>(),
    });
    let healthy = db_ok && cache_ok;
    let status = match (healthy, degraded) {
        (false, _) => "unhealthy",
        (true, true) => "degraded",
        (true, false) => "healthy",
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(json!({
            "status": status,
            "node_id": state.config.node_id,
            "checks": {"database": db_json, "cache": cache_json, "llm": llm},
        })),
    )
}
