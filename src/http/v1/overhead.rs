//! `X-Questech-Overhead-Ms`: the engine's own time on a `/v1` answer, the total minus the time
//! the upstream took (for a stream: the time before the upstream request was sent).

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use super::OVERHEAD_HEADER;

/// Put on a response by the handler: when the upstream request was sent and, once known, when
/// the upstream finished (`None` for a stream, whose headers go out before it ends).
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTiming {
    pub submitted: Instant,
    pub ended: Option<Instant>,
}

pub async fn overhead(req: Request, next: Next) -> Response {
    let start = req
        .extensions()
        .get::<crate::http::RequestStart>()
        .map_or_else(Instant::now, |s| s.0);
    let mut res = next.run(req).await;
    let own = match res.extensions().get::<UpstreamTiming>() {
        Some(UpstreamTiming {
            submitted,
            ended: Some(ended),
        }) => start
            .elapsed()
            .saturating_sub(ended.saturating_duration_since(*submitted)),
        Some(UpstreamTiming {
            submitted,
            ended: None,
        }) => submitted.saturating_duration_since(start),
        None => start.elapsed(),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", own.as_secs_f64() * 1000.0)) {
        res.headers_mut().insert(OVERHEAD_HEADER.clone(), v);
    }
    res
}

pub fn with_timing(mut res: Response, timing: UpstreamTiming) -> Response {
    res.extensions_mut().insert(timing);
    res
}
