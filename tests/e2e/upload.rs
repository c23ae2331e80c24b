//! Uploads (SPEC §10): images only (judged by their bytes), size limit, generated names, and the
//! static route that serves them and nothing else.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const BOUNDARY: &str = "qt-e2e-boundary-5b8f0c";

/// A `multipart/form-data` body with one file field.
fn form(field: &str, filename: &str, content_type: &str, data: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn upload_raw(app: &TestApp, token: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(app.url("/common/upload"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let (s, _, b) = app.send(req).await;
    (s, b)
}

pub(crate) async fn upload(
    app: &TestApp,
    token: &str,
    filename: &str,
    ct: &str,
    data: &[u8],
) -> (StatusCode, Value) {
    upload_raw(app, Some(token), form("file", filename, ct, data)).await
}

pub(crate) fn png(len: usize) -> Vec<u8> {
    let mut v = vec![
        0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, b'I', b'H', b'D', b'R',
    ];
    let mut i = 0u8;
    while v.len() < len {
        v.push(i);
        i = i.wrapping_add(37);
    }
    v.truncate(len);
    v
}

fn jpeg() -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    v.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

fn gif() -> Vec<u8> {
    let mut v = b"GIF89a".to_vec();
    v.extend_from_slice(&[1, 0, 1, 0, 0x80, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0x3B]);
    v
}

fn webp() -> Vec<u8> {
    let mut v = b"RIFF".to_vec();
    v.extend_from_slice(&26u32.to_le_bytes());
    v.extend_from_slice(b"WEBPVP8 ");
    v.extend_from_slice(&[
        0x0E, 0, 0, 0, 0x30, 0x01, 0, 0x9D, 0x01, 0x2A, 1, 0, 1, 0, 0, 0, 0, 0,
    ]);
    v
}

/// GET through the normal client: status, content type and bytes.
async fn fetch(app: &TestApp, path: &str) -> (StatusCode, String, Vec<u8>) {
    let res = app.client.get(app.url(path)).send().await.expect("fetch");
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, ct, res.bytes().await.expect("body").to_vec())
}

/// Sends a request line exactly as written (no client-side path normalisation) and returns the
/// status and body.
async fn raw_get(app: &TestApp, target: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn upload_dir(app: &TestApp) -> std::path::PathBuf {
    std::path::PathBuf::from(&app.env["UPLOAD_DIR"])
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

both!(upload_each_image_type_and_fetch_it_back, |app| async move {
    let u = app.register(&uname("u")).await;
    let big = png(2 * 1024 * 1024 + 17); // over the 1 MiB limit of JSON bodies
    let cases: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
        ("a.png", "image/png", png(64), "image/png", "png"),
        ("photo.jpeg", "image/jpeg", jpeg(), "image/jpeg", "jpg"),
        ("anim.gif", "image/gif", gif(), "image/gif", "gif"),
        ("pic.webp", "image/webp", webp(), "image/webp", "webp"),
        // The name and the declared type do not matter: the bytes do.
        (
            "evil.exe",
            "application/x-msdownload",
            png(100),
            "image/png",
            "png",
        ),
        ("x.gif", "text/plain", jpeg(), "image/jpeg", "jpg"),
        ("big.png", "image/png", big, "image/png", "png"),
    ];
    let mut urls = Vec::new();
    for (name, declared, data, ct, ext) in cases {
        let (s, b) = upload(&app, &u.access, name, declared, &data).await;
        assert_eq!(s, StatusCode::CREATED, "{name}: {b}");
        assert_eq!(keys(&b), ["content_type", "size", "url"], "{b}");
        assert_eq!(b["content_type"], ct, "{name}");
        assert_eq!(b["size"], data.len() as u64, "{name}");
        let url = b["url"].as_str().unwrap().to_owned();
        let file = url
            .strip_prefix("/static/")
            .unwrap_or_else(|| panic!("{url}"));
        let (stem, got_ext) = file.split_once('.').unwrap();
        assert!(
            stem.bytes().all(|c| c.is_ascii_digit()),
            "generated name: {url}"
        );
        assert_eq!(got_ext, ext, "{url}");
        assert!(!urls.contains(&url), "names are unique");
        let (s, got_ct, bytes) = fetch(&app, &url).await;
        assert_eq!(s, StatusCode::OK, "{url}");
        assert_eq!(got_ct, ct, "{url}");
        assert!(bytes == data, "{url}: the bytes come back unchanged");
        urls.push(url);
    }
    // Stored under UPLOAD_DIR, nothing else left there.
    let mut expected: Vec<String> = urls
        .iter()
        .map(|u| u.trim_start_matches("/static/").to_owned())
        .collect();
    expected.sort();
    assert_eq!(files_in(&upload_dir(&app)), expected);
    // Served to anyone with the URL (they are public assets, like avatars).
    let (s, _, _) = fetch(&app, &urls[0]).await;
    assert_eq!(s, StatusCode::OK);
    // Extra form fields around the file are fine.
    let mut body =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n")
            .into_bytes();
    body.extend(form("file", "g.gif", "image/gif", &gif()));
    let (s, b) = upload_raw(&app, Some(&u.access), body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["content_type"], "image/gif");
});

both!(upload_refuses_what_is_not_an_image, |app| async move {
    let u = app.register(&uname("u")).await;
    let (s, b) = upload_raw(&app, None, form("file", "a.png", "image/png", &png(32))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let mut wave = b"RIFF".to_vec();
    wave.extend_from_slice(&[0, 0, 0, 0]);
    wave.extend_from_slice(b"WAVEfmt ");
    for (name, data) in [
        ("notes.png", b"just some text, renamed to .png".to_vec()),
        (
            "page.jpg",
            b"<html><script>alert(1)</script></html>".to_vec(),
        ),
        ("sound.webp", wave),
        ("short.png", vec![0x89, b'P', b'N']),
        ("empty.png", Vec::new()),
    ] {
        let (s, b) = upload(&app, &u.access, name, "image/png", &data).await;
        assert_invalid(s, &b, "file");
    }
    // No `file` field, or not a multipart body at all.
    let (s, b) = upload_raw(
        &app,
        Some(&u.access),
        form("avatar", "a.png", "image/png", &png(32)),
    )
    .await;
    assert_invalid(s, &b, "file");
    let (s, _, b) = app
        .post(
            "/common/upload",
            Some(&u.access),
            Some(serde_json::json!({"file": "x"})),
        )
        .await;
    assert_invalid(s, &b, "file");
    let (s, b) = upload_raw(&app, Some(&u.access), b"--nope\r\ngarbage".to_vec()).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    // Nothing was stored, not even a temporary file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(files_in(&upload_dir(&app)), Vec::<String>::new());
});

both!(
    upload_over_the_limit_is_413,
    env = [("MAX_UPLOAD_BYTES", "1024")],
    |app| async move {
        let u = app.register(&uname("u")).await;
        let (s, b) = upload(&app, &u.access, "ok.png", "image/png", &png(1024)).await;
        assert_eq!(s, StatusCode::CREATED, "exactly the limit is fine: {b}");
        assert_eq!(b["size"], 1024);
        let kept = b["url"]
            .as_str()
            .unwrap()
            .trim_start_matches("/static/")
            .to_owned();

        let (s, b) = upload(&app, &u.access, "big.png", "image/png", &png(1025)).await;
        assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        // Refused from its declared length, without reading it.
        let (s, b) = upload(
            &app,
            &u.access,
            "huge.png",
            "image/png",
            &png(3 * 1024 * 1024),
        )
        .await;
        assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        // No declared length (chunked): stopped while streaming.
        let body = form("file", "stream.png", "image/png", &png(8 * 1024));
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(512).map(|c| Ok(c.to_vec())).collect();
        let req = app
            .client
            .post(app.url("/common/upload"))
            .bearer_auth(&u.access)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
        let (s, _, b) = app.send(req).await;
        assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        // Only the accepted file is on disk (temporary files of refused uploads are removed).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(files_in(&upload_dir(&app)), [kept]);
    }
);

both!(static_route_serves_nothing_but_uploads, |app| async move {
    let u = app.register(&uname("u")).await;
    let (s, b) = upload(&app, &u.access, "a.png", "image/png", &png(40)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let url = b["url"].as_str().unwrap().to_owned();
    let (status, _) = raw_get(&app, &url).await;
    assert_eq!(status, 200, "the upload itself is served");
    // Files that exist next to and above the upload folder.
    let dir = upload_dir(&app);
    std::fs::write(dir.join("notes.txt"), "secret").unwrap();
    std::fs::write(dir.join("1.part"), "partial").unwrap();
    std::fs::write(dir.parent().unwrap().join("77.png"), png(20)).unwrap();
    for target in [
        "/static/../Cargo.toml",
        "/static/..%2fCargo.toml",
        "/static/%2e%2e/Cargo.toml",
        "/static/%2e%2e%2fCargo.toml",
        "/static/%2E%2E%2F%2E%2E%2FCargo.toml",
        "/static/..%5cCargo.toml",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/..%2f77.png",
        "/static/%2e%2e%2f77.png",
        "/static/../77.png",
        "/static/./../77.png",
        "/static/notes.txt",
        "/static/1.part",
        "/static/123456.png",
        "/static/",
        "/static",
        "/static/..",
        "/static/%00.png",
    ] {
        let (status, body) = raw_get(&app, target).await;
        assert_eq!(status, 404, "{target}: {body}");
        assert!(
            !body.contains("secret") && !body.contains("[package]"),
            "{target}: {body}"
        );
    }
    // Through a normal client too.
    let (s, _, _) = fetch(&app, "/static/..%2fq.db").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
});
