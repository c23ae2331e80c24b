//! The cluster harness (issue 13): real `questech` processes on loopback ports sharing one fresh
//! MariaDB database and one Redis key prefix, with nginx in front, configured from
//! `deploy/nginx.conf` — the deployment of `docker compose up --scale api=3`, on one machine.
//!
//! - [`Cluster::start`] / [`Cluster::start_with`] make the test environment with
//!   [`spawn_app`](crate::common::spawn_app) (database, prefix, temp dir), keep that in-process
//!   server as [`Cluster::app`] for SQL checks (it is a node of the cluster, but nginx does not
//!   send it anything), start the child nodes and nginx, and wait until each answers `/health`.
//! - Each child node talks to a fake OpenAI upstream of its own ([`Cluster::upstream`]), so a test
//!   sees which node served a turn and what that node sent to the model.
//! - Faults: [`Cluster::kill`] (SIGKILL), [`Cluster::pause`] / [`Cluster::resume`]
//!   (SIGSTOP / SIGCONT), [`Cluster::restart`], the database behind a [`Proxy`]
//!   ([`Options::db_proxy`]), and a Redis server of the cluster's own that can be stopped and
//!   started again ([`Options::own_redis`]).
//! - [`Cluster::invariants`] checks, through SQL, what must hold after every case.
//!
//! Dropping a `Cluster` (also while a test panics) kills nginx, every node and its own Redis:
//! each is a child process spawned with `kill_on_drop`, and nginx runs as a single process
//! (`master_process off`), so no worker outlives it.

#![allow(dead_code)]

mod context;
mod db_outage;
mod failover;
mod invariants;
mod ledger;
mod load;
mod logout;
mod nginx;
mod redis_restart;
mod redis_server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use questech_fake_upstream::{Behavior, FakeUpstream};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::common::{self, Backend, Proxy, RegisteredUser, TestApp, PASSWORD};
pub use invariants::Summary;
use nginx::Nginx;

/// How long a node or nginx may take to answer `/health` after it was started.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// What [`Cluster::start_with`] builds.
pub struct Options {
    /// Child nodes behind nginx.
    pub nodes: usize,
    /// Added to (and overriding) the cluster's base config, for every node.
    pub env: Vec<(String, String)>,
    /// The child nodes reach MariaDB through a [`Proxy`] ([`Cluster::db_proxy`]); the in-process
    /// node does not, so SQL checks keep working while it is paused.
    pub db_proxy: bool,
    /// Every node uses a `redis-server` of the cluster's own ([`Cluster::stop_redis`],
    /// [`Cluster::start_redis`]) instead of `TEST_REDIS_URL`.
    pub own_redis: bool,
    /// The fake upstreams' behaviour at start ([`Cluster::set_behavior`] changes it later).
    pub behavior: Behavior,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            env: Vec::new(),
            db_proxy: false,
            own_redis: false,
            behavior: Behavior::default(),
        }
    }
}

/// One child `questech` process. It keeps its port and `NODE_ID` across restarts, so nginx's
/// upstream list stays right.
///
/// Process control takes `&self` (the child sits behind a lock), so a case can kill or pause a
/// node while other tasks send load through the same `&Cluster`.
struct Node {
    node_id: String,
    port: u16,
    env: HashMap<String, String>,
    dir: PathBuf,
    child: tokio::sync::Mutex<Option<Child>>,
    /// The running process's pid, 0 when none: signals need no lock.
    pid: AtomicU32,
}

pub struct Cluster {
    // Field order is drop order: nginx and the nodes go first, the test environment (database,
    // Redis prefix, temp dir; removed when `app` drops) last.
    nginx: Nginx,
    nodes: Vec<Node>,
    upstreams: Vec<FakeUpstream>,
    db_proxy: Option<Proxy>,
    redis: Option<redis_server::RedisServer>,
    /// For requests of the test itself (no proxy, short timeout).
    pub http: reqwest::Client,
    /// The in-process node: SQL checks through `app.state.db`, the cache through
    /// `app.state.cache`. Not behind nginx.
    pub app: TestApp,
}

