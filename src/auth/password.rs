//! bcrypt, always on the blocking pool: a hash costs tens of milliseconds of CPU and must not
//! stall the async runtime.
//!
//! bcrypt reads at most 72 bytes of its input and silently ignores the rest, while passwords may
//! be 128 characters (up to 512 bytes). A password longer than 72 bytes is therefore first reduced
//! to `sha256:` + base64(SHA-256(password)) (51 bytes), so every byte of it counts. Passwords of
//! at most 72 bytes are hashed as they are (plain bcrypt, compatible with other implementations).

use std::borrow::Cow;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const BCRYPT_MAX_BYTES: usize = 72;

/// The bytes bcrypt sees for `password`.
fn bcrypt_input(password: &str) -> Cow<'_, str> {
    if password.len() <= BCRYPT_MAX_BYTES {
        Cow::Borrowed(password)
    } else {
        let digest = Sha256::digest(password.as_bytes());
        Cow::Owned(format!(
            "sha256:{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ))
    }
}

pub async fn hash(password: String, cost: u32) -> Result<String> {
    tokio::task::spawn_blocking(move || bcrypt::hash(bcrypt_input(&password).as_bytes(), cost))
        .await
        .map_err(Error::internal)?
        .map_err(Error::internal)
}

pub async fn verify(password: String, hash: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        bcrypt::verify(bcrypt_input(&password).as_bytes(), &hash).unwrap_or(false)
    })
    .await
    .map_err(Error::internal)
}

/// A hash to verify against when the user does not exist, so that unknown users and wrong
/// passwords take the same time (no user enumeration by timing).
pub async fn dummy_verify(password: String, cost: u32) {
    let _ = tokio::task::spawn_blocking(move || {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let h = DUMMY.get_or_init(|| bcrypt::hash("questech-dummy", cost).unwrap_or_default());
        bcrypt::verify(bcrypt_input(&password).as_bytes(), h)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_past_72_count() {
        let a = format!("{}{}", "p".repeat(80), "-one-ending");
        let b = format!("{}{}", "p".repeat(80), "-two-ending");
        let h = hash(a.clone(), 4).await.unwrap();
        assert!(verify(a, h.clone()).await.unwrap());
        assert!(!verify(b, h).await.unwrap());
    }

    #[tokio::test]
    async fn short_passwords_are_plain_bcrypt() {
        let h = hash("password123".into(), 4).await.unwrap();
        assert!(bcrypt::verify("password123", &h).unwrap());
        assert!(verify("password123".into(), h).await.unwrap());
    }
}
