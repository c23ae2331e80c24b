//! Operations: `/openapi.json` (generated from the routes' annotations), `/docs` (interactive
//! documentation over it) and `/metrics` (Prometheus).

use std::sync::Arc;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::Modify;
use utoipa_scalar::{Scalar, Servable};

use crate::state::AppState;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Questech API", description = "Accounts, credits, stateful chat (REST, SSE, WebSocket) and an OpenAI-compatible API, served by an actor-model chat engine."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "user", description = "Accounts, sessions, credits"),
        (name = "chat", description = "Conversations and messages (REST and SSE)"),
        (name = "v1", description = "OpenAI-compatible API"),
        (name = "admin", description = "Back office (role admin)"),
        (name = "config", description = "Public configuration"),
        (name = "ops", description = "Health and operations"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or qt- API key")
                    .build(),
            ),
        );
    }
}

/// Routes serving the document and the docs page; `api` is the finished OpenAPI document.
pub fn docs_routes(api: OpenApi) -> Router<AppState> {
    let json: Arc<str> = api.to_json().unwrap_or_else(|_| "{}".into()).into();
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        json.to_string(),
                    )
                        .into_response()
                }
            }),
        )
        .merge(Scalar::with_url("/docs", api))
}
