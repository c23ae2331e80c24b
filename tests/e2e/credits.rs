//! Credits, the spec's central invariant (§6): many devices sending at once against a balance
//! that covers only some turns never overspend, never charge twice, and leave nothing reserved;
//! per-user limits (§6) answer `rate_limited` with `Retry-After`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use questech_fake_upstream::Behavior;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::wsclient::*;

async fn grant(app: &TestApp, admin: &RegisteredUser, user: &RegisteredUser, delta: i64) -> Value {
    let (s, _, b) = app
        .post(
            &format!("/admin/users/{}/credits", user.id),
            Some(&admin.access),
            Some(json!({"delta": delta, "reason": "test"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "grant {delta}: {b}");
    b
}

async fn admin(app: &TestApp) -> RegisteredUser {
    let name = uname("cadmin");
    app.register(&name).await;
    app.make_admin(&name).await
}

async fn concurrent_turns(backend: Backend) {
    // Slow enough that every send lands while the first turns still hold their reservations.
    let b = Behavior {
        latency: Duration::from_millis(2_000),
        ..Default::default()
    };
    let env = [("USER_RPM", "0"), ("USER_MAX_INFLIGHT", "0")];
    let Some((app, fake)) = with_fake(backend, b, &env).await else {
        return;
    };
    let model = "gpt-4o-mini";
    let admin = admin(&app).await;
    let name = uname("spender");
    let u = app.register(&name).await;
    let second = app.login(&name, PASSWORD).await;
    // gpt-4o-mini reserves ceil(p·0.15/1000 + 16384·0.6/1000) + 1 = 11 per turn: 25 covers two.
    grant(&app, &admin, &u, -75).await;
    let convs: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(conv_id(&app, &u.access, model).await);
        }
        v
    };
    let mut ws1 = Ws::connect(&app, &u.access).await;
    let mut ws2 = Ws::connect(&app, &second.access).await;
    assert_eq!(ws1.hello["credits"], 25);

    // 12 turns at once: per conversation, one from each socket and one over REST.
    for (i, c) in convs.iter().enumerate() {
        ws1.chat(c, &format!("a-{i}"), "go").await;
        ws2.chat(c, &format!("b-{i}"), "go").await;
    }
    let rest = futures::future::join_all(convs.iter().enumerate().map(|(i, c)| {
        let app = &app;
        let token = u.access.clone();
        async move {
            app.post(
                &format!("/chat/conversations/{c}/messages"),
                Some(&token),
                Some(json!({"content": "go", "client_msg_id": format!("r-{i}")})),
            )
            .await
        }
    }))
    .await;

    let mut codes: Vec<String> = Vec::new();
    let mut rest_charged = 0;
    for (s, _, b) in &rest {
        match *s {
            StatusCode::OK => {
                assert_eq!(b["assistant_message"]["status"], "complete", "{b}");
                rest_charged += b["credits"]["charged"].as_i64().unwrap();
                codes.push("ok".into());
            }
            StatusCode::PAYMENT_REQUIRED => {
                assert_error(*s, b, StatusCode::PAYMENT_REQUIRED, "insufficient_credits");
                codes.push("insufficient_credits".into());
            }
            StatusCode::CONFLICT => {
                assert_error(*s, b, StatusCode::CONFLICT, "conversation_busy");
                codes.push("conversation_busy".into());
            }
            _ => panic!("unexpected REST answer {s}: {b}"),
        }
    }

    // Every device: each of its own sends is acknowledged or refused; every started turn ends
    // with chat.done on every device.
    let stored: Vec<Vec<Value>> = {
        let mut v = Vec::new();
        for c in &convs {
            let token = u.access.clone();
            let msgs = eventually(Duration::from_secs(30), "turns end", || {
                let (app, token, c) = (&app, token.clone(), c.clone());
                async move {
                    let m = all_messages(app, &token, &c).await;
                    (m.len() % 2 == 0).then_some(m)
                }
            })
            .await;
            v.push(msgs);
        }
        v
    };
    let started: HashSet<String> = stored
        .iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .map(|m| m["client_msg_id"].as_str().unwrap().to_owned())
        .collect();
    let mut ws_charged = 0;
    for (prefix, ws) in [("a", &mut ws1), ("b", &mut ws2)] {
        let mut outcome: HashMap<String, String> = HashMap::new();
        let mut done: HashSet<String> = HashSet::new();
        let own: Vec<String> = (0..convs.len()).map(|i| format!("{prefix}-{i}")).collect();
        let started_convs: HashSet<String> = stored
            .iter()
            .zip(&convs)
            .filter(|(m, _)| !m.is_empty())
            .map(|(_, c)| c.clone())
            .collect();
        while own.iter().any(|id| !outcome.contains_key(id)) || done != started_convs {
            let f = ws.recv().await;
            match f["type"].as_str().unwrap() {
                "chat.ack" => {
                    let id = f["id"].as_str().unwrap().to_owned();
                    assert!(started.contains(&id), "acked {id} is stored");
                    outcome.insert(id, "ok".into());
                }
                "chat.error" => {
                    let id = f["id"].as_str().unwrap().to_owned();
                    assert!(
                        id.starts_with(prefix),
                        "refusals go to the sender only: {f}"
                    );
                    outcome.insert(id, f["error"]["code"].as_str().unwrap().to_owned());
                }
                "chat.done" => {
                    assert_eq!(f["message"]["status"], "complete", "{f}");
                    let c = f["conversation_id"].as_str().unwrap().to_owned();
                    assert!(done.insert(c), "one chat.done per turn");
                    if prefix == "a" {
                        ws_charged += f["credits"]["charged"].as_i64().unwrap();
                    }
                }
                "chat.delta" | "credits.updated" => {}
                other => panic!("unexpected frame {other}: {f}"),
            }
        }
        for id in own {
            codes.push(outcome[&id].clone());
        }
    }

    let count = |c: &str| codes.iter().filter(|x| *x == c).count();
    let (ok, poor, busy) = (
        count("ok"),
        count("insufficient_credits"),
        count("conversation_busy"),
    );
    assert_eq!(
        ok + poor + busy,
        12,
        "every send has one of these outcomes: {codes:?}"
    );
    assert_eq!(ok, started.len(), "{codes:?}");
    assert!(ok >= 1, "some turns ran: {codes:?}");
    assert!(
        ok <= 2,
        "no more turns ran at once than the balance covers: {codes:?}"
    );
    assert!(poor >= 1, "some were refused for credits: {codes:?}");
    assert_eq!(
        fake.request_count(),
        ok,
        "nothing went upstream for refused turns"
    );
    for msgs in &stored {
        assert_gap_free(msgs);
    }
    let balance = assert_credit_invariants(&app, u.uid()).await;
    assert_eq!(
        balance,
        25 - ws_charged,
        "charged exactly what chat.done said"
    );
    assert!(rest_charged <= ws_charged);
    let (_, _, l) = app
        .get("/user/credits/ledger?page_size=100", Some(&u.access))
        .await;
    let chat_rows = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "chat")
        .count();
    assert_eq!(chat_rows, ok, "one ledger row per turn: {l}");

    // Exactly at the edge: 21 covers one reservation of 11, not two.
    if balance != 21 {
        grant(&app, &admin, &u, 21 - balance).await;
    }
    let mut sends = Vec::new();
    for c in convs.iter().take(2) {
        sends.push(say(&app, &u.access, c, "edge"));
    }
    let results = futures::future::join_all(sends).await;
    let oks = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let poor = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::PAYMENT_REQUIRED)
        .count();
    assert_eq!((oks, poor), (1, 1), "{results:?}");
    assert_credit_invariants(&app, u.uid()).await;
}
both_backends!(concurrent_turns_never_overspend, super::concurrent_turns);

