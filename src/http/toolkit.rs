//! Small AI tools (SPEC §10): `POST /toolkit/translate` and `POST /toolkit/summarize`.
//!
//! Each call is a one-shot prompt through the engine's one metered call
//! (`questech_engine::meter`), billed like a chat turn: limits, the chain's maximum cost
//! reserved, the pool, the bill at the answering model's prices, the settlement with a
//! `toolkit` ledger row and a `toolkit` usage row. The call runs in a tracked task of its own,
//! so a client that goes away does not leave a reservation behind. A call that fails costs
//! nothing (no output reached the client); its usage row says `failed`.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::rules::{check_label, check_text};
use super::Json;
use crate::auth::{AuthUser, Role};
use crate::error::{Error, Result};
use crate::state::AppState;
use questech_engine::llm::{ChatMessage, ChatRequest};
use questech_engine::meter::{CallKind, CallSpec};
use questech_engine::tokens;

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

#[derive(Deserialize, utoipa::ToSchema)]
struct TranslateBody {
    #[schema(
        min_length = 1,
        max_length = 20000,
        pattern = r"[^\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    text: String,
    /// The language to translate into, e.g. `en`, `zh-CN`, `French`.
    #[schema(
        min_length = 2,
        max_length = 32,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    target_lang: String,
}

#[utoipa::path(post, path = "/toolkit/translate", tag = "toolkit", request_body = TranslateBody, responses((status = 200, description = "the translation", body = ToolAnswer), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn translate(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<TranslateBody>,
) -> Result<Json<ToolAnswer>> {
    check_text("text", &body.text, 1, MAX_TEXT_CHARS)?;
    check_label("target_lang", &body.target_lang, 2, 32)?;
    let lang = body.target_lang.trim();
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
    #[schema(
        min_length = 1,
        max_length = 20000,
        pattern = r"[^\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    text: String,
    /// Longest summary wanted, in words (default 150).
    #[schema(minimum = 1, maximum = 2000)]
    #[serde(default, deserialize_with = "super::de::opt_int")]
    max_words: Option<i64>,
}

#[utoipa::path(post, path = "/toolkit/summarize", tag = "toolkit", request_body = SummarizeBody, responses((status = 200, description = "the summary", body = ToolAnswer), (status = "4XX", description = "error", body = crate::error::ApiError), (status = "5XX", description = "upstream error", body = crate::error::ApiError)))]
async fn summarize(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<SummarizeBody>,
) -> Result<Json<ToolAnswer>> {
    check_text("text", &body.text, 1, MAX_TEXT_CHARS)?;
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

/// Runs one billed, rate-limited prompt on the default model through the engine's metered
/// call, in a tracked task of its own (finished and settled even if the client goes away).
async fn one_shot(
    state: &AppState,
    user: &AuthUser,
    messages: Vec<ChatMessage>,
) -> Result<ToolAnswer> {
    let model_id = super::rules::default_model(state).await?;
    let model = state.engine.usable_model(&model_id).await?;
    let prompt_local = tokens::count_messages_off_runtime(&messages).await;
    let request = ChatRequest {
        messages,
        ..Default::default()
    };
    let spec = CallSpec {
        user_id: user.user_id,
        unlimited: user.role == Role::Admin,
        kind: CallKind::Toolkit,
        ref_id: crate::ids::next_id().to_string(),
        plan: state.engine.plan(model, request, prompt_local).await,
        // The answer comes whole or not at all: a broken call costs nothing.
        partial_reaches_user: false,
    };
    let engine = state.engine.clone();
    let called = state
        .tracker
        .spawn(async move { engine.call(spec, &mut |_| {}).await })
        .await
        .map_err(Error::internal)??;
    if let Some(e) = called.bill.error {
        return Err(e.into());
    }
    Ok(ToolAnswer {
        result: called.text,
        usage: ToolUsage {
            prompt_tokens: called.bill.prompt_tokens as i64,
            completion_tokens: called.bill.completion_tokens as i64,
        },
        credits: ToolCredits {
            charged: called.charged,
            balance: called.balance,
        },
    })
}
