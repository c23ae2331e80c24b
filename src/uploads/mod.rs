//! Where uploads are kept (SPEC §10, `UPLOAD_STORE`): files in the local folder `UPLOAD_DIR`
//! ([`local`], the default), or objects in an S3-compatible bucket ([`s3`]) that every node of a
//! cluster shares. Either way the server itself serves them at `GET /static/<name>`, so an
//! upload's URL is the same on every node and clients never hold bucket credentials.
//!
//! `POST /common/upload` checks the image's kind and size while reading it (`http/upload.rs`)
//! and hands the bytes to a [`Writer`]: the local folder gets them streamed into a temporary
//! file renamed into place at the end; the bucket gets them in one `PUT` of the whole file,
//! buffered in memory (at most `MAX_UPLOAD_BYTES`, 10 MiB by default).

pub mod kind;
mod local;
mod s3;

use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;

use crate::config::{Config, UploadStore};
use crate::error::{Error, Result};
pub use kind::{kind_of_name, sniff, ImageKind, SNIFF_BYTES};

/// The `Cache-Control` uploads are served (and stored in a bucket) with: a name is never reused.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The configured upload store. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    Local(local::Local),
    S3(s3::S3),
}

impl Store {
    /// The store `UPLOAD_STORE` names. Nothing is contacted here: a bucket that does not answer
    /// fails the requests that need it (503), not the start of the node.
    pub fn new(cfg: &Config) -> anyhow::Result<Store> {
        Ok(match &cfg.upload_store {
            UploadStore::Local => Store::Local(local::Local::new(cfg.upload_dir.clone())),
            UploadStore::S3(s3) => Store::S3(s3::S3::new(s3)?),
        })
    }

    /// Where uploads go, for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Store::Local(l) => format!("folder {}", l.dir().display()),
            Store::S3(s) => s.describe(),
        }
    }

    /// Starts storing a new upload; `tag` is unique to it (its id).
    pub async fn writer(&self, tag: &str) -> Result<Writer> {
        Ok(match self {
            Store::Local(l) => Writer::Local(l.writer(tag).await?),
            Store::S3(s) => Writer::S3(s.writer()),
        })
    }

    /// Answers `GET /static/<name>` for a name of the generated shape: the file with its length
    /// and validators (`Last-Modified`, and the bucket's `ETag`), 304 when the client's copy is
    /// current, 404 `not_found` for an unknown name, 503 `unavailable` when the bucket does not
    /// answer. The caller adds the content type and cache headers.
    pub async fn serve(&self, name: &str, req: Request) -> Result<Response> {
        match self {
            Store::Local(l) => l.serve(name, req).await,
            Store::S3(s) => s.serve(name, req).await,
        }
    }

    /// The whole upload `name`, `None` if there is none (to send an attached image inline).
    pub async fn read(&self, name: &str) -> Result<Option<Bytes>> {
        match self {
            Store::Local(l) => l.read(name).await,
            Store::S3(s) => s.read(name).await,
        }
    }
}

/// An upload being stored: [`Writer::write`] its bytes in order, then [`Writer::finish`]. A
/// writer dropped before `finish` leaves nothing behind.
pub enum Writer {
    Local(local::Writer),
    S3(s3::Writer),
}

impl Writer {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            Writer::Local(w) => w.write(bytes).await,
            Writer::S3(w) => {
                w.write(bytes);
                Ok(())
            }
        }
    }

    /// Makes the upload visible under `name` (its kind gives the stored content type).
    pub async fn finish(self, name: &str, kind: ImageKind) -> Result<()> {
        match self {
            Writer::Local(w) => w.finish(name).await,
            Writer::S3(w) => w.finish(name, kind).await,
        }
    }
}

/// What a store's failure to answer becomes: 503 `unavailable` with `Retry-After`, logged.
fn unavailable(e: &dyn std::fmt::Display) -> Error {
    Error::unavailable("upload store", e)
}
