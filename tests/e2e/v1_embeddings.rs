//! `POST /v1/embeddings` (SPEC §9, issue 11): through the pool to the fake upstream, billed at
//! the model's prompt price (one ledger row `api`, one usage row `v1`), floats and base64, and
//! refusals (a chat model, malformed inputs) that reach nothing upstream and charge nothing.
//! The dev `echo` model embeds too.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api_keys::create_key;
use crate::common::*;
use crate::v1::{assert_books_balance, ledger_rows, node_with_upstream};
use questech_fake_upstream::Behavior;

pub(crate) const EMBED: &str = "text-embedding-3-small";

async fn embed(app: &TestApp, key: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, b) = app.post("/v1/embeddings", Some(key), Some(body)).await;
    (s, b)
}

/// Adds [`EMBED`] on the fake upstream (a credit per input token plus `per_request`); returns
/// the admin who did.
pub(crate) async fn add_embedding_model(node: &TestApp, per_request: i64) -> RegisteredUser {
    let admin_name = uname("embadm");
    node.register(&admin_name).await;
    let admin = node.make_admin(&admin_name).await;
    let (s, _, b) = node
        .post(
            "/admin/models",
            Some(&admin.access),
            Some(json!({"id": EMBED, "provider": "openai", "context_window": 8191,
                "price": {"prompt_per_1k": 1000, "completion_per_1k": 0, "per_request": per_request},
                "capabilities": {"embeddings": true}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    admin
}

both!(embeddings_are_billed_and_checked, |app| async move {
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    let admin = add_embedding_model(&node, 2).await;
    let (_, _, list) = node.get("/v1/models", Some(&admin.access)).await;
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == EMBED)
        .cloned();
    assert_eq!(
        listed.unwrap()["capabilities"]["embeddings"],
        true,
        "{list}"
    );

    let name = uname("emb");
    let u = node.register(&name).await;
    let (_, key, _) = create_key(&node, &u.access, "emb").await;

    // Two texts (the fake counts a token per word: 2 + 3), as floats.
    let before = up.requests().len();
    let (s, b) = embed(
        &node,
        &key,
        json!({"model": EMBED, "input": ["hello world", "three word text"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["object"], "list");
    assert_eq!(b["model"], EMBED);
    let data = b["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{b}");
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"].as_array().unwrap().len(), 8, "{d}");
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(
        b["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5}),
        "{b}"
    );
    assert_eq!(
        up.requests().len(),
        before,
        "embeddings are not chat requests"
    );

    // The same text again, base64-encoded: the same vector, in little-endian f32s.
    let (s, b64) = embed(&node, &key, json!({"model": EMBED, "input": "hello world", "encoding_format": "base64", "dimensions": 8})).await;
    assert_eq!(s, StatusCode::OK, "{b64}");
    let text = b64["data"][0]["embedding"].as_str().expect("base64 text");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    let floats: Vec<f64> = bytes
        .chunks(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let first: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(floats.len(), 8);
    for (a, b) in floats.iter().zip(&first) {
        assert!((a - b).abs() < 1e-6, "{floats:?} vs {first:?}");
    }

    // Billed at the model's prompt price: 5 + 2, then 2 + 2; one usage row each.
    let rows = ledger_rows(&node, u.uid(), "api").await;
    let deltas: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(deltas, vec![-7, -4], "{rows:?}");
    let usage: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT kind, model, prompt_tokens, completion_tokens, credits FROM usage_logs WHERE user_id = ? ORDER BY id",
    )
    .bind(u.uid())
    .fetch_all(&node.state.db.write)
    .await
    .unwrap();
    assert_eq!(
        usage,
        vec![
            ("v1".into(), EMBED.into(), 5, 0, 7),
            ("v1".into(), EMBED.into(), 2, 0, 4)
        ]
    );

    // Refused before anything goes upstream, charging nothing: a chat model, bad inputs.
    let (s, b) = embed(&node, &key, json!({"model": "gpt-4o-mini", "input": "hi"})).await;
    assert_invalid(s, &b, "model");
    for (input, field) in [
        (json!(""), "input"),
        (json!([]), "input"),
        (json!(["a", [1, 2]]), "input"),
        (json!(["a", ""]), "input[1]"),
        (json!({"text": "a"}), "input"),
    ] {
        let (s, b) = embed(&node, &key, json!({"model": EMBED, "input": input})).await;
        assert_invalid(s, &b, field);
    }
    let (s, b) = embed(
        &node,
        &key,
        json!({"model": EMBED, "input": "x", "encoding_format": "hex"}),
    )
    .await;
    assert_invalid(s, &b, "encoding_format");
    let (s, b) = embed(&node, &key, json!({"model": "no-such-model", "input": "x"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(ledger_rows(&node, u.uid(), "api").await.len(), 2);
    assert_eq!(assert_books_balance(&node, u.uid()).await, 1000 - 11);
});

both!(echo_embeds_in_development, |app| async move {
    let u = app.register(&uname("echoemb")).await;
    let before = assert_books_balance(&app, u.uid()).await;
    // Token arrays: one input of three tokens, and two inputs.
    let (s, b) = embed(
        &app,
        &u.access,
        json!({"model": "echo", "input": [1, 2, 3], "dimensions": 4}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"].as_array().unwrap().len(), 1);
    assert_eq!(b["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(b["usage"]["prompt_tokens"], 3);
    let (s, b) = embed(
        &app,
        &u.access,
        json!({"model": "echo", "input": [[1, 2], [3]]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    let norm: f64 = b["data"][1]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum();
    assert!((norm - 1.0).abs() < 1e-3, "a unit vector: {norm}");
    // Same input, same vector.
    let (_, again) = embed(
        &app,
        &u.access,
        json!({"model": "echo", "input": [[1, 2], [3]]}),
    )
    .await;
    assert_eq!(again["data"], b["data"]);
    let rows = ledger_rows(&app, u.uid(), "api").await;
    assert_eq!(rows.len(), 3, "one row per call: {rows:?}");
    assert_eq!(
        assert_books_balance(&app, u.uid()).await,
        before + rows.iter().map(|r| r.0).sum::<i64>()
    );
});
