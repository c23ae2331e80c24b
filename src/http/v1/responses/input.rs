//! A Responses API request (`POST /v1/responses`) read into a conversation turn: the input
//! items as Chat Completions wire messages, the function tools, `tool_choice` and `text.format`
//! as the fields forwarded upstream, and what the model must be able to do.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::tools::described;
use crate::error::{Error, Result};
use crate::patterns::{matches, pattern};
use questech_engine::conversation::{TurnExtras, IMAGE_TOKENS};
use questech_engine::llm::Caps;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ResponseRequest {
    /// A usable model id.
    #[schema(min_length = 1, max_length = 128)]
    pub model: String,
    /// Text, or an array of input items: messages (`input_text` and `input_image` parts),
    /// `function_call` and `function_call_output` items (schema: `overrides`).
    #[schema(value_type = Object)]
    pub input: Value,
    /// The system prompt of this turn.
    #[schema(max_length = 100000)]
    pub instructions: Option<String>,
    /// Function tools `{type: "function", name, description?, parameters?, strict?}`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// `auto`, `none`, `required` or `{type: "function", name}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// Keep the response (default true): the chain is a conversation of the user's.
    pub store: Option<bool>,
    /// Continue this chain (the newest response of one of the user's chains).
    #[schema(max_length = 64)]
    pub previous_response_id: Option<String>,
    pub stream: Option<bool>,
    #[schema(minimum = 1, maximum = 1000000000)]
    #[serde(default, deserialize_with = "crate::http::de::opt_int")]
    pub max_output_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// `{format: {type: "text" | "json_object" | "json_schema", name?, schema?, strict?}}`.
    #[schema(value_type = Option<Object>)]
    pub text: Option<Value>,
    /// Kept with the response.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Other fields (`user`, `include`, `truncation`, `reasoning`, ...) are accepted and not
    /// acted upon.
    #[serde(flatten)]
    #[schema(ignore)]
    pub _rest: Map<String, Value>,
}

/// A turn read from a request.
pub struct Read {
    /// The stored text of the user's side.
    pub content: String,
    pub extras: TurnExtras,
    /// The input items as given (normalised), returned by `input_items`.
    pub items: Vec<Value>,
}

fn bad(field: &str, why: &str) -> Error {
    Error::invalid(field, why)
}

/// A message's `content` as wire parts and its text; images counted.
fn message_content(
    field: &str,
    role: &str,
    content: &Value,
    images: &mut u64,
) -> Result<(Value, String)> {
    let parts = match content {
        Value::String(s) => return Ok((json!(s), s.clone())),
        Value::Array(parts) if !parts.is_empty() => parts,
        _ => return Err(bad(field, "must be a string or an array of content parts")),
    };
    let before = *images;
    let mut wire = Vec::with_capacity(parts.len());
    let mut text = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        let f = format!("{field}[{j}]");
        match p["type"].as_str() {
            Some("input_text" | "output_text") => {
                let t = p["text"]
                    .as_str()
                    .ok_or_else(|| bad(&f, "text parts need `text`"))?;
                wire.push(json!({"type": "text", "text": t}));
                text.push(t.to_owned());
            }
            Some("input_image") => {
                let url = p["image_url"].as_str().unwrap_or_default();
                if !matches(pattern::IMAGE_URL, url) {
                    return Err(bad(
                        &format!("{f}.image_url"),
                        "must be an https or data:image URL",
                    ));
                }
                let detail = p["detail"].as_str().unwrap_or("auto");
                if !["auto", "low", "high"].contains(&detail) {
                    return Err(bad(&format!("{f}.detail"), "must be auto, low or high"));
                }
                *images += 1;
                wire.push(
                    json!({"type": "image_url", "image_url": {"url": url, "detail": detail}}),
                );
            }
            _ => return Err(bad(&f, "unsupported content part")),
        }
    }
    // Text-only parts of a non-user message go as one string.
    if role != "user" && *images == before {
        return Ok((json!(text.join("\n")), text.join("\n")));
    }
    Ok((Value::Array(wire), text.join("\n")))
}

