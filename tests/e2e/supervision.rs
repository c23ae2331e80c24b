//! Supervision (SPEC §1): a conversation actor that crashes mid-turn is restarted and rebuilds
//! itself from the database; the client sees an error for the lost turn (never a silent hang),
//! its reservation is released, and the conversation goes on gap-free. Idle actors stop and start
//! again on the next message.

use std::time::Duration;

use futures::StreamExt;
use questech_fake_upstream::Behavior;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;
use crate::wsclient::*;

async fn poison_midturn(backend: Backend) {
    let Some((app, fake)) = with_fake(backend, Behavior::default(), &[]).await else {
        return;
    };
    let u = app.register(&uname("crash")).await;
    let conv = conv_id(&app, &u.access, "gpt-4o-mini").await;
    let cid: i64 = conv.parse().unwrap();
    let (s, b) = say(&app, &u.access, &conv, "alpha").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let before = app.state.engine.snapshot().restarts.conversation;

    // A slow turn, streamed over SSE; another device watches over the WebSocket.
    fake.update_behavior(|b| {
        b.chunks = 40;
        b.chunk_gap = Duration::from_millis(200);
    });
    let mut ws = Ws::connect(&app, &u.access).await;
    let res = app
        .client
        .post(app.url(&format!("/chat/conversations/{conv}/messages")))
        .bearer_auth(&u.access)
        .json(&json!({"content": "beta", "stream": true, "client_msg_id": "lost"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (_, _) = ws.until(|f| f["type"] == "chat.delta").await;
    assert!(
        reserved(&app, u.uid()).await > 0,
        "the turn holds a reservation"
    );

    assert!(
        app.state.engine.poison_conversation(cid),
        "the conversation's actor is running"
    );

    // The watching device gets chat.error for the lost turn.
    let (_, err) = ws
        .until(|f| f["type"] == "chat.error" || f["type"] == "chat.done")
        .await;
    assert_eq!(err["type"], "chat.error", "{err}");
    assert_eq!(err["conversation_id"], conv.as_str());
    assert!(err["error"]["code"].is_string(), "{err}");
    // So does the SSE requester: its stream ends with chat.error, not silence.
    let mut body = String::new();
    let mut stream = res.bytes_stream();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await;
    assert!(read.is_ok(), "the SSE stream ended: {body}");
    let events = parse_sse(&body);
    assert_eq!(events.first().unwrap().0, "chat.ack");
    assert_eq!(
        events.last().unwrap().0,
        "chat.error",
        "the lost turn ends with chat.error: {events:?}"
    );

    // Released and restarted; the lost turn's upstream request is stopped too (it would
    // otherwise hold a pool slot for 8 more seconds).
    let uid = u.uid();
    eventually(Duration::from_secs(10), "reservation released", || {
        let app = &app;
        async move { (reserved(app, uid).await == 0).then_some(()) }
    })
    .await;
    eventually(
        Duration::from_secs(3),
        "the lost turn's upstream stops",
        || async {
            let snap = app.state.engine.snapshot();
            let openai = snap.llm.iter().find(|p| p.provider == "openai").unwrap();
            (openai.in_flight == 0).then_some(())
        },
    )
    .await;
    let snap = app.state.engine.snapshot();
    assert_eq!(snap.restarts.conversation, before + 1, "{snap:?}");
    assert_eq!(snap.restarts.user_session, 0);

    // The next turn works, gap-free, with the context rebuilt from the database.
    fake.update_behavior(|b| {
        b.chunks = 4;
        b.chunk_gap = Duration::ZERO;
    });
    let (s, b) = say(&app, &u.access, &conv, "gamma").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["assistant_message"]["status"], "complete");
    let msgs = all_messages(&app, &u.access, &conv).await;
    assert_gap_free(&msgs);
    let roles: Vec<(&str, &str)> = msgs
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(roles[0], ("user", "alpha"), "{roles:?}");
    assert_eq!(roles[2], ("user", "beta"), "{roles:?}");
    assert_eq!(
        *roles.last().unwrap(),
        ("assistant", "Hello from fake upstream")
    );
    assert!(
        msgs.iter().all(|m| m["status"] != "streaming"),
        "nothing left streaming: {msgs:#?}"
    );
    let last = fake.requests().last().unwrap().body.clone();
    let ctx: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        ctx.first(),
        Some(&"alpha"),
        "earlier turns in context: {last}"
    );
    assert!(ctx.contains(&"Hello from fake upstream"), "{last}");
    assert_eq!(ctx.last(), Some(&"gamma"), "{last}");
    // Nothing was charged for the lost turn.
    let (_, _, l) = app.get("/user/credits/ledger", Some(&u.access)).await;
    let chat_rows = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "chat")
        .count();
    assert_eq!(chat_rows, 2, "alpha and gamma only: {l}");
    assert_credit_invariants(&app, u.uid()).await;
    // The watching socket still works.
    ws.send(json!({"type": "ping"})).await;
    let (_, pong) = ws.until_type("pong").await;
    assert_eq!(pong, json!({"type": "pong"}));
}
both_backends!(crashed_conversation_restarts, super::poison_midturn);

