//! The WebSocket (SPEC §8): authentication before the upgrade, the frames of a turn on every
//! device of the user (and on every node, §13), sync, ping, protocol errors, the frame size
//! limit, cancellation, a sender that goes away mid-turn, one turn at a time, credit updates.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::wsclient::*;

const LONG_PROMPT: &str = "one two three four five six seven eight nine ten eleven twelve \
    thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty twentyone twentytwo \
    twentythree twentyfour twentyfive twentysix twentyseven twentyeight twentynine thirty";

both!(ws_auth, |app| async move {
    let u = app.register(&uname("wsauth")).await;
    let ws = Ws::connect(&app, &u.access).await;
    let h = &ws.hello;
    assert_eq!(
        keys(h),
        ["credits", "server_time", "session_id", "type", "user_id"],
        "hello fields: {h}"
    );
    assert_eq!(h["user_id"], u.id.as_str());
    let sid = jwt_claims(&u.access)["sid"].clone();
    let sid = sid
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| sid.to_string());
    assert_eq!(h["session_id"], sid.as_str());
    assert_eq!(h["credits"], 100);
    assert_rfc3339(&h["server_time"]);
    ws.close().await;

    let mut ws = Ws::try_connect(&app, Auth::Query(&u.access))
        .await
        .expect("?token= works");
    assert_eq!(ws.hello["user_id"], u.id.as_str());
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
    ws.close().await;

    let refusals = [
        Auth::None,
        Auth::Header("not-a-jwt"),
        Auth::Query("not-a-jwt"),
        Auth::Header(""),
    ];
    for auth in refusals {
        let r = Ws::try_connect(&app, auth)
            .await
            .err()
            .expect("refused before the upgrade");
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
        assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"), "{r:?}");
        assert_error(r.status, &r.body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // A token signed with another key.
    let parts: Vec<&str> = u.access.split('.').collect();
    let forged = format!("{}.{}.AAAA{}", parts[0], parts[1], &parts[2][4..]);
    let r = Ws::try_connect(&app, Auth::Header(&forged))
        .await
        .err()
        .expect("forged");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A revoked session's token stops working at once.
    let (s, _, b) = app.post("/user/logout", Some(&u.access), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let r = Ws::try_connect(&app, Auth::Query(&u.access))
        .await
        .err()
        .expect("revoked");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_error(r.status, &r.body, StatusCode::UNAUTHORIZED, "unauthorized");
});

/// Checks the frames of one successful turn as seen by one device.
fn check_turn(frames: &[Value], conv: &str, id: &str, content: &str, seq: i64) -> Value {
    let ack = frames
        .iter()
        .find(|f| f["type"] == "chat.ack")
        .unwrap_or_else(|| panic!("a chat.ack: {frames:#?}"));
    assert_eq!(
        keys(ack),
        ["conversation_id", "id", "message", "type"],
        "{ack}"
    );
    assert_eq!(ack["id"], id);
    assert_eq!(ack["conversation_id"], conv);
    assert_eq!(ack["message"]["seq"], seq);
    assert_eq!(ack["message"]["role"], "user");
    assert_eq!(ack["message"]["content"], content);
    assert_eq!(ack["message"]["client_msg_id"], id);
    let ack_pos = frames.iter().position(|f| f["type"] == "chat.ack").unwrap();
    let first_delta = frames.iter().position(|f| f["type"] == "chat.delta");
    assert!(first_delta.is_none_or(|d| d > ack_pos), "ack before deltas");
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "chat.done", "{frames:#?}");
    assert_eq!(
        keys(done),
        ["conversation_id", "credits", "message", "type"],
        "{done}"
    );
    let m = &done["message"];
    assert_eq!(m["seq"], seq + 1);
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["status"], "complete");
    let text = deltas_text(frames);
    assert_eq!(m["content"], text.as_str(), "deltas == content");
    for d in frames.iter().filter(|f| f["type"] == "chat.delta") {
        assert_eq!(
            keys(d),
            ["conversation_id", "delta", "index", "message_id", "type"],
            "{d}"
        );
        assert_eq!(d["message_id"], m["id"]);
    }
    assert_eq!(done["credits"]["charged"], m["credits_charged"]);
    done.clone()
}

