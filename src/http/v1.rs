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

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Json;
use crate::auth::{self, AuthUser, Role};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::{self, usage};
use questech_actors::events::Frame;
use questech_actors::llm::{ChatMessage, ChatRequest, Usage};
use questech_actors::pool::{Job, JobEvent, Route};
use questech_actors::ports::ModelInfo;
use questech_actors::{tokens, EngineError};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(completions))
        .routes(routes!(completions_alias))
        .routes(routes!(models))
        .route_layer(axum::middleware::from_fn(overhead))
}

/// `X-Questech-Overhead-Ms`.
pub static OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-questech-overhead-ms");

/// How long a positive API-key look-up is cached.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// `last_used_at` of a key is written at most this often.
const KEY_TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Texts longer than this are tokenized off the async runtime.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

// ---- authentication -----------------------------------------------------------------------------

/// The caller of a `/v1` request: an access token (JWT), or an API key (`qt-…`). API keys are
/// accepted here and nowhere else.
pub struct V1Auth(pub AuthUser);

impl FromRequestParts<AppState> for V1Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = auth::bearer(parts)
            .ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        if token.starts_with("qt-") {
            api_key_user(state, token).await.map(V1Auth)
        } else {
            auth::authenticate(state, token).await.map(V1Auth)
        }
    }
}

/// A positive look-up as cached: `key_id:user_id:role`.
fn parse_cached(v: &str) -> Option<(i64, i64, Role)> {
    let mut it = v.splitn(3, ':');
    let key_id = it.next()?.parse().ok()?;
    let user_id = it.next()?.parse().ok()?;
    let role = Role::parse(it.next()?)?;
    Some((key_id, user_id, role))
}

async fn api_key_user(state: &AppState, key: &str) -> Result<AuthUser> {
    let invalid = || Error::Unauthorized("invalid API key".into());
    if key.len() > 128 {
        return Err(invalid());
    }
    let hash = auth::token_hash(key);
    let ck = crate::http::api_keys::cache_key(&hash);
    let cached = state.cache.get(&ck).await?.and_then(|v| parse_cached(&v));
    let (key_id, user_id, role) = match cached {
        Some(c) => c,
        None => {
            let owner = storage::api_keys::lookup(&state.db, &hash)
                .await?
                .ok_or_else(invalid)?;
            let role = Role::parse(&owner.role).ok_or_else(invalid)?;
            // `set_nx`: never overwrites the tombstone a concurrent revocation left.
            state
                .cache
                .set_nx(
                    &ck,
                    &format!("{}:{}:{}", owner.key_id, owner.user_id, role.as_str()),
                    KEY_CACHE_TTL,
                )
                .await?;
            (owner.key_id, owner.user_id, role)
        }
    };
    if state
        .cache
        .set_nx(&format!("apikey-used:{key_id}"), "1", KEY_TOUCH_EVERY)
        .await?
    {
        let db = state.db.clone();
        state.tracker.spawn(async move {
            if let Err(e) = storage::api_keys::touch(&db, key_id).await {
                tracing::warn!(error = ?e, "could not record an API key's last use");
            }
        });
    }
    Ok(AuthUser {
        user_id,
        session_id: 0,
        role,
        api_key_id: Some(key_id),
    })
}

// ---- overhead header ----------------------------------------------------------------------------

/// Put on a response by the handler: when the upstream request was sent and, once known, when
/// the upstream finished (`None` for a stream, whose headers go out before it ends).
#[derive(Clone, Copy, Debug)]
struct UpstreamTiming {
    submitted: Instant,
    ended: Option<Instant>,
}

