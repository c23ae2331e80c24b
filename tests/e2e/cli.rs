//! The `questech` binary (SPEC §2, §3): `admin create-user`, `migrate`, and start-up refusing a
//! bad configuration value with one line naming it.

use std::path::Path;
use std::process::Stdio;

use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::common::*;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the built binary in `dir` (so no `.env` or `questech.toml` of the repo is read) with
/// only `env` in its environment.
async fn questech(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_questech"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn questech");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("questech finished within 60 s")
        .expect("questech output");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qt-e2e-cli-{tag}-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_create_admin_then_migrate_then_login() {
    let dir = temp_dir("admin");
    let db = format!("sqlite://{}/cli.db", dir.display());
    let data = dir.join("data");
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("DATA_DIR", data.to_str().unwrap()),
        ("BCRYPT_COST", "4"),
        ("JWT_SECRET_KEY", JWT_SECRET),
    ];
    let out = questech(
        &dir,
        &[
            "admin",
            "create-user",
            "--username",
            "root1",
            "--role",
            "admin",
        ],
        &env,
        "s3cret-admin-pw\n",
    )
    .await;
    assert_eq!(
        out.code,
        Some(0),
        "create-user: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("root1"), "{}", out.stdout);

    let out = questech(&dir, &["migrate"], &env, "").await;
    assert_eq!(out.code, Some(0), "migrate: {}{}", out.stdout, out.stderr);

    // The same name again fails, and so do a bad role, a bad name, a short password.
    for (args, stdin) in [
        (
            vec![
                "admin",
                "create-user",
                "--username",
                "root1",
                "--role",
                "admin",
            ],
            "another-password\n",
        ),
        (
            vec![
                "admin",
                "create-user",
                "--username",
                "root2",
                "--role",
                "emperor",
            ],
            "another-password\n",
        ),
        (
            vec![
                "admin",
                "create-user",
                "--username",
                "x!",
                "--role",
                "admin",
            ],
            "another-password\n",
        ),
        (
            vec![
                "admin",
                "create-user",
                "--username",
                "root3",
                "--role",
                "admin",
            ],
            "short\n",
        ),
        (
            vec![
                "admin",
                "create-user",
                "--username",
                "root4",
                "--role",
                "admin",
            ],
            "",
        ),
        (vec!["admin", "create-user"], "another-password\n"),
        (vec!["no-such-command"], ""),
    ] {
        let out = questech(&dir, &args, &env, stdin).await;
        assert_ne!(
            out.code,
            Some(0),
            "{args:?} should fail: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(!out.stderr.trim().is_empty(), "{args:?} says why on stderr");
    }

    // A server over that database: the admin logs in with the stdin password.
    let app = spawn_app(Backend::Sqlite, &[("DATABASE_URL", db.as_str())])
        .await
        .unwrap();
    let admin = app.login("root1", "s3cret-admin-pw").await;
    assert_eq!(admin.json["user"]["role"], "admin");
    assert_eq!(jwt_claims(&admin.access)["role"], "admin");
    // The trailing newline is not part of the password.
    let (s, h, b) = app.login_raw("root1", "s3cret-admin-pw\n").await;
    assert_unauthorized(s, &h, &b);
    // It got the signup bonus like everyone, with its ledger row.
    let (credits, sum) = questech::storage::ledger::balance_check(&app.state.db, admin.uid())
        .await
        .unwrap();
    assert_eq!((credits, sum), (100, 100));
    for name in ["root2", "root3", "root4"] {
        let (s, _, _) = app.login_raw(name, "another-password").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{name} must not exist");
    }
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_bad_config_names_the_variable() {
    let dir = temp_dir("badenv");
    let db = format!("sqlite://{}/cli.db", dir.display());
    let data = dir.join("data");
    for (var, value) in [
        ("USER_RPM", "abc"),
        ("BIND_ADDR", "not-an-address"),
        ("DATABASE_URL", "postgres://nope"),
        ("JWT_SECRET_KEY", "too-short"),
        ("LOGIN_MAX_FAILURES_PER_IP", "-1"),
    ] {
        let mut env = vec![
            ("DATABASE_URL", db.as_str()),
            ("DATA_DIR", data.to_str().unwrap()),
        ];
        env.retain(|(k, _)| *k != var);
        env.push((var, value));
        for args in [vec!["migrate"], vec![]] {
            let out = questech(&dir, &args, &env, "").await;
            assert_ne!(out.code, Some(0), "{var}={value} {args:?}: {}", out.stderr);
            assert!(out.code.is_some(), "exited, not killed by a signal");
            let lines: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect();
            assert_eq!(
                lines.len(),
                1,
                "{var}: one line on stderr, got {:?}",
                out.stderr
            );
            assert!(lines[0].contains(var), "{var}: {:?}", lines[0]);
            assert!(!lines[0].contains("panicked"), "{:?}", lines[0]);
        }
    }
    // Nothing was created by the refused start-ups.
    assert!(
        !dir.join("cli.db").exists(),
        "no database file after a refused start"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