both!(
    idle_actors_stop_and_restart,
    env = [("ACTOR_IDLE_SECS", "1")],
    |app| async move {
        let u = app.register(&uname("idle")).await;
        let conv = conv_id(&app, &u.access, "echo").await;
        let cid: i64 = conv.parse().unwrap();
        let (s, b) = say(&app, &u.access, &conv, "wake up").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let engine = &app.state.engine;
        assert!(engine.runs_conversation(cid));
        assert!(engine.runs_user(u.uid()));
        eventually(Duration::from_secs(6), "idle actors stop", || async {
            (!engine.runs_conversation(cid) && !engine.runs_user(u.uid())).then_some(())
        })
        .await;
        let snap = app.state.engine.snapshot();
        assert_eq!(snap.actors.conversation, 0, "{snap:?}");
        assert_eq!(snap.actors.user_session, 0, "{snap:?}");
        assert_eq!(snap.restarts.conversation, 0, "an idle stop is no restart");
        // The next message starts them again.
        let (s, b) = say(&app, &u.access, &conv, "again").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["user_message"]["seq"], 3);
        assert_eq!(b["assistant_message"]["content"], "Echo: again");
        assert!(engine.runs_conversation(cid));

        // A connected device keeps its user's session alive past the idle time.
        let mut ws = Ws::connect(&app, &u.access).await;
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(engine.runs_user(u.uid()), "kept alive by the socket");
        let (s, b) = say(&app, &u.access, &conv, "still here").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let frames = ws.turn(&conv).await;
        assert_eq!(frames.last().unwrap()["message"], b["assistant_message"]);
        assert_gap_free(&all_messages(&app, &u.access, &conv).await);
        assert_credit_invariants(&app, u.uid()).await;
    }
);

both!(
    crash_without_a_turn_loses_nothing,
    env = [("USER_MAX_INFLIGHT", "1"), ("ECHO_DELAY_MS", "100")],
    |app| async move {
        let u = app.register(&uname("calm")).await;
        let idle = conv_id(&app, &u.access, "echo").await;
        let busy = conv_id(&app, &u.access, "echo").await;
        let third = conv_id(&app, &u.access, "echo").await;
        let (s, b) = say(&app, &u.access, &idle, "warm up").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let mut ws = Ws::connect(&app, &u.access).await;
        ws.chat(
            &busy,
            "k-1",
            "one two three four five six seven eight nine ten eleven twelve",
        )
        .await;
        let (_, _) = ws.until(|f| f["type"] == "chat.delta").await;
        // The idle conversation's actor crashes: it had no turn, so nothing is undone — in
        // particular not the other conversation's in-flight slot, nor anyone's error frame.
        assert!(
            app.state.engine.poison_conversation(idle.parse().unwrap()),
            "idle actor still running"
        );
        eventually(Duration::from_secs(5), "restart counted", || async {
            (app.state.engine.snapshot().restarts.conversation == 1).then_some(())
        })
        .await;
        let (s, b) = say(&app, &u.access, &third, "squeeze in").await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let (frames, end) = ws
            .until(|f| {
                f["conversation_id"] == busy.as_str()
                    && (f["type"] == "chat.done" || f["type"] == "chat.error")
            })
            .await;
        assert_eq!(end["type"], "chat.done", "{end}");
        assert!(
            frames.iter().all(|f| f["type"] != "chat.error"),
            "no error for a turn that was not lost: {frames:#?}"
        );
        // The crashed conversation carries on.
        let (s, b) = say(&app, &u.access, &idle, "still fine").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["user_message"]["seq"], 3);
        assert_credit_invariants(&app, u.uid()).await;
    }
);