both!(ws_turn_reaches_every_device, |app| async move {
    let name = uname("devices");
    let u = app.register(&name).await;
    let other_device = app.login(&name, PASSWORD).await;
    assert_ne!(
        jwt_claims(&u.access)["sid"],
        jwt_claims(&other_device.access)["sid"],
        "two sessions"
    );
    let conv = conv_id(&app, &u.access, "echo").await;
    let mut a = Ws::connect(&app, &u.access).await;
    let mut b = Ws::connect(&app, &other_device.access).await;

    a.chat(&conv, "c-1", "hello from the phone").await;
    let fa = a.turn(&conv).await;
    let done = check_turn(&fa, &conv, "c-1", "hello from the phone", 1);
    assert_eq!(done["message"]["content"], "Echo: hello from the phone");
    let fb = b.turn(&conv).await;
    let done_b = check_turn(&fb, &conv, "c-1", "hello from the phone", 1);
    assert_eq!(done, done_b, "the same done on both devices");
    let charged = done["credits"]["charged"].as_i64().unwrap();
    assert!(charged > 0);
    assert_eq!(done["credits"]["balance"], 100 - charged);
    // Both get the balance change.
    for ws in [&mut a, &mut b] {
        let (_, cu) = ws.until_type("credits.updated").await;
        assert_eq!(cu["balance"], 100 - charged, "{cu}");
        assert_eq!(cu["delta"], -charged, "{cu}");
        assert_eq!(cu["reason"], "chat");
    }

    // The second device sends; the first sees it too.
    b.chat(&conv, "c-2", "and from the laptop").await;
    let fb = b.turn(&conv).await;
    check_turn(&fb, &conv, "c-2", "and from the laptop", 3);
    let fa = a.turn(&conv).await;
    check_turn(&fa, &conv, "c-2", "and from the laptop", 3);

    // A REST turn reaches the sockets as well.
    let (s, r) = say(&app, &u.access, &conv, "over rest").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let fa = a.turn(&conv).await;
    assert_eq!(fa.last().unwrap()["message"], r["assistant_message"]);
    assert_eq!(
        fa.iter().find(|f| f["type"] == "chat.ack").unwrap()["message"],
        r["user_message"]
    );
    assert_credit_invariants(&app, u.uid()).await;
});