async fn overhead(req: Request, next: Next) -> Response {
    let start = req
        .extensions()
        .get::<crate::http::RequestStart>()
        .map_or_else(Instant::now, |s| s.0);
    let mut res = next.run(req).await;
    let own = match res.extensions().get::<UpstreamTiming>() {
        Some(UpstreamTiming {
            submitted,
            ended: Some(ended),
        }) => start
            .elapsed()
            .saturating_sub(ended.saturating_duration_since(*submitted)),
        Some(UpstreamTiming {
            submitted,
            ended: None,
        }) => submitted.saturating_duration_since(start),
        None => start.elapsed(),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", own.as_secs_f64() * 1000.0)) {
        res.headers_mut().insert(OVERHEAD_HEADER.clone(), v);
    }
    res
}

fn with_timing(mut res: Response, timing: UpstreamTiming) -> Response {
    res.extensions_mut().insert(timing);
    res
}

// ---- request ------------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// A usable model id (`GET /v1/models`).
    pub model: String,
    pub messages: Vec<InMessage>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    /// Preferred over `max_tokens` when both are given.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// A string or an array of up to 4 strings.
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    /// Only 1.
    pub n: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct InMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// A string, or an array of `{"type":"text","text":…}` parts.
    #[schema(value_type = Option<Object>)]
    pub content: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A validated request.
struct Valid {
    model: String,
    messages: Vec<ChatMessage>,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Vec<String>,
}

fn content_text(i: usize, role: &str, content: Option<&Value>) -> Result<String> {
    let field = format!("messages[{i}].content");
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if role == "assistant" => Ok(String::new()),
        None | Some(Value::Null) => Err(Error::invalid(&field, "required")),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str);
                match (kind, p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some("text"), None) => {
                        return Err(Error::invalid(
                            &format!("{field}[{j}].text"),
                            "must be a string",
                        ))
                    }
                    _ => {
                        return Err(Error::invalid(
                            &format!("{field}[{j}].type"),
                            "only \"text\" parts are supported",
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(Error::invalid(
            &field,
            "must be a string or an array of text parts",
        )),
    }
}

fn validate(body: CompletionRequest) -> Result<Valid> {
    if body.model.trim().is_empty() {
        return Err(Error::invalid("model", "required"));
    }
    if body.model.len() > 128 {
        return Err(Error::invalid("model", "must be at most 128 characters"));
    }
    if body.messages.is_empty() {
        return Err(Error::invalid("messages", "must not be empty"));
    }
    if let Some(n) = body.n {
        if n != 1 {
            return Err(Error::invalid("n", "only 1 is supported"));
        }
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            _ => {
                return Err(Error::invalid(
                    &format!("messages[{i}].role"),
                    "must be system, developer, user or assistant",
                ))
            }
        };
        let content = content_text(i, role, m.content.as_ref())?;
        messages.push(ChatMessage {
            role: role.into(),
            content: content.into(),
        });
    }
    let max_tokens = match (body.max_completion_tokens, body.max_tokens) {
        (Some(v), _) => Some(("max_completion_tokens", v)),
        (None, Some(v)) => Some(("max_tokens", v)),
        (None, None) => None,
    };
    let max_tokens = match max_tokens {
        Some((field, v)) if v < 1 => return Err(Error::invalid(field, "must be at least 1")),
        Some((_, v)) => Some(v as u64),
        None => None,
    };
    if let Some(t) = body.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(Error::invalid("temperature", "must be between 0 and 2"));
        }
    }
    if let Some(p) = body.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("top_p", "must be between 0 and 1"));
        }
    }
    let stop = match body.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => {
            let mut v = Vec::with_capacity(items.len());
            for it in items {
                match it {
                    Value::String(s) => v.push(s),
                    _ => {
                        return Err(Error::invalid(
                            "stop",
                            "must be a string or an array of strings",
                        ))
                    }
                }
            }
            v
        }
        Some(_) => {
            return Err(Error::invalid(
                "stop",
                "must be a string or an array of strings",
            ))
        }
    };
    if stop.len() > 4 {
        return Err(Error::invalid("stop", "at most 4 sequences"));
    }
    if stop.iter().any(|s| s.is_empty() || s.chars().count() > 256) {
        return Err(Error::invalid("stop", "each must be 1 to 256 characters"));
    }
    Ok(Valid {
        model: body.model,
        messages,
        stream: body.stream.unwrap_or(false),
        include_usage: body
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        max_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        stop,
    })
}

