//! The toolkit (SPEC §10): one-shot prompts through the LLM pool, validated, rate limited and
//! billed like chat (reserve, then settle with a `toolkit` ledger row and usage row).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use questech_fake_upstream::{self as fake_upstream, Behavior};

/// `(delta, reason, ref_id)` of the user's ledger rows, oldest first.
async fn ledger_rows(app: &TestApp, uid: i64) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT delta, reason FROM credit_ledger WHERE user_id = ? ORDER BY id")
        .bind(uid)
        .fetch_all(&app.state.db.write)
        .await
        .expect("ledger rows")
}

/// `(kind, model, prompt_tokens, completion_tokens, credits, status)` of the user's usage rows.
async fn usage_rows(app: &TestApp, uid: i64) -> Vec<(String, String, i64, i64, i64, String)> {
    sqlx::query_as(
        "SELECT kind, model, prompt_tokens, completion_tokens, credits, status FROM usage_logs WHERE user_id = ? ORDER BY id",
    )
    .bind(uid)
    .fetch_all(&app.state.db.write)
    .await
    .expect("usage rows")
}

async fn reserved(app: &TestApp, uid: i64) -> i64 {
    sqlx::query_scalar("SELECT reserved FROM users WHERE id = ?")
        .bind(uid)
        .fetch_one(&app.state.db.write)
        .await
        .expect("reserved")
}

async fn assert_balanced(app: &TestApp, uid: i64) {
    let (credits, sum) = questech::storage::ledger::balance_check(&app.state.db, uid)
        .await
        .expect("balance check");
    assert_eq!(credits, sum, "credits == sum(ledger.delta)");
    assert!(credits >= 0);
    assert_eq!(reserved(app, uid).await, 0, "no reservation left open");
}

/// The echo model's price: 1 credit per 1k prompt tokens, 2 per 1k completion tokens.
fn echo_cost(prompt: i64, completion: i64) -> i64 {
    (prompt + 2 * completion + 999) / 1000
}

fn assert_answer(b: &Value) {
    assert_eq!(keys(b), ["credits", "result", "usage"], "{b}");
    assert_eq!(
        keys(&b["usage"]),
        ["completion_tokens", "prompt_tokens"],
        "{b}"
    );
    assert_eq!(keys(&b["credits"]), ["balance", "charged"], "{b}");
}

