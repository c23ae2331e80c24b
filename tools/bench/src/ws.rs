//! `ws`: N users × M WebSocket connections, each sending chat turns in its own conversation;
//! closed loop (the next `chat.send` after `chat.done`) or paced by a global `--rate`.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::api;
use crate::stats::{parse_duration, Bounds, Stats};
use crate::v1::Pacer;
use crate::Ctx;

pub type Ws = WebSocketStream<TcpStream>;

#[derive(Args, Debug)]
pub struct WsArgs {
    /// Bench users.
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// WebSocket connections per user (each with its own conversation).
    #[arg(long, default_value_t = 1)]
    pub sockets: usize,
    /// Total turns per second over all sockets (default: closed loop, as fast as answered).
    #[arg(long)]
    pub rate: Option<f64>,
    /// The user message of each turn.
    #[arg(long, default_value = "Hello! Please tell me something interesting.")]
    pub content: String,
    /// A turn with no `chat.done` / `chat.error` after this long counts as `turn_timeout`.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub turn_timeout: Duration,
}

/// The `ws://…/ws` URL and the socket address of a server base URL.
pub async fn endpoint(base: &str) -> Result<(String, SocketAddr), String> {
    let url = url::Url::parse(base).map_err(|e| format!("--url {base}: {e}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("--url {base}: no host"))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let scheme = match url.scheme() {
        "http" => "ws",
        other => {
            return Err(format!(
                "--url {base}: scheme {other} is not supported (http only)"
            ))
        }
    };
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {host}: no address"))?;
    let path = url.path().trim_end_matches('/');
    Ok((format!("{scheme}://{host}:{port}{path}/ws"), addr))
}

/// An error code for an I/O failure (`io_addr_not_available`, `io_errno_24`, …).
pub fn io_code(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::Other => format!("io_errno_{}", e.raw_os_error().unwrap_or(0)),
        k => {
            let name = format!("{k:?}");
            let mut out = String::from("io_");
            for (i, c) in name.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            }
            out
        }
    }
}

fn ws_code(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => {
            let body = resp.body().as_deref().unwrap_or(&[]);
            api::error_code(resp.status(), body)
        }
        tungstenite::Error::Io(io) => io_code(io),
        _ => "ws_handshake".into(),
    }
}

/// Connects a WebSocket with a bearer token (from `source` if given) and waits for `hello`.
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    url: &str,
    token: &str,
    hello_timeout: Duration,
) -> Result<Ws, String> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_code(&e))?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0)).map_err(|e| io_code(&e))?;
    }
    let tcp = sock.connect(addr).await.map_err(|e| io_code(&e))?;
    let _ = tcp.set_nodelay(true);
    let mut req = url
        .into_client_request()
        .map_err(|_| "bad_url".to_owned())?;
    let auth =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "bad_token".to_owned())?;
    req.headers_mut().insert("authorization", auth);
    // Small buffers: tungstenite zero-fills its whole read buffer (128 KiB by default) before
    // every read, which would cost the load generator more CPU than the frames themselves.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .map_err(|e| ws_code(&e))?;
    match tokio::time::timeout(hello_timeout, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => {
            if frame_kind(t.as_str()).as_deref() == Some("hello") {
                Ok(ws)
            } else {
                Err("no_hello".into())
            }
        }
        Ok(_) => Err("socket_closed".into()),
        Err(_) => Err("hello_timeout".into()),
    }
}

#[derive(Deserialize)]
struct In<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    conversation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<InErr<'a>>,
}

#[derive(Deserialize)]
struct InErr<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

fn frame_kind(text: &str) -> Option<String> {
    serde_json::from_str::<In>(text)
        .ok()
        .map(|f| f.kind.into_owned())
}

enum Outcome {
    Done,
    Failed(String),
    Timeout,
    Closed,
    Abandoned,
}

struct Socket {
    tag: String,
    token: String,
    conversation: String,
}

#[allow(clippy::too_many_arguments)]
/// The turn a worker waits on.
struct Turn<'a> {
    id: &'a str,
    conversation: &'a str,
    t0: Instant,
    deadline: tokio::time::Instant,
}

/// Reads frames until the turn ends, recording ack, first-delta and done latencies.
async fn await_turn(
    ws: &mut Ws,
    st: &mut Stats,
    turn: &Turn<'_>,
    stop: &tokio_util::sync::CancellationToken,
) -> Outcome {
    let (id, t0, deadline) = (turn.id, turn.t0, turn.deadline);
    let mut first_delta = false;
    loop {
        let next = tokio::select! {
            m = tokio::time::timeout_at(deadline, ws.next()) => m,
            _ = stop.cancelled() => return Outcome::Abandoned,
        };
        let text = match next {
            Err(_) => return Outcome::Timeout,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                return Outcome::Closed
            }
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
        };
        let Ok(f) = serde_json::from_str::<In>(text.as_str()) else {
            return Outcome::Failed("bad_frame".into());
        };
        let ours = f.conversation_id.as_deref() == Some(turn.conversation);
        match f.kind.as_ref() {
            "chat.ack" if f.id.as_deref() == Some(id) => {
                st.lat("ack").record(t0.elapsed());
            }
            "chat.delta" if ours && !first_delta => {
                first_delta = true;
                st.lat("first_delta").record(t0.elapsed());
            }
            "chat.done" if ours => {
                st.lat("done").record(t0.elapsed());
                return Outcome::Done;
            }
            "chat.error" if ours || f.id.as_deref() == Some(id) => {
                let code = f
                    .error
                    .and_then(|e| e.code)
                    .map_or_else(|| "chat_error".into(), Cow::into_owned);
                return Outcome::Failed(code);
            }
            "error" => {
                let code = f
                    .error
                    .and_then(|e| e.code)
                    .map_or_else(|| "unknown".into(), Cow::into_owned);
                return Outcome::Failed(format!("protocol_{code}"));
            }
            _ => {}
        }
    }
}

