//! What the engine tells clients: the server → client frames of SPEC §8 (also the SSE events of
//! §7), and the message object they carry. A frame is serialised once and the bytes are shared
//! by every device that receives it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

fn ser_id<S: serde::Serializer>(id: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn ser_time<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    let t = chrono::DateTime::from_timestamp_millis(*ms).unwrap_or_default();
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MsgUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// An image of a message (SPEC §7): an upload of the sender's (`/static/…`) or an `https` URL.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub url: String,
}

/// What a message holds beyond its text that is not shown as such: its OpenAI wire form and,
/// for a turn of the Responses API, that API's own record of the request.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MessageExtra {
    /// The messages sent upstream in this one's place (images as the model gets them, tool
    /// calls, tool results, several input items); `None`: the role and the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire: Option<Vec<serde_json::Value>>,
    /// The Responses API's record (input items as given, instructions, tools, metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<serde_json::Value>,
}

/// A stored chat message (SPEC §7 message object).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StoredMessage {
    #[serde(serialize_with = "ser_id")]
    pub id: i64,
    #[serde(serialize_with = "ser_id")]
    pub conversation_id: i64,
    pub seq: i64,
    pub role: String,
    pub content: String,
    pub status: String,
    pub model: String,
    pub usage: MsgUsage,
    pub credits_charged: i64,
    pub client_msg_id: Option<String>,
    #[serde(serialize_with = "ser_time")]
    pub created_at: i64,
    /// Its images.
    pub attachments: Vec<Attachment>,
    /// Not shown: see [`MessageExtra`].
    #[serde(skip)]
    pub extra: Option<std::sync::Arc<MessageExtra>>,
}

impl StoredMessage {
    /// The images and extra as the `meta` JSON column stores them (`None` when there are none).
    pub fn meta_json(&self) -> Option<String> {
        if self.attachments.is_empty() && self.extra.is_none() {
            return None;
        }
        let mut v = serde_json::json!({});
        if !self.attachments.is_empty() {
            v["attachments"] = serde_json::json!(self.attachments);
        }
        if let Some(e) = &self.extra {
            if let Some(w) = &e.wire {
                v["wire"] = serde_json::json!(w);
            }
            if let Some(r) = &e.response {
                v["response"] = r.clone();
            }
        }
        Some(v.to_string())
    }

    /// Reads the `meta` column back into `attachments` and `extra`.
    pub fn set_meta(&mut self, meta: Option<&str>) {
        let Some(v) = meta.and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok()) else {
            return;
        };
        if let Ok(a) = serde_json::from_value::<Vec<Attachment>>(v["attachments"].clone()) {
            self.attachments = a;
        }
        let extra: MessageExtra = serde_json::from_value(v).unwrap_or_default();
        if extra.wire.is_some() || extra.response.is_some() {
            self.extra = Some(std::sync::Arc::new(extra));
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Credits {
    pub charged: i64,
    pub balance: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl From<&EngineError> for ErrorBody {
    fn from(e: &EngineError) -> Self {
        ErrorBody {
            code: e.code().to_owned(),
            message: e.public_message(),
            retry_after: e.retry_after(),
        }
    }
}

/// An error as a frame carried it, back to the engine's error (for a requester that answers
/// in HTTP): the same code, status and `Retry-After`.
impl From<&ErrorBody> for EngineError {
    fn from(b: &ErrorBody) -> Self {
        let m = b.message.clone();
        let retry_after = b.retry_after.unwrap_or(1);
        match b.code.as_str() {
            "invalid_request" => EngineError::InvalidRequest(m),
            "insufficient_credits" => EngineError::InsufficientCredits,
            "not_found" => EngineError::NotFound(m),
            "model_not_found" => EngineError::ModelNotFound(m),
            "conversation_busy" => EngineError::ConversationBusy,
            "rate_limited" => EngineError::RateLimited { retry_after },
            "overloaded" => EngineError::Overloaded { retry_after },
            "upstream_error" => EngineError::UpstreamError(m),
            "upstream_timeout" => EngineError::UpstreamTimeout,
            "unavailable" => EngineError::Unavailable { retry_after },
            _ => EngineError::Internal(m),
        }
    }
}

/// Server → client frames.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type")]
pub enum Frame {
    #[serde(rename = "hello")]
    Hello {
        user_id: String,
        session_id: String,
        credits: i64,
        server_time: String,
    },
    #[serde(rename = "chat.ack")]
    Ack {
        id: Option<String>,
        #[serde(serialize_with = "ser_id")]
        conversation_id: i64,
        message: StoredMessage,
    },
    #[serde(rename = "chat.delta")]
    Delta {
        #[serde(serialize_with = "ser_id")]
        conversation_id: i64,
        #[serde(serialize_with = "ser_id")]
        message_id: i64,
        index: u64,
        delta: String,
    },
    #[serde(rename = "chat.done")]
    Done {
        #[serde(serialize_with = "ser_id")]
        conversation_id: i64,
        message: StoredMessage,
        credits: Credits,
    },
    #[serde(rename = "chat.error")]
    ChatError {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(serialize_with = "ser_id")]
        conversation_id: i64,
        error: ErrorBody,
    },
    #[serde(rename = "message")]
    Message { message: StoredMessage },
    #[serde(rename = "credits.updated")]
    CreditsUpdated {
        balance: i64,
        delta: i64,
        reason: String,
    },
    #[serde(rename = "sync.done")]
    SyncDone {
        #[serde(serialize_with = "ser_id")]
        conversation_id: i64,
        last_seq: i64,
    },
    #[serde(rename = "pong")]
    Pong,
    #[serde(rename = "error")]
    Error { error: ErrorBody },
}

impl Frame {
    /// The frame as JSON bytes (serialised once, shared by every receiver).
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The `type` of the frame (the SSE event name).
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Ack { .. } => "chat.ack",
            Frame::Delta { .. } => "chat.delta",
            Frame::Done { .. } => "chat.done",
            Frame::ChatError { .. } => "chat.error",
            Frame::Message { .. } => "message",
            Frame::CreditsUpdated { .. } => "credits.updated",
            Frame::SyncDone { .. } => "sync.done",
            Frame::Pong => "pong",
            Frame::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_survives_the_round_trip_through_a_frame() {
        for e in [
            EngineError::InvalidRequest("x".into()),
            EngineError::InsufficientCredits,
            EngineError::NotFound("x".into()),
            EngineError::ModelNotFound("x".into()),
            EngineError::ConversationBusy,
            EngineError::RateLimited { retry_after: 7 },
            EngineError::Overloaded { retry_after: 2 },
            EngineError::UpstreamError("x".into()),
            EngineError::UpstreamTimeout,
            EngineError::Unavailable { retry_after: 2 },
            EngineError::Internal("x".into()),
        ] {
            let back = EngineError::from(&ErrorBody::from(&e));
            assert_eq!(back.code(), e.code());
            assert_eq!(back.retry_after(), e.retry_after());
        }
    }
}
