//! Small AI tools (SPEC §10): `POST /toolkit/translate` and `POST /toolkit/summarize`.
//!
//! Each call is a one-shot prompt through the LLM pool, billed like a chat turn: the per-user
//! limits are checked, the call's maximum cost is reserved (prompt tokens counted locally plus the
//! model's max output), the job runs, and the reservation is settled against the actual cost
//! with a `toolkit` ledger row and a `toolkit` usage row (`storage::usage`). The call runs in a
//! tracked task of its own, so a client that goes away does not leave a reservation behind: the
//! call finishes, is billed and logged. A call that fails costs nothing (no output reached the
//! client); its usage row says `failed`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Json;
use crate::auth::{AuthUser, Role};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::usage;
use questech_actors::events::Frame;
use questech_actors::llm::{ChatMessage, ChatRequest};
use questech_actors::pool::{Job, JobEvent, Route};
use questech_actors::ports::ModelInfo;
use questech_actors::{tokens, EngineError};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(translate))
        .routes(routes!(summarize))
}

const MAX_TEXT_CHARS: usize = 20_000;
const DEFAULT_MAX_WORDS: i64 = 150;

#[derive(Serialize, utoipa::ToSchema)]
pub struct ToolUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ToolCredits {
    pub charged: i64,
    pub balance: i64,
}

/// The answer of every tool.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ToolAnswer {
    pub result: String,
    pub usage: ToolUsage,
    pub credits: ToolCredits,
}

