//! Leases (issue 13): what a node holds — turn locks, reservations, in-flight slots — lasts as
//! long as the node renews it. A node killed with `kill -9`, or paused with SIGSTOP past its
//! lease, is taken over by a survivor: the lost turn is stored as `failed`, every device of the
//! user gets `chat.error` (`unavailable`), nothing stays locked, reserved or counted in flight.
//! A paused node that comes back cannot settle the turn that was taken over (fencing).
//!
//! The survivor is the cluster harness's in-process node; the node that dies is its one child
//! process (the real binary) over the same MariaDB and Redis.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cluster::{Cluster, Options};
use crate::common::TestApp;
use crate::wsclient::{all_messages, assert_credit_invariants, assert_gap_free, reserved, Ws};

const LEASE_SECS: &str = "2";

/// One child node to lose and the in-process survivor: short leases, slow echo replies, one
/// turn in flight per user.
async fn cluster() -> Option<Cluster> {
    let env = [
        ("NODE_LEASE_SECS", LEASE_SECS),
        ("ECHO_DELAY_MS", "40"),
        ("USER_MAX_INFLIGHT", "1"),
    ];
    Cluster::start_with(Options {
        nodes: 1,
        env: env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        ..Options::default()
    })
    .await
}

/// Starts a long turn through the child node from a device connected there, with a second
/// device of the same user on the survivor; returns both devices once the survivor's saw a delta.
async fn turn_on(c: &Cluster, token: &str, conv: &str) -> (Ws, Ws) {
    let app = &c.app;
    let mut there = Ws::connect_to(&c.node_url(0), token).await;
    let mut here = Ws::connect(app, token).await;
    let words = vec!["word"; 400].join(" ");
    there
        .send(
            json!({"type": "chat.send", "id": "lost-1", "conversation_id": conv, "content": words}),
        )
        .await;
    here.until_type("chat.delta").await;
    (there, here)
}

/// The end state every case must reach: the lost turn stored as failed at seq 2 and nothing
/// held; a new turn through the survivor completes (lock free, in-flight slot free).
async fn assert_taken_over(app: &TestApp, token: &str, uid: i64, conv: &str) {
    let msgs = all_messages(app, token, conv).await;
    assert_gap_free(&msgs);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[1]["role"], "assistant");
    assert_eq!(msgs[1]["status"], "failed");
    assert_eq!(msgs[1]["credits_charged"], 0);
    assert_eq!(reserved(app, uid).await, 0);
    let locked = app
        .sql(
            "UPDATE conversations SET title = title WHERE id = ? AND turn_id IS NOT NULL",
            &[conv],
        )
        .await;
    assert_eq!(locked, 0, "the conversation is still locked");
    // The dead run's in-flight slot frees itself within one lease of its last renewal.
    let start = Instant::now();
    let (s, b) = loop {
        let (s, b) = crate::wsclient::say(app, token, conv, "are you there").await;
        if s != StatusCode::TOO_MANY_REQUESTS || start.elapsed() > Duration::from_secs(5) {
            break (s, b);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s, StatusCode::OK, "a turn after the takeover: {b}");
    assert_eq!(b["assistant_message"]["seq"], 4, "{b}");
    assert_credit_invariants(app, uid).await;
}

async fn lost_error(here: &mut Ws, since: Instant) -> Value {
    let (_, err) = here
        .until(|f| f["type"] == "chat.error" && f["id"] == "lost-1")
        .await;
    assert_eq!(err["error"]["code"], "unavailable", "{err}");
    let took = since.elapsed();
    // Lease 2 s + one beat (0.5 s) + the survivor's sweep; far below the old 600 s.
    assert!(took < Duration::from_secs(6), "takeover took {took:?}");
    err
}

#[tokio::test]
async fn a_killed_node_is_taken_over_by_a_survivor() {
    let Some(c) = cluster().await else {
        return;
    };
    let app = &c.app;
    let u = app.register(&crate::common::uname("lk")).await;
    let conv = crate::wsclient::conv_id(app, &u.access, "echo").await;
    let (_there, mut here) = turn_on(&c, &u.access, &conv).await;
    c.kill(0).await;
    let t0 = Instant::now();
    lost_error(&mut here, t0).await;
    assert_taken_over(app, &u.access, u.uid(), &conv).await;
}

#[tokio::test]
async fn a_killed_node_restarted_takes_over_its_own_turns() {
    let Some(c) = cluster().await else {
        return;
    };
    let app = &c.app;
    let u = app.register(&crate::common::uname("lr")).await;
    let conv = crate::wsclient::conv_id(app, &u.access, "echo").await;
    let (_there, mut here) = turn_on(&c, &u.access, &conv).await;
    c.kill(0).await;
    let t0 = Instant::now();
    // Back at once, under the same name: its start takes over what its earlier run held.
    c.restart(0).await;
    lost_error(&mut here, t0).await;
    assert_taken_over(app, &u.access, u.uid(), &conv).await;
}

#[tokio::test]
async fn a_paused_node_cannot_settle_a_turn_taken_over() {
    let Some(c) = cluster().await else {
        return;
    };
    let app = &c.app;
    let u = app.register(&crate::common::uname("lp")).await;
    let conv = crate::wsclient::conv_id(app, &u.access, "echo").await;
    let (mut there, mut here) = turn_on(&c, &u.access, &conv).await;
    c.pause(0);
    let t0 = Instant::now();
    lost_error(&mut here, t0).await;
    c.resume(0);
    // The device on the paused node hears of the takeover once its node runs again.
    there
        .until(|f| f["type"] == "chat.error" && f["id"] == "lost-1")
        .await;
    // The paused node's turn ends (its stream had 400 words to go): whatever it does, it
    // stores and charges nothing. Give it time, then check the stored state is the takeover's.
    let start = Instant::now();
    loop {
        let (s, body) = crate::wsclient::say(app, &u.access, &conv, "still there").await;
        if s == StatusCode::OK {
            assert_eq!(body["assistant_message"]["seq"], 4, "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no turn possible after the takeover: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The paused node's own end of the turn was refused by the fence (it says so in its log).
    let start = Instant::now();
    loop {
        let text = c.node_log(0);
        if text.contains("turn taken over by another node") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the paused node's log does not tell of a fenced finish:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let msgs = all_messages(app, &u.access, &conv).await;
    assert_gap_free(&msgs);
    let statuses: Vec<(&str, &str)> = msgs
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("user", "complete"),
            ("assistant", "failed"),
            ("user", "complete"),
            ("assistant", "complete")
        ],
        "{msgs:?}"
    );
    assert_eq!(msgs[1]["credits_charged"], 0);
    assert_eq!(reserved(app, u.uid()).await, 0);
    assert_credit_invariants(app, u.uid()).await;
    // The resumed node serves again: a turn through it completes after the stored ones.
    let path = format!("/chat/conversations/{conv}/messages");
    let body = json!({"content": "and you"});
    let (_, _, r) = c
        .call(
            &c.node_url(0),
            Method::POST,
            &path,
            Some(&u.access),
            Some(body),
        )
        .await;
    assert_eq!(r["assistant_message"]["seq"], 6, "{r}");
    assert_credit_invariants(app, u.uid()).await;
}
