//! Uploads (SPEC §10): `POST /common/upload` stores an image under a generated name and
//! `GET /static/{name}` serves it back.
//!
//! Only images are accepted, recognised by their first bytes (PNG, JPEG, GIF, WebP) and never by
//! the file name or the declared content type; the stored name is `<id>.<ext>` with the extension
//! of the detected format. The field is streamed to a temporary file and the upload is aborted
//! with 413 as soon as it passes `MAX_UPLOAD_BYTES`. The static route only serves names of that
//! exact shape from the upload folder, so no path can reach anything else.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;
use tower_http::services::ServeFile;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Json, Path};
use crate::auth::AuthUser;
use crate::error::{Error, Result};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(
            // The size is enforced while streaming (below), against the configured limit.
            OpenApiRouter::new()
                .routes(routes!(upload))
                .layer(DefaultBodyLimit::disable()),
        )
        .routes(routes!(serve_static))
}

/// Room for the multipart framing and small extra fields around the file.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// Bytes needed to recognise every accepted format.
const SNIFF_BYTES: usize = 12;

/// An accepted image format: file extension and content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageKind {
    pub ext: &'static str,
    pub content_type: &'static str,
}

const PNG: ImageKind = ImageKind {
    ext: "png",
    content_type: "image/png",
};
const JPEG: ImageKind = ImageKind {
    ext: "jpg",
    content_type: "image/jpeg",
};
const GIF: ImageKind = ImageKind {
    ext: "gif",
    content_type: "image/gif",
};
const WEBP: ImageKind = ImageKind {
    ext: "webp",
    content_type: "image/webp",
};

/// Recognises an image by its magic bytes.
pub fn sniff(head: &[u8]) -> Option<ImageKind> {
    if head.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        Some(PNG)
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(JPEG)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(GIF)
    } else if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(WEBP)
    } else {
        None
    }
}

/// The kind of a stored file's name, if the name is exactly `<digits>.<ext>`.
fn kind_of_name(name: &str) -> Option<ImageKind> {
    let (stem, ext) = name.split_once('.')?;
    if stem.is_empty() || stem.len() > 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    [PNG, JPEG, GIF, WEBP].into_iter().find(|k| k.ext == ext)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// Where the file is served, e.g. `/static/123.png`.
    pub url: String,
    /// Bytes stored.
    pub size: u64,
    /// The detected type: `image/png`, `image/jpeg`, `image/gif` or `image/webp`.
    pub content_type: String,
}

/// The multipart form of `POST /common/upload`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// The image (PNG, JPEG, GIF or WebP).
    #[schema(value_type = String, format = Binary, min_length = 1)]
    file: Vec<u8>,
}

fn multipart_error(e: MultipartError) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge("upload too large".into())
    } else {
        Error::invalid(
            "file",
            &format!("malformed multipart body: {}", e.body_text()),
        )
    }
}

/// Removes a temporary file unless disarmed (the upload failed or the client went away).
struct PartFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if self.armed {
            let path = std::mem::take(&mut self.path);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tokio::fs::remove_file(path).await;
                });
            }
        }
    }
}

#[utoipa::path(post, path = "/common/upload", tag = "upload", request_body(content = UploadForm, content_type = "multipart/form-data"), responses((status = 201, description = "stored", body = Uploaded), (status = "4XX", description = "error (413 over MAX_UPLOAD_BYTES, 400 not an image)", body = crate::error::ApiError)))]
async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Result<Response> {
    let max = state.config.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut multipart = multipart.map_err(|e| {
        Error::invalid(
            "file",
            &format!("expected multipart/form-data: {}", e.body_text()),
        )
    })?;
    if let Some(n) = declared.filter(|n| *n > max.saturating_add(MULTIPART_OVERHEAD)) {
        // Refused from its declared length; a body of reasonable size is read past first so
        // that the client, still sending, gets to see the answer.
        if n <= DRAIN_MAX_BYTES {
            drain(&mut multipart).await;
        }
        return Err(too_large(max));
    }
    let result = receive(&state, &mut multipart, max).await;
    if result.is_err() {
        drain(&mut multipart).await;
    }
    let uploaded = result?;
    let name = uploaded.url.trim_start_matches("/static/");
    crate::storage::uploads::record(
        &state.db,
        name,
        user.user_id,
        &uploaded.content_type,
        uploaded.size,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(uploaded)).into_response())
}

/// Reads the form up to its `file` field and stores that.
async fn receive(state: &AppState, multipart: &mut Multipart, max: u64) -> Result<Uploaded> {
    let mut other_bytes: u64 = 0;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            // Other fields are read past, within a small budget.
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                other_bytes += chunk.len() as u64;
                if other_bytes > MULTIPART_OVERHEAD {
                    return Err(too_large(max));
                }
            }
            continue;
        }
        return store(state, &mut field, max).await;
    }
    Err(Error::invalid(
        "file",
        "required (a multipart field named `file`)",
    ))
}

/// Most of a refused request body read (and dropped) before answering: an HTTP client that is
/// still sending when the server answers and closes often sees a reset instead of the answer.
/// Anything larger, slower, or malformed is cut off.
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

