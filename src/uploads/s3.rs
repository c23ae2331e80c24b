//! Uploads as objects in an S3-compatible bucket (`object_store`'s S3 client): key
//! `<S3_PREFIX><id>.<ext>`, stored with its content type and immutable cache policy, read back by
//! the server for `GET /static/<name>`.
//!
//! A bucket that does not answer must not hold requests: connects time out after 2 s, a request
//! after 30 s, and failed requests are retried twice within 5 s at most; then the request
//! answers 503 `unavailable` with `Retry-After`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore, PutOptions,
    PutPayload, RetryConfig,
};

use super::{kind_of_name, unavailable, ImageKind, IMMUTABLE};
use crate::config::S3Store;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct S3 {
    store: AmazonS3,
    bucket: String,
    prefix: String,
}

impl S3 {
    pub fn new(cfg: &S3Store) -> anyhow::Result<S3> {
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(5),
        };
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(30));
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_retry(retry)
            .with_client_options(client);
        match &cfg.endpoint {
            Some(endpoint) => {
                b = b
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            // AWS itself: `<bucket>.s3.<region>.amazonaws.com`, unless a dot in the bucket's
            // name would not match the wildcard certificate.
            None => b = b.with_virtual_hosted_style_request(!cfg.bucket.contains('.')),
        }
        if let Some((id, secret)) = &cfg.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(&secret.0);
        }
        Ok(S3 {
            store: b.build()?,
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
        })
    }

    pub fn describe(&self) -> String {
        format!("bucket {} (prefix {:?})", self.bucket, self.prefix)
    }

    /// The object key of upload `name` (a generated name: digits, a dot, an extension).
    fn key(&self, name: &str) -> Path {
        Path::from(format!("{}{name}", self.prefix))
    }

    pub fn writer(&self) -> Writer {
        Writer {
            store: self.clone(),
            bytes: Vec::new(),
        }
    }

    pub async fn serve(&self, name: &str, req: Request) -> Result<Response> {
        let if_none_match = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let opts = GetOptions {
            if_none_match: if_none_match.clone(),
            head: req.method() == Method::HEAD,
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&self.key(name), opts).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::not_found("no such file"))
            }
            Err(object_store::Error::NotModified { .. }) => {
                let mut res = StatusCode::NOT_MODIFIED.into_response();
                // The tag matched: it is the object's (when the client sent one, not a list).
                if let Some(tag) = if_none_match.filter(|t| !t.contains(',') && t != "*") {
                    if let Ok(v) = HeaderValue::from_str(&tag) {
                        res.headers_mut().insert(header::ETAG, v);
                    }
                }
                return Ok(res);
            }
            Err(e) => return Err(unavailable(&e)),
        };
        let meta = got.meta.clone();
        let mut res = Response::new(Body::from_stream(got.into_stream()));
        let h = res.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
        if let Some(v) = meta.e_tag.and_then(|t| HeaderValue::from_str(&t).ok()) {
            h.insert(header::ETAG, v);
        }
        let modified = meta
            .last_modified
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        if let Ok(v) = HeaderValue::from_str(&modified) {
            h.insert(header::LAST_MODIFIED, v);
        }
        Ok(res)
    }

    pub async fn read(&self, name: &str) -> Result<Option<Bytes>> {
        if kind_of_name(name).is_none() {
            return Ok(None);
        }
        let got = match self.store.get(&self.key(name)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(unavailable(&e)),
        };
        let size = got.meta.size;
        let bytes = got.bytes().await.map_err(|e| unavailable(&e))?;
        // A cut-off body is an outage, not a short image.
        if bytes.len() as u64 != size {
            return Err(unavailable(&format!(
                "upload {name}: {} of {size} bytes",
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }
}

/// The whole upload in memory (at most `MAX_UPLOAD_BYTES`), sent in one `PUT` at the end.
pub struct Writer {
    store: S3,
    bytes: Vec<u8>,
}

impl Writer {
    pub fn write(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    pub async fn finish(self, name: &str, kind: ImageKind) -> Result<()> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, kind.content_type.into());
        attributes.insert(Attribute::CacheControl, IMMUTABLE.into());
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let key = self.store.key(name);
        self.store
            .store
            .put_opts(&key, PutPayload::from(self.bytes), opts)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }
}