/// A free loopback port (bound, then released for the process that will listen on it).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Cluster {
    /// Three nodes with the defaults. `None` when skipped (no MariaDB/Redis, or no nginx).
    pub async fn start() -> Option<Cluster> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Option<Cluster> {
        let nginx_bin = nginx::binary()?;
        let redis = if opts.own_redis {
            Some(redis_server::RedisServer::start().await?)
        } else {
            None
        };
        let mut upstreams = Vec::with_capacity(opts.nodes);
        for _ in 0..opts.nodes.max(1) {
            let fake = questech_fake_upstream::start(opts.behavior.clone())
                .await
                .expect("start a fake upstream");
            upstreams.push(fake);
        }
        let key = base64_key();
        let mut env: Vec<(String, String)> = [
            ("OPENAI_API_KEY", "sk-cluster"),
            ("OPENAI_BASE_URL", upstreams[0].base_url.as_str()),
            ("LLM_BACKOFF_BASE_MS", "1"),
            ("ENCRYPTION_KEY", key.as_str()),
            ("SIGNUP_BONUS_CREDITS", "100000"),
            ("USER_RPM", "0"),
            ("USER_MAX_INFLIGHT", "32"),
            ("SMS_PROVIDER", "log"),
            // nginx overwrites X-Forwarded-For with the client's address (deploy/nginx.conf).
            ("TRUST_PROXY_HEADERS", "true"),
            ("SHUTDOWN_GRACE_SECS", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(r) = &redis {
            env.push(("REDIS_URL".into(), r.url()));
        }
        env.extend(opts.env.iter().cloned());
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = common::spawn_app(Backend::MySqlRedis, &pairs).await?;

        let db_proxy = if opts.db_proxy {
            Some(Proxy::start(&host_port(&app.env["DATABASE_URL"], 3306)).await)
        } else {
            None
        };
        let mut nodes = Vec::with_capacity(opts.nodes);
        for (i, fake) in upstreams.iter().enumerate().take(opts.nodes) {
            let node_id = format!("{}-n{i}", app.env["NODE_ID"]);
            let dir = app.data_dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            let mut env = app.env.clone();
            env.insert("OPENAI_BASE_URL".into(), fake.base_url.clone());
            env.insert("NODE_ID".into(), node_id.clone());
            if let Some(p) = &db_proxy {
                let url = via(&env["DATABASE_URL"], p.addr);
                env.insert("DATABASE_URL".into(), url);
            }
            env.entry("RUST_LOG".into())
                .or_insert_with(|| "info".into());
            nodes.push(Node {
                node_id,
                port: free_port(),
                env,
                dir,
                child: tokio::sync::Mutex::new(None),
                pid: AtomicU32::new(0),
            });
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let nginx = Nginx::start(&nginx_bin, &app.data_dir.join("nginx"), &ports).await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        let cluster = Cluster {
            nginx,
            nodes,
            upstreams,
            db_proxy,
            redis,
            http,
            app,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i).await;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i).await;
        }
        cluster.wait_lb_ready().await;
        Some(cluster)
    }

    // ---- addresses ------------------------------------------------------------------------

    /// `http://127.0.0.1:<port>` of node `i`, bypassing nginx.
    pub fn node_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    /// `http://127.0.0.1:<port>` of nginx.
    pub fn lb_url(&self) -> String {
        self.nginx.url()
    }

    /// The `NODE_ID` of node `i` (also what `/health` reports as `node_id`).
    pub fn node_id(&self, i: usize) -> &str {
        &self.nodes[i].node_id
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The fake upstream of node `i`: what that node sent to the model.
    pub fn upstream(&self, i: usize) -> &FakeUpstream {
        &self.upstreams[i]
    }

    /// Changes every fake upstream's behaviour.
    pub fn set_behavior(&self, f: impl Fn(&mut Behavior)) {
        for u in &self.upstreams {
            u.behavior.update(&f);
        }
    }

    /// The proxy between the child nodes and MariaDB ([`Options::db_proxy`]).
    pub fn db_proxy(&self) -> &Proxy {
        self.db_proxy
            .as_ref()
            .expect("Options::db_proxy was not set")
    }

    /// What node `i` wrote to stdout and stderr, over all its runs.
    pub fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("node.log")).unwrap_or_default()
    }

    /// nginx's error log.
    pub fn nginx_log(&self) -> String {
        self.nginx.error_log()
    }

    // ---- requests -------------------------------------------------------------------------

    /// A request to `base` (a node or nginx).
    pub async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        common::call(&self.http, method, &format!("{base}{path}"), token, body).await
    }

    /// `GET` through nginx.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
        self.call(&self.lb_url(), Method::GET, path, token, None)
            .await
    }

    /// `POST` through nginx.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        self.call(&self.lb_url(), Method::POST, path, token, body)
            .await
    }

    /// Registers `username` with [`PASSWORD`] through nginx; asserts 201.
    pub async fn register(&self, username: &str) -> RegisteredUser {
        let body = json!({"username": username, "password": PASSWORD});
        let (s, _, b) = self.post("/user/register", None, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "register {username}: {b}");
        common::registered(username, b)
    }

    /// Logs in through nginx (a new session); asserts 200.
    pub async fn login(&self, username: &str) -> RegisteredUser {
        let body = json!({"username": username, "password": PASSWORD});
        let (s, _, b) = self.post("/user/login", None, Some(body)).await;
        assert_eq!(s, StatusCode::OK, "login {username}: {b}");
        common::registered(username, b)
    }

    /// Creates a conversation on the fake upstreams' model through nginx; returns its id.
    pub async fn conversation(&self, token: &str) -> String {
        let body = json!({"model": "gpt-4o-mini"});
        let (s, _, b) = self
            .post("/chat/conversations", Some(token), Some(body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "create conversation: {b}");
        b["id"].as_str().expect("conversation id").to_owned()
    }

    // ---- processes ------------------------------------------------------------------------

    async fn spawn(&self, i: usize) {
        let node = &self.nodes[i];
        let mut slot = node.child.lock().await;
        assert!(slot.is_none(), "node {i} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("node.log"))
            .expect("open node log");
        let err = log.try_clone().expect("clone node log");
        let child = Command::new(env!("CARGO_BIN_EXE_questech"))
            // No `.env` or `questech.toml` of the developer's is picked up.
            .current_dir(&node.dir)
            .env_clear()
            .envs(&node.env)
            .env("BIND_ADDR", format!("127.0.0.1:{}", node.port))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn questech");
        node.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
        *slot = Some(child);
    }

    /// Waits until node `i` answers `/health` 200; panics with its log if it exits or does not.
    pub async fn wait_ready(&self, i: usize) {
        let url = format!("{}/health", self.node_url(i));
        let t = Instant::now();
        let mut last = String::new();
        while t.elapsed() < READY_WITHIN {
            if let Some(child) = self.nodes[i].child.lock().await.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "node {i} exited ({status}) before it was ready:\n{}",
                        self.node_log(i)
                    );
                }
            }
            match self.http.get(&url).send().await {
                Ok(r) if r.status() == StatusCode::OK => return,
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "node {i} not ready within {READY_WITHIN:?} ({last}):\n{}",
            self.node_log(i)
        );
    }

    async fn wait_lb_ready(&self) {
        let url = format!("{}/health", self.lb_url());
        let t = Instant::now();
        while t.elapsed() < READY_WITHIN {
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nginx not ready:\n{}", self.nginx_log());
    }

    /// The pid of node `i`'s process; panics when it is not running.
    pub fn pid(&self, i: usize) -> u32 {
        match self.nodes[i].pid.load(Ordering::SeqCst) {
            0 => panic!("node {i} is not running"),
            pid => pid,
        }
    }

    /// Whether node `i`'s process is running (or stopped by [`Cluster::pause`]).
    pub async fn is_running(&self, i: usize) -> bool {
        match self.nodes[i].child.lock().await.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Takes node `i`'s process handle; panics when it is not running.
    async fn take_child(&self, i: usize) -> Child {
        let child = self.nodes[i].child.lock().await.take();
        self.nodes[i].pid.store(0, Ordering::SeqCst);
        child.unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// `kill -9` node `i`, and reaps it.
    pub async fn kill(&self, i: usize) {
        let mut child = self.take_child(i).await;
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("reap killed node");
    }

    /// SIGTERM to node `i` (graceful shutdown, SPEC §12); waits up to `within` for it to exit.
    pub async fn terminate(&self, i: usize, within: Duration) -> std::process::ExitStatus {
        signal(self.pid(i), "TERM");
        let mut child = self.take_child(i).await;
        match tokio::time::timeout(within, child.wait()).await {
            Ok(s) => s.expect("reap node"),
            Err(_) => panic!("node {i} did not exit within {within:?} of SIGTERM"),
        }
    }

    /// SIGSTOP to node `i`: it keeps its sockets and leases but does nothing.
    pub fn pause(&self, i: usize) {
        signal(self.pid(i), "STOP");
    }

    /// SIGCONT to node `i` after [`Cluster::pause`].
    pub fn resume(&self, i: usize) {
        signal(self.pid(i), "CONT");
    }

    /// Starts node `i` again (after killing it if it still runs), with the same port and
    /// `NODE_ID`; returns once it answers `/health` 200.
    pub async fn restart(&self, i: usize) {
        if self.nodes[i].pid.load(Ordering::SeqCst) != 0 {
            self.kill(i).await;
        }
        self.spawn(i).await;
        self.wait_ready(i).await;
    }

    /// Kills the cluster's own Redis ([`Options::own_redis`]): its data is gone, connections are
    /// refused until [`Cluster::start_redis`].
    pub async fn stop_redis(&self) {
        self.redis
            .as_ref()
            .expect("Options::own_redis")
            .stop()
            .await;
    }

    /// Starts the cluster's own Redis again, empty, on the same port.
    pub async fn start_redis(&self) {
        self.redis
            .as_ref()
            .expect("Options::own_redis")
            .start_again()
            .await;
    }

    /// Asserts the invariants of every case (see [`invariants`]); returns what it looked at.
    pub async fn invariants(&self) -> Summary {
        invariants::check(&self.app).await
    }
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// `host:port` of a service URL.
fn host_port(url: &str, default_port: u16) -> String {
    let u = url::Url::parse(url).expect("service URL");
    let host = u.host_str().expect("service URL has a host");
    format!("{host}:{}", u.port().unwrap_or(default_port))
}

/// `url` pointed at `addr` instead of its own host and port.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let mut u = url::Url::parse(url).expect("service URL");
    u.set_host(Some(&addr.ip().to_string())).expect("set host");
    u.set_port(Some(addr.port())).expect("set port");
    u.to_string()
}

/// A random AES-256 key in base64 (`ENCRYPTION_KEY`), the same for every node: phone hashes must
/// agree across the cluster.
fn base64_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
