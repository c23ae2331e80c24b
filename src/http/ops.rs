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

/// Operations that take no token (everything else needs `Authorization: Bearer`): the document
/// says so with an empty `security` on each of them. The e2e test probes every operation without
/// a token and checks that exactly these answer something other than 401.
const PUBLIC: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/config/app"),
    ("get", "/config/models"),
    ("get", "/content/articles"),
    ("get", "/content/articles/{id}"),
    ("get", "/intelligent/agents"),
    ("get", "/intelligent/agents/{id}"),
    ("get", "/static/{name}"),
    ("post", "/user/login"),
    ("post", "/user/login/apple"),
    ("post", "/user/login/sms"),
    ("post", "/user/register"),
    ("post", "/user/sms/send"),
    ("post", "/user/token/refresh"),
];

/// Marks the [`PUBLIC`] operations of the finished document (the routes' paths are only there
/// once the router is assembled).
fn mark_public(openapi: &mut OpenApi) {
    for (method, path) in PUBLIC {
        let Some(item) = openapi.paths.paths.get_mut(*path) else {
            continue;
        };
        let op = match *method {
            "get" => item.get.as_mut(),
            _ => item.post.as_mut(),
        };
        if let Some(op) = op {
            op.security = Some(Vec::new());
        }
    }
}

/// Gives each operation a unique `operationId` (handlers in different areas share names such as
/// `create`): a repeated one is prefixed with its tag, or else with its method and path.
fn unique_operation_ids(openapi: &mut OpenApi) {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for_each_operation(openapi, |_, _, op| {
        *seen
            .entry(op.operation_id.clone().unwrap_or_default())
            .or_default() += 1;
    });
    let mut taken = std::collections::HashSet::new();
    for_each_operation(openapi, |method, path, op| {
        let id = op.operation_id.clone().unwrap_or_default();
        if seen.get(&id).copied().unwrap_or(0) > 1 || id.is_empty() {
            let tag = op
                .tags
                .as_ref()
                .and_then(|t| t.first())
                .cloned()
                .unwrap_or_default();
            let mut new = format!("{tag}_{id}");
            if taken.contains(&new) {
                let slug: String = path
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                new = format!("{method}{slug}");
            }
            op.operation_id = Some(new);
        }
        taken.insert(op.operation_id.clone().unwrap_or_default());
    });
}

fn for_each_operation(
    openapi: &mut OpenApi,
    mut f: impl FnMut(&str, &str, &mut utoipa::openapi::path::Operation),
) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        for (method, op) in [
            ("get", item.get.as_mut()),
            ("post", item.post.as_mut()),
            ("put", item.put.as_mut()),
            ("patch", item.patch.as_mut()),
            ("delete", item.delete.as_mut()),
        ] {
            if let Some(op) = op {
                f(method, path, op);
            }
        }
    }
}

/// Routes serving the document and the docs page; `api` is the finished OpenAPI document.
pub fn docs_routes(mut api: OpenApi) -> Router<AppState> {
    mark_public(&mut api);
    unique_operation_ids(&mut api);
    let mut doc = serde_json::to_value(&api).unwrap_or_default();
    super::v1::schema_overrides(&mut doc);
    let json: Arc<str> = doc.to_string().into();
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
        .merge(Scalar::with_url("/docs", doc))
}
