//! The `fake-upstream` process: serves on the given port and stops by itself after `--for`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn serves_then_stops_by_itself() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
        .args(["--port", "0", "--for", "1", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fake-upstream starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("http://127.0.0.1:") && line.trim_end().ends_with("/v1"),
        "prints its base URL first: {line:?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
