//! Billing defects of the one metered call (SPEC §4, §6): a turn answered by a fallback model is
//! billed at the fallback's prices and names it; the reservation covers the dearest route of the
//! chain; a first-token timeout stays `upstream_timeout` even when it opens the breaker.

use questech_fake_upstream::{start as start_fake, Behavior, FakeUpstream};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;
use crate::wsclient::*;

const MODEL: &str = "gpt-4o-mini";

/// An app whose `openai` (gpt-4o-mini, 1 credit a token + 1) always fails and whose
/// `deepseek` (deepseek-chat, 3 credits a token + 7) answers "From the backup" in 3 chunks;
/// gpt-4o-mini falls back to deepseek-chat. Returns the app, an admin and the backup.
async fn failover_app(backend: Backend) -> Option<(TestApp, RegisteredUser, FakeUpstream)> {
    let backup = start_fake(Behavior {
        reply_words: Some(vec!["From".into(), " the".into(), " backup".into()]),
        ..Default::default()
    })
    .await
    .unwrap();
    let env = [
        ("DEEPSEEK_API_KEY", "sk-deep"),
        ("DEEPSEEK_BASE_URL", backup.base_url.as_str()),
        ("SIGNUP_BONUS_CREDITS", "1000"),
        ("LLM_MAX_RETRIES", "0"),
    ];
    let primary = Behavior {
        fail_always: Some(503),
        ..Default::default()
    };
    let (app, _primary) = with_fake(backend, primary, &env).await?;
    let name = uname("bill_admin");
    app.register(&name).await;
    let admin = app.make_admin(&name).await;
    for (id, body) in [
        (
            MODEL,
            json!({"fallbacks": ["deepseek-chat"], "max_output_tokens": 50,
                   "price": {"prompt_per_1k": 1000, "completion_per_1k": 1000, "per_request": 1}}),
        ),
        (
            "deepseek-chat",
            json!({"enabled": true, "max_output_tokens": 50,
                   "price": {"prompt_per_1k": 3000, "completion_per_1k": 3000, "per_request": 7}}),
        ),
    ] {
        let (s, _, b) = app
            .patch(
                &format!("/admin/models/{id}"),
                Some(&admin.access),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    Some((app, admin, backup))
}

/// The fake's usage: 10 prompt tokens a message, one completion token a chunk.
const FALLBACK_CHARGE: i64 = 10 * 3 + 3 * 3 + 7;

async fn last_ledger_delta(app: &TestApp, uid: i64, reason: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT delta FROM credit_ledger WHERE user_id = ? AND reason = ? ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(uid)
    .bind(reason)
    .fetch_one(&app.state.db.write)
    .await
    .unwrap()
}

/// One non-streaming `/v1` call saying "hi".
async fn ask_v1(app: &TestApp, token: &str) -> (StatusCode, serde_json::Value) {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, b) = app
        .post("/v1/chat/completions", Some(token), Some(body))
        .await;
    (s, b)
}

async fn failover_chat(backend: Backend) {
    let Some((app, admin, backup)) = failover_app(backend).await else {
        return;
    };
    let u = app.register(&uname("fo_bill")).await;
    let conv = conv_id(&app, &u.access, MODEL).await;
    // REST: the stored reply names the model that answered and carries its price.
    let (s, b) = say(&app, &u.access, &conv, "anyone there?").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["assistant_message"]["content"], "From the backup");
    assert_eq!(b["assistant_message"]["model"], "deepseek-chat", "{b}");
    assert_eq!(b["assistant_message"]["credits_charged"], FALLBACK_CHARGE);
    assert_eq!(b["credits"]["charged"], FALLBACK_CHARGE);
    assert_eq!(
        last_ledger_delta(&app, u.uid(), "chat").await,
        -FALLBACK_CHARGE
    );
    // WebSocket: chat.done and credits.updated say the same charge.
    let mut ws = Ws::connect(&app, &u.access).await;
    ws.chat(&conv, "fo-2", "and now?").await;
    let frames = ws.turn(&conv).await;
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "chat.done", "{frames:#?}");
    assert_eq!(done["message"]["model"], "deepseek-chat");
    // Two messages of context now: 3 × 10 prompt tokens.
    let second = 30 * 3 + 3 * 3 + 7;
    assert_eq!(done["credits"]["charged"], second);
    let (_, upd) = ws.until_type("credits.updated").await;
    assert_eq!(upd["delta"], -second);
    assert_eq!(last_ledger_delta(&app, u.uid(), "chat").await, -second);
    let stored = all_messages(&app, &u.access, &conv).await;
    assert!(stored
        .iter()
        .filter(|m| m["role"] == "assistant")
        .all(|m| m["model"] == "deepseek-chat"));
    assert_eq!(backup.request_count(), 2);
    // The reservation covers the dearest route: with credits for the primary's maximum but
    // not the fallback's, the turn is refused and nothing goes upstream.
    let balance = assert_credit_invariants(&app, u.uid()).await;
    let keep = 120; // primary at most ~(prompt + 50) + 1, fallback ~3 × (prompt + 50) + 7
    let (s, _, b) = app
        .post(
            &format!("/admin/users/{}/credits", u.id),
            Some(&admin.access),
            Some(json!({"delta": keep - balance, "reason": "test"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = say(&app, &u.access, &conv, "one more?").await;
    assert_error(s, &b, StatusCode::PAYMENT_REQUIRED, "insufficient_credits");
    assert_eq!(backup.request_count(), 2);
    assert_eq!(assert_credit_invariants(&app, u.uid()).await, keep);
    assert_gap_free(&all_messages(&app, &u.access, &conv).await);
}
both_backends!(
    failover_turn_is_billed_at_the_answering_models_price,
    super::failover_chat
);

async fn failover_v1(backend: Backend) {
    let Some((app, _admin, backup)) = failover_app(backend).await else {
        return;
    };
    let u = app.register(&uname("fo_v1")).await;
    let (s, b) = ask_v1(&app, &u.access).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "From the backup");
    assert_eq!(
        last_ledger_delta(&app, u.uid(), "api").await,
        -FALLBACK_CHARGE
    );
    let model: String = sqlx::query_scalar(
        "SELECT model FROM usage_logs WHERE user_id = ? AND kind = 'v1' ORDER BY id DESC LIMIT 1",
    )
    .bind(u.uid())
    .fetch_one(&app.state.db.write)
    .await
    .unwrap();
    assert_eq!(
        model, "deepseek-chat",
        "the usage row names the answering model"
    );
    assert_eq!(backup.request_count(), 1);
    assert_credit_invariants(&app, u.uid()).await;
}
both_backends!(
    failover_v1_call_is_billed_at_the_answering_models_price,
    super::failover_v1
);

/// One timeout opens the breaker, which then stops the retries: the client must still get
/// 504 `upstream_timeout` (what ended the call), on REST, WebSocket and `/v1`.
async fn timeout_opens_breaker(backend: Backend) {
    let env = [
        ("LLM_FIRST_TOKEN_TIMEOUT_SECS", "1"),
        ("LLM_MAX_RETRIES", "2"),
        ("LLM_BREAKER_FAILURES", "1"),
        ("LLM_BREAKER_COOLDOWN_SECS", "60"),
    ];
    let hang = Behavior {
        hang: true,
        ..Default::default()
    };
    let Some((app, fake)) = with_fake(backend, hang, &env).await else {
        return;
    };
    let u = app.register(&uname("to_brk")).await;
    let conv = conv_id(&app, &u.access, MODEL).await;
    let (s, b) = say(&app, &u.access, &conv, "hi").await;
    assert_error(s, &b, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert_eq!(
        fake.request_count(),
        1,
        "the open breaker stopped the retries"
    );
    let (s, b) = ask_v1(&app, &u.access).await;
    // The breaker is open now: that call never left, and says so.
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert_eq!(fake.request_count(), 1);
    assert_credit_invariants(&app, u.uid()).await;
}
both_backends!(
    a_timeout_that_opens_the_breaker_stays_a_timeout,
    super::timeout_opens_breaker
);
