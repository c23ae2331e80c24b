//! The request fields the engine forwards without interpreting: function tools, the tool
//! choice, the response format, the sampling fields the SDKs send, and any field this server
//! does not know (forwarded as given, so OpenAI-compatible servers' own options work).

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::patterns::{matches, pattern};

/// Fields refused because their answer could not be relayed faithfully.
const REFUSED: &[(&str, &str)] = &[
    ("functions", "deprecated: use tools"),
    ("function_call", "deprecated: use tool_choice"),
    ("audio", "audio output is not supported"),
];

/// A function name: 1 to 64 letters, digits, `_` or `-`.
pub fn check_name(field: &str, name: Option<&str>) -> Result<()> {
    match name {
        Some(n) if matches(pattern::TOOL_NAME, n) => Ok(()),
        _ => Err(Error::invalid(
            field,
            "must be 1 to 64 letters, digits, _ or -",
        )),
    }
}

/// What the forwarded fields ask of a model.
#[derive(Default)]
pub struct Forwarded {
    pub fields: Map<String, Value>,
    pub tools: bool,
    pub json: bool,
    /// The tool definitions, as counted into the prompt.
    pub tools_text: String,
}

/// Checks the fields this server knows the shape of and keeps every field to forward.
pub fn read(mut rest: Map<String, Value>) -> Result<Forwarded> {
    rest.retain(|_, v| !v.is_null());
    for (k, why) in REFUSED {
        if rest.contains_key(*k) {
            return Err(Error::invalid(k, why));
        }
    }
    if rest.get("logprobs").is_some_and(|v| !v.is_boolean()) {
        return Err(Error::invalid("logprobs", "must be a boolean"));
    }
    if let Some(t) = rest.get("top_logprobs") {
        if !t
            .as_f64()
            .is_some_and(|n| n.fract() == 0.0 && (0.0..=20.0).contains(&n))
        {
            return Err(Error::invalid(
                "top_logprobs",
                "must be an integer between 0 and 20",
            ));
        }
    }
    let mut out = Forwarded::default();
    if let Some(t) = rest.get("tools") {
        out.tools_text = tools(t)?;
        out.tools = !out.tools_text.is_empty();
    }
    if let Some(c) = rest.get("tool_choice") {
        tool_choice(c)?;
    }
    if let Some(p) = rest.get("parallel_tool_calls") {
        if !p.is_boolean() {
            return Err(Error::invalid("parallel_tool_calls", "must be a boolean"));
        }
    }
    if let Some(f) = rest.get("response_format") {
        out.json = response_format(f)?;
    }
    for (k, lo, hi) in [
        ("frequency_penalty", -2.0, 2.0),
        ("presence_penalty", -2.0, 2.0),
    ] {
        if let Some(v) = rest.get(k) {
            if !v.as_f64().is_some_and(|x| (lo..=hi).contains(&x)) {
                return Err(Error::invalid(k, "must be a number between -2 and 2"));
            }
        }
    }
    if rest
        .get("seed")
        .is_some_and(|v| !v.as_f64().is_some_and(|n| n.fract() == 0.0))
    {
        return Err(Error::invalid("seed", "must be an integer"));
    }
    if rest
        .get("user")
        .is_some_and(|v| v.as_str().is_none_or(|s| s.chars().count() > 256))
    {
        return Err(Error::invalid(
            "user",
            "must be a string of at most 256 characters",
        ));
    }
    let bias = |v: &Value| v.as_f64().is_some_and(|x| (-100.0..=100.0).contains(&x));
    let label = |v: &Value| v.as_str().is_some_and(|s| s.chars().count() <= 512);
    for (k, ok, why) in [
        (
            "logit_bias",
            &bias as &dyn Fn(&Value) -> bool,
            "must map tokens to numbers between -100 and 100",
        ),
        (
            "metadata",
            &label,
            "must map keys to strings of at most 512 characters",
        ),
    ] {
        let valid = rest
            .get(k)
            .is_none_or(|v| v.as_object().is_some_and(|o| o.values().all(ok)));
        if !valid {
            return Err(Error::invalid(k, why));
        }
    }
    out.fields = rest;
    Ok(out)
}

/// `tools`: up to 128 function definitions. Returns their text (counted as prompt).
fn tools(v: &Value) -> Result<String> {
    let Some(list) = v.as_array() else {
        return Err(Error::invalid(
            "tools",
            "must be an array of function tools",
        ));
    };
    if list.len() > 128 {
        return Err(Error::invalid("tools", "at most 128 tools"));
    }
    for (i, t) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(Error::invalid(
                &format!("{at}.type"),
                "must be \"function\"",
            ));
        }
        let f = t.get("function");
        check_name(
            &format!("{at}.function.name"),
            f.and_then(|f| f.get("name")).and_then(Value::as_str),
        )?;
        described(&format!("{at}.function"), f)?;
        if f.and_then(|f| f.get("parameters"))
            .is_some_and(|p| !p.is_object())
        {
            return Err(Error::invalid(
                &format!("{at}.function.parameters"),
                "must be a JSON Schema object",
            ));
        }
    }
    Ok(if list.is_empty() {
        String::new()
    } else {
        v.to_string()
    })
}

