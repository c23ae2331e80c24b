//! `POST /v1/embeddings` (SPEC §9): through the engine's one metered call like a chat call —
//! the user's limits, a reservation, the LLM pool (queue, retries, breaker, fallbacks that
//! create embeddings too), the bill at the answering model's prompt price, one ledger row `api`
//! and one usage row `v1`.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::call::{ended_early, start, Relay};
use super::overhead::{with_timing, UpstreamTiming};
use crate::auth::{AuthUser, Role};
use crate::error::{Error, Result};
use crate::http::Json;
use crate::state::AppState;
use questech_engine::llm::{Caps, ChatRequest};
use questech_engine::meter::{CallEvent, CallKind, CallSpec};
use questech_engine::tokens;

/// Most inputs in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    /// A usable model with the `embeddings` capability.
    #[schema(min_length = 1, max_length = 128)]
    pub model: String,
    /// A string, or an array of 1 to 2048 strings, of token arrays, or one token array
    /// (schema: [`overrides`]).
    #[schema(value_type = Object)]
    pub input: Value,
    /// `float` (default) or `base64`, forwarded.
    pub encoding_format: Option<String>,
    /// The vectors' size, for models that can shorten them; forwarded.
    #[schema(minimum = 1, maximum = 65536)]
    #[serde(default, deserialize_with = "crate::http::de::opt_int")]
    pub dimensions: Option<i64>,
    #[schema(max_length = 256)]
    pub user: Option<String>,
    /// Any other field, forwarded as given (as on chat completions).
    #[serde(flatten)]
    #[schema(ignore)]
    pub rest: Map<String, Value>,
}

/// A token id as JSON Schema counts integers (`5.0` too).
fn token(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 4_294_967_295.0)
            .map(|f| f as u64)
    })
}

/// The inputs' token counts, one per input; 400 naming the first one that is not valid.
async fn count_inputs(input: &Value) -> Result<Vec<u64>> {
    let bad = || {
        Error::invalid(
            "input",
            "must be a non-empty string, or an array of 1 to 2048 non-empty strings or token arrays",
        )
    };
    let items: Vec<&Value> = match input {
        Value::String(_) => vec![input],
        Value::Array(a) if a.is_empty() || a.len() > MAX_INPUTS => return Err(bad()),
        // One token array is one input.
        Value::Array(a) if a.iter().all(|t| token(t).is_some()) => vec![input],
        // Strings or token arrays, not both.
        Value::Array(a) if a.iter().all(Value::is_string) || a.iter().all(Value::is_array) => {
            a.iter().collect()
        }
        _ => return Err(bad()),
    };
    let mut counts = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let n = match it {
            Value::String(s) if !s.is_empty() => tokens::count_off_runtime(s).await,
            Value::Array(t) if !t.is_empty() && t.iter().all(|t| token(t).is_some()) => {
                t.len() as u64
            }
            _ => {
                return Err(Error::invalid(
                    &format!("input[{i}]"),
                    "must be a non-empty string or a non-empty array of token ids",
                ))
            }
        };
        counts.push(n);
    }
    Ok(counts)
}

/// Checks the request, runs it, answers OpenAI's `list` of `embedding` objects.
pub async fn embed(state: AppState, user: AuthUser, body: EmbeddingRequest) -> Result<Response> {
    crate::http::rules::check_len("model", &body.model, 1, 128)?;
    if let Some(f) = body.encoding_format.as_deref() {
        if f != "float" && f != "base64" {
            return Err(Error::invalid("encoding_format", "must be float or base64"));
        }
    }
    if let Some(d) = body.dimensions {
        if !(1..=65_536).contains(&d) {
            return Err(Error::invalid("dimensions", "must be between 1 and 65536"));
        }
    }
    if body.user.as_ref().is_some_and(|u| u.chars().count() > 256) {
        return Err(Error::invalid("user", "at most 256 characters"));
    }
    let counts = count_inputs(&body.input).await?;
    let model = state.engine.usable_model(&body.model).await?;
    if !model.caps.embeddings {
        return Err(Error::invalid(
            "model",
            &format!("the model {} creates no embeddings", model.id),
        ));
    }
    if let Some(i) = counts.iter().position(|n| *n > model.context_window) {
        return Err(Error::invalid(
            &format!("input[{i}]"),
            &format!(
                "longer than the model's window ({} tokens)",
                model.context_window
            ),
        ));
    }
    let prompt_local: u64 = counts.iter().sum();
    let mut fields = body.rest;
    fields.insert("input".into(), body.input);
    let optional = [
        ("encoding_format", body.encoding_format.map(Value::from)),
        ("dimensions", body.dimensions.map(Value::from)),
        ("user", body.user.map(Value::from)),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            fields.insert(k.into(), v);
        }
    }
    let request = ChatRequest {
        embed: Some(Arc::new(fields)),
        needs: Caps {
            embeddings: true,
            ..Caps::default()
        },
        ..ChatRequest::default()
    };
    let ref_id = format!("emb-{}", crate::ids::next_id());
    let spec = CallSpec {
        user_id: user.user_id,
        unlimited: user.role == Role::Admin,
        kind: CallKind::V1 {
            api_key_id: user.api_key_id,
        },
        ref_id,
        plan: state.engine.plan(model, request, prompt_local).await,
        partial_reaches_user: false,
    };
    let mut rx = start(&state, spec);
    let mut submitted = None;
    loop {
        match rx.recv().await {
            Some(Relay::Event(CallEvent::Submitted(at))) => submitted = Some(at),
            Some(Relay::Event(_)) => {}
            Some(Relay::End(r)) => {
                let called = (*r)?;
                let timing = UpstreamTiming {
                    submitted: submitted.unwrap_or(called.ended),
                    ended: Some(called.ended),
                };
                let res = match (&called.bill.error, called.embeddings) {
                    (Some(e), _) => Error::from(e.clone()).into_response(),
                    (None, Some(data)) => Json(json!({
                        "object": "list",
                        "data": data,
                        "model": called.bill.model.id,
                        "usage": {
                            "prompt_tokens": called.bill.prompt_tokens,
                            "total_tokens": called.bill.prompt_tokens,
                        },
                    }))
                    .into_response(),
                    (None, None) => ended_early().into_response(),
                };
                return Ok(with_timing(res, timing));
            }
            None => return Err(ended_early()),
        }
    }
}

/// What the attributes cannot say: the four shapes of `input`, `encoding_format`'s values.
pub fn overrides(doc: &mut Value) {
    let tokens = json!({"type": "array", "minItems": 1, "maxItems": MAX_INPUTS,
        "items": {"type": "integer", "minimum": 0, "maximum": 4_294_967_295u64}});
    let input = json!({"oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS,
            "items": {"type": "string", "minLength": 1}},
        tokens,
        {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": tokens},
    ]});
    let props = &mut doc["components"]["schemas"]["EmbeddingRequest"]["properties"];
    props["input"] = input;
    props["encoding_format"] =
        json!({"type": ["string", "null"], "enum": ["float", "base64", null]});
}
