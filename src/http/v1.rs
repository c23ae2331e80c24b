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
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Json;
use crate::auth::{self, AuthUser, Role};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage;
use questech_engine::llm::{ChatMessage, ChatRequest};
use questech_engine::meter::{Bill, CallEvent, CallKind, CallSpec, Called};
use questech_engine::{tokens, EngineError};

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
        .filter(|m| state.engine.is_usable(&m.info()))
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

/// What the call's task tells the response.
enum Relay {
    Event(CallEvent),
    End(Box<std::result::Result<Called, EngineError>>),
}

async fn complete(state: AppState, user: AuthUser, body: CompletionRequest) -> Result<Response> {
    let req = validate(body)?;
    let model = state.engine.usable_model(&req.model).await?;
    let prompt_local = tokens::count_messages_off_runtime(&req.messages).await;
    if prompt_local >= model.context_window {
        return Err(Error::invalid(
            "messages",
            &format!(
                "the prompt ({prompt_local} tokens) does not fit the model's context window ({} tokens)",
                model.context_window
            ),
        ));
    }
    // Never more than the model can give, nor than the context leaves.
    let max_tokens = req
        .max_tokens
        .unwrap_or(model.max_output_tokens)
        .min(model.max_output_tokens)
        .min(model.context_window - prompt_local)
        .max(1);
    let request = ChatRequest {
        model: String::new(),
        messages: req.messages,
        max_tokens: Some(max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        stop: req.stop,
    };
    let completion_id = format!("chatcmpl-{}", crate::ids::next_id());
    let chunks = Chunks {
        id: completion_id.clone(),
        created: chrono::Utc::now().timestamp(),
        model: model.id.clone(),
        include_usage: req.include_usage,
    };
    let spec = CallSpec {
        user_id: user.user_id,
        unlimited: user.role == Role::Admin,
        kind: CallKind::V1 {
            api_key_id: user.api_key_id,
        },
        ref_id: completion_id,
        plan: state.engine.plan(model, request, prompt_local).await,
        // A stream shows output as it comes; a plain answer comes whole or not at all.
        partial_reaches_user: req.stream,
    };
    // From here on the call has effects (limits, credits, upstream): it runs in its own task,
    // so that a client going away cannot leave any of them half done.
    let (tx, mut rx) = mpsc::unbounded_channel::<Relay>();
    let engine = state.engine.clone();
    state.tracker.spawn(async move {
        let events = tx.clone();
        let r = engine
            .call(spec, &mut |ev| {
                // The client may be gone: the upstream is still read to its end.
                let _ = events.send(Relay::Event(ev));
            })
            .await;
        let _ = tx.send(Relay::End(Box::new(r)));
    });
    let submitted = match rx.recv().await {
        Some(Relay::Event(CallEvent::Submitted(at))) => at,
        Some(Relay::End(r)) => return Err(r.err().map_or_else(ended_early, Error::from)),
        _ => return Err(ended_early()),
    };
    if !req.stream {
        loop {
            match rx.recv().await {
                Some(Relay::Event(_)) => {}
                Some(Relay::End(r)) => {
                    let called = (*r)?;
                    let timing = UpstreamTiming {
                        submitted,
                        ended: Some(called.ended),
                    };
                    let res = match &called.bill.error {
                        Some(e) => Error::from(e.clone()).into_response(),
                        None => Json(chunks.completion(&called)).into_response(),
                    };
                    return Ok(with_timing(res, timing));
                }
                None => return Err(ended_early()),
            }
        }
    }
    // Streaming: the status is decided by the first thing the upstream does.
    let first = rx.recv().await;
    let mut pending = VecDeque::new();
    pending.push_back(chunks.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
    let finished = match first {
        Some(Relay::End(r))
            if r.as_ref()
                .as_ref()
                .is_ok_and(|c| c.bill.error.is_some() && c.text.is_empty()) =>
        {
            let called = (*r)?;
            let timing = UpstreamTiming {
                submitted,
                ended: Some(called.ended),
            };
            let e = called.bill.error.map_or_else(ended_early, Error::from);
            return Ok(with_timing(e.into_response(), timing));
        }
        None => return Err(ended_early()),
        Some(relay) => chunks.frames(relay, &mut pending),
    };
    let stream = futures::stream::unfold(
        (rx, pending, finished, chunks),
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
                        pending.push_back(sse_data(&ended_early().body_json().to_string()));
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

fn ended_early() -> Error {
    Error::Internal(anyhow::anyhow!("the call ended without an answer"))
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

fn usage_json(b: &Bill) -> Value {
    json!({
        "prompt_tokens": b.prompt_tokens,
        "completion_tokens": b.completion_tokens,
        "total_tokens": b.prompt_tokens + b.completion_tokens,
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

    fn completion(&self, called: &Called) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": called.text, "refusal": null},
                "logprobs": null,
                "finish_reason": called.bill.finish_reason,
            }],
            "usage": usage_json(&called.bill),
        })
    }

    /// Appends the SSE frames of one relay; returns whether the stream is finished.
    fn frames(&self, relay: Relay, out: &mut VecDeque<Bytes>) -> bool {
        let called = match relay {
            Relay::Event(CallEvent::Submitted(_)) => return false,
            Relay::Event(CallEvent::Delta(d)) => {
                out.push_back(self.chunk(json!({"content": d}), Value::Null));
                return false;
            }
            Relay::End(r) => *r,
        };
        match called {
            Ok(Called {
                bill: Bill { error: None, .. },
                ..
            }) => {}
            Ok(Called {
                bill: Bill { error: Some(e), .. },
                ..
            })
            | Err(e) => {
                out.push_back(sse_data(&Error::from(e).body_json().to_string()));
                out.push_back(sse_data("[DONE]"));
                return true;
            }
        }
        if let Ok(called) = &called {
            out.push_back(self.chunk(json!({}), json!(called.bill.finish_reason)));
            if self.include_usage {
                let u = json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage_json(&called.bill),
                });
                out.push_back(sse_data(&u.to_string()));
            }
        }
        out.push_back(sse_data("[DONE]"));
        true
    }
}
