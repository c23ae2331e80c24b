//! Uploads as files in `UPLOAD_DIR`: each is streamed to `<dir>/.<id>.part`, synced, and renamed
//! to `<dir>/<id>.<ext>`; only names of that generated shape are ever served, so no path can
//! reach anything else.

use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::kind_of_name;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Local {
    dir: PathBuf,
}

impl Local {
    pub fn new(dir: PathBuf) -> Self {
        Local { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub async fn writer(&self, tag: &str) -> Result<Writer> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(Error::internal)?;
        let path = self.dir.join(format!(".{tag}.part"));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(Error::internal)?;
        Ok(Writer {
            file,
            part: PartFile { path, armed: true },
            dir: self.dir.clone(),
        })
    }

    /// The file with `ServeFile`'s answers: length, `Last-Modified`, ranges, 304.
    pub async fn serve(&self, name: &str, req: Request) -> Result<Response> {
        let res = match ServeFile::new(self.dir.join(name)).oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        if res.status() == StatusCode::NOT_FOUND {
            return Err(Error::not_found("no such file"));
        }
        Ok(res.map(axum::body::Body::new))
    }

    pub async fn read(&self, name: &str) -> Result<Option<Bytes>> {
        if kind_of_name(name).is_none() {
            return Ok(None);
        }
        match tokio::fs::read(self.dir.join(name)).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::internal(e)),
        }
    }
}

pub struct Writer {
    file: tokio::fs::File,
    part: PartFile,
    dir: PathBuf,
}

impl Writer {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).await.map_err(Error::internal)
    }

    pub async fn finish(self, name: &str) -> Result<()> {
        let Writer {
            mut file,
            mut part,
            dir,
        } = self;
        file.flush().await.map_err(Error::internal)?;
        file.sync_all().await.map_err(Error::internal)?;
        drop(file);
        tokio::fs::rename(&part.path, dir.join(name))
            .await
            .map_err(Error::internal)?;
        part.armed = false;
        Ok(())
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
