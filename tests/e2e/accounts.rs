//! Accounts (SPEC §5): register, login and its limits, profile, ledger.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

const USER_KEYS: [&str; 8] = [
    "avatar_url",
    "created_at",
    "credits",
    "id",
    "nickname",
    "phone_masked",
    "role",
    "username",
];

fn assert_user_shape(u: &Value, username: &str, credits: i64) {
    assert_eq!(keys(u), USER_KEYS, "user fields: {u}");
    let id = u["id"].as_str().expect("id is a string");
    assert!(
        id.parse::<i64>().is_ok_and(|n| n > 0),
        "id is a positive decimal: {id}"
    );
    assert_eq!(u["username"], username);
    assert_eq!(u["role"], "user");
    assert_eq!(u["credits"], credits);
    assert!(u["phone_masked"].is_null(), "phone_masked: {u}");
    assert!(
        u["nickname"].is_string() && u["avatar_url"].is_string(),
        "{u}"
    );
    assert_rfc3339(&u["created_at"]);
}

fn assert_tokens_shape(t: &Value, expires_in: i64) {
    assert_eq!(
        keys(t),
        ["access_token", "expires_in", "refresh_token", "token_type"],
        "tokens fields: {t}"
    );
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], expires_in);
    let access = t["access_token"].as_str().expect("access_token");
    assert_eq!(access.split('.').count(), 3, "access token is a JWT");
    let refresh = t["refresh_token"].as_str().expect("refresh_token");
    assert!(
        refresh.len() >= 32,
        "refresh token is long and opaque: {refresh}"
    );
    assert!(!refresh.contains('.'), "refresh token is not a JWT");
}

