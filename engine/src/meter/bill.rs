//! What a call did upstream, and the one rule that turns it into a bill (SPEC §6).

use crate::error::EngineError;
use crate::llm::{ToolCall, ToolCallDelta, Usage};
use crate::pool::JobEvent;
use crate::ports::ModelInfo;
use crate::tokens;

use super::Plan;

/// How a turn or call ended, as stored: messages say `complete|cancelled|failed`, the usage
/// log `ok|cancelled|failed` (SPEC §5, §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnStatus {
    Complete,
    Cancelled,
    Failed,
}

impl TurnStatus {
    pub fn message_status(self) -> &'static str {
        match self {
            TurnStatus::Complete => "complete",
            TurnStatus::Cancelled => "cancelled",
            TurnStatus::Failed => "failed",
        }
    }

    pub fn usage_status(self) -> &'static str {
        match self {
            TurnStatus::Complete => "ok",
            TurnStatus::Cancelled => "cancelled",
            TurnStatus::Failed => "failed",
        }
    }

    pub fn parse_message_status(s: &str) -> TurnStatus {
        match s {
            "complete" => TurnStatus::Complete,
            "cancelled" => TurnStatus::Cancelled,
            _ => TurnStatus::Failed,
        }
    }
}

/// How the upstream part ended.
#[derive(Clone, Debug, PartialEq)]
pub enum End {
    Done(Option<String>),
    Cancelled,
    Failed(EngineError),
}

/// Everything the upstream did, collected from the pool's events.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub text: String,
    /// The tool calls of the answer, whole.
    pub tool_calls: Vec<ToolCall>,
    /// The tokens' log probabilities, when asked for (OpenAI's `logprobs.content` items).
    pub logprobs: Vec<serde_json::Value>,
    /// An embeddings answer's `data`.
    pub embeddings: Option<serde_json::Value>,
    /// The provider's own count, if it gave one.
    pub usage: Option<Usage>,
    /// The route that answered (index into the plan).
    pub answered_by: Option<usize>,
    /// `None` while running.
    pub end: Option<End>,
}

/// A piece of an answer as it comes.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Text(String),
    ToolCall(ToolCallDelta),
    Logprobs(serde_json::Value),
}

/// Collects a job's events into an [`Outcome`]; hands deltas on.
#[derive(Debug, Default)]
pub struct Collector {
    pub outcome: Outcome,
}

impl Collector {
    /// Takes one event; returns the content to relay, if it was some.
    pub fn push(&mut self, event: JobEvent) -> Option<Content> {
        let o = &mut self.outcome;
        match event {
            JobEvent::Answering(i) => o.answered_by = Some(i),
            JobEvent::Delta(d) => {
                o.text.push_str(&d);
                return Some(Content::Text(d));
            }
            JobEvent::ToolCall(t) => {
                ToolCall::merge(&mut o.tool_calls, &t);
                return Some(Content::ToolCall(t));
            }
            JobEvent::Logprobs(l) => {
                if let Some(items) = l.as_array() {
                    o.logprobs.extend(items.iter().cloned());
                }
                return Some(Content::Logprobs(l));
            }
            JobEvent::Embeddings(e) => o.embeddings = Some(e),
            JobEvent::Usage(u) => o.usage = Some(u),
            JobEvent::Done(r) => o.end = Some(End::Done(r)),
            JobEvent::Cancelled => o.end = Some(End::Cancelled),
            JobEvent::Failed { error, .. } => o.end = Some(End::Failed(error)),
        }
        None
    }
}

/// A call's bill.
#[derive(Clone, Debug, PartialEq)]
pub struct Bill {
    pub status: TurnStatus,
    /// The model that answered (the primary if none did): its prices, its name on the message.
    pub model: ModelInfo,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub charge: i64,
    /// Why it did not complete.
    pub error: Option<EngineError>,
    /// OpenAI's `finish_reason` of a complete call (`stop` when unknown).
    pub finish_reason: String,
    /// Whether output was produced (and, per the caller, reached the user).
    pub delivered: bool,
}

/// Finish reasons OpenAI SDKs know; anything else is reported as `stop`.
fn finish_reason(r: Option<&str>) -> String {
    match r {
        Some(r @ ("stop" | "length" | "content_filter" | "tool_calls" | "function_call")) => {
            r.to_owned()
        }
        _ => "stop".to_owned(),
    }
}

/// The one billing rule (SPEC §6), at the prices of the model that answered:
/// - complete: the provider's usage (else local counts) plus `per_request`;
/// - cancelled or failed after output that reached the user (`partial_reaches_user`): the
///   prompt and the completion delivered, without `per_request`;
/// - anything else: nothing.
///
/// The completion is counted locally (off the runtime when large) only when the provider's
/// count is missing or does not describe what was delivered.
pub async fn bill(plan: &Plan, out: &Outcome, partial_reaches_user: bool) -> Bill {
    let index = out.answered_by.unwrap_or(0);
    let model = plan
        .models
        .get(index)
        .or(plan.models.first())
        .cloned()
        .unwrap_or_else(|| ModelInfo {
            id: String::new(),
            provider: String::new(),
            upstream_model: String::new(),
            context_window: 0,
            max_output_tokens: 0,
            prompt_per_1k: 0.0,
            completion_per_1k: 0.0,
            per_request: 0,
            fallbacks: Vec::new(),
            enabled: false,
            caps: Default::default(),
        });
    let (status, error, reason) = match &out.end {
        Some(End::Done(r)) => (TurnStatus::Complete, None, finish_reason(r.as_deref())),
        Some(End::Cancelled) => (TurnStatus::Cancelled, None, "stop".to_owned()),
        Some(End::Failed(e)) => (TurnStatus::Failed, Some(e.clone()), String::new()),
        None => (
            TurnStatus::Failed,
            Some(EngineError::Internal(
                "the model call ended without an answer".into(),
            )),
            String::new(),
        ),
    };
    let produced = !out.text.is_empty() || !out.tool_calls.is_empty() || out.embeddings.is_some();
    let delivered = produced && (status == TurnStatus::Complete || partial_reaches_user);
    let prompt = out.usage.map_or(plan.prompt_local, |u| u.prompt_tokens);
    let (prompt, completion, charge) = match (status, out.usage) {
        (TurnStatus::Complete, Some(u)) => (
            u.prompt_tokens,
            u.completion_tokens,
            model.cost(u.prompt_tokens, u.completion_tokens, true),
        ),
        (TurnStatus::Complete, None) => {
            let c = completion_local(out).await;
            (prompt, c, model.cost(prompt, c, true))
        }
        _ if delivered => {
            let c = completion_local(out).await;
            (prompt, c, model.cost(prompt, c, false))
        }
        // Nothing reached the user: nothing is charged.
        _ => (0, 0, 0),
    };
    Bill {
        status,
        model,
        prompt_tokens: prompt,
        completion_tokens: completion,
        charge,
        error,
        finish_reason: reason,
        delivered,
    }
}

/// The completion counted locally: the text and every tool call's name and arguments.
async fn completion_local(out: &Outcome) -> u64 {
    let mut c = tokens::count_off_runtime(&out.text).await;
    for t in &out.tool_calls {
        c += tokens::count(&t.name) + tokens::count_off_runtime(&t.arguments).await;
    }
    c
}