both!(insufficient_credits_sends_nothing, |app| async move {
    let admin = admin(&app).await;
    let u = app.register(&uname("broke")).await;
    let conv = conv_id(&app, &u.access, "echo").await;
    // echo reserves ceil(p/1000 + 1024·2/1000) = 3 for a short prompt.
    grant(&app, &admin, &u, -98).await;
    let (s, b) = say(&app, &u.access, &conv, "hi").await;
    assert_error(s, &b, StatusCode::PAYMENT_REQUIRED, "insufficient_credits");
    let mut ws = Ws::connect(&app, &u.access).await;
    ws.chat(&conv, "p-1", "hi").await;
    let f = ws.recv().await;
    assert_eq!(f["type"], "chat.error", "{f}");
    assert_eq!(f["id"], "p-1");
    assert_eq!(f["error"]["code"], "insufficient_credits");
    assert!(all_messages(&app, &u.access, &conv).await.is_empty());
    assert_eq!(assert_credit_invariants(&app, u.uid()).await, 2);
    // One more credit and it fits.
    grant(&app, &admin, &u, 1).await;
    let (_, cu) = ws.until_type("credits.updated").await;
    assert_eq!(cu["balance"], 3);
    let (s, b) = say(&app, &u.access, &conv, "hi").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["user_message"]["seq"], 1, "refused turns took no seq");
    let left = assert_credit_invariants(&app, u.uid()).await;
    assert_eq!(left, 3 - b["credits"]["charged"].as_i64().unwrap());
});

