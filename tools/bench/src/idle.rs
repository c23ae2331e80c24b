//! `idle`: K authenticated, idle WebSocket connections (each user's session actor alive on the
//! server), spread over several 127.0.0.x source addresses when one address's ephemeral ports
//! run out; the server's RSS is read from `/proc/<pid>/status` before and after.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::stats::{self, parse_duration, Stats};
use crate::ws::{connect, endpoint};
use crate::Ctx;

/// Ports one source address is given before the next is used (the ephemeral range is ~28k).
const PER_SOURCE: usize = 20_000;

#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Sockets to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Bench users the sockets belong to (default: one user, so one session actor, per socket).
    #[arg(long)]
    pub users: Option<usize>,
    /// Source addresses 127.0.0.2, 127.0.0.3, … to spread over (0: one per 20,000 sockets; 1:
    /// let the kernel choose). Only for a loopback server.
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub connect_parallel: usize,
    /// Pause after the last connection before the RSS is read.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub settle: Duration,
    /// Keep the sockets open this much longer after the measurement.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub hold: Duration,
}

/// Raises the soft open-files limit as far as the hard limit allows; returns the new limit.
fn raise_nofile(want: u64) -> u64 {
    match rlimit::increase_nofile_limit(want) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("questech-bench: cannot raise the open-files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The local addresses to connect from: one per [`PER_SOURCE`] sockets on IPv4 loopback (each
/// source address has its own ephemeral ports), else the default.
fn source_addresses(server: IpAddr, sockets: usize, asked: usize) -> Vec<Option<IpAddr>> {
    let loopback_v4 = matches!(server, IpAddr::V4(ip) if ip.is_loopback());
    let n = match asked {
        0 => sockets.div_ceil(PER_SOURCE),
        n => n,
    }
    .clamp(1, 250);
    if loopback_v4 && n > 1 {
        (0..n)
            .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))))
            .collect()
    } else {
        vec![None]
    }
}

/// Holds one socket open until `stop` (pings are answered by the library); counts it in
/// `dropped` if the server closes it first.
async fn hold(mut ws: crate::ws::Ws, stop: CancellationToken, dropped: Arc<AtomicU64>) {
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(_)) => {}
                _ => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.flush()).await;
                return;
            }
        }
    }
}

