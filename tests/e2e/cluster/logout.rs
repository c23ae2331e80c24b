//! Issue 13 defect 5: logging out through nginx closes that session's sockets on every node
//! (1008 policy), and only that session's: the user's other session keeps its sockets, which
//! still get the user's events.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Cluster;
use crate::common::uname;
use crate::wsclient::Ws;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_closes_the_sessions_sockets_on_every_node() {
    let Some(c) = Cluster::start().await else {
        return;
    };
    let t = Instant::now();
    let u = c.register(&uname("lo")).await;
    let other = c.login(&u.username).await;
    let conv = c.conversation(&other.access).await;
    let mut signed_out = Vec::new();
    let mut kept = Vec::new();
    for i in 0..c.len() {
        signed_out.push(Ws::connect_to(&c.node_url(i), &u.access).await);
        kept.push(Ws::connect_to(&c.node_url(i), &other.access).await);
    }

    let (s, _, b) = c.post("/user/logout", Some(&u.access), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let logged_out = Instant::now();
    for (i, ws) in signed_out.iter_mut().enumerate() {
        let close = ws.expect_close().await;
        let code = close.map(|f| f.code);
        assert_eq!(
            code,
            Some(CloseCode::Policy),
            "node {i}: the session's socket closes"
        );
    }
    let took = logged_out.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "sockets closed {took:?} after logout"
    );
    // The revoked session is refused everywhere; the other one works on every node.
    for i in 0..c.len() {
        let (s, _, b) = c
            .call(
                &c.node_url(i),
                reqwest::Method::GET,
                "/user/me",
                Some(&u.access),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "node {i}: {b}");
    }
    kept[0].chat(&conv, "after-logout", "still here?").await;
    for (i, ws) in kept.iter_mut().enumerate() {
        let frames = ws.turn(&conv).await;
        let last = frames.last().expect("frames");
        assert_eq!(
            last["type"], "chat.done",
            "node {i}: the other session still gets events"
        );
    }
    let (s, _, b) = c
        .post(
            "/user/token/refresh",
            None,
            Some(json!({"refresh_token": u.refresh})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a signed-out session cannot refresh: {b}"
    );

    let sum = c.invariants().await;
    assert_eq!(sum.charged_messages, 1, "{sum:?}");
    eprintln!(
        "cluster logout: closed within {took:?}, case {:?}",
        t.elapsed()
    );
}
