#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::wire::*;
use super::*;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use questech_engine::llm::ChatMessage;
use questech_engine::llm::{StreamEvent, Usage};
use questech_fake_upstream::{self as fake_upstream, Behavior};

fn req() -> ChatRequest {
    ChatRequest {
        model: "gpt-test".into(),
        messages: vec![
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            },
        ],
        ..Default::default()
    }
}

fn provider(base_url: &str, key: Option<&str>) -> OpenAiCompatible {
    OpenAiCompatible::new("openai", base_url, key.map(str::to_owned)).unwrap()
}

async fn collect(s: EventStream) -> Vec<Result<StreamEvent, ProviderError>> {
    s.collect().await
}

fn events_of(body: &str) -> Vec<Result<StreamEvent, ProviderError>> {
    let chunks: Vec<reqwest::Result<Bytes>> = body
        .as_bytes()
        .chunks(5)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::executor::block_on(sse_events(stream::iter(chunks).boxed()).collect())
}

fn delta(s: &str) -> StreamEvent {
    StreamEvent::Delta(s.into())
}

#[test]
fn body_has_the_openai_shape() {
    let mut r = req();
    let b = serde_json::to_value(request_body(&r)).unwrap();
    assert_eq!(b["model"], "gpt-test");
    assert_eq!(b["stream"], true);
    assert_eq!(b["stream_options"]["include_usage"], true);
    assert_eq!(b["messages"][1]["role"], "user");
    assert_eq!(b["messages"][1]["content"], "Hi");
    for absent in ["max_tokens", "temperature", "top_p", "stop"] {
        assert!(b.get(absent).is_none(), "{absent}");
    }
    r.max_tokens = Some(50);
    r.temperature = Some(0.5);
    r.top_p = Some(0.9);
    r.stop = vec!["\n\n".into()];
    let b = serde_json::to_value(request_body(&r)).unwrap();
    assert_eq!(b["max_tokens"], 50);
    assert_eq!(b["temperature"], 0.5);
    assert_eq!(b["top_p"], 0.9);
    assert_eq!(b["stop"], serde_json::json!(["\n\n"]));
}

#[test]
fn error_messages() {
    let body = br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#;
    assert_eq!(error_message(body), "Rate limit reached");
    assert_eq!(error_message(b"  Bad Gateway \n"), "Bad Gateway");
    assert_eq!(error_message(br#"{"error":"plain"}"#), "plain");
    let long = "é".repeat(600);
    let m = error_message(long.as_bytes());
    assert_eq!(m.chars().count(), 501);
    assert!(m.ends_with('…'));
}

#[test]
fn retry_after_values() {
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_retry_after(" 1.5 "),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    assert_eq!(parse_retry_after("-1"), None);
}

#[test]
fn stream_mapping() {
    let body = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n\
                : keep-alive\n\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}],\"usage\":null}\n\n\
                data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":null}\n\n\
                data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
                data: [DONE]\n\n";
    let ev: Vec<StreamEvent> = events_of(body).into_iter().map(Result::unwrap).collect();
    assert_eq!(
        ev,
        [
            delta("Hel"),
            delta("lo"),
            StreamEvent::Usage(Usage {
                prompt_tokens: 9,
                completion_tokens: 2
            }),
            StreamEvent::Done(Some("length".into())),
        ]
    );
}

#[test]
fn repeated_usage_is_sent_once_before_done() {
    let body = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
                data: [DONE]";
    let ev: Vec<StreamEvent> = events_of(body).into_iter().map(Result::unwrap).collect();
    assert_eq!(
        ev,
        [
            delta("a"),
            delta("b"),
            StreamEvent::Usage(Usage {
                prompt_tokens: 5,
                completion_tokens: 2
            }),
            StreamEvent::Done(Some("stop".into())),
        ]
    );
}

