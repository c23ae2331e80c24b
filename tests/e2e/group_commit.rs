//! Group commit (`storage::writer`): many operations share one transaction, each is answered only
//! after it committed, one failing operation fails alone, and retried settlements never charge
//! twice. Driven through the server's own storage API on a real database (and, for the load
//! case, through `/v1` with real HTTP clients and the fake upstream).

use futures::future::join_all;
use questech::storage::{chat, ledger, usage, Db};
use questech_engine::events::{MsgUsage, StoredMessage};
use questech_engine::meter::TurnStatus;
use questech_engine::ports::{BeginOutcome, BeginTurn, FinishTurn, SettleCall};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::atomic::Ordering;

use crate::common::*;
use crate::wsclient::*;

async fn reserved(db: &Db, user_id: i64) -> i64 {
    sqlx::query_scalar("SELECT reserved FROM users WHERE id = ?")
        .bind(user_id)
        .fetch_one(&db.write)
        .await
        .unwrap()
}

async fn credits(db: &Db, user_id: i64) -> i64 {
    let (credits, sum) = ledger::balance_check(db, user_id).await.unwrap();
    assert_eq!(
        credits, sum,
        "user {user_id}: credits must equal the ledger's sum"
    );
    credits
}

async fn users(app: &TestApp, n: usize, grant: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = app.register(&uname("gc")).await.uid();
        ledger::adjust(&app.state.db, id, grant, "grant", None, None)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

fn settle(user_id: i64, reservation_id: i64, charge: i64, ref_id: &str) -> SettleCall {
    SettleCall {
        user_id,
        reservation_id,
        reserved: 10,
        charge,
        ledger_reason: "api",
        usage_kind: "v1",
        ref_id: ref_id.to_owned(),
        model: "m".into(),
        api_key_id: None,
        prompt_tokens: 1,
        completion_tokens: 2,
        latency_ms: 3,
        status: TurnStatus::Complete,
    }
}

both!(
    concurrent_settlements_share_commits_and_charge_once,
    |app| async move {
        let db = app.state.db.clone();
        let ids = users(&app, 16, 100).await;
        let before: Vec<i64> = join_all(ids.iter().map(|&id| credits(&db, id))).await;
        let stats = db.writer.stats();
        let (commits0, ops0) = (
            stats.commits.load(Ordering::Relaxed),
            stats.batched_ops.load(Ordering::Relaxed),
        );

        // Every user reserves 10, all at once.
        let reservations: Vec<i64> = join_all(
            ids.iter()
                .map(|&id| usage::reserve(&db, id, 10, "gc-node", "call", 60_000)),
        )
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("100 credits cover 10"))
        .collect();
        for &id in &ids {
            assert_eq!(reserved(&db, id).await, 10);
        }

        // Every user settles at 3, all at once; the first user's settlement is sent twice (a retry
        // after an unknown commit outcome): it is charged once.
        let refs: Vec<String> = ids.iter().map(|id| format!("call-{id}")).collect();
        let mut settles: Vec<SettleCall> = ids
            .iter()
            .zip(&reservations)
            .zip(&refs)
            .map(|((&id, &r), rf)| settle(id, r, 3, rf))
            .collect();
        settles.push(settle(ids[0], reservations[0], 3, &refs[0]));
        let settled: Vec<usage::Settled> = join_all(settles.iter().map(|s| usage::settle(&db, s)))
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let first_user: i64 = settled[0].charged + settled[ids.len()].charged;
        assert_eq!(
            first_user, 3,
            "a settlement sent twice charges once: {settled:?}"
        );
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(credits(&db, id).await, before[i] - 3, "user {i}");
            assert_eq!(
                reserved(&db, id).await,
                0,
                "user {i}: nothing stays reserved"
            );
            let (rows, total) = usage::list(&db, id, questech::storage::Page::new(None, None))
                .await
                .unwrap();
            assert_eq!(total, 1, "user {i}: one usage row per call");
            assert_eq!(rows[0].credits, 3);
        }
        let commits = stats.commits.load(Ordering::Relaxed) - commits0;
        let ops = stats.batched_ops.load(Ordering::Relaxed) - ops0;
        assert_eq!(
            ops,
            2 * ids.len() as u64 + 1,
            "every operation was answered from a commit"
        );
        assert!(
            commits < ops,
            "operations sent at once share commits: {ops} operations in {commits} commits"
        );
    }
);

fn message(id: i64, conversation_id: i64, role: &str, text: &str) -> StoredMessage {
    StoredMessage {
        id,
        conversation_id,
        seq: 0,
        role: role.into(),
        content: text.into(),
        status: "complete".into(),
        model: "gpt-4o-mini".into(),
        usage: MsgUsage {
            prompt_tokens: 4,
            completion_tokens: 5,
        },
        credits_charged: 0,
        client_msg_id: None,
        created_at: questech::time::now_ms(),
        attachments: Vec::new(),
        extra: None,
    }
}

fn begin(user_id: i64, conversation_id: i64, turn_id: i64, msg: StoredMessage) -> BeginTurn {
    BeginTurn {
        conversation_id,
        user_id,
        turn_id,
        node_id: "gc-node".into(),
        user_message: msg,
        reserve: 10,
        lock_ms: 60_000,
    }
}

