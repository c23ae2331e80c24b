//! Server-sent events, written once for every streaming answer: chat turns (`event:` named by
//! the frame's type, SPEC §7) and `/v1` (`data:` lines only, as OpenAI streams them).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc::UnboundedReceiver;

use questech_engine::events::{ErrorBody, Frame};
use questech_engine::EngineError;

/// A comment line that keeps proxies (nginx's 60 s read timeout) from cutting a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `data: …` with the blank line that ends an event.
/// One event as the document describes a `text/event-stream` answer (each event on its own).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    /// The frame's type on chat turns; absent on `/v1`.
    event: Option<String>,
    /// A JSON object (a frame, or a `chat.completion.chunk`), or `[DONE]` at the end of `/v1`.
    data: String,
}

pub fn data(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// One frame as an event named by its type.
pub fn frame(frame: &Frame) -> Bytes {
    let json = frame.to_bytes();
    let mut out = Vec::with_capacity(json.len() + 32);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(frame.kind().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A streaming response with the headers every SSE answer carries (no caching, no buffering
/// by a proxy).
pub fn response(body: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Frames already known, as a finished stream (a repeated `client_msg_id` replays its turn).
pub fn replay(frames: Vec<Frame>) -> Response {
    let items: Vec<Result<Bytes, Infallible>> = frames.iter().map(|f| Ok(frame(f))).collect();
    response(futures::stream::iter(items))
}

/// A live turn: `first` (its `chat.ack`), then its frames until `chat.done` or `chat.error`. If
/// the turn's sender goes away first, a `chat.error` says the turn was lost instead of ending in
/// silence. While nothing is said for a while, a comment keeps the connection open.
pub fn turn(conversation_id: i64, first: Frame, updates: UnboundedReceiver<Frame>) -> Response {
    struct St {
        updates: UnboundedReceiver<Frame>,
        first: Option<Frame>,
        done: bool,
    }
    let st = St {
        updates,
        first: Some(first),
        done: false,
    };
    let body = futures::stream::unfold(st, move |mut st| async move {
        if let Some(f) = st.first.take() {
            return Some((Ok(frame(&f)), st));
        }
        if st.done {
            return None;
        }
        let next = match tokio::time::timeout(KEEP_ALIVE, st.updates.recv()).await {
            Err(_) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st)),
            Ok(next) => next,
        };
        let f = next.unwrap_or_else(|| {
            let err = EngineError::Internal("the turn was lost; please retry".into());
            Frame::ChatError {
                id: None,
                conversation_id,
                error: ErrorBody::from(&err),
            }
        });
        st.done = matches!(f, Frame::Done { .. } | Frame::ChatError { .. });
        Some((Ok(frame(&f)), st))
    });
    response(body)
}
