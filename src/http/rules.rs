//! Request rules shared by the routes and the WebSocket: ids, text lengths, labels, URLs, a chat
//! message's fields, and which model a conversation or turn may use.

use crate::error::{Error, Result};
pub use crate::patterns::{matches, pattern};
use crate::state::AppState;
use crate::storage;
use questech_engine::EngineError;

/// A public id (`"123"`); anything else is `not_found`, as an id that names nothing.
pub fn parse_id(id: &str, what: &str) -> Result<i64> {
    crate::ids::parse(id).ok_or_else(|| Error::not_found(format!("{what} not found")))
}

/// `v` has `min` to `max` characters.
pub fn check_len(field: &str, v: &str, min: usize, max: usize) -> Result<()> {
    let n = v.chars().count();
    if n < min || n > max {
        let why = match min {
            0 => format!("must be at most {max} characters"),
            _ => format!("must be {min} to {max} characters"),
        };
        return Err(Error::invalid(field, &why));
    }
    Ok(())
}

/// Text of `min` to `max` characters; with `min > 0` it must not be blank either.
pub fn check_text(field: &str, v: &str, min: usize, max: usize) -> Result<()> {
    check_len(field, v, min, max)?;
    if min > 0 && !matches(pattern::NOT_BLANK, v) {
        return Err(Error::invalid(field, "must not be blank"));
    }
    Ok(())
}

/// A one-line label: no control characters; with `min > 0` not blank either.
pub fn check_label(field: &str, v: &str, min: usize, max: usize) -> Result<()> {
    check_len(field, v, min, max)?;
    let p = if min > 0 {
        pattern::LABEL
    } else {
        pattern::LINE
    };
    if !matches(p, v) {
        return Err(Error::invalid(
            field,
            "must not be blank or contain control characters",
        ));
    }
    Ok(())
}

/// Empty, an http(s) URL, or a `/static/` path; at most 1024 characters.
pub fn check_url(field: &str, u: &str) -> Result<()> {
    if u.chars().count() <= 1024 && matches(pattern::URL, u) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be an http(s) URL or a /static/ path of at most 1024 characters",
        ))
    }
}

/// A chat message's content and client id (REST and WebSocket alike).
pub fn validate_send(content: &str, client_msg_id: Option<&str>) -> Result<()> {
    check_text("content", content, 1, 32_000)?;
    if let Some(c) = client_msg_id {
        check_len("client_msg_id", c, 1, 128)?;
    }
    Ok(())
}

/// The model a new conversation or turn uses: usable (enabled, provider configured) or
/// `model_not_found`.
pub async fn usable_model(state: &AppState, id: &str) -> Result<storage::models::ModelRow> {
    match state.models.get(id).await? {
        Some(m) if state.engine.is_usable(&m.info()) => Ok(m),
        _ => Err(Error::Engine(EngineError::ModelNotFound(id.to_owned()))),
    }
}

/// `DEFAULT_MODEL`, else `echo` in debug, else the first usable model.
pub async fn default_model(state: &AppState) -> Result<String> {
    if let Some(m) = &state.config.default_model {
        return Ok(m.clone());
    }
    let all = state.models.all().await?;
    if state.config.service_debug && all.iter().any(|m| m.id == "echo" && m.enabled != 0) {
        return Ok("echo".into());
    }
    all.into_iter()
        .find(|m| state.engine.is_usable(&m.info()))
        .map(|m| m.id)
        .ok_or_else(|| Error::Engine(EngineError::ModelNotFound("no model is enabled".into())))
}