both!(
    one_failing_turn_fails_alone_and_finishes_are_idempotent,
    |app| async move {
        let db = app.state.db.clone();
        let name = uname("gcturn");
        let u = app.register(&name).await;
        let uid = u.uid();
        ledger::adjust(&db, uid, 1_000, "grant", None, None)
            .await
            .unwrap();
        let start = credits(&db, uid).await;
        let mut convs = Vec::new();
        for _ in 0..8 {
            convs.push(
                conv_id(&app, &u.access, "echo")
                    .await
                    .parse::<i64>()
                    .unwrap(),
            );
        }
        // A message id already stored, reused below so that one insert of the batch must fail.
        let taken = questech::ids::next_id();
        let first = chat::begin_turn(
            &db,
            begin(uid, convs[0], 1, message(taken, convs[0], "user", "hi")),
        )
        .await
        .unwrap();
        assert!(matches!(first, BeginOutcome::Started { .. }));
        let first_reservation = match first {
            BeginOutcome::Started { reservation_id, .. } => reservation_id,
            _ => unreachable!(),
        };

        let turns: Vec<BeginTurn> = convs[1..]
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let id = if i == 3 {
                    taken
                } else {
                    questech::ids::next_id()
                };
                begin(uid, c, 100 + i as i64, message(id, c, "user", "hello"))
            })
            .collect();
        let outcomes = join_all(turns.into_iter().map(|t| chat::begin_turn(&db, t))).await;
        let mut started = Vec::new();
        for (i, o) in outcomes.into_iter().enumerate() {
            let c = convs[i + 1];
            if i == 3 {
                assert!(o.is_err(), "the turn reusing a stored message id fails");
                let (seq, turn): (i64, Option<i64>) =
                    sqlx::query_as("SELECT last_seq, turn_id FROM conversations WHERE id = ?")
                        .bind(c)
                        .fetch_one(&db.write)
                        .await
                        .unwrap();
                assert_eq!(
                    (seq, turn),
                    (0, None),
                    "the failed turn left nothing behind"
                );
                continue;
            }
            match o.unwrap() {
                BeginOutcome::Started {
                    user_message,
                    reservation_id,
                } => {
                    assert_eq!(user_message.seq, 1);
                    started.push((c, 100 + i as i64, reservation_id));
                }
                _ => panic!("turn {i} should have started"),
            }
        }
        assert_eq!(started.len(), 6);
        assert_eq!(
            reserved(&db, uid).await,
            7 * 10,
            "seven turns hold their reservations"
        );

        // Finish every turn at once; the first conversation's finish is sent twice.
        let mut finishes = vec![(convs[0], 1, first_reservation)];
        finishes.extend(started.iter().copied());
        let assistant_ids: Vec<i64> = finishes.iter().map(|_| questech::ids::next_id()).collect();
        let finish = |i: usize| {
            let (c, turn, res) = finishes[i];
            FinishTurn {
                conversation_id: c,
                user_id: uid,
                turn_id: turn,
                reservation_id: res,
                reserved: 10,
                assistant: message(assistant_ids[i], c, "assistant", "answer"),
                charge: 4,
                latency_ms: 1,
            }
        };
        let mut all: Vec<FinishTurn> = (0..finishes.len()).map(finish).collect();
        all.push(finish(0));
        let done = join_all(all.into_iter().map(|t| chat::finish_turn(&db, t))).await;
        let done: Vec<_> = done.into_iter().map(|r| r.unwrap()).collect();
        for d in &done {
            assert_eq!(d.assistant.seq, 2);
            assert_eq!(d.charged, 4);
        }
        assert_eq!(done[0].assistant.id, done[finishes.len()].assistant.id);
        assert_eq!(reserved(&db, uid).await, 0);
        assert_eq!(
            credits(&db, uid).await,
            start - 7 * 4,
            "seven turns charged once each"
        );
        let stored: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE conversation_id = ?")
                .bind(convs[0])
                .fetch_one(&db.write)
                .await
                .unwrap();
        assert_eq!(stored, 2, "the repeated finish stored no second reply");
    }
);

async fn v1_burst(backend: Backend) {
    let env = [("USER_RPM", "0"), ("USER_MAX_INFLIGHT", "0")];
    let Some((node, _fake)) = with_fake(backend, Default::default(), &env).await else {
        return;
    };
    let db = node.state.db.clone();
    let mut tokens = Vec::new();
    for _ in 0..8 {
        let u = node.register(&uname("gcv1")).await;
        ledger::adjust(&db, u.uid(), 10_000, "grant", None, None)
            .await
            .unwrap();
        tokens.push((u.uid(), u.access));
    }
    let before: Vec<i64> = join_all(tokens.iter().map(|(id, _)| credits(&db, *id))).await;
    let calls = join_all((0..64).map(|i| {
        let (_, token) = &tokens[i % tokens.len()];
        node.post(
            "/v1/chat/completions",
            Some(token),
            Some(json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": format!("call {i}")}],
            })),
        )
    }))
    .await;
    for (s, _, b) in &calls {
        assert_eq!(*s, StatusCode::OK, "{b}");
    }
    for (i, (id, _)) in tokens.iter().enumerate() {
        let (rows, total) = usage::list(&db, *id, questech::storage::Page::new(None, Some(100)))
            .await
            .unwrap();
        assert_eq!(total, 8, "user {i}: one usage row per call");
        let charged: i64 = rows.iter().map(|r| r.credits).sum();
        assert!(charged > 0);
        assert_eq!(credits(&db, *id).await, before[i] - charged);
        assert_eq!(reserved(&db, *id).await, 0);
    }
}
both_backends!(
    v1_burst_every_call_answered_and_billed_once,
    super::v1_burst
);
