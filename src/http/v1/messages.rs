//! The `messages` of a chat-completions request: roles, text and image parts, tool calls and
//! tool results, read into the text the engine counts and the JSON that goes upstream.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use questech_engine::llm::ChatMessage;

/// Prompt tokens reserved for one image: OpenAI's price of the largest `high`-detail image
/// (2048×768 scaled: 8 tiles × 170 + 85), and of any `low`-detail one.
pub const IMAGE_TOKENS_HIGH: u64 = 1445;
pub const IMAGE_TOKENS_LOW: u64 = 85;

/// The messages, read.
#[derive(Default)]
pub struct Messages {
    /// Role and text, as counted (a tool call counts as its JSON).
    pub text: Vec<ChatMessage>,
    /// The messages as sent upstream, when any holds more than text.
    pub wire: Option<Vec<Value>>,
    /// `(field, estimated tokens)` of every image part.
    pub images: Vec<(String, u64)>,
    /// Whether any message is a tool call or a tool result.
    pub uses_tools: bool,
}

/// Reads the messages; `developer` is sent as `system`.
pub fn read(input: &[super::InMessage]) -> Result<Messages> {
    let mut out = Messages::default();
    let mut wire = Vec::with_capacity(input.len());
    let mut rich = false;
    for (i, m) in input.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            r @ ("user" | "assistant" | "tool") => r,
            _ => {
                return Err(Error::invalid(
                    &format!("messages[{i}].role"),
                    "must be system, developer, user, assistant or tool",
                ))
            }
        };
        let field = format!("messages[{i}].content");
        let tool_calls = match (&m.tool_calls, role) {
            (None, _) => None,
            (Some(v), "assistant") => Some(tool_calls(&format!("messages[{i}].tool_calls"), v)?),
            (Some(_), _) => {
                return Err(Error::invalid(
                    &format!("messages[{i}].tool_calls"),
                    "only assistant messages carry tool calls",
                ))
            }
        };
        let optional = role == "assistant" && tool_calls.is_some();
        let mut text = content(&field, role, m.content.as_ref(), optional, &mut out.images)?;
        let mut w = Map::new();
        w.insert("role".into(), json!(role));
        // Text parts go up as one string (some OpenAI-compatible servers take no arrays).
        let has_image =
            !matches!(&m.content, Some(Value::Array(p)) if p.iter().all(|x| x["type"] == "text"));
        let wire_content = match &m.content {
            Some(Value::Array(_)) if !has_image => json!(text),
            other => other.clone().unwrap_or(Value::Null),
        };
        w.insert("content".into(), wire_content);
        if let Some(calls) = tool_calls {
            text.push_str(&calls.to_string());
            w.insert("tool_calls".into(), calls);
            rich = true;
        }
        out.uses_tools |= role == "tool" || m.tool_calls.is_some();
        if role == "tool" {
            let id = m.tool_call_id.as_deref().unwrap_or_default();
            crate::http::rules::check_len(&format!("messages[{i}].tool_call_id"), id, 1, 256)?;
            w.insert("tool_call_id".into(), json!(id));
            rich = true;
        }
        if let Some(name) = &m.name {
            crate::http::rules::check_len(&format!("messages[{i}].name"), name, 1, 64)?;
            w.insert("name".into(), json!(name));
        }
        rich |= matches!(m.content, Some(Value::Array(_))) && has_image;
        out.text.push(ChatMessage::new(role, &text));
        wire.push(Value::Object(w));
    }
    if rich {
        out.wire = Some(wire);
    }
    Ok(out)
}

/// A message's text: a string, or text parts (and, from the user, image parts).
fn content(
    field: &str,
    role: &str,
    content: Option<&Value>,
    optional: bool,
    images: &mut Vec<(String, u64)>,
) -> Result<String> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if role == "assistant" => Ok(String::new()),
        None | Some(Value::Null) if optional => Ok(String::new()),
        None | Some(Value::Null) => Err(Error::invalid(field, "required")),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let at = format!("{field}[{j}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => match p.get("text").and_then(Value::as_str) {
                        Some(t) => text.push_str(t),
                        None => {
                            return Err(Error::invalid(&format!("{at}.text"), "must be a string"))
                        }
                    },
                    Some("image_url") if role == "user" => {
                        images.push((at.clone(), image(&at, p)?))
                    }
                    _ if role == "user" => {
                        return Err(Error::invalid(
                            &format!("{at}.type"),
                            "must be \"text\" or \"image_url\"",
                        ))
                    }
                    _ => {
                        return Err(Error::invalid(
                            &format!("{at}.type"),
                            "only \"text\" parts are supported here",
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(Error::invalid(
            field,
            "must be a string or an array of parts",
        )),
    }
}

/// An `image_url` part: an `https` or `data:image/…` URL, `detail` `auto`, `low` or `high`.
/// Returns the tokens reserved for it.
fn image(at: &str, p: &Value) -> Result<u64> {
    let img = p.get("image_url");
    let url = img.and_then(|i| i.get("url")).and_then(Value::as_str);
    let Some(url) = url else {
        return Err(Error::invalid(&format!("{at}.image_url.url"), "required"));
    };
    if !crate::patterns::matches(crate::patterns::pattern::IMAGE_URL, url) {
        return Err(Error::invalid(
            &format!("{at}.image_url.url"),
            "must be an https URL or a data:image/…;base64, URL",
        ));
    }
    match img.and_then(|i| i.get("detail")) {
        None | Some(Value::Null) => Ok(IMAGE_TOKENS_HIGH),
        Some(Value::String(d)) if d == "low" => Ok(IMAGE_TOKENS_LOW),
        Some(Value::String(d)) if d == "auto" || d == "high" => Ok(IMAGE_TOKENS_HIGH),
        Some(_) => Err(Error::invalid(
            &format!("{at}.image_url.detail"),
            "must be auto, low or high",
        )),
    }
}

/// An assistant message's `tool_calls`: function calls with an id, a name and arguments.
fn tool_calls(field: &str, v: &Value) -> Result<Value> {
    let Some(calls) = v.as_array().filter(|a| !a.is_empty()) else {
        return Err(Error::invalid(
            field,
            "must be a non-empty array of tool calls",
        ));
    };
    for (k, c) in calls.iter().enumerate() {
        let at = format!("{field}[{k}]");
        let id = c.get("id").and_then(Value::as_str).unwrap_or_default();
        crate::http::rules::check_len(&format!("{at}.id"), id, 1, 256)?;
        if c.get("type").and_then(Value::as_str) != Some("function") {
            return Err(Error::invalid(
                &format!("{at}.type"),
                "must be \"function\"",
            ));
        }
        let f = c.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        super::tools::check_name(&format!("{at}.function.name"), name)?;
        if !f
            .and_then(|f| f.get("arguments"))
            .is_some_and(Value::is_string)
        {
            return Err(Error::invalid(
                &format!("{at}.function.arguments"),
                "must be a string",
            ));
        }
    }
    Ok(v.clone())
}