/// Waits until at least `need` seconds are left in the current minute (the per-minute counter
/// is per calendar minute).
async fn avoid_minute_edge(need: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 60 - now % 60;
    if left < need {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

both!(
    per_minute_limit,
    env = [("USER_RPM", "3")],
    |app| async move {
        let u = app.register(&uname("rpm")).await;
        let conv = conv_id(&app, &u.access, "echo").await;
        avoid_minute_edge(20).await;
        for i in 0..3 {
            let (s, b) = say(&app, &u.access, &conv, &format!("turn {i}")).await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
        let (s, h, b) = app
            .post(
                &format!("/chat/conversations/{conv}/messages"),
                Some(&u.access),
                Some(json!({"content": "one too many"})),
            )
            .await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let ra: u64 = h
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("Retry-After seconds");
        assert!((1..=60).contains(&ra), "Retry-After {ra}");
        let mut ws = Ws::connect(&app, &u.access).await;
        ws.chat(&conv, "l-1", "and over ws").await;
        let f = ws.recv().await;
        assert_eq!(f["type"], "chat.error", "{f}");
        assert_eq!(f["error"]["code"], "rate_limited");
        let r = f["error"]["retry_after"].as_u64().expect("retry_after");
        assert!((1..=60).contains(&r), "{f}");
        assert_eq!(all_messages(&app, &u.access, &conv).await.len(), 6);
        // Another user has a budget of their own; an admin has none.
        let other = app.register(&uname("rpm2")).await;
        let c2 = conv_id(&app, &other.access, "echo").await;
        let (s, b) = say(&app, &other.access, &c2, "mine").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let boss = admin(&app).await;
        let c3 = conv_id(&app, &boss.access, "echo").await;
        for _ in 0..5 {
            let (s, b) = say(&app, &boss.access, &c3, "unlimited").await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
        assert_credit_invariants(&app, u.uid()).await;
    }
);

both!(
    in_flight_limit,
    env = [("USER_MAX_INFLIGHT", "2"), ("ECHO_DELAY_MS", "60")],
    |app| async move {
        let boss = admin(&app).await;
        let u = app.register(&uname("inflight")).await;
        let c1 = conv_id(&app, &u.access, "echo").await;
        let c2 = conv_id(&app, &u.access, "echo").await;
        let c3 = conv_id(&app, &u.access, "echo").await;
        let long = "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k";
        let mut ws = Ws::connect(&app, &u.access).await;
        ws.chat(&c1, "i-1", long).await;
        let (_, _) = ws.until_type("chat.ack").await;
        // Refusals (busy, insufficient credits) give their slot back.
        for i in 0..3 {
            let (s, b) = say(&app, &u.access, &c1, &format!("busy {i}")).await;
            assert_error(s, &b, StatusCode::CONFLICT, "conversation_busy");
        }
        grant(&app, &boss, &u, -95).await;
        for _ in 0..3 {
            let (s, b) = say(&app, &u.access, &c3, "poor").await;
            assert_error(s, &b, StatusCode::PAYMENT_REQUIRED, "insufficient_credits");
        }
        grant(&app, &boss, &u, 95).await;
        ws.chat(&c2, "i-2", long).await;
        let (_, ack) = ws
            .until(|f| f["type"] == "chat.ack" || f["type"] == "chat.error")
            .await;
        assert_eq!(ack["type"], "chat.ack", "second slot free: {ack}");
        assert_eq!(ack["id"], "i-2");
        // Two in flight: the third is refused.
        let (s, h, b) = app
            .post(
                &format!("/chat/conversations/{c3}/messages"),
                Some(&u.access),
                Some(json!({"content": "third"})),
            )
            .await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        assert!(h.get("retry-after").is_some(), "Retry-After");
        let mut ended = 0;
        let (_, _) = ws
            .until(|f| {
                ended += usize::from(f["type"] == "chat.done" || f["type"] == "chat.error");
                ended == 2
            })
            .await;
        // Slots are back once the turns end.
        let (s, b) = say(&app, &u.access, &c3, "third again").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_credit_invariants(&app, u.uid()).await;
    }
);

/// Issue 13 defect 3: settlements and grants committed on two nodes at once. The ledger is
/// listed in commit order (`seq`, assigned under the user's row lock), so walking it oldest
/// first, every row's `balance_after` is the one before plus its `delta`, and the newest is the
/// balance. (Row ids are minted per node and are not commit order.)
const UNLIMITED: [(&str, &str); 2] = [("USER_MAX_INFLIGHT", "0"), ("USER_RPM", "0")];

mysql_only!(
    ledger_is_in_commit_order_across_nodes,
    env = [("USER_MAX_INFLIGHT", "0"), ("USER_RPM", "0")],
    |app| async move {
        let node_b = app.spawn_node(&UNLIMITED).await;
        let adm = app.register(&uname("ladm")).await;
        let adm = app.make_admin(&adm.username).await;
        let u = app.register(&uname("lseq")).await;
        let grant_path = format!("/admin/users/{}/credits", u.id);
        let mut work = Vec::new();
        for i in 0..24 {
            let node = if i % 2 == 0 { &app } else { &node_b };
            let (u, adm, grant_path) = (&u, &adm, &grant_path);
            work.push(async move {
                if i % 3 == 0 {
                    let body = json!({"delta": 7, "reason": "test"});
                    let (s, _, b) = node.post(grant_path, Some(&adm.access), Some(body)).await;
                    assert_eq!(s, StatusCode::OK, "{b}");
                } else {
                    let conv = conv_id(node, &u.access, "echo").await;
                    let (s, b) = say(node, &u.access, &conv, &format!("turn {i}")).await;
                    assert_eq!(s, StatusCode::OK, "{b}");
                }
            });
        }
        futures::future::join_all(work).await;
        let (s, _, l) = app
            .get("/user/credits/ledger?page_size=100", Some(&u.access))
            .await;
        assert_eq!(s, StatusCode::OK, "{l}");
        let mut rows = l["items"].as_array().unwrap().clone();
        assert_eq!(rows.len() as u64, l["total"].as_u64().unwrap());
        assert!(rows.len() >= 9, "grants and charges: {l}");
        rows.reverse();
        let mut balance = 0;
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r["seq"], json!(i + 1), "gap-free seq, newest first: {l}");
            balance += r["delta"].as_i64().unwrap();
            assert_eq!(
                r["balance_after"],
                json!(balance),
                "running balance at row {i}: {l}"
            );
        }
        let (_, _, me) = node_b.get("/user/me", Some(&u.access)).await;
        assert_eq!(me["credits"], json!(balance), "{me}");
        assert_credit_invariants(&app, u.uid()).await;
    }
);
