//! `/openapi.json` says exactly what the server does: schemathesis (the pinned version `.ci/run`
//! installs into `target/ci-venv`) generates valid and invalid requests for every operation from
//! the document, with every check on (no server error, documented statuses, content types and
//! bodies, valid data accepted, invalid data refused, …). Settings: `tests/schemathesis/`.

use std::path::PathBuf;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

/// `SCHEMATHESIS`, else the CI virtual environment's.
fn schemathesis() -> Option<PathBuf> {
    ci_tool("SCHEMATHESIS", "schemathesis")
}

/// Runs schemathesis against the document with `token`; returns (success, output).
async fn run(exe: PathBuf, app: &TestApp, token: String, args: &[&str]) -> (bool, String) {
    let base = app.base.clone();
    let config =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/schemathesis.toml");
    let mut cmd = Command::new(exe);
    cmd.arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--seed",
            "20261203",
            "--no-color",
            "--generation-database",
            "none",
        ])
        .args(["--workers", "2", "--request-timeout", "30"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(args)
        // Its cache of crashes goes to the working folder: the test's own, not the checkout.
        .current_dir(&app.data_dir)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run schemathesis");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The last lines of a long report (failures are listed before the summary).
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(120);
    lines[from..]
        .iter()
        .map(|l| l.chars().take(400).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_document_is_what_the_server_does() {
    let Some(exe) = schemathesis() else {
        skip("schemathesis (target/ci-venv, made by .ci/run, or SCHEMATHESIS)");
        return;
    };
    let Some(app) = spawn_app(
        Backend::Sqlite,
        &[("USER_RPM", "0"), ("ECHO_DELAY_MS", "0")],
    )
    .await
    else {
        return;
    };
    let name = uname("fuzz");
    app.register(&name).await;
    let admin = app.make_admin(&name).await;
    // Enough credits that the run's own turns rarely meet 402 (which it may: it also debits).
    let (s, _, b) = app
        .post(
            &format!("/admin/users/{}/credits", admin.id),
            Some(&admin.access),
            Some(json!({"delta": 1_000_000_000, "reason": "schema fuzzing"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // The only model the run can name is `echo`: let it take every request shape the document
    // allows (images, tools, structured output), so that a schema-valid request is not refused
    // for asking a model what it cannot do (a 400 that depends on the model, not the shape).
    // And a window no body under the size limit can overflow (each image reserves 1,445 tokens).
    let all = json!({"capabilities": {"vision": true, "tools": true, "json": true, "embeddings": true},
        "context_window": 10_000_000});
    let (s, _, b) = app
        .patch("/admin/models/echo", Some(&admin.access), Some(all))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    let (s, _, doc) = app.get("/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |m| m.len()))
        .sum();
    let mut patterns = Vec::new();
    collect_patterns(&doc, &mut patterns);
    assert!(!patterns.is_empty());
    for p in patterns {
        assert!(
            questech::patterns::pattern::ALL.contains(&p.as_str()),
            "the document states a pattern the server does not check with: {p}"
        );
    }

    // Every operation but logout, which would end the run's own session...
    let (ok, out) = run(
        exe.clone(),
        &app,
        admin.access.clone(),
        &["--max-examples", "30", "--exclude-path", "/user/logout"],
    )
    .await;
    assert!(
        ok,
        "schemathesis found the document and the server disagree:\n{}",
        tail(&out)
    );
    let tested = format!("Tested: {}", operations - 1);
    assert!(
        out.contains(&tested),
        "every other operation was tested:\n{}",
        tail(&out)
    );

    // ...which gets a run of its own, with a session it may end.
    let other = app.login(&name, PASSWORD).await;
    let (ok, out) = run(
        exe,
        &app,
        other.access,
        &["--max-examples", "10", "--include-path", "/user/logout"],
    )
    .await;
    assert!(ok, "schemathesis on /user/logout:\n{}", tail(&out));

    // The server is still whole: the admin's own session works.
    let (s, _, me) = app.get("/user/me", Some(&admin.access)).await;
    assert_eq!(s, StatusCode::OK, "{me}");
}

fn collect_patterns(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("pattern", Value::String(p)) => out.push(p.clone()),
                    _ => collect_patterns(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_patterns(x, out)),
        _ => {}
    }
}
