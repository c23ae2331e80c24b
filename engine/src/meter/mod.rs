//! The one metered call: the engine's core rule, written once for chat turns, `/v1` and the
//! toolkit.
//!
//! 1. **admit**: the user's limits (requests per minute, calls in flight), released when done;
//! 2. **plan**: the model and its usable fallbacks, computed once, with one "usable" rule
//!    ([`Engine::usable_model`]); the reservation covers the most expensive route (§6);
//! 3. **reserve**: a stateless call reserves through [`Store::reserve`]; a chat turn through
//!    its `begin_turn` (which also takes the turn lock and stores the user message);
//! 4. **run**: the LLM pool, its events collected by a [`Collector`];
//! 5. **bill**: [`bill`], the one rule — the answering model's prices, the provider's usage
//!    where given, partial output billed only when it reached the user;
//! 6. **settle**: retried once in one place ([`retry_once`]), then `credits.updated`.
//!
//! [`call`] puts the six together for stateless calls; the conversation actor uses the same
//! pieces around what is its own (seq, context, devices).

mod bill;
mod call;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

pub use bill::{bill, Bill, Collector, Content, End, Outcome, TurnStatus};
pub use call::{CallEvent, CallKind, CallSpec, Called};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::llm::ChatRequest;
use crate::pool::Route;
use crate::ports::ModelInfo;

/// Where a call may go, and what it may cost at most.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The model's own route first, then its usable fallbacks; `models[i]` answers `routes[i]`.
    pub routes: Vec<Route>,
    pub models: Vec<ModelInfo>,
    /// Prompt tokens counted locally (the bill's fallback when the provider reports none).
    pub prompt_local: u64,
    /// The reservation: the most any route of the chain can cost.
    pub reserve: i64,
}

impl Plan {
    /// The model asked for.
    pub fn primary(&self) -> Option<&ModelInfo> {
        self.models.first()
    }
}

impl Engine {
    /// A model the engine can run now: it exists, is enabled and its provider is configured.
    /// The one place that says what "usable" means.
    pub async fn usable_model(&self, id: &str) -> Result<ModelInfo, EngineError> {
        match self.store.model(id).await? {
            Some(m) if self.is_usable(&m) => Ok(m),
            _ => Err(EngineError::ModelNotFound(id.to_owned())),
        }
    }

    /// Whether a model (as listed) is usable on this node.
    pub fn is_usable(&self, m: &ModelInfo) -> bool {
        m.enabled && self.pool.has_provider(&m.provider)
    }

    /// The routes of a call to `model`: its own, then each usable fallback with the request in
    /// that model's name and within its output limit; the reservation is the chain's maximum.
    pub async fn plan(&self, model: ModelInfo, request: ChatRequest, prompt_local: u64) -> Plan {
        let requested = request.max_tokens.unwrap_or(model.max_output_tokens);
        let mut models = vec![model];
        for fb in &models[0].fallbacks.clone() {
            if let Ok(Some(m)) = self.store.model(fb).await {
                let able = m.caps.covers(request.needs);
                if able && self.is_usable(&m) && !models.iter().any(|x| x.id == m.id) {
                    models.push(m);
                }
            }
        }
        let mut reserve = 0;
        let routes = models
            .iter()
            .map(|m| {
                // An embedding has no output tokens to reserve for.
                let max_out = if request.embed.is_some() {
                    0
                } else {
                    requested.min(m.max_output_tokens).max(1)
                };
                reserve = reserve.max(m.cost(prompt_local, max_out, true));
                let mut r = request.clone();
                r.model = m.upstream_model.clone();
                r.max_tokens = Some(max_out);
                Route {
                    provider: m.provider.clone(),
                    request: r,
                }
            })
            .collect();
        Plan {
            routes,
            models,
            prompt_local,
            reserve,
        }
    }
}

/// Runs `f`, and once more after a short pause if it fails: a bill must not be lost to one
/// passing database error. The one settle retry of the engine.
///
/// Not retried: a store that already waited out its connection timeout (`unavailable` after
/// [`NO_RETRY_AFTER`] or more). The database is down, not blinking; a second wait would only
/// double the time the client waits for its 503.
pub async fn retry_once<T, F, Fut>(what: &str, mut f: F) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, EngineError>>,
{
    let started = Instant::now();
    match f().await {
        Ok(v) => Ok(v),
        Err(e @ EngineError::Unavailable { .. }) if started.elapsed() >= NO_RETRY_AFTER => {
            tracing::warn!(error = %e, "{what} failed; the store is down, not retried");
            Err(e)
        }
        Err(e) => {
            tracing::warn!(error = %e, "{what} failed; retrying once");
            tokio::time::sleep(Duration::from_millis(100)).await;
            f().await
        }
    }
}

/// A failure slower than this is a store that waited for a connection and got none.
pub const NO_RETRY_AFTER: Duration = Duration::from_millis(250);
