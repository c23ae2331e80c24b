//! The documented shapes of a Responses request that the attributes cannot say: `input` as
//! text or items of three kinds, function tools, `tool_choice`, `text.format` and `metadata`.

use serde_json::{json, Value};

use crate::patterns::pattern;

/// Applied to the finished document.
pub fn overrides(doc: &mut Value) {
    let name = json!({"type": "string", "pattern": pattern::TOOL_NAME});
    let text_part = json!({"type": "object", "required": ["type", "text"], "properties": {
        "type": {"type": "string", "enum": ["input_text", "output_text"]},
        "text": {"type": "string"}}});
    let image_part = json!({"type": "object", "required": ["type", "image_url"], "properties": {
        "type": {"type": "string", "enum": ["input_image"]},
        "image_url": {"type": "string", "pattern": pattern::IMAGE_URL},
        "detail": {"type": "string", "enum": ["auto", "low", "high"]}}});
    let message = json!({"type": "object", "required": ["role", "content"], "properties": {
        "type": {"type": "string", "enum": ["message"]},
        "role": {"type": "string", "enum": ["user", "system", "developer", "assistant"]},
        "content": {"oneOf": [{"type": "string"},
            {"type": "array", "minItems": 1, "items": {"oneOf": [text_part, image_part]}}]}}});
    let id = json!({"type": "string", "minLength": 1, "maxLength": 256});
    let output = json!({"type": "object", "required": ["type", "call_id", "output"], "properties": {
        "type": {"type": "string", "enum": ["function_call_output"]},
        "call_id": id, "output": {"type": "string"}}});
    let call = json!({"type": "object", "required": ["type", "call_id", "name", "arguments"], "properties": {
        "type": {"type": "string", "enum": ["function_call"]},
        "call_id": id, "name": name, "arguments": {"type": "string"}}});
    let strict = json!({"type": ["boolean", "null"]});
    let props = &mut doc["components"]["schemas"]["ResponseRequest"]["properties"];
    props["input"] = json!({"oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "maxItems": 256,
            "items": {"oneOf": [message, output, call]}},
    ]});
    props["tools"] = json!({"type": ["array", "null"], "maxItems": 128, "items": {
        "type": "object", "required": ["type", "name"], "properties": {
            "type": {"type": "string", "enum": ["function"]},
            "name": name, "description": {"type": "string"},
            "parameters": {"type": "object"}, "strict": strict}}});
    props["tool_choice"] = json!({"oneOf": [
        {"type": "null"},
        {"type": "string", "enum": ["none", "auto", "required"]},
        {"type": "object", "required": ["type", "name"], "properties": {
            "type": {"type": "string", "enum": ["function"]}, "name": name}},
    ]});
    props["text"] = json!({"type": ["object", "null"], "properties": {"format": {"oneOf": [
        {"type": "null"},
        {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type", "name", "schema"], "properties": {
            "type": {"type": "string", "enum": ["json_schema"]},
            "name": name, "description": {"type": "string"},
            "schema": {"type": "object"}, "strict": strict}},
    ]}}});
    props["metadata"] = json!({"type": ["object", "null"], "maxProperties": 16,
        "additionalProperties": {"type": "string", "maxLength": 512}});
}
