//! The error contract (SPEC §4) and request plumbing: unknown routes, wrong methods, body limits,
//! request ids, and odd inputs that must never become a 500.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

both!(unknown_routes_are_404_in_the_shape, |app| async move {
    let u = app.register(&uname("nf")).await;
    // `GET /` and `GET /ops` are pages (tests/e2e/browser.rs); files beside them are not.
    for (method, path) in [
        (Method::GET, "/index.html"),
        (Method::GET, "/ops/nope"),
        (Method::GET, "/nope"),
        (Method::POST, "/nope"),
        (Method::GET, "/user"),
        (Method::GET, "/user/nope"),
        (Method::GET, "/user/me/extra"),
        (Method::DELETE, "/user/me/"),
        (Method::GET, "/health/deep"),
        (Method::GET, "/%ff%fe"),
        (Method::GET, "/user/../../etc/passwd"),
    ] {
        for token in [None, Some(u.access.as_str())] {
            let (s, _, b) = app.request(method.clone(), path, token, None).await;
            assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
        }
    }
});

both!(wrong_method_is_405_in_the_shape, |app| async move {
    for (method, path, allowed) in [
        (Method::GET, "/user/register", "POST"),
        (Method::DELETE, "/user/login", "POST"),
        (Method::PUT, "/user/me", "GET"),
        (Method::DELETE, "/user/me", "PATCH"),
        (Method::POST, "/user/credits/ledger", "GET"),
        (Method::GET, "/user/logout", "POST"),
        (Method::POST, "/health", "GET"),
    ] {
        let (s, h, b) = app.request(method.clone(), path, None, None).await;
        assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let allow = h
            .get(reqwest::header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{method} {path}: a 405 carries Allow (RFC 9110)"));
        assert!(allow.contains(allowed), "{method} {path}: Allow: {allow}");
    }
});

both!(bodies_over_one_mib_are_413, |app| async move {
    let big = "a".repeat((1 << 20) + 16);
    let body = json!({"username": "big_body", "password": big});
    for path in ["/user/register", "/user/login", "/user/token/refresh"] {
        let (s, _, b) = app.post(path, None, Some(body.clone())).await;
        assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    }
    let u = app.register(&uname("big")).await;
    let (s, _, b) = app
        .patch("/user/me", Some(&u.access), Some(json!({"nickname": big})))
        .await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Without a Content-Length (chunked), the limit holds as the body streams in.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        std::iter::once(Ok(b"{\"username\":\"chunky\",\"password\":\"".to_vec()))
            .chain((0..20).map(|_| Ok(vec![b'x'; 64 * 1024])))
            .chain(std::iter::once(Ok(b"\"}".to_vec())))
            .collect();
    let req = app
        .client
        .post(app.url("/user/register"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
    let (s, _, b) = app.send(req).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Just under the limit is parsed (and then fails validation, not the size check).
    let under = "b".repeat((1 << 20) - 100);
    let (s, _, b) = app
        .post(
            "/user/register",
            None,
            Some(json!({"username": "under_limit", "password": under})),
        )
        .await;
    assert_invalid(s, &b, "password");
    // The server is fine afterwards.
    let (s, _, _) = app.get("/health", None).await;
    assert_eq!(s, StatusCode::OK);
});

both!(request_ids_are_generated_and_echoed, |app| async move {
    let id_of = |h: &reqwest::header::HeaderMap| {
        h.get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("X-Request-Id on every answer")
    };
    let (_, h1, _) = app.get("/health", None).await;
    let (_, h2, _) = app.get("/health", None).await;
    let (a, b) = (id_of(&h1), id_of(&h2));
    assert!(!a.is_empty() && a.len() <= 128, "{a}");
    assert_ne!(a, b, "each request gets its own id");
    // On errors too.
    let (s, h, _) = app.get("/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!id_of(&h).is_empty());
    // A client's id is echoed, on success and on error.
    for path in ["/health", "/nope", "/user/me"] {
        let req = app
            .client
            .get(app.url(path))
            .header("x-request-id", "client-chosen-id-123");
        let (_, h, _) = app.send(req).await;
        assert_eq!(id_of(&h), "client-chosen-id-123", "{path}");
    }
    let req = app
        .client
        .post(app.url("/user/login"))
        .header("x-request-id", "login-req-7")
        .json(&json!({"username": "nobody_here", "password": "whatever-pw"}));
    let (s, h, _) = app.send(req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(id_of(&h), "login-req-7");
});

both!(odd_inputs_never_500, |app| async move {
    let u = app.register(&uname("odd")).await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(3000), "}".repeat(3000));
    let raw_bodies: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        deep_obj.into_bytes(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"{\"username\":\"\xff\xff\xff\",\"password\":\"12345678\"}".to_vec(),
        b"{\"username\":\"abc\",\"password\":\"12345678\",\"username\":\"abd\"}".to_vec(),
        b"{\"username\":\"\\ud800\",\"password\":\"12345678\"}".to_vec(),
        b"{\"username\":1e999,\"password\":\"12345678\"}".to_vec(),
        b"   ".to_vec(),
    ];
    for path in ["/user/register", "/user/login", "/user/token/refresh"] {
        for raw in &raw_bodies {
            let req = app
                .client
                .post(app.url(path))
                .header("content-type", "application/json")
                .body(raw.clone());
            let (s, _, b) = app.send(req).await;
            assert!(
                s.is_client_error(),
                "{path} {:?}: {s} {b}",
                String::from_utf8_lossy(&raw[..raw.len().min(40)])
            );
            assert!(b["error"]["code"].is_string(), "{path}: {b}");
        }
    }
    // For PATCH, unknown fields are ignored, so only the bodies that are not a JSON object
    // (or not UTF-8) must fail.
    let not_objects = [
        &raw_bodies[0],
        &raw_bodies[2],
        &raw_bodies[3],
        &raw_bodies[7],
    ];
    for raw in not_objects {
        let req = app
            .client
            .patch(app.url("/user/me"))
            .bearer_auth(&u.access)
            .header("content-type", "application/json")
            .body(raw.clone());
        let (s, _, b) = app.send(req).await;
        assert!(
            s.is_client_error(),
            "PATCH /user/me {:?}: {s} {b}",
            String::from_utf8_lossy(&raw[..raw.len().min(40)])
        );
    }
    // Strings the database might choke on.
    for nick in [
        "'; DROP TABLE users; --",
        "\\",
        "%_%",
        "😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀",
        "\u{200b}\u{feff}",
        "",
    ] {
        let (s, _, b) = app
            .patch("/user/me", Some(&u.access), Some(json!({"nickname": nick})))
            .await;
        assert_eq!(s, StatusCode::OK, "{nick:?}: {b}");
        assert_eq!(b["nickname"], nick);
    }
    let (s, h, b) = app
        .post(
            "/user/login",
            None,
            Some(json!({"username": "' OR 1=1 --", "password": "' OR 1=1 --"})),
        )
        .await;
    assert_unauthorized(s, &h, &b);
    let (s, h, b) = app
        .post(
            "/user/login",
            None,
            Some(json!({"username": "x".repeat(5000), "password": "y".repeat(5000)})),
        )
        .await;
    assert!(
        s == StatusCode::UNAUTHORIZED || s == StatusCode::BAD_REQUEST,
        "{s} {b}"
    );
    if s == StatusCode::UNAUTHORIZED {
        assert_unauthorized(s, &h, &b);
    }
    // Long and strange headers.
    let req = app
        .client
        .post(app.url("/user/register"))
        .header("user-agent", "ü".repeat(2000))
        .json(&json!({"username": uname("ua"), "password": PASSWORD}));
    let (s, _, b) = app.send(req).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let req = app
        .client
        .post(app.url("/user/register"))
        .header(
            "user-agent",
            reqwest::header::HeaderValue::from_bytes(b"\xff\xfe bot").unwrap(),
        )
        .json(&json!({"username": uname("ua2"), "password": PASSWORD}));
    let (s, _, b) = app.send(req).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // The database still balances.
    let (c, sum) = questech::storage::ledger::balance_check(&app.state.db, u.uid())
        .await
        .unwrap();
    assert_eq!(c, sum);
});

both!(json_bodies_must_be_utf8, |app| async move {
    let u = app.register(&uname("utf")).await;
    let conv = crate::wsclient::conv_id(&app, &u.access, "echo").await;
    let (_, _, list) = app.get("/chat/conversations", Some(&u.access)).await;
    let before = list["total"].clone();
    // Bad bytes in a field the endpoint reads, and in one it ignores.
    let bodies: [&[u8]; 3] = [
        b"{\"title\": \"\xff\xfe\xfd\"}",
        b"{\"title\": \"ok\", \"ignored\": \"\xc3\x28\"}",
        b"{\"title\": \"ok\"} \xff",
    ];
    let paths = [
        (Method::POST, "/chat/conversations".to_owned()),
        (Method::PATCH, format!("/chat/conversations/{conv}")),
        (Method::POST, format!("/chat/conversations/{conv}/messages")),
        (Method::PATCH, "/user/me".to_owned()),
        (Method::POST, "/v1/chat/completions".to_owned()),
        (Method::POST, "/user/register".to_owned()),
    ];
    for (method, path) in &paths {
        for body in bodies {
            let req = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(&u.access)
                .header("content-type", "application/json")
                .body(body.to_vec());
            let (s, _, b) = app.send(req).await;
            assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
            assert!(
                b["error"]["message"].as_str().unwrap().contains("UTF-8"),
                "{method} {path}: {b}"
            );
        }
    }
    // Nothing changed: no conversation created or renamed, no message stored.
    let (_, _, list) = app.get("/chat/conversations", Some(&u.access)).await;
    assert_eq!(list["total"], before);
    let (_, _, c) = app
        .get(&format!("/chat/conversations/{conv}"), Some(&u.access))
        .await;
    assert_ne!(c["title"], "ok", "{c}");
    assert!(crate::wsclient::all_messages(&app, &u.access, &conv)
        .await
        .is_empty());
});

both!(bodies_must_be_json_objects, |app| async move {
    let boss = uname("objboss");
    app.register(&boss).await;
    let admin = app.make_admin(&boss).await;
    let u = app.register(&uname("obj")).await;
    let conv = crate::wsclient::conv_id(&app, &u.access, "echo").await;
    // serde reads a struct from an array in field order: each of these was once accepted.
    let cases = [
        (
            reqwest::Method::POST,
            "/chat/conversations".to_owned(),
            json!(["arr", "echo", null, null]),
            &u.access,
        ),
        (
            reqwest::Method::PATCH,
            format!("/chat/conversations/{conv}"),
            json!(["renamed", null]),
            &u.access,
        ),
        (
            reqwest::Method::PATCH,
            format!("/admin/users/{}", u.id),
            json!([null, true]),
            &admin.access,
        ),
    ];
    for (method, path, body, token) in cases {
        let req = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(token)
            .json(&body);
        let (s, _, b) = app.send(req).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // Nothing changed: no new conversation, no rename, the user is not disabled.
    let (_, _, list) = app.get("/chat/conversations", Some(&u.access)).await;
    assert_eq!(list["total"], 1, "{list}");
    let (_, _, c) = app
        .get(&format!("/chat/conversations/{conv}"), Some(&u.access))
        .await;
    assert_ne!(c["title"], "renamed");
    let (s, _, _) = app.get("/user/me", Some(&u.access)).await;
    assert_eq!(s, StatusCode::OK, "still enabled");
});
