//! Uploads (SPEC §10): `POST /common/upload` stores an image under a generated name and
//! `GET /static/{name}` serves it back.
//!
//! Only images are accepted, recognised by their first bytes (PNG, JPEG, GIF, WebP) and never by
//! the file name or the declared content type; the stored name is `<id>.<ext>` with the extension
//! of the detected format. The field is handed to the upload store (`crate::uploads`: the local
//! folder or an S3 bucket) as it arrives, and the upload is aborted with 413 as soon as it passes
//! `MAX_UPLOAD_BYTES`. The static route only serves names of that exact shape, from that store.

use std::time::Duration;

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Json, Path};
use crate::auth::AuthUser;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::uploads::{kind_of_name, sniff, ImageKind, Writer, IMMUTABLE, SNIFF_BYTES};

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

#[utoipa::path(post, path = "/common/upload", tag = "upload", request_body(content = UploadForm, content_type = "multipart/form-data"), responses((status = 201, description = "stored", body = Uploaded), (status = "4XX", description = "error (413 over MAX_UPLOAD_BYTES, 400 not an image)", body = crate::error::ApiError), (status = 503, description = "the upload store (S3 bucket) does not answer", body = crate::error::ApiError)))]
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

/// Hands the field to the upload store, checking its kind on the first bytes and its size on
/// every chunk; the store makes it visible as `<id>.<ext>` once it is whole.
async fn store(
    state: &AppState,
    field: &mut axum::extract::multipart::Field<'_>,
    max: u64,
) -> Result<Uploaded> {
    let id = crate::ids::next_id();
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF_BYTES);
    let mut kind: Option<ImageKind> = None;
    let mut writer: Option<Writer> = None;
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
            kind = Some(sniff(&head).ok_or_else(not_an_image)?);
            let w = writer.insert(state.uploads.writer(&id.to_string()).await?);
            w.write(&head).await?;
        }
        if let Some(w) = writer.as_mut() {
            if !pending.is_empty() {
                w.write(pending).await?;
            }
        }
        if last {
            break;
        }
    }
    let (Some(kind), Some(writer)) = (kind, writer) else {
        return Err(Error::invalid("file", "must not be empty"));
    };
    let name = format!("{id}.{}", kind.ext);
    writer.finish(&name, kind).await?;
    Ok(Uploaded {
        url: format!("/static/{name}"),
        size,
        content_type: kind.content_type.to_owned(),
    })
}

#[utoipa::path(get, path = "/static/{name}", tag = "upload", params(("name" = String, Path, description = "a stored file's name, `<id>.<ext>`")), responses((status = 200, description = "the file, with its image content type", content_type = "application/octet-stream"), (status = 404, description = "no such file", body = crate::error::ApiError), (status = 503, description = "the upload store (S3 bucket) does not answer", body = crate::error::ApiError)))]
async fn serve_static(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response> {
    let kind = kind_of_name(&name).ok_or_else(|| Error::not_found("no such file"))?;
    let mut res = state.uploads.serve(&name, req).await?;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kind.content_type),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    Ok(res)
}
