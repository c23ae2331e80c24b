//! Stateful chat over REST and SSE (SPEC §7): conversations, history, sending (plain and
//! streamed), idempotency, validation, and billing by the model's price (§6).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::wsclient::*;

const CONV_KEYS: [&str; 7] = [
    "agent_id",
    "created_at",
    "id",
    "last_seq",
    "model",
    "title",
    "updated_at",
];

const MSG_KEYS: [&str; 12] = [
    "attachments",
    "client_msg_id",
    "content",
    "conversation_id",
    "created_at",
    "credits_charged",
    "id",
    "model",
    "role",
    "seq",
    "status",
    "usage",
];

fn assert_message_shape(m: &Value) {
    assert_eq!(keys(m), MSG_KEYS, "message fields: {m}");
    assert!(
        m["id"].as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
        "{m}"
    );
    assert!(m["conversation_id"].is_string(), "{m}");
    assert_eq!(
        keys(&m["usage"]),
        ["completion_tokens", "prompt_tokens"],
        "usage fields: {m}"
    );
    assert_rfc3339(&m["created_at"]);
}

async fn list_ids(app: &TestApp, token: &str, query: &str) -> (Vec<String>, Value) {
    let (s, _, b) = app
        .get(&format!("/chat/conversations{query}"), Some(token))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ids = b["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect();
    (ids, b)
}

both!(conversations_crud, |app| async move {
    let alice = app.register(&uname("alice")).await;
    let bob = app.register(&uname("bob")).await;
    let a = alice.access.as_str();

    let c1 = new_conv(&app, a, json!({"title": "first"})).await;
    assert_eq!(keys(&c1), CONV_KEYS, "conversation fields: {c1}");
    assert_eq!(c1["title"], "first");
    assert_eq!(c1["model"], "echo", "the default model in debug");
    assert_eq!(c1["last_seq"], 0);
    assert!(c1["agent_id"].is_null());
    assert_rfc3339(&c1["created_at"]);
    assert_rfc3339(&c1["updated_at"]);
    let id1 = c1["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(15)).await;
    let id2 = new_conv(&app, a, json!({"title": "second", "model": "echo"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(15)).await;
    let id3 = new_conv(&app, a, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Most recently updated first.
    let (ids, b) = list_ids(&app, a, "").await;
    assert_eq!(ids, [id3.clone(), id2.clone(), id1.clone()]);
    assert_eq!(b["total"], 3);
    assert_eq!(b["page"], 1);
    assert_eq!(b["page_size"], 20);

    // A rename moves it to the top.
    tokio::time::sleep(Duration::from_millis(15)).await;
    let (s, _, p) = app
        .patch(
            &format!("/chat/conversations/{id1}"),
            Some(a),
            Some(json!({"title": "renamed"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["title"], "renamed");
    assert_eq!(p["id"], id1.as_str());
    let (ids, _) = list_ids(&app, a, "").await;
    assert_eq!(ids, [id1.clone(), id3.clone(), id2.clone()]);
    // A sent message moves a conversation to the top too.
    tokio::time::sleep(Duration::from_millis(15)).await;
    let (s, b) = say(&app, a, &id2, "bump").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (ids, _) = list_ids(&app, a, "").await;
    assert_eq!(ids, [id2.clone(), id1.clone(), id3.clone()]);

    // Pagination.
    let (ids, b) = list_ids(&app, a, "?page=1&page_size=2").await;
    assert_eq!(ids, [id2.clone(), id1.clone()]);
    assert_eq!(
        (b["total"].clone(), b["page_size"].clone()),
        (json!(3), json!(2))
    );
    let (ids, b) = list_ids(&app, a, "?page=2&page_size=2").await;
    assert_eq!(ids, std::slice::from_ref(&id3));
    assert_eq!(b["page"], 2);
    let (ids, b) = list_ids(&app, a, "?page=3&page_size=2").await;
    assert!(ids.is_empty());
    assert_eq!(b["total"], 3);
    let (_, b) = list_ids(&app, a, "?page_size=1000").await;
    assert_eq!(b["page_size"], 100, "page_size is clamped to 100");

    // GET one.
    let (s, _, g) = app
        .get(&format!("/chat/conversations/{id2}"), Some(a))
        .await;
    assert_eq!(s, StatusCode::OK, "{g}");
    assert_eq!(g["last_seq"], 2);
    assert_eq!(g["title"], "second");

    // Another user's conversation is 404 for every verb (never 403).
    let bt = Some(bob.access.as_str());
    let path = format!("/chat/conversations/{id1}");
    let (s, _, b) = app.get(&path, bt).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app.patch(&path, bt, Some(json!({"title": "x"}))).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app.delete(&path, bt).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app.get(&format!("{path}/messages"), bt).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = say(&app, &bob.access, &id1, "hi").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (ids, b) = list_ids(&app, &bob.access, "").await;
    assert!(ids.is_empty());
    assert_eq!(b["total"], 0);
    // Unknown and malformed ids.
    let (s, _, b) = app.get("/chat/conversations/123456789", Some(a)).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app.get("/chat/conversations/not-an-id", Some(a)).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    // No token.
    let (s, h, b) = app.get("/chat/conversations", None).await;
    assert_unauthorized(s, &h, &b);

    // Validation of create and patch.
    let (s, _, b) = app
        .post(
            "/chat/conversations",
            Some(a),
            Some(json!({"model": "no-such-model"})),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    let (s, _, b) = app
        .post(
            "/chat/conversations",
            Some(a),
            Some(json!({"title": "t".repeat(256)})),
        )
        .await;
    assert_invalid(s, &b, "title");
    let (s, _, b) = app
        .patch(&path, Some(a), Some(json!({"model": "nope"})))
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    let (s, _, b) = app
        .patch(&path, Some(a), Some(json!({"title": "t".repeat(256)})))
        .await;
    assert_invalid(s, &b, "title");

    // Delete: 204, then gone everywhere.
    let path2 = format!("/chat/conversations/{id2}");
    let (s, _, b) = app.delete(&path2, Some(a)).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, _, b) = app.get(&path2, Some(a)).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app.get(&format!("{path2}/messages"), Some(a)).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app
        .patch(&path2, Some(a), Some(json!({"title": "x"})))
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = say(&app, a, &id2, "still there?").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app.delete(&path2, Some(a)).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (ids, b) = list_ids(&app, a, "").await;
    assert_eq!(ids, [id1.clone(), id3.clone()]);
    assert_eq!(b["total"], 2);
    let conv2: i64 = id2.parse().unwrap();
    assert!(
        !app.state.engine.runs_conversation(conv2),
        "a deleted conversation's actor stops"
    );
});

both!(send_and_history, |app| async move {
    let u = app.register(&uname("sender")).await;
    let t = u.access.as_str();
    let conv = conv_id(&app, t, "echo").await;
    let price = price(&app, "echo").await;

    let (s, b) = say(&app, t, &conv, "hello there world").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        keys(&b),
        ["assistant_message", "credits", "user_message"],
        "response fields: {b}"
    );
    assert_eq!(keys(&b["credits"]), ["balance", "charged"], "{b}");
    let um = &b["user_message"];
    let am = &b["assistant_message"];
    assert_message_shape(um);
    assert_message_shape(am);
    assert_eq!(um["seq"], 1);
    assert_eq!(um["role"], "user");
    assert_eq!(um["content"], "hello there world");
    assert_eq!(um["status"], "complete");
    assert_eq!(um["conversation_id"], conv.as_str());
    assert!(um["client_msg_id"].is_null());
    assert_eq!(am["seq"], 2);
    assert_eq!(am["role"], "assistant");
    assert_eq!(am["content"], "Echo: hello there world");
    assert_eq!(am["status"], "complete");
    assert_eq!(am["model"], "echo");
    assert_eq!(am["conversation_id"], conv.as_str());
    let pt = am["usage"]["prompt_tokens"].as_i64().unwrap();
    let ct = am["usage"]["completion_tokens"].as_i64().unwrap();
    assert!(pt > 0 && ct > 0, "usage counted: {am}");
    let charged = cost(price, pt, ct, true);
    assert!(charged > 0);
    assert_eq!(am["credits_charged"], charged, "the price formula: {b}");
    assert_eq!(b["credits"]["charged"], charged);
    assert_eq!(b["credits"]["balance"], 100 - charged);
    let (_, _, me) = app.get("/user/me", Some(t)).await;
    assert_eq!(me["credits"], 100 - charged);

    // The ledger row of the turn.
    let (_, _, l) = app.get("/user/credits/ledger", Some(t)).await;
    let row = &l["items"][0];
    assert_eq!(row["reason"], "chat", "{l}");
    assert_eq!(row["delta"], -charged);
    assert_eq!(row["balance_after"], 100 - charged);
    assert_eq!(l["total"], 2, "signup bonus + one chat row: {l}");

    // Two more turns; then the history in pages.
    for text in ["second one", "third one"] {
        let (s, b) = say(&app, t, &conv, text).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["assistant_message"]["content"], format!("Echo: {text}"));
    }
    let base = format!("/chat/conversations/{conv}/messages");
    let (s, _, b) = app.get(&base, Some(t)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(keys(&b), ["has_more", "items"]);
    let items = b["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert_eq!(b["has_more"], false);
    assert_gap_free(items);
    for (i, m) in items.iter().enumerate() {
        assert_message_shape(m);
        assert_eq!(m["role"], if i % 2 == 0 { "user" } else { "assistant" });
    }
    assert_eq!(items[0], *um, "stored user message == the answer's");
    assert_eq!(items[1], *am, "stored assistant message == the answer's");
    let seqs = |b: &Value| -> Vec<i64> {
        b["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect()
    };
    let (_, _, b) = app
        .get(&format!("{base}?after_seq=2&limit=2"), Some(t))
        .await;
    assert_eq!(seqs(&b), [3, 4]);
    assert_eq!(b["has_more"], true);
    let (_, _, b) = app
        .get(&format!("{base}?after_seq=4&limit=2"), Some(t))
        .await;
    assert_eq!(seqs(&b), [5, 6]);
    assert_eq!(b["has_more"], false);
    let (_, _, b) = app.get(&format!("{base}?after_seq=6"), Some(t)).await;
    assert_eq!(seqs(&b), Vec::<i64>::new());
    assert_eq!(b["has_more"], false);
    let (_, _, b) = app.get(&format!("{base}?limit=1"), Some(t)).await;
    assert_eq!(seqs(&b), [1]);
    assert_eq!(b["has_more"], true);
    let (s, _, b) = app.get(&format!("{base}?limit=abc"), Some(t)).await;
    assert_invalid(s, &b, "limit");
    let (_, _, c) = app
        .get(&format!("/chat/conversations/{conv}"), Some(t))
        .await;
    assert_eq!(c["last_seq"], 6);
    assert_credit_invariants(&app, u.uid()).await;
});

both!(idempotent_on_client_msg_id, |app| async move {
    let u = app.register(&uname("idem")).await;
    let t = u.access.as_str();
    let conv = conv_id(&app, t, "echo").await;
    let path = format!("/chat/conversations/{conv}/messages");
    let body = json!({"content": "only once", "client_msg_id": "msg-1"});
    let (s, _, first) = app.post(&path, Some(t), Some(body.clone())).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["user_message"]["client_msg_id"], "msg-1");
    let rows = ledger_rows(&app, u.uid()).await;
    let balance = first["credits"]["balance"].clone();

    for _ in 0..2 {
        let (s, _, again) = app.post(&path, Some(t), Some(body.clone())).await;
        assert_eq!(s, StatusCode::OK, "{again}");
        assert_eq!(
            again["user_message"], first["user_message"],
            "same user message"
        );
        assert_eq!(
            again["assistant_message"], first["assistant_message"],
            "same assistant message"
        );
        assert_eq!(
            again["credits"]["balance"], balance,
            "nothing charged again"
        );
    }
    // Also when streamed: the same event stream the turn gave, replayed from what was stored.
    let body = json!({"content": "only once", "client_msg_id": "msg-1", "stream": true});
    let text = sse_turn(&app, t, &conv, body, false).await;
    let events = parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["chat.ack", "chat.delta", "chat.done"], "{text}");
    assert_eq!(events[0].1["id"], "msg-1");
    assert_eq!(events[0].1["message"], first["user_message"]);
    assert_eq!(
        events[1].1["delta"], first["assistant_message"]["content"],
        "{text}"
    );
    assert_eq!(events[1].1["message_id"], first["assistant_message"]["id"]);
    assert_eq!(events[2].1["message"], first["assistant_message"]);
    assert_eq!(
        events[2].1["credits"]["charged"],
        first["credits"]["charged"]
    );
    assert_eq!(events[2].1["credits"]["balance"], balance);
    assert_eq!(ledger_rows(&app, u.uid()).await, rows, "no new ledger row");
    let msgs = all_messages(&app, t, &conv).await;
    assert_eq!(msgs.len(), 2, "no new messages: {msgs:#?}");
    let (_, _, me) = app.get("/user/me", Some(t)).await;
    assert_eq!(me["credits"], balance);

    // A new id is a new turn.
    let (s, _, b) = app
        .post(
            &path,
            Some(t),
            Some(json!({"content": "only once", "client_msg_id": "msg-2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["user_message"]["seq"], 3);
    assert_eq!(ledger_rows(&app, u.uid()).await, rows + 1);
    assert_credit_invariants(&app, u.uid()).await;
});

async fn sse_turn(app: &TestApp, token: &str, conv: &str, body: Value, accept: bool) -> String {
    let mut req = app
        .client
        .post(app.url(&format!("/chat/conversations/{conv}/messages")))
        .bearer_auth(token)
        .json(&body);
    if accept {
        req = req.header("accept", "text/event-stream");
    }
    let res = req.send().await.expect("send");
    assert_eq!(res.status(), StatusCode::OK);
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("text/event-stream"), "content-type: {ct}");
    res.text().await.expect("SSE body")
}

both!(sse_stream, |app| async move {
    let u = app.register(&uname("sse")).await;
    let t = u.access.as_str();
    let conv = conv_id(&app, t, "echo").await;
    let price = price(&app, "echo").await;
    let content = "stream me these several words please";
    let cases = [
        (
            json!({"content": content, "stream": true, "client_msg_id": "s-1"}),
            false,
        ),
        (json!({"content": content}), true),
    ];
    let mut balance = 100;
    for (turn, (body, accept)) in cases.into_iter().enumerate() {
        let text = sse_turn(&app, t, &conv, body.clone(), accept).await;
        let events = parse_sse(&text);
        let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(names.first(), Some(&"chat.ack"), "{text}");
        assert_eq!(names.last(), Some(&"chat.done"), "{text}");
        assert!(
            names[1..names.len() - 1].iter().all(|n| *n == "chat.delta"),
            "only deltas between ack and done: {names:?}"
        );
        assert!(names.len() >= 2 + 6, "one delta per word: {names:?}");
        let ack = &events[0].1;
        assert_eq!(ack["conversation_id"], conv.as_str());
        assert_eq!(ack["id"], body["client_msg_id"]);
        assert_eq!(ack["message"]["seq"], turn as i64 * 2 + 1);
        assert_eq!(ack["message"]["role"], "user");
        assert_eq!(ack["message"]["content"], content);
        let frames: Vec<Value> = events.iter().map(|(_, v)| v.clone()).collect();
        let done = frames.last().unwrap();
        let msg = &done["message"];
        for d in &frames[1..frames.len() - 1] {
            assert_eq!(d["conversation_id"], conv.as_str());
            assert_eq!(d["message_id"], msg["id"], "delta message_id: {d}");
        }
        let joined = deltas_text(&frames);
        assert_eq!(joined, format!("Echo: {content}"));
        assert_eq!(
            msg["content"], joined,
            "concatenated deltas == final content"
        );
        assert_eq!(msg["seq"], turn as i64 * 2 + 2);
        assert_eq!(msg["status"], "complete");
        assert_eq!(done["conversation_id"], conv.as_str());
        let charged = cost(
            price,
            msg["usage"]["prompt_tokens"].as_i64().unwrap(),
            msg["usage"]["completion_tokens"].as_i64().unwrap(),
            true,
        );
        assert_eq!(msg["credits_charged"], charged);
        assert_eq!(done["credits"]["charged"], charged);
        balance -= charged;
        assert_eq!(done["credits"]["balance"], balance);
    }
    // The first turn again (same client_msg_id): its events replayed, nothing charged.
    let again = json!({"content": content, "stream": true, "client_msg_id": "s-1"});
    let events = parse_sse(&sse_turn(&app, t, &conv, again, false).await);
    let frames: Vec<Value> = events.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("chat.ack"));
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("chat.done"));
    assert_eq!(frames[0]["message"]["seq"], 1);
    assert_eq!(deltas_text(&frames), format!("Echo: {content}"));
    assert_eq!(frames.last().unwrap()["message"]["seq"], 2);
    assert_eq!(frames.last().unwrap()["credits"]["balance"], balance);
    let msgs = all_messages(&app, t, &conv).await;
    assert_eq!(msgs.len(), 4);
    assert_gap_free(&msgs);
    assert_eq!(assert_credit_invariants(&app, u.uid()).await, balance);
});

both!(send_validation_and_models, |app| async move {
    let u = app.register(&uname("valid")).await;
    let t = u.access.as_str();
    let conv = conv_id(&app, t, "echo").await;
    let path = format!("/chat/conversations/{conv}/messages");
    let post = |body: Value| {
        let path = path.clone();
        let app = &app;
        async move { app.post(&path, Some(t), Some(body)).await }
    };
    let (s, _, b) = post(json!({"content": ""})).await;
    assert_invalid(s, &b, "content");
    let (s, _, b) = post(json!({"content": "  \n\t "})).await;
    assert_invalid(s, &b, "content");
    let (s, _, b) = post(json!({"content": "x".repeat(32_001)})).await;
    assert_invalid(s, &b, "content");
    let (s, _, b) = post(json!({"content": "我".repeat(32_001)})).await;
    assert_invalid(s, &b, "content");
    let (s, _, b) = post(json!({})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, _, b) = post(json!({"content": 5})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, _, b) = post(json!({"content": "hi", "client_msg_id": ""})).await;
    assert_invalid(s, &b, "client_msg_id");
    let (s, _, b) = post(json!({"content": "hi", "client_msg_id": "c".repeat(129)})).await;
    assert_invalid(s, &b, "client_msg_id");
    let (s, _, b) = post(json!({"content": "hi", "model": "no-such-model"})).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    // gpt-4o-mini exists but its provider is not configured here.
    let (s, _, b) = post(json!({"content": "hi", "model": "gpt-4o-mini"})).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    assert!(
        all_messages(&app, t, &conv).await.is_empty(),
        "nothing stored"
    );
    assert_eq!(ledger_rows(&app, u.uid()).await, 1, "nothing charged");

    // Exactly 32 000 characters is fine.
    let long = "word ".repeat(6_400);
    let (s, _, b) = post(json!({"content": long})).await;
    assert_eq!(s, StatusCode::OK, "32000 chars: {}", b.to_string().len());
    assert_eq!(b["user_message"]["content"].as_str().unwrap().len(), 32_000);

    // An admin disables the model: the next turn of a conversation using it is refused.
    let admin_name = uname("admin");
    app.register(&admin_name).await;
    let admin = app.make_admin(&admin_name).await;
    let (s, _, b) = app
        .patch(
            "/admin/models/echo",
            Some(&admin.access),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, b) = post(json!({"content": "after disable"})).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    let (s, _, b) = app
        .post(
            "/chat/conversations",
            Some(t),
            Some(json!({"model": "echo"})),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    let msgs = all_messages(&app, t, &conv).await;
    assert_eq!(msgs.len(), 2, "the refused turn stored nothing: {msgs:#?}");
    // Enabled again: it works, seq continues without a gap.
    let (s, _, b) = app
        .patch(
            "/admin/models/echo",
            Some(&admin.access),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, b) = post(json!({"content": "enabled again"})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["user_message"]["seq"], 3);
    assert_eq!(b["assistant_message"]["seq"], 4);
    // Deleted model: model_not_found too.
    let (s, _, b) = app.delete("/admin/models/echo", Some(&admin.access)).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, _, b) = post(json!({"content": "after delete"})).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    assert_gap_free(&all_messages(&app, t, &conv).await);
    assert_credit_invariants(&app, u.uid()).await;
});