/// A function's or schema's optional `description` (a string) and `strict` (a boolean).
pub fn described(at: &str, v: Option<&Value>) -> Result<()> {
    if v.and_then(|v| v.get("description"))
        .is_some_and(|d| !d.is_string())
    {
        return Err(Error::invalid(
            &format!("{at}.description"),
            "must be a string",
        ));
    }
    if v.and_then(|v| v.get("strict"))
        .is_some_and(|d| !d.is_boolean() && !d.is_null())
    {
        return Err(Error::invalid(&format!("{at}.strict"), "must be a boolean"));
    }
    Ok(())
}

/// `tool_choice`: `none`, `auto`, `required`, or one named function.
fn tool_choice(v: &Value) -> Result<()> {
    match v {
        Value::String(s) if ["none", "auto", "required"].contains(&s.as_str()) => Ok(()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            check_name(
                "tool_choice.function.name",
                o.get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str),
            )
        }
        _ => Err(Error::invalid(
            "tool_choice",
            "must be none, auto, required or {\"type\":\"function\",\"function\":{\"name\":…}}",
        )),
    }
}

/// `response_format`: `text`, `json_object` or `json_schema`. Returns whether it asks for JSON.
fn response_format(v: &Value) -> Result<bool> {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(false),
        Some("json_object") => Ok(true),
        Some("json_schema") => {
            let s = v.get("json_schema");
            check_name(
                "response_format.json_schema.name",
                s.and_then(|s| s.get("name")).and_then(Value::as_str),
            )?;
            described("response_format.json_schema", s)?;
            if s.and_then(|s| s.get("schema"))
                .is_some_and(|x| !x.is_object())
            {
                return Err(Error::invalid(
                    "response_format.json_schema.schema",
                    "must be a JSON Schema object",
                ));
            }
            Ok(true)
        }
        _ => Err(Error::invalid(
            "response_format.type",
            "must be text, json_object or json_schema",
        )),
    }
}

/// The documented shapes of the forwarded fields (applied to the finished document).
pub fn overrides(props: &mut Value) {
    let name = serde_json::json!({"type": "string", "pattern": pattern::TOOL_NAME});
    props["tools"] = serde_json::json!({"type": ["array", "null"], "maxItems": 128, "items": {
        "type": "object", "required": ["type", "function"], "properties": {
            "type": {"type": "string", "enum": ["function"]},
            "function": {"type": "object", "required": ["name"], "properties": {
                "name": name, "description": {"type": "string"},
                "parameters": {"type": "object"}, "strict": {"type": ["boolean", "null"]}
            }}
        }
    }});
    props["tool_choice"] = serde_json::json!({"oneOf": [
        {"type": "null"},
        {"type": "string", "enum": ["none", "auto", "required"]},
        {"type": "object", "required": ["type", "function"], "properties": {
            "type": {"type": "string", "enum": ["function"]},
            "function": {"type": "object", "required": ["name"], "properties": {"name": name}}
        }}
    ]});
    props["parallel_tool_calls"] = serde_json::json!({"type": ["boolean", "null"]});
    props["response_format"] = serde_json::json!({"oneOf": [
        {"type": "null"},
        {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type", "json_schema"], "properties": {
            "type": {"type": "string", "enum": ["json_schema"]},
            "json_schema": {"type": "object", "required": ["name"], "properties": {
                "name": name, "description": {"type": "string"},
                "schema": {"type": "object"}, "strict": {"type": ["boolean", "null"]}
            }}
        }}
    ]});
    for k in ["frequency_penalty", "presence_penalty"] {
        props[k] = serde_json::json!({"type": ["number", "null"], "minimum": -2, "maximum": 2});
    }
    props["seed"] = serde_json::json!({"type": ["integer", "null"]});
    props["user"] = serde_json::json!({"type": ["string", "null"], "maxLength": 256});
    props["logit_bias"] = serde_json::json!({"type": ["object", "null"], "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}});
    props["metadata"] = serde_json::json!({"type": ["object", "null"], "additionalProperties": {"type": "string", "maxLength": 512}});
    props["logprobs"] = serde_json::json!({"type": ["boolean", "null"]});
    props["top_logprobs"] =
        serde_json::json!({"type": ["integer", "null"], "minimum": 0, "maximum": 20});
}
