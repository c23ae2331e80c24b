//! `questech-bench`: the load generator for any running Questech (SPEC "benches"; issue
//! "Performance"). It registers its own users, tops up their credits through the admin API,
//! runs a load bounded in count and time, shows a progress bar and writes `--out report.json`
//! plus a Markdown summary next to it (`report.md`).
//!
//! - `ws`: N users × M WebSocket connections, each sending chat turns in its own conversation,
//!   closed loop (next turn after `chat.done`) or at a fixed total rate; ack / first-delta /
//!   done latency and errors by code.
//! - `v1`: `POST /v1/chat/completions`, streaming or not, at a fixed concurrency or rate;
//!   latency, time to first token and the server's `X-Questech-Overhead-Ms`.
//! - `idle`: K authenticated idle sockets (spread over several 127.0.0.x source addresses) and
//!   the server's RSS per socket (`--server-pid`).
//!
//! `--with-fake-upstream` starts the fake OpenAI-compatible upstream in this process (point the
//! server's `OPENAI_BASE_URL` at it; `--fake-upstream-port` fixes its port so the server can be
//! started first) and measures that upstream directly with the same request mix, as the
//! baseline the overhead is computed from. `--baseline-url` does the same against a fake (or
//! any OpenAI-compatible server) that is already running. See docs/PERFORMANCE.md.

mod api;
mod idle;
mod stats;
mod v1;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use stats::{parse_duration, Bounds, Stats};

#[derive(Parser, Debug)]
#[command(
    name = "questech-bench",
    version,
    about = "Load generator for a running Questech (loopback targets; bounded in count and time)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Base URL of the server under test.
    #[arg(long, global = true, default_value = "http://127.0.0.1:10089")]
    pub url: String,
    /// An admin's username, to top up the bench users' credits (skipped without it).
    #[arg(long, global = true)]
    pub admin_user: Option<String>,
    /// The admin's password (or `QB_ADMIN_PASSWORD`).
    #[arg(long, global = true, env = "QB_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Longest load phase (e.g. 10s, 2m). The run always stops by itself.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Stop after this many turns / requests (and at `--duration` at the latest).
    #[arg(long, global = true)]
    pub turns: Option<u64>,
    /// After the load phase, how long turns in flight may take to finish before they are
    /// abandoned.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s")]
    pub drain: Duration,
    /// JSON report; the Markdown summary goes next to it with the `.md` extension.
    #[arg(long, global = true, default_value = "report.json")]
    pub out: PathBuf,
    /// Model of the chat turns and `/v1` requests.
    #[arg(long, global = true, default_value = "gpt-4o-mini")]
    pub model: String,
    /// Credits granted to each bench user (needs the admin).
    #[arg(long, global = true, default_value_t = 1_000_000)]
    pub credits: i64,
    /// The server's process id: its RSS and CPU time are read from /proc before and after.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Prefix of the usernames the bench registers (default: `qb` + random hex).
    #[arg(long, global = true)]
    pub user_prefix: Option<String>,
    /// Set-up requests (register, top-up) at once.
    #[arg(long, global = true, default_value_t = 8)]
    pub setup_parallel: usize,
    /// Worker threads of the bench's runtime (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    /// No progress bar.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Wait up to this long for `GET /health` to answer before starting (lets the server be
    /// started after the bench's fake upstream).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "0s")]
    pub wait_for_server: Duration,
    /// Start the fake OpenAI-compatible upstream in this process and measure it directly too.
    #[arg(long, global = true)]
    pub with_fake_upstream: bool,
    /// Port of that fake upstream on 127.0.0.1 (0: a free one, printed).
    #[arg(long, global = true, default_value_t = 0)]
    pub fake_upstream_port: u16,
    /// Fake upstream: wait before the response headers, in milliseconds.
    #[arg(long, global = true, default_value_t = 0)]
    pub fake_latency_ms: u64,
    /// Fake upstream: content chunks per reply.
    #[arg(long, global = true, default_value_t = 16)]
    pub fake_chunks: usize,
    /// Fake upstream: pause between content chunks, in milliseconds.
    #[arg(long, global = true, default_value_t = 0)]
    pub fake_chunk_gap_ms: u64,
    /// An OpenAI-compatible base URL (e.g. a running `fake-upstream`, `http://127.0.0.1:18080/v1`)
    /// to measure directly as the baseline.
    #[arg(long, global = true)]
    pub baseline_url: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// WebSocket chat turns: N users × M sockets, each in its own conversation.
    Ws(ws::WsArgs),
    /// OpenAI-compatible `/v1/chat/completions`.
    V1(v1::V1Args),
    /// Idle authenticated sockets and the server's RSS per socket.
    Idle(idle::IdleArgs),
}

