//! Redis restarted under load (issue 13): the cluster's own `redis-server` is killed — its keys
//! are gone, connections are refused — and started again empty a few seconds later. Meanwhile
//! nothing answers 500: what needs Redis answers 503 `unavailable` with `Retry-After` (SMS login
//! included), and afterwards everything works again without restarting a node: SMS login,
//! password login, turns, and events fanned out to the devices on the other nodes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{load, Cluster, Options};
use crate::common::{uname, PASSWORD};
use crate::wsclient::Ws;

const DOWN_FOR: Duration = Duration::from_secs(3);
/// A cache operation gives up after 3 s (`OP_TIMEOUT`); refused connections fail at once.
const ANSWER_WITHIN: Duration = Duration::from_millis(3500);

/// A random mainland mobile number.
fn phone() -> String {
    format!("139{:08}", rand::random::<u32>() % 100_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_answers_503_never_500_and_recovers() {
    let opts = Options {
        own_redis: true,
        ..Options::default()
    };
    let Some(c) = Cluster::start_with(opts).await else {
        return;
    };
    let t = Instant::now();
    let u = c.register(&uname("rr")).await;
    let conv = c.conversation(&u.access).await;
    sms_login(&c, &phone()).await;

    let stop = AtomicBool::new(false);
    let round = |n: usize| -> Vec<load::Request> {
        let token = Some(u.access.clone());
        let turn = format!("/chat/conversations/{conv}/messages");
        let login = json!({"username": u.username, "password": PASSWORD});
        let register = json!({"username": uname("rrl"), "password": PASSWORD});
        let sms = json!({ "phone": phone() });
        let sms_login = json!({ "phone": phone(), "code": "123456" });
        vec![
            ("me", Method::GET, "/user/me".into(), token.clone(), None),
            (
                "turn",
                Method::POST,
                turn,
                token,
                Some(json!({ "content": format!("load {n}") })),
            ),
            (
                "login",
                Method::POST,
                "/user/login".into(),
                None,
                Some(login),
            ),
            (
                "register",
                Method::POST,
                "/user/register".into(),
                None,
                Some(register),
            ),
            (
                "sms send",
                Method::POST,
                "/user/sms/send".into(),
                None,
                Some(sms),
            ),
            (
                "sms login",
                Method::POST,
                "/user/login/sms".into(),
                None,
                Some(sms_login),
            ),
        ]
    };
    let mut devices = Vec::new();
    for i in 0..c.len() {
        devices.push(Ws::connect_to(&c.node_url(i), &u.access).await);
    }
    let script = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.stop_redis().await;
        let down = Instant::now();
        for i in 0..c.len() {
            let (b, took) = c.wait_node_health(i, StatusCode::SERVICE_UNAVAILABLE).await;
            assert_eq!(b["status"], "unhealthy", "node {i}: {b}");
            assert_ne!(b["checks"]["cache"]["status"], "up", "node {i}: {b}");
            eprintln!("cluster redis restart: node {i} unhealthy after {took:?}");
            // SMS login needs Redis for its codes: refused as an outage on every node.
            for (path, body) in [
                ("/user/sms/send", json!({ "phone": phone() })),
                (
                    "/user/login/sms",
                    json!({ "phone": phone(), "code": "123456" }),
                ),
            ] {
                let r = ("sms", Method::POST, path.to_owned(), None, Some(body));
                load::send(&c, &c.node_url(i), r)
                    .await
                    .assert_unavailable(ANSWER_WITHIN);
            }
        }
        tokio::time::sleep(DOWN_FOR.saturating_sub(down.elapsed())).await;
        c.start_redis().await;
        let up = Instant::now();
        for i in 0..c.len() {
            let (_, took) = c.wait_node_health(i, StatusCode::OK).await;
            eprintln!("cluster redis restart: node {i} healthy {took:?} after Redis is back");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.store(true, Ordering::SeqCst);
        (down, up)
    };
    let (outcomes, (down, up)) = tokio::join!(load::run(&c, &stop, round), script);

    let mut refused = 0;
    for o in &outcomes {
        assert!(
            !o.status.is_server_error() || o.status == StatusCode::SERVICE_UNAVAILABLE,
            "no 500 while Redis restarts: {o:?}"
        );
        if o.status == StatusCode::SERVICE_UNAVAILABLE {
            o.assert_unavailable(ANSWER_WITHIN);
            refused += 1;
        }
    }
    let during = outcomes.iter().filter(|o| o.within(down, up)).count();
    assert!(
        during >= 6,
        "load kept running while Redis was down: {during}"
    );
    let after: Vec<_> = outcomes
        .iter()
        .filter(|o| o.start > up + Duration::from_millis(500))
        .collect();
    assert!(!after.is_empty(), "load ran after Redis came back");
    for o in &after {
        // The SMS login of the load uses a code nobody was sent.
        let expected = match o.what {
            "register" => StatusCode::CREATED,
            "sms send" => StatusCode::ACCEPTED,
            "sms login" => StatusCode::UNAUTHORIZED,
            _ => StatusCode::OK,
        };
        assert_eq!(o.status, expected, "after Redis is back: {o:?}");
    }

    // Everything works again: SMS login end to end, and a turn sent on one node reaches the
    // devices on the others (the nodes' pub/sub subscriptions came back).
    sms_login(&c, &phone()).await;
    for i in 0..devices.len() {
        let id = format!("back-{i}");
        devices[i].chat(&conv, &id, "after the restart").await;
        let (_, ack) = devices[i].until(|f| f["id"] == id.as_str()).await;
        assert_eq!(ack["type"], "chat.ack", "node {i} after the restart: {ack}");
        let seq = ack["message"]["seq"].as_i64().expect("seq") + 1;
        for (d, ws) in devices.iter_mut().enumerate() {
            let (_, done) = ws
                .until(|f| {
                    f["type"] == "chat.done"
                        && f["conversation_id"] == conv.as_str()
                        && f["message"]["seq"] == seq
                })
                .await;
            assert_eq!(done["message"]["status"], "complete", "device {d}: {done}");
        }
    }
    let sum = c.invariants().await;
    assert!(sum.charged_messages >= 3, "{sum:?}");
    eprintln!(
        "cluster redis restart: {} requests, {refused} answered 503, case {:?}",
        outcomes.len(),
        t.elapsed()
    );
}

/// SMS login end to end through nginx: a code is sent (202), read from the cache (the dev aid of
/// `SMS_PROVIDER=log` in debug mode), and logs in (200). Returns the login's body.
async fn sms_login(c: &Cluster, phone: &str) -> Value {
    let (s, _, b) = c
        .post("/user/sms/send", None, Some(json!({ "phone": phone })))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "sms send: {b}");
    let e164 = questech::auth::crypto::normalize_phone(phone).expect("a valid phone");
    let ph = questech::auth::crypto::phone_hash(&c.app.state.config.encryption_key, &e164);
    let key = questech::http::sms::debug_code_key(&ph);
    // The in-process node's connection may still be the one from before a restart: its first
    // command fails (broken pipe) and reconnects.
    let mut code = c.app.state.cache.get(&key).await;
    if code.is_err() {
        code = c.app.state.cache.get(&key).await;
    }
    let code = code.expect("cache").expect("a code was kept");
    let body = json!({ "phone": phone, "code": code });
    let (s, _, b) = c.post("/user/login/sms", None, Some(body)).await;
    assert_eq!(s, StatusCode::OK, "sms login: {b}");
    b
}
