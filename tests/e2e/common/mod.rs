//! The end-to-end harness: a real Questech server on a loopback port, over SQLite or over a fresh
//! MySQL database plus Redis (a unique key prefix per test), and an HTTP client to talk to it.
//!
//! - [`spawn_app`] / [`spawn_app_with`] start a server; [`TestApp::spawn_node`] starts another node
//!   over the same database (and, with Redis, the same cache) for restart and multi-node tests.
//! - [`both!`] runs one test body on both backends; [`mysql_only!`] on MySQL + Redis alone.
//! - [`Proxy`] sits between the server and MySQL or Redis and can make them unreachable.
//!
//! Configuration goes through `Config::from_map`; the process environment is only read for
//! `TEST_MYSQL_URL`, `TEST_REDIS_URL` and `CI`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;

/// The JWT secret every test server signs with (48 characters), so tests can forge and expire
/// tokens of their own.
pub const JWT_SECRET: &str = "e2e-jwt-secret-0123456789-abcdefghijklmnopqrstuv";
/// The password [`TestApp::register`] uses.
pub const PASSWORD: &str = "correct-horse-42";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file in a temp dir, in-process cache.
    Sqlite,
    /// A fresh MySQL/MariaDB database (`TEST_MYSQL_URL`) and Redis (`TEST_REDIS_URL`) with a
    /// unique key prefix.
    MySqlRedis,
}

/// Extra switches for [`spawn_app_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Route the server's database connections through a [`Proxy`] (`TestApp::db_proxy`).
    /// MySqlRedis only.
    pub db_via_proxy: bool,
    /// Route the server's Redis connections through a [`Proxy`] (`TestApp::cache_proxy`).
    /// MySqlRedis only.
    pub cache_via_proxy: bool,
}

/// A running server and everything needed to talk to it and inspect it.
pub struct TestApp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub state: questech::AppState,
    pub client: reqwest::Client,
    /// Cancelling it stops the server (done on drop).
    pub shutdown: CancellationToken,
    pub backend: Backend,
    /// The map the config was built from (after overrides).
    pub env: HashMap<String, String>,
    /// Temp dir of this test (`DATA_DIR`); shared by every node of the test.
    pub data_dir: PathBuf,
    pub db_proxy: Option<Proxy>,
    pub cache_proxy: Option<Proxy>,
    server: JoinHandle<()>,
    resources: Arc<Resources>,
}

/// What a user got from register/login.
#[derive(Clone, Debug)]
pub struct RegisteredUser {
    pub id: String,
    pub username: String,
    pub access: String,
    pub refresh: String,
    /// The whole 200/201 body.
    pub json: Value,
}

impl RegisteredUser {
    /// The numeric user id (for direct storage calls).
    pub fn uid(&self) -> i64 {
        self.id.parse().expect("user id is a decimal string")
    }
}

/// Spawns a server on `backend` with `env` added to (and overriding) the base config. Returns
/// `None` when the backend needs `TEST_MYSQL_URL`/`TEST_REDIS_URL` and they are unset (after
/// printing `SKIPPED: …`); with `CI=true` it panics instead.
pub async fn spawn_app(backend: Backend, env: &[(&str, &str)]) -> Option<TestApp> {
    spawn_app_with(backend, env, Options::default()).await
}

