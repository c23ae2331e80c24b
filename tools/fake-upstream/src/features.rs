//! What the fake answers beyond plain text: a scripted tool call when tools are offered, a reply
//! to a tool's result, JSON for `response_format`, image parts counted in usage, and
//! `POST /v1/embeddings`.

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};

/// Prompt tokens the fake counts for one image part.
pub const IMAGE_TOKENS: u64 = 85;

/// What the reply is, decided from the request.
pub enum Reply {
    /// Text deltas (the default words, a tool-result echo or JSON).
    Text(Vec<String>),
    /// One call of `name` with `arguments`, sent in three pieces when streamed.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
}

/// The text of a message's content (a string or text parts).
pub fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Image parts in the request's messages.
pub fn images(req: &Value) -> u64 {
    let messages = req["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    messages
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|p| p["type"] == "image_url")
        .count() as u64
}

/// The reply a request asks for, if not the default words.
pub fn reply(req: &Value, call_no: u64) -> Option<Reply> {
    let messages = req["messages"].as_array()?;
    let last = messages.last()?;
    if last["role"] == "tool" {
        let said = format!("The tool said: {}", text_of(&last["content"]));
        return Some(Reply::Text(split(&said)));
    }
    let tools = req["tools"].as_array().filter(|t| !t.is_empty());
    if let Some(tools) = tools.filter(|_| req["tool_choice"] != "none") {
        let chosen = req["tool_choice"]["function"]["name"].as_str();
        let name = chosen
            .or_else(|| tools[0]["function"]["name"].as_str())
            .unwrap_or("tool")
            .to_owned();
        let arguments = json!({"query": text_of(&last["content"])}).to_string();
        return Some(Reply::ToolCall {
            id: format!("call_fake_{call_no}"),
            name,
            arguments,
        });
    }
    let format = &req["response_format"];
    match format["type"].as_str() {
        Some("json_object") => Some(Reply::Text(split(
            r#"{"answer": "Hello from fake upstream"}"#,
        ))),
        Some("json_schema") => {
            let doc = sample(&format["json_schema"]["schema"]);
            Some(Reply::Text(split(&doc.to_string())))
        }
        _ => None,
    }
}

/// A value of a JSON Schema: each property filled by its type.
fn sample(schema: &Value) -> Value {
    match schema["type"].as_str() {
        Some("object") | None => {
            let mut o = serde_json::Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in props {
                    o.insert(k.clone(), sample(v));
                }
            }
            Value::Object(o)
        }
        Some("string") => json!("fake"),
        Some("integer") => json!(1),
        Some("number") => json!(1.5),
        Some("boolean") => json!(true),
        Some("array") => json!([sample(&schema["items"])]),
        _ => Value::Null,
    }
}

/// Text in a few pieces (each about a third).
fn split(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len().div_ceil(3).max(1);
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

/// The pieces of a tool call as stream deltas.
pub fn tool_call_deltas(id: &str, name: &str, arguments: &str) -> Vec<Value> {
    let mut out = vec![
        json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
        "function": {"name": name, "arguments": ""}}]}),
    ];
    for piece in split(arguments) {
        out.push(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}));
    }
    out
}

/// `POST /v1/embeddings`: a deterministic 8-dimension vector per input, as floats or as
/// base64 little-endian `f32`s (`encoding_format`); usage counts one token per word.
pub async fn embeddings(body: axum::body::Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => {
            let body = json!({"error": {"message": "input is required", "type": "invalid_request_error", "param": "input", "code": null}});
            return (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let base64 = req["encoding_format"] == "base64";
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += text.split_whitespace().count().max(1) as u64;
            let v = vector(text);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": req["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// Eight numbers in [-1, 1) from the text's bytes.
fn vector(text: &str) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    (0..8)
        .map(|_| {
            for b in text.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            h = h.rotate_left(17);
            ((h >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}
