//! Sustained turns through nginx while one node is killed (`kill -9`) and restarted: every
//! acknowledged message is stored, turns lost with the node are stored as failed and taken over
//! by the survivors (leases of 2 s), and the books balance. A client retries what was not
//! acknowledged with the same `client_msg_id`, as the apps do.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use super::{Cluster, Options};
use crate::common::uname;

const USERS: usize = 6;
const TURNS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_survive_a_node_killed_and_restarted() {
    let opts = Options {
        env: vec![("NODE_LEASE_SECS".into(), "2".into())],
        behavior: questech_fake_upstream::Behavior {
            chunk_gap: Duration::from_millis(15),
            ..Default::default()
        },
        ..Options::default()
    };
    let Some(c) = Cluster::start_with(opts).await else {
        return;
    };
    let t0 = Instant::now();
    let mut users = Vec::new();
    for _ in 0..USERS {
        let u = c.register(&uname("fo")).await;
        let conv = c.conversation(&u.access).await;
        users.push((u, conv));
    }
    let load = futures::future::join_all(users.iter().enumerate().map(|(w, (u, conv))| {
        let c = &c;
        async move {
            let mut acked = Vec::new();
            for k in 0..TURNS {
                let id = format!("w{w}-m{k}");
                let body =
                    json!({"content": format!("message {k} of worker {w}"), "client_msg_id": id});
                let path = format!("/chat/conversations/{conv}/messages");
                let start = Instant::now();
                loop {
                    let (s, _, b) = c.post(&path, Some(&u.access), Some(body.clone())).await;
                    assert_ne!(s, StatusCode::INTERNAL_SERVER_ERROR, "{b}");
                    if s == StatusCode::OK {
                        acked.push((id.clone(), b["assistant_message"]["status"].clone()));
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "{id} never acknowledged: {s} {b}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            acked
        }
    }));
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            c.upstream(1).request_count() > 0,
            "node 1 served turns before it died"
        );
        c.kill(1).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.restart(1).await;
    };
    let (acked, ()) = tokio::join!(load, chaos);
    let mut failed = 0;
    for (w, list) in acked.iter().enumerate() {
        assert_eq!(list.len(), TURNS, "worker {w}");
        for (id, status) in list {
            let stored: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE client_msg_id = ?")
                    .bind(id)
                    .fetch_one(&c.app.state.db.write)
                    .await
                    .unwrap();
            assert_eq!(stored, 1, "acknowledged {id} is stored once");
            failed += usize::from(status == "failed");
        }
    }
    let s = c.invariants().await;
    assert_eq!(s.users, USERS, "{s:?}");
    assert!(s.messages >= (USERS * TURNS * 2) as i64, "{s:?}");
    eprintln!(
        "failover: {} turns acknowledged, {failed} stored as failed (lost with the node), {:?}",
        USERS * TURNS,
        t0.elapsed()
    );
}