pub async fn spawn_app_with(
    backend: Backend,
    env: &[(&str, &str)],
    opts: Options,
) -> Option<TestApp> {
    let services = match backend {
        Backend::Sqlite => None,
        Backend::MySqlRedis => match service_urls() {
            Some(s) => Some(s),
            None => {
                skip("TEST_MYSQL_URL and TEST_REDIS_URL");
                return None;
            }
        },
    };
    let tag = random_tag();
    let dir = std::env::temp_dir().join(format!("qt-e2e-{tag}"));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let mut res = Resources {
        dir: dir.clone(),
        mysql: None,
        redis: None,
    };
    let mut map: HashMap<String, String> = [
        ("DATA_DIR", dir.to_string_lossy().into_owned()),
        (
            "UPLOAD_DIR",
            dir.join("uploads").to_string_lossy().into_owned(),
        ),
        ("BIND_ADDR", "127.0.0.1:0".to_owned()),
        ("BCRYPT_COST", "4".to_owned()),
        ("SERVICE_DEBUG", "true".to_owned()),
        ("JWT_SECRET_KEY", JWT_SECRET.to_owned()),
        ("NODE_ID", format!("e2e-{tag}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let (mut db_proxy, mut cache_proxy) = (None, None);
    match services {
        None => {
            assert!(
                !opts.db_via_proxy && !opts.cache_via_proxy,
                "proxies need the MySqlRedis backend"
            );
            map.insert(
                "DATABASE_URL".into(),
                format!("sqlite://{}", dir.join("q.db").display()),
            );
        }
        Some((mysql_url, redis_url)) => {
            let db_name = format!("qt_t_{tag}");
            create_database(&mysql_url, &db_name).await;
            res.mysql = Some((mysql_url.clone(), db_name.clone()));
            let mut db_url = url::Url::parse(&mysql_url).expect("TEST_MYSQL_URL is a URL");
            db_url.set_path(&format!("/{db_name}"));
            if opts.db_via_proxy {
                let p = Proxy::start(&host_port(&db_url, 3306)).await;
                point_at(&mut db_url, p.addr);
                db_proxy = Some(p);
            }
            map.insert("DATABASE_URL".into(), db_url.to_string());

            let prefix = format!("qt_t_{tag}:");
            res.redis = Some((redis_url.clone(), prefix.clone()));
            let mut r_url = url::Url::parse(&redis_url).expect("TEST_REDIS_URL is a URL");
            if opts.cache_via_proxy {
                let p = Proxy::start(&host_port(&r_url, 6379)).await;
                point_at(&mut r_url, p.addr);
                cache_proxy = Some(p);
            }
            map.insert("REDIS_URL".into(), r_url.to_string());
            map.insert("REDIS_PREFIX".into(), prefix);
        }
    }
    for (k, v) in env {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    let mut app = start(backend, map, Arc::new(res)).await;
    app.db_proxy = db_proxy;
    app.cache_proxy = cache_proxy;
    Some(app)
}

async fn start(backend: Backend, map: HashMap<String, String>, res: Arc<Resources>) -> TestApp {
    let config = questech::Config::from_map(&map).expect("test config is valid");
    let state = questech::AppState::build(config)
        .await
        .expect("AppState::build");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let state = state.clone();
        let token = shutdown.clone();
        async move {
            if let Err(e) = questech::server::serve(listener, state, token).await {
                eprintln!("test server stopped with an error: {e}");
            }
        }
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client");
    TestApp {
        addr,
        base: format!("http://{addr}"),
        state,
        client,
        shutdown,
        backend,
        env: map,
        data_dir: res.dir.clone(),
        db_proxy: None,
        cache_proxy: None,
        server,
        resources: res,
    }
}

impl TestApp {
    /// Another server over the same database (and, with Redis, the same key prefix unless `env`
    /// overrides `REDIS_PREFIX`): a second node, or this node after a restart. It has its own
    /// in-process cache on SQLite. Resources are cleaned up when the last node is dropped.
    pub async fn spawn_node(&self, env: &[(&str, &str)]) -> TestApp {
        let mut map = self.env.clone();
        map.insert("NODE_ID".into(), format!("e2e-node-{}", random_tag()));
        for (k, v) in env {
            map.insert((*k).to_owned(), (*v).to_owned());
        }
        start(self.backend, map, self.resources.clone()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request built on `self.client` and reads the answer.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
        let res = req.send().await.expect("request failed to complete");
        read(res).await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        call(&self.client, method, &self.url(path), token, body).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        self.request(Method::POST, path, token, body).await
    }

    pub async fn patch(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        self.request(Method::PATCH, path, token, body).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
        self.request(Method::DELETE, path, token, None).await
    }

    /// Registers `username` with [`PASSWORD`]; asserts 201.
    pub async fn register(&self, username: &str) -> RegisteredUser {
        let (s, _, b) = self
            .post(
                "/user/register",
                None,
                Some(json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "register {username}: {b}");
        registered(username, b)
    }

    /// Logs in; asserts 200.
    pub async fn login(&self, username: &str, password: &str) -> RegisteredUser {
        let (s, _, b) = self.login_raw(username, password).await;
        assert_eq!(s, StatusCode::OK, "login {username}: {b}");
        registered(username, b)
    }

    pub async fn login_raw(
        &self,
        username: &str,
        password: &str,
    ) -> (StatusCode, HeaderMap, Value) {
        self.post(
            "/user/login",
            None,
            Some(json!({"username": username, "password": password})),
        )
        .await
    }

    /// Makes an existing user (registered with [`PASSWORD`]) an admin by SQL and logs in again,
    /// so the new tokens carry the role.
    pub async fn make_admin(&self, username: &str) -> RegisteredUser {
        let n = sqlx::query("UPDATE users SET role = 'admin' WHERE username = ?")
            .bind(username)
            .execute(&self.state.db.write)
            .await
            .expect("update role")
            .rows_affected();
        assert_eq!(n, 1, "no user {username}");
        self.login(username, PASSWORD).await
    }

    /// Runs one statement on the write database (test setup such as disabling a user).
    pub async fn sql(&self, stmt: &str, args: &[&str]) -> u64 {
        let mut q = sqlx::query(stmt);
        for a in args {
            q = q.bind(*a);
        }
        q.execute(&self.state.db.write)
            .await
            .expect("test SQL")
            .rows_affected()
    }

    /// Polls `GET /health` until it answers `status`, or panics after `within`. Returns the body
    /// and how long it took.
    pub async fn wait_health(&self, status: StatusCode, within: Duration) -> (Value, Duration) {
        let t = Instant::now();
        let mut last = None;
        while t.elapsed() < within {
            let req = self
                .client
                .get(self.url("/health"))
                .timeout(Duration::from_secs(10));
            match req.send().await {
                Ok(res) => {
                    let (s, _, b) = read(res).await;
                    if s == status {
                        return (b, t.elapsed());
                    }
                    last = Some((s, b));
                }
                Err(e) => last = Some((StatusCode::IM_A_TEAPOT, Value::String(e.to_string()))),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("/health did not answer {status} within {within:?}; last: {last:?}");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.server.abort();
    }
}

/// One request to `url` on `client` (bearer `token`, JSON `body`), read like [`TestApp::send`]:
/// for servers that are not a [`TestApp`], such as child processes and the nginx in front of them.
pub async fn call(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request failed to complete");
    read(res).await
}

async fn read(res: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.expect("read body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        // Not JSON: keep the text so that shape assertions fail with something readable.
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, headers, body)
}

/// A [`RegisteredUser`] from a register or login answer.
pub fn registered(username: &str, b: Value) -> RegisteredUser {
    RegisteredUser {
        id: b["user"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("user.id is a string: {b}"))
            .to_owned(),
        username: username.to_owned(),
        access: b["tokens"]["access_token"]
            .as_str()
            .expect("tokens.access_token")
            .to_owned(),
        refresh: b["tokens"]["refresh_token"]
            .as_str()
            .expect("tokens.refresh_token")
            .to_owned(),
        json: b,
    }
}

// ---- assertions ---------------------------------------------------------------------------------

/// Asserts the spec's error shape `{"error":{"message","type","code"}}` (nothing else) with the
/// expected status and code. Returns the message.
pub fn assert_error(
    status: StatusCode,
    body: &Value,
    expected_status: StatusCode,
    expected_code: &str,
) -> String {
    assert_eq!(status, expected_status, "status; body: {body}");
    let top = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is an object: {body}"));
    assert_eq!(top.len(), 1, "only `error` at the top: {body}");
    let e = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("`error` is an object: {body}"));
    let mut keys: Vec<_> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "type"], "error keys: {body}");
    let msg = e["message"]
        .as_str()
        .unwrap_or_else(|| panic!("message is a string: {body}"));
    assert!(!msg.trim().is_empty(), "message is not empty: {body}");
    let kind = e["type"]
        .as_str()
        .unwrap_or_else(|| panic!("type is a string: {body}"));
    assert!(!kind.is_empty(), "type is not empty: {body}");
    assert_eq!(e["code"], expected_code, "code: {body}");
    msg.to_owned()
}

/// A 401 in the error shape with `WWW-Authenticate: Bearer`.
pub fn assert_unauthorized(status: StatusCode, headers: &HeaderMap, body: &Value) -> String {
    let msg = assert_error(status, body, StatusCode::UNAUTHORIZED, "unauthorized");
    let www = headers
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok());
    assert_eq!(www, Some("Bearer"), "WWW-Authenticate on a 401: {body}");
    msg
}

/// `invalid_request` whose message names `field`.
pub fn assert_invalid(status: StatusCode, body: &Value, field: &str) {
    let msg = assert_error(status, body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        msg.contains(field),
        "message should name `{field}`: {msg:?}"
    );
}

/// RFC 3339 UTC timestamp.
pub fn assert_rfc3339(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is a string: {v}"));
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"));
    assert_eq!(t.offset().local_minus_utc(), 0, "{s} is UTC");
}

/// The sorted keys of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort_unstable();
    k
}

/// The claims of a JWT (unverified), e.g. to learn a token's `sid`.
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// A unique, valid username for this process (`prefix` + random suffix, at most 20 chars).
pub fn uname(prefix: &str) -> String {
    let mut s = format!("{prefix}_{:08x}", rand::random::<u32>());
    s.truncate(20);
    s
}

// ---- running on both backends -----------------------------------------------------------------

/// Spawns an app on `backend` and runs `f` with it; does nothing if the backend is skipped.
pub async fn run<F, Fut>(backend: Backend, env: &[(&str, &str)], f: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(app) = spawn_app(backend, env).await {
        f(app).await;
    }
}

/// `both!(name, |app| async move { … })` or `both!(name, env = [("K", "V")], |app| …)`: a module
/// `name` with tests `sqlite` and `mysql_redis` running the same body.
macro_rules! both {
    ($name:ident, $(env = [$(($k:expr, $v:expr)),* $(,)?],)? |$app:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::common::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::common::run(
                    $crate::common::Backend::Sqlite,
                    &[$($(($k, $v)),*)?],
                    |$app: $crate::common::TestApp| $body,
                )
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql_redis() {
                $crate::common::run(
                    $crate::common::Backend::MySqlRedis,
                    &[$($(($k, $v)),*)?],
                    |$app: $crate::common::TestApp| $body,
                )
                .await
            }
        }
    };
}

/// `mysql_only!(name, |app| …)`: one test `name` on MySQL + Redis.
macro_rules! mysql_only {
    ($name:ident, $(env = [$(($k:expr, $v:expr)),* $(,)?],)? |$app:ident| $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::common::run(
                $crate::common::Backend::MySqlRedis,
                &[$($(($k, $v)),*)?],
                |$app: $crate::common::TestApp| $body,
            )
            .await
        }
    };
}

// ---- services and cleanup -----------------------------------------------------------------------

fn service_urls() -> Option<(String, String)> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    Some((get("TEST_MYSQL_URL")?, get("TEST_REDIS_URL")?))
}

