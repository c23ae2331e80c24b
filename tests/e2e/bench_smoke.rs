//! The load generator (`questech-bench`, the built binary) against a real test server, with tiny
//! numbers: its WebSocket and `/v1` modes run, stop by themselves, exit 0 and write a report
//! with completed turns and no errors. Nothing here depends on how fast anything is.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::*;

/// The built `questech-bench` (a binary of the `tools/bench` crate): next to this test binary's
/// folder, where `cargo test --workspace` puts it (that crate has integration tests of its own,
/// so cargo builds the binary before any test runs).
fn bench_exe() -> std::path::PathBuf {
    let me = std::env::current_exe().expect("test binary path");
    let dir = me
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let exe = dir.join(format!("questech-bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.exists(),
        "{} not built: run `cargo test --workspace` (or `cargo build -p questech-bench`)",
        exe.display()
    );
    exe
}

/// Runs the bench binary with `args`; returns (exit code, stdout, stderr).
async fn bench(args: &[String]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(bench_exe());
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("questech-bench stops by itself")
        .expect("questech-bench runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("report.json written");
    assert!(
        path.with_extension("md").exists(),
        "the Markdown summary is written next to the JSON"
    );
    serde_json::from_str(&text).expect("report.json is JSON")
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

/// A free loopback port for the bench's fake upstream (the server is configured with it first).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn smoke(backend: Backend) {
    let port = free_port();
    let upstream = format!("http://127.0.0.1:{port}/v1");
    let Some(app) = spawn_app(
        backend,
        &[
            ("ECHO_DELAY_MS", "0"),
            ("USER_RPM", "0"),
            ("USER_MAX_INFLIGHT", "0"),
            ("OPENAI_API_KEY", "x"),
            ("OPENAI_BASE_URL", &upstream),
        ],
    )
    .await
    else {
        return;
    };
    let admin = uname("qbadm");
    app.register(&admin).await;
    let admin_tok = app.make_admin(&admin).await.access;
    let dir = app.data_dir.join("bench");
    let prefix = format!("qs{:06x}", rand::random::<u32>() & 0xff_ffff);
    let common = |out: &str, prefix: &str| {
        s(&[
            "--url",
            &app.base,
            "--admin-user",
            &admin,
            "--admin-password",
            PASSWORD,
            "--turns",
            "5",
            "--duration",
            "10s",
            "--drain",
            "10s",
            "--quiet",
            "--user-prefix",
            prefix,
            "--credits",
            "5000",
            "--out",
            &dir.join(out).to_string_lossy(),
        ])
    };

    // WebSocket turns on the built-in echo model, closed loop.
    let mut args = common("ws.json", &prefix);
    args.extend(s(&[
        "--model",
        "echo",
        "ws",
        "--users",
        "2",
        "--sockets",
        "2",
    ]));
    let (code, stdout, stderr) = bench(&args).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let r = report(&dir.join("ws.json"));
    assert_eq!(r["mode"], "ws");
    let turns = r["result"]["turns"].as_u64().unwrap_or(0);
    assert!(turns > 0 && turns <= 5, "{r:#}");
    assert_eq!(r["result"]["errors_total"], 0, "{r:#}");
    for m in ["ack", "first_delta", "done"] {
        assert_eq!(
            r["result"]["latency_ms"][m]["count"].as_u64(),
            Some(turns),
            "{m}: {r:#}"
        );
    }
    assert!(stdout.contains("# questech-bench `ws`"), "{stdout}");
    // The admin password never lands in the report.
    assert!(!r["command"].as_str().unwrap_or("").contains(PASSWORD));

    // The bench's users were registered and topped up through the API, and their turns billed.
    let (st, _, users) = app
        .get(&format!("/admin/users?q={prefix}"), Some(&admin_tok))
        .await;
    assert_eq!(st, StatusCode::OK, "{users}");
    let items = users["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{users}");
    let total: i64 = items
        .iter()
        .map(|u| u["credits"].as_i64().unwrap_or(0))
        .sum();
    let signup = 2 * 100;
    assert!(
        total > signup && total < 2 * 5000 + signup,
        "topped up, then charged for the turns: {users}"
    );

    // /v1 streaming through the provider pool to the bench's own fake upstream, which it also
    // measures directly as the baseline.
    let prefix2 = format!("{prefix}v");
    let mut args = common("v1.json", &prefix2);
    args.extend(s(&[
        "--with-fake-upstream",
        "--fake-upstream-port",
        &port.to_string(),
        "--fake-chunks",
        "4",
        "v1",
        "--stream",
        "--concurrency",
        "2",
    ]));
    let (code, stdout, stderr) = bench(&args).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let r = report(&dir.join("v1.json"));
    assert_eq!(r["mode"], "v1");
    let turns = r["result"]["turns"].as_u64().unwrap_or(0);
    assert!(turns > 0 && turns <= 5, "{r:#}");
    assert_eq!(r["result"]["errors_total"], 0, "{r:#}");
    let lat = &r["result"]["latency_ms"];
    assert_eq!(lat["ttft"]["count"].as_u64(), Some(turns), "{r:#}");
    assert_eq!(
        lat["overhead_header"]["count"].as_u64(),
        Some(turns),
        "{r:#}"
    );
    // 4 content chunks per answer, 3 gaps between them.
    assert_eq!(lat["chunk_gap"]["count"].as_u64(), Some(3 * turns), "{r:#}");
    let base_turns = r["baseline"]["turns"].as_u64().unwrap_or(0);
    assert!(base_turns > 0, "{r:#}");
    assert_eq!(r["baseline"]["errors_total"], 0, "{r:#}");
    assert_eq!(
        r["fake_upstream_requests"].as_u64(),
        Some(turns + base_turns),
        "every server request reached the fake upstream once: {r:#}"
    );
    assert!(r["overhead"]["ttft"]["p50_ms"].is_number(), "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_sqlite() {
    smoke(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_mysql_redis() {
    smoke(Backend::MySqlRedis).await;
}

/// Bad input to the tool is refused with a message, never a panic; a server that is not there
/// is a clean failure.
#[tokio::test]
async fn bench_refuses_bad_input_without_panicking() {
    let (code, _, stderr) = bench(&s(&["--duration", "forever", "ws"])).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--duration"), "{stderr}");
    let dir = std::env::temp_dir().join(format!("qb-none-{:08x}", rand::random::<u32>()));
    let (code, _, stderr) = bench(&s(&[
        "--url",
        &format!("http://127.0.0.1:{}", free_port()),
        "--quiet",
        "--turns",
        "1",
        "--duration",
        "5s",
        "--out",
        &dir.join("r.json").to_string_lossy(),
        "ws",
    ]))
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("registering users"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