pub async fn run(ctx: &Ctx, a: &IdleArgs) -> Result<Value, String> {
    let (url, addr) = endpoint(&ctx.base).await?;
    let k = a.sockets.max(1);
    let nofile = raise_nofile(k as u64 + 1024);
    if nofile < k as u64 + 64 {
        eprintln!(
            "questech-bench: open-files limit {nofile} is below {k} sockets: expect io_errno_24 (raise the hard limit, e.g. `ulimit -Hn`)"
        );
    }
    let n_users = a.users.unwrap_or(k).clamp(1, k);
    let users = ctx.users(n_users, false).await?;
    let sources = source_addresses(addr.ip(), k, a.source_ips);
    let per_source = k.div_ceil(sources.len());

    let before = ctx.common.server_pid.and_then(stats::sample_process);
    let stop = CancellationToken::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let mut holders = JoinSet::new();
    let mut st = Stats::default();
    let bar = ctx.bar(k as u64, "connecting idle sockets");
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + ctx.common.duration;
    let url = Arc::new(url);
    let mut attempts = futures::stream::iter(0..k)
        .map(|i| {
            let url = url.clone();
            let token = users[i % users.len()].access.clone();
            // Consecutive blocks of sockets per source address.
            let source = sources[(i / per_source).min(sources.len() - 1)];
            async move {
                let t = Instant::now();
                let r = connect(addr, source, &url, &token, Duration::from_secs(30)).await;
                (r, t.elapsed())
            }
        })
        .buffer_unordered(a.connect_parallel.max(1));
    let mut timed_out = false;
    loop {
        let next = tokio::select! {
            n = attempts.next() => n,
            _ = tokio::time::sleep_until(deadline) => { timed_out = true; None }
        };
        let Some((r, took)) = next else { break };
        bar.inc(1);
        match r {
            Ok(ws) => {
                st.ok += 1;
                st.lat("connect").record(took);
                st.last = Some(Instant::now());
                holders.spawn(hold(ws, stop.clone(), dropped.clone()));
            }
            Err(code) => st.error(code),
        }
    }
    drop(attempts);
    bar.finish_and_clear();
    let connect_elapsed = t0.elapsed();
    if timed_out {
        st.error("not_attempted_duration_over");
    }
    tokio::time::sleep(a.settle).await;
    let after = ctx.common.server_pid.and_then(stats::sample_process);
    let actors = admin_actors(ctx).await;
    if !a.hold.is_zero() {
        eprintln!("questech-bench: holding {} sockets for {:?}", st.ok, a.hold);
        tokio::time::sleep(a.hold).await;
    }
    let still_open = st.ok.saturating_sub(dropped.load(Ordering::Relaxed));
    stop.cancel();
    let closing = async { while holders.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(20), closing)
        .await
        .is_err()
    {
        holders.abort_all();
    }
    let connected = st.ok;
    let (rss_before, rss_after) = (before.map(|s| s.rss_kib), after.map(|s| s.rss_kib));
    let per_socket = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some(((a as f64 - b as f64) * 1024.0 / connected as f64).round())
        }
        _ => None,
    };
    let mut result = st.to_json(connect_elapsed);
    result["connected"] = json!(connected);
    Ok(json!({
        "config": {
            "sockets": k,
            "users": n_users,
            "source_ips": sources.iter().flatten().map(ToString::to_string).collect::<Vec<_>>(),
            "connect_parallel": a.connect_parallel,
            "settle_s": a.settle.as_secs_f64(),
            "nofile_limit": nofile,
        },
        "result": result,
        "idle": {
            "sockets_requested": k,
            "connected": connected,
            "failed": st.errors_total(),
            "open_at_measurement": still_open,
            "connect_seconds": stats::round3(connect_elapsed.as_secs_f64()),
            "server_rss_before_kib": rss_before,
            "server_rss_after_kib": rss_after,
            "server_rss_per_socket_bytes": per_socket,
            "server_rss_per_socket_kib": per_socket.map(|b| stats::round3(b / 1024.0)),
            "server_ws_connections": actors.as_ref().map(|v| v["ws_connections"].clone()),
            "server_user_actors": actors.as_ref().map(|v| v["user_actors"].clone()),
        },
        "server": match (before, after) {
            (Some(b), Some(a)) => json!({
                "pid": ctx.common.server_pid,
                "rss_before_kib": b.rss_kib,
                "rss_after_kib": a.rss_kib,
                "cpu_secs": stats::round3(a.cpu_secs - b.cpu_secs),
            }),
            _ => Value::Null,
        },
    }))
}

/// `GET /admin/actors` with the admin's token, if one was given: the server's own count of
/// sockets and session actors.
async fn admin_actors(ctx: &Ctx) -> Option<Value> {
    let (u, p) = (
        ctx.common.admin_user.as_ref()?,
        ctx.common.admin_password.as_ref()?,
    );
    let token = crate::api::login(&ctx.client, &ctx.base, u, p).await.ok()?;
    let v = crate::api::call(
        &ctx.client,
        reqwest::Method::GET,
        &format!("{}/admin/actors", ctx.base),
        Some(&token),
        None,
    )
    .await
    .ok()?;
    Some(json!({
        "ws_connections": find(&v, &["websocket_connections", "ws_connections", "connections"]),
        "user_actors": find(&v, &["user_session", "user_sessions", "user_actors"]),
        "raw": v,
    }))
}

/// The first of `names` found anywhere in `v` (the actors endpoint's exact shape is the
/// server's business).
fn find(v: &Value, names: &[&str]) -> Value {
    match v {
        Value::Object(m) => {
            for n in names {
                if let Some(x) = m.get(*n).filter(|x| x.is_number()) {
                    return x.clone();
                }
            }
            m.values()
                .map(|x| find(x, names))
                .find(|x| !x.is_null())
                .unwrap_or(Value::Null)
        }
        _ => Value::Null,
    }
}
