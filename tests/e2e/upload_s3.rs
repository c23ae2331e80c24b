//! Uploads in an S3-compatible bucket (`UPLOAD_STORE=s3`, issue 13), against a real S3 server
//! on loopback: moto in server mode, from the CI virtual environment (`MOTO_SERVER`, else
//! `target/ci-venv/bin/moto_server`, installed by `.ci/run`). Two nodes with different
//! `UPLOAD_DIR`s share the bucket: an upload on one is served by the other with the same bytes
//! and headers, is attachable to a chat message there (and reaches the model inline), and a
//! bucket that does not answer gives 503 `unavailable`, never 500.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use questech_fake_upstream::Behavior;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::common::*;
use crate::upload::{png, upload};
use crate::v1::node_with_upstream;
use crate::wsclient::conv_id;

/// A moto server on a loopback port, stopped on drop.
struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`
    endpoint: String,
    http: reqwest::Client,
}

impl Moto {
    /// Starts moto (or SKIPs the test without it) and waits until it answers.
    async fn start() -> Option<Moto> {
        let Some(exe) = ci_tool("MOTO_SERVER", "moto_server") else {
            skip("moto's server (target/ci-venv/bin/moto_server, made by .ci/run, or MOTO_SERVER)");
            return None;
        };
        let port = free_port();
        let log = std::env::temp_dir().join(format!("qt-moto-{port}.log"));
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("moto log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if moto.http.get(&moto.endpoint).send().await.is_ok() {
                return Some(moto);
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("moto_server exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "moto did not answer within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a bucket (moto takes an unsigned `PUT /<bucket>`; object_store cannot create one).
    async fn bucket(&self) -> String {
        let name = format!("qt-{}", rand::random::<u32>());
        let res = self
            .http
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "create bucket: {}", res.status());
        name
    }

    /// `(key, size)` of every object in `bucket`, through the S3 API (`ListObjectsV2`).
    async fn list(&self, bucket: &str) -> Vec<(String, u64)> {
        let res = self
            .http
            .get(format!("{}/{bucket}?list-type=2", self.endpoint))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let xml = res.text().await.unwrap();
        xml.split("<Contents>")
            .skip(1)
            .map(|c| {
                let field = |tag: &str| {
                    let open = format!("<{tag}>");
                    let start =
                        c.find(&open).unwrap_or_else(|| panic!("{tag} in {xml}")) + open.len();
                    let end = c[start..].find("</").unwrap() + start;
                    c[start..end].to_owned()
                };
                (field("Key"), field("Size").parse().unwrap())
            })
            .collect()
    }

    /// The node configuration for `bucket` under `prefix`.
    fn env(&self, bucket: &str, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("UPLOAD_STORE", "s3".into()),
            ("S3_BUCKET", bucket.into()),
            ("S3_ENDPOINT", self.endpoint.clone()),
            ("S3_REGION", "us-east-1".into()),
            ("S3_ACCESS_KEY_ID", "moto-key".into()),
            ("S3_SECRET_ACCESS_KEY", "moto-secret".into()),
            ("S3_PREFIX", prefix.into()),
        ]
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A GET (or HEAD) of `path` on `app` with `headers`: status, headers, body bytes.
async fn get(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = app.client.request(method, app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let (status, h) = (res.status(), res.headers().clone());
    (status, h, res.bytes().await.unwrap().to_vec())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

both!(s3_upload_is_served_by_every_node, |app| async move {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let bucket = moto.bucket().await;
    let env = moto.env(&bucket, "qt/uploads");
    let dir_a = app.data_dir.join("uploads-a");
    let dir_b = app.data_dir.join("uploads-b");
    let mut env_a = pairs(&env);
    env_a.push(("UPLOAD_DIR", dir_a.to_str().unwrap()));
    let a = app.spawn_node(&env_a).await;
    let mut env_b = pairs(&env);
    env_b.push(("UPLOAD_DIR", dir_b.to_str().unwrap()));
    let b = app.spawn_node(&env_b).await;

    let u = a.register(&uname("s3")).await;
    let data = png(300 * 1024 + 7);
    let (s, body) = upload(&a, &u.access, "cat.png", "image/png", &data).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["content_type"], "image/png");
    assert_eq!(body["size"], data.len() as u64);
    let url = body["url"].as_str().unwrap().to_owned();
    let name = url.strip_prefix("/static/").unwrap().to_owned();

    // The object is in the bucket, under the prefix, whole; nothing was written locally.
    assert_eq!(
        moto.list(&bucket).await,
        [(format!("qt/uploads/{name}"), data.len() as u64)]
    );
    assert!(files_in(&dir_a).is_empty(), "{:?}", files_in(&dir_a));
    assert!(files_in(&dir_b).is_empty());

    // Node B (another UPLOAD_DIR) serves the same bytes with the same headers as node A.
    let (sa, ha, bytes_a) = get(&a, reqwest::Method::GET, &url, &[]).await;
    let (sb, hb, bytes_b) = get(&b, reqwest::Method::GET, &url, &[]).await;
    assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK));
    assert!(bytes_b == data, "node B serves the uploaded bytes");
    assert!(bytes_a == data);
    for h in [&ha, &hb] {
        assert_eq!(header(h, "content-type"), "image/png");
        assert_eq!(
            header(h, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(header(h, "x-content-type-options"), "nosniff");
        assert_eq!(header(h, "content-length"), data.len().to_string());
        assert!(header(h, "etag").starts_with('"'), "{h:?}");
        assert!(header(h, "last-modified").ends_with(" GMT"), "{h:?}");
    }
    for k in ["etag", "last-modified", "content-type", "cache-control"] {
        assert_eq!(
            header(&ha, k),
            header(&hb, k),
            "{k} is the same on both nodes"
        );
    }
    // A client holding the current copy gets 304 with its tag; a HEAD gets the length alone.
    let etag = header(&ha, "etag").to_owned();
    let (s, h, bytes) = get(&b, reqwest::Method::GET, &url, &[("if-none-match", &etag)]).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert!(bytes.is_empty());
    assert_eq!(header(&h, "etag"), etag);
    assert_eq!(
        header(&h, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let (s, _, bytes) = get(
        &b,
        reqwest::Method::GET,
        &url,
        &[("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(bytes == data);
    let (s, h, bytes) = get(&b, reqwest::Method::HEAD, &url, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(header(&h, "content-length"), data.len().to_string());
    assert!(bytes.is_empty());

    // Unknown names and names of another shape: 404 in the spec's shape, from either node.
    for path in [
        "/static/123456.png",
        "/static/notes.txt",
        "/static/..%2fx.png",
    ] {
        let (s, _, body) = b.get(path, None).await;
        assert_error(s, &body, StatusCode::NOT_FOUND, "not_found");
    }
    // An object beside the uploads' prefix is not reachable either.
    let (s, _, body) = b.get(&format!("/static/{name}x"), None).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "not_found");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_upload_attaches_on_another_node_and_reaches_the_model() {
    let Some(app) = spawn_app(Backend::Sqlite, &[]).await else {
        return;
    };
    let Some(moto) = Moto::start().await else {
        return;
    };
    let bucket = moto.bucket().await;
    let env = moto.env(&bucket, "");
    let a = app.spawn_node(&pairs(&env)).await;
    let dir_b = app.data_dir.join("uploads-b");
    let mut env_b = pairs(&env);
    env_b.push(("UPLOAD_DIR", dir_b.to_str().unwrap()));
    let (b, up) = node_with_upstream(&app, Behavior::default(), &env_b).await;
    b.sql(
        "UPDATE models SET prompt_per_1k = 10 WHERE id = 'gpt-4o-mini'",
        &[],
    )
    .await;
    b.state.models.invalidate().await.unwrap();

    let u = a.register(&uname("s3img")).await;
    let other = a.register(&uname("s3other")).await;
    let data = png(2048);
    let (s, mine) = upload(&a, &u.access, "cat.png", "image/png", &data).await;
    assert_eq!(s, StatusCode::CREATED, "{mine}");
    let mine = mine["url"].as_str().unwrap().to_owned();
    let (s, theirs) = upload(&a, &other.access, "dog.png", "image/png", &png(100)).await;
    assert_eq!(s, StatusCode::CREATED);
    let theirs = theirs["url"].as_str().unwrap().to_owned();
    assert_eq!(moto.list(&bucket).await.len(), 2);

    let conv = conv_id(&b, &u.access, "gpt-4o-mini").await;
    let path = format!("/chat/conversations/{conv}/messages");
    // Someone else's upload is still refused (ownership is in the database, not the bucket).
    let (s, _, body) = b
        .post(
            &path,
            Some(&u.access),
            Some(json!({"content": "look", "attachments": [{"url": theirs}]})),
        )
        .await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "not_found");
    // One's own, uploaded through node A, is accepted on node B, and the model gets the
    // bucket's bytes inline.
    let (s, _, body) = b
        .post(
            &path,
            Some(&u.access),
            Some(json!({"content": "What is this?", "attachments": [{"url": mine}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["user_message"]["attachments"], json!([{"url": mine}]));
    let sent = up.requests().last().unwrap().body.clone();
    let inline = sent["messages"][0]["content"][1]["image_url"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let b64 = inline
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("{}", &inline[..40.min(inline.len())]));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert!(decoded == data, "the model got the uploaded bytes");
    assert!(files_in(&dir_b).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_is_503_not_500() {
    let Some(app) = spawn_app(Backend::Sqlite, &[]).await else {
        return;
    };
    let Some(mut moto) = Moto::start().await else {
        return;
    };
    let bucket = moto.bucket().await;
    let node = app.spawn_node(&pairs(&moto.env(&bucket, "p"))).await;
    let u = node.register(&uname("s3down")).await;
    let (s, body) = upload(&node, &u.access, "a.png", "image/png", &png(64)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let url = body["url"].as_str().unwrap().to_owned();
    let (s, _, _) = get(&node, reqwest::Method::GET, &url, &[]).await;
    assert_eq!(s, StatusCode::OK);

    // moto stops: reads and writes answer 503 `unavailable` with Retry-After, within seconds.
    moto.child.kill().await.unwrap();
    let t = Instant::now();
    let (s, h, body) = node.get(&url, None).await;
    assert_error(s, &body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(header(&h, "retry-after").parse::<u64>().unwrap() >= 1);
    let (s, body) = upload(&node, &u.access, "b.png", "image/png", &png(64)).await;
    assert_error(s, &body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // A refused upload is not recorded as one of the user's.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE user_id = ?")
        .bind(u.uid())
        .fetch_one(&node.state.db.write)
        .await
        .unwrap();
    assert_eq!(n, 1, "only the first upload is recorded");

    // A bucket endpoint nothing listens on: the same, from the start.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut env = moto.env(&bucket, "");
    env.retain(|(k, _)| *k != "S3_ENDPOINT");
    env.push(("S3_ENDPOINT", closed));
    let down = app.spawn_node(&pairs(&env)).await;
    let (s, body) = upload(&down, &u.access, "c.png", "image/png", &png(64)).await;
    assert_error(s, &body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let (s, h, body) = down.get("/static/42.png", None).await;
    assert_error(s, &body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(h.contains_key("retry-after"));
}