#[test]
fn early_eof_and_bad_json() {
    let ev = events_of("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].as_ref().unwrap(), &delta("a"));
    assert!(
        matches!(&ev[1], Err(ProviderError::Network(m)) if m == "stream ended early"),
        "{ev:?}"
    );

    let ev = events_of(
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {nope\n\ndata: [DONE]\n\n",
    );
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(matches!(&ev[1], Err(ProviderError::Protocol(_))), "{ev:?}");

    let ev = events_of("data: {\"error\":{\"message\":\"overloaded\"}}\n\n");
    assert!(
        matches!(&ev[0], Err(ProviderError::Protocol(m)) if m.contains("overloaded")),
        "{ev:?}"
    );
}

#[test]
fn full_completion_fallback() {
    let body = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
    assert_eq!(
        full_completion_events(body).unwrap(),
        [
            delta("Hi!"),
            StreamEvent::Usage(Usage {
                prompt_tokens: 3,
                completion_tokens: 2
            }),
            StreamEvent::Done(Some("stop".into())),
        ]
    );
}

#[tokio::test]
async fn normal_stream_against_fake_upstream() {
    let up = fake_upstream::start(Behavior::default()).await.unwrap();
    let p = provider(&up.base_url, Some("sk-test"));
    let ev: Vec<StreamEvent> = collect(p.stream(req()).await.unwrap())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        ev,
        [
            delta("Hello"),
            delta(" from"),
            delta(" fake"),
            delta(" upstream"),
            StreamEvent::Usage(Usage {
                prompt_tokens: 20,
                completion_tokens: 4
            }),
            StreamEvent::Done(Some("stop".into())),
        ]
    );
    up.shutdown().await;
}

#[tokio::test]
async fn request_is_recorded_with_usage_option_and_key() {
    let up = fake_upstream::start(Behavior::default()).await.unwrap();
    let p = provider(&up.base_url, Some("sk-test"));
    let mut r = req();
    r.max_tokens = Some(100);
    let _ = collect(p.stream(r).await.unwrap()).await;
    assert_eq!(up.request_count(), 1);
    let recorded = up.requests();
    assert_eq!(recorded.len(), 1);
    let rec = &recorded[0];
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(rec.body["stream"], true);
    assert_eq!(rec.body["stream_options"]["include_usage"], true);
    assert_eq!(rec.body["model"], "gpt-test");
    assert_eq!(rec.body["max_tokens"], 100);
    assert_eq!(rec.body["messages"].as_array().unwrap().len(), 2);

    // No key, no Authorization header.
    let p = provider(&up.base_url, None);
    let _ = collect(p.stream(req()).await.unwrap()).await;
    assert_eq!(up.requests()[1].authorization, None);
    up.shutdown().await;
}

#[tokio::test]
async fn status_500_is_a_status_error() {
    let up = fake_upstream::start(Behavior {
        fail_always: Some(500),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = provider(&up.base_url, Some("k"));
    match p.stream(req()).await {
        Err(ProviderError::Status {
            status,
            message,
            retry_after,
        }) => {
            assert_eq!(status, 500);
            assert!(
                !message.is_empty() && !message.starts_with('{'),
                "{message}"
            );
            assert_eq!(retry_after, None);
        }
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("expected an error"),
    }
    up.shutdown().await;
}

#[tokio::test]
async fn status_429_carries_retry_after_then_recovers() {
    let up = fake_upstream::start(Behavior {
        fail_first: 1,
        fail_status: 429,
        retry_after: Some(3),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = provider(&up.base_url, Some("k"));
    match p.stream(req()).await {
        Err(ProviderError::Status {
            status,
            retry_after,
            ..
        }) => {
            assert_eq!(status, 429);
            assert_eq!(retry_after, Some(Duration::from_secs(3)));
        }
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("expected an error"),
    }
    // The second request goes through.
    let ev = collect(p.stream(req()).await.unwrap()).await;
    assert!(
        matches!(ev.last(), Some(Ok(StreamEvent::Done(_)))),
        "{ev:?}"
    );
    assert_eq!(up.request_count(), 2);
    up.shutdown().await;
}

#[tokio::test]
async fn dropped_connection_is_a_network_error_after_the_deltas() {
    let up = fake_upstream::start(Behavior {
        drop_after: Some(2),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = provider(&up.base_url, Some("k"));
    let ev = collect(p.stream(req()).await.unwrap()).await;
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_eq!(ev[0].as_ref().unwrap(), &delta("Hello"));
    assert_eq!(ev[1].as_ref().unwrap(), &delta(" from"));
    assert!(matches!(&ev[2], Err(ProviderError::Network(_))), "{ev:?}");
    up.shutdown().await;
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    // Bind then free a port so nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = provider(&format!("http://127.0.0.1:{port}/v1"), None);
    assert!(matches!(
        p.stream(req()).await,
        Err(ProviderError::Network(_))
    ));
}

#[tokio::test]
async fn behaviour_changes_at_runtime_and_custom_words() {
    let up = fake_upstream::start(Behavior::default()).await.unwrap();
    up.update_behavior(|b| {
        b.reply_words = Some(vec!["你好".into(), "，世界".into()]);
        b.usage = false;
    });
    let p = provider(&up.base_url, None);
    let ev: Vec<StreamEvent> = collect(p.stream(req()).await.unwrap())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        ev,
        [
            delta("你好"),
            delta("，世界"),
            StreamEvent::Done(Some("stop".into()))
        ]
    );
    up.shutdown().await;
}