async fn ledger(app: &TestApp, token: &str, query: &str) -> Value {
    let (s, _, b) = app
        .get(&format!("/user/credits/ledger{query}"), Some(token))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

// ---- register -----------------------------------------------------------------------------------

both!(register_returns_user_and_tokens, |app| async move {
    let name = uname("reg");
    let (s, h, b) = app
        .post(
            "/user/register",
            None,
            Some(json!({"username": name, "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert!(
        h.get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "{h:?}"
    );
    assert_eq!(keys(&b), ["tokens", "user"], "{b}");
    assert_user_shape(&b["user"], &name, 100);
    assert_eq!(
        b["user"]["nickname"],
        name.as_str(),
        "nickname defaults to the username"
    );
    assert_eq!(b["user"]["avatar_url"], "");
    assert_tokens_shape(&b["tokens"], 900);

    // The access token carries the claims of SPEC §5 and works at once.
    let access = b["tokens"]["access_token"].as_str().unwrap();
    let claims = jwt_claims(access);
    assert_eq!(claims["sub"], b["user"]["id"]);
    assert_eq!(claims["role"], "user");
    assert!(
        claims["sid"].is_string() && claims["iat"].is_i64(),
        "{claims}"
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    let (s, _, me) = app.get("/user/me", Some(access)).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me, b["user"], "GET /user/me is the same user object");

    // A nickname given at registration is kept.
    let other = uname("nick");
    let (s, _, b) = app
        .post(
            "/user/register",
            None,
            Some(json!({"username": other, "password": PASSWORD, "nickname": "小明 🚀"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["user"]["nickname"], "小明 🚀");
    // Ids are unique.
    assert_ne!(b["user"]["id"], me["id"]);
});

both!(register_accepts_boundaries, |app| async move {
    for (username, password) in [
        ("abc".to_owned(), "12345678".to_owned()),
        (
            format!("{}{}", uname("b"), "_Z".repeat(10))[..20].to_owned(),
            "x".repeat(128),
        ),
        (uname("U_9"), "é".repeat(8)),
        (uname("uni"), "密码密码密码密码".to_owned()),
    ] {
        let (s, _, b) = app
            .post(
                "/user/register",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{username}/{password}: {b}");
        app.login(&username, &password).await;
    }
});

both!(register_validation, |app| async move {
    let ok_user = uname("val");
    let cases: Vec<(Value, &str)> = vec![
        (json!({"username": "ab", "password": PASSWORD}), "username"),
        (json!({"username": "", "password": PASSWORD}), "username"),
        (
            json!({"username": "a".repeat(21), "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "bad-name", "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "bad name", "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "bad.name", "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "用户名用户", "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "abcé", "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "abc\u{0}", "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": ok_user, "password": "1234567"}),
            "password",
        ),
        (
            json!({"username": ok_user, "password": "x".repeat(129)}),
            "password",
        ),
        (json!({"username": ok_user, "password": ""}), "password"),
        (json!({"password": PASSWORD}), "username"),
        (json!({"username": ok_user}), "password"),
        (json!({"username": 12345, "password": PASSWORD}), "username"),
        (
            json!({"username": ok_user, "password": 12345678}),
            "password",
        ),
        (json!({"username": ok_user, "password": null}), "password"),
        (
            json!({"username": ["abc"], "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": ok_user, "password": PASSWORD, "nickname": 5}),
            "nickname",
        ),
        (
            json!({"username": ok_user, "password": PASSWORD, "nickname": "n".repeat(65)}),
            "nickname",
        ),
        (
            json!({"username": ok_user, "password": PASSWORD, "nickname": "bad\nnick"}),
            "nickname",
        ),
    ];
    for (body, field) in cases {
        let (s, _, b) = app.post("/user/register", None, Some(body.clone())).await;
        assert_invalid(s, &b, field);
    }
    // Bodies that are not a JSON object of the right shape.
    for (ctype, raw) in [
        ("application/json", "{\"username\": \"abc\", "),
        ("application/json", "not json"),
        ("application/json", ""),
        ("application/json", "null"),
        ("application/json", "[]"),
        ("application/json", "\"abc\""),
        (
            "text/plain",
            "{\"username\":\"abcdef\",\"password\":\"12345678\"}",
        ),
        (
            "application/x-www-form-urlencoded",
            "username=abcdef&password=12345678",
        ),
    ] {
        let req = app
            .client
            .post(app.url("/user/register"))
            .header("content-type", ctype)
            .body(raw);
        let (s, _, b) = app.send(req).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // No content type at all.
    let req = app
        .client
        .post(app.url("/user/register"))
        .body("{\"username\":\"abcdef\",\"password\":\"12345678\"}");
    let (s, _, b) = app.send(req).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    // Nothing above created a user.
    let (s, _, b) = app.login_raw(&ok_user, PASSWORD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
});

both!(register_duplicate_is_conflict, |app| async move {
    let name = uname("dup");
    let first = app.register(&name).await;
    let (s, _, b) = app
        .post(
            "/user/register",
            None,
            Some(json!({"username": name, "password": "another-password"})),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict");
    // The first account is untouched: its password still works, the other does not.
    app.login(&name, PASSWORD).await;
    let (s, _, _) = app.login_raw(&name, "another-password").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, me) = app.get("/user/me", Some(&first.access)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["id"], first.id.as_str());
});

both!(usernames_are_case_insensitive, |app| async move {
    // `Alice` and `alice` are one account name on every backend (no look-alike accounts, and
    // the same answer on SQLite as on MySQL).
    let name = uname("Case");
    let first = app.register(&name).await;
    let upper = name.to_ascii_uppercase();
    let (s, _, b) = app
        .post(
            "/user/register",
            None,
            Some(json!({"username": upper, "password": PASSWORD})),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "conflict");
    // Logging in with another case finds the same account.
    let again = app.login(&upper, PASSWORD).await;
    assert_eq!(again.id, first.id);
    assert_eq!(
        again.json["user"]["username"],
        name.as_str(),
        "the stored spelling is kept"
    );
});

both!(concurrent_registrations_of_one_name, |app| async move {
    // Eight racing registrations of one name: exactly one 201, the rest 409, never a 500.
    let name = uname("race");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = app.client.clone();
        let url = app.url("/user/register");
        let name = if i % 2 == 0 {
            name.clone()
        } else {
            name.to_ascii_uppercase()
        };
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&json!({"username": name, "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            let s = res.status();
            (s, res.json::<Value>().await.unwrap())
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (s, b) = t.await.unwrap();
        if s == StatusCode::CREATED {
            created += 1;
        } else {
            assert_error(s, &b, StatusCode::CONFLICT, "conflict");
        }
    }
    assert_eq!(created, 1);
    let (s, _, b) = app
        .get(
            "/user/credits/ledger",
            Some(&app.login(&name, PASSWORD).await.access),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["total"], 1, "one signup bonus: {b}");
});

both!(signup_bonus_is_one_ledger_row, |app| async move {
    let u = app.register(&uname("bonus")).await;
    let b = ledger(&app, &u.access, "").await;
    assert_eq!(b["total"], 1, "{b}");
    assert_eq!(b["page"], 1);
    assert_eq!(b["page_size"], 20);
    let items = b["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let row = &items[0];
    assert_eq!(
        keys(row),
        [
            "balance_after",
            "created_at",
            "delta",
            "id",
            "note",
            "reason",
            "ref_id",
            "seq"
        ],
        "{row}"
    );
    assert!(row["id"].is_string(), "{row}");
    assert_eq!(row["seq"], 1, "the user's first ledger row");
    assert_eq!(row["delta"], 100);
    assert_eq!(row["balance_after"], 100);
    assert_eq!(row["reason"], "signup_bonus");
    assert!(row["note"].is_null() && row["ref_id"].is_null(), "{row}");
    assert_rfc3339(&row["created_at"]);
    let (credits, sum) = questech::storage::ledger::balance_check(&app.state.db, u.uid())
        .await
        .unwrap();
    assert_eq!((credits, sum), (100, 100));
});

both!(
    signup_bonus_follows_config,
    env = [("SIGNUP_BONUS_CREDITS", "250")],
    |app| async move {
        let u = app.register(&uname("b250")).await;
        assert_eq!(u.json["user"]["credits"], 250);
        let b = ledger(&app, &u.access, "").await;
        assert_eq!(b["items"][0]["delta"], 250);
        assert_eq!(b["total"], 1);
    }
);

both!(
    zero_signup_bonus_writes_no_row,
    env = [("SIGNUP_BONUS_CREDITS", "0")],
    |app| async move {
        let u = app.register(&uname("b0")).await;
        assert_eq!(u.json["user"]["credits"], 0);
        let b = ledger(&app, &u.access, "").await;
        assert_eq!(b["total"], 0, "{b}");
        assert_eq!(b["items"], json!([]));
    }
);

// ---- login --------------------------------------------------------------------------------------

both!(login_success, |app| async move {
    let name = uname("login");
    let reg = app.register(&name).await;
    let (s, _, b) = app.login_raw(&name, PASSWORD).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(keys(&b), ["tokens", "user"], "{b}");
    assert_user_shape(&b["user"], &name, 100);
    assert_eq!(b["user"]["id"], reg.id.as_str());
    assert_tokens_shape(&b["tokens"], 900);
    // Each login is a new session (one per device).
    let c1 = jwt_claims(&reg.access);
    let c2 = jwt_claims(b["tokens"]["access_token"].as_str().unwrap());
    assert_ne!(c1["sid"], c2["sid"]);
    assert_ne!(b["tokens"]["refresh_token"], reg.refresh.as_str());
    for t in [&reg.access, b["tokens"]["access_token"].as_str().unwrap()] {
        let (s, _, _) = app.get("/user/me", Some(t)).await;
        assert_eq!(s, StatusCode::OK);
    }
});

both!(login_failures_look_the_same, |app| async move {
    let name = uname("same");
    app.register(&name).await;
    let (s1, h1, b1) = app.login_raw(&name, "wrong-password").await;
    let m1 = assert_unauthorized(s1, &h1, &b1);
    let (s2, h2, b2) = app.login_raw(&uname("nobody"), "wrong-password").await;
    let m2 = assert_unauthorized(s2, &h2, &b2);
    assert_eq!(
        m1, m2,
        "unknown user and wrong password must be indistinguishable"
    );
    assert_eq!(b1, b2);
    // Password checks are exact: case, whitespace, a prefix.
    for p in [
        PASSWORD.to_ascii_uppercase(),
        format!("{PASSWORD} "),
        format!(" {PASSWORD}"),
        PASSWORD[..PASSWORD.len() - 1].to_owned(),
    ] {
        let (s, h, b) = app.login_raw(&name, &p).await;
        assert_eq!(assert_unauthorized(s, &h, &b), m1);
    }
});

both!(login_validation, |app| async move {
    for (body, field) in [
        (json!({"password": PASSWORD}), "username"),
        (json!({"username": "someone"}), "password"),
        (json!({"username": 1, "password": PASSWORD}), "username"),
        (
            json!({"username": "someone", "password": false}),
            "password",
        ),
    ] {
        let (s, _, b) = app.post("/user/login", None, Some(body)).await;
        assert_invalid(s, &b, field);
    }
    let req = app
        .client
        .post(app.url("/user/login"))
        .header("content-type", "application/json")
        .body("{");
    let (s, _, b) = app.send(req).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
});

both!(long_passwords_are_not_truncated, |app| async move {
    // bcrypt only reads 72 bytes; a 100-character password must still be checked whole.
    let name = uname("long");
    let password = format!("{}{}", "p".repeat(80), "-the-real-ending");
    let (s, _, b) = app
        .post(
            "/user/register",
            None,
            Some(json!({"username": name, "password": password})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    app.login(&name, &password).await;
    let wrong = format!("{}{}", "p".repeat(80), "-a-wrong-ending!");
    assert_eq!(wrong.chars().count(), password.chars().count());
    let (s, h, b) = app.login_raw(&name, &wrong).await;
    assert_unauthorized(s, &h, &b);
    // Same for multi-byte characters (128 characters, 384 bytes).
    let name = uname("long_mb");
    let password = "密".repeat(127) + "码";
    let (s, _, b) = app
        .post(
            "/user/register",
            None,
            Some(json!({"username": name, "password": password})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    app.login(&name, &password).await;
    let (s, h, b) = app.login_raw(&name, &"密".repeat(128)).await;
    assert_unauthorized(s, &h, &b);
});

both!(disabled_user_is_forbidden, |app| async move {
    let name = uname("dis");
    let u = app.register(&name).await;
    app.sql("UPDATE users SET disabled = 1 WHERE username = ?", &[&name])
        .await;
    let (s, _, b) = app.login_raw(&name, PASSWORD).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    // A wrong password still says 401 (a disabled account is no oracle for its password).
    let (s, h, b) = app.login_raw(&name, "wrong-password").await;
    assert_unauthorized(s, &h, &b);
    // Its refresh token no longer yields tokens.
    let (s, h, b) = app
        .post(
            "/user/token/refresh",
            None,
            Some(json!({"refresh_token": u.refresh})),
        )
        .await;
    assert!(
        s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN,
        "refresh of a disabled user: {s} {b}"
    );
    if s == StatusCode::UNAUTHORIZED {
        assert_unauthorized(s, &h, &b);
    }
    // Enabled again: login works.
    app.sql("UPDATE users SET disabled = 0 WHERE username = ?", &[&name])
        .await;
    app.login(&name, PASSWORD).await;
});

fn retry_after(h: &reqwest::header::HeaderMap) -> u64 {
    let v = h
        .get(reqwest::header::RETRY_AFTER)
        .expect("Retry-After on a 429")
        .to_str()
        .unwrap();
    let n: u64 = v
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is whole seconds: {v:?}"));
    assert!(n >= 1, "Retry-After {n}");
    n
}

both!(
    login_rate_limit_per_account,
    env = [
        ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "3"),
        ("LOGIN_MAX_FAILURES_PER_IP", "100"),
        ("LOGIN_FAILURE_WINDOW_SECS", "600"),
    ],
    |app| async move {
        let name = uname("rl");
        let other = uname("rl_other");
        app.register(&name).await;
        app.register(&other).await;
        // A success resets nothing it should not: two failures, success, then three more.
        for _ in 0..2 {
            let (s, h, b) = app.login_raw(&name, "wrong-password").await;
            assert_unauthorized(s, &h, &b);
        }
        app.login(&name, PASSWORD).await;
        for _ in 0..3 {
            let (s, h, b) = app.login_raw(&name, "wrong-password").await;
            assert_unauthorized(s, &h, &b);
        }
        // Now even the right password is refused, in any letter case.
        for n in [name.clone(), name.to_ascii_uppercase()] {
            let (s, h, b) = app.login_raw(&n, PASSWORD).await;
            assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            let secs = retry_after(&h);
            assert!(secs <= 600, "Retry-After within the window: {secs}");
        }
        // Another account from the same address is not affected.
        app.login(&other, PASSWORD).await;
    }
);

both!(
    login_rate_limit_per_ip,
    env = [
        ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "100"),
        ("LOGIN_MAX_FAILURES_PER_IP", "3"),
    ],
    |app| async move {
        let name = uname("ipl");
        app.register(&name).await;
        for i in 0..3 {
            let (s, h, b) = app
                .login_raw(&uname(&format!("ghost{i}")), "wrong-password")
                .await;
            assert_unauthorized(s, &h, &b);
        }
        let (s, h, b) = app.login_raw(&name, PASSWORD).await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let secs = retry_after(&h);
        assert!(secs <= 900, "Retry-After within the default window: {secs}");
        // X-Forwarded-For is ignored unless TRUST_PROXY_HEADERS=true.
        let req = app
            .client
            .post(app.url("/user/login"))
            .header("x-forwarded-for", "203.0.113.9")
            .json(&json!({"username": name, "password": PASSWORD}));
        let (s, _, b) = app.send(req).await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    }
);

both!(
    login_rate_limit_uses_forwarded_for_behind_a_proxy,
    env = [
        ("LOGIN_MAX_FAILURES_PER_ACCOUNT", "100"),
        ("LOGIN_MAX_FAILURES_PER_IP", "2"),
        ("TRUST_PROXY_HEADERS", "true"),
    ],
    |app| async move {
        let name = uname("xff");
        app.register(&name).await;
        let login = |ip: &'static str, password: &'static str| {
            let req = app
                .client
                .post(app.url("/user/login"))
                .header("x-forwarded-for", format!("{ip}, 10.0.0.1"))
                .json(&json!({"username": name, "password": password}));
            app.send(req)
        };
        for _ in 0..2 {
            let (s, h, b) = login("198.51.100.7", "wrong-password").await;
            assert_unauthorized(s, &h, &b);
        }
        let (s, _, b) = login("198.51.100.7", PASSWORD).await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        // Another client behind the same proxy is not blocked.
        let (s, _, b) = login("198.51.100.8", PASSWORD).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
);

mysql_only!(
    login_limits_are_shared_between_nodes,
    env = [("LOGIN_MAX_FAILURES_PER_ACCOUNT", "2")],
    |app| async move {
        let node2 = app.spawn_node(&[]).await;
        let name = uname("shared");
        app.register(&name).await;
        let (s, h, b) = app.login_raw(&name, "wrong-password").await;
        assert_unauthorized(s, &h, &b);
        let (s, h, b) = node2.login_raw(&name, "wrong-password").await;
        assert_unauthorized(s, &h, &b);
        let (s, _, b) = app.login_raw(&name, PASSWORD).await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let (s, _, b) = node2.login_raw(&name, PASSWORD).await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    }
);

// ---- PATCH /user/me -------------------------------------------------------------------------------

both!(patch_me_profile, |app| async move {
    let name = uname("patch");
    let u = app.register(&name).await;
    let t = Some(u.access.as_str());

    let (s, _, b) = app
        .patch("/user/me", t, Some(json!({"nickname": "Nick 名字 ✨"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_user_shape(&b, &name, 100);
    assert_eq!(b["nickname"], "Nick 名字 ✨");
    assert_eq!(b["avatar_url"], "");

    for url in [
        "https://cdn.example.com/a/b.png?x=1",
        "http://example.com/avatar.jpg",
        "/static/avatars/1.png",
    ] {
        let (s, _, b) = app
            .patch("/user/me", t, Some(json!({"avatar_url": url})))
            .await;
        assert_eq!(s, StatusCode::OK, "{url}: {b}");
        assert_eq!(b["avatar_url"], url);
        assert_eq!(b["nickname"], "Nick 名字 ✨", "other fields unchanged");
    }
    for bad in [
        json!("javascript:alert(1)"),
        json!("ftp://example.com/a.png"),
        json!("not a url"),
        json!(format!("https://example.com/{}", "a".repeat(1100))),
        json!(5),
    ] {
        let (s, _, b) = app
            .patch("/user/me", t, Some(json!({"avatar_url": bad})))
            .await;
        assert_invalid(s, &b, "avatar_url");
    }
    for bad in [json!("n".repeat(65)), json!("a\u{7}b"), json!(["x"])] {
        let (s, _, b) = app
            .patch("/user/me", t, Some(json!({"nickname": bad})))
            .await;
        assert_invalid(s, &b, "nickname");
    }
    // Failed patches changed nothing; an empty patch changes nothing.
    let (s, _, b) = app.patch("/user/me", t, Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["nickname"], "Nick 名字 ✨");
    assert_eq!(b["avatar_url"], "/static/avatars/1.png");
    let (_, _, me) = app.get("/user/me", t).await;
    assert_eq!(me, b);
    // Both fields at once; and a 64-character nickname is the limit.
    let nick = "字".repeat(64);
    let (s, _, b) = app
        .patch(
            "/user/me",
            t,
            Some(json!({"nickname": nick, "avatar_url": "https://example.com/z.png"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["nickname"], nick.as_str());
    assert_eq!(b["avatar_url"], "https://example.com/z.png");
    // Needs a token.
    let (s, h, b) = app
        .patch("/user/me", None, Some(json!({"nickname": "x"})))
        .await;
    assert_unauthorized(s, &h, &b);
});

both!(patch_me_password, |app| async move {
    let name = uname("pw");
    let u = app.register(&name).await;
    let t = Some(u.access.as_str());
    let new = "a-brand-new-password";

    // Missing old_password: the account has a password, so the change is not allowed without it.
    let (s, _, b) = app
        .patch("/user/me", t, Some(json!({"password": new})))
        .await;
    let msg = assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    assert!(msg.contains("old_password"), "{msg}");
    // Wrong old_password.
    let (s, h, b) = app
        .patch(
            "/user/me",
            t,
            Some(json!({"password": new, "old_password": "not-the-password"})),
        )
        .await;
    assert_unauthorized(s, &h, &b);
    // Invalid new password.
    let (s, _, b) = app
        .patch(
            "/user/me",
            t,
            Some(json!({"password": "short", "old_password": PASSWORD})),
        )
        .await;
    assert_invalid(s, &b, "password");
    // None of that changed it.
    let other_device = app.login(&name, PASSWORD).await;

    let (s, _, b) = app
        .patch(
            "/user/me",
            t,
            Some(json!({"password": new, "old_password": PASSWORD, "nickname": "renamed"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_user_shape(&b, &name, 100);
    assert_eq!(b["nickname"], "renamed");
    assert!(b.get("password").is_none() && b.get("password_hash").is_none());

    let (s, h, b) = app.login_raw(&name, PASSWORD).await;
    assert_unauthorized(s, &h, &b);
    app.login(&name, new).await;
    // The change signed the other device out; this one stays signed in.
    let (s, h, b) = app.get("/user/me", Some(&other_device.access)).await;
    assert_unauthorized(s, &h, &b);
    let (s, _, _) = app.get("/user/me", t).await;
    assert_eq!(s, StatusCode::OK);
});

// ---- ledger -------------------------------------------------------------------------------------

both!(ledger_pagination_and_totals, |app| async move {
    use questech::storage::ledger::{adjust, balance_check};
    let u = app.register(&uname("ledger")).await;
    let other = app.register(&uname("ledger_o")).await;
    let uid = u.uid();
    // 1 signup row + 24 adjustments = 25 rows; balance 100 + sum(1..=24) - 2*12 ... computed.
    let mut balance = 100;
    for i in 1..=24i64 {
        let delta = if i % 2 == 0 { -i } else { i * 3 };
        balance += delta;
        let note = format!("n{i}");
        let ref_id = format!("ref-{i}");
        let got = adjust(
            &app.state.db,
            uid,
            delta,
            "admin_adjust",
            Some(&note),
            Some(&ref_id),
        )
        .await
        .unwrap();
        assert_eq!(got, Some(balance));
    }
    // The other user's rows never show up.
    adjust(&app.state.db, other.uid(), 7, "admin_adjust", None, None)
        .await
        .unwrap();

    let b = ledger(&app, &u.access, "").await;
    assert_eq!(keys(&b), ["items", "page", "page_size", "total"]);
    assert_eq!(
        (
            b["page"].as_i64(),
            b["page_size"].as_i64(),
            b["total"].as_i64()
        ),
        (Some(1), Some(20), Some(25))
    );
    let items = b["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    // Newest first: the last adjustment leads, balances walk back.
    assert_eq!(items[0]["note"], "n24");
    assert_eq!(items[0]["ref_id"], "ref-24");
    assert_eq!(items[0]["delta"], -24);
    assert_eq!(items[0]["balance_after"], balance);
    for w in items.windows(2) {
        assert_eq!(
            w[1]["balance_after"].as_i64().unwrap(),
            w[0]["balance_after"].as_i64().unwrap() - w[0]["delta"].as_i64().unwrap(),
            "consecutive rows chain"
        );
        let (a, b) = (
            w[0]["id"].as_str().unwrap().parse::<i64>().unwrap(),
            w[1]["id"].as_str().unwrap().parse::<i64>().unwrap(),
        );
        assert!(a > b, "newest first");
    }

    let b2 = ledger(&app, &u.access, "?page=2").await;
    let items2 = b2["items"].as_array().unwrap();
    assert_eq!(items2.len(), 5);
    assert_eq!(b2["page"], 2);
    assert_eq!(b2["total"], 25);
    assert_eq!(items2[4]["reason"], "signup_bonus");
    assert_eq!(items2[0]["note"], "n4");

    let b = ledger(&app, &u.access, "?page=3&page_size=10").await;
    assert_eq!(b["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        (b["page"].as_i64(), b["page_size"].as_i64()),
        (Some(3), Some(10))
    );
    let b = ledger(&app, &u.access, "?page=2&page_size=7").await;
    assert_eq!(b["items"][0]["note"], "n17");
    // Past the end: empty, total still right.
    let b = ledger(&app, &u.access, "?page=9").await;
    assert_eq!(b["items"], json!([]));
    assert_eq!(b["total"], 25);
    // page_size over 100 is clamped to 100.
    let b = ledger(&app, &u.access, "?page_size=1000").await;
    assert_eq!(b["page_size"], 100);
    assert_eq!(b["items"].as_array().unwrap().len(), 25);
    // Nonsense numbers are clamped too, never a 500.
    let b = ledger(&app, &u.access, "?page=0&page_size=0").await;
    assert_eq!(
        (b["page"].as_i64(), b["page_size"].as_i64()),
        (Some(1), Some(1))
    );
    let b = ledger(&app, &u.access, "?page=-3&page_size=-5").await;
    assert_eq!(
        (b["page"].as_i64(), b["page_size"].as_i64()),
        (Some(1), Some(1))
    );
    let b = ledger(
        &app,
        &u.access,
        &format!("?page={}&page_size=100", i64::MAX),
    )
    .await;
    assert_eq!(b["items"], json!([]));
    for q in ["?page=abc", "?page_size=1.5", "?page=99999999999999999999"] {
        let (s, _, b) = app
            .get(&format!("/user/credits/ledger{q}"), Some(&u.access))
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    }

    let (s, _, me) = app.get("/user/me", Some(&u.access)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["credits"], balance);
    assert_eq!(
        balance_check(&app.state.db, uid).await.unwrap(),
        (balance, balance)
    );
    let other_ledger = ledger(&app, &other.access, "").await;
    assert_eq!(other_ledger["total"], 2);
    assert_eq!(
        balance_check(&app.state.db, other.uid()).await.unwrap(),
        (107, 107)
    );

    // A debit past zero is refused and leaves no row.
    let err = adjust(
        &app.state.db,
        uid,
        -(balance + 1),
        "admin_adjust",
        None,
        None,
    )
    .await;
    assert!(err.is_err(), "overdraft must fail");
    assert_eq!(ledger(&app, &u.access, "").await["total"], 25);
    assert_eq!(
        balance_check(&app.state.db, uid).await.unwrap(),
        (balance, balance)
    );
    // Unknown user.
    assert_eq!(
        adjust(&app.state.db, 42, 5, "admin_adjust", None, None)
            .await
            .unwrap(),
        None
    );
    // Needs a token.
    let (s, h, b) = app.get("/user/credits/ledger", None).await;
    assert_unauthorized(s, &h, &b);
});
