//! Protection of sensitive columns (SPEC §3 `ENCRYPTION_KEY`): phone numbers.
//!
//! - `users.phone_enc` holds `base64(nonce || ciphertext)`: AES-256-GCM under `ENCRYPTION_KEY`
//!   with a fresh random 96-bit nonce per value, so equal numbers never look alike.
//! - `users.phone_hash` holds `hex(HMAC-SHA256(subkey, normalized phone))` (unique), the only
//!   way a phone is looked up. The subkey is derived from `ENCRYPTION_KEY`, so the hash cannot be
//!   reversed by enumerating the (small) space of phone numbers without the key, and the AES key
//!   itself is never used for two purposes.
//!
//! Phones are normalized before either: mainland numbers `1[3-9]` + 9 digits become `+86…`;
//! anything else must be E.164 (`+` then 8–15 digits, no leading zero). Spaces and hyphens are
//! ignored.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::patterns::{matches, pattern};

const NONCE_LEN: usize = 12;

/// Normalizes a phone number to E.164, or fails with `invalid_request` naming `phone`.
pub fn normalize_phone(raw: &str) -> Result<String> {
    let bad = || {
        Error::invalid(
            "phone",
            "must be a mainland China mobile number (1[3-9] and 9 more digits) or E.164 (+ and 8 to 15 digits)",
        )
    };
    if raw.len() > 32 || !matches(pattern::PHONE, raw) {
        return Err(bad());
    }
    let compact: String = raw.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if is_mainland(&compact) {
        Ok(format!("+86{compact}"))
    } else {
        Ok(compact)
    }
}

/// `^1[3-9]\d{9}$`
fn is_mainland(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
        && b.iter().all(u8::is_ascii_digit)
}

/// The national part of a `+86` mainland mobile number, if it is one.
pub fn mainland_national(e164: &str) -> Option<&str> {
    e164.strip_prefix("+86").filter(|n| is_mainland(n))
}

/// A normalized phone as shown to its owner and written to logs: `138****5678` for mainland
/// mobiles, `+44******1234` otherwise (country code's first digits and the last four kept).
pub fn mask_phone(e164: &str) -> String {
    if let Some(n) = mainland_national(e164) {
        return format!("{}****{}", &n[..3], &n[7..]);
    }
    let digits = e164.trim_start_matches('+');
    if digits.len() < 7 || !digits.is_ascii() {
        return "****".to_owned();
    }
    let stars = digits.len() - 6;
    format!(
        "+{}{}{}",
        &digits[..2],
        "*".repeat(stars),
        &digits[digits.len() - 4..]
    )
}

/// AES-256-GCM with a fresh random nonce; `base64(nonce || ciphertext+tag)`.
pub fn encrypt(key: &[u8; 32], plaintext: &str) -> Result<String> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
        .map_err(|_| Error::internal(anyhow::anyhow!("encryption failed")))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// Reverses [`encrypt`]; `None` for a value that is malformed, tampered with or was encrypted
/// under another key.
pub fn decrypt(key: &[u8; 32], stored: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(stored)
        .ok()?;
    if raw.len() <= NONCE_LEN {
        return None;
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    let plain = Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(nonce), ct)
        .ok()?;
    String::from_utf8(plain).ok()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The lookup key of a normalized phone: `hex(HMAC-SHA256(subkey, phone))`, where
/// `subkey = HMAC-SHA256(ENCRYPTION_KEY, "questech/phone-hash/v1")`.
pub fn phone_hash(key: &[u8; 32], e164: &str) -> String {
    let subkey = hmac_sha256(key, b"questech/phone-hash/v1");
    hex::encode(hmac_sha256(&subkey, e164.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [7u8; 32];
    const K2: [u8; 32] = [8u8; 32];

    #[test]
    fn roundtrip() {
        let enc = encrypt(&K1, "+8613812345678").unwrap();
        assert!(!enc.contains("13812345678"));
        assert_eq!(decrypt(&K1, &enc).as_deref(), Some("+8613812345678"));
    }

    #[test]
    fn wrong_key_fails() {
        let enc = encrypt(&K1, "+8613812345678").unwrap();
        assert_eq!(decrypt(&K2, &enc), None);
    }

    #[test]
    fn tampering_and_garbage_fail() {
        let enc = encrypt(&K1, "+8613812345678").unwrap();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&enc)
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(decrypt(&K1, &tampered), None);
        assert_eq!(decrypt(&K1, "not base64!"), None);
        assert_eq!(decrypt(&K1, "AAAA"), None);
        assert_eq!(decrypt(&K1, ""), None);
    }

    #[test]
    fn nonce_differs_each_time() {
        let a = encrypt(&K1, "+8613812345678").unwrap();
        let b = encrypt(&K1, "+8613812345678").unwrap();
        assert_ne!(a, b);
        let na = &base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap()[..12];
        let nb = &base64::engine::general_purpose::STANDARD
            .decode(&b)
            .unwrap()[..12];
        assert_ne!(na, nb);
    }

    #[test]
    fn hash_is_stable_keyed_and_hex() {
        let a = phone_hash(&K1, "+8613812345678");
        assert_eq!(a, phone_hash(&K1, "+8613812345678"));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, phone_hash(&K2, "+8613812345678"));
        assert_ne!(a, phone_hash(&K1, "+8613812345679"));
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_phone("13812345678").unwrap(), "+8613812345678");
        assert_eq!(
            normalize_phone(" 138-1234 5678 ").unwrap(),
            "+8613812345678"
        );
        assert_eq!(normalize_phone("+8613812345678").unwrap(), "+8613812345678");
        assert_eq!(normalize_phone("+447700900123").unwrap(), "+447700900123");
        assert_eq!(normalize_phone("+12345678").unwrap(), "+12345678");
        for bad in [
            "",
            "12812345678",
            "1381234567",
            "138123456789",
            "+1234567",
            "+1234567890123456",
            "+0123456789",
            "+44abc900123",
            "447700900123",
            "+",
            "１３８１２３４５６７８",
        ] {
            let e = normalize_phone(bad).unwrap_err();
            assert!(e.to_string().contains("phone"), "{bad}: {e}");
        }
    }

    #[test]
    fn masks() {
        assert_eq!(mask_phone("+8613812345678"), "138****5678");
        assert_eq!(mask_phone("+447700900123"), "+44******0123");
        assert_eq!(mask_phone("+12345678"), "+12**5678");
    }
}
