#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use axum::http::header;
use futures::StreamExt;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

async fn post(up: &FakeUpstream, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", up.base_url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn streams_openai_chunks() {
    let up = start(Behavior::default()).await.unwrap();
    let resp = post(&up, chat_body(true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let text = resp.text().await.unwrap();
    let datas: Vec<&str> = text
        .split("\n\n")
        .filter(|s| !s.is_empty())
        .map(|s| s.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(datas.len(), 1 + 4 + 1 + 1 + 1, "{text}");
    assert_eq!(*datas.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "m");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(c["created"].as_u64().is_some());
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant"})
    );
    let content: String = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, "Hello from fake upstream");
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"]["prompt_tokens"], 10);
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);
    up.shutdown().await;
}

#[tokio::test]
async fn whole_completion_when_not_streaming() {
    let up = start(Behavior {
        chunks: 6,
        ..Default::default()
    })
    .await
    .unwrap();
    let v: Value = post(&up, chat_body(false)).await.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from fake upstreamHello from"
    );
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["usage"]["total_tokens"], 16);
    up.shutdown().await;
}

#[tokio::test]
async fn no_usage_chunk_unless_asked_and_max_tokens_cut() {
    let up = start(Behavior::default()).await.unwrap();
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": false});
    body["max_tokens"] = json!(2);
    let text = post(&up, body).await.text().await.unwrap();
    assert!(!text.contains("\"usage\""), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(!text.contains(" fake"), "{text}");
    up.shutdown().await;
}

#[tokio::test]
async fn fail_first_then_succeed_and_runtime_change() {
    let up = start(Behavior {
        fail_first: 2,
        fail_status: 503,
        retry_after: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    for _ in 0..2 {
        let r = post(&up, chat_body(true)).await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }
    assert_eq!(post(&up, chat_body(true)).await.status(), 200);
    up.update_behavior(|b| b.fail_always = Some(418));
    assert_eq!(post(&up, chat_body(true)).await.status(), 418);
    up.set_behavior(Behavior {
        fail_first: 1,
        ..Default::default()
    });
    assert_eq!(post(&up, chat_body(true)).await.status(), 500);
    assert_eq!(post(&up, chat_body(true)).await.status(), 200);
    assert_eq!(up.request_count(), 6);
    assert_eq!(up.requests().len(), 6);
    up.clear_requests();
    assert!(up.requests().is_empty());
    assert_eq!(up.request_count(), 6);
    up.shutdown().await;
}

#[tokio::test]
async fn hang_and_hang_after_headers_release_on_shutdown() {
    let up = start(Behavior {
        hang: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("{}/chat/completions", up.base_url);
    let pending = tokio::spawn(client().post(url).json(&chat_body(true)).send());
    let waited = tokio::time::timeout(Duration::from_millis(200), async {
        while up.request_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished());

    up.set_behavior(Behavior {
        hang_after_headers: true,
        ..Default::default()
    });
    let resp = post(&up, chat_body(true)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let next = tokio::time::timeout(Duration::from_millis(100), body.next()).await;
    assert!(next.is_err(), "no body expected");

    tokio::time::timeout(Duration::from_secs(5), up.shutdown())
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap();
}

#[tokio::test]
async fn latency_delays_the_headers() {
    let up = start(Behavior {
        latency: Duration::from_millis(150),
        chunk_gap: Duration::from_millis(20),
        ..Default::default()
    })
    .await
    .unwrap();
    let t = std::time::Instant::now();
    let resp = post(&up, chat_body(true)).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    let _ = resp.text().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150 + 3 * 20));
    up.shutdown().await;
}

#[tokio::test]
async fn models_and_unknown_routes() {
    let up = start(Behavior::default()).await.unwrap();
    let v: Value = client()
        .get(format!("{}/models", up.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "fake-model");
    let r = client()
        .get(format!("{}/nope", up.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(up.request_count(), 0);
    up.shutdown().await;
}
