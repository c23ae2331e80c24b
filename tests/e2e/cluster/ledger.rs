//! Issue 13 defect 3: settlements of one user on several nodes at once, with admin grants in
//! between. `GET /user/credits/ledger` lists newest first by `seq` (1, 2, 3… in commit order),
//! and each row's `balance_after` is the previous row's plus its `delta`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use super::Cluster;
use crate::common::uname;

const CONVERSATIONS: usize = 6;
const TURNS_EACH: usize = 4;
const GRANTS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_in_commit_order_with_settlements_on_every_node() {
    let Some(c) = Cluster::start().await else {
        return;
    };
    let t = Instant::now();
    // Turns long enough to overlap on the nodes.
    c.set_behavior(|b| b.chunk_gap = Duration::from_millis(15));
    let u = c.register(&uname("led")).await;
    let adm = c.register(&uname("ledadm")).await;
    let adm = c.app.make_admin(&adm.username).await;
    let mut convs = Vec::new();
    for _ in 0..CONVERSATIONS {
        convs.push(c.conversation(&u.access).await);
    }

    let turns = convs.iter().map(|conv| {
        let (c, token) = (&c, u.access.clone());
        async move {
            for k in 0..TURNS_EACH {
                let path = format!("/chat/conversations/{conv}/messages");
                let body = json!({ "content": format!("settle {k}") });
                let (s, _, b) = c.post(&path, Some(&token), Some(body)).await;
                assert_eq!(s, StatusCode::OK, "turn {k} of {conv}: {b}");
            }
        }
    });
    let grants = async {
        for g in 0..GRANTS {
            let path = format!("/admin/users/{}/credits", u.id);
            let body = json!({ "delta": g as i64 + 1, "reason": "cluster test" });
            let (s, _, b) = c.post(&path, Some(&adm.access), Some(body)).await;
            assert_eq!(s, StatusCode::OK, "grant {g}: {b}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::join!(futures::future::join_all(turns), grants);

    let per_node: Vec<usize> = (0..c.len())
        .map(|i| c.upstream(i).request_count())
        .collect();
    assert_eq!(per_node.iter().sum::<usize>(), CONVERSATIONS * TURNS_EACH);
    assert!(
        per_node.iter().all(|&n| n > 0),
        "every node settled turns: {per_node:?}"
    );

    let (s, _, page) = c
        .get("/user/credits/ledger?page_size=100", Some(&u.access))
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let items = page["items"].as_array().expect("items");
    let expected = 1 + GRANTS + CONVERSATIONS * TURNS_EACH;
    assert_eq!(
        page["total"], expected as i64,
        "signup, grants, one row per turn"
    );
    assert_eq!(items.len(), expected);
    // Newest first: seq total, total-1, … 1; oldest first each balance follows from the last.
    let mut balance = 0;
    for (i, row) in items.iter().rev().enumerate() {
        assert_eq!(row["seq"], i as i64 + 1, "seq in list order: {row}");
        balance += row["delta"].as_i64().expect("delta");
        assert_eq!(
            row["balance_after"],
            balance,
            "balance_after == previous + delta at seq {}: {items:#?}",
            i + 1
        );
    }
    let chat_rows = items.iter().filter(|r| r["reason"] == "chat").count();
    assert_eq!(chat_rows, CONVERSATIONS * TURNS_EACH, "one charge per turn");
    let (s, _, me) = c.get("/user/me", Some(&u.access)).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(
        me["credits"], balance,
        "the newest balance_after is the balance"
    );

    let sum = c.invariants().await;
    assert_eq!(sum.charged_messages, (CONVERSATIONS * TURNS_EACH) as i64);
    eprintln!("cluster ledger: per node {per_node:?}, {:?}", t.elapsed());
}