async fn drain(multipart: &mut Multipart) {
    let read = async {
        let mut n: u64 = 0;
        while let Ok(Some(mut field)) = multipart.next_field().await {
            while let Ok(Some(chunk)) = field.chunk().await {
                n += chunk.len() as u64;
                if n > DRAIN_MAX_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, read).await;
}

fn too_large(max: u64) -> Error {
    Error::PayloadTooLarge(format!("the file is larger than {max} bytes"))
}

fn not_an_image() -> Error {
    Error::invalid("file", "must be a PNG, JPEG, GIF or WebP image")
}

/// Streams the field to `<dir>/.<id>.part`, checking its kind on the first bytes and its size on
/// every chunk, then renames it to `<dir>/<id>.<ext>`.
async fn store(
    state: &AppState,
    field: &mut axum::extract::multipart::Field<'_>,
    max: u64,
) -> Result<Uploaded> {
    let dir = state.config.upload_dir.clone();
    let id = crate::ids::next_id();
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF_BYTES);
    let mut kind: Option<ImageKind> = None;
    let mut file: Option<(tokio::fs::File, PartFile)> = None;
    let mut size: u64 = 0;
    loop {
        let chunk = field.chunk().await.map_err(multipart_error)?;
        let last = chunk.is_none();
        let chunk = chunk.unwrap_or_default();
        size += chunk.len() as u64;
        if size > max {
            return Err(too_large(max));
        }
        let mut pending: &[u8] = &chunk;
        if kind.is_none() {
            let take = (SNIFF_BYTES - head.len()).min(pending.len());
            head.extend_from_slice(&pending[..take]);
            pending = &pending[take..];
            if head.len() < SNIFF_BYTES && !last {
                continue;
            }
            if head.is_empty() {
                return Err(Error::invalid("file", "must not be empty"));
            }
            let k = sniff(&head).ok_or_else(not_an_image)?;
            kind = Some(k);
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(Error::internal)?;
            let path = dir.join(format!(".{id}.part"));
            let f = tokio::fs::File::create(&path)
                .await
                .map_err(Error::internal)?;
            let guard = PartFile { path, armed: true };
            let (f, _) = file.insert((f, guard));
            f.write_all(&head).await.map_err(Error::internal)?;
        }
        if let Some((f, _)) = file.as_mut() {
            if !pending.is_empty() {
                f.write_all(pending).await.map_err(Error::internal)?;
            }
        }
        if last {
            break;
        }
    }
    let (Some(kind), Some((mut f, mut guard))) = (kind, file) else {
        return Err(Error::invalid("file", "must not be empty"));
    };
    f.flush().await.map_err(Error::internal)?;
    f.sync_all().await.map_err(Error::internal)?;
    drop(f);
    let name = format!("{id}.{}", kind.ext);
    tokio::fs::rename(&guard.path, dir.join(&name))
        .await
        .map_err(Error::internal)?;
    guard.armed = false;
    Ok(Uploaded {
        url: format!("/static/{name}"),
        size,
        content_type: kind.content_type.to_owned(),
    })
}

#[utoipa::path(get, path = "/static/{name}", tag = "upload", params(("name" = String, Path, description = "a stored file's name, `<id>.<ext>`")), responses((status = 200, description = "the file, with its image content type", content_type = "application/octet-stream"), (status = 404, description = "no such file", body = crate::error::ApiError)))]
async fn serve_static(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response> {
    let not_found = || Error::not_found("no such file");
    let kind = kind_of_name(&name).ok_or_else(not_found)?;
    let path = state.config.upload_dir.join(&name);
    let res = match ServeFile::new(path).oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    if res.status() == StatusCode::NOT_FOUND {
        return Err(not_found());
    }
    let mut res = res.map(axum::body::Body::new);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kind.content_type),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Ok(res)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_each_format_by_its_bytes() {
        assert_eq!(
            sniff(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0]),
            Some(PNG)
        );
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(JPEG));
        assert_eq!(sniff(b"GIF89a\x01\x00"), Some(GIF));
        assert_eq!(sniff(b"GIF87a"), Some(GIF));
        assert_eq!(sniff(b"RIFF\x10\x00\x00\x00WEBPVP8 "), Some(WEBP));
        assert_eq!(sniff(b"RIFF\x10\x00\x00\x00WAVE"), None);
        assert_eq!(sniff(b"hello, this is text"), None);
        assert_eq!(sniff(&[0x89, b'P', b'N', b'G']), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn only_generated_names_are_served() {
        assert_eq!(kind_of_name("123.png"), Some(PNG));
        assert_eq!(kind_of_name("123.webp"), Some(WEBP));
        for bad in [
            "../Cargo.toml",
            "..",
            "123.png/..",
            "/etc/passwd",
            "a1.png",
            ".1.part",
            "1.txt",
            "1.PNG",
            "1",
            "123.png.exe",
            "",
        ] {
            assert_eq!(kind_of_name(bad), None, "{bad}");
        }
    }
}
