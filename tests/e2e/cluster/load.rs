//! Background load for the fault cases: requests through nginx in a loop, each one recorded with
//! when it started, how long it took and what it got, for the case to judge afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::Cluster;
use crate::common::assert_error;

/// One request: a label, the method, the path, the bearer token and the JSON body.
pub type Request = (&'static str, Method, String, Option<String>, Option<Value>);

/// One request of the load and its answer.
#[derive(Debug)]
pub struct Outcome {
    pub what: &'static str,
    pub start: Instant,
    pub took: Duration,
    pub status: StatusCode,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Outcome {
    pub fn end(&self) -> Instant {
        self.start + self.took
    }

    /// Within `[from + margin, to)`: started a moment after `from` and ended before `to`.
    pub fn within(&self, from: Instant, to: Instant) -> bool {
        self.start > from + Duration::from_millis(200) && self.end() < to
    }

    /// Asserts a 503 is `unavailable` with `Retry-After`, answered within `within`.
    pub fn assert_unavailable(&self, within: Duration) {
        assert_error(
            self.status,
            &self.body,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        );
        assert!(self.retry_after.is_some(), "503 with Retry-After: {self:?}");
        assert!(self.took < within, "503 after {:?}: {self:?}", self.took);
    }
}

/// Sends the requests of `round(n)` for n = 1, 2, … through nginx, one after the other, until
/// `stop` is set; returns every outcome.
pub async fn run(
    c: &Cluster,
    stop: &AtomicBool,
    round: impl Fn(usize) -> Vec<Request>,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        for r in round(n) {
            out.push(send(c, &c.lb_url(), r).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out
}

/// Sends one request to `base` (a node or nginx) and records it.
pub async fn send(c: &Cluster, base: &str, (what, method, path, token, body): Request) -> Outcome {
    let start = Instant::now();
    let (status, h, body) = c.call(base, method, &path, token.as_deref(), body).await;
    let retry_after = h
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Outcome {
        what,
        start,
        took: start.elapsed(),
        status,
        retry_after,
        body,
    }
}

impl Cluster {
    /// Polls node `i`'s `/health` until it answers `status` (within 10 s); the body and how long
    /// it took.
    pub async fn wait_node_health(&self, i: usize, status: StatusCode) -> (Value, Duration) {
        let t = Instant::now();
        let mut last = None;
        while t.elapsed() < Duration::from_secs(10) {
            let (s, _, b) = self
                .call(&self.node_url(i), Method::GET, "/health", None, None)
                .await;
            if s == status {
                return (b, t.elapsed());
            }
            last = Some((s, b));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {i}: /health did not answer {status} within 10 s; last {last:?}");
    }
}
