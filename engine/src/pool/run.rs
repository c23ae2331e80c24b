//! One job's run: its routes in order, retries before the first content byte, timeouts.
//! Uses tokio's clock throughout, so tests can run it with paused time.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::slot::Slot;
use super::{backoff, JobEvent, Route, Sink};
use crate::error::EngineError;
use crate::llm::{ProviderError, StreamEvent, Usage};

pub(super) struct Job<'a, 'b> {
    pub slots: &'a HashMap<String, Arc<Slot>>,
    pub routes: &'a [Route],
    pub cancel: &'a CancellationToken,
    pub sink: Sink<'b>,
    pub deadline: Instant,
}

/// How one attempt ended.
enum Attempt {
    /// The job ended (done, failed after content, or cancelled): its end was reported.
    Finished,
    /// Failed before any content: may be retried / failed over.
    Retry(EngineError, Option<Duration>),
    /// Failed before any content, not retryable.
    Fatal(EngineError),
}

impl Job<'_, '_> {
    fn fail(&mut self, error: EngineError, delivered: bool) {
        (self.sink)(JobEvent::Failed { error, delivered });
    }

    /// `queued`: the first provider's slot, on whose queue admission counted this job.
    pub(super) async fn run(mut self, mut queued: Option<Arc<Slot>>) {
        // The error a client gets names what ended the call: the first real failure stands;
        // a breaker that opened because of it (or was open already) does not replace it.
        let mut last_error: Option<EngineError> = None;
        let routes = self.routes;
        'routes: for (index, route) in routes.iter().enumerate() {
            let Some(slot) = self.slots.get(&route.provider).cloned() else {
                continue;
            };
            let max_retries = slot.cfg.max_retries;
            for attempt in 0..=max_retries {
                if !slot.admit() {
                    last_error.get_or_insert_with(|| {
                        EngineError::UpstreamError(format!("{} circuit open", route.provider))
                    });
                    continue 'routes;
                }
                // Wait for a permit, counted as queued while waiting (admission already
                // counted this job on its first provider).
                match queued.take() {
                    Some(q) if Arc::ptr_eq(&q, &slot) => {}
                    Some(q) => {
                        q.queued.fetch_sub(1, Ordering::Relaxed);
                        slot.queued.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        slot.queued.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let permit = tokio::select! {
                    p = slot.permits.acquire() => p.ok(),
                    _ = self.cancel.cancelled() => None,
                    _ = tokio::time::sleep_until(self.deadline) => None,
                };
                slot.queued.fetch_sub(1, Ordering::Relaxed);
                let Some(_permit) = permit else {
                    if self.cancel.is_cancelled() {
                        (self.sink)(JobEvent::Cancelled);
                    } else {
                        self.fail(EngineError::UpstreamTimeout, false);
                    }
                    return;
                };
                slot.in_flight.fetch_add(1, Ordering::Relaxed);
                slot.requests.fetch_add(1, Ordering::Relaxed);
                let outcome = self.attempt_once(&slot, index).await;
                slot.in_flight.fetch_sub(1, Ordering::Relaxed);
                match outcome {
                    Attempt::Finished => return,
                    Attempt::Fatal(e) => return self.fail(e, false),
                    Attempt::Retry(e, retry_after) => {
                        last_error = Some(e);
                        if attempt < max_retries {
                            let wait = backoff(&slot.cfg, attempt, retry_after);
                            if Instant::now() + wait >= self.deadline {
                                break 'routes;
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {},
                                _ = self.cancel.cancelled() => {
                                    (self.sink)(JobEvent::Cancelled);
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(q) = queued {
            q.queued.fetch_sub(1, Ordering::Relaxed);
        }
        let error = if Instant::now() >= self.deadline {
            EngineError::UpstreamTimeout
        } else {
            last_error
                .unwrap_or_else(|| EngineError::ModelNotFound("no configured provider".into()))
        };
        self.fail(error, false);
    }

    /// Opens the stream of route `index`, within the first-token deadline.
    async fn open(
        &mut self,
        slot: &Slot,
        index: usize,
        first_deadline: Instant,
    ) -> Result<crate::llm::EventStream, Attempt> {
        let open = slot.provider.stream(self.routes[index].request.clone());
        tokio::select! {
            r = open => r.map_err(|e| classify(slot, e)),
            _ = tokio::time::sleep_until(first_deadline) => Err(classify(slot, ProviderError::Timeout)),
            _ = self.cancel.cancelled() => {
                (self.sink)(JobEvent::Cancelled);
                Err(Attempt::Finished)
            }
        }
    }

    /// Route `index` answers: the breaker hears of a success, the caller of the route (and of
    /// a usage that came before the content).
    fn answering(&mut self, slot: &Slot, index: usize, early_usage: Option<Usage>) {
        slot.record(true);
        (self.sink)(JobEvent::Answering(index));
        if let Some(u) = early_usage {
            (self.sink)(JobEvent::Usage(u));
        }
    }

    async fn attempt_once(&mut self, slot: &Slot, index: usize) -> Attempt {
        let t0 = Instant::now();
        let provider = slot.provider.name().to_owned();
        let first_deadline = (t0 + slot.cfg.first_token_timeout).min(self.deadline);
        let mut stream = match self.open(slot, index, first_deadline).await {
            Ok(s) => s,
            Err(attempt) => return attempt,
        };
        // Content reached the caller: from here on no retry, and the route is the answer's.
        let mut delivered = false;
        // A usage seen before any content waits until the route is known to answer.
        let mut early_usage: Option<Usage> = None;
        loop {
            let limit = if delivered {
                self.deadline
            } else {
                first_deadline
            };
            let next = tokio::select! {
                n = stream.next() => n,
                _ = tokio::time::sleep_until(limit) => {
                    if delivered {
                        slot.record(false);
                        self.fail(EngineError::UpstreamTimeout, true);
                        return Attempt::Finished;
                    }
                    return classify(slot, ProviderError::Timeout);
                }
                _ = self.cancel.cancelled() => {
                    (self.sink)(JobEvent::Cancelled);
                    return Attempt::Finished;
                }
            };
            let next = match next {
                Some(Ok(ev)) => content(ev).map(|ev| Some(Ok(ev))),
                other => Ok(other),
            };
            let next = match next {
                Ok(next) => next,
                Err(content) => {
                    if !delivered {
                        delivered = true;
                        metrics::histogram!("questech_llm_time_to_first_token_seconds", "provider" => provider.clone())
                        .record(t0.elapsed().as_secs_f64());
                        self.answering(slot, index, early_usage.take());
                    }
                    (self.sink)(content);
                    continue;
                }
            };
            match next {
                // Content was handed on above.
                Some(Ok(
                    StreamEvent::Delta(_)
                    | StreamEvent::ToolCall(_)
                    | StreamEvent::Logprobs(_)
                    | StreamEvent::Embeddings(_),
                )) => {}
                Some(Ok(StreamEvent::Usage(u))) if delivered => (self.sink)(JobEvent::Usage(u)),
                Some(Ok(StreamEvent::Usage(u))) => early_usage = Some(u),
                Some(Ok(StreamEvent::Done(reason))) => {
                    if !delivered {
                        self.answering(slot, index, early_usage.take());
                    }
                    metrics::histogram!("questech_llm_request_duration_seconds", "provider" => provider.clone())
                        .record(t0.elapsed().as_secs_f64());
                    (self.sink)(JobEvent::Done(reason));
                    return Attempt::Finished;
                }
                Some(Err(e)) if !delivered => return classify(slot, e),
                Some(Err(e)) => {
                    // Content already reached the caller: no retry, the job ends as failed.
                    tracing::warn!(provider = %provider, error = %e, "upstream stream broke");
                    slot.record(false);
                    self.fail(EngineError::UpstreamError(e.to_string()), true);
                    return Attempt::Finished;
                }
                None if !delivered => {
                    return classify(slot, ProviderError::Network("stream ended early".into()))
                }
                None => {
                    slot.record(false);
                    self.fail(
                        EngineError::UpstreamError("stream ended early".into()),
                        true,
                    );
                    return Attempt::Finished;
                }
            }
        }
    }
}

fn classify(slot: &Slot, e: ProviderError) -> Attempt {
    tracing::warn!(provider = slot.provider.name(), error = %e, "upstream attempt failed");
    match e {
        ProviderError::Status {
            status,
            retry_after,
            ..
        } if slot.cfg.retryable_statuses.contains(&status) => {
            slot.record(false);
            Attempt::Retry(
                EngineError::UpstreamError(format!("status {status}")),
                retry_after,
            )
        }
        ProviderError::Status { status, .. } => {
            // A request the provider refuses (400, 401, ...) will not get better by retrying,
            // and says nothing about the provider's health.
            Attempt::Fatal(EngineError::UpstreamError(format!("status {status}")))
        }
        ProviderError::Timeout => {
            slot.record(false);
            Attempt::Retry(EngineError::UpstreamTimeout, None)
        }
        ProviderError::Network(m) | ProviderError::Protocol(m) => {
            slot.record(false);
            Attempt::Retry(EngineError::UpstreamError(m), None)
        }
    }
}

/// A stream event that is content (text, a tool call, log probabilities, embeddings) as the job event it becomes; any
/// other event back as it was.
fn content(ev: StreamEvent) -> Result<StreamEvent, JobEvent> {
    match ev {
        StreamEvent::Delta(d) => Err(JobEvent::Delta(d)),
        StreamEvent::ToolCall(t) => Err(JobEvent::ToolCall(t)),
        StreamEvent::Logprobs(l) => Err(JobEvent::Logprobs(l)),
        StreamEvent::Embeddings(e) => Err(JobEvent::Embeddings(e)),
        other => Ok(other),
    }
}
