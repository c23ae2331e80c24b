//! The Responses API's objects, written from stored messages: a `response` (from the reply and
//! the record kept with it), its output items, its input items, and the stream's events.

use serde_json::{json, Value};

use questech_engine::events::StoredMessage;

/// `resp_<id>` of a reply message.
pub fn response_id(message_id: i64) -> String {
    format!("resp_{message_id}")
}

/// The reply message id of a response id.
pub fn parse_response_id(id: &str) -> Option<i64> {
    id.strip_prefix("resp_")?.parse().ok().filter(|n| *n > 0)
}

/// The record kept with a Responses turn's reply (or the user's message).
pub fn record(m: &StoredMessage) -> Option<&Value> {
    m.extra.as_ref().and_then(|e| e.response.as_ref())
}

/// The reply's text item.
pub fn message_item(id: i64, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": format!("msg_{id}"), "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

/// The reply's function calls as output items.
pub fn function_calls(m: &StoredMessage) -> Vec<Value> {
    let calls = m
        .extra
        .as_ref()
        .and_then(|e| e.wire.as_ref())
        .and_then(|w| w.first())
        .and_then(|w| w["tool_calls"].as_array().cloned())
        .unwrap_or_default();
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"type": "function_call", "id": format!("fc_{}_{i}", m.id),
                "call_id": c["id"], "name": c["function"]["name"],
                "arguments": c["function"]["arguments"], "status": "completed"})
        })
        .collect()
}

/// The `response` object of a stored reply.
pub fn response(m: &StoredMessage) -> Value {
    let rec = record(m).cloned().unwrap_or_else(|| json!({}));
    let mut output = Vec::new();
    if !m.content.is_empty() {
        output.push(message_item(m.id, &m.content, "completed"));
    }
    output.extend(function_calls(m));
    let status = match m.status.as_str() {
        "complete" => "completed",
        "cancelled" => "cancelled",
        "failed" => "failed",
        _ => "in_progress",
    };
    let error = (status == "failed")
        .then(|| json!({"code": "server_error", "message": "the model call failed"}));
    let mut r = shell(&rec, m.id, m.created_at / 1000, &m.model, status);
    r["output"] = Value::Array(output);
    r["error"] = error.unwrap_or(Value::Null);
    r["usage"] = usage(m.usage.prompt_tokens, m.usage.completion_tokens);
    r
}

/// OpenAI's `usage` of a response.
pub fn usage(input: i64, output: i64) -> Value {
    json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output})
}

/// A response without output yet (`response.created`), or the frame of a finished one.
pub fn shell(rec: &Value, id: i64, created_at: i64, model: &str, status: &str) -> Value {
    let or = |k: &str, d: Value| rec.get(k).filter(|v| !v.is_null()).cloned().unwrap_or(d);
    json!({
        "id": response_id(id), "object": "response", "created_at": created_at,
        "status": status, "model": model, "output": [], "error": null,
        "incomplete_details": null,
        "instructions": or("instructions", Value::Null),
        "previous_response_id": or("previous_response_id", Value::Null),
        "metadata": or("metadata", json!({})),
        "tools": or("tools", json!([])),
        "tool_choice": or("tool_choice", json!("auto")),
        "parallel_tool_calls": or("parallel_tool_calls", json!(true)),
        "temperature": or("temperature", Value::Null),
        "top_p": or("top_p", Value::Null),
        "max_output_tokens": or("max_output_tokens", Value::Null),
        "text": or("text", json!({"format": {"type": "text"}})),
        "store": true, "usage": null,
    })
}

/// The input items of a turn, as stored with its user message, with their ids.
pub fn input_items(user: &StoredMessage) -> Vec<Value> {
    let items = record(user)
        .and_then(|r| r["input"].as_array().cloned())
        .unwrap_or_else(|| {
            vec![json!({"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": user.content}]})]
        });
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut it)| {
            if it.get("type").is_none() {
                it["type"] = json!("message");
            }
            if let Value::String(s) = &it["content"] {
                it["content"] = json!([{"type": "input_text", "text": s}]);
            }
            it["id"] = json!(format!("item_{}_{i}", user.id));
            it
        })
        .collect()
}
