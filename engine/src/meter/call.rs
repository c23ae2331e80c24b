//! A stateless metered call (`/v1`, toolkit): admit, reserve, run, bill, settle, release.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{bill, retry_once, Bill, Collector, Content, Plan};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::events::Frame;
use crate::ports::{Reserve, SettleCall};

/// Who a stateless call bills, and under which names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// `/v1`, with the API key used, if any.
    V1 {
        api_key_id: Option<i64>,
    },
    Toolkit,
}

impl CallKind {
    /// The ledger row's reason (also the `credits.updated` reason).
    pub fn ledger_reason(self) -> &'static str {
        match self {
            CallKind::V1 { .. } => "api",
            CallKind::Toolkit => "toolkit",
        }
    }

    /// The usage row's kind.
    pub fn usage_kind(self) -> &'static str {
        match self {
            CallKind::V1 { .. } => "v1",
            CallKind::Toolkit => "toolkit",
        }
    }

    fn api_key_id(self) -> Option<i64> {
        match self {
            CallKind::V1 { api_key_id } => api_key_id,
            CallKind::Toolkit => None,
        }
    }
}

pub struct CallSpec {
    pub user_id: i64,
    /// Role `admin`: no per-user limits.
    pub unlimited: bool,
    pub kind: CallKind,
    /// The request's id (the ledger row's `ref_id`).
    pub ref_id: String,
    pub plan: Plan,
    /// Whether partial output reaches the user as it comes (a stream): then a call that breaks
    /// after output is billed for it; otherwise the user got an error and pays nothing.
    pub partial_reaches_user: bool,
}

/// What a running call tells its caller, in order.
#[derive(Debug)]
pub enum CallEvent {
    /// Admitted and reserved: the request goes upstream now.
    Submitted(Instant),
    Delta(String),
    ToolCall(crate::llm::ToolCallDelta),
    Logprobs(serde_json::Value),
}

/// A call that went upstream, billed and settled.
#[derive(Debug)]
pub struct Called {
    pub bill: Bill,
    pub text: String,
    pub tool_calls: Vec<crate::llm::ToolCall>,
    pub logprobs: Vec<serde_json::Value>,
    /// An embeddings call's `data`.
    pub embeddings: Option<serde_json::Value>,
    pub charged: i64,
    pub balance: i64,
    /// When the upstream part ended.
    pub ended: Instant,
}

impl Engine {
    /// Runs one stateless call to its end. Refusals before anything went upstream (limits,
    /// credits) are errors; after that the result is always `Ok` and `bill.error` says why a
    /// call did not complete. Run it in a task of its own when the client may go away: it
    /// must reach its settlement.
    pub async fn call(
        &self,
        spec: CallSpec,
        sink: &mut (dyn FnMut(CallEvent) + Send),
    ) -> Result<Called, EngineError> {
        let started = Instant::now();
        self.limits.acquire(spec.user_id, spec.unlimited).await?;
        let result = self.reserved_call(&spec, started, sink).await;
        self.limits.release(spec.user_id, spec.unlimited).await;
        result
    }

    async fn reserved_call(
        &self,
        spec: &CallSpec,
        started: Instant,
        sink: &mut (dyn FnMut(CallEvent) + Send),
    ) -> Result<Called, EngineError> {
        let reservation_id = self
            .store
            .reserve(Reserve {
                user_id: spec.user_id,
                amount: spec.plan.reserve,
                ref_id: spec.ref_id.clone(),
                ttl_ms: self.cfg.reservation_ttl.as_millis() as i64,
            })
            .await?
            .ok_or(EngineError::InsufficientCredits)?;
        sink(CallEvent::Submitted(Instant::now()));
        let mut collector = Collector::default();
        self.pool
            .run(
                &spec.plan.routes,
                &CancellationToken::new(),
                &mut |ev| match collector.push(ev) {
                    Some(Content::Text(d)) => sink(CallEvent::Delta(d)),
                    Some(Content::ToolCall(t)) => sink(CallEvent::ToolCall(t)),
                    Some(Content::Logprobs(l)) => sink(CallEvent::Logprobs(l)),
                    None => {}
                },
            )
            .await;
        let ended = Instant::now();
        let out = collector.outcome;
        let mut bill = bill(&spec.plan, &out, spec.partial_reaches_user).await;
        let settle = SettleCall {
            user_id: spec.user_id,
            reservation_id,
            reserved: spec.plan.reserve,
            charge: bill.charge,
            ledger_reason: spec.kind.ledger_reason(),
            usage_kind: spec.kind.usage_kind(),
            ref_id: spec.ref_id.clone(),
            model: bill.model.id.clone(),
            api_key_id: spec.kind.api_key_id(),
            prompt_tokens: bill.prompt_tokens as i64,
            completion_tokens: bill.completion_tokens as i64,
            latency_ms: started.elapsed().as_millis() as i64,
            status: bill.status,
        };
        let settled = retry_once("settling a call", || self.store.settle(settle.clone())).await;
        let (charged, balance) = match settled {
            Ok(s) => {
                self.charged(
                    spec.user_id,
                    s.charged,
                    s.balance,
                    spec.kind.ledger_reason(),
                );
                (s.charged, s.balance)
            }
            Err(e) => {
                tracing::error!(request = %spec.ref_id, error = %e,
                    "could not settle a call; its reservation is released when it expires");
                bill.error
                    .get_or_insert(EngineError::Internal("could not record the call".into()));
                (0, 0)
            }
        };
        Ok(Called {
            bill,
            text: out.text,
            tool_calls: out.tool_calls,
            logprobs: out.logprobs,
            embeddings: out.embeddings,
            charged,
            balance,
            ended,
        })
    }

    /// After a settlement: count the credits and tell the user's devices their new balance.
    pub fn charged(&self, user_id: i64, charged: i64, balance: i64, reason: &str) {
        if charged <= 0 {
            return;
        }
        self.metrics
            .credits_charged
            .fetch_add(charged as u64, Ordering::Relaxed);
        self.publish(
            user_id,
            &Frame::CreditsUpdated {
                balance,
                delta: -charged,
                reason: reason.to_owned(),
            },
        );
    }
}
