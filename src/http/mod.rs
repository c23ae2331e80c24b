//! The front door: routes grouped by area, the extractors that map rejections to the spec's
//! error shape, and the layers every request passes through.

pub mod admin;
pub mod admin_content;
pub mod admin_users;
pub mod api_keys;
pub mod apple;
pub mod attachments;
pub mod chat;
pub mod content;
pub(crate) mod de;
mod extract;
pub mod health;
pub mod models;
pub mod ops;
pub(crate) mod rules;
pub mod sms;
pub(crate) mod sse;
pub mod toolkit;
pub mod upload;
pub mod user;
pub mod v1;
pub mod web;

use std::time::Duration;

use axum::http::{HeaderName, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::error::Error;
use crate::state::AppState;
pub use extract::{Admin, ClientIp, Json, PageQuery, Path, Query, V1Auth};

async fn not_found() -> Error {
    Error::not_found("no such route")
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed("method not allowed on this route".into())
}

fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "handler panicked");
    Error::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP application. Tests serve exactly this.
pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.config.cors_origins);
    let (router, api) = OpenApiRouter::with_openapi(ops::ApiDoc::openapi())
        .merge(health::routes())
        .nest(
            "/user",
            user::routes()
                .merge(api_keys::routes())
                .merge(sms::routes())
                .merge(apple::routes()),
        )
        .nest("/chat", chat::routes())
        .nest(
            "/admin",
            admin::routes()
                .merge(admin_users::routes())
                .merge(admin_content::routes()),
        )
        .merge(models::routes())
        .merge(v1::routes())
        .merge(content::routes())
        .merge(toolkit::routes())
        .merge(upload::routes())
        .split_for_parts();
    router
        .route("/ws", axum::routing::get(crate::ws::upgrade))
        .merge(ops::docs_routes(api))
        .merge(web::routes())
        .route("/metrics", axum::routing::get(crate::metrics::render))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(cors)
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let rid = req
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %rid, user_id = tracing::field::Empty)
                })
                .on_response(
                    |res: &Response, latency: Duration, _span: &tracing::Span| {
                        tracing::info!(status = res.status().as_u16(), duration_ms = latency.as_secs_f64() * 1e3, "request");
                    },
                ),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .layer(axum::middleware::map_request(stamp))
        .with_state(state)
}

/// When the request entered the router (its outermost layer), for `X-Questech-Overhead-Ms`:
/// the engine's own time includes every layer, not only the route's handler.
#[derive(Clone, Copy, Debug)]
pub struct RequestStart(pub std::time::Instant);

async fn stamp(mut req: Request<axum::body::Body>) -> Request<axum::body::Body> {
    req.extensions_mut()
        .insert(RequestStart(std::time::Instant::now()));
    req
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let list: Vec<_> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    if list.is_empty() {
        // Same-origin only: no CORS headers at all.
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods(tower_http::cors::Any)
        .allow_headers(tower_http::cors::Any)
        .expose_headers([
            REQUEST_ID.clone(),
            HeaderName::from_static("x-questech-overhead-ms"),
        ])
        .max_age(Duration::from_secs(600))
}