/// Tokenizes off the runtime when the text is large.
async fn count_messages(messages: &[ChatMessage]) -> Result<u64> {
    let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    if bytes <= INLINE_TOKENIZE_BYTES {
        return Ok(tokens::count_messages(messages));
    }
    let owned = messages.to_vec();
    tokio::task::spawn_blocking(move || tokens::count_messages(&owned))
        .await
        .map_err(Error::internal)
}

async fn count_text(text: &str) -> u64 {
    if text.len() <= INLINE_TOKENIZE_BYTES {
        return tokens::count(text);
    }
    let len = text.len() as u64;
    let text = text.to_owned();
    tokio::task::spawn_blocking(move || tokens::count(&text))
        .await
        .unwrap_or_else(|_| len.div_ceil(4))
}

// ---- handlers -----------------------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/chat/completions", tag = "v1", request_body = CompletionRequest, responses((status = 200, description = "a `chat.completion` object, or with `stream` an SSE stream of `chat.completion.chunk` objects ending with `data: [DONE]`", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn completions(
    State(state): State<AppState>,
    V1Auth(user): V1Auth,
    Json(body): Json<CompletionRequest>,
) -> Result<Response> {
    complete(state, user, body).await
}

/// Alias of `POST /v1/chat/completions`.
#[utoipa::path(post, path = "/chat/completions", tag = "v1", request_body = CompletionRequest, responses((status = 200, description = "as `POST /v1/chat/completions`", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn completions_alias(
    State(state): State<AppState>,
    V1Auth(user): V1Auth,
    Json(body): Json<CompletionRequest>,
) -> Result<Response> {
    complete(state, user, body).await
}