both!(ws_sync_ping_and_protocol_errors, |app| async move {
    let u = app.register(&uname("sync")).await;
    let stranger = app.register(&uname("stranger")).await;
    let conv = conv_id(&app, &u.access, "echo").await;
    let foreign = conv_id(&app, &stranger.access, "echo").await;
    for text in ["first", "second"] {
        let (s, b) = say(&app, &u.access, &conv, text).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let stored = all_messages(&app, &u.access, &conv).await;
    let mut ws = Ws::connect(&app, &u.access).await;

    ws.send(json!({"type": "conversation.sync", "conversation_id": conv, "after_seq": 0}))
        .await;
    let (msgs, done) = ws.until_type("sync.done").await;
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    for (m, s) in msgs.iter().zip(&stored) {
        assert_eq!(m["type"], "message");
        assert_eq!(m["message"], *s);
    }
    assert_eq!(
        done,
        json!({"type": "sync.done", "conversation_id": conv, "last_seq": 4})
    );
    ws.send(json!({"type": "conversation.sync", "conversation_id": conv, "after_seq": 3}))
        .await;
    let (msgs, done) = ws.until_type("sync.done").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["message"]["seq"], 4);
    assert_eq!(done["last_seq"], 4);
    ws.send(json!({"type": "conversation.sync", "conversation_id": conv, "after_seq": 4}))
        .await;
    let (msgs, done) = ws.until_type("sync.done").await;
    assert!(msgs.is_empty());
    assert_eq!(done["last_seq"], 4);
    // Someone else's conversation: an error, nothing replayed.
    ws.send(json!({"type": "conversation.sync", "conversation_id": foreign, "after_seq": 0}))
        .await;
    let f = ws.recv().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["error"]["code"], "not_found", "{f}");

    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));

    // Protocol errors: an `error` frame, and the socket stays usable.
    let bad = [
        "not json at all".to_owned(),
        json!({"type": "no.such.frame"}).to_string(),
        json!({"no_type": true}).to_string(),
        json!({"type": "chat.send"}).to_string(),
        "[1,2,3]".to_owned(),
    ];
    for text in &bad {
        ws.send_text(text).await;
        let f = ws.recv().await;
        assert_eq!(f["type"], "error", "{text} → {f}");
        assert_eq!(keys(&f), ["error", "type"], "{f}");
        assert_eq!(f["error"]["code"], "invalid_request", "{f}");
        assert!(f["error"]["message"].is_string());
        ws.send(json!({"type": "ping"})).await;
        assert_eq!(
            ws.recv().await,
            json!({"type": "pong"}),
            "usable after {text}"
        );
    }
    ws.send_message(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(ws.recv().await["type"], "error");

    // Chat-level refusals come as chat.error to this device.
    ws.send(json!({"type": "chat.send", "id": "e-1", "conversation_id": conv, "content": "  "}))
        .await;
    let f = ws.recv().await;
    assert_eq!(f["type"], "chat.error", "{f}");
    assert_eq!(f["id"], "e-1");
    assert_eq!(f["error"]["code"], "invalid_request");
    assert!(
        f["error"]["message"].as_str().unwrap().contains("content"),
        "{f}"
    );
    ws.send(json!({"type": "chat.send", "id": "e-2", "conversation_id": foreign, "content": "hi"}))
        .await;
    let f = ws.recv().await;
    assert_eq!(f["type"], "chat.error", "{f}");
    assert_eq!(f["error"]["code"], "not_found");
    ws.send(json!({"type": "chat.send", "id": "e-3", "conversation_id": conv, "content": "hi", "model": "nope"}))
        .await;
    let f = ws.recv().await;
    assert_eq!(f["type"], "chat.error", "{f}");
    assert_eq!(f["error"]["code"], "model_not_found");
    let after = all_messages(&app, &u.access, &conv).await;
    assert_eq!(after.len(), 4, "refused sends stored nothing");

    // Exactly 64 KiB is accepted (an error frame: it is not JSON); one byte more closes 1009.
    ws.send_text(&"x".repeat(64 * 1024)).await;
    assert_eq!(ws.recv().await["type"], "error");
    ws.send_text(&"x".repeat(64 * 1024 + 1)).await;
    let close = ws.expect_close().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Size, "1009: {close:?}");
    // A big chat.send is refused the same way.
    let mut ws = Ws::connect(&app, &u.access).await;
    ws.chat(&conv, "big", &"y".repeat(70 * 1024)).await;
    let close = ws.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
});

async fn ws_cancel(backend: Backend) {
    use questech_fake_upstream::Behavior;
    let behavior = Behavior {
        chunks: 40,
        chunk_gap: Duration::from_millis(150),
        ..Default::default()
    };
    let Some((app, fake)) = with_fake(backend, behavior, &[]).await else {
        return;
    };
    let u = app.register(&uname("cancel")).await;
    let conv = conv_id(&app, &u.access, "gpt-4o-mini").await;
    let price = price(&app, "gpt-4o-mini").await;
    assert!(price.2 > 0, "gpt-4o-mini has a per-request price");
    let mut ws = Ws::connect(&app, &u.access).await;
    ws.chat(&conv, "x-1", "tell me a long story").await;
    let (mut frames, d2) = ws
        .until(|f| f["type"] == "chat.delta" && f["index"] == 2)
        .await;
    frames.push(d2);
    ws.send(json!({"type": "chat.cancel", "conversation_id": conv}))
        .await;
    frames.extend(ws.turn(&conv).await);
    let done = frames.last().unwrap();
    assert_eq!(
        done["message"]["content"],
        deltas_text(&frames).as_str(),
        "content == delivered"
    );
    assert_eq!(
        done["type"], "chat.done",
        "a cancelled turn ends with chat.done: {done}"
    );
    let m = &done["message"];
    assert_eq!(m["status"], "cancelled");
    let content = m["content"].as_str().unwrap();
    assert!(
        content.starts_with("Hello from fake"),
        "partial content kept: {m}"
    );
    assert!(
        content.len() < "Hello from fake upstream".len() * 10,
        "cut short: {content}"
    );
    let pt = m["usage"]["prompt_tokens"].as_i64().unwrap();
    let ct = m["usage"]["completion_tokens"].as_i64().unwrap();
    assert!(pt > 0 && ct > 0, "{m}");
    let charged = cost(price, pt, ct, false);
    assert_eq!(
        m["credits_charged"], charged,
        "prompt + delivered, no per_request: {m}"
    );
    assert_eq!(done["credits"]["charged"], charged);
    assert_eq!(done["credits"]["balance"], 100 - charged);
    // What is stored is what was delivered.
    let msgs = all_messages(&app, &u.access, &conv).await;
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1], *m);
    assert_eq!(fake.request_count(), 1);
    let body = &fake.requests()[0].body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true, "{body}");
    assert_eq!(assert_credit_invariants(&app, u.uid()).await, 100 - charged);
    // The conversation takes the next turn.
    fake.update_behavior(|b| {
        b.chunks = 4;
        b.chunk_gap = Duration::ZERO;
    });
    let (s, b) = say(&app, &u.access, &conv, "again").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["assistant_message"]["seq"], 4);
    // The next request carries the cancelled partial reply as context.
    let last = fake.requests().last().unwrap().body.clone();
    let ctx: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(ctx, ["tell me a long story", content, "again"], "{last}");
}
both_backends!(
    ws_cancel_keeps_partial_and_bills_delivered,
    super::ws_cancel
);