fn main() {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if cli.common.threads > 0 {
        rt.worker_threads(cli.common.threads);
    }
    let code = match rt.build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("questech-bench: cannot start the runtime: {e}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> i32 {
    match run_inner(cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("questech-bench: {e}");
            1
        }
    }
}

/// What every mode gets: the parsed options, an HTTP client, the fake upstream if started.
pub struct Ctx {
    pub common: Common,
    pub base: String,
    pub client: reqwest::Client,
    /// `http://…/v1` of the upstream to measure directly, if any.
    pub baseline: Option<String>,
    pub progress: bool,
}

impl Ctx {
    pub fn prefix(&self) -> String {
        self.common.user_prefix.clone().unwrap_or_else(|| {
            // 20 characters at most: "qb" + 8 hex + "_" + up to 9 digits.
            format!("qb{:08x}", rand::random::<u32>())
        })
    }

    /// Registers `n` users and tops them up (if an admin was given).
    pub async fn users(&self, n: usize, top_up: bool) -> Result<Vec<api::BenchUser>, String> {
        let bar = self.bar(n as u64, "registering users");
        let tick = || bar.inc(1);
        let prefix = self.prefix();
        let users = api::register_users(
            &self.client,
            &self.base,
            &prefix,
            n,
            self.common.setup_parallel,
            &tick,
        )
        .await
        .map_err(|e| format!("registering users: {e}"))?;
        bar.finish_and_clear();
        if !top_up {
            return Ok(users);
        }
        match (&self.common.admin_user, &self.common.admin_password) {
            (Some(u), Some(p)) => {
                let admin = api::login(&self.client, &self.base, u, p)
                    .await
                    .map_err(|e| format!("admin login: {e}"))?;
                api::top_up(
                    &self.client,
                    &self.base,
                    &admin,
                    &users,
                    self.common.credits,
                    self.common.setup_parallel,
                )
                .await
                .map_err(|e| format!("credit top-up: {e}"))?;
            }
            _ => eprintln!(
                "questech-bench: no --admin-user/--admin-password: users keep their sign-up credits"
            ),
        }
        Ok(users)
    }

    pub fn bar(&self, len: u64, msg: &'static str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(msg);
        bar
    }
}

/// Runs one load phase: `spawn` starts the workers on `set`; returns the merged stats and the
/// phase's effective duration (start to the last completion).
pub async fn run_phase(
    ctx: &Ctx,
    label: &'static str,
    bounds: Arc<Bounds>,
    mut set: JoinSet<Stats>,
) -> (Stats, Duration) {
    let bar = match bounds.max {
        Some(n) => ctx.bar(n, label),
        None => ctx.bar(
            bounds.deadline.duration_since(bounds.start).as_secs(),
            label,
        ),
    };
    let ticker = {
        let bounds = bounds.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done = bounds.finished.load(std::sync::atomic::Ordering::Relaxed);
                let failed = bounds.failed.load(std::sync::atomic::Ordering::Relaxed);
                let secs = bounds.start.elapsed().as_secs_f64();
                match bounds.max {
                    Some(_) => bar.set_position(done),
                    None => bar.set_position(secs as u64),
                }
                bar.set_message(format!(
                    "{label}: {done} done, {failed} failed, {:.0}/s",
                    done as f64 / secs.max(1e-3)
                ));
            }
        })
    };
    let mut total = Stats::default();
    let mut pending = true;
    // Phase 1: until no more turns may start, collecting workers that end early.
    while pending {
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(s)) => total.merge(&s),
                Some(Err(_)) => total.error("worker_failed"),
                None => pending = false,
            },
            _ = bounds.exhausted() => break,
        }
    }
    // Phase 2: turns in flight get `drain` to finish, then everything stops.
    let drain_until = tokio::time::Instant::now() + ctx.common.drain;
    let mut stopping = false;
    while pending {
        let hard = drain_until + Duration::from_secs(5);
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(s)) => total.merge(&s),
                Some(Err(_)) => total.error("worker_failed"),
                None => pending = false,
            },
            _ = tokio::time::sleep_until(drain_until), if !stopping => {
                stopping = true;
                bounds.stop.cancel();
            }
            _ = tokio::time::sleep_until(hard), if stopping => {
                set.abort_all();
                while let Some(r) = set.join_next().await {
                    if let Ok(s) = r {
                        total.merge(&s);
                    }
                }
                total.error("worker_abandoned");
                pending = false;
            }
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    let end = total.last.unwrap_or_else(Instant::now);
    (total, end.saturating_duration_since(bounds.start))
}

