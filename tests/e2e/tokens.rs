//! Tokens and sessions (SPEC §5): access JWTs, rotating refresh tokens, theft detection, logout,
//! and every way a bearer token can be wrong.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

async fn me_status(app: &TestApp, token: &str) -> StatusCode {
    app.get("/user/me", Some(token)).await.0
}

async fn assert_token_rejected(app: &TestApp, token: &str, what: &str) {
    let (s, h, b) = app.get("/user/me", Some(token)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {b}");
    assert_unauthorized(s, &h, &b);
}

async fn refresh(app: &TestApp, token: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    app.post(
        "/user/token/refresh",
        None,
        Some(json!({"refresh_token": token})),
    )
    .await
}

fn sign(claims: &Value, alg: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

both!(me_with_access_token, |app| async move {
    let name = uname("me");
    let u = app.register(&name).await;
    let (s, _, b) = app.get("/user/me", Some(&u.access)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b, u.json["user"]);
    // The scheme is case-insensitive (RFC 7235).
    let req = app
        .client
        .get(app.url("/user/me"))
        .header("authorization", format!("bearer {}", u.access));
    let (s, _, _) = app.send(req).await;
    assert_eq!(s, StatusCode::OK);
});

both!(refresh_rotates, |app| async move {
    let u = app.register(&uname("rot")).await;
    let (s, _, b) = refresh(&app, &u.refresh).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(keys(&b), ["tokens"], "{b}");
    let t = &b["tokens"];
    assert_eq!(
        keys(t),
        ["access_token", "expires_in", "refresh_token", "token_type"]
    );
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 900);
    let access2 = t["access_token"].as_str().unwrap().to_owned();
    let refresh2 = t["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, u.refresh, "the refresh token rotates");
    // Same session, same user.
    let (c1, c2) = (jwt_claims(&u.access), jwt_claims(&access2));
    assert_eq!(c1["sid"], c2["sid"]);
    assert_eq!(c1["sub"], c2["sub"]);
    // Old access token still valid (not revoked), new one works.
    assert_eq!(me_status(&app, &u.access).await, StatusCode::OK);
    assert_eq!(me_status(&app, &access2).await, StatusCode::OK);
    // And the chain goes on.
    let (s, _, b) = refresh(&app, &refresh2).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let refresh3 = b["tokens"]["refresh_token"].as_str().unwrap();
    assert_ne!(refresh3, refresh2);
    assert_eq!(
        me_status(&app, b["tokens"]["access_token"].as_str().unwrap()).await,
        StatusCode::OK
    );
});

both!(refresh_reuse_revokes_the_session, |app| async move {
    let name = uname("reuse");
    let u = app.register(&name).await;
    let other_device = app.login(&name, PASSWORD).await;
    let (s, _, b) = refresh(&app, &u.refresh).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let access2 = b["tokens"]["access_token"].as_str().unwrap().to_owned();
    let refresh2 = b["tokens"]["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(me_status(&app, &access2).await, StatusCode::OK);

    // The rotated token comes back: theft. 401, and the whole session is gone.
    let (s, h, b) = refresh(&app, &u.refresh).await;
    assert_unauthorized(s, &h, &b);
    assert_token_rejected(&app, &access2, "latest access token of a revoked session").await;
    assert_token_rejected(&app, &u.access, "first access token of a revoked session").await;
    let (s, h, b) = refresh(&app, &refresh2).await;
    assert_unauthorized(s, &h, &b);
    // Still revoked on a second try (no resurrection).
    let (s, h, b) = refresh(&app, &refresh2).await;
    assert_unauthorized(s, &h, &b);
    // The user's other session is untouched.
    assert_eq!(me_status(&app, &other_device.access).await, StatusCode::OK);
    let (s, _, b) = refresh(&app, &other_device.refresh).await;
    assert_eq!(s, StatusCode::OK, "{b}");
});

both!(concurrent_refresh_with_one_token, |app| async move {
    // Two clients race with one refresh token: at most one gets tokens, never a 500.
    let u = app.register(&uname("race_rt")).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = app.client.clone();
        let url = app.url("/user/token/refresh");
        let rt = u.refresh.clone();
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&json!({"refresh_token": rt}))
                .send()
                .await
                .unwrap();
            let s = res.status();
            (s, res.json::<Value>().await.unwrap())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (s, b) = t.await.unwrap();
        if s == StatusCode::OK {
            ok += 1;
        } else {
            assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    assert!(ok <= 1, "{ok} clients got tokens from one refresh token");
});

both!(refresh_rejects_unknown_and_malformed, |app| async move {
    let u = app.register(&uname("rtbad")).await;
    for token in [
        "rt_definitely-not-a-real-token".to_owned(),
        String::new(),
        "x".repeat(300),
        u.access.clone(),
        format!("{}x", u.refresh),
    ] {
        let (s, h, b) = refresh(&app, &token).await;
        assert_unauthorized(s, &h, &b);
    }
    for body in [
        json!({}),
        json!({"refresh_token": 5}),
        json!({"refresh_token": null}),
    ] {
        let (s, _, b) = app.post("/user/token/refresh", None, Some(body)).await;
        assert_invalid(s, &b, "refresh_token");
    }
    // None of that hurt the real token.
    let (s, _, b) = refresh(&app, &u.refresh).await;
    assert_eq!(s, StatusCode::OK, "{b}");
});

both!(logout_revokes_only_that_session, |app| async move {
    let name = uname("logout");
    let a = app.register(&name).await;
    let b_dev = app.login(&name, PASSWORD).await;
    assert_eq!(me_status(&app, &a.access).await, StatusCode::OK);

    let (s, _, body) = app.post("/user/logout", Some(&a.access), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    assert!(body.is_null(), "204 has no body: {body}");
    assert_token_rejected(&app, &a.access, "logged-out token").await;
    let (s, h, body) = refresh(&app, &a.refresh).await;
    assert_unauthorized(s, &h, &body);
    // Logging out twice is a 401 (the token is dead).
    let (s, h, body) = app.post("/user/logout", Some(&a.access), None).await;
    assert_unauthorized(s, &h, &body);

    assert_eq!(me_status(&app, &b_dev.access).await, StatusCode::OK);
    let (s, _, body) = refresh(&app, &b_dev.refresh).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, h, body) = app.post("/user/logout", None, None).await;
    assert_unauthorized(s, &h, &body);
});

both!(bad_tokens_are_401, |app| async move {
    let u = app.register(&uname("badtok")).await;
    let c = jwt_claims(&u.access);
    let now = chrono::Utc::now().timestamp();
    let valid_claims =
        json!({"sub": c["sub"], "sid": c["sid"], "role": "user", "iat": now, "exp": now + 600});
    // Sanity: a token we sign with the server's secret and the right claims is accepted, so the
    // rejections below are about what we changed.
    let ours = sign(&valid_claims, Algorithm::HS256, JWT_SECRET);
    assert_eq!(me_status(&app, &ours).await, StatusCode::OK);

    let with = |k: &str, v: Value| {
        let mut m = valid_claims.clone();
        m[k] = v;
        m
    };
    let expired = with("exp", json!(now - 30));
    let wrong_role = with("role", json!("superuser"));
    let bad_sub = with("sub", json!("not-a-number"));
    let unknown_sid = with("sid", json!("12345"));
    let other_user = with("sub", json!("777"));
    let mut no_exp = valid_claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_sid = valid_claims.clone();
    no_sid.as_object_mut().unwrap().remove("sid");

    let header_none = b64(&json!({"alg": "none", "typ": "JWT"}));
    let cases: Vec<(String, &str)> = vec![
        (
            sign(
                &valid_claims,
                Algorithm::HS256,
                "another-secret-another-secret-another-secret!!",
            ),
            "forged (other secret)",
        ),
        (sign(&expired, Algorithm::HS256, JWT_SECRET), "expired"),
        (
            sign(&valid_claims, Algorithm::HS512, JWT_SECRET),
            "HS512 with the right secret",
        ),
        (
            sign(&valid_claims, Algorithm::HS384, JWT_SECRET),
            "HS384 with the right secret",
        ),
        (format!("{header_none}.{}.", b64(&valid_claims)), "alg none"),
        (
            format!("{header_none}.{}", b64(&valid_claims)),
            "alg none, two parts",
        ),
        (
            sign(&wrong_role, Algorithm::HS256, JWT_SECRET),
            "unknown role",
        ),
        (
            sign(&bad_sub, Algorithm::HS256, JWT_SECRET),
            "non-numeric sub",
        ),
        (
            sign(&unknown_sid, Algorithm::HS256, JWT_SECRET),
            "unknown session",
        ),
        (sign(&no_exp, Algorithm::HS256, JWT_SECRET), "no exp"),
        (sign(&no_sid, Algorithm::HS256, JWT_SECRET), "no sid"),
        ("garbage".to_owned(), "garbage"),
        ("a.b.c".to_owned(), "three garbage parts"),
        (format!("{}x", u.access), "tampered signature"),
        (u.refresh.clone(), "a refresh token as access token"),
    ];
    for (token, what) in &cases {
        assert_token_rejected(&app, token, what).await;
    }
    // A token for a session that belongs to someone else.
    let (s, h, b) = app
        .get(
            "/user/me",
            Some(&sign(&other_user, Algorithm::HS256, JWT_SECRET)),
        )
        .await;
    assert_unauthorized(s, &h, &b);

    // Header problems.
    let raw = |value: Option<&str>| {
        let mut req = app.client.get(app.url("/user/me"));
        if let Some(v) = value {
            req = req.header("authorization", v);
        }
        req
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{PASSWORD}", u.username))
    );
    let headers: Vec<(Option<String>, &str)> = vec![
        (None, "missing header"),
        (Some(basic), "Basic scheme"),
        (Some(format!("Token {}", u.access)), "unknown scheme"),
        (Some("Bearer".to_owned()), "Bearer without a token"),
        (Some("Bearer ".to_owned()), "Bearer and a space"),
        (Some(u.access.clone()), "token without a scheme"),
        (Some(String::new()), "empty header"),
    ];
    for (value, what) in headers {
        let (s, h, b) = app.send(raw(value.as_deref())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {b}");
        assert_unauthorized(s, &h, &b);
    }
    // Non-UTF-8 header bytes.
    let bad = reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap();
    let (s, h, b) = app
        .send(
            app.client
                .get(app.url("/user/me"))
                .header("authorization", bad),
        )
        .await;
    assert_unauthorized(s, &h, &b);

    // After all that, the real token still works.
    assert_eq!(me_status(&app, &u.access).await, StatusCode::OK);
});

both!(
    access_tokens_expire,
    env = [("JWT_ACCESS_TTL_SECS", "2")],
    |app| async move {
        let u = app.register(&uname("ttl")).await;
        assert_eq!(u.json["tokens"]["expires_in"], 2);
        assert_eq!(me_status(&app, &u.access).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert_token_rejected(&app, &u.access, "expired access token").await;
        // The refresh token still works and gives a fresh access token.
        let (s, _, b) = refresh(&app, &u.refresh).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let access = b["tokens"]["access_token"].as_str().unwrap();
        assert_eq!(me_status(&app, access).await, StatusCode::OK);
    }
);

both!(
    refresh_tokens_expire,
    env = [("JWT_REFRESH_TTL_SECS", "1")],
    |app| async move {
        let u = app.register(&uname("rttl")).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (s, h, b) = refresh(&app, &u.refresh).await;
        assert_unauthorized(s, &h, &b);
    }
);

both!(sessions_survive_a_restart, |app| async move {
    let name = uname("restart");
    let live = app.register(&name).await;
    let dead = app.login(&name, PASSWORD).await;
    let (s, _, _) = app.post("/user/logout", Some(&dead.access), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // A new process over the same database, with an empty cache.
    let fresh_prefix = format!(
        "{}restart:",
        app.env.get("REDIS_PREFIX").cloned().unwrap_or_default()
    );
    let node = app
        .spawn_node(&[("REDIS_PREFIX", fresh_prefix.as_str())])
        .await;
    drop(app);
    assert_eq!(me_status(&node, &live.access).await, StatusCode::OK);
    assert_token_rejected(&node, &dead.access, "a session revoked before the restart").await;
    let (s, _, b) = refresh(&node, &live.refresh).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    node.login(&name, PASSWORD).await;
});

mysql_only!(revocation_reaches_every_node, |app| async move {
    let node2 = app.spawn_node(&[]).await;
    let name = uname("nodes");
    let u = app.register(&name).await;
    // Both nodes have seen (and cached) the session as live.
    assert_eq!(me_status(&app, &u.access).await, StatusCode::OK);
    assert_eq!(me_status(&node2, &u.access).await, StatusCode::OK);
    let (s, _, _) = app.post("/user/logout", Some(&u.access), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_token_rejected(&node2, &u.access, "revoked on another node").await;

    // Theft detection on one node is seen by the other too.
    let v = node2.login(&name, PASSWORD).await;
    let (s, _, b) = refresh(&app, &v.refresh).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let access2 = b["tokens"]["access_token"].as_str().unwrap().to_owned();
    assert_eq!(me_status(&node2, &access2).await, StatusCode::OK);
    let (s, h, b) = refresh(&node2, &v.refresh).await;
    assert_unauthorized(s, &h, &b);
    assert_token_rejected(
        &app,
        &access2,
        "session revoked by theft detection on another node",
    )
    .await;
});
