//! The front door: routes grouped by area, the extractors that map rejections to the spec's
//! error shape, and the layers every request passes through.

pub mod admin;
pub mod admin_content;
pub mod admin_users;
pub mod api_keys;
pub mod apple;
pub mod chat;
pub mod content;
pub mod health;
pub mod models;
pub mod ops;
pub mod sms;
pub mod toolkit;
pub mod upload;
pub mod user;
pub mod v1;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
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

/// JSON body extractor whose rejections are `invalid_request` / `payload_too_large`.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query-string extractor whose rejections are `invalid_request`.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);

/// Path extractor whose rejections are `not_found`.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

/// `?page=&page_size=` of every paginated list.
#[derive(serde::Deserialize, Default, utoipa::IntoParams)]
pub struct PageQuery {
    pub page: Option<i64>,
    pub page_size: Option<i64>,
}

impl PageQuery {
    pub fn page(&self) -> crate::storage::Page {
        crate::storage::Page::new(self.page, self.page_size)
    }
}

/// The client's address: the socket peer, or the first `X-Forwarded-For` hop when
/// `TRUST_PROXY_HEADERS=true` (behind nginx).
pub struct ClientIp(pub String);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Error> {
        if state.config.trust_proxy_headers {
            if let Some(ip) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                return Ok(ClientIp(ip.to_owned()));
            }
        }
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok(ClientIp(ip))
    }
}

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