async fn worker(
    s: Socket,
    addr: SocketAddr,
    url: Arc<String>,
    content_json: Arc<String>,
    turn_timeout: Duration,
    bounds: Arc<Bounds>,
    pacer: Option<Arc<Pacer>>,
) -> Stats {
    let mut st = Stats::default();
    let connected = tokio::select! {
        c = connect(addr, None, &url, &s.token, Duration::from_secs(30)) => c,
        _ = bounds.stop.cancelled() => return st,
    };
    let mut ws = match connected {
        Ok(ws) => ws,
        Err(code) => {
            st.error(format!("connect_{code}"));
            return st;
        }
    };
    let mut n = 0u64;
    loop {
        if let Some(p) = &pacer {
            tokio::select! {
                lag = p.wait() => st.lat("schedule_lag").record(lag),
                _ = bounds.stop.cancelled() => break,
            }
        }
        if !bounds.try_take() {
            break;
        }
        n += 1;
        let id = format!("{}-{n}", s.tag);
        let frame = format!(
            r#"{{"type":"chat.send","id":"{id}","conversation_id":"{}","content":{content_json}}}"#,
            s.conversation
        );
        let t0 = Instant::now();
        if ws.send(Message::text(frame)).await.is_err() {
            st.error("socket_closed");
            bounds.done(false);
            break;
        }
        let deadline = tokio::time::Instant::now() + turn_timeout;
        let turn = Turn {
            id: &id,
            conversation: &s.conversation,
            t0,
            deadline,
        };
        let outcome = await_turn(&mut ws, &mut st, &turn, &bounds.stop).await;
        match outcome {
            Outcome::Done => {
                st.ok += 1;
                st.last = Some(Instant::now());
                bounds.done(true);
            }
            Outcome::Failed(code) => {
                let backoff = matches!(
                    code.as_str(),
                    "rate_limited" | "overloaded" | "conversation_busy"
                );
                st.error(code);
                bounds.done(false);
                if backoff {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Outcome::Timeout => {
                st.error("turn_timeout");
                bounds.done(false);
            }
            Outcome::Closed => {
                st.error("socket_closed");
                bounds.done(false);
                return st;
            }
            Outcome::Abandoned => {
                st.error("abandoned");
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    st
}

pub async fn run(ctx: &Ctx, a: &WsArgs) -> Result<Value, String> {
    let (url, addr) = endpoint(&ctx.base).await?;
    let users = ctx.users(a.users.max(1), true).await?;
    let sockets_per_user = a.sockets.max(1);
    let model = Some(ctx.common.model.as_str());
    // One conversation per socket.
    let total = users.len() * sockets_per_user;
    let bar = ctx.bar(total as u64, "creating conversations");
    let mut sockets = Vec::with_capacity(total);
    let specs: Vec<(usize, &api::BenchUser)> = users
        .iter()
        .flat_map(|u| (0..sockets_per_user).map(move |k| (k, u)))
        .collect();
    let created: Vec<Result<(String, String, String), String>> = futures::stream::iter(specs)
        .map(|(k, u)| {
            let bar = bar.clone();
            async move {
                let conv = api::create_conversation(&ctx.client, &ctx.base, &u.access, model)
                    .await
                    .map_err(|e| format!("creating a conversation: {e}"))?;
                bar.inc(1);
                Ok((format!("{}s{k}", u.username), u.access.clone(), conv))
            }
        })
        .buffer_unordered(ctx.common.setup_parallel.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    for c in created {
        let (tag, token, conversation) = c?;
        sockets.push(Socket {
            tag,
            token,
            conversation,
        });
    }
    let content_json = Arc::new(Value::String(a.content.clone()).to_string());
    let url = Arc::new(url);
    let bounds = Arc::new(Bounds::new(ctx.common.duration, ctx.common.turns));
    let pacer = a.rate.and_then(Pacer::new);
    let mut set = JoinSet::new();
    for s in sockets {
        set.spawn(worker(
            s,
            addr,
            url.clone(),
            content_json.clone(),
            a.turn_timeout,
            bounds.clone(),
            pacer.clone(),
        ));
    }
    let (stats, elapsed) = crate::run_phase(ctx, "ws turns", bounds, set).await;
    let mut report = json!({
        "config": {
            "users": users.len(),
            "sockets_per_user": sockets_per_user,
            "sockets": total,
            "rate": a.rate,
            "model": ctx.common.model,
            "duration_s": ctx.common.duration.as_secs_f64(),
            "turns": ctx.common.turns,
            "baseline": ctx.baseline,
        },
        "result": stats.to_json(elapsed),
    });
    if let Some(b) = &ctx.baseline {
        // The same turns straight to the upstream: streaming requests, one per socket at once.
        let target = crate::v1::Target {
            url: format!("{b}/chat/completions"),
            tokens: Vec::new(),
        };
        let body = crate::v1::body(&ctx.common.model, &a.content, true, None);
        let (bstats, belapsed) =
            crate::v1::phase(ctx, "baseline", target, total, a.rate, body, true).await;
        report["baseline"] = bstats.to_json(belapsed);
        report["overhead"] = crate::overhead(
            &stats,
            &bstats,
            &[("done", "latency"), ("first_delta", "ttft")],
        );
    }
    Ok(report)
}
