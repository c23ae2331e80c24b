//! Agents, articles and the app config (SPEC §10, §11): what the public sees, admin CRUD,
//! validation, and an agent's prompt and model reaching the upstream.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

const AGENT_KEYS: [&str; 7] = [
    "avatar_url",
    "description",
    "id",
    "model",
    "name",
    "published",
    "temperature",
];

const ARTICLE_KEYS: [&str; 7] = [
    "body",
    "category",
    "cover_url",
    "id",
    "published_at",
    "summary",
    "title",
];

async fn admin(app: &TestApp) -> RegisteredUser {
    let u = app.register(&uname("adm")).await;
    app.make_admin(&u.username).await
}

async fn create_agent(app: &TestApp, token: &str, body: Value) -> Value {
    let (s, _, b) = app.post("/admin/agents", Some(token), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b
}

async fn create_article(app: &TestApp, token: &str, body: Value) -> Value {
    let (s, _, b) = app.post("/admin/articles", Some(token), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items is an array: {list}"))
        .iter()
        .map(|i| i["id"].as_str().expect("id is a string").to_owned())
        .collect()
}

fn assert_page(list: &Value, page: i64, page_size: i64, total: i64) {
    assert_eq!(
        keys(list),
        ["items", "page", "page_size", "total"],
        "paged shape: {list}"
    );
    assert_eq!(list["page"], page, "{list}");
    assert_eq!(list["page_size"], page_size, "{list}");
    assert_eq!(list["total"], total, "{list}");
}

both!(agents_public_and_admin_views, |app| async move {
    let adm = admin(&app).await;
    let user = app.register(&uname("u")).await;
    let a = create_agent(
        &app,
        &adm.access,
        json!({"name": "  Poet  ", "description": "writes verse", "avatar_url": "/static/1.png",
               "model": "echo", "temperature": 0.7, "system_prompt": "You are a poet.", "published": true}),
    )
    .await;
    let mut admin_keys: Vec<&str> = AGENT_KEYS.to_vec();
    admin_keys.extend(["created_at", "system_prompt", "updated_at"]);
    admin_keys.sort_unstable();
    assert_eq!(keys(&a), admin_keys, "admin agent fields: {a}");
    assert_eq!(a["name"], "Poet", "name is trimmed");
    assert_eq!(a["system_prompt"], "You are a poet.");
    assert_eq!(a["temperature"], 0.7);
    assert_eq!(a["published"], true);
    assert_rfc3339(&a["created_at"]);
    let a_id = a["id"].as_str().unwrap().to_owned();
    assert!(a_id.parse::<i64>().is_ok_and(|n| n > 0), "{a_id}");

    let hidden = create_agent(
        &app,
        &adm.access,
        json!({"name": "Draft", "model": "echo", "system_prompt": "secret"}),
    )
    .await;
    assert_eq!(hidden["published"], false, "unpublished by default");
    assert_eq!(hidden["temperature"], 1.0, "default temperature");
    let h_id = hidden["id"].as_str().unwrap().to_owned();

    // The public (no token needed) sees the published one only, never a system prompt.
    for token in [None, Some(user.access.as_str())] {
        let (s, _, list) = app.get("/intelligent/agents", token).await;
        assert_eq!(s, StatusCode::OK, "{list}");
        assert_page(&list, 1, 20, 1);
        assert_eq!(ids(&list), [a_id.as_str()]);
        assert_eq!(keys(&list["items"][0]), AGENT_KEYS, "public fields: {list}");
        assert!(!list.to_string().contains("You are a poet."), "{list}");

        let (s, _, one) = app.get(&format!("/intelligent/agents/{a_id}"), token).await;
        assert_eq!(s, StatusCode::OK, "{one}");
        assert_eq!(keys(&one), AGENT_KEYS, "public fields: {one}");
        assert_eq!(one["name"], "Poet");
        assert_eq!(one["model"], "echo");

        let (s, _, b) = app.get(&format!("/intelligent/agents/{h_id}"), token).await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    }
    for bad in ["0", "abc", "99999999999", "-1"] {
        let (s, _, b) = app.get(&format!("/intelligent/agents/{bad}"), None).await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    }

    // Admins see everything, paginated.
    let (s, _, list) = app
        .get("/admin/agents?page_size=1", Some(&adm.access))
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_page(&list, 1, 1, 2);
    assert_eq!(ids(&list), [a_id.as_str()]);
    let (_, _, list) = app
        .get("/admin/agents?page=2&page_size=1", Some(&adm.access))
        .await;
    assert_page(&list, 2, 1, 2);
    assert_eq!(ids(&list), [h_id.as_str()]);
    assert_eq!(list["items"][0]["system_prompt"], "secret");
    let (_, _, list) = app
        .get("/admin/agents?page=3&page_size=1", Some(&adm.access))
        .await;
    assert_eq!(ids(&list), Vec::<String>::new());
    let (s, _, one) = app
        .get(&format!("/admin/agents/{h_id}"), Some(&adm.access))
        .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(one["system_prompt"], "secret");

    // Partial update: only the given fields change; publishing makes it public.
    let (s, _, p) = app
        .patch(
            &format!("/admin/agents/{h_id}"),
            Some(&adm.access),
            Some(json!({"published": true, "temperature": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["published"], true);
    assert_eq!(p["temperature"], 0.0);
    assert_eq!(p["name"], "Draft", "untouched");
    assert_eq!(p["system_prompt"], "secret", "untouched");
    let (_, _, list) = app.get("/intelligent/agents", None).await;
    assert_page(&list, 1, 20, 2);
    assert_eq!(ids(&list), [a_id.clone(), h_id.clone()]);
    let (s, _, p) = app
        .patch(
            &format!("/admin/agents/{h_id}"),
            Some(&adm.access),
            Some(json!({"published": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    let (_, _, list) = app.get("/intelligent/agents", None).await;
    assert_eq!(ids(&list), [a_id.as_str()]);

    // Delete: 204, then 404 everywhere.
    let (s, _, b) = app
        .delete(&format!("/admin/agents/{a_id}"), Some(&adm.access))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, _, b) = app
        .delete(&format!("/admin/agents/{a_id}"), Some(&adm.access))
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app
        .get(&format!("/admin/agents/{a_id}"), Some(&adm.access))
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app
        .patch(
            &format!("/admin/agents/{a_id}"),
            Some(&adm.access),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app.get(&format!("/intelligent/agents/{a_id}"), None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (_, _, list) = app.get("/intelligent/agents", None).await;
    assert_page(&list, 1, 20, 0);
});

both!(agent_validation, |app| async move {
    let adm = admin(&app).await;
    let long = "x".repeat(129);
    let cases = [
        (json!({"model": "echo"}), "name"),
        (json!({"name": "A"}), "model"),
        (json!({"name": "", "model": "echo"}), "name"),
        (json!({"name": "   ", "model": "echo"}), "name"),
        (json!({"name": long, "model": "echo"}), "name"),
        (
            json!({"name": "A", "model": "echo", "temperature": 2.5}),
            "temperature",
        ),
        (
            json!({"name": "A", "model": "echo", "temperature": -0.1}),
            "temperature",
        ),
        (
            json!({"name": "A", "model": "echo", "avatar_url": "ftp://x/y.png"}),
            "avatar_url",
        ),
        (
            json!({"name": "A", "model": "echo", "avatar_url": "javascript:alert(1)"}),
            "avatar_url",
        ),
        (
            json!({"name": "A", "model": "echo", "avatar_url": "not a url"}),
            "avatar_url",
        ),
        (
            json!({"name": "A", "model": "echo", "description": "d".repeat(4001)}),
            "description",
        ),
    ];
    for (body, field) in cases {
        let (s, _, b) = app
            .post("/admin/agents", Some(&adm.access), Some(body.clone()))
            .await;
        assert_invalid(s, &b, field);
    }
    // A model that does not exist is named by the 404 of a missing model.
    let (s, _, b) = app
        .post(
            "/admin/agents",
            Some(&adm.access),
            Some(json!({"name": "A", "model": "no-such-model"})),
        )
        .await;
    let msg = assert_error(s, &b, StatusCode::NOT_FOUND, "model_not_found");
    assert!(msg.contains("no-such-model"), "{msg}");
    // Wrong types and malformed JSON are 400 as well.
    let (s, _, b) = app
        .post(
            "/admin/agents",
            Some(&adm.access),
            Some(json!({"name": "A", "model": "echo", "temperature": "hot"})),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, _, b) = app
        .send(
            app.client
                .post(app.url("/admin/agents"))
                .bearer_auth(&adm.access)
                .header("content-type", "application/json")
                .body("{\"name\":"),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    // Nothing was created.
    let (_, _, list) = app.get("/admin/agents", Some(&adm.access)).await;
    assert_eq!(list["total"], 0, "{list}");

    // The same rules on PATCH; a failed PATCH changes nothing.
    let a = create_agent(
        &app,
        &adm.access,
        json!({"name": "Ok", "model": "echo", "avatar_url": "https://cdn.example.com/a.png", "temperature": 2}),
    )
    .await;
    assert_eq!(a["avatar_url"], "https://cdn.example.com/a.png");
    let id = a["id"].as_str().unwrap();
    for (body, field) in [
        (json!({"model": ""}), "model"),
        (json!({"temperature": 3}), "temperature"),
        (json!({"name": ""}), "name"),
        (json!({"avatar_url": "file:///etc/passwd"}), "avatar_url"),
    ] {
        let (s, _, b) = app
            .patch(
                &format!("/admin/agents/{id}"),
                Some(&adm.access),
                Some(body),
            )
            .await;
        assert_invalid(s, &b, field);
    }
    let (_, _, now) = app
        .get(&format!("/admin/agents/{id}"), Some(&adm.access))
        .await;
    assert_eq!(now["name"], "Ok");
    assert_eq!(now["model"], "echo");
    assert_eq!(now["temperature"], 2.0);
});

both!(admin_content_routes_need_an_admin, |app| async move {
    let adm = admin(&app).await;
    let user = app.register(&uname("u")).await;
    let a = create_agent(&app, &adm.access, json!({"name": "A", "model": "echo"})).await;
    let ar = create_article(&app, &adm.access, json!({"title": "T"})).await;
    let (a_id, ar_id) = (a["id"].as_str().unwrap(), ar["id"].as_str().unwrap());
    let routes: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (reqwest::Method::GET, "/admin/agents".into(), None),
        (
            reqwest::Method::POST,
            "/admin/agents".into(),
            Some(json!({"name": "B", "model": "echo"})),
        ),
        (reqwest::Method::GET, format!("/admin/agents/{a_id}"), None),
        (
            reqwest::Method::PATCH,
            format!("/admin/agents/{a_id}"),
            Some(json!({"name": "C"})),
        ),
        (
            reqwest::Method::DELETE,
            format!("/admin/agents/{a_id}"),
            None,
        ),
        (reqwest::Method::GET, "/admin/articles".into(), None),
        (
            reqwest::Method::POST,
            "/admin/articles".into(),
            Some(json!({"title": "B"})),
        ),
        (
            reqwest::Method::GET,
            format!("/admin/articles/{ar_id}"),
            None,
        ),
        (
            reqwest::Method::PATCH,
            format!("/admin/articles/{ar_id}"),
            Some(json!({"title": "C"})),
        ),
        (
            reqwest::Method::DELETE,
            format!("/admin/articles/{ar_id}"),
            None,
        ),
        (
            reqwest::Method::PUT,
            "/admin/config/app".into(),
            Some(json!({"k": "v"})),
        ),
        (reqwest::Method::GET, "/admin/users".into(), None),
        (
            reqwest::Method::PATCH,
            format!("/admin/users/{}", user.id),
            Some(json!({"role": "admin"})),
        ),
    ];
    for (method, path, body) in routes {
        let (s, _, b) = app
            .request(method.clone(), &path, Some(&user.access), body.clone())
            .await;
        assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
        let (s, h, b) = app.request(method.clone(), &path, None, body).await;
        assert_unauthorized(s, &h, &b);
    }
    // A body a user sends is refused for the role before it is even parsed.
    let (s, _, b) = app
        .send(
            app.client
                .post(app.url("/admin/agents"))
                .bearer_auth(&user.access)
                .header("content-type", "application/json")
                .body("not json"),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    // Nothing changed.
    let (_, _, one) = app
        .get(&format!("/admin/agents/{a_id}"), Some(&adm.access))
        .await;
    assert_eq!(one["name"], "A");
    let (_, _, cfg) = app.get("/config/app", None).await;
    assert_eq!(cfg, json!({}));
    let (_, _, me) = app.get("/user/me", Some(&user.access)).await;
    assert_eq!(me["role"], "user");
});

/// A conversation created from an agent sends the agent's system prompt to the agent's model;
/// a normal user never sees the prompt.
async fn agent_prompt_reaches_upstream(backend: Backend) {
    let fake = questech_fake_upstream::start(questech_fake_upstream::Behavior::default())
        .await
        .expect("fake upstream");
    let Some(app) = spawn_app(
        backend,
        &[
            ("OPENAI_API_KEY", "sk-test"),
            ("OPENAI_BASE_URL", fake.base_url.as_str()),
        ],
    )
    .await
    else {
        return;
    };
    let adm = admin(&app).await;
    let prompt = "You are Captain Hook. Always answer like a pirate.";
    let agent = create_agent(
        &app,
        &adm.access,
        json!({"name": "Pirate", "model": "gpt-4o-mini", "system_prompt": prompt, "published": true}),
    )
    .await;
    let agent_id = agent["id"].as_str().unwrap();
    let draft = create_agent(
        &app,
        &adm.access,
        json!({"name": "Draft", "model": "gpt-4o-mini", "system_prompt": "x"}),
    )
    .await;

    let user = app.register(&uname("u")).await;
    let (s, _, one) = app
        .get(
            &format!("/intelligent/agents/{agent_id}"),
            Some(&user.access),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert!(one.get("system_prompt").is_none(), "{one}");
    let (s, _, b) = app
        .get(&format!("/admin/agents/{agent_id}"), Some(&user.access))
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");

    // An unpublished agent cannot be used.
    let (s, _, b) = app
        .post(
            "/chat/conversations",
            Some(&user.access),
            Some(json!({"agent_id": draft["id"]})),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");

    let (s, _, conv) = app
        .post(
            "/chat/conversations",
            Some(&user.access),
            Some(json!({"agent_id": agent_id})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{conv}");
    assert_eq!(conv["model"], "gpt-4o-mini", "the agent's model: {conv}");
    assert_eq!(conv["agent_id"], agent_id);
    assert!(!conv.to_string().contains("Captain Hook"), "{conv}");
    let cid = conv["id"].as_str().unwrap();
    fake.clear_requests();
    let (s, _, sent) = app
        .post(
            &format!("/chat/conversations/{cid}/messages"),
            Some(&user.access),
            Some(json!({"content": "Where is the treasure?"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{sent}");
    assert_eq!(
        sent["assistant_message"]["content"],
        "Hello from fake upstream"
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1, "one upstream call");
    let body = &reqs[0].body;
    assert_eq!(body["model"], "gpt-4o-mini", "{body}");
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": prompt}),
        "{body}"
    );
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last,
        json!({"role": "user", "content": "Where is the treasure?"})
    );
    // The history the user reads back has no system prompt in it either.
    let (_, _, msgs) = app
        .get(
            &format!("/chat/conversations/{cid}/messages"),
            Some(&user.access),
        )
        .await;
    assert!(!msgs.to_string().contains("Captain Hook"), "{msgs}");
    drop(app);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_prompt_reaches_upstream_sqlite() {
    agent_prompt_reaches_upstream(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_prompt_reaches_upstream_mysql_redis() {
    agent_prompt_reaches_upstream(Backend::MySqlRedis).await;
}

both!(articles_visibility_order_and_category, |app| async move {
    let adm = admin(&app).await;
    let mut published = Vec::new();
    for (i, cat) in ["news", "guides", "news"].iter().enumerate() {
        let a = create_article(
            &app,
            &adm.access,
            json!({"title": format!("Article {i}"), "summary": "s", "body": "b", "category": cat,
                   "cover_url": "https://img.example.com/c.jpg", "published": true}),
        )
        .await;
        assert_eq!(a["published"], true);
        assert_rfc3339(&a["published_at"]);
        published.push(a["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let draft = create_article(
        &app,
        &adm.access,
        json!({"title": "Draft", "category": "news"}),
    )
    .await;
    assert_eq!(draft["published"], false);
    assert!(draft["published_at"].is_null(), "{draft}");
    let draft_id = draft["id"].as_str().unwrap().to_owned();

    // Newest published first; drafts never listed.
    let (s, _, list) = app.get("/content/articles", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_page(&list, 1, 20, 3);
    let newest_first: Vec<String> = published.iter().rev().cloned().collect();
    assert_eq!(ids(&list), newest_first);
    assert_eq!(keys(&list["items"][0]), ARTICLE_KEYS, "{list}");
    assert_eq!(
        list["items"][0]["cover_url"],
        "https://img.example.com/c.jpg"
    );

    let (_, _, news) = app.get("/content/articles?category=news", None).await;
    assert_page(&news, 1, 20, 2);
    assert_eq!(ids(&news), [published[2].clone(), published[0].clone()]);
    let (_, _, none) = app.get("/content/articles?category=nothing", None).await;
    assert_page(&none, 1, 20, 0);
    let (_, _, p2) = app.get("/content/articles?page=2&page_size=2", None).await;
    assert_page(&p2, 2, 2, 3);
    assert_eq!(ids(&p2), [published[0].clone()]);
    let (_, _, clamp) = app.get("/content/articles?page_size=1000", None).await;
    assert_eq!(clamp["page_size"], 100, "{clamp}");
    let (s, _, b) = app.get("/content/articles?page=abc", None).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, _, b) = app
        .get(
            &format!("/content/articles?category={}", "c".repeat(65)),
            None,
        )
        .await;
    assert_invalid(s, &b, "category");

    let (s, _, one) = app
        .get(&format!("/content/articles/{}", published[1]), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(keys(&one), ARTICLE_KEYS);
    assert_eq!(one["title"], "Article 1");
    assert_eq!(one["category"], "guides");
    let (s, _, b) = app
        .get(&format!("/content/articles/{draft_id}"), None)
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, _, b) = app.get("/content/articles/nope", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");

    // published_at is set when first published and kept through unpublish/republish.
    let first_at = list["items"][2]["published_at"].clone();
    let oldest = &published[0];
    let (s, _, un) = app
        .patch(
            &format!("/admin/articles/{oldest}"),
            Some(&adm.access),
            Some(json!({"published": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{un}");
    assert_eq!(un["published"], false);
    assert_eq!(un["published_at"], first_at, "kept while unpublished");
    let (s, _, b) = app.get(&format!("/content/articles/{oldest}"), None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (_, _, list) = app.get("/content/articles", None).await;
    assert_eq!(list["total"], 2);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, _, re) = app
        .patch(
            &format!("/admin/articles/{oldest}"),
            Some(&adm.access),
            Some(json!({"published": true})),
        )
        .await;
    assert_eq!(re["published_at"], first_at, "not reset on republish");
    let (_, _, list) = app.get("/content/articles", None).await;
    assert_eq!(ids(&list), newest_first, "keeps its place");

    // Publishing the draft now makes it the newest.
    let (_, _, pubd) = app
        .patch(
            &format!("/admin/articles/{draft_id}"),
            Some(&adm.access),
            Some(json!({"published": true, "title": "Fresh"})),
        )
        .await;
    assert_rfc3339(&pubd["published_at"]);
    assert_eq!(pubd["title"], "Fresh");
    let (_, _, list) = app.get("/content/articles", None).await;
    assert_eq!(ids(&list)[0], draft_id);
    assert_eq!(list["items"][0]["title"], "Fresh");
});

both!(articles_admin_crud_and_validation, |app| async move {
    let adm = admin(&app).await;
    for (body, field) in [
        (json!({}), "title"),
        (json!({"title": ""}), "title"),
        (json!({"title": "t".repeat(256)}), "title"),
        (
            json!({"title": "T", "summary": "s".repeat(4001)}),
            "summary",
        ),
        (json!({"title": "T", "body": "b".repeat(200_001)}), "body"),
        (
            json!({"title": "T", "category": "c".repeat(65)}),
            "category",
        ),
        (json!({"title": "T", "category": "a\nb"}), "category"),
        (
            json!({"title": "T", "cover_url": "data:image/png;base64,AAAA"}),
            "cover_url",
        ),
    ] {
        let (s, _, b) = app
            .post("/admin/articles", Some(&adm.access), Some(body))
            .await;
        assert_invalid(s, &b, field);
    }
    let a = create_article(
        &app,
        &adm.access,
        json!({"title": "Hello", "body": "long text", "cover_url": "/static/12.png"}),
    )
    .await;
    let mut admin_keys: Vec<&str> = ARTICLE_KEYS.to_vec();
    admin_keys.extend(["created_at", "published", "updated_at"]);
    admin_keys.sort_unstable();
    assert_eq!(keys(&a), admin_keys, "{a}");
    let id = a["id"].as_str().unwrap();
    let (s, _, got) = app
        .get(&format!("/admin/articles/{id}"), Some(&adm.access))
        .await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["body"], "long text");
    let (s, _, p) = app
        .patch(
            &format!("/admin/articles/{id}"),
            Some(&adm.access),
            Some(json!({"summary": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["summary"], "short");
    assert_eq!(p["title"], "Hello", "untouched");
    let (s, _, b) = app
        .patch(
            &format!("/admin/articles/{id}"),
            Some(&adm.access),
            Some(json!({"title": ""})),
        )
        .await;
    assert_invalid(s, &b, "title");
    let (_, _, list) = app.get("/admin/articles", Some(&adm.access)).await;
    assert_page(&list, 1, 20, 1);
    assert_eq!(list["items"][0]["published"], false);
    let (s, _, _) = app
        .delete(&format!("/admin/articles/{id}"), Some(&adm.access))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for (method, body) in [
        (reqwest::Method::GET, None),
        (reqwest::Method::PATCH, Some(json!({"title": "x"}))),
        (reqwest::Method::DELETE, None),
    ] {
        let (s, _, b) = app
            .request(
                method,
                &format!("/admin/articles/{id}"),
                Some(&adm.access),
                body,
            )
            .await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    }
});

both!(app_config_is_replaced_whole, |app| async move {
    let adm = admin(&app).await;
    let (s, h, cfg) = app.get("/config/app", None).await;
    assert_eq!(s, StatusCode::OK, "{cfg}");
    assert_eq!(cfg, json!({}), "empty before any admin set it");
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));

    let first = json!({"theme": "dark", "features": {"toolkit": true}, "min_version": "1.2.0"});
    let (s, _, put) = app
        .request(
            reqwest::Method::PUT,
            "/admin/config/app",
            Some(&adm.access),
            Some(first.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{put}");
    assert_eq!(put, first);
    let (_, _, cfg) = app.get("/config/app", None).await;
    assert_eq!(cfg, first);

    // A second PUT replaces everything (keys not given are gone), and is seen at once.
    let second = json!({"banner": "hello"});
    let (s, _, _) = app
        .request(
            reqwest::Method::PUT,
            "/admin/config/app",
            Some(&adm.access),
            Some(second.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, cfg) = app.get("/config/app", None).await;
    assert_eq!(cfg, second);
    let user = app.register(&uname("u")).await;
    let (_, _, cfg) = app.get("/config/app", Some(&user.access)).await;
    assert_eq!(cfg, second);

    // Only objects; not over 64 KiB.
    for bad in [json!([1, 2]), json!("x"), json!(1), json!(null)] {
        let (s, _, b) = app
            .request(
                reqwest::Method::PUT,
                "/admin/config/app",
                Some(&adm.access),
                Some(bad),
            )
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let big = json!({"blob": "x".repeat(70 * 1024)});
    let (s, _, b) = app
        .request(
            reqwest::Method::PUT,
            "/admin/config/app",
            Some(&adm.access),
            Some(big),
        )
        .await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let (_, _, cfg) = app.get("/config/app", None).await;
    assert_eq!(cfg, second, "failed PUTs change nothing");
    let (s, _, _) = app
        .request(
            reqwest::Method::PUT,
            "/admin/config/app",
            Some(&adm.access),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, cfg) = app.get("/config/app", None).await;
    assert_eq!(cfg, json!({}));

    // Another node over the same Redis cache sees a change at once, even after it cached the
    // old value (SQLite nodes each have their own in-process cache, so MySQL + Redis only).
    if app.backend == Backend::MySqlRedis {
        let node = app.spawn_node(&[]).await;
        let (_, _, cfg) = node.get("/config/app", None).await;
        assert_eq!(cfg, json!({}));
        let third = json!({"node": "b"});
        let (s, _, _) = app
            .request(
                reqwest::Method::PUT,
                "/admin/config/app",
                Some(&adm.access),
                Some(third.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (_, _, cfg) = node.get("/config/app", None).await;
        assert_eq!(cfg, third, "the other node sees the change at once");
    }
});

both!(routes_are_in_the_openapi_document, |app| async move {
    let (s, _, doc) = app.get("/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/intelligent/agents", &["get"][..]),
        ("/intelligent/agents/{id}", &["get"]),
        ("/content/articles", &["get"]),
        ("/content/articles/{id}", &["get"]),
        ("/config/app", &["get"]),
        ("/admin/agents", &["get", "post"]),
        ("/admin/agents/{id}", &["get", "patch", "delete"]),
        ("/admin/articles", &["get", "post"]),
        ("/admin/articles/{id}", &["get", "patch", "delete"]),
        ("/admin/config/app", &["put"]),
        ("/admin/users", &["get"]),
        ("/admin/users/{id}", &["patch"]),
        ("/toolkit/translate", &["post"]),
        ("/toolkit/summarize", &["post"]),
        ("/common/upload", &["post"]),
        ("/static/{name}", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} is documented");
        }
    }
});
