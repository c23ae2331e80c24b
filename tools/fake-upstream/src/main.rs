//! `fake-upstream`: serves [`questech_fake_upstream`] (the fake OpenAI-compatible server the
//! tests use) as a standalone process, so a benchmarked Questech can be pointed at it with
//! `OPENAI_BASE_URL=http://127.0.0.1:<port>/v1` and the upstream can be pinned to its own core.
//!
//! ```sh
//! fake-upstream --port 18080 --latency-ms 0 --chunks 16 --chunk-gap-ms 0
//! ```
//!
//! Test and benchmark tooling only; it listens on 127.0.0.1 and runs until Ctrl-C / SIGTERM (or
//! `--for` elapses).

use std::time::Duration;

use clap::Parser;
use questech_fake_upstream::{self as fake_upstream, Behavior};

#[derive(Parser, Debug)]
#[command(
    name = "fake-upstream",
    version,
    about = "A fake OpenAI-compatible upstream on 127.0.0.1 (test and benchmark tooling)"
)]
struct Args {
    /// Port on 127.0.0.1 (0: a free one, printed on start).
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// Wait before the response headers of every chat request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Content chunks per reply (streaming: one SSE event each; otherwise joined).
    #[arg(long, default_value_t = 16)]
    chunks: usize,
    /// Pause before each content chunk after the first, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_gap_ms: u64,
    /// Stop by itself after this many seconds (0: run until Ctrl-C / SIGTERM).
    #[arg(long = "for", default_value_t = 0)]
    run_for_secs: u64,
    /// Worker threads of the runtime (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-upstream: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(rt.block_on(run(args)));
}

async fn run(args: Args) -> i32 {
    let behavior = Behavior {
        latency: Duration::from_millis(args.latency_ms),
        chunks: args.chunks,
        chunk_gap: Duration::from_millis(args.chunk_gap_ms),
        ..Behavior::default()
    };
    let up = match fake_upstream::start_on(args.port, behavior).await {
        Ok(up) => up,
        Err(e) => {
            eprintln!(
                "fake-upstream: cannot listen on 127.0.0.1:{}: {e}",
                args.port
            );
            return 1;
        }
    };
    println!("{}", up.base_url);
    eprintln!(
        "fake-upstream serving {} (latency {} ms, {} chunks, gap {} ms); start Questech with OPENAI_BASE_URL={}",
        up.addr, args.latency_ms, args.chunks, args.chunk_gap_ms, up.base_url
    );
    let stop_after = async {
        if args.run_for_secs == 0 {
            std::future::pending::<()>().await;
        } else {
            tokio::time::sleep(Duration::from_secs(args.run_for_secs)).await;
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = stop_after => {}
    }
    eprintln!("fake-upstream: {} chat requests served", up.request_count());
    up.shutdown().await;
    0
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