both!(
    ws_cancel_echo,
    env = [("ECHO_DELAY_MS", "150")],
    |app| async move {
        let u = app.register(&uname("cancel2")).await;
        let conv = conv_id(&app, &u.access, "echo").await;
        let mut ws = Ws::connect(&app, &u.access).await;
        ws.chat(&conv, "x-1", LONG_PROMPT).await;
        let (mut frames, d1) = ws
            .until(|f| f["type"] == "chat.delta" && f["index"] == 1)
            .await;
        frames.push(d1);
        ws.send(json!({"type": "chat.cancel", "conversation_id": conv}))
            .await;
        frames.extend(ws.turn(&conv).await);
        let done = frames.last().unwrap();
        assert_eq!(done["type"], "chat.done", "{done}");
        assert_eq!(done["message"]["status"], "cancelled");
        let text = deltas_text(&frames);
        assert!(text.len() < LONG_PROMPT.len(), "partial: {done}");
        assert_eq!(
            done["message"]["content"],
            text.as_str(),
            "content == delivered"
        );
        let msgs = all_messages(&app, &u.access, &conv).await;
        assert_eq!(msgs[1], done["message"]);
        assert_credit_invariants(&app, u.uid()).await;
        // Cancelling with no turn in flight, or someone else's, does nothing.
        ws.send(json!({"type": "chat.cancel", "conversation_id": conv}))
            .await;
        ws.send(json!({"type": "chat.cancel", "conversation_id": "12345"}))
            .await;
        ws.send(json!({"type": "ping"})).await;
        let (between, _) = ws.until_type("pong").await;
        assert!(
            between.iter().all(|f| f["type"] == "credits.updated"),
            "nothing but the turn's credits.updated: {between:#?}"
        );
    }
);

