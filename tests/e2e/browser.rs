//! The browser app (`/`) and the operations console (`/ops`) in headless Chromium (issue 12):
//! `tests/browser/app_test.py` and `tests/browser/ops_test.py` drive Debian's `chromium` through
//! `chromedriver` with Selenium, from the virtual environment `.ci/run` makes, against a real
//! server whose model is the fake upstream (echoing the user's words, a chunk every 60 ms, so a
//! turn can be watched, cut and cancelled). Each case saves a screenshot on failure under
//! `target/browser-shots/`. Afterwards the books of every user are checked here, on the server.

use std::path::PathBuf;
use std::time::Duration;

use questech_fake_upstream::Behavior;
use tokio::process::Command;

use crate::common::*;
use crate::v1::{assert_books_balance, node_with_upstream};

/// Python (with selenium), chromedriver and chromium, or what is missing.
fn tools() -> Result<(PathBuf, PathBuf, PathBuf), &'static str> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("OPENAI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/ci-venv/bin/python"));
    let var =
        |k: &str, d: &str| std::env::var_os(k).map_or_else(|| PathBuf::from(d), PathBuf::from);
    let driver = var("CHROMEDRIVER", "/usr/bin/chromedriver");
    let chromium = var("CHROMIUM", "/usr/bin/chromium");
    if !python.exists() {
        return Err("a Python with selenium (target/ci-venv, made by .ci/run, or OPENAI_PYTHON)");
    }
    if !driver.exists() || !chromium.exists() {
        return Err("Debian's chromium and chromium-driver (installed by .ci/run)");
    }
    Ok((python, driver, chromium))
}

/// A node whose `gpt-4o-mini` is the echoing fake upstream, cheap enough for many turns.
async fn browser_node(app: &TestApp) -> (TestApp, questech_fake_upstream::FakeUpstream) {
    let behavior = Behavior {
        echo: true,
        chunk_gap: Duration::from_millis(60),
        ..Behavior::default()
    };
    let (node, up) = node_with_upstream(app, behavior, &[("DEFAULT_MODEL", "gpt-4o-mini")]).await;
    node.sql(
        "UPDATE models SET prompt_per_1k = 100, completion_per_1k = 100, per_request = 1, max_output_tokens = 400 WHERE id = 'gpt-4o-mini'",
        &[],
    )
    .await;
    node.state.models.invalidate().await.unwrap();
    (node, up)
}

/// Runs one of the browser scripts; panics with its output unless every case passed.
async fn run_script(script: &str, node: &TestApp, extra: &[&str]) -> serde_json::Value {
    let (python, driver, chromium) = match tools() {
        Ok(t) => t,
        Err(needs) => {
            skip(needs);
            return serde_json::Value::Null;
        }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("target/browser-shots");
    let out = Command::new(python)
        .arg(root.join("tests/browser").join(script))
        .args(["--base", &node.url("")])
        .arg("--shots")
        .arg(&shots)
        .arg("--chromedriver")
        .arg(&driver)
        .arg("--chromium")
        .arg(&chromium)
        .args(extra)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), out)
        .await
        .expect("the browser script finishes within 4 minutes")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed (screenshots in {}):\n{stdout}\n{stderr}",
        shots.display()
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary");
    assert_eq!(summary["ok"], true, "{summary}");
    summary
}

/// Every user's books balance, nothing is reserved, no turn is left streaming.
async fn assert_all_books(node: &TestApp) {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM users")
        .fetch_all(&node.state.db.write)
        .await
        .unwrap();
    for id in ids {
        assert_books_balance(node, id).await;
    }
    let streaming: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE status = 'streaming'")
            .fetch_one(&node.state.db.write)
            .await
            .unwrap();
    assert_eq!(streaming, 0, "no turn left streaming");
}