fn check_text(text: &str) -> Result<()> {
    let n = text.chars().count();
    if n == 0 || n > MAX_TEXT_CHARS || text.trim().is_empty() {
        return Err(Error::invalid(
            "text",
            &format!("must be 1 to {MAX_TEXT_CHARS} characters and not blank"),
        ));
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct TranslateBody {
    /// 1 to 20000 characters.
    text: String,
    /// The language to translate into, e.g. `en`, `zh-CN`, `French` (2 to 32 characters).
    target_lang: String,
}

#[utoipa::path(post, path = "/toolkit/translate", tag = "toolkit", request_body = TranslateBody, responses((status = 200, description = "the translation", body = ToolAnswer), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn translate(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<TranslateBody>,
) -> Result<Json<ToolAnswer>> {
    check_text(&body.text)?;
    let lang = body.target_lang.trim();
    let n = lang.chars().count();
    if !(2..=32).contains(&n) || lang.chars().any(char::is_control) {
        return Err(Error::invalid(
            "target_lang",
            "must be 2 to 32 characters with no control characters",
        ));
    }
    let messages = vec![
        ChatMessage {
            role: "system".into(),
            content: format!(
                "You are a translation engine. Translate the user's message into {lang}. \
                 Reply with the translation only: no notes, no quotes, no explanations. \
                 Keep formatting, names and numbers as they are."
            )
            .into(),
        },
        ChatMessage {
            role: "user".into(),
            content: body.text.into(),
        },
    ];
    Ok(Json(one_shot(&state, &user, messages).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SummarizeBody {
    /// 1 to 20000 characters.
    text: String,
    /// Longest summary wanted, 1 to 2000 words (default 150).
    max_words: Option<i64>,
}

#[utoipa::path(post, path = "/toolkit/summarize", tag = "toolkit", request_body = SummarizeBody, responses((status = 200, description = "the summary", body = ToolAnswer), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn summarize(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<SummarizeBody>,
) -> Result<Json<ToolAnswer>> {
    check_text(&body.text)?;
    let max_words = body.max_words.unwrap_or(DEFAULT_MAX_WORDS);
    if !(1..=2000).contains(&max_words) {
        return Err(Error::invalid("max_words", "must be between 1 and 2000"));
    }
    let messages = vec![
        ChatMessage {
            role: "system".into(),
            content: format!(
                "You summarize texts. Summarize the user's message in at most {max_words} words, \
                 in the language it is written in. Reply with the summary only."
            )
            .into(),
        },
        ChatMessage {
            role: "user".into(),
            content: body.text.into(),
        },
    ];
    Ok(Json(one_shot(&state, &user, messages).await?))
}

/// Runs one billed, rate-limited prompt on the default model and answers with its text.
async fn one_shot(
    state: &AppState,
    user: &AuthUser,
    messages: Vec<ChatMessage>,
) -> Result<ToolAnswer> {
    let model_id = super::chat::default_model(state).await?;
    let model = super::chat::usable_model(state, &model_id).await?.info();
    let routes = routes_for(state, &model, messages).await?;
    let unlimited = user.role == Role::Admin;
    state.limits.check(user.user_id, unlimited).await?;
    let (tx, rx) = oneshot::channel();
    let st = state.clone();
    let user_id = user.user_id;
    // Its own task: the call is finished and settled even if the client goes away.
    state.tracker.spawn(async move {
        let r = run_and_settle(&st, user_id, &model, routes).await;
        st.limits.done(user_id, unlimited).await;
        let _ = tx.send(r);
    });
    rx.await
        .map_err(|_| Error::Internal(anyhow::anyhow!("toolkit call ended without an answer")))?
}

/// The model's own route, then its usable fallbacks (as chat turns do).
async fn routes_for(
    state: &AppState,
    model: &ModelInfo,
    messages: Vec<ChatMessage>,
) -> Result<Vec<Route>> {
    let request = ChatRequest {
        model: model.upstream_model.clone(),
        messages,
        max_tokens: Some(model.max_output_tokens),
        ..Default::default()
    };
    let mut routes = vec![Route {
        provider: model.provider.clone(),
        request: request.clone(),
    }];
    for fb in &model.fallbacks {
        if let Some(m) = state.models.get(fb).await? {
            if m.enabled != 0 && state.engine.pool.has_provider(&m.provider) {
                let mut req = request.clone();
                req.model = m.info().upstream_model;
                routes.push(Route {
                    provider: m.provider.clone(),
                    request: req,
                });
            }
        }
    }
    Ok(routes)
}

async fn run_and_settle(
    state: &AppState,
    user_id: i64,
    model: &ModelInfo,
    routes: Vec<Route>,
) -> Result<ToolAnswer> {
    let call_id = crate::ids::next_id().to_string();
    let prompt_local = routes
        .first()
        .map(|r| tokens::count_messages(&r.request.messages))
        .unwrap_or(0);
    let reserve = model.cost(prompt_local, model.max_output_tokens, true);
    // The reservation outlives the longest call; one left by a crash is released at start-up.
    let ttl_ms = (state.config.llm_total_timeout + Duration::from_secs(120)).as_millis() as i64;
    let reservation_id = usage::reserve(
        &state.db,
        user_id,
        reserve,
        &state.config.node_id,
        &call_id,
        ttl_ms,
    )
    .await?
    .ok_or(Error::InsufficientCredits)?;

    let started = Instant::now();
    let (etx, mut erx) = mpsc::unbounded_channel::<JobEvent>();
    state.engine.pool.submit(Job {
        routes,
        cancel: CancellationToken::new(),
        sink: Arc::new(move |event| {
            let _ = etx.send(event);
        }),
    });
    let mut text = String::new();
    let mut reported = None;
    let outcome: std::result::Result<(), EngineError> = loop {
        match erx.recv().await {
            Some(JobEvent::Delta(d)) => text.push_str(&d),
            Some(JobEvent::Usage(u)) => reported = Some(u),
            Some(JobEvent::Done(_)) => break Ok(()),
            Some(JobEvent::Cancelled) => {
                break Err(EngineError::Internal("toolkit call cancelled".into()))
            }
            Some(JobEvent::Failed { error, .. }) => break Err(error),
            None => {
                break Err(EngineError::Internal(
                    "the model pool dropped the call".into(),
                ))
            }
        }
    };
    let completion_local = tokens::count(&text);
    let (prompt, completion, charge, status) = match &outcome {
        Ok(()) => {
            let (p, c) = reported
                .map(|u| (u.prompt_tokens, u.completion_tokens))
                .unwrap_or((prompt_local, completion_local));
            (p, c, model.cost(p, c, true), "ok")
        }
        // Nothing reached the client: nothing is charged.
        Err(_) => (prompt_local, completion_local, 0, "failed"),
    };
    let settle = usage::Settle {
        user_id,
        reservation_id,
        reserved: reserve,
        charge,
        reason: "toolkit",
        kind: "toolkit",
        ref_id: &call_id,
        model: &model.id,
        api_key_id: None,
        prompt_tokens: prompt as i64,
        completion_tokens: completion as i64,
        latency_ms: started.elapsed().as_millis() as i64,
        status,
    };
    let settled = settle_with_retry(state, &settle).await?;
    if settled.charged > 0 {
        state.engine.publish(
            user_id,
            &Frame::CreditsUpdated {
                balance: settled.balance,
                delta: -settled.charged,
                reason: "toolkit".into(),
            },
        );
    }
    outcome.map_err(Error::from)?;
    Ok(ToolAnswer {
        result: text,
        usage: ToolUsage {
            prompt_tokens: prompt as i64,
            completion_tokens: completion as i64,
        },
        credits: ToolCredits {
            charged: settled.charged,
            balance: settled.balance,
        },
    })
}

/// The bill of a finished call must not be lost to a passing database error: retry briefly.
async fn settle_with_retry(state: &AppState, s: &usage::Settle<'_>) -> Result<usage::Settled> {
    let mut last = None;
    for attempt in 0..3u32 {
        match usage::settle(&state.db, s).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::warn!(attempt, error = ?e, "toolkit settle failed; retrying");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Internal(anyhow::anyhow!("toolkit settle failed"))))
}
