//! Where uploads are kept (`UPLOAD_STORE`): the local folder `UPLOAD_DIR` (the default) or an
//! S3-compatible bucket (`S3_*`), which every node of a cluster shares.

use super::vars::Vars;
use super::{err, ConfigError, Secret};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadStore {
    /// Files in `UPLOAD_DIR`.
    Local,
    /// Objects in a bucket, proxied by `GET /static/{name}`.
    S3(S3Store),
}

/// An S3-compatible bucket (AWS, or any server speaking the S3 API at `endpoint`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Store {
    pub bucket: String,
    /// `None`: AWS itself (`https://<bucket>.s3.<region>.amazonaws.com`). Set: that server, in
    /// path style (`<endpoint>/<bucket>/<key>`), as MinIO, Ceph, moto and most others expect.
    pub endpoint: Option<String>,
    pub region: String,
    /// Static keys; `None`: a web-identity role (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`)
    /// or else the EC2 instance role.
    pub credentials: Option<(String, Secret)>,
    /// Put before every object name: empty, or ending with `/` (e.g. `questech/uploads/`).
    pub prefix: String,
}

pub(super) fn upload_store(v: &Vars) -> Result<UploadStore, ConfigError> {
    match v.string("UPLOAD_STORE", "local").as_str() {
        "local" => Ok(UploadStore::Local),
        "s3" => Ok(UploadStore::S3(s3(v)?)),
        other => Err(err(
            "UPLOAD_STORE",
            format!("expected local or s3, got {other:?}"),
        )),
    }
}

fn s3(v: &Vars) -> Result<S3Store, ConfigError> {
    let bucket = v
        .opt("S3_BUCKET")
        .ok_or_else(|| err("S3_BUCKET", "required when UPLOAD_STORE=s3"))?;
    // The rules every S3 implementation accepts (and that keep it out of a URL's syntax).
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(err(
            "S3_BUCKET",
            format!("expected 3-63 lowercase letters, digits, '-' or '.', got {bucket:?}"),
        ));
    }
    let endpoint = match v.opt("S3_ENDPOINT") {
        Some(_) => Some(v.url("S3_ENDPOINT", "")?),
        None => None,
    };
    let region = v.string("S3_REGION", "us-east-1");
    if !region
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(err(
            "S3_REGION",
            format!("expected a region name such as us-east-1, got {region:?}"),
        ));
    }
    let credentials = match (v.opt("S3_ACCESS_KEY_ID"), v.opt("S3_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Some((id, Secret(secret))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(err(
                "S3_SECRET_ACCESS_KEY",
                "required when S3_ACCESS_KEY_ID is set",
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "S3_ACCESS_KEY_ID",
                "required when S3_SECRET_ACCESS_KEY is set",
            ))
        }
    };
    Ok(S3Store {
        bucket,
        endpoint,
        region,
        credentials,
        prefix: prefix(v)?,
    })
}

/// `S3_PREFIX` as `a/b/` (or empty): segments of safe characters, no `.`/`..`, no empty ones.
fn prefix(v: &Vars) -> Result<String, ConfigError> {
    let raw = v.string("S3_PREFIX", "");
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let ok = trimmed.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    });
    if !ok {
        return Err(err(
            "S3_PREFIX",
            format!("expected folder names of letters, digits, '-', '_' or '.' separated by '/', got {raw:?}"),
        ));
    }
    Ok(format!("{trimmed}/"))
}