both!(
    ws_sender_disconnects_midturn,
    env = [("ECHO_DELAY_MS", "100")],
    |app| async move {
        let u = app.register(&uname("gone")).await;
        let conv = conv_id(&app, &u.access, "echo").await;
        let mut ws = Ws::connect(&app, &u.access).await;
        ws.chat(&conv, "g-1", LONG_PROMPT).await;
        let (_, _) = ws.until(|f| f["type"] == "chat.delta").await;
        // Another device connects mid-turn: hello first (asserted by connect), then the rest.
        let mut late = Ws::connect(&app, &u.access).await;
        drop(ws); // gone without a close
        let expected = format!("Echo: {LONG_PROMPT}");
        let expected = expected.split_whitespace().collect::<Vec<_>>().join(" ");
        let frames = late.turn(&conv).await;
        let done = frames.last().unwrap();
        assert_eq!(done["type"], "chat.done", "{frames:#?}");
        assert_eq!(done["message"]["content"], expected.as_str());
        let deltas: Vec<&Value> = frames
            .iter()
            .filter(|f| f["type"] == "chat.delta")
            .collect();
        assert!(
            !deltas.is_empty(),
            "the late device saw the rest of the turn"
        );
        let first = deltas[0]["index"].as_u64().unwrap();
        for (i, d) in deltas.iter().enumerate() {
            assert_eq!(d["index"], first + i as u64, "in order, no gap");
        }
        let tail: String = deltas
            .iter()
            .map(|d| d["delta"].as_str().unwrap())
            .collect();
        assert!(expected.ends_with(&tail), "{tail:?}");
        let token = u.access.clone();
        let msgs = eventually(Duration::from_secs(20), "the turn is stored", || {
            let (app, token, conv) = (&app, token.clone(), conv.clone());
            async move {
                let m = all_messages(app, &token, &conv).await;
                (m.len() == 2 && m[1]["status"] != "streaming").then_some(m)
            }
        })
        .await;
        assert_eq!(msgs[1]["status"], "complete", "{msgs:#?}");
        assert_eq!(msgs[1]["content"], expected.as_str());
        // Reconnect and sync: the whole turn is there.
        let mut ws = Ws::connect(&app, &u.access).await;
        ws.send(json!({"type": "conversation.sync", "conversation_id": conv, "after_seq": 0}))
            .await;
        let (got, done) = ws.until_type("sync.done").await;
        // The turn's `credits.updated` may still be on its way to the new socket.
        let got: Vec<Value> = got.into_iter().filter(|f| f["type"] == "message").collect();
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!(got[0]["message"]["client_msg_id"], "g-1");
        assert_eq!(got[1]["message"]["content"], expected.as_str());
        assert_eq!(done["last_seq"], 2);
        assert_credit_invariants(&app, u.uid()).await;
    }
);

both!(
    ws_one_turn_at_a_time,
    env = [("ECHO_DELAY_MS", "100")],
    |app| async move {
        let u = app.register(&uname("busy")).await;
        let conv = conv_id(&app, &u.access, "echo").await;
        let mut ws = Ws::connect(&app, &u.access).await;
        ws.chat(&conv, "b-1", LONG_PROMPT).await;
        let (_, ack) = ws.until_type("chat.ack").await;
        assert_eq!(ack["message"]["seq"], 1);
        ws.chat(&conv, "b-2", "me too").await;
        let (_, err) = ws.until_type("chat.error").await;
        assert_eq!(err["id"], "b-2", "{err}");
        assert_eq!(err["conversation_id"], conv.as_str());
        assert_eq!(err["error"]["code"], "conversation_busy", "{err}");
        let (s, b) = say(&app, &u.access, &conv, "rest too").await;
        assert_error(s, &b, StatusCode::CONFLICT, "conversation_busy");
        // Another conversation is not blocked.
        let other = conv_id(&app, &u.access, "echo").await;
        let (s, b) = say(&app, &u.access, &other, "elsewhere").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let frames = ws.turn(&conv).await;
        assert_eq!(frames.last().unwrap()["type"], "chat.done", "{frames:#?}");
        // The refused sends took no seq: the next turn is 3/4.
        ws.chat(&conv, "b-3", "now").await;
        let frames = ws.turn(&conv).await;
        check_turn(&frames, &conv, "b-3", "now", 3);
        let msgs = all_messages(&app, &u.access, &conv).await;
        assert_eq!(msgs.len(), 4);
        assert_gap_free(&msgs);
        assert_credit_invariants(&app, u.uid()).await;
    }
);

