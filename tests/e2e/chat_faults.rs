//! The LLM pool under upstream faults (SPEC §6): retries, `Retry-After`, timeouts, broken
//! streams, a full queue, the circuit breaker and failover — against a fake OpenAI-compatible
//! upstream, through the real chat endpoints.

use std::time::{Duration, Instant};

use questech_fake_upstream::{start as start_fake, Behavior};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;
use crate::wsclient::*;

const MODEL: &str = "gpt-4o-mini";

fn breaker_state(app: &TestApp, provider: &str) -> String {
    let snap = app.state.engine.snapshot();
    let p = snap
        .llm
        .iter()
        .find(|p| p.provider == provider)
        .unwrap_or_else(|| panic!("provider {provider} in the snapshot"));
    serde_json::to_value(p.breaker)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Asserts nothing was charged: only the signup bonus in the ledger, balance 100.
async fn assert_nothing_charged(app: &TestApp, u: &RegisteredUser) {
    assert_eq!(ledger_rows(app, u.uid()).await, 1, "only the signup row");
    assert_eq!(assert_credit_invariants(app, u.uid()).await, 100);
}

async fn retried_then_ok(backend: Backend) {
    let b = Behavior {
        fail_first: 2,
        fail_status: 500,
        ..Default::default()
    };
    let Some((app, fake)) = with_fake(backend, b, &[]).await else {
        return;
    };
    let u = app.register(&uname("retry")).await;
    let conv = conv_id(&app, &u.access, MODEL).await;
    let (s, b) = say(&app, &u.access, &conv, "hi").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let m = &b["assistant_message"];
    assert_eq!(m["content"], "Hello from fake upstream");
    assert_eq!(m["status"], "complete");
    assert_eq!(
        fake.request_count(),
        3,
        "two failures, then the retry that worked"
    );
    for r in fake.requests() {
        assert_eq!(r.authorization.as_deref(), Some("Bearer sk-test"));
        assert_eq!(r.body["model"], "gpt-4o-mini");
        assert_eq!(r.body["stream"], true);
        assert_eq!(r.body["stream_options"]["include_usage"], true);
        assert_eq!(
            r.body["messages"],
            json!([{"role": "user", "content": "hi"}])
        );
    }
    // Billed on the provider's own usage (10 per message, 1 per chunk).
    assert_eq!(
        m["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 4}),
        "{m}"
    );
    let price = price(&app, MODEL).await;
    let charged = cost(price, 10, 4, true);
    assert_eq!(m["credits_charged"], charged);
    assert_eq!(b["credits"]["balance"], 100 - charged);
    assert_eq!(breaker_state(&app, "openai"), "closed");
    assert_credit_invariants(&app, u.uid()).await;
}
both_backends!(retried_500_then_ok, super::retried_then_ok);

async fn persistent_failure(backend: Backend) {
    let b = Behavior {
        fail_always: Some(500),
        ..Default::default()
    };
    let Some((app, fake)) = with_fake(backend, b, &[]).await else {
        return;
    };
    let u = app.register(&uname("fail")).await;
    let conv = conv_id(&app, &u.access, MODEL).await;
    // REST: 502 upstream_error, no internals leaked.
    let (s, b) = say(&app, &u.access, &conv, "hi").await;
    let msg = assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert!(!msg.contains("500") && !msg.contains("fake"), "{msg}");
    assert_eq!(fake.request_count(), 3, "first try + 2 retries");
    assert_nothing_charged(&app, &u).await;
    // The failed turn is on record, as failed.
    let msgs = all_messages(&app, &u.access, &conv).await;
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    assert_eq!(msgs[1]["status"], "failed");
    assert_eq!(msgs[1]["credits_charged"], 0);
    // WebSocket: chat.error.
    let mut ws = Ws::connect(&app, &u.access).await;
    ws.chat(&conv, "f-1", "again").await;
    let frames = ws.turn(&conv).await;
    assert_eq!(frames[0]["type"], "chat.ack", "{frames:#?}");
    let err = frames.last().unwrap();
    assert_eq!(err["type"], "chat.error", "{err}");
    assert_eq!(err["id"], "f-1");
    assert_eq!(err["error"]["code"], "upstream_error");
    assert!(err["error"].get("retry_after").is_none(), "{err}");
    assert!(
        !err["error"]["message"].as_str().unwrap().contains("500"),
        "{err}"
    );
    // SSE: chat.error as the last event.
    let res = app
        .client
        .post(app.url(&format!("/chat/conversations/{conv}/messages")))
        .bearer_auth(&u.access)
        .json(&json!({"content": "sse", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let events = parse_sse(&res.text().await.unwrap());
    assert_eq!(events.first().unwrap().0, "chat.ack");
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "chat.error", "{events:?}");
    assert_eq!(last["error"]["code"], "upstream_error");
    assert_nothing_charged(&app, &u).await;
    let msgs = all_messages(&app, &u.access, &conv).await;
    assert_eq!(msgs.len(), 6);
    assert_gap_free(&msgs);
}
both_backends!(persistent_500_is_upstream_error, super::persistent_failure);

async fn retry_after_honoured(backend: Backend) {
    let b = Behavior {
        fail_first: 1,
        fail_status: 429,
        retry_after: Some(1),
        ..Default::default()
    };
    let Some((app, fake)) = with_fake(backend, b, &[]).await else {
        return;
    };
    let u = app.register(&uname("later")).await;
    let conv = conv_id(&app, &u.access, MODEL).await;
    let t = Instant::now();
    let (s, b) = say(&app, &u.access, &conv, "hi").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "waited the upstream's Retry-After (1 s) though the backoff base is 1 ms: {:?}",
        t.elapsed()
    );
    assert_eq!(fake.request_count(), 2);
    assert_credit_invariants(&app, u.uid()).await;
}
both_backends!(
    upstream_retry_after_is_honoured,
    super::retry_after_honoured
);

async fn first_token_timeout(backend: Backend) {
    let b = Behavior {
        hang: true,
        ..Default::default()
    };
    let env = [
        ("LLM_FIRST_TOKEN_TIMEOUT_SECS", "1"),
        ("LLM_MAX_RETRIES", "0"),
    ];
    let Some((app, fake)) = with_fake(backend, b, &env).await else {
        return;
    };
    let u = app.register(&uname("slow")).await;
    let conv = conv_id(&app, &u.access, MODEL).await;
    let t = Instant::now();
    let (s, b) = say(&app, &u.access, &conv, "hi").await;
    assert_error(s, &b, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(fake.request_count(), 1);
    // Headers, then silence: the same.
    fake.update_behavior(|b| {
        b.hang = false;
        b.hang_after_headers = true;
    });
    let mut ws = Ws::connect(&app, &u.access).await;
    ws.chat(&conv, "t-1", "hello?").await;
    let frames = ws.turn(&conv).await;
    let err = frames.last().unwrap();
    assert_eq!(err["type"], "chat.error", "{frames:#?}");
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert_eq!(fake.request_count(), 2);
    assert_nothing_charged(&app, &u).await;
}
both_backends!(hang_is_upstream_timeout, super::first_token_timeout);

async fn stream_breaks(backend: Backend) {
    let b = Behavior {
        chunks: 6,
        drop_after: Some(2),
        chunk_gap: Duration::from_millis(30),
        ..Default::default()
    };
    let Some((app, fake)) = with_fake(backend, b, &[]).await else {
        return;
    };
    let u = app.register(&uname("broken")).await;
    let conv = conv_id(&app, &u.access, MODEL).await;
    let price = price(&app, MODEL).await;
    let mut ws = Ws::connect(&app, &u.access).await;
    ws.chat(&conv, "d-1", "talk").await;
    let frames = ws.turn(&conv).await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["chat.ack", "chat.delta", "chat.delta", "chat.error"],
        "{frames:#?}"
    );
    assert_eq!(deltas_text(&frames), "Hello from");
    assert_eq!(frames[3]["error"]["code"], "upstream_error");
    assert_eq!(
        fake.request_count(),
        1,
        "no retry once content was delivered"
    );
    let msgs = all_messages(&app, &u.access, &conv).await;
    assert_eq!(msgs.len(), 2);
    let m = &msgs[1];
    assert_eq!(m["status"], "failed");
    assert_eq!(m["content"], "Hello from", "partial text kept");
    let pt = m["usage"]["prompt_tokens"].as_i64().unwrap();
    let ct = m["usage"]["completion_tokens"].as_i64().unwrap();
    assert!(pt > 0, "{m}");
    assert_eq!(ct, 2, "the delivered tokens: {m}");
    let charged = cost(price, pt, ct, false);
    assert_eq!(
        m["credits_charged"], charged,
        "prompt + delivered, no per_request: {m}"
    );
    assert!(charged < cost(price, pt, ct, true));
    assert_eq!(assert_credit_invariants(&app, u.uid()).await, 100 - charged);
    // REST: a broken stream is a 502.
    let (s, b) = say(&app, &u.access, &conv, "again").await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert_gap_free(&all_messages(&app, &u.access, &conv).await);
    assert_credit_invariants(&app, u.uid()).await;
}
both_backends!(dropped_stream_fails_with_partial_text, super::stream_breaks);

async fn queue_full(backend: Backend) {
    let b = Behavior {
        chunks: 6,
        chunk_gap: Duration::from_millis(250),
        ..Default::default()
    };
    let env = [("LLM_MAX_CONCURRENCY", "1"), ("LLM_QUEUE_CAPACITY", "0")];
    let Some((app, fake)) = with_fake(backend, b, &env).await else {
        return;
    };
    let u = app.register(&uname("crowd")).await;
    let c1 = conv_id(&app, &u.access, MODEL).await;
    let c2 = conv_id(&app, &u.access, MODEL).await;
    let mut ws = Ws::connect(&app, &u.access).await;
    ws.chat(&c1, "q-1", "first").await;
    let (_, _) = ws.until(|f| f["type"] == "chat.delta").await;
    // The only slot is taken and there is no queue: refused at once.
    ws.chat(&c2, "q-2", "second").await;
    let (_, err) = ws
        .until(|f| f["type"] == "chat.error" && f["conversation_id"] == c2.as_str())
        .await;
    assert_eq!(err["error"]["code"], "overloaded", "{err}");
    assert!(
        err["error"]["retry_after"].as_u64().is_some_and(|r| r >= 1),
        "{err}"
    );
    let t = Instant::now();
    let (s, h, b) = app
        .post(
            &format!("/chat/conversations/{c2}/messages"),
            Some(&u.access),
            Some(json!({"content": "third"})),
        )
        .await;
    assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "at once: {:?}",
        t.elapsed()
    );
    let ra = h.get("retry-after").and_then(|v| v.to_str().ok());
    assert!(
        ra.is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n >= 1)),
        "Retry-After: {ra:?}"
    );
    let frames = ws.turn(&c1).await;
    assert_eq!(frames.last().unwrap()["type"], "chat.done");
    assert_eq!(
        fake.request_count(),
        1,
        "the refused turns never went upstream"
    );
    // With the slot free again, c2 works.
    let (s, b) = say(&app, &u.access, &c2, "fourth").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_gap_free(&all_messages(&app, &u.access, &c2).await);
    assert_credit_invariants(&app, u.uid()).await;
}
both_backends!(full_queue_is_overloaded, super::queue_full);

