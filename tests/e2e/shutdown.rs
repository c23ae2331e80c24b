//! Graceful shutdown (SPEC §12): SIGTERM during a streaming turn. The real binary runs as a
//! child process over an SQLite file; after it exits, the test opens the same database and checks
//! what was stored and that nothing is left reserved.

use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

struct Server {
    child: tokio::process::Child,
    base: String,
    db_url: String,
}

async fn start(grace: &str, echo_delay_ms: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("qt-e2e-shutdown-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let db_url = format!("sqlite://{}/q.db", dir.display());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_questech"))
        .current_dir(&dir)
        .env_clear()
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &db_url)
        .env("DATA_DIR", dir.join("data"))
        .env("BCRYPT_COST", "4")
        .env("SHUTDOWN_GRACE_SECS", grace)
        .env("ECHO_DELAY_MS", echo_delay_ms)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn questech");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            return Server {
                child,
                base,
                db_url,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not come up");
}

/// Registers a user, opens a conversation and a socket, and sends a turn; returns the socket
/// after the first delta arrived, with the conversation id.
async fn turn_in_flight(
    s: &Server,
    words: usize,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
    String,
) {
    let c = reqwest::Client::new();
    let reg: Value = c
        .post(format!("{}/user/register", s.base))
        .json(&json!({"username": format!("sd{:x}", rand::random::<u32>()), "password": "password-123"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = reg["tokens"]["access_token"].as_str().unwrap().to_owned();
    let conv: Value = c
        .post(format!("{}/chat/conversations", s.base))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conv_id = conv["id"].as_str().unwrap().to_owned();
    let ws_url = format!("{}/ws?token={}", s.base.replace("http", "ws"), token);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let content = vec!["word"; words].join(" ");
    ws.send(Message::text(
        json!({"type": "chat.send", "id": "m1", "conversation_id": conv_id, "content": content})
            .to_string(),
    ))
    .await
    .unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "chat.delta" {
                break;
            }
        }
    }
    (ws, conv_id, token)
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("pid").to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Reads the close code the server sent.
async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn db_state(db_url: &str, conv_id: &str) -> (Vec<(String, String)>, i64, i64, i64) {
    let db = questech::storage::Db::connect(db_url, None).await.unwrap();
    let cid: i64 = conv_id.parse().unwrap();
    let msgs: Vec<(String, String)> =
        sqlx::query_as("SELECT role, status FROM messages WHERE conversation_id = ? ORDER BY seq")
            .bind(cid)
            .fetch_all(&db.write)
            .await
            .unwrap();
    let (uid, reserved): (i64, i64) = sqlx::query_as(
        "SELECT u.id, u.reserved FROM users u JOIN conversations c ON c.user_id = u.id WHERE c.id = ?",
    )
    .bind(cid)
    .fetch_one(&db.write)
    .await
    .unwrap();
    let (credits, sum) = questech::storage::ledger::balance_check(&db, uid)
        .await
        .unwrap();
    assert_eq!(credits, sum, "credits == sum(ledger.delta)");
    let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credit_reservations")
        .fetch_one(&db.write)
        .await
        .unwrap();
    (msgs, reserved, open, credits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_turn_finish_within_grace() {
    let mut s = start("20", "60").await;
    let (mut ws, conv_id, _) = turn_in_flight(&s, 12).await;
    sigterm(&s.child);
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::Away),
        "sockets close with 1001"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), s.child.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    let (msgs, reserved, open, _) = db_state(&s.db_url, &conv_id).await;
    assert_eq!(
        msgs,
        vec![
            ("user".into(), "complete".into()),
            ("assistant".into(), "complete".into())
        ],
        "the turn in flight finished and was stored"
    );
    assert_eq!(reserved, 0);
    assert_eq!(open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_grace_stores_the_turn_as_failed_and_releases_credits() {
    let mut s = start("1", "400").await;
    let (mut ws, conv_id, _) = turn_in_flight(&s, 40).await;
    sigterm(&s.child);
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
    let status = tokio::time::timeout(Duration::from_secs(30), s.child.wait())
        .await
        .expect("exits soon after the grace period")
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    let (msgs, reserved, open, _) = db_state(&s.db_url, &conv_id).await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[1], ("assistant".into(), "failed".into()));
    assert_eq!(reserved, 0, "nothing left reserved");
    assert_eq!(open, 0, "no open reservation rows");
}
