//! Secrets: the keys a node needs, generated and kept for development, and the node's name.

use std::path::Path;

use base64::Engine as _;
use rand::RngCore;

use super::vars::Vars;
use super::{err, ConfigError};

/// `JWT_SECRET_KEY` and `ENCRYPTION_KEY`: given, or in development generated once and kept in
/// `DATA_DIR`; required in production.
pub(super) fn keys(
    v: &Vars,
    data_dir: &Path,
    production: bool,
) -> Result<(String, [u8; 32]), ConfigError> {
    let jwt_secret = match v.opt("JWT_SECRET_KEY") {
        Some(s) if s.len() < 32 => {
            return Err(err("JWT_SECRET_KEY", "must be at least 32 characters"))
        }
        Some(s) => s,
        None if production => {
            return Err(err(
                "JWT_SECRET_KEY",
                "required when SERVICE_DEBUG=false and the database is not SQLite",
            ))
        }
        None => load_or_generate(data_dir, "jwt_secret", 48).map_err(|e| {
            err(
                "JWT_SECRET_KEY",
                format!("cannot keep a generated key: {e}"),
            )
        })?,
    };
    let encryption_key = match v.opt("ENCRYPTION_KEY") {
        Some(s) => decode_key(&s).map_err(|why| err("ENCRYPTION_KEY", why))?,
        None if production => {
            return Err(err(
                "ENCRYPTION_KEY",
                "required when SERVICE_DEBUG=false and the database is not SQLite",
            ))
        }
        None => {
            let s = load_or_generate(data_dir, "encryption_key", 32).map_err(|e| {
                err(
                    "ENCRYPTION_KEY",
                    format!("cannot keep a generated key: {e}"),
                )
            })?;
            decode_key(&s).map_err(|why| err("ENCRYPTION_KEY", why))?
        }
    };
    Ok((jwt_secret, encryption_key))
}

pub(super) fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

fn decode_key(s: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| "expected base64".to_owned())?;
    bytes
        .try_into()
        .map_err(|_| "expected 32 bytes (AES-256) in base64".to_owned())
}

/// Reads a dev secret kept in `data_dir/name`, or generates `len` random bytes (base64) and keeps them.
fn load_or_generate(data_dir: &Path, name: &str, len: usize) -> std::io::Result<String> {
    let path = data_dir.join(name);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    let s = base64::engine::general_purpose::STANDARD.encode(bytes);
    write_private(&path, &s)?;
    Ok(s)
}

#[cfg(unix)]
fn write_private(path: &Path, s: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(s.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, s: &str) -> std::io::Result<()> {
    std::fs::write(path, s)
}