both!(
    translate_and_summarize_are_billed_like_chat,
    |app| async move {
        let u = app.register(&uname("u")).await;
        let uid = u.uid();
        let (s, _, t) = app
            .post(
                "/toolkit/translate",
                Some(&u.access),
                Some(json!({"text": "Bonjour tout le monde", "target_lang": "en"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{t}");
        assert_answer(&t);
        // The echo model answers with the last user message: the user's text, untouched.
        assert_eq!(t["result"], "Echo: Bonjour tout le monde");
        let (p, c) = (
            t["usage"]["prompt_tokens"].as_i64().unwrap(),
            t["usage"]["completion_tokens"].as_i64().unwrap(),
        );
        assert!(p > 0 && c > 0, "{t}");
        let charged = t["credits"]["charged"].as_i64().unwrap();
        assert_eq!(charged, echo_cost(p, c), "price of the usage: {t}");
        assert!(charged > 0);
        assert_eq!(t["credits"]["balance"], 100 - charged);
        let (_, _, me) = app.get("/user/me", Some(&u.access)).await;
        assert_eq!(me["credits"], 100 - charged);

        let (s, _, sm) = app
            .post(
                "/toolkit/summarize",
                Some(&u.access),
                Some(json!({"text": "A long story about a cat.", "max_words": 10})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{sm}");
        assert_answer(&sm);
        assert_eq!(sm["result"], "Echo: A long story about a cat.");
        let charged2 = sm["credits"]["charged"].as_i64().unwrap();
        assert_eq!(sm["credits"]["balance"], 100 - charged - charged2);
        // max_words is optional.
        let (s, _, sm2) = app
            .post(
                "/toolkit/summarize",
                Some(&u.access),
                Some(json!({"text": "Short."})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{sm2}");
        let charged3 = sm2["credits"]["charged"].as_i64().unwrap();

        // One ledger row per call, reason `toolkit`; one usage row per call, kind `toolkit`.
        let ledger = ledger_rows(&app, uid).await;
        assert_eq!(
            ledger,
            [
                (100, "signup_bonus".to_owned()),
                (-charged, "toolkit".to_owned()),
                (-charged2, "toolkit".to_owned()),
                (-charged3, "toolkit".to_owned()),
            ]
        );
        let usage = usage_rows(&app, uid).await;
        assert_eq!(usage.len(), 3, "{usage:?}");
        assert_eq!(
            usage[0],
            (
                "toolkit".to_owned(),
                "echo".to_owned(),
                p,
                c,
                charged,
                "ok".to_owned()
            )
        );
        assert!(
            usage.iter().all(|r| r.0 == "toolkit" && r.5 == "ok"),
            "{usage:?}"
        );
        assert_balanced(&app, uid).await;
    }
);

both!(toolkit_validation, |app| async move {
    let u = app.register(&uname("u")).await;
    let (s, h, b) = app
        .post(
            "/toolkit/translate",
            None,
            Some(json!({"text": "hi", "target_lang": "en"})),
        )
        .await;
    assert_unauthorized(s, &h, &b);
    let long = "x".repeat(20_001);
    let max_ok = "y".repeat(20_000);
    for (path, body, field) in [
        (
            "/toolkit/translate",
            json!({"text": "", "target_lang": "en"}),
            "text",
        ),
        (
            "/toolkit/translate",
            json!({"text": "   ", "target_lang": "en"}),
            "text",
        ),
        (
            "/toolkit/translate",
            json!({"text": long, "target_lang": "en"}),
            "text",
        ),
        (
            "/toolkit/translate",
            json!({"text": "hi", "target_lang": "e"}),
            "target_lang",
        ),
        (
            "/toolkit/translate",
            json!({"text": "hi", "target_lang": "x".repeat(33)}),
            "target_lang",
        ),
        (
            "/toolkit/translate",
            json!({"text": "hi", "target_lang": "e\nn"}),
            "target_lang",
        ),
        ("/toolkit/summarize", json!({"text": ""}), "text"),
        ("/toolkit/summarize", json!({"text": long}), "text"),
        (
            "/toolkit/summarize",
            json!({"text": "hi", "max_words": 0}),
            "max_words",
        ),
        (
            "/toolkit/summarize",
            json!({"text": "hi", "max_words": 2001}),
            "max_words",
        ),
        (
            "/toolkit/summarize",
            json!({"text": "hi", "max_words": -5}),
            "max_words",
        ),
    ] {
        let (s, _, b) = app.post(path, Some(&u.access), Some(body)).await;
        assert_invalid(s, &b, field);
    }
    for (path, body) in [
        ("/toolkit/translate", json!({"text": "hi"})),
        ("/toolkit/translate", json!({"target_lang": "en"})),
        ("/toolkit/summarize", json!({"max_words": 3})),
        ("/toolkit/summarize", json!({"text": 5})),
        ("/toolkit/summarize", json!([])),
    ] {
        let (s, _, b) = app.post(path, Some(&u.access), Some(body)).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // Nothing was billed or logged for refused calls.
    assert_eq!(ledger_rows(&app, u.uid()).await.len(), 1);
    assert!(usage_rows(&app, u.uid()).await.is_empty());
    // The limits are inclusive.
    let (s, _, b) = app
        .post(
            "/toolkit/translate",
            Some(&u.access),
            Some(json!({"text": "ok", "target_lang": "x".repeat(32)})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, b) = app
        .post(
            "/toolkit/summarize",
            Some(&u.access),
            Some(json!({"text": max_ok, "max_words": 2000})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_balanced(&app, u.uid()).await;
});

both!(toolkit_needs_credits, |app| async move {
    let adm = app.register(&uname("adm")).await;
    let adm = app.make_admin(&adm.username).await;
    let u = app.register(&uname("u")).await;
    let (s, _, b) = app
        .post(
            &format!("/admin/users/{}/credits", u.id),
            Some(&adm.access),
            Some(json!({"delta": -99, "reason": "test"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // One credit left: less than the most a call may cost (its max output), so it is refused
    // before anything goes upstream.
    let (s, _, b) = app
        .post(
            "/toolkit/translate",
            Some(&u.access),
            Some(json!({"text": "hello", "target_lang": "fr"})),
        )
        .await;
    assert_error(s, &b, StatusCode::PAYMENT_REQUIRED, "insufficient_credits");
    assert!(usage_rows(&app, u.uid()).await.is_empty());
    let (_, _, me) = app.get("/user/me", Some(&u.access)).await;
    assert_eq!(me["credits"], 1);
    assert_balanced(&app, u.uid()).await;
});

both!(
    toolkit_is_rate_limited,
    env = [("USER_RPM", "2")],
    |app| async move {
        let u = app.register(&uname("u")).await;
        let body = json!({"text": "hi", "max_words": 5});
        // The limit is a per-minute window: start well inside one.
        let sec = chrono::Utc::now().timestamp() % 60;
        if sec >= 50 {
            tokio::time::sleep(Duration::from_secs((61 - sec) as u64)).await;
        }
        for _ in 0..2 {
            let (s, _, b) = app
                .post("/toolkit/summarize", Some(&u.access), Some(body.clone()))
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
        let (s, h, b) = app
            .post("/toolkit/summarize", Some(&u.access), Some(body.clone()))
            .await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(usage_rows(&app, u.uid()).await.len(), 2);
        // Admins are not limited.
        let adm = app.register(&uname("adm")).await;
        let adm = app.make_admin(&adm.username).await;
        for _ in 0..3 {
            let (s, _, b) = app
                .post("/toolkit/summarize", Some(&adm.access), Some(body.clone()))
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
        assert_balanced(&app, u.uid()).await;
    }
);

/// Upstream failures map to the spec's codes; a failed call costs nothing but is logged.
async fn upstream_errors(backend: Backend) {
    let fake = fake_upstream::start(Behavior::default())
        .await
        .expect("fake upstream");
    let Some(app) = spawn_app(
        backend,
        &[
            ("OPENAI_API_KEY", "sk-test"),
            ("OPENAI_BASE_URL", fake.base_url.as_str()),
            ("DEFAULT_MODEL", "gpt-4o-mini"),
            ("LLM_MAX_RETRIES", "0"),
            ("LLM_FIRST_TOKEN_TIMEOUT_SECS", "1"),
            ("LLM_BREAKER_FAILURES", "100"),
            ("LLM_MAX_CONCURRENCY", "1"),
            ("LLM_QUEUE_CAPACITY", "0"),
        ],
    )
    .await
    else {
        return;
    };
    let u = app.register(&uname("u")).await;
    let uid = u.uid();
    let body = json!({"text": "Guten Morgen", "target_lang": "English"});

    // A working upstream: the real model, the provider's usage, and the prompt's parts.
    let (s, _, ok) = app
        .post("/toolkit/translate", Some(&u.access), Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    assert_eq!(ok["result"], "Hello from fake upstream");
    let req = fake.requests().pop().expect("one upstream request").body;
    assert_eq!(req["model"], "gpt-4o-mini");
    let msgs = req["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    assert!(
        msgs[0]["content"].as_str().unwrap().contains("English"),
        "{req}"
    );
    assert_eq!(msgs[1], json!({"role": "user", "content": "Guten Morgen"}));
    // The fake reports prompt_tokens = 10 × messages and completion_tokens = chunks.
    assert_eq!(
        ok["usage"],
        json!({"prompt_tokens": 20, "completion_tokens": 4})
    );
    // gpt-4o-mini: ceil(20 × 0.15/1000 + 4 × 0.6/1000) + 1 per request = 2.
    assert_eq!(ok["credits"]["charged"], 2);
    let balance = ok["credits"]["balance"].as_i64().unwrap();

    fake.set_behavior(Behavior {
        fail_always: Some(500),
        ..Behavior::default()
    });
    let (s, _, b) = app
        .post("/toolkit/translate", Some(&u.access), Some(body.clone()))
        .await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");

    fake.set_behavior(Behavior {
        hang: true,
        ..Behavior::default()
    });
    let (s, _, b) = app
        .post("/toolkit/translate", Some(&u.access), Some(body.clone()))
        .await;
    assert_error(s, &b, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");

    // One call in flight fills the pool (concurrency 1, no queue): the next is `overloaded`.
    fake.set_behavior(Behavior {
        // The first token at once (within the 1 s first-token timeout), the rest slowly.
        chunk_gap: Duration::from_millis(500),
        ..Behavior::default()
    });
    let other = app.register(&uname("o")).await;
    let slow = {
        let client = app.client.clone();
        let url = app.url("/toolkit/translate");
        let token = other.access.clone();
        let body = body.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("slow call")
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, h, b) = app
        .post("/toolkit/translate", Some(&u.access), Some(body.clone()))
        .await;
    assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);

    // Failures cost nothing; each is in the usage history as `failed`.
    let (_, _, me) = app.get("/user/me", Some(&u.access)).await;
    assert_eq!(me["credits"], balance);
    let usage = usage_rows(&app, uid).await;
    let statuses: Vec<&str> = usage.iter().map(|r| r.5.as_str()).collect();
    assert_eq!(statuses, ["ok", "failed", "failed", "failed"], "{usage:?}");
    assert!(
        usage[1..].iter().all(|r| r.4 == 0 && r.0 == "toolkit"),
        "{usage:?}"
    );
    let toolkit_rows = ledger_rows(&app, uid)
        .await
        .into_iter()
        .filter(|r| r.1 == "toolkit")
        .count();
    assert_eq!(toolkit_rows, 1);
    assert_balanced(&app, uid).await;
    assert_balanced(&app, other.uid()).await;
    drop(app);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_sqlite() {
    upstream_errors(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_mysql_redis() {
    upstream_errors(Backend::MySqlRedis).await;
}
