//! Admin user management (SPEC §11): search, role changes, disabling (sessions revoked, sockets
//! closed on every node), and the guards around it.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

async fn admin(app: &TestApp) -> RegisteredUser {
    let u = app.register(&uname("adm")).await;
    app.make_admin(&u.username).await
}

async fn patch_user(app: &TestApp, token: &str, id: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, b) = app
        .patch(&format!("/admin/users/{id}"), Some(token), Some(body))
        .await;
    (s, b)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws?token=` on `app` and reads the `hello` frame.
async fn open_ws(app: &TestApp, token: &str) -> Socket {
    let url = format!(
        "{}/ws?token={token}",
        app.base.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("ws connect timed out")
    .expect("ws connect");
    let hello = next_text(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    ws
}

async fn next_text(ws: &mut Socket) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("no frame within 15 s")
            .expect("socket ended")
            .expect("socket error");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).expect("frame is JSON");
        }
    }
}

/// Reads until the server closes the socket; returns the close code it sent.
async fn read_until_closed(ws: &mut Socket) -> Option<CloseCode> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the server did not close the socket within 10 s"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn usernames(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items: {list}"))
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect()
}

both!(users_search_and_pagination, |app| async move {
    let adm = admin(&app).await;
    let tag = format!("{:06x}", rand::random::<u32>() & 0xFF_FFFF);
    let a = app.register(&format!("zed_{tag}_a")).await;
    let b = app.register(&format!("zed_{tag}_b")).await;
    let c = app.register(&uname("other")).await;
    // Nickname search as well (and case-insensitive).
    let (s, _, _) = app
        .patch(
            "/user/me",
            Some(&c.access),
            Some(json!({"nickname": format!("Captain ZED{tag}")})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    let (s, _, all) = app.get("/admin/users", Some(&adm.access)).await;
    assert_eq!(s, StatusCode::OK, "{all}");
    assert_eq!(all["total"], 4, "{all}");
    assert_eq!(all["page"], 1);
    assert_eq!(all["page_size"], 20);
    let first = &all["items"][0];
    let mut expected = vec![
        "avatar_url",
        "created_at",
        "credits",
        "disabled",
        "id",
        "nickname",
        "phone_masked",
        "role",
        "username",
    ];
    expected.sort_unstable();
    assert_eq!(keys(first), expected, "admin user view: {first}");
    assert_eq!(first["disabled"], false);
    // Newest first.
    assert_eq!(
        usernames(&all),
        [
            c.username.clone(),
            b.username.clone(),
            a.username.clone(),
            adm.username.clone()
        ]
    );

    let (_, _, found) = app
        .get(&format!("/admin/users?q=ZED_{tag}"), Some(&adm.access))
        .await;
    assert_eq!(found["total"], 2, "{found}");
    assert_eq!(usernames(&found), [b.username.clone(), a.username.clone()]);
    let (_, _, nick) = app
        .get(
            &format!("/admin/users?q=captain%20zed{tag}"),
            Some(&adm.access),
        )
        .await;
    assert_eq!(usernames(&nick), [c.username.as_str()], "{nick}");
    // LIKE wildcards are plain characters.
    let (_, _, none) = app.get("/admin/users?q=%25", Some(&adm.access)).await;
    assert_eq!(none["total"], 0, "{none}");
    let (_, _, under) = app.get("/admin/users?q=_", Some(&adm.access)).await;
    assert_eq!(
        under["total"], 4,
        "every name here has an underscore: {under}"
    );

    let (_, _, p2) = app
        .get(
            &format!("/admin/users?q=zed_{tag}&page=2&page_size=1"),
            Some(&adm.access),
        )
        .await;
    assert_eq!(p2["total"], 2);
    assert_eq!(p2["page"], 2);
    assert_eq!(p2["page_size"], 1);
    assert_eq!(usernames(&p2), [a.username.as_str()]);
    let (s, _, bad) = app
        .get(
            &format!("/admin/users?q={}", "q".repeat(65)),
            Some(&adm.access),
        )
        .await;
    assert_invalid(s, &bad, "q");
    let (s, _, bad) = app.get("/admin/users?page_size=x", Some(&adm.access)).await;
    assert_error(s, &bad, StatusCode::BAD_REQUEST, "invalid_request");
});

both!(role_changes_and_guards, |app| async move {
    let adm = admin(&app).await;
    let u = app.register(&uname("u")).await;

    for (body, field) in [
        (json!({"role": "root"}), "role"),
        (json!({"role": ""}), "role"),
    ] {
        let (s, b) = patch_user(&app, &adm.access, &u.id, body).await;
        assert_invalid(s, &b, field);
    }
    let (s, b) = patch_user(&app, &adm.access, &u.id, json!({"disabled": "yes"})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    for id in ["123456789", "abc", "0"] {
        let (s, b) = patch_user(&app, &adm.access, id, json!({"disabled": true})).await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    }
    // An admin can neither disable nor demote themselves: a valid request they may not make.
    let (s, b) = patch_user(&app, &adm.access, &adm.id, json!({"disabled": true})).await;
    let msg = assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    assert!(msg.contains("disabled"), "{msg}");
    let (s, b) = patch_user(&app, &adm.access, &adm.id, json!({"role": "user"})).await;
    let msg = assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    assert!(msg.contains("role"), "{msg}");
    let (s, b) = patch_user(
        &app,
        &adm.access,
        &adm.id,
        json!({"role": "admin", "disabled": false}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "a no-op on oneself is fine: {b}");
    let (s, _, me) = app.get("/user/me", Some(&adm.access)).await;
    assert_eq!(s, StatusCode::OK, "still signed in: {me}");
    assert_eq!(me["role"], "admin");

    // Promote: the answer shows the new role; the old tokens are signed out (they carry the
    // old role), and a new login gets an admin token that works on /admin.
    let (s, b) = patch_user(&app, &adm.access, &u.id, json!({"role": "admin"})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["role"], "admin");
    assert_eq!(b["disabled"], false);
    assert_eq!(b["id"], u.id);
    let (s, h, body) = app.get("/user/me", Some(&u.access)).await;
    assert_unauthorized(s, &h, &body);
    let promoted = app.login(&u.username, PASSWORD).await;
    assert_eq!(jwt_claims(&promoted.access)["role"], "admin");
    let (s, _, list) = app.get("/admin/users", Some(&promoted.access)).await;
    assert_eq!(s, StatusCode::OK, "{list}");

    // Demote again: the admin token stops working at once (no lingering admin rights).
    let (s, b) = patch_user(&app, &adm.access, &u.id, json!({"role": "user"})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["role"], "user");
    let (s, h, body) = app.get("/admin/users", Some(&promoted.access)).await;
    assert_unauthorized(s, &h, &body);
    let again = app.login(&u.username, PASSWORD).await;
    let (s, _, body) = app.get("/admin/users", Some(&again.access)).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
});

both!(
    disabling_revokes_sessions_and_closes_sockets,
    |app| async move {
        let adm = admin(&app).await;
        let u = app.register(&uname("u")).await;
        let second = app.login(&u.username, PASSWORD).await; // another device
        let bystander = app.register(&uname("by")).await;
        let mut ws = open_ws(&app, &u.access).await;
        let mut ws2 = open_ws(&app, &second.access).await;
        let mut other_ws = open_ws(&app, &bystander.access).await;

        let (s, b) = patch_user(&app, &adm.access, &u.id, json!({"disabled": true})).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["disabled"], true);
        assert_eq!(b["role"], "user");

        // Every socket of the user is closed by the server (policy violation: 1008).
        assert_eq!(read_until_closed(&mut ws).await, Some(CloseCode::Policy));
        assert_eq!(read_until_closed(&mut ws2).await, Some(CloseCode::Policy));
        // Every token of every device gets 401; refresh fails; login is 403.
        for t in [&u.access, &second.access] {
            let (s, h, body) = app.get("/user/me", Some(t)).await;
            assert_unauthorized(s, &h, &body);
        }
        let (s, h, body) = app
            .post(
                "/user/token/refresh",
                None,
                Some(json!({"refresh_token": u.refresh})),
            )
            .await;
        assert_unauthorized(s, &h, &body);
        let (s, _, body) = app.login_raw(&u.username, PASSWORD).await;
        assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
        // A new socket with an old token is refused before the upgrade.
        let url = format!(
            "{}/ws?token={}",
            app.base.replacen("http://", "ws://", 1),
            u.access
        );
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401)
            }
            other => panic!("expected a 401 refusal, got {:?}", other.map(|_| ())),
        }
        // Other users are untouched.
        other_ws
            .send(Message::text(json!({"type": "ping"}).to_string()))
            .await
            .expect("send ping");
        assert_eq!(next_text(&mut other_ws).await["type"], "pong");
        let (s, _, _) = app.get("/user/me", Some(&bystander.access)).await;
        assert_eq!(s, StatusCode::OK);

        // The admin list shows the flag; re-enabling lets the user sign in again.
        let (_, _, found) = app
            .get(&format!("/admin/users?q={}", u.username), Some(&adm.access))
            .await;
        assert_eq!(found["items"][0]["disabled"], true, "{found}");
        let (s, b) = patch_user(&app, &adm.access, &u.id, json!({"disabled": false})).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["disabled"], false);
        let back = app.login(&u.username, PASSWORD).await;
        let (s, _, me) = app.get("/user/me", Some(&back.access)).await;
        assert_eq!(s, StatusCode::OK, "{me}");
        let (s, h, body) = app.get("/user/me", Some(&u.access)).await;
        assert_unauthorized(s, &h, &body);
    }
);

mysql_only!(disabling_closes_sockets_on_every_node, |app| async move {
    let node_b = app.spawn_node(&[]).await;
    let adm = admin(&app).await;
    let u = app.register(&uname("u")).await;
    let mut on_a = open_ws(&app, &u.access).await;
    let mut on_b = open_ws(&node_b, &u.access).await;
    let (s, b) = patch_user(&app, &adm.access, &u.id, json!({"disabled": true})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(read_until_closed(&mut on_a).await, Some(CloseCode::Policy));
    assert_eq!(
        read_until_closed(&mut on_b).await,
        Some(CloseCode::Policy),
        "the socket on the other node is closed too"
    );
    let (s, h, body) = node_b.get("/user/me", Some(&u.access)).await;
    assert_unauthorized(s, &h, &body);
    let (s, _, body) = node_b.login_raw(&u.username, PASSWORD).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
});

both!(grant_rules, |app| async move {
    let adm = app.register(&uname("gadm")).await;
    let adm = app.make_admin(&adm.username).await;
    let u = app.register(&uname("gusr")).await;
    let path = format!("/admin/users/{}/credits", u.id);
    let grant = |delta: Value| {
        let (app, path, token) = (&app, path.clone(), adm.access.clone());
        async move {
            app.post(
                &path,
                Some(&token),
                Some(json!({"delta": delta, "reason": "test"})),
            )
            .await
        }
    };
    // A whole number written as a float is that number; a fraction or zero is refused.
    let (s, _, b) = grant(json!(5.0)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["delta"].clone(), b["balance"].clone()),
        (json!(5), json!(105))
    );
    for bad in [json!(5.5), json!(0), json!(1_000_000_001), json!("5")] {
        let (s, _, b) = grant(bad.clone()).await;
        assert_invalid(s, &b, "delta");
    }
    // A debit below zero is a conflict with the balance, and changes nothing.
    let (s, _, b) = grant(json!(-106)).await;
    let msg = assert_error(s, &b, StatusCode::CONFLICT, "conflict");
    assert!(msg.contains("below zero"), "{msg}");
    let (_, _, me) = app.get("/user/me", Some(&u.access)).await;
    assert_eq!(me["credits"], 105);
    let (credits, sum) = questech::storage::ledger::balance_check(&app.state.db, u.uid())
        .await
        .unwrap();
    assert_eq!((credits, sum), (105, 105));
});

/// A pong arrives on a socket that is still open.
async fn still_open(ws: &mut Socket) {
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("send ping");
    loop {
        let f = next_text(ws).await;
        if f["type"] == "pong" {
            return;
        }
    }
}

both!(logout_closes_that_sessions_sockets, |app| async move {
    let u = app.register(&uname("lo")).await;
    let other = app.login(&u.username, PASSWORD).await;
    let mut signed_out = open_ws(&app, &u.access).await;
    let mut kept = open_ws(&app, &other.access).await;
    let (s, _, b) = app.post("/user/logout", Some(&u.access), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert_eq!(
        read_until_closed(&mut signed_out).await,
        Some(CloseCode::Policy)
    );
    still_open(&mut kept).await;
});

mysql_only!(
    logout_and_refresh_reuse_close_sockets_on_every_node,
    |app| async move {
        let node_b = app.spawn_node(&[]).await;
        let u = app.register(&uname("lo")).await;
        let other = app.login(&u.username, PASSWORD).await;
        let mut on_a = open_ws(&app, &u.access).await;
        let mut on_b = open_ws(&node_b, &u.access).await;
        let mut kept_b = open_ws(&node_b, &other.access).await;
        // Signing out on node A closes that session's sockets on node B too; the other session's stay.
        let (s, _, b) = app.post("/user/logout", Some(&u.access), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
        assert_eq!(read_until_closed(&mut on_a).await, Some(CloseCode::Policy));
        assert_eq!(
            read_until_closed(&mut on_b).await,
            Some(CloseCode::Policy),
            "the signed-out session's socket on the other node is closed too"
        );
        still_open(&mut kept_b).await;

        // A reused refresh token revokes its session: its sockets close on every node.
        let (s, _, b) = app
            .post(
                "/user/token/refresh",
                None,
                Some(json!({"refresh_token": other.refresh})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, _, b) = node_b
            .post(
                "/user/token/refresh",
                None,
                Some(json!({"refresh_token": other.refresh})),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
        assert_eq!(
            read_until_closed(&mut kept_b).await,
            Some(CloseCode::Policy),
            "refresh-token reuse closes the session's sockets"
        );
    }
);
