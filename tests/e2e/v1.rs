//! The OpenAI-compatible API (SPEC §9, §6 "LLM pool behaviour"), end to end against the fake
//! OpenAI upstream: a real OpenAI client library (`async-openai`), exact wire shapes, billing,
//! retries, timeouts, broken and abandoned streams, the pool's queue and per-user limits.
//!
//! Each test starts a fake upstream and a node configured with it (`OPENAI_BASE_URL`) over the
//! test's database; `gpt-4o-mini` is priced there at one credit per token plus 5 per request,
//! so that every charge is visible in the ledger.

use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
    ChatCompletionStreamOptions, CreateChatCompletionRequestArgs, FinishReason,
};
use futures::StreamExt;
use questech_fake_upstream::{self as fake_upstream, Behavior, FakeUpstream};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api_keys::create_key;
use crate::common::*;

const MODEL: &str = "gpt-4o-mini";
/// The per-request price set by [`node_with_upstream`].
const PER_REQUEST: i64 = 5;

/// A fake upstream and a node that uses it as its OpenAI provider; new users get 1000 credits.
pub(crate) async fn node_with_upstream(
    app: &TestApp,
    behavior: Behavior,
    env: &[(&str, &str)],
) -> (TestApp, FakeUpstream) {
    let up = fake_upstream::start(behavior).await.unwrap();
    let mut e: Vec<(&str, &str)> = vec![
        ("OPENAI_API_KEY", "sk-test"),
        ("OPENAI_BASE_URL", up.base_url.as_str()),
        ("LLM_BACKOFF_BASE_MS", "1"),
        ("SIGNUP_BONUS_CREDITS", "1000"),
    ];
    e.extend_from_slice(env);
    let node = app.spawn_node(&e).await;
    // The database was seeded by a node without OpenAI: enable the model here, at one credit a
    // token (prompt or completion) plus a per-request price, with a small max output.
    node.sql(
        "UPDATE models SET enabled = 1, prompt_per_1k = 1000, completion_per_1k = 1000, per_request = 5, max_output_tokens = 50 WHERE id = 'gpt-4o-mini'",
        &[],
    )
    .await;
    node.state.models.invalidate().await.unwrap();
    (node, up)
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

fn overhead_ms(h: &HeaderMap) -> f64 {
    let v = h
        .get("x-questech-overhead-ms")
        .unwrap_or_else(|| panic!("X-Questech-Overhead-Ms missing: {h:?}"))
        .to_str()
        .unwrap();
    let ms: f64 = v.parse().unwrap_or_else(|_| panic!("not a number: {v:?}"));
    assert!(ms.is_finite() && ms >= 0.0, "{ms}");
    ms
}

/// Posts a streaming request and reads the whole SSE body: status, headers, the `data:` payloads.
pub(crate) async fn post_stream(
    app: &TestApp,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, HeaderMap, Vec<String>) {
    let res = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    (status, headers, sse_datas(&text))
}

pub(crate) fn sse_datas(text: &str) -> Vec<String> {
    text.split("\n\n")
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with(':'))
        .map(|s| {
            s.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("every event is one `data:` line: {s:?} in {text}"))
                .to_owned()
        })
        .collect()
}

/// `reason` ledger rows of a user: `(delta, ref_id)`, oldest first.
pub(crate) async fn ledger_rows(
    app: &TestApp,
    uid: i64,
    reason: &str,
) -> Vec<(i64, Option<String>)> {
    sqlx::query_as(
        "SELECT delta, ref_id FROM credit_ledger WHERE user_id = ? AND reason = ? ORDER BY id",
    )
    .bind(uid)
    .bind(reason)
    .fetch_all(&app.state.db.write)
    .await
    .unwrap()
}

/// Usage rows of a user: `(kind, model, api_key_id, prompt, completion, credits, status)`.
type UsageTuple = (String, String, Option<i64>, i64, i64, i64, String);
async fn usage_rows(app: &TestApp, uid: i64) -> Vec<UsageTuple> {
    sqlx::query_as("SELECT kind, model, api_key_id, prompt_tokens, completion_tokens, credits, status FROM usage_logs WHERE user_id = ? ORDER BY id")
        .bind(uid)
        .fetch_all(&app.state.db.write)
        .await
        .unwrap()
}

