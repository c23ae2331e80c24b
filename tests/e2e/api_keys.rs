//! API keys (SPEC §5): minted once, stored hashed, listed without the key, revoked at once on
//! every node, and accepted as bearer tokens on `/v1` only. Also `GET /user/usage`.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

/// Creates a key; asserts the 201 shape. Returns `(id, key, body)`.
pub async fn create_key(app: &TestApp, access: &str, name: &str) -> (String, String, Value) {
    let (s, _, b) = app
        .post("/user/api-keys", Some(access), Some(json!({"name": name})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(
        keys(&b),
        ["created_at", "id", "key", "name", "prefix"],
        "{b}"
    );
    let id = b["id"].as_str().expect("id is a string").to_owned();
    let key = b["key"].as_str().expect("key is a string").to_owned();
    (id, key, b)
}

async fn models_status(app: &TestApp, token: &str) -> StatusCode {
    app.get("/v1/models", Some(token)).await.0
}

both!(create_list_and_shapes, |app| async move {
    let u = app.register(&uname("keys")).await;
    let (id, key, b) = create_key(&app, &u.access, "  laptop  ").await;
    assert_eq!(b["name"], "laptop", "the name is trimmed");
    assert!(key.starts_with("qt-"), "{key}");
    assert!(key.len() >= 40, "a long random key: {key}");
    let prefix = b["prefix"].as_str().unwrap();
    assert!(prefix.starts_with("qt-") && key.starts_with(prefix) && prefix.len() < key.len());
    assert_rfc3339(&b["created_at"]);
    assert!(id.parse::<i64>().is_ok());

    // Stored hashed: the key itself is nowhere in the table.
    let hash: String = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = ?")
        .bind(id.parse::<i64>().unwrap())
        .fetch_one(&app.state.db.write)
        .await
        .unwrap();
    assert_eq!(hash, questech::auth::token_hash(&key));
    let found: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_keys WHERE key_hash = ? OR name = ? OR prefix = ?",
    )
    .bind(&key)
    .bind(&key)
    .bind(&key)
    .fetch_one(&app.state.db.write)
    .await
    .unwrap();
    assert_eq!(found, 0);

    let (id2, key2, _) = create_key(&app, &u.access, "ci").await;
    assert_ne!(key, key2);
    let (s, _, list) = app.get("/user/api-keys", Some(&u.access)).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(keys(&list), ["items"]);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    // Newest first, never the key.
    assert_eq!(items[0]["id"], id2.as_str());
    assert_eq!(items[1]["id"], id.as_str());
    for it in items {
        assert_eq!(
            keys(it),
            ["created_at", "id", "last_used_at", "name", "prefix"],
            "{it}"
        );
        assert!(it["last_used_at"].is_null());
    }
    assert!(!list.to_string().contains(&key));

    // Used once: last_used_at is recorded (written in the background).
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    let mut used = Value::Null;
    for _ in 0..50 {
        let (_, _, l) = app.get("/user/api-keys", Some(&u.access)).await;
        used = l["items"][1]["last_used_at"].clone();
        if !used.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_rfc3339(&used);

    // Another user sees none of them.
    let other = app.register(&uname("keys")).await;
    let (_, _, l) = app.get("/user/api-keys", Some(&other.access)).await;
    assert_eq!(l["items"], json!([]));
});

both!(create_validation, |app| async move {
    let u = app.register(&uname("keyv")).await;
    for bad in [
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(65)}),
        json!({"name": "a\u{0007}b"}),
    ] {
        let (s, _, b) = app.post("/user/api-keys", Some(&u.access), Some(bad)).await;
        assert_invalid(s, &b, "name");
    }
    let (s, _, b) = app
        .post("/user/api-keys", Some(&u.access), Some(json!({})))
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, h, b) = app
        .post("/user/api-keys", None, Some(json!({"name": "n"})))
        .await;
    assert_unauthorized(s, &h, &b);
    // Nothing was created.
    let (_, _, l) = app.get("/user/api-keys", Some(&u.access)).await;
    assert_eq!(l["items"], json!([]));
});

both!(keys_only_work_on_v1, |app| async move {
    let u = app.register(&uname("keyo")).await;
    let (_, key, _) = create_key(&app, &u.access, "sdk").await;
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    // The chat completion itself works with the key (built-in echo model).
    let (s, _, b) = app
        .post(
            "/v1/chat/completions",
            Some(&key),
            Some(json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["object"], "chat.completion");
    // Anywhere else a key is not a token.
    for path in [
        "/user/me",
        "/user/api-keys",
        "/user/usage",
        "/user/credits/ledger",
        "/chat/conversations",
    ] {
        let (s, h, b) = app.get(path, Some(&key)).await;
        assert_unauthorized(s, &h, &b);
    }
    let (s, h, b) = app
        .post("/user/api-keys", Some(&key), Some(json!({"name": "more"})))
        .await;
    assert_unauthorized(s, &h, &b);
    // A made-up key, and a key-shaped string, are refused on /v1.
    for bad in ["qt-nope", "qt-", &format!("{key}x")] {
        let (s, h, b) = app.get("/v1/models", Some(bad)).await;
        assert_unauthorized(s, &h, &b);
    }
    let (s, h, b) = app.get("/v1/models", None).await;
    assert_unauthorized(s, &h, &b);
});

both!(revoke_takes_effect_at_once, |app| async move {
    let u = app.register(&uname("keyr")).await;
    let (id, key, _) = create_key(&app, &u.access, "to-revoke").await;
    let (_, keep, _) = create_key(&app, &u.access, "to-keep").await;
    // Used first, so that the positive look-up is cached.
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);

    // Another user cannot revoke it, nor see that it exists.
    let other = app.register(&uname("keyr")).await;
    let (s, _, b) = app
        .delete(&format!("/user/api-keys/{id}"), Some(&other.access))
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);

    let (s, _, b) = app
        .delete(&format!("/user/api-keys/{id}"), Some(&u.access))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, h, b) = app.get("/v1/models", Some(&key)).await;
    assert_unauthorized(s, &h, &b);
    let (s, h, b) = app
        .post(
            "/v1/chat/completions",
            Some(&key),
            Some(json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_unauthorized(s, &h, &b);
    // The other key is untouched; the revoked one is gone from the list.
    assert_eq!(models_status(&app, &keep).await, StatusCode::OK);
    let (_, _, l) = app.get("/user/api-keys", Some(&u.access)).await;
    let names: Vec<&str> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["to-keep"]);

    // Revoking again, unknown ids, malformed ids: 404.
    for path in [
        format!("/user/api-keys/{id}"),
        "/user/api-keys/123".into(),
        "/user/api-keys/abc".into(),
    ] {
        let (s, _, b) = app.delete(&path, Some(&u.access)).await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    }
});

