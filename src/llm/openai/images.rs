//! Images a chat message attached from this server's uploads (`/static/<id>.<ext>`) cannot be
//! fetched by a provider: when a request is sent, each is read from the upload store (folder or
//! bucket) into a `data:` URL. Nothing else in the request changes.

use base64::Engine as _;
use questech_engine::llm::{ChatRequest, ProviderError, WireExtras};
use serde_json::Value;

use crate::uploads::Store;

const PREFIX: &str = "/static/";

/// The upload paths of a message's image parts.
fn local_url(part: &Value) -> Option<&str> {
    let url = part["image_url"]["url"].as_str()?;
    (part["type"] == "image_url" && url.starts_with(PREFIX)).then_some(url)
}

/// Whether any wire message of `req` holds an upload's path.
pub fn has_local(req: &ChatRequest) -> bool {
    let Some(messages) = req.wire.as_ref().and_then(|w| w.messages.as_ref()) else {
        return false;
    };
    messages.iter().any(|m| {
        m["content"]
            .as_array()
            .is_some_and(|parts| parts.iter().any(|p| local_url(p).is_some()))
    })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        _ => "image/jpeg",
    }
}

/// `req` with every upload's path replaced by the file as a `data:` URL.
pub async fn inline(mut req: ChatRequest, store: &Store) -> Result<ChatRequest, ProviderError> {
    let Some(wire) = req.wire.take() else {
        return Ok(req);
    };
    let mut wire: WireExtras = (*wire).clone();
    for m in wire.messages.iter_mut().flatten() {
        let Some(parts) = m.get_mut("content").and_then(Value::as_array_mut) else {
            continue;
        };
        for p in parts.iter_mut() {
            let Some(url) = local_url(p) else { continue };
            let name = url.trim_start_matches(PREFIX);
            // The pattern checked at send time allows only `<digits>.<ext>`: no path escapes.
            if name.contains('/') || name.contains("..") {
                return Err(ProviderError::Protocol(format!("bad upload path {url}")));
            }
            let bytes = match store.read(name).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    return Err(ProviderError::Protocol(format!("no upload {name}")));
                }
                Err(e) => {
                    return Err(ProviderError::Protocol(format!(
                        "could not read the upload {name}: {e}"
                    )))
                }
            };
            let data = base64::engine::general_purpose::STANDARD.encode(bytes);
            p["image_url"]["url"] = format!("data:{};base64,{data}", content_type(name)).into();
        }
    }
    req.wire = Some(std::sync::Arc::new(wire));
    Ok(req)
}