/// One input item as a wire message, its text, images counted.
fn item(i: usize, it: &Value, images: &mut u64, tools: &mut bool) -> Result<(Value, String)> {
    let field = format!("input[{i}]");
    let s = |k: &str| it[k].as_str().filter(|v| !v.is_empty());
    match it["type"].as_str() {
        None | Some("message") => {
            let role = s("role").unwrap_or_default();
            if !["user", "system", "developer", "assistant"].contains(&role) {
                return Err(bad(
                    &format!("{field}.role"),
                    "must be user, system, developer or assistant",
                ));
            }
            let (content, text) =
                message_content(&format!("{field}.content"), role, &it["content"], images)?;
            Ok((json!({"role": role, "content": content}), text))
        }
        Some("function_call_output") => {
            let call_id = s("call_id")
                .filter(|c| c.len() <= 256)
                .ok_or_else(|| bad(&format!("{field}.call_id"), "is required"))?;
            let output = it["output"]
                .as_str()
                .ok_or_else(|| bad(&format!("{field}.output"), "must be a string"))?;
            *tools = true;
            Ok((
                json!({"role": "tool", "tool_call_id": call_id, "content": output}),
                output.to_owned(),
            ))
        }
        Some("function_call") => {
            let call_id = s("call_id")
                .filter(|c| c.len() <= 256)
                .ok_or_else(|| bad(&format!("{field}.call_id"), "is required"))?;
            let name = s("name").filter(|n| matches(pattern::TOOL_NAME, n));
            let name =
                name.ok_or_else(|| bad(&format!("{field}.name"), "must be a function name"))?;
            let args = it["arguments"]
                .as_str()
                .ok_or_else(|| bad(&format!("{field}.arguments"), "must be a string"))?;
            *tools = true;
            let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": args}});
            Ok((
                json!({"role": "assistant", "content": null, "tool_calls": [call]}),
                String::new(),
            ))
        }
        _ => Err(bad(&format!("{field}.type"), "unsupported input item")),
    }
}