/// Waits for the SMS code sent to `phone` and writes it to `file` (whole, by a rename).
async fn relay_sms_code(state: questech::AppState, phone: String, file: PathBuf) {
    let ph = questech::auth::crypto::phone_hash(&state.config.encryption_key, &phone);
    let key = questech::http::sms::debug_code_key(&ph);
    loop {
        if let Ok(Some(code)) = state.cache.get(&key).await {
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, code).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_app_in_chromium() {
    run(Backend::Sqlite, &[], |app| async move {
        let (node, up) = browser_node(&app).await;
        // The SMS case: the `log` provider's code is read from the server's cache (the
        // documented dev aid) and handed to the script through a file.
        let phone = format!("+4477009{:05}", rand::random::<u32>() % 100_000);
        let code_file = node.data_dir.join(format!("sms-code-{}", random_tag()));
        let relay = tokio::spawn(relay_sms_code(
            node.state.clone(),
            phone.clone(),
            code_file.clone(),
        ));
        let code_arg = code_file.to_string_lossy().into_owned();
        let args = [
            "--model",
            "gpt-4o-mini",
            "--sms-phone",
            phone.as_str(),
            "--code-file",
            code_arg.as_str(),
        ];
        let summary = run_script("app_test.py", &node, &args).await;
        relay.abort();
        if summary.is_null() {
            return;
        }
        assert!(up.request_count() >= 5, "turns went upstream: {summary}");
        assert_all_books(&node).await;
    })
    .await
}

/// Access tokens that live 4 s: the app refreshes ahead of every expiry and keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_app_refreshes_tokens_in_chromium() {
    run(
        Backend::Sqlite,
        &[("JWT_ACCESS_TTL_SECS", "4")],
        |app| async move {
            let (node, _up) = browser_node(&app).await;
            let args = ["--model", "gpt-4o-mini", "--only", "token_refresh"];
            let summary = run_script("app_test.py", &node, &args).await;
            if summary.is_null() {
                return;
            }
            let refreshed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens")
                .fetch_one(&node.state.db.write)
                .await
                .unwrap();
            assert!(refreshed >= 3, "refresh tokens issued: {refreshed}");
            assert_all_books(&node).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_console_in_chromium() {
    run(Backend::Sqlite, &[], |app| async move {
        let (node, _up) = browser_node(&app).await;
        let admin = uname("opsroot");
        node.register(&admin).await;
        node.make_admin(&admin).await;
        let args = [
            "--model",
            "gpt-4o-mini",
            "--admin-user",
            admin.as_str(),
            "--admin-pass",
            PASSWORD,
        ];
        if run_script("ops_test.py", &node, &args).await.is_null() {
            return;
        }
        assert_all_books(&node).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_served_with_a_strict_policy_and_content_hashes() {
    run(Backend::Sqlite, &[], |app| async move {
        let client = reqwest::Client::new();
        for page in ["/", "/ops"] {
            let res = client.get(app.url(page)).send().await.unwrap();
            assert_eq!(res.status(), 200, "{page}");
            let h = res.headers().clone();
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
                "{csp}"
            );
            assert_eq!(h["cache-control"], "no-cache");
            let etag = h["etag"].clone();
            let html = res.text().await.unwrap();
            assert!(!html.contains("<script>"), "no inline script on {page}");
            // Every asset reference carries its content hash, and is then cached for good.
            let at = html.find("src=\"/static/").expect("a script") + 5;
            let url = &html[at..at + html[at..].find('"').unwrap()];
            assert!(url.contains("?h="), "{url}");
            let asset = client.get(app.url(url)).send().await.unwrap();
            assert_eq!(asset.status(), 200, "{url}");
            assert!(asset.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("immutable"));
            assert!(asset.headers()["content-type"]
                .to_str()
                .unwrap()
                .contains("javascript"));
            let bare = url.split('?').next().unwrap();
            let asset = client.get(app.url(bare)).send().await.unwrap();
            assert_eq!(asset.headers()["cache-control"], "no-cache", "{bare}");
            // Revalidation answers 304 without a body.
            let again = client
                .get(app.url(page))
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap();
            assert_eq!(again.status(), 304, "{page}");
        }
        for bad in [
            "/static/app/../../Cargo.toml",
            "/static/app/%2e%2e/%2e%2e/Cargo.toml",
            "/static/app/nope.js",
        ] {
            let (s, _, b) = app.get(bad, None).await;
            assert_eq!(s, 404, "{bad}: {b}");
            assert_eq!(b["error"]["code"], "not_found", "{bad}: {b}");
        }
    })
    .await
}
