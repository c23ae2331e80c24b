//! `GET /health` (SPEC §12), including MySQL and Redis going away and coming back.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

fn assert_check_up(check: &Value, what: &str) {
    assert!(check.is_object(), "checks.{what} is an object: {check}");
    assert_eq!(check["status"], "up", "checks.{what}: {check}");
    assert!(
        check["latency_ms"].is_number(),
        "checks.{what}.latency_ms: {check}"
    );
}

both!(health_is_healthy, |app| async move {
    let (s, h, b) = app.get("/health", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        h.get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "{h:?}"
    );
    assert_eq!(b["status"], "healthy", "{b}");
    assert_check_up(&b["checks"]["database"], "database");
    assert_check_up(&b["checks"]["cache"], "cache");
    assert!(b["checks"]["llm"].is_object(), "checks.llm: {b}");
    let (dialect, cache) = match app.backend {
        Backend::Sqlite => ("sqlite", "memory"),
        Backend::MySqlRedis => ("mysql", "redis"),
    };
    assert_eq!(b["checks"]["database"]["dialect"], dialect, "{b}");
    assert_eq!(b["checks"]["cache"]["backend"], cache, "{b}");
    // Needs no token; a bad one does not matter either.
    let (s, _, _) = app.get("/health", Some("garbage")).await;
    assert_eq!(s, StatusCode::OK);
});

/// Health goes 503 while `proxy` is paused and back to 200 after; accounts keep answering in the
/// error shape (no hang) during the outage and work again afterwards.
async fn outage(app: &TestApp, proxy: &Proxy, down: &str, up: &str) {
    let u = app.register(&uname("outage")).await;
    let (st, _, conv) = app
        .post("/chat/conversations", Some(&u.access), Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{conv}");
    let conv = conv["id"].as_str().expect("conversation id").to_owned();
    app.wait_health(StatusCode::OK, Duration::from_secs(10))
        .await;

    proxy.pause();
    let (b, took) = app
        .wait_health(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(8))
        .await;
    assert!(took < Duration::from_secs(6), "503 came after {took:?}");
    assert_eq!(b["status"], "unhealthy", "{b}");
    assert_ne!(b["checks"][down]["status"], "up", "{b}");
    assert_check_up(&b["checks"][up], up);
    // A single health request answers within its check timeout, not after the outage.
    let t = Instant::now();
    let (s, _, b) = app.get("/health", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "/health took {:?}",
        t.elapsed()
    );

    // Requests that need the missing service are answered 503 `unavailable` with `Retry-After`
    // (an outage, so clients back off), without hanging.
    let t = Instant::now();
    let (s, h, b) = app.get("/user/me", Some(&u.access)).await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(15), "/user/me took {took:?}");
    if down == "database" {
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert!(took < Duration::from_secs(4), "503 after {took:?}");
    }
    if s != StatusCode::OK {
        assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert_eq!(b["error"]["type"], "server_error", "{b}");
        let wait = h.get("retry-after").and_then(|v| v.to_str().ok());
        assert_eq!(wait, Some("2"), "Retry-After during an outage");
    }
    if down == "database" {
        // A chat turn cannot be stored: refused the same way, and nothing is charged.
        let (s, h, b) = app
            .post(
                &format!("/chat/conversations/{conv}/messages"),
                Some(&u.access),
                Some(json!({"content": "hello during the outage"})),
            )
            .await;
        assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert!(h.get("retry-after").is_some(), "{h:?}");
    }

    proxy.resume();
    let (b, took) = app
        .wait_health(StatusCode::OK, Duration::from_secs(20))
        .await;
    assert_eq!(b["status"], "healthy", "{b}");
    assert_check_up(&b["checks"]["database"], "database");
    assert_check_up(&b["checks"]["cache"], "cache");
    eprintln!("{down} outage: recovered {took:?} after resume");
    // Everything works again, without a restart.
    let (s, _, b) = app.get("/user/me", Some(&u.access)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    app.register(&uname("after")).await;
    app.login(&u.username, PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_503_when_redis_unreachable() {
    let opts = Options {
        cache_via_proxy: true,
        ..Options::default()
    };
    let Some(app) = spawn_app_with(Backend::MySqlRedis, &[], opts).await else {
        return;
    };
    let proxy = app.cache_proxy.as_ref().expect("cache proxy");
    outage(&app, proxy, "cache", "database").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_503_when_mysql_unreachable() {
    let opts = Options {
        db_via_proxy: true,
        ..Options::default()
    };
    let Some(app) = spawn_app_with(Backend::MySqlRedis, &[], opts).await else {
        return;
    };
    let proxy = app.db_proxy.as_ref().expect("db proxy");
    outage(&app, proxy, "database", "cache").await;
}
