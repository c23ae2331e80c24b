//! Operations (SPEC §11 `/admin/actors`, §12): the OpenAPI document generated from the routes,
//! the docs page, Prometheus metrics (and their token), the live engine view, CORS.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::wsclient::*;

/// Every REST endpoint of the spec, as (method, OpenAPI path).
const SPEC_ENDPOINTS: &[(&str, &str)] = &[
    ("post", "/user/register"),
    ("post", "/user/login"),
    ("post", "/user/sms/send"),
    ("post", "/user/login/sms"),
    ("post", "/user/login/apple"),
    ("post", "/user/token/refresh"),
    ("post", "/user/logout"),
    ("get", "/user/me"),
    ("patch", "/user/me"),
    ("get", "/user/credits/ledger"),
    ("post", "/user/api-keys"),
    ("get", "/user/api-keys"),
    ("delete", "/user/api-keys/{id}"),
    ("get", "/user/usage"),
    ("get", "/config/models"),
    ("get", "/config/app"),
    ("post", "/chat/conversations"),
    ("get", "/chat/conversations"),
    ("get", "/chat/conversations/{id}"),
    ("patch", "/chat/conversations/{id}"),
    ("delete", "/chat/conversations/{id}"),
    ("get", "/chat/conversations/{id}/messages"),
    ("post", "/chat/conversations/{id}/messages"),
    ("post", "/v1/chat/completions"),
    ("post", "/chat/completions"),
    ("get", "/v1/models"),
    ("post", "/v1/embeddings"),
    ("post", "/v1/responses"),
    ("get", "/v1/responses/{id}"),
    ("delete", "/v1/responses/{id}"),
    ("get", "/v1/responses/{id}/input_items"),
    ("get", "/intelligent/agents"),
    ("get", "/intelligent/agents/{id}"),
    ("get", "/content/articles"),
    ("get", "/content/articles/{id}"),
    ("post", "/toolkit/translate"),
    ("post", "/toolkit/summarize"),
    ("post", "/common/upload"),
    ("get", "/admin/users"),
    ("patch", "/admin/users/{id}"),
    ("post", "/admin/users/{id}/credits"),
    ("get", "/admin/models"),
    ("post", "/admin/models"),
    ("get", "/admin/models/{id}"),
    ("patch", "/admin/models/{id}"),
    ("delete", "/admin/models/{id}"),
    ("get", "/admin/agents"),
    ("post", "/admin/agents"),
    ("get", "/admin/agents/{id}"),
    ("patch", "/admin/agents/{id}"),
    ("delete", "/admin/agents/{id}"),
    ("get", "/admin/articles"),
    ("post", "/admin/articles"),
    ("get", "/admin/articles/{id}"),
    ("patch", "/admin/articles/{id}"),
    ("delete", "/admin/articles/{id}"),
    ("put", "/admin/config/app"),
    ("get", "/admin/actors"),
    ("get", "/health"),
];

/// Follows a `$ref` like `#/components/schemas/X` inside the document.
fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    let path = r.strip_prefix("#/")?;
    path.split('/').try_fold(doc, |v, k| v.get(k))
}

/// Every `$ref` anywhere in `v` points at something that exists.
fn check_refs(doc: &Value, v: &Value, dangling: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(r) = x.as_str() {
                        if resolve(doc, r).is_none() {
                            dangling.push(r.to_owned());
                        }
                    }
                } else {
                    check_refs(doc, x, dangling);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x, dangling)),
        _ => {}
    }
}