// Several nodes share Redis (the in-process cache is single-node by definition).
mysql_only!(revoke_applies_on_every_node, |app| async move {
    let u = app.register(&uname("keyn")).await;
    let (id, key, _) = create_key(&app, &u.access, "multi").await;
    let node2 = app.spawn_node(&[]).await;
    assert_eq!(models_status(&app, &key).await, StatusCode::OK);
    assert_eq!(models_status(&node2, &key).await, StatusCode::OK);
    let (s, _, _) = app
        .delete(&format!("/user/api-keys/{id}"), Some(&u.access))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // Both nodes refuse it on their very next request.
    assert_eq!(models_status(&app, &key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(models_status(&node2, &key).await, StatusCode::UNAUTHORIZED);
});

both!(disabled_owner_key_is_refused, |app| async move {
    let u = app.register(&uname("keyd")).await;
    let (_, key, _) = create_key(&app, &u.access, "d").await;
    app.sql("UPDATE users SET disabled = 1 WHERE id = ?", &[&u.id])
        .await;
    let (s, h, b) = app.get("/v1/models", Some(&key)).await;
    assert_unauthorized(s, &h, &b);
});

both!(admin_disable_refuses_cached_key_at_once, |app| async move {
    let u = app.register(&uname("keyad")).await;
    let (_, key, _) = create_key(&app, &u.access, "d").await;
    // Used once: the key's look-up is now cached.
    let (s, _, b) = app.get("/v1/models", Some(&key)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let boss = uname("keyboss");
    app.register(&boss).await;
    let admin = app.make_admin(&boss).await;
    let (s, _, b) = app
        .patch(
            &format!("/admin/users/{}", u.id),
            Some(&admin.access),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, h, b) = app.get("/v1/models", Some(&key)).await;
    assert_unauthorized(s, &h, &b);
});

both!(usage_history_lists_v1_calls, |app| async move {
    let u = app.register(&uname("usage")).await;
    let (key_id, key, _) = create_key(&app, &u.access, "u").await;
    let (s, _, b) = app.get("/user/usage", Some(&u.access)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b,
        json!({"items": [], "page": 1, "page_size": 20, "total": 0})
    );
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "count me"}]});
    let (s, _, r1) = app
        .post("/v1/chat/completions", Some(&key), Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{r1}");
    let (s, _, r2) = app
        .post("/v1/chat/completions", Some(&u.access), Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{r2}");

    let (s, _, b) = app.get("/user/usage?page_size=1", Some(&u.access)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["total"], 2);
    assert_eq!(b["page_size"], 1);
    let newest = &b["items"][0];
    assert_eq!(
        keys(newest),
        [
            "api_key_id",
            "completion_tokens",
            "created_at",
            "credits",
            "id",
            "kind",
            "latency_ms",
            "model",
            "prompt_tokens",
            "status"
        ]
    );
    // Newest first: the access-token call, without a key.
    assert_eq!(newest["kind"], "v1");
    assert!(newest["api_key_id"].is_null(), "{newest}");
    assert_eq!(newest["prompt_tokens"], r2["usage"]["prompt_tokens"]);
    let (_, _, b) = app
        .get("/user/usage?page=2&page_size=1", Some(&u.access))
        .await;
    let older = &b["items"][0];
    assert_eq!(older["kind"], "v1");
    assert_eq!(older["api_key_id"], key_id.as_str());
    assert_eq!(older["model"], "echo");
    assert_eq!(older["status"], "ok");
    assert_eq!(older["prompt_tokens"], r1["usage"]["prompt_tokens"]);
    assert_eq!(older["completion_tokens"], r1["usage"]["completion_tokens"]);
    assert!(older["latency_ms"].as_i64().unwrap() >= 0);
    assert!(older["id"].is_string());
    assert_rfc3339(&older["created_at"]);

    // Someone else's history is their own.
    let other = app.register(&uname("usage")).await;
    let (_, _, b) = app.get("/user/usage", Some(&other.access)).await;
    assert_eq!(b["total"], 0);
    let (s, _, b) = app.get("/user/usage?page=x", Some(&u.access)).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
});