/// Credits equal the ledger's sum, and nothing is left reserved.
pub(crate) async fn assert_books_balance(app: &TestApp, uid: i64) -> i64 {
    let (credits, sum) = questech::storage::ledger::balance_check(&app.state.db, uid)
        .await
        .unwrap();
    assert_eq!(credits, sum, "credits == sum(ledger)");
    assert!(credits >= 0);
    let reserved: i64 = sqlx::query_scalar("SELECT reserved FROM users WHERE id = ?")
        .bind(uid)
        .fetch_one(&app.state.db.write)
        .await
        .unwrap();
    assert_eq!(reserved, 0, "no reservation left open");
    let open: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM credit_reservations WHERE user_id = ?")
            .bind(uid)
            .fetch_one(&app.state.db.write)
            .await
            .unwrap();
    assert_eq!(open, 0);
    credits
}

/// Polls until the user has `n` `api` ledger rows (the call settles in the background).
async fn wait_api_rows(app: &TestApp, uid: i64, n: usize) -> Vec<(i64, Option<String>)> {
    let t = Instant::now();
    loop {
        let rows = ledger_rows(app, uid, "api").await;
        if rows.len() >= n {
            return rows;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no `api` ledger row after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn local_prompt_tokens(messages: &[(&str, &str)]) -> i64 {
    let msgs: Vec<questech_engine::llm::ChatMessage> = messages
        .iter()
        .map(|(r, c)| questech_engine::llm::ChatMessage {
            role: (*r).into(),
            content: (*c).into(),
        })
        .collect();
    questech_engine::tokens::count_messages(&msgs) as i64
}

fn sdk(app: &TestApp, key: &str) -> async_openai::Client<OpenAIConfig> {
    async_openai::Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", app.base))
            .with_api_key(key),
    )
}

both!(openai_sdk_chat_and_stream, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("sdk")).await;
    let (key_id, key, _) = create_key(&node, &u.access, "sdk").await;
    let client = sdk(&node, &key);

    let req = CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .messages([
            ChatCompletionRequestSystemMessageArgs::default()
                .content("You are terse.")
                .build()
                .unwrap()
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content("Say hello")
                .build()
                .unwrap()
                .into(),
        ])
        .max_completion_tokens(20u32)
        .temperature(0.5)
        .build()
        .unwrap();
    let res = client.chat().create(req).await.unwrap();
    assert!(res.id.starts_with("chatcmpl-"), "{}", res.id);
    assert_eq!(res.object, "chat.completion");
    assert_eq!(res.model, MODEL);
    assert_eq!(res.choices.len(), 1);
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some("Hello from fake upstream")
    );
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
    let usage = res.usage.clone().unwrap();
    // The provider's count (the fake: 10 per message, 1 per chunk).
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (20, 4, 24)
    );

    // What went upstream: the upstream model, our provider key (never the user's), the options.
    let sent = up.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].authorization.as_deref(), Some("Bearer sk-test"));
    let b = &sent[0].body;
    assert_eq!(b["model"], "gpt-4o-mini");
    assert_eq!(b["max_tokens"], 20);
    assert_eq!(b["temperature"], 0.5);
    assert_eq!(b["stream_options"]["include_usage"], true);
    assert_eq!(
        b["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(
        b["messages"][1],
        json!({"role": "user", "content": "Say hello"})
    );

    // Streaming through the SDK, with the usage chunk.
    let req = CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello")
            .build()
            .unwrap()
            .into()])
        .stream(true)
        .stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        })
        .build()
        .unwrap();
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut text = String::new();
    let mut finish = None;
    let mut last_usage = None;
    let mut ids = std::collections::HashSet::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.object, "chat.completion.chunk");
        ids.insert(chunk.id.clone());
        for c in &chunk.choices {
            if let Some(t) = &c.delta.content {
                text.push_str(t);
            }
            if c.finish_reason.is_some() {
                finish = c.finish_reason;
            }
        }
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty(), "the usage chunk has no choices");
            last_usage = Some(u);
        }
    }
    assert_eq!(text, "Hello from fake upstream");
    assert_eq!(finish, Some(FinishReason::Stop));
    assert_eq!(ids.len(), 1, "every chunk has the same id");
    let u2 = last_usage.expect("a usage chunk");
    assert_eq!((u2.prompt_tokens, u2.completion_tokens), (10, 4));

    // The models list through the SDK.
    let models = client.models().list().await.unwrap();
    assert!(models
        .data
        .iter()
        .any(|m| m.id == MODEL && m.owned_by == "openai"));

    // Billed: two `api` rows at the provider's count plus the per-request price, each with
    // a `v1` usage row naming the key.
    let rows = wait_api_rows(&node, u.uid(), 2).await;
    assert_eq!(rows[0].0, -(20 + 4 + PER_REQUEST));
    assert_eq!(rows[0].1.as_deref(), Some(res.id.as_str()));
    assert_eq!(rows[1].0, -(10 + 4 + PER_REQUEST));
    let usage = usage_rows(&node, u.uid()).await;
    assert_eq!(usage.len(), 2);
    let kid: i64 = key_id.parse().unwrap();
    assert_eq!(
        usage[0],
        ("v1".into(), MODEL.into(), Some(kid), 20, 4, 29, "ok".into())
    );
    assert_eq!(
        usage[1],
        ("v1".into(), MODEL.into(), Some(kid), 10, 4, 19, "ok".into())
    );
    assert_eq!(assert_books_balance(&node, u.uid()).await, 1000 - 29 - 19);
});

