//! The official OpenAI Python SDK against `/v1` (issue 11): a tool-call round trip whole and
//! streamed, vision, JSON-schema output, a refused request, embeddings, and a Responses chain
//! of three turns resumed from a second client, by `tests/python/openai_sdk.py` in the
//! virtual environment `.ci/run` makes (`OPENAI_PYTHON`, else `target/ci-venv`).

use std::path::PathBuf;

use questech_fake_upstream::Behavior;
use tokio::process::Command;

use crate::api_keys::create_key;
use crate::common::*;
use crate::v1::{assert_books_balance, ledger_rows, node_with_upstream};

/// A Python with the `openai` package.
fn python() -> Option<PathBuf> {
    ci_tool("OPENAI_PYTHON", "python")
}

both!(official_python_sdk, |app| async move {
    let Some(py) = python() else {
        skip(
            "a Python with the openai package (target/ci-venv, made by .ci/run, or OPENAI_PYTHON)",
        );
        return;
    };
    let (node, up) = node_with_upstream(&app, Behavior::default(), &[]).await;
    crate::v1_embeddings::add_embedding_model(&node, 0).await;
    let u = node.register(&uname("pysdk")).await;
    let (_, key, _) = create_key(&node, &u.access, "python").await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_sdk.py");
    let out = Command::new(py)
        .arg(script)
        .arg(node.url("/v1"))
        .arg(&key)
        .arg("gpt-4o-mini")
        .arg("text-embedding-3-small")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed:\n{stdout}\n{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary");
    assert_eq!(summary["ok"], true, "{summary}");
    // Ten chat calls went upstream (the refused one did not): five completions, five turns of
    // Responses chains; each billed once, as were the two embeddings.
    assert_eq!(up.request_count(), 10, "{stdout}");
    assert_eq!(ledger_rows(&node, u.uid(), "api").await.len(), 7);
    assert_eq!(ledger_rows(&node, u.uid(), "chat").await.len(), 5);
    assert_books_balance(&node, u.uid()).await;
});
