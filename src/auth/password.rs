//! bcrypt, always on the blocking pool: a hash costs tens of milliseconds of CPU and must not
//! stall the async runtime.

use crate::error::{Error, Result};

pub async fn hash(password: String, cost: u32) -> Result<String> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(Error::internal)?
        .map_err(Error::internal)
}

pub async fn verify(password: String, hash: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
        .map_err(Error::internal)
}

/// A hash to verify against when the user does not exist, so that unknown users and wrong
/// passwords take the same time (no user enumeration by timing).
pub async fn dummy_verify(password: String, cost: u32) {
    let _ = tokio::task::spawn_blocking(move || {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let h = DUMMY.get_or_init(|| bcrypt::hash("questech-dummy", cost).unwrap_or_default());
        bcrypt::verify(password, h)
    })
    .await;
}