both!(
    openapi_lists_every_endpoint_and_is_consistent,
    |app| async move {
        let (s, h, doc) = app.get("/openapi.json", None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            doc["openapi"]
        );
        assert!(doc["info"]["title"].is_string());
        let paths = doc["paths"].as_object().expect("paths");
        let missing: Vec<_> = SPEC_ENDPOINTS
            .iter()
            .filter(|(m, p)| paths.get(*p).and_then(|o| o.get(*m)).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "endpoints missing from /openapi.json: {missing:?}"
        );
        // Every operation documents at least one response, and every reference resolves.
        for (p, ops) in paths {
            for (m, op) in ops.as_object().unwrap() {
                if ["get", "post", "put", "patch", "delete"].contains(&m.as_str()) {
                    assert!(
                        op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                        "{m} {p} documents its responses"
                    );
                }
            }
        }
        let mut dangling = vec![];
        check_refs(&doc, &doc, &mut dangling);
        assert!(dangling.is_empty(), "dangling $refs: {dangling:?}");
        // The document is also what utoipa itself can read back.
        let parsed: Result<utoipa::openapi::OpenApi, _> = serde_json::from_value(doc.clone());
        assert!(parsed.is_ok(), "{:?}", parsed.err());
        // Bearer auth is declared.
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );

        // Security says exactly what the server does: every operation is called without a
        // token, and it answers 401 if and only if the document says it needs one.
        let global = !doc["security"].as_array().is_none_or(|a| a.is_empty());
        let mut wrong = vec![];
        for (p, ops) in paths {
            for (m, op) in ops.as_object().unwrap() {
                let Ok(method) = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()) else {
                    continue;
                };
                let secured = match op.get("security").and_then(Value::as_array) {
                    Some(reqs) => !reqs.is_empty(),
                    None => global,
                };
                let url = app.url(&p.replace("{id}", "1").replace("{name}", "x.png"));
                let mut req = app.client.request(method, url);
                if ["post", "put", "patch"].contains(&m.as_str()) {
                    req = req.header("content-type", "application/json").body("{}");
                }
                let (s, _, _) = app.send(req).await;
                if (s == StatusCode::UNAUTHORIZED) != secured {
                    wrong.push(format!(
                        "{m} {p}: documented secured={secured}, answered {s}"
                    ));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "security in /openapi.json is wrong: {wrong:#?}"
        );

        let res = app.client.get(app.url("/docs")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let html = res.text().await.unwrap();
        assert!(
            html.contains("<html") && html.contains("openapi"),
            "docs page: {html:.200}"
        );
    }
);

both!(metrics_exposes_engine_and_http_figures, |app| async move {
    let u = app.register(&uname("metrics")).await;
    let conv = conv_id(&app, &u.access, "echo").await;
    let (s, r) = say(&app, &u.access, &conv, "count me").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.unwrap();
    for needle in [
        "questech_http_requests_total{method=\"POST\",route=\"/chat/conversations/{id}/messages\",status=\"200\"}",
        "questech_http_request_duration_seconds_bucket",
        "questech_ws_connections",
        "questech_engine{kind=\"conversation\"}",
        "questech_mailbox_depth_max",
        "questech_actor_restarts_total",
        "questech_chat_turns_total{status=\"complete\"}",
        "questech_chat_turns_per_second",
        "questech_llm_in_flight{provider=\"echo\"}",
        "questech_llm_queued{provider=\"echo\"}",
        "questech_llm_time_to_first_token_seconds_bucket",
        "questech_llm_request_duration_seconds_bucket",
        "questech_credits_charged_total",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
});

both!(
    metrics_token_is_required_when_set,
    env = [("METRICS_TOKEN", "scrape-me")],
    |app| async move {
        let (s, h, b) = app.get("/metrics", None).await;
        assert_unauthorized(s, &h, &b);
        let (s, h, b) = app.get("/metrics", Some("wrong")).await;
        assert_unauthorized(s, &h, &b);
        let res = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth("scrape-me")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        // The ops console reads them with an admin's access token; a user's is forbidden.
        let name = uname("scrape");
        let user = app.register(&name).await;
        let (s, _, b) = app.get("/metrics", Some(&user.access)).await;
        assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
        let admin = app.make_admin(&name).await;
        let res = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth(&admin.access)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
);

both!(admin_actors_shows_live_engine_state, |app| async move {
    let name = uname("ops");
    let u = app.register(&name).await;
    let (s, _, b) = app.get("/admin/actors", Some(&u.access)).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    let admin = app.make_admin(&name).await;
    let conv = conv_id(&app, &admin.access, "echo").await;
    let mut ws = Ws::connect(&app, &admin.access).await;
    ws.chat(&conv, "ops-1", "hello operators").await;
    ws.turn(&conv).await;
    let (s, _, b) = app.get("/admin/actors", Some(&admin.access)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b["actors"]["user_session"].as_u64().unwrap() >= 1, "{b}");
    assert!(b["actors"]["conversation"].as_u64().unwrap() >= 1, "{b}");
    assert!(b["websocket_connections"].as_i64().unwrap() >= 1, "{b}");
    assert!(b["mailbox"]["max_depth"].is_u64(), "{b}");
    assert!(b["mailbox"]["largest"].is_array(), "{b}");
    assert_eq!(b["restarts"], json!({"user_session": 0, "conversation": 0}));
    assert!(b["turns"]["completed"].as_u64().unwrap() >= 1, "{b}");
    let echo = b["llm"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "echo")
        .expect("echo provider listed");
    for k in ["in_flight", "queued", "limit", "queue_capacity", "breaker"] {
        assert!(echo.get(k).is_some(), "{k} in {echo}");
    }
    assert_eq!(echo["breaker"], "closed");
});

both!(
    cors_allows_only_configured_origins,
    env = [("CORS_ORIGINS", "https://app.questech.example")],
    |app| async move {
        let pre = |origin: &'static str| {
            app.client
                .request(reqwest::Method::OPTIONS, app.url("/user/login"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type,authorization",
                )
                .send()
        };
        let ok = pre("https://app.questech.example").await.unwrap();
        assert_eq!(
            ok.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("https://app.questech.example".to_owned())
        );
        let bad = pre("https://evil.example").await.unwrap();
        assert!(bad.headers().get("access-control-allow-origin").is_none());
    }
);