/// The function tools in Chat Completions form.
fn tools(v: &Value) -> Result<Vec<Value>> {
    let list = v
        .as_array()
        .ok_or_else(|| bad("tools", "must be an array"))?;
    if list.len() > 128 {
        return Err(bad("tools", "at most 128 tools"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        if t["type"] != "function" {
            return Err(bad(
                &format!("tools[{i}].type"),
                "only function tools are supported",
            ));
        }
        let name = t["name"]
            .as_str()
            .filter(|n| matches(pattern::TOOL_NAME, n));
        let name =
            name.ok_or_else(|| bad(&format!("tools[{i}].name"), "must be a function name"))?;
        described(&format!("tools[{i}]"), Some(t))?;
        if t.get("parameters").is_some_and(|p| !p.is_object()) {
            return Err(bad(
                &format!("tools[{i}].parameters"),
                "must be a JSON Schema object",
            ));
        }
        let mut f = json!({"name": name});
        for k in ["description", "parameters", "strict"] {
            if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                f[k] = v.clone();
            }
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(out)
}

/// `tool_choice` in Chat Completions form.
fn tool_choice(v: &Value) -> Result<Value> {
    match v {
        Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => Ok(v.clone()),
        Value::Object(o) if o.get("type") == Some(&json!("function")) => {
            let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
            if !matches(pattern::TOOL_NAME, name) {
                return Err(bad("tool_choice.name", "must be a function name"));
            }
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(bad(
            "tool_choice",
            "must be auto, none, required or a function",
        )),
    }
}

/// `text.format` as `response_format` (`None` for plain text).
fn format(text: &Value) -> Result<Option<Value>> {
    let f = &text["format"];
    match f["type"].as_str() {
        None if f.is_null() => Ok(None),
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let name = f["name"]
                .as_str()
                .filter(|n| matches(pattern::TOOL_NAME, n));
            let name = name.ok_or_else(|| bad("text.format.name", "must be a schema name"))?;
            described("text.format", Some(f))?;
            if !f["schema"].is_object() {
                return Err(bad("text.format.schema", "must be an object"));
            }
            let mut js = json!({"name": name, "schema": f["schema"]});
            for k in ["strict", "description"] {
                if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                    js[k] = v.clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": js})))
        }
        _ => Err(bad(
            "text.format.type",
            "must be text, json_object or json_schema",
        )),
    }
}

/// Reads the request into a turn (400 naming the first field that is wrong).
pub fn read(req: &ResponseRequest) -> Result<Read> {
    let items: Vec<Value> = match &req.input {
        Value::String(s) if !s.is_empty() => vec![json!({"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": s}]})],
        Value::Array(a) if !a.is_empty() && a.len() <= 256 => a.clone(),
        _ => {
            return Err(bad(
                "input",
                "must be a non-empty string or 1 to 256 input items",
            ))
        }
    };
    let (mut images, mut uses_tools) = (0u64, false);
    let mut wire = Vec::with_capacity(items.len());
    let mut texts = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let (w, t) = item(i, it, &mut images, &mut uses_tools)?;
        wire.push(w);
        if !t.is_empty() {
            texts.push(t);
        }
    }
    let mut content = texts.join("\n\n");
    if content.is_empty() {
        content = "(no text)".into();
    }
    if content.chars().count() > 1_000_000 {
        return Err(bad("input", "at most 1,000,000 characters of text"));
    }
    let mut fields = Map::new();
    let mut tools_text = String::new();
    if let Some(t) = req.tools.as_ref().filter(|t| !t.is_null()) {
        let t = tools(t)?;
        if !t.is_empty() {
            tools_text = serde_json::to_string(&t).unwrap_or_default();
            fields.insert("tools".into(), Value::Array(t));
        }
    }
    if let Some(c) = req.tool_choice.as_ref().filter(|c| !c.is_null()) {
        fields.insert("tool_choice".into(), tool_choice(c)?);
    }
    if let Some(p) = req.parallel_tool_calls {
        fields.insert("parallel_tool_calls".into(), p.into());
    }
    let mut json_out = false;
    if let Some(t) = req.text.as_ref().filter(|t| !t.is_null()) {
        if !t.is_object() {
            return Err(bad("text", "must be an object"));
        }
        if let Some(rf) = format(t)? {
            json_out = true;
            fields.insert("response_format".into(), rf);
        }
    }
    let labels = |m: &Map<String, Value>| {
        m.len() <= 16
            && m.values()
                .all(|v| v.as_str().is_some_and(|s| s.chars().count() <= 512))
    };
    if req
        .metadata
        .as_ref()
        .is_some_and(|m| !m.is_null() && !m.as_object().is_some_and(labels))
    {
        return Err(bad(
            "metadata",
            "must map at most 16 keys to strings of at most 512 characters",
        ));
    }
    if req
        .instructions
        .as_ref()
        .is_some_and(|s| s.chars().count() > 100_000)
    {
        return Err(bad("instructions", "at most 100000 characters"));
    }
    let max_tokens = match req.max_output_tokens {
        Some(v) if !(1..=1_000_000_000).contains(&v) => {
            return Err(bad("max_output_tokens", "must be between 1 and 1000000000"))
        }
        v => v.map(|v| v as u64),
    };
    if req.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(bad("temperature", "must be between 0 and 2"));
    }
    if req.top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(bad("top_p", "must be between 0 and 1"));
    }
    let needs = Caps {
        vision: images > 0,
        tools: fields.contains_key("tools") || uses_tools,
        json: json_out,
        embeddings: false,
    };
    let extras = TurnExtras {
        wire: Some(wire),
        image_tokens: images * IMAGE_TOKENS,
        request_tokens: questech_engine::tokens::count(&tools_text),
        instructions: req.instructions.clone().filter(|s| !s.is_empty()),
        fields,
        needs,
        max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        ..TurnExtras::default()
    };
    Ok(Read {
        content,
        extras,
        items,
    })
}