/// Prints `SKIPPED: <test> needs …`, or panics under `CI=true` (CI must never skip silently).
pub fn skip(needs: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs {needs}, which are not set, and CI=true forbids skipping");
    }
    // Straight to the stderr handle: `eprintln!` would be captured by the test harness and
    // the skip would go unseen.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test} needs {needs}");
}

/// A tool the tests drive: the path in the environment variable `var`, else `bin` of the CI
/// virtual environment (`target/ci-venv/bin/<bin>`, made by `.ci/run`); `None` if neither exists.
pub fn ci_tool(var: &str, bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/ci-venv/bin")
            .join(bin)
    });
    path.exists().then_some(path)
}

pub fn random_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn host_port(u: &url::Url, default_port: u16) -> String {
    format!(
        "{}:{}",
        u.host_str().expect("service URL has a host"),
        u.port().unwrap_or(default_port)
    )
}

fn point_at(u: &mut url::Url, addr: SocketAddr) {
    u.set_host(Some(&addr.ip().to_string()))
        .expect("set proxy host");
    u.set_port(Some(addr.port())).expect("set proxy port");
}

async fn create_database(admin_url: &str, name: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::MySqlConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to TEST_MYSQL_URL: {e}"));
    sqlx::query(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
}

/// What a test created outside the server: its temp dir, its MySQL database, its Redis keys.
/// Removed when the last node of the test is dropped (best effort).
struct Resources {
    dir: PathBuf,
    mysql: Option<(String, String)>,
    redis: Option<(String, String)>,
}

impl Drop for Resources {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.mysql.is_none() && self.redis.is_none() {
            return;
        }
        let mysql = self.mysql.take();
        let redis = self.redis.take();
        // Our own small runtime on a plain thread: the test's runtime may be shutting down.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let work = async {
                    if let Some((url, db)) = mysql {
                        drop_database(&url, &db).await;
                    }
                    if let Some((url, prefix)) = redis {
                        delete_keys(&url, &prefix).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(15), work).await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn drop_database(admin_url: &str, name: &str) {
    use sqlx::Connection as _;
    let Ok(mut conn) = sqlx::MySqlConnection::connect(admin_url).await else {
        return;
    };
    // A connection of the stopped server may still hold a metadata lock: do not wait forever.
    let _ = sqlx::query("SET SESSION lock_wait_timeout = 5")
        .execute(&mut conn)
        .await;
    if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
        .execute(&mut conn)
        .await
    {
        eprintln!("note: could not drop test database {name}: {e}");
    }
    let _ = conn.close().await;
}

async fn delete_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await;
        let Ok((next, keys)) = r else { return };
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

// ---- TCP proxy ----------------------------------------------------------------------------------

/// A TCP forwarder on `127.0.0.1:0` in front of a service. [`Proxy::pause`] drops every
/// connection it carries and blackholes new ones (accepted, never answered: what a network
/// partition looks like to the client); [`Proxy::resume`] closes the blackholed ones and forwards
/// again.
pub struct Proxy {
    pub addr: SocketAddr,
    pub target: String,
    shared: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    paused: bool,
    conns: Vec<AbortHandle>,
    held: Vec<TcpStream>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Mutex::new(ProxyState::default()));
        let accept = tokio::spawn({
            let shared = shared.clone();
            let target = target.to_owned();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let mut st = lock(&shared);
                    if st.paused {
                        st.held.push(client);
                        continue;
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        let Ok(mut upstream) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    });
                    st.conns.retain(|h| !h.is_finished());
                    st.conns.push(task.abort_handle());
                }
            }
        });
        Proxy {
            addr,
            target: target.to_owned(),
            shared,
            accept,
        }
    }

    /// Drops every open connection; new ones are accepted and left hanging.
    pub fn pause(&self) {
        let mut st = lock(&self.shared);
        st.paused = true;
        for h in st.conns.drain(..) {
            h.abort();
        }
    }

    /// Forwards again; connections held while paused are closed.
    pub fn resume(&self) {
        let mut st = lock(&self.shared);
        st.paused = false;
        st.held.clear();
    }

    /// Connections currently forwarded.
    pub fn open_connections(&self) -> usize {
        let mut st = lock(&self.shared);
        st.conns.retain(|h| !h.is_finished());
        st.conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        let mut st = lock(&self.shared);
        for h in st.conns.drain(..) {
            h.abort();
        }
        st.held.clear();
    }
}

fn lock(m: &Mutex<ProxyState>) -> std::sync::MutexGuard<'_, ProxyState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Path of the data dir, for tests that put files there.
pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