#[utoipa::path(get, path = "/v1/models", tag = "v1", responses((status = 200, description = "`{\"object\":\"list\",\"data\":[{id, object, created, owned_by}]}` of usable models", body = Object), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn models(State(state): State<AppState>, V1Auth(_user): V1Auth) -> Result<Json<Value>> {
    let data: Vec<Value> = state
        .models
        .all()
        .await?
        .into_iter()
        .filter(|m| m.enabled != 0 && state.engine.pool.has_provider(&m.provider))
        .map(|m| {
            json!({
                "id": m.id,
                "object": "model",
                "created": m.created_at / 1000,
                "owned_by": m.provider,
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

// ---- the call -----------------------------------------------------------------------------------

/// What the lifecycle task tells the response.
enum Relay {
    /// The request went to the LLM pool at this instant.
    Submitted(Instant),
    /// Refused before anything went upstream (limits, credits).
    Rejected(Error),
    Delta(String),
    End(Box<Ending>),
}

struct Ending {
    finish_reason: String,
    text: String,
    usage: Usage,
    error: Option<EngineError>,
    /// Whether any content came from the upstream.
    delivered: bool,
    /// When the upstream finished.
    ended: Instant,
}

/// Everything the lifecycle task needs.
struct Call {
    state: AppState,
    user: AuthUser,
    unlimited: bool,
    info: ModelInfo,
    completion_id: String,
    prompt_local: u64,
    reservation_id: i64,
    reserved: i64,
    started: Instant,
}

/// The engine's error as the client sees it: the spec's code, never the provider's own status
/// or message (those are in the logs).
fn public_error(e: EngineError) -> Error {
    match e {
        EngineError::UpstreamError(detail) => {
            tracing::warn!(detail = %detail, "/v1 call failed upstream");
            Error::UpstreamError(EngineError::UpstreamError(String::new()).public_message())
        }
        other => Error::from(other),
    }
}

/// Finish reasons OpenAI SDKs know; anything else is reported as `stop`.
fn finish_reason(r: Option<String>) -> String {
    match r.as_deref() {
        Some(r @ ("stop" | "length" | "content_filter" | "tool_calls" | "function_call")) => {
            r.to_owned()
        }
        _ => "stop".to_owned(),
    }
}

async fn complete(state: AppState, user: AuthUser, body: CompletionRequest) -> Result<Response> {
    let started = Instant::now();
    let req = validate(body)?;
    let model = crate::http::chat::usable_model(&state, &req.model).await?;
    let info = model.info();
    let prompt_local = count_messages(&req.messages).await?;
    if prompt_local >= info.context_window {
        return Err(Error::invalid(
            "messages",
            &format!(
                "the prompt ({prompt_local} tokens) does not fit the model's context window ({} tokens)",
                info.context_window
            ),
        ));
    }
    // Never more than the model can give, nor than the context leaves.
    let max_tokens = req
        .max_tokens
        .unwrap_or(info.max_output_tokens)
        .min(info.max_output_tokens)
        .min(info.context_window - prompt_local)
        .max(1);
    let request = ChatRequest {
        model: info.upstream_model.clone(),
        messages: req.messages,
        max_tokens: Some(max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        stop: req.stop,
    };
    let completion_id = format!("chatcmpl-{}", crate::ids::next_id());
    let call = Call {
        state: state.clone(),
        unlimited: user.role == Role::Admin,
        reserved: info.cost(prompt_local, max_tokens, true),
        info,
        completion_id: completion_id.clone(),
        prompt_local,
        reservation_id: 0,
        started,
        user,
    };
    // From here on the call has effects (limits, credits, upstream): it runs in its own task,
    // so that a client going away cannot leave any of them half done.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Relay>();
    state.tracker.spawn(run_call(call, request, out_tx));
    let submitted = match out_rx.recv().await {
        Some(Relay::Submitted(at)) => at,
        Some(Relay::Rejected(e)) => return Err(e),
        _ => {
            return Err(Error::Internal(anyhow::anyhow!(
                "the call ended before it started"
            )))
        }
    };

    let chunks = Chunks {
        id: completion_id,
        created: chrono::Utc::now().timestamp(),
        model: model.id.clone(),
        include_usage: req.include_usage,
    };
    if !req.stream {
        loop {
            match out_rx.recv().await {
                Some(Relay::Delta(_) | Relay::Submitted(_) | Relay::Rejected(_)) => {}
                Some(Relay::End(end)) => {
                    let timing = UpstreamTiming {
                        submitted,
                        ended: Some(end.ended),
                    };
                    let res = match end.error {
                        Some(e) => public_error(e).into_response(),
                        None => Json(chunks.completion(&end)).into_response(),
                    };
                    return Ok(with_timing(res, timing));
                }
                None => {
                    return Err(Error::Internal(anyhow::anyhow!(
                        "the call ended without an answer"
                    )))
                }
            }
        }
    }
    // Streaming: the status is decided by the first thing the upstream does.
    let first = out_rx.recv().await;
    let mut pending = VecDeque::new();
    pending.push_back(chunks.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
    let finished = match first {
        Some(Relay::End(end)) if end.error.is_some() && !end.delivered => {
            let timing = UpstreamTiming {
                submitted,
                ended: Some(end.ended),
            };
            let e = end
                .error
                .map(public_error)
                .unwrap_or_else(|| Error::Internal(anyhow::anyhow!("no error")));
            return Ok(with_timing(e.into_response(), timing));
        }
        None => {
            return Err(Error::Internal(anyhow::anyhow!(
                "the call ended without an answer"
            )))
        }
        Some(relay) => chunks.frames(relay, &mut pending),
    };
    let stream = futures::stream::unfold(
        (out_rx, pending, finished, chunks),
        |(mut rx, mut pending, mut finished, chunks)| async move {
            loop {
                if let Some(b) = pending.pop_front() {
                    return Some((Ok::<Bytes, Infallible>(b), (rx, pending, finished, chunks)));
                }
                if finished {
                    return None;
                }
                finished = match rx.recv().await {
                    Some(relay) => chunks.frames(relay, &mut pending),
                    None => {
                        let e =
                            Error::Internal(anyhow::anyhow!("the call ended without an answer"));
                        pending.push_back(sse_data(&e.body_json().to_string()));
                        pending.push_back(sse_data("[DONE]"));
                        true
                    }
                };
            }
        },
    );
    let res = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    Ok(with_timing(
        res,
        UpstreamTiming {
            submitted,
            ended: None,
        },
    ))
}

fn sse_data(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// Builds OpenAI's objects for one call.
struct Chunks {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

impl Chunks {
    fn chunk(&self, delta: Value, finish_reason: Value) -> Bytes {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        sse_data(&c.to_string())
    }

    fn completion(&self, end: &Ending) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": end.text, "refusal": null},
                "logprobs": null,
                "finish_reason": end.finish_reason,
            }],
            "usage": usage_json(&end.usage),
        })
    }

    /// Appends the SSE frames of one relay; returns whether the stream is finished.
    fn frames(&self, relay: Relay, out: &mut VecDeque<Bytes>) -> bool {
        match relay {
            Relay::Submitted(_) | Relay::Rejected(_) => false,
            Relay::Delta(d) => {
                out.push_back(self.chunk(json!({"content": d}), Value::Null));
                false
            }
            Relay::End(end) => {
                match &end.error {
                    Some(e) => {
                        out.push_back(sse_data(&public_error(e.clone()).body_json().to_string()));
                    }
                    None => {
                        out.push_back(self.chunk(json!({}), json!(end.finish_reason)));
                        if self.include_usage {
                            let u = json!({
                                "id": self.id,
                                "object": "chat.completion.chunk",
                                "created": self.created,
                                "model": self.model,
                                "choices": [],
                                "usage": usage_json(&end.usage),
                            });
                            out.push_back(sse_data(&u.to_string()));
                        }
                    }
                }
                out.push_back(sse_data("[DONE]"));
                true
            }
        }
    }
}

/// Admits the call (per-user limits, credit reservation), hands it to the LLM pool, then runs
/// its [`lifecycle`]. Tells the response what happened through `out`.
async fn run_call(mut call: Call, request: ChatRequest, out: mpsc::UnboundedSender<Relay>) {
    let state = call.state.clone();
    let user_id = call.user.user_id;
    if let Err(e) = state.limits.check(user_id, call.unlimited).await {
        let _ = out.send(Relay::Rejected(e));
        return;
    }
    let ttl_ms = (state.config.llm_total_timeout + Duration::from_secs(300)).as_millis() as i64;
    let reservation = usage::reserve(
        &state.db,
        user_id,
        call.reserved,
        &state.config.node_id,
        &call.completion_id,
        ttl_ms,
    )
    .await;
    call.reservation_id = match reservation {
        Ok(Some(id)) => id,
        Ok(None) => {
            state.limits.done(user_id, call.unlimited).await;
            let _ = out.send(Relay::Rejected(Error::InsufficientCredits));
            return;
        }
        Err(e) => {
            state.limits.done(user_id, call.unlimited).await;
            let _ = out.send(Relay::Rejected(e));
            return;
        }
    };
    // The model's own route, then its usable fallbacks on other providers.
    let mut routes = vec![Route {
        provider: call.info.provider.clone(),
        request: request.clone(),
    }];
    for fb in &call.info.fallbacks {
        if let Ok(Some(m)) = state.models.get(fb).await {
            if m.enabled != 0 && state.engine.pool.has_provider(&m.provider) {
                let mut r = request.clone();
                r.model = m.info().upstream_model;
                routes.push(Route {
                    provider: m.provider.clone(),
                    request: r,
                });
            }
        }
    }
    let (ev_tx, ev_rx) = mpsc::unbounded_channel::<JobEvent>();
    let _ = out.send(Relay::Submitted(Instant::now()));
    state.engine.pool.submit(Job {
        routes,
        cancel: CancellationToken::new(),
        sink: Arc::new(move |ev| {
            let _ = ev_tx.send(ev);
        }),
    });
    lifecycle(call, ev_rx, out).await;
}

/// Runs one call to its end whatever the client does: collects the upstream's events, relays
/// them, settles the credits, logs the usage, frees the user's in-flight slot.
async fn lifecycle(
    call: Call,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
    out: mpsc::UnboundedSender<Relay>,
) {
    let mut text = String::new();
    let mut reported: Option<Usage> = None;
    let (status, reason, mut error) = loop {
        match events.recv().await {
            Some(JobEvent::Delta(d)) => {
                text.push_str(&d);
                // The client may be gone: the upstream is still read to its end.
                let _ = out.send(Relay::Delta(d));
            }
            Some(JobEvent::Usage(u)) => reported = Some(u),
            Some(JobEvent::Done(r)) => break ("ok", finish_reason(r), None),
            Some(JobEvent::Cancelled) => break ("cancelled", "stop".to_owned(), None),
            Some(JobEvent::Failed { error, .. }) => break ("failed", String::new(), Some(error)),
            None => {
                break (
                    "failed",
                    String::new(),
                    Some(EngineError::Internal(
                        "the model call ended without an answer".into(),
                    )),
                )
            }
        }
    };
    let ended = Instant::now();
    let delivered = !text.is_empty();
    // SPEC §6: a complete call costs the provider's count (or ours) with `per_request`; a call
    // that broke after content costs its prompt and what was delivered; one that failed before
    // any content costs nothing. Our own count of the completion is only made when the
    // provider's is missing or does not cover what was delivered.
    let (prompt, completion) = match (status, reported) {
        ("ok", Some(u)) => (u.prompt_tokens, u.completion_tokens),
        (_, Some(u)) if delivered => (u.prompt_tokens, count_text(&text).await),
        ("ok", None) => (call.prompt_local, count_text(&text).await),
        _ if delivered => (call.prompt_local, count_text(&text).await),
        _ => (0, 0),
    };
    let charge = match status {
        "ok" => call.info.cost(prompt, completion, true),
        _ if delivered => call.info.cost(prompt, completion, false),
        _ => 0,
    };
    let settle = usage::Settle {
        user_id: call.user.user_id,
        reservation_id: call.reservation_id,
        reserved: call.reserved,
        charge,
        reason: "api",
        kind: "v1",
        ref_id: &call.completion_id,
        model: &call.info.id,
        api_key_id: call.user.api_key_id,
        prompt_tokens: prompt as i64,
        completion_tokens: completion as i64,
        latency_ms: call.started.elapsed().as_millis() as i64,
        status,
    };
    let mut settled = None;
    for attempt in 0..3u32 {
        match usage::settle(&call.state.db, &settle).await {
            Ok(s) => {
                settled = Some(s);
                break;
            }
            Err(e) => {
                tracing::warn!(attempt, error = ?e, "settling a /v1 call failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
    call.state
        .limits
        .done(call.user.user_id, call.unlimited)
        .await;
    match settled {
        Some(s) if s.charged > 0 => {
            call.state
                .engine
                .metrics
                .credits_charged
                .fetch_add(s.charged as u64, std::sync::atomic::Ordering::Relaxed);
            call.state.engine.publish(
                call.user.user_id,
                &Frame::CreditsUpdated {
                    balance: s.balance,
                    delta: -s.charged,
                    reason: "api".into(),
                },
            );
        }
        Some(_) => {}
        None => {
            tracing::error!(
                request = %call.completion_id,
                "could not settle a /v1 call; its reservation is released when it expires"
            );
            error.get_or_insert(EngineError::Internal("could not record the call".into()));
        }
    }
    let _ = out.send(Relay::End(Box::new(Ending {
        finish_reason: reason,
        text,
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
        },
        error,
        delivered,
        ended,
    })));
}
