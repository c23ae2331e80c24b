//! Talking to the server under test for set-up: registering the bench's own users, the admin's
//! login and credit top-ups, conversations. Every failure is an [`ApiError`] with the server's
//! error code, never a panic.

use std::time::Duration;

use futures::{stream, StreamExt, TryStreamExt};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// A failed call: the server's `error.code` (or `http_<status>` / `transport`) and a message.
#[derive(Debug)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ApiError {
    pub fn transport(e: &reqwest::Error) -> Self {
        ApiError {
            code: if e.is_timeout() {
                "timeout".into()
            } else {
                "transport".into()
            },
            message: e.to_string(),
        }
    }
}

/// The error code of a non-2xx answer: `error.code` of the spec's error shape, else
/// `http_<status>`.
pub fn error_code(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("http_{}", status.as_u16()))
}

pub fn http_client(timeout: Duration) -> Result<Client, ApiError> {
    Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .timeout(timeout)
        .build()
        .map_err(|e| ApiError::transport(&e))
}

/// One JSON call; 2xx answers give their body (`Null` when empty).
pub async fn call(
    client: &Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Value, ApiError> {
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.map_err(|e| ApiError::transport(&e))?;
    let status = res.status();
    let bytes = res.bytes().await.map_err(|e| ApiError::transport(&e))?;
    if !status.is_success() {
        return Err(ApiError {
            code: error_code(status, &bytes),
            message: format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        });
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError {
        code: "bad_json".into(),
        message: format!("{url}: {e}"),
    })
}

fn field(v: &Value, path: &[&str]) -> Result<String, ApiError> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().map(str::to_owned).ok_or_else(|| ApiError {
        code: "bad_answer".into(),
        message: format!("missing {} in {v}", path.join(".")),
    })
}

/// A user the bench registered.
#[derive(Clone, Debug)]
pub struct BenchUser {
    pub id: String,
    pub username: String,
    pub access: String,
}

pub const PASSWORD: &str = "bench-password-42";

/// Logs in; returns the access token.
pub async fn login(
    client: &Client,
    base: &str,
    username: &str,
    password: &str,
) -> Result<String, ApiError> {
    let v = call(
        client,
        reqwest::Method::POST,
        &format!("{base}/user/login"),
        None,
        Some(json!({"username": username, "password": password})),
    )
    .await?;
    field(&v, &["tokens", "access_token"])
}

/// Registers `n` users `<prefix>_<i>` (at most `parallel` at once); `tick` is called after each.
pub async fn register_users(
    client: &Client,
    base: &str,
    prefix: &str,
    n: usize,
    parallel: usize,
    tick: &(dyn Fn() + Sync),
) -> Result<Vec<BenchUser>, ApiError> {
    stream::iter(0..n)
        .map(|i| async move {
            let username = format!("{prefix}_{i}");
            let v = call(
                client,
                reqwest::Method::POST,
                &format!("{base}/user/register"),
                None,
                Some(json!({"username": username, "password": PASSWORD})),
            )
            .await?;
            tick();
            Ok::<_, ApiError>(BenchUser {
                id: field(&v, &["user", "id"])?,
                username,
                access: field(&v, &["tokens", "access_token"])?,
            })
        })
        .buffered(parallel.max(1))
        .try_collect()
        .await
}

/// Grants `credits` to each user through the admin API.
pub async fn top_up(
    client: &Client,
    base: &str,
    admin: &str,
    users: &[BenchUser],
    credits: i64,
    parallel: usize,
) -> Result<(), ApiError> {
    stream::iter(users)
        .map(|u| async move {
            call(
                client,
                reqwest::Method::POST,
                &format!("{base}/admin/users/{}/credits", u.id),
                Some(admin),
                Some(json!({"delta": credits, "reason": "questech-bench top-up"})),
            )
            .await
            .map(|_| ())
        })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// Creates a conversation; returns its id.
pub async fn create_conversation(
    client: &Client,
    base: &str,
    token: &str,
    model: Option<&str>,
) -> Result<String, ApiError> {
    let mut body = json!({"title": "questech-bench"});
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    let v = call(
        client,
        reqwest::Method::POST,
        &format!("{base}/chat/conversations"),
        Some(token),
        Some(body),
    )
    .await?;
    field(&v, &["id"])
}

/// Creates an API key for the user; returns the key.
pub async fn create_api_key(client: &Client, base: &str, token: &str) -> Result<String, ApiError> {
    let v = call(
        client,
        reqwest::Method::POST,
        &format!("{base}/user/api-keys"),
        Some(token),
        Some(json!({"name": "questech-bench"})),
    )
    .await?;
    field(&v, &["key"])
}