both!(non_stream_wire_shape_and_overhead, |app| async move {
    let (node, _up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("wire")).await;
    for path in ["/v1/chat/completions", "/chat/completions"] {
        let t = Instant::now();
        let (s, h, b) = node
            .post(path, Some(&u.access), Some(chat_body(false)))
            .await;
        let total = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
        assert_eq!(
            keys(&b),
            ["choices", "created", "id", "model", "object", "usage"],
            "{b}"
        );
        assert!(b["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(b["object"], "chat.completion");
        assert_eq!(b["model"], MODEL);
        let created = b["created"].as_i64().unwrap();
        assert!((created - chrono::Utc::now().timestamp()).abs() < 60);
        assert_eq!(
            b["choices"],
            json!([{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from fake upstream", "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }])
        );
        assert_eq!(
            b["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14})
        );
        let ms = overhead_ms(&h);
        assert!(ms <= total, "overhead {ms} ms within the total {total} ms");
        assert!(h[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
    }
});

both!(overhead_excludes_upstream_time, |app| async move {
    // A slow upstream: the engine's own time stays far below the wait.
    let (node, _up) = node_with_upstream(
        &app,
        Behavior {
            latency: Duration::from_millis(400),
            ..Default::default()
        },
        &[],
    )
    .await;
    let u = node.register(&uname("ovh")).await;
    let t = Instant::now();
    let (s, h, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(chat_body(false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(t.elapsed() >= Duration::from_millis(400));
    let ms = overhead_ms(&h);
    assert!(
        ms < 350.0,
        "overhead {ms} ms should not include the 400 ms upstream wait"
    );
    let (s, h, _) = post_stream(&node, "/v1/chat/completions", &u.access, chat_body(true)).await;
    assert_eq!(s, StatusCode::OK);
    let ms = overhead_ms(&h);
    assert!(
        ms < 350.0,
        "stream overhead {ms} ms is the time before the upstream request"
    );
    // Errors carry it too.
    let (s, h, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    overhead_ms(&h);
    let (s, h, b) = node.get("/v1/models", Some("bad")).await;
    assert_unauthorized(s, &h, &b);
    overhead_ms(&h);
});

both!(stream_wire_shape, |app| async move {
    let (node, _up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("sse")).await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let (s, h, datas) = post_stream(&node, "/v1/chat/completions", &u.access, body).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[reqwest::header::CONTENT_TYPE], "text/event-stream");
    overhead_ms(&h);
    // role chunk, 4 content chunks, finish chunk, usage chunk, [DONE]
    assert_eq!(datas.len(), 8, "{datas:?}");
    assert_eq!(datas.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = datas[..7]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(
            keys(c),
            ["choices", "created", "id", "model", "object", "usage"],
            "{c}"
        );
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], MODEL);
        assert_eq!(c["created"], chunks[0]["created"]);
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])
    );
    let words: Vec<&str> = chunks[1..5]
        .iter()
        .map(|c| {
            assert!(c["usage"].is_null());
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            c["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(words, ["Hello", " from", " fake", " upstream"]);
    assert_eq!(
        chunks[5]["choices"],
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(
        chunks[6]["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14})
    );

    // Without include_usage: no usage chunk and no `usage` key at all.
    let (s, _, datas) = post_stream(&node, "/chat/completions", &u.access, chat_body(true)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(datas.len(), 7, "{datas:?}");
    assert_eq!(datas.last().unwrap(), "[DONE]");
    for d in &datas[..6] {
        let c: Value = serde_json::from_str(d).unwrap();
        assert!(c.get("usage").is_none(), "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
    // Billed once per call, even without the client asking for usage.
    let rows = ledger_rows(&node, u.uid(), "api").await;
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [-19, -19]);
    assert_books_balance(&node, u.uid()).await;
});

both!(content_parts_roles_and_stop, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("parts")).await;
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]},
            {"role": "assistant", "content": null},
            {"role": "user", "content": "again"},
        ],
        "stop": "END",
        "top_p": 0.9,
        "n": 1,
        "max_tokens": 3,
        "user": "ignored-field",
        "seed": 7,
    });
    let (s, _, b) = node
        .post("/v1/chat/completions", Some(&u.access), Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // The fake answers one token per chunk up to max_tokens.
    assert_eq!(b["choices"][0]["message"]["content"], "Hello from fake");
    assert_eq!(b["choices"][0]["finish_reason"], "length");
    let sent = &up.requests()[0].body;
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        sent["messages"][1],
        json!({"role": "user", "content": "Hello, world"})
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(sent["stop"], json!(["END"]));
    assert_eq!(sent["top_p"], 0.9);
    assert_eq!(sent["max_tokens"], 3);
    // Asking for more than the model gives is capped at the model's maximum.
    let mut big = chat_body(false);
    big["max_completion_tokens"] = json!(100000);
    big["max_tokens"] = json!(1);
    let (s, _, _) = node
        .post("/v1/chat/completions", Some(&u.access), Some(big))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(up.requests()[1].body["max_tokens"], 50);
});

both!(validation_errors, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("valid")).await;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"model": MODEL, "messages": msgs, "n": 2}), "n"),
        (json!({"model": MODEL, "messages": []}), "messages"),
        (json!({"model": MODEL}), "messages"),
        (json!({"messages": msgs}), "model"),
        (json!({"model": "", "messages": msgs}), "model"),
        (
            json!({"model": MODEL, "messages": [{"role": "function", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": MODEL, "messages": [{"content": "x"}]}),
            "role",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user"}]}),
            "messages[0].content",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": MODEL, "messages": msgs, "temperature": 3}),
            "temperature",
        ),
        (
            json!({"model": MODEL, "messages": msgs, "top_p": -0.1}),
            "top_p",
        ),
        (
            json!({"model": MODEL, "messages": msgs, "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"model": MODEL, "messages": msgs, "max_completion_tokens": -5}),
            "max_completion_tokens",
        ),
        (
            json!({"model": MODEL, "messages": msgs, "max_tokens": "many"}),
            "max_tokens",
        ),
        (
            json!({"model": MODEL, "messages": msgs, "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (json!({"model": MODEL, "messages": msgs, "stop": 5}), "stop"),
        (
            json!({"model": MODEL, "messages": msgs, "stream": "yes"}),
            "stream",
        ),
    ];
    for (body, field) in cases {
        let (s, h, b) = node
            .post("/v1/chat/completions", Some(&u.access), Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} → {b}");
        assert_invalid(s, &b, field);
        overhead_ms(&h);
    }
    // Not JSON at all.
    let req = node
        .client
        .post(node.url("/v1/chat/completions"))
        .bearer_auth(&u.access)
        .header("content-type", "application/json")
        .body("{not json");
    let (s, _, b) = node.send(req).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    // Unknown, and disabled, models.
    for m in ["no-such-model", "deepseek-chat"] {
        let (s, _, b) = node
            .post(
                "/v1/chat/completions",
                Some(&u.access),
                Some(json!({"model": m, "messages": msgs})),
            )
            .await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    }
    assert_eq!(up.request_count(), 0, "nothing went upstream");
    assert!(ledger_rows(&node, u.uid(), "api").await.is_empty());
    assert!(usage_rows(&node, u.uid()).await.is_empty());
    assert_books_balance(&node, u.uid()).await;
});

both!(insufficient_credits_sends_nothing, |app| async move {
    let (node, up) =
        node_with_upstream(&app, Behavior::default(), &[("SIGNUP_BONUS_CREDITS", "20")]).await;
    let u = node.register(&uname("poor")).await;
    // Reserving prompt + 50 max output + 5 exceeds 20 credits.
    for stream in [false, true] {
        let (s, h, b) = node
            .post(
                "/v1/chat/completions",
                Some(&u.access),
                Some(chat_body(stream)),
            )
            .await;
        assert_error(s, &b, StatusCode::PAYMENT_REQUIRED, "insufficient_credits");
        overhead_ms(&h);
    }
    assert_eq!(up.request_count(), 0, "nothing was sent upstream");
    assert_eq!(assert_books_balance(&node, u.uid()).await, 20);
    assert!(usage_rows(&node, u.uid()).await.is_empty());
    // A smaller max_tokens fits: reserved prompt + 2 + 5, charged 10 + 2 + 5.
    let mut body = chat_body(false);
    body["max_tokens"] = json!(2);
    let (s, _, b) = node
        .post("/v1/chat/completions", Some(&u.access), Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "Hello from");
    assert_eq!(assert_books_balance(&node, u.uid()).await, 20 - 17);
});

both!(retries_5xx_then_succeeds, |app| async move {
    let (node, up) = node_with_upstream(
        &app,
        Behavior {
            fail_first: 2,
            fail_status: 503,
            ..Default::default()
        },
        &[],
    )
    .await;
    let u = node.register(&uname("retry")).await;
    let (s, _, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(chat_body(false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["choices"][0]["message"]["content"],
        "Hello from fake upstream"
    );
    assert_eq!(up.request_count(), 3, "two failures, then the answer");
    // Charged once.
    assert_eq!(ledger_rows(&node, u.uid(), "api").await.len(), 1);
    assert_books_balance(&node, u.uid()).await;
    // The same before the first byte of a stream.
    up.set_behavior(Behavior {
        fail_first: 1,
        fail_status: 500,
        ..Default::default()
    });
    let (s, _, datas) =
        post_stream(&node, "/v1/chat/completions", &u.access, chat_body(true)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(datas.last().unwrap(), "[DONE]");
    assert!(!datas.iter().any(|d| d.contains("\"error\"")), "{datas:?}");
    assert_eq!(up.request_count(), 5);
});

both!(persistent_500_is_502_and_free, |app| async move {
    let (node, up) = node_with_upstream(
        &app,
        Behavior {
            fail_always: Some(500),
            ..Default::default()
        },
        &[],
    )
    .await;
    let u = node.register(&uname("fail")).await;
    let (s, h, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(chat_body(false)),
        )
        .await;
    let msg = assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert!(
        !msg.contains("fake upstream") && !msg.contains("500"),
        "the provider's status and message stay in the logs: {msg}"
    );
    overhead_ms(&h);
    assert_eq!(up.request_count(), 3, "tried, then retried twice");
    // A stream that fails before its first byte is a plain HTTP error as well.
    let (s, _, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(chat_body(true)),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    // Nothing charged; both calls logged as failed.
    assert!(ledger_rows(&node, u.uid(), "api").await.is_empty());
    let usage = usage_rows(&node, u.uid()).await;
    assert_eq!(usage.len(), 2);
    for r in &usage {
        assert_eq!((r.5, r.6.as_str()), (0, "failed"), "{r:?}");
    }
    assert_eq!(assert_books_balance(&node, u.uid()).await, 1000);
});

both!(hang_is_504, |app| async move {
    let (node, up) = node_with_upstream(
        &app,
        Behavior {
            hang: true,
            ..Default::default()
        },
        &[
            ("LLM_FIRST_TOKEN_TIMEOUT_SECS", "1"),
            ("LLM_MAX_RETRIES", "0"),
        ],
    )
    .await;
    let u = node.register(&uname("hang")).await;
    let t = Instant::now();
    let (s, h, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(chat_body(true)),
        )
        .await;
    assert_error(s, &b, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert!(t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(10));
    overhead_ms(&h);
    assert_eq!(up.request_count(), 1);
    // Headers then silence: the same first-token timeout.
    up.set_behavior(Behavior {
        hang_after_headers: true,
        ..Default::default()
    });
    let (s, _, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(chat_body(false)),
        )
        .await;
    assert_error(s, &b, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert!(ledger_rows(&node, u.uid(), "api").await.is_empty());
    assert_eq!(assert_books_balance(&node, u.uid()).await, 1000);
});

both!(stream_drop_after_two_chunks, |app| async move {
    let (node, up) = node_with_upstream(
        &app,
        Behavior {
            drop_after: Some(2),
            ..Default::default()
        },
        &[],
    )
    .await;
    let u = node.register(&uname("drop")).await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let (s, _, datas) = post_stream(&node, "/v1/chat/completions", &u.access, body).await;
    assert_eq!(s, StatusCode::OK, "the stream had begun");
    // role chunk, "Hello", " from", the error event, [DONE].
    assert_eq!(datas.len(), 5, "{datas:?}");
    let content: String = datas[1..3]
        .iter()
        .map(|d| {
            let c: Value = serde_json::from_str(d).unwrap();
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(content, "Hello from");
    let err: Value = serde_json::from_str(&datas[3]).unwrap();
    assert_error(
        StatusCode::BAD_GATEWAY,
        &err,
        StatusCode::BAD_GATEWAY,
        "upstream_error",
    );
    assert_eq!(datas[4], "[DONE]");
    assert_eq!(up.request_count(), 1, "no retry once content was delivered");

    // Charged the prompt (counted locally: the provider's usage never came) and the two
    // delivered tokens, without the per-request price.
    let prompt = local_prompt_tokens(&[("user", "Say hello")]);
    let delivered = questech_engine::tokens::count("Hello from") as i64;
    let rows = ledger_rows(&node, u.uid(), "api").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, -(prompt + delivered));
    assert!(-rows[0].0 < prompt + 50 + PER_REQUEST);
    let usage = usage_rows(&node, u.uid()).await;
    assert_eq!(usage[0].3, prompt);
    assert_eq!(usage[0].4, delivered);
    assert_eq!(usage[0].6, "failed");
    assert_books_balance(&node, u.uid()).await;

    // Without streaming the client had nothing yet: a plain 502.
    let (s, _, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(chat_body(false)),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
});

both!(
    client_disconnect_mid_stream_is_still_billed,
    |app| async move {
        let (node, up) = node_with_upstream(
            &app,
            Behavior {
                chunks: 6,
                chunk_gap: Duration::from_millis(200),
                ..Default::default()
            },
            &[],
        )
        .await;
        let u = node.register(&uname("gone")).await;
        let (_, key, _) = create_key(&node, &u.access, "k").await;
        let res = node
            .client
            .post(node.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body(true))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut body = res.bytes_stream();
        // Read until the first content arrives, then go away.
        let mut seen = String::new();
        while !seen.contains("Hello") {
            let chunk = body.next().await.unwrap().unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        drop(body);
        assert!(
            ledger_rows(&node, u.uid(), "api").await.is_empty(),
            "not settled before the upstream ends"
        );
        // The upstream is read to its end and billed by its own count, per-request price included.
        let rows = wait_api_rows(&node, u.uid(), 1).await;
        assert_eq!(rows[0].0, -(10 + 6 + PER_REQUEST));
        let usage = usage_rows(&node, u.uid()).await;
        assert_eq!((usage[0].3, usage[0].4, usage[0].6.as_str()), (10, 6, "ok"));
        assert_eq!(up.request_count(), 1);
        assert_books_balance(&node, u.uid()).await;
    }
);

both!(pool_full_is_503, |app| async move {
    let (node, up) = node_with_upstream(
        &app,
        Behavior {
            latency: Duration::from_millis(1500),
            ..Default::default()
        },
        &[("LLM_MAX_CONCURRENCY", "1"), ("LLM_QUEUE_CAPACITY", "0")],
    )
    .await;
    let u = node.register(&uname("full")).await;
    let first = tokio::spawn({
        let req = node
            .client
            .post(node.url("/v1/chat/completions"))
            .bearer_auth(&u.access)
            .json(&chat_body(false));
        async move { req.send().await.unwrap().status() }
    });
    let t = Instant::now();
    while up.request_count() == 0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, h, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(chat_body(true)),
        )
        .await;
    assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    let retry: u64 = h[reqwest::header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    overhead_ms(&h);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(
        up.request_count(),
        1,
        "the refused call never went upstream"
    );
    // Only the first call is charged; the refused one is logged as failed and free.
    assert_eq!(ledger_rows(&node, u.uid(), "api").await.len(), 1);
    let usage = usage_rows(&node, u.uid()).await;
    assert_eq!(usage.len(), 2);
    assert!(usage.iter().any(|r| r.6 == "failed" && r.5 == 0));
    assert_books_balance(&node, u.uid()).await;
});

both!(per_user_rate_limit, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[("USER_RPM", "2")]).await;
    // Three calls within one clock minute (the limiter's window).
    let sec = chrono::Utc::now().timestamp() % 60;
    if sec > 50 {
        tokio::time::sleep(Duration::from_secs((61 - sec) as u64)).await;
    }
    let u = node.register(&uname("rpm")).await;
    for _ in 0..2 {
        let (s, _, b) = node
            .post(
                "/v1/chat/completions",
                Some(&u.access),
                Some(chat_body(false)),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (s, h, b) = node
        .post(
            "/v1/chat/completions",
            Some(&u.access),
            Some(chat_body(false)),
        )
        .await;
    assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = h[reqwest::header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    overhead_ms(&h);
    assert_eq!(up.request_count(), 2);
    // Another user has their own budget.
    let other = node.register(&uname("rpm")).await;
    let (s, _, _) = node
        .post(
            "/v1/chat/completions",
            Some(&other.access),
            Some(chat_body(false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // An admin is unlimited.
    let admin = node.make_admin(&other.username).await;
    for _ in 0..3 {
        let (s, _, b) = node
            .post(
                "/v1/chat/completions",
                Some(&admin.access),
                Some(chat_body(false)),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    assert_books_balance(&node, u.uid()).await;
});

both!(revoked_key_and_key_elsewhere, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("rvk")).await;
    let (id, key, _) = create_key(&node, &u.access, "k").await;
    let (s, _, b) = node
        .post("/v1/chat/completions", Some(&key), Some(chat_body(false)))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, h, b) = node.get("/user/me", Some(&key)).await;
    assert_unauthorized(s, &h, &b);
    let (s, _, _) = node
        .delete(&format!("/user/api-keys/{id}"), Some(&u.access))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for stream in [false, true] {
        let (s, h, b) = node
            .post("/v1/chat/completions", Some(&key), Some(chat_body(stream)))
            .await;
        assert_unauthorized(s, &h, &b);
        overhead_ms(&h);
    }
    assert_eq!(up.request_count(), 1);
});

both!(models_listing, |app| async move {
    let (node, _up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let u = node.register(&uname("mdl")).await;
    let (_, key, _) = create_key(&node, &u.access, "k").await;
    for token in [&u.access, &key] {
        let (s, h, b) = node.get("/v1/models", Some(token)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        overhead_ms(&h);
        assert_eq!(keys(&b), ["data", "object"]);
        assert_eq!(b["object"], "list");
        let data = b["data"].as_array().unwrap();
        for m in data {
            assert_eq!(
                keys(m),
                ["capabilities", "created", "id", "object", "owned_by"],
                "{m}"
            );
            assert_eq!(m["object"], "model");
            assert!(m["created"].as_i64().unwrap() > 1_600_000_000);
        }
        let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
        // Usable models only: echo (debug) and OpenAI here; DeepSeek is not configured.
        assert!(ids.contains(&MODEL) && ids.contains(&"echo"), "{ids:?}");
        assert!(!ids.contains(&"deepseek-chat"), "{ids:?}");
        let gpt = data.iter().find(|m| m["id"] == MODEL).unwrap();
        assert_eq!(gpt["owned_by"], "openai");
    }
    // A model the admin disables disappears from the list and cannot be called.
    node.sql(
        "UPDATE models SET enabled = 0 WHERE id = 'gpt-4o-mini'",
        &[],
    )
    .await;
    node.state.models.invalidate().await.unwrap();
    let (_, _, b) = node.get("/v1/models", Some(&key)).await;
    assert!(!b["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == MODEL));
    let (s, _, b) = node
        .post("/v1/chat/completions", Some(&key), Some(chat_body(false)))
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
});