both!(ws_credits_updated_on_admin_grant, |app| async move {
    let u = app.register(&uname("granted")).await;
    let admin_name = uname("boss");
    app.register(&admin_name).await;
    let admin = app.make_admin(&admin_name).await;
    let mut ws = Ws::connect(&app, &u.access).await;
    let (s, _, b) = app
        .post(
            &format!("/admin/users/{}/credits", u.id),
            Some(&admin.access),
            Some(json!({"delta": 50, "reason": "welcome gift"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let f = ws.recv().await;
    assert_eq!(f["type"], "credits.updated", "{f}");
    assert_eq!(f["balance"], 150);
    assert_eq!(f["delta"], 50);
    assert!(f["reason"].is_string());
    let (s, _, b) = app
        .post(
            &format!("/admin/users/{}/credits", u.id),
            Some(&admin.access),
            Some(json!({"delta": -30, "reason": "correction"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let f = ws.recv().await;
    assert_eq!(
        (f["balance"].clone(), f["delta"].clone()),
        (json!(120), json!(-30))
    );
    assert_eq!(assert_credit_invariants(&app, u.uid()).await, 120);
});

mod two_nodes {
    use super::*;

    mysql_only!(
        cancel_from_another_node,
        env = [("ECHO_DELAY_MS", "150")],
        |app| async move {
            let node_b = app.spawn_node(&[]).await;
            let name = uname("xcancel");
            let u = app.register(&name).await;
            let device_b = node_b.login(&name, PASSWORD).await;
            let conv = conv_id(&app, &u.access, "echo").await;
            let mut on_a = Ws::connect(&app, &u.access).await;
            let mut on_b = Ws::connect(&node_b, &device_b.access).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let long = vec!["word"; 60].join(" ");
            on_a.chat(&conv, "x-1", &long).await;
            // The turn runs on node A; node B sees it and cancels it.
            on_b.until_type("chat.delta").await;
            on_b.send(json!({"type": "chat.cancel", "conversation_id": conv}))
                .await;
            let (_, done) = on_a.until_type("chat.done").await;
            assert_eq!(done["message"]["status"], "cancelled", "{done}");
            let text = done["message"]["content"].as_str().unwrap();
            assert!(text.len() < "Echo: ".len() + long.len(), "partial: {text}");
            assert_credit_invariants(&app, u.uid()).await;
        }
    );

    // Turns of one conversation arriving through alternating nodes: each node's model sees
    // every stored turn, exactly what one node alone would send (issue 13: node A used to send
    // the history it had cached at its first turn).
    mysql_only!(context_is_fresh_across_nodes, |app| async move {
        let node_b = app.spawn_node(&[]).await;
        let name = uname("fresh");
        let u = app.register(&name).await;
        let on_b = node_b.login(&name, PASSWORD).await;
        let mixed = conv_id(&app, &u.access, "echo").await;
        let alone = conv_id(&app, &u.access, "echo").await;
        let script = [
            "first words",
            "second, longer words here",
            "third",
            "fourth turn",
            "five",
        ];
        let route = [0, 1, 0, 1, 0];
        let mut prompts = (Vec::new(), Vec::new());
        for (i, text) in script.iter().enumerate() {
            let (node, token) = if route[i] == 0 {
                (&app, &u.access)
            } else {
                (&node_b, &on_b.access)
            };
            let (s, r) = say(node, token, &mixed, text).await;
            assert_eq!(s, StatusCode::OK, "{r}");
            prompts
                .0
                .push(r["assistant_message"]["usage"]["prompt_tokens"].clone());
            let (s, r) = say(&app, &u.access, &alone, text).await;
            assert_eq!(s, StatusCode::OK, "{r}");
            prompts
                .1
                .push(r["assistant_message"]["usage"]["prompt_tokens"].clone());
        }
        assert_eq!(
            prompts.0, prompts.1,
            "prompt tokens per turn, mixed nodes vs one node"
        );
        let msgs = all_messages(&app, &u.access, &mixed).await;
        assert_gap_free(&msgs);
        assert_eq!(msgs.len(), 10);
        assert_credit_invariants(&app, u.uid()).await;
    });

    mysql_only!(socket_on_b_sees_turn_on_a, |app| async move {
        let node_b = app.spawn_node(&[]).await;
        let name = uname("nodes");
        let u = app.register(&name).await;
        let device_b = node_b.login(&name, PASSWORD).await;
        let conv = conv_id(&app, &u.access, "echo").await;
        let mut on_a = Ws::connect(&app, &u.access).await;
        let mut on_b = Ws::connect(&node_b, &device_b.access).await;
        // Let node B's subscription settle.
        tokio::time::sleep(Duration::from_millis(300)).await;

        on_a.chat(&conv, "n-1", "across the nodes").await;
        let fa = on_a.turn(&conv).await;
        let done_a = check_turn(&fa, &conv, "n-1", "across the nodes", 1);
        let fb = on_b.turn(&conv).await;
        let done_b = check_turn(&fb, &conv, "n-1", "across the nodes", 1);
        assert_eq!(done_a, done_b);
        let (_, cu) = on_b.until_type("credits.updated").await;
        assert_eq!(cu["balance"], done_a["credits"]["balance"]);

        // And the other way round, over REST on node B.
        let (s, r) = say(&node_b, &device_b.access, &conv, "back again").await;
        assert_eq!(s, StatusCode::OK, "{r}");
        let fa = on_a.turn(&conv).await;
        assert_eq!(fa.last().unwrap()["message"], r["assistant_message"]);
        let deltas = fa.iter().filter(|f| f["type"] == "chat.delta").count();
        assert!(deltas >= 3, "node A saw node B's deltas: {fa:#?}");
        // An admin grant on node B reaches node A's socket.
        let admin_name = uname("nboss");
        app.register(&admin_name).await;
        let admin = app.make_admin(&admin_name).await;
        let (s, _, b) = node_b
            .post(
                &format!("/admin/users/{}/credits", u.id),
                Some(&admin.access),
                Some(json!({"delta": 7, "reason": "cross-node"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (_, cu) = on_a
            .until(|f| f["type"] == "credits.updated" && f["delta"] == 7)
            .await;
        assert_eq!(cu["balance"], b["balance"]);
        let msgs = all_messages(&app, &u.access, &conv).await;
        assert_gap_free(&msgs);
        assert_eq!(msgs.len(), 4);
        assert_credit_invariants(&app, u.uid()).await;
    });
}

// A device that stops reading is disconnected once its queue fills (bounded memory, no task stuck
// on it); the turns it missed are stored, and the user's devices keep working.
both!(
    slow_reader_is_disconnected,
    env = [("ECHO_DELAY_MS", "0")],
    |app| async move {
        let ws_count = |app: &TestApp| app.state.engine.snapshot().websocket_connections;
        let u = app.register(&uname("slow")).await;
        // Long replies: let echo answer up to 20 000 tokens, and give the user the credits for it.
        let boss = uname("slowboss");
        app.register(&boss).await;
        let admin = app.make_admin(&boss).await;
        let (s, _, b) = app
            .patch(
                "/admin/models/echo",
                Some(&admin.access),
                Some(json!({"context_window": 100000, "max_output_tokens": 20000})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, _, b) = app
            .post(
                &format!("/admin/users/{}/credits", u.id),
                Some(&admin.access),
                Some(json!({"delta": 100000, "reason": "long replies"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        // The slow device: a tiny receive window, a handshake, then it never reads again.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let tcp = sock.connect(app.addr).await.unwrap();
        let url = format!("ws://{}/ws?token={}", app.addr, u.access);
        let (slow, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        eventually(Duration::from_secs(5), "the socket attached", || {
            let app = &app;
            async move { (ws_count(app) == 1).then_some(()) }
        })
        .await;
        // Four long turns at once over REST: 64 000 deltas, about 11 MB of frames for the socket —
        // more than the kernel buffers of a reader with a 4 KiB window can hide.
        let words = vec!["a"; 15_900].join(" ");
        let mut convs = vec![];
        for _ in 0..4 {
            convs.push(conv_id(&app, &u.access, "echo").await);
        }
        let turns = convs.iter().map(|c| say(&app, &u.access, c, &words));
        for (s, r) in futures::future::join_all(turns).await {
            assert_eq!(s, StatusCode::OK, "{r}");
            assert_eq!(r["assistant_message"]["status"], "complete");
        }
        // The slow socket was dropped by the server, not left holding a growing queue.
        eventually(Duration::from_secs(10), "slow socket disconnected", || {
            let app = &app;
            async move { (ws_count(app) == 0).then_some(()) }
        })
        .await;
        drop(slow);
        // The frames of those turns still queued in the user's session actor go to whichever
        // socket is attached; a new device that arrived before they drained would get a flood
        // it reads no faster than the slow one. Let the mailbox drain first.
        eventually(Duration::from_secs(30), "session mailbox drained", || {
            let app = &app;
            async move { (app.state.engine.snapshot().mailbox.max_depth == 0).then_some(()) }
        })
        .await;
        // The user's next device works as usual.
        let mut next = Ws::connect(&app, &u.access).await;
        let c = conv_id(&app, &u.access, "echo").await;
        next.chat(&c, "after-slow", "still here").await;
        let frames = next.turn(&c).await;
        check_turn(&frames, &c, "after-slow", "still here", 1);
        assert_credit_invariants(&app, u.uid()).await;
    }
);