async fn breaker(backend: Backend) {
    let b = Behavior {
        fail_always: Some(500),
        ..Default::default()
    };
    let env = [
        ("LLM_BREAKER_FAILURES", "2"),
        ("LLM_BREAKER_COOLDOWN_SECS", "1"),
    ];
    let Some((app, fake)) = with_fake(backend, b, &env).await else {
        return;
    };
    let u = app.register(&uname("breaker")).await;
    let conv = conv_id(&app, &u.access, MODEL).await;
    let (s, b) = say(&app, &u.access, &conv, "one").await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert_eq!(
        fake.request_count(),
        2,
        "the breaker opened after 2 failures"
    );
    assert_eq!(breaker_state(&app, "openai"), "open");
    // A provider cut off is "degraded", still 200 (SPEC §12).
    let (s, _, h) = app.get("/health", None).await;
    assert_eq!(s, StatusCode::OK, "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["checks"]["llm"]["status"], "degraded", "{h}");
    // Open: fail fast, nothing reaches the upstream.
    for _ in 0..3 {
        let t = Instant::now();
        let (s, b) = say(&app, &u.access, &conv, "fast").await;
        assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    assert_eq!(fake.request_count(), 2, "request count stops growing");
    // After the cool-down one probe goes through; it fails, so the breaker opens again.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(breaker_state(&app, "openai"), "half_open");
    let (s, b) = say(&app, &u.access, &conv, "probe").await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert_eq!(fake.request_count(), 3, "exactly one probe");
    assert_eq!(breaker_state(&app, "openai"), "open");
    let (s, b) = say(&app, &u.access, &conv, "fast").await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert_eq!(fake.request_count(), 3);
    // The upstream heals; after the cool-down the probe succeeds and closes the breaker.
    fake.update_behavior(|b| b.fail_always = None);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (s, b) = say(&app, &u.access, &conv, "healed").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(fake.request_count(), 4);
    assert_eq!(breaker_state(&app, "openai"), "closed");
    let (s, _, h) = app.get("/health", None).await;
    assert_eq!(
        (s, h["status"].clone()),
        (StatusCode::OK, serde_json::json!("healthy")),
        "{h}"
    );
    let (s, b) = say(&app, &u.access, &conv, "and again").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(fake.request_count(), 5);
    assert_gap_free(&all_messages(&app, &u.access, &conv).await);
    assert_credit_invariants(&app, u.uid()).await;
}
both_backends!(circuit_breaker_opens_and_probes, super::breaker);

async fn failover(backend: Backend) {
    let primary_behavior = Behavior {
        fail_always: Some(503),
        ..Default::default()
    };
    let backup = start_fake(Behavior {
        reply_words: Some(vec!["From".into(), " the".into(), " backup".into()]),
        ..Default::default()
    })
    .await
    .unwrap();
    let env = [
        ("DEEPSEEK_API_KEY", "sk-deep"),
        ("DEEPSEEK_BASE_URL", backup.base_url.as_str()),
    ];
    let Some((app, primary)) = with_fake(backend, primary_behavior, &env).await else {
        return;
    };
    let admin_name = uname("fo_admin");
    app.register(&admin_name).await;
    let admin = app.make_admin(&admin_name).await;
    let (s, _, b) = app
        .patch(
            "/admin/models/gpt-4o-mini",
            Some(&admin.access),
            Some(json!({"fallbacks": ["deepseek-chat"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let u = app.register(&uname("failover")).await;
    let conv = conv_id(&app, &u.access, MODEL).await;
    let (s, b) = say(&app, &u.access, &conv, "anyone there?").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["assistant_message"]["content"], "From the backup");
    assert_eq!(b["assistant_message"]["status"], "complete");
    assert!(primary.request_count() >= 1, "the primary was tried first");
    assert_eq!(backup.request_count(), 1);
    let r = &backup.requests()[0];
    assert_eq!(r.authorization.as_deref(), Some("Bearer sk-deep"));
    assert_eq!(
        r.body["model"], "deepseek-chat",
        "the fallback's own model name"
    );
    assert_eq!(
        r.body["messages"],
        json!([{"role": "user", "content": "anyone there?"}])
    );
    // Both down: upstream_error, nothing charged for it.
    backup.update_behavior(|b| b.fail_always = Some(500));
    let before = ledger_rows(&app, u.uid()).await;
    let (s, b) = say(&app, &u.access, &conv, "still?").await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert_eq!(ledger_rows(&app, u.uid()).await, before);
    assert_gap_free(&all_messages(&app, &u.access, &conv).await);
    assert_credit_invariants(&app, u.uid()).await;
}
both_backends!(failover_to_fallback_provider, super::failover);