async fn wait_for_server(ctx: &Ctx) -> Result<(), String> {
    if ctx.common.wait_for_server.is_zero() {
        return Ok(());
    }
    let until = Instant::now() + ctx.common.wait_for_server;
    eprintln!(
        "questech-bench: waiting up to {:?} for {}/health",
        ctx.common.wait_for_server, ctx.base
    );
    loop {
        if let Ok(r) = ctx.client.get(format!("{}/health", ctx.base)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() >= until {
            return Err(format!("{}/health did not answer 200 in time", ctx.base));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn run_inner(cli: Cli) -> Result<(), String> {
    let common = cli.common.clone();
    let base = common.url.trim_end_matches('/').to_owned();
    let client =
        api::http_client(Duration::from_secs(60)).map_err(|e| format!("HTTP client: {e}"))?;
    let mut fake = None;
    let mut baseline = common
        .baseline_url
        .as_ref()
        .map(|u| u.trim_end_matches('/').to_owned());
    if common.with_fake_upstream {
        let behavior = questech_fake_upstream::Behavior {
            latency: Duration::from_millis(common.fake_latency_ms),
            chunks: common.fake_chunks,
            chunk_gap: Duration::from_millis(common.fake_chunk_gap_ms),
            ..Default::default()
        };
        let up = questech_fake_upstream::start_on(common.fake_upstream_port, behavior)
            .await
            .map_err(|e| format!("fake upstream on port {}: {e}", common.fake_upstream_port))?;
        eprintln!(
            "questech-bench: fake upstream at {0} (start the server with OPENAI_BASE_URL={0})",
            up.base_url
        );
        baseline = Some(up.base_url.clone());
        fake = Some(up);
    }
    let ctx = Ctx {
        progress: !common.quiet,
        common,
        base,
        client,
        baseline,
    };
    wait_for_server(&ctx).await?;
    let started_at = chrono::Utc::now().to_rfc3339();
    let before = ctx.common.server_pid.and_then(stats::sample_process);
    let (mode, mut report) = match &cli.mode {
        Mode::Ws(a) => ("ws", ws::run(&ctx, a).await?),
        Mode::V1(a) => ("v1", v1::run(&ctx, a).await?),
        Mode::Idle(a) => ("idle", idle::run(&ctx, a).await?),
    };
    if let Some(up) = fake {
        report["fake_upstream_requests"] = json!(up.request_count());
        up.shutdown().await;
    }
    let after = ctx.common.server_pid.and_then(stats::sample_process);
    if let (Some(b), Some(a)) = (before, after) {
        if report.get("server").is_none() {
            report["server"] = json!({
                "pid": ctx.common.server_pid,
                "rss_before_kib": b.rss_kib,
                "rss_after_kib": a.rss_kib,
                "cpu_secs": stats::round3(a.cpu_secs - b.cpu_secs),
            });
        }
    }
    report["tool"] = json!("questech-bench");
    report["version"] = json!(env!("CARGO_PKG_VERSION"));
    report["mode"] = json!(mode);
    report["url"] = json!(ctx.base);
    report["started_at"] = json!(started_at);
    report["command"] = json!(command_line());
    let md = stats::write_reports(&ctx.common.out, &report)
        .map_err(|e| format!("writing {}: {e}", ctx.common.out.display()))?;
    println!("{md}");
    eprintln!(
        "questech-bench: wrote {} and {}",
        ctx.common.out.display(),
        ctx.common.out.with_extension("md").display()
    );
    Ok(())
}

/// The command line, with the admin password masked.
fn command_line() -> String {
    let mut out = Vec::new();
    let mut mask_next = false;
    for a in std::env::args() {
        if mask_next {
            out.push("***".to_owned());
            mask_next = false;
        } else if a == "--admin-password" {
            mask_next = true;
            out.push(a);
        } else if a.starts_with("--admin-password=") {
            out.push("--admin-password=***".to_owned());
        } else {
            out.push(shell_quote(&a));
        }
    }
    out.join(" ")
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `server − baseline` for the p50 and p99 of each named latency present in both.
pub fn overhead(server: &Stats, base: &Stats, pairs: &[(&'static str, &'static str)]) -> Value {
    let mut out = serde_json::Map::new();
    for (s_name, b_name) in pairs {
        if let (Some(s), Some(b)) = (server.lat.get(s_name), base.lat.get(b_name)) {
            if s.count() > 0 && b.count() > 0 {
                out.insert(
                    (*s_name).to_owned(),
                    json!({
                        "p50_ms": stats::round3(s.q_ms(0.5) - b.q_ms(0.5)),
                        "p99_ms": stats::round3(s.q_ms(0.99) - b.q_ms(0.99)),
                    }),
                );
            }
        }
    }
    Value::Object(out)
}
