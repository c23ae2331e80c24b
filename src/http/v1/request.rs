//! The request of `POST /v1/chat/completions` and its validation into what the engine runs.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::messages::{self, Messages};
use super::tools::{self, Forwarded};
use crate::error::{Error, Result};

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// A usable model id (`GET /v1/models`).
    #[schema(min_length = 1, max_length = 128)]
    pub model: String,
    #[schema(min_items = 1)]
    #[serde(deserialize_with = "crate::http::de::objects")]
    pub messages: Vec<InMessage>,
    pub stream: Option<bool>,
    #[serde(default, deserialize_with = "crate::http::de::opt_object")]
    pub stream_options: Option<StreamOptions>,
    #[schema(minimum = 1, maximum = 1000000000)]
    #[serde(default, deserialize_with = "crate::http::de::opt_int")]
    pub max_tokens: Option<i64>,
    /// Preferred over `max_tokens` when both are given.
    #[schema(minimum = 1, maximum = 1000000000)]
    #[serde(default, deserialize_with = "crate::http::de::opt_int")]
    pub max_completion_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// A string or an array of up to 4 strings, each 1 to 256 characters (schema: [`overrides`]).
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    /// Only 1.
    #[schema(minimum = 1, maximum = 1)]
    #[serde(default, deserialize_with = "crate::http::de::opt_int")]
    pub n: Option<i64>,
    /// Every other field: `tools`, `tool_choice`, `parallel_tool_calls`, `response_format`,
    /// `seed`, penalties, `logit_bias`, `user`, `metadata` (checked, schema: [`overrides`]) and
    /// any field this server does not know, all forwarded upstream as given.
    #[serde(flatten)]
    #[schema(ignore)]
    pub rest: Map<String, Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct InMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, or an array of `text` parts (and, from the user, `image_url` parts).
    #[schema(value_type = Option<Object>)]
    pub content: Option<Value>,
    /// An assistant's function calls.
    #[schema(value_type = Option<Object>)]
    pub tool_calls: Option<Value>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A validated request.
pub struct Valid {
    pub model: String,
    pub messages: Messages,
    pub forwarded: Forwarded,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
}

pub fn validate(body: CompletionRequest) -> Result<Valid> {
    crate::http::rules::check_len("model", &body.model, 1, 128)?;
    if body.messages.is_empty() {
        return Err(Error::invalid("messages", "must not be empty"));
    }
    if let Some(n) = body.n {
        if n != 1 {
            return Err(Error::invalid("n", "only 1 is supported"));
        }
    }
    let messages = messages::read(&body.messages)?;
    let forwarded = tools::read(body.rest)?;
    let max_tokens = match (body.max_completion_tokens, body.max_tokens) {
        (Some(v), _) => Some(("max_completion_tokens", v)),
        (None, Some(v)) => Some(("max_tokens", v)),
        (None, None) => None,
    };
    let max_tokens = match max_tokens {
        Some((field, v)) if !(1..=1_000_000_000).contains(&v) => {
            return Err(Error::invalid(field, "must be between 1 and 1000000000"))
        }
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
    let stop = parse_stop(body.stop)?;
    Ok(Valid {
        model: body.model,
        messages,
        forwarded,
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

/// `stop`: a string or up to 4 strings of 1 to 256 characters.
fn parse_stop(stop: Option<Value>) -> Result<Vec<String>> {
    let stop = match stop {
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
    Ok(stop)
}

/// What the attributes cannot say: a message's `content` is required except from the assistant
/// and is a string or text parts; `stop` is a string or up to 4 of them. Applied to the finished
/// document.
pub fn overrides(doc: &mut Value) {
    use crate::patterns::pattern;
    use serde_json::json;
    let text_part = json!({"type": "object", "required": ["type", "text"],
        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}});
    let image_part = json!({"type": "object", "required": ["type", "image_url"], "properties": {
        "type": {"type": "string", "enum": ["image_url"]},
        "image_url": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "pattern": pattern::IMAGE_URL},
            "detail": {"type": ["string", "null"], "enum": ["auto", "low", "high", null]}
        }}
    }});
    let text = json!({"oneOf": [{"type": "string"}, {"type": "array", "items": text_part}]});
    let user = json!({"oneOf": [{"type": "string"},
        {"type": "array", "items": {"oneOf": [text_part, image_part]}}]});
    let name = json!({"type": ["string", "null"], "minLength": 1, "maxLength": 64});
    let id = json!({"type": "string", "minLength": 1, "maxLength": 256});
    let call = json!({"type": "object", "required": ["id", "type", "function"], "properties": {
        "id": id, "type": {"type": "string", "enum": ["function"]},
        "function": {"type": "object", "required": ["name", "arguments"], "properties": {
            "name": {"type": "string", "pattern": pattern::TOOL_NAME},
            "arguments": {"type": "string"}
        }}
    }});
    let message = json!({"oneOf": [
        {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"type": "string", "enum": ["system", "developer"]}, "content": text, "name": name
        }},
        {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"type": "string", "enum": ["user"]}, "content": user, "name": name
        }},
        {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "enum": ["assistant"]},
            "content": {"oneOf": [{"type": "null"}, text]}, "name": name,
            "tool_calls": {"type": "array", "minItems": 1, "items": call}
        }},
        {"type": "object", "required": ["role", "content", "tool_call_id"], "properties": {
            "role": {"type": "string", "enum": ["tool"]}, "content": text, "tool_call_id": id
        }}
    ]});
    let stop = json!({"oneOf": [
        {"type": "null"},
        {"type": "string", "minLength": 1, "maxLength": 256},
        {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1, "maxLength": 256}}
    ]});
    let schemas = &mut doc["components"]["schemas"];
    schemas["InMessage"] = message;
    let props = &mut schemas["CompletionRequest"]["properties"];
    props["stop"] = stop;
    super::tools::overrides(props);
}
