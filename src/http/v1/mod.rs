//! The OpenAI-compatible API (SPEC §9): `POST /v1/chat/completions` (alias
//! `POST /chat/completions`) and `GET /v1/models`, wire-compatible with OpenAI's so that the
//! official SDKs work by changing only the base URL and the key.
//!
//! Stateless, but billed and limited like chat: per-user limits, the maximum cost reserved
//! before anything goes upstream, the actual cost settled after (one ledger row `api`, one usage
//! row `v1`). The call's whole lifecycle runs in a task on the state's tracker, not in the
//! handler: if the client goes away mid-stream, the upstream is still read to its end and billed
//! by the provider's own count (SPEC §6); the response only relays what that task produces.
//!
//! Every response carries `X-Questech-Overhead-Ms`: the engine's own time, i.e. the total minus
//! the time spent waiting on the upstream (for streams: the time before the upstream request
//! was sent).

mod call;
mod chunks;
mod embeddings;
mod messages;
mod overhead;
mod request;
mod responses;
mod tools;

/// What the attributes of the `/v1` request types cannot say, applied to the finished document.
pub fn schema_overrides(doc: &mut Value) {
    request::overrides(doc);
    embeddings::overrides(doc);
    responses::overrides(doc);
}

use axum::extract::State;
use axum::http::HeaderName;
use axum::response::Response;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Json, Path, Query, V1Auth};
use crate::error::Result;
use crate::state::AppState;
pub use request::{CompletionRequest, InMessage, StreamOptions};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(completions))
        .routes(routes!(completions_alias))
        .routes(routes!(models))
        .routes(routes!(embeddings_create))
        .routes(routes!(responses_create))
        .routes(routes!(responses_get, responses_delete))
        .routes(routes!(responses_input_items))
        .route_layer(axum::middleware::from_fn(overhead::overhead))
}

/// `X-Questech-Overhead-Ms`.
pub static OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-questech-overhead-ms");

#[utoipa::path(post, path = "/v1/chat/completions", tag = "v1", request_body = CompletionRequest, responses((status = 200, description = "a `chat.completion` object, or with `stream` an SSE stream of `chat.completion.chunk` objects ending with `data: [DONE]`", content((Object = "application/json"), (crate::http::sse::SseEvent = "text/event-stream"))), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn completions(
    State(state): State<AppState>,
    V1Auth(user): V1Auth,
    Json(body): Json<CompletionRequest>,
) -> Result<Response> {
    call::complete(state, user, body).await
}

/// Alias of `POST /v1/chat/completions`.
#[utoipa::path(post, path = "/chat/completions", tag = "v1", request_body = CompletionRequest, responses((status = 200, description = "as `POST /v1/chat/completions`", content((Object = "application/json"), (crate::http::sse::SseEvent = "text/event-stream"))), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn completions_alias(
    State(state): State<AppState>,
    V1Auth(user): V1Auth,
    Json(body): Json<CompletionRequest>,
) -> Result<Response> {
    call::complete(state, user, body).await
}

#[utoipa::path(post, path = "/v1/embeddings", tag = "v1", request_body = embeddings::EmbeddingRequest, responses((status = 200, description = "`{\"object\":\"list\",\"data\":[{object, index, embedding}], model, usage:{prompt_tokens, total_tokens}}`", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn embeddings_create(
    State(state): State<AppState>,
    V1Auth(user): V1Auth,
    Json(body): Json<embeddings::EmbeddingRequest>,
) -> Result<Response> {
    embeddings::embed(state, user, body).await
}

#[utoipa::path(post, path = "/v1/responses", tag = "v1", request_body = responses::ResponseRequest, responses((status = 200, description = "a `response` object, or with `stream` an SSE stream of the Responses events (`response.created`, `response.output_text.delta`, ..., `response.completed`)", content((Object = "application/json"), (crate::http::sse::SseEvent = "text/event-stream"))), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn responses_create(
    State(state): State<AppState>,
    V1Auth(user): V1Auth,
    Json(body): Json<responses::ResponseRequest>,
) -> Result<Response> {
    responses::create(state, user, body).await
}

#[utoipa::path(get, path = "/v1/responses/{id}", tag = "v1", params(("id" = String, Path, description = "`resp_…`")), responses((status = 200, description = "the `response` object", body = Object), (status = "4XX", description = "error (404 for another user's)", body = crate::error::ApiError)))]
async fn responses_get(
    State(state): State<AppState>,
    V1Auth(user): V1Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    responses::get(state, user, id).await
}

#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "v1", params(("id" = String, Path, description = "`resp_…`")), responses((status = 200, description = "`{id, object, deleted: true}`; the chain's conversation is deleted", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn responses_delete(
    State(state): State<AppState>,
    V1Auth(user): V1Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    responses::delete(state, user, id).await
}

/// The order of a list.
#[derive(serde::Deserialize, utoipa::ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Order {
    Asc,
    Desc,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
struct ItemsQuery {
    /// `desc` (newest first, the default) or `asc`.
    #[param(inline)]
    order: Option<Order>,
}

#[utoipa::path(get, path = "/v1/responses/{id}/input_items", tag = "v1", params(("id" = String, Path, description = "`resp_…`"), ItemsQuery), responses((status = 200, description = "`{object: \"list\", data, first_id, last_id, has_more}`", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn responses_input_items(
    State(state): State<AppState>,
    V1Auth(user): V1Auth,
    Path(id): Path<String>,
    Query(q): Query<ItemsQuery>,
) -> Result<Json<Value>> {
    responses::input_items(state, user, id, q.order == Some(Order::Asc)).await
}

#[utoipa::path(get, path = "/v1/models", tag = "v1", responses((status = 200, description = "`{\"object\":\"list\",\"data\":[{id, object, created, owned_by}]}` of usable models", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn models(State(state): State<AppState>, V1Auth(_user): V1Auth) -> Result<Json<Value>> {
    let data: Vec<Value> = state
        .models
        .all()
        .await?
        .into_iter()
        .filter(|m| state.engine.is_usable(&m.info()))
        .map(|m| {
            json!({
                "id": m.id,
                "object": "model",
                "created": m.created_at / 1000,
                "owned_by": m.provider,
                "capabilities": m.capabilities(),
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
