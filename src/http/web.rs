//! The browser app (`/`) and the operations console (`/ops`): static files under `web/`,
//! embedded in the release binary (a debug build reads them from disk, so a page can be edited
//! and reloaded without a rebuild).
//!
//! Every file is also served at `/static/<path>` (beside the uploads' `/static/<name>`: web files
//! are in folders, uploads never are). A page's `src="/static/…"` and
//! `href="/static/…"` references are rewritten to carry the asset's content hash
//! (`?h=<hash>`); an asset asked for with its current hash is cached for a year (`immutable`),
//! anything else — the pages themselves included — is revalidated with its `ETag`. Every answer
//! carries a strict Content-Security-Policy: scripts and styles from this origin only, no inline
//! script, so neither model output nor user text can run script even if it reached the DOM.

use std::borrow::Cow;

use axum::extract::RawQuery;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::RustEmbed;

use super::Path;
use crate::error::Error;
use crate::state::AppState;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Web;

/// The policy of every static answer (see the module docs).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob: https:; connect-src 'self'; font-src 'self'; object-src 'none'; \
base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Routes of the pages and their assets.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|h: HeaderMap| page("app/index.html", h)))
        .route("/ops", get(|h: HeaderMap| page("ops/index.html", h)))
        // `/static/{name}` itself is the uploads' (one segment); web files live in folders.
        .route("/static/app/{*path}", get(|p, q, h| asset("app", p, q, h)))
        .route("/static/ops/{*path}", get(|p, q, h| asset("ops", p, q, h)))
        .route(
            "/static/vendor/{*path}",
            get(|p, q, h| asset("vendor", p, q, h)),
        )
}

/// One embedded file: its bytes, type and content hash.
struct File {
    data: Cow<'static, [u8]>,
    mime: String,
    hash: String,
}

/// Looks a file up: from memory in release builds, from disk (off the runtime) in debug ones.
async fn load(path: String) -> Option<File> {
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
        || path.contains('\\')
    {
        return None;
    }
    let read = move || {
        Web::get(&path).map(|f| File {
            mime: f.metadata.mimetype().to_owned(),
            hash: hex::encode(&f.metadata.sha256_hash()[..8]),
            data: f.data,
        })
    };
    if cfg!(debug_assertions) {
        tokio::task::spawn_blocking(read).await.ok().flatten()
    } else {
        read()
    }
}

async fn page(path: &'static str, headers: HeaderMap) -> Response {
    let Some(file) = load(path.to_owned()).await else {
        return Error::not_found("no such page").into_response();
    };
    let html = String::from_utf8_lossy(&file.data).into_owned();
    let html = stamp_assets(&html).await;
    let etag = format!("\"{}\"", hex::encode(&sha256(html.as_bytes())[..8]));
    respond(
        &headers,
        etag,
        "no-cache",
        &file.mime,
        html.into_bytes().into(),
    )
}

async fn asset(
    folder: &'static str,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(file) = load(format!("{folder}/{path}")).await else {
        return Error::not_found("no such file").into_response();
    };
    let wanted = q.as_deref().and_then(|q| q.strip_prefix("h="));
    let cache = if wanted == Some(file.hash.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let etag = format!("\"{}\"", file.hash);
    respond(&headers, etag, cache, &file.mime, file.data)
}

fn respond(
    req: &HeaderMap,
    etag: String,
    cache: &'static str,
    mime: &str,
    body: Cow<'static, [u8]>,
) -> Response {
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, body).into_response()
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if !fresh {
        if let Ok(v) = HeaderValue::from_str(mime) {
            h.insert(header::CONTENT_TYPE, v);
        }
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// Appends `?h=<content hash>` to every `src="/static/…"` / `href="/static/…"` of a page.
async fn stamp_assets(html: &str) -> String {
    let mut out = String::with_capacity(html.len() + 256);
    let mut rest = html;
    while let Some(at) = next_ref(rest) {
        let (head, tail) = rest.split_at(at);
        out.push_str(head);
        let end = tail.find('"').unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        out.push_str(url);
        if let Some(path) = url.strip_prefix("/static/").filter(|p| !p.contains('?')) {
            if let Some(f) = load(path.to_owned()).await {
                out.push_str("?h=");
                out.push_str(&f.hash);
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Offset of the URL of the next `src="/static/` or `href="/static/` in `s`.
fn next_ref(s: &str) -> Option<usize> {
    ["src=\"/static/", "href=\"/static/"]
        .iter()
        .filter_map(|p| s.find(p).map(|i| i + p.len() - "/static/".len()))
        .min()
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn references_get_the_content_hash() {
        let html = r#"<script src="/static/vendor/marked.esm.js"></script><a href="/x">x</a><link href="/static/missing.css">"#;
        let out = stamp_assets(html).await;
        let f = load("vendor/marked.esm.js".into()).await.expect("vendored");
        assert!(
            out.contains(&format!("/static/vendor/marked.esm.js?h={}\"", f.hash)),
            "{out}"
        );
        assert!(out.contains(r#"href="/x""#), "{out}");
        assert!(out.contains(r#"href="/static/missing.css">"#), "{out}");
    }

    #[tokio::test]
    async fn no_path_leaves_the_folder() {
        for p in [
            "../Cargo.toml",
            "app/../../Cargo.toml",
            "",
            "/etc/passwd",
            "app//x",
        ] {
            assert!(load(p.into()).await.is_none(), "{p}");
        }
    }
}
