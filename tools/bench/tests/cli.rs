//! The command line of `questech-bench` (the load itself is exercised against a real server by
//! the server's end-to-end suite, `tests/e2e/bench_smoke.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_questech-bench"))
        .args(args)
        .output()
        .expect("questech-bench runs")
}

#[test]
fn help_lists_the_three_modes() {
    let out = bench(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for mode in ["ws", "v1", "idle"] {
        assert!(text.contains(mode), "{mode} in: {text}");
    }
}

#[test]
fn an_unknown_mode_is_refused() {
    let out = bench(&["no-such-mode"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}
