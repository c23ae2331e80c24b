//! Sign in with Apple (SPEC §5 `POST /user/login/apple`): verification of the identity token.
//!
//! The token is an RS256 JWT signed by one of the keys Apple publishes at `APPLE_JWKS_URL`. We
//! check the signature against the key named by the header's `kid`, `iss ==
//! "https://appleid.apple.com"`, `aud` ∈ `APPLE_CLIENT_IDS` and `exp` (60 s of leeway for clock
//! skew).
//!
//! The key set is cached in memory per URL (process-wide, so it needs no slot in `AppState`): a
//! snapshot is reused for [`JWKS_TTL`]; a token naming a `kid` the snapshot lacks triggers a
//! refetch (Apple rotates keys), but at most once per [`REFETCH_MIN_INTERVAL`], so a flood of
//! forged tokens with random `kid`s cannot turn us into a load generator against Apple. Fetches
//! are single-flight: concurrent logins wait for the one fetch in progress. When a fetch fails, a
//! stale snapshot is still used for the keys it has.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::{Error, Result};

pub const APPLE_ISSUER: &str = "https://appleid.apple.com";
/// How long a fetched key set is trusted without asking again.
pub const JWKS_TTL: Duration = Duration::from_secs(3600);
/// The shortest time between two fetches of one key set.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// The largest identity token accepted (Apple's are around 1 KiB).
const MAX_TOKEN_LEN: usize = 8192;
/// The largest key set accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// What we use of a verified identity token.
#[derive(Debug, Clone, Deserialize)]
pub struct AppleClaims {
    /// Apple's stable user id for this team.
    pub sub: String,
    #[serde(default)]
    pub email: Option<String>,
    /// What the app put in the authorization request: the SHA-256 (hex) of its raw nonce.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// Checks the token's `nonce` against the raw nonce the client sent (Apple's guidance: the app
/// sends `sha256(raw)` to Apple and the raw value to its server). A token that carries a nonce
/// must come with the matching raw value, so a stolen token cannot be replayed without it; a
/// token without one is accepted only when the client sent none (the behaviour before nonces).
pub fn check_nonce(claims: &AppleClaims, raw: Option<&str>) -> Result<()> {
    use sha2::{Digest, Sha256};
    let mismatch = || Error::Unauthorized("Apple identity token nonce does not match".into());
    match (claims.nonce.as_deref(), raw) {
        (None, None) => Ok(()),
        (Some(_), None) | (None, Some(_)) => Err(mismatch()),
        (Some(claim), Some(raw)) => {
            let hashed = hex::encode(Sha256::digest(raw.as_bytes()));
            if claim.eq_ignore_ascii_case(&hashed) {
                Ok(())
            } else {
                Err(mismatch())
            }
        }
    }
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

struct Snapshot {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched_at: Instant,
}

#[derive(Default)]
struct KeySet {
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// Held while fetching (single flight); holds the time of the last attempt, good or bad.
    fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl KeySet {
    fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn store(&self, s: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(s));
    }
}

fn key_sets() -> &'static DashMap<String, Arc<KeySet>> {
    static SETS: OnceLock<DashMap<String, Arc<KeySet>>> = OnceLock::new();
    SETS.get_or_init(DashMap::new)
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default()
    })
}

fn invalid_token() -> Error {
    Error::Unauthorized("invalid Apple identity token".into())
}

async fn fetch(url: &str) -> anyhow::Result<HashMap<String, Arc<DecodingKey>>> {
    let res = client().get(url).send().await?.error_for_status()?;
    if res
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        anyhow::bail!("key set larger than {MAX_JWKS_BYTES} bytes");
    }
    let body = res.bytes().await?;
    if body.len() > MAX_JWKS_BYTES {
        anyhow::bail!("key set larger than {MAX_JWKS_BYTES} bytes");
    }
    let jwks: Jwks = serde_json::from_slice(&body)?;
    let mut keys = HashMap::new();
    for k in jwks.keys {
        let usable = k.kty == "RSA"
            && k.alg.as_deref().is_none_or(|a| a == "RS256")
            && k.use_.as_deref().is_none_or(|u| u == "sig");
        let (Some(kid), Some(n), Some(e), true) = (k.kid, k.n, k.e, usable) else {
            continue;
        };
        match DecodingKey::from_rsa_components(&n, &e) {
            Ok(key) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(err) => tracing::warn!(kid, error = %err, "skipping an unusable Apple key"),
        }
    }
    Ok(keys)
}

/// The key named `kid` at `url`, fetching the set as described in the module docs.
async fn key_for(url: &str, kid: &str) -> Result<Arc<DecodingKey>> {
    let set = key_sets().entry(url.to_owned()).or_default().clone();
    let fresh = |s: &Snapshot| s.fetched_at.elapsed() < JWKS_TTL;
    if let Some(s) = set.current() {
        if fresh(&s) {
            if let Some(k) = s.keys.get(kid) {
                return Ok(k.clone());
            }
        }
    }
    let mut last_attempt = set.fetch.lock().await;
    // Someone may have fetched while we waited.
    let snap = set.current();
    if let Some(s) = &snap {
        if let Some(k) = s.keys.get(kid).filter(|_| fresh(s)) {
            return Ok(k.clone());
        }
    }
    let may_fetch = last_attempt.is_none_or(|t| t.elapsed() >= REFETCH_MIN_INTERVAL);
    if may_fetch {
        *last_attempt = Some(Instant::now());
        match fetch(url).await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched Apple's signing keys");
                let found = keys.get(kid).cloned();
                set.store(Snapshot {
                    keys,
                    fetched_at: Instant::now(),
                });
                return found.ok_or_else(invalid_token);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch Apple's signing keys");
                // A stale snapshot is better than no login at all.
                if let Some(k) = snap.as_ref().and_then(|s| s.keys.get(kid)) {
                    return Ok(k.clone());
                }
                return Err(Error::AuthProvider(
                    "cannot reach Apple to verify the identity token; try again later".into(),
                ));
            }
        }
    }
    // Throttled: use what we have, stale or not.
    snap.and_then(|s| s.keys.get(kid).cloned())
        .ok_or_else(invalid_token)
}

/// Verifies an identity token for one of `client_ids` against the key set at `jwks_url`.
pub async fn verify(jwks_url: &str, client_ids: &[String], token: &str) -> Result<AppleClaims> {
    if client_ids.is_empty() {
        return Err(Error::Forbidden(
            "Sign in with Apple is not enabled on this server (APPLE_CLIENT_IDS is empty)".into(),
        ));
    }
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(invalid_token());
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid_token())?;
    if header.alg != Algorithm::RS256 {
        return Err(invalid_token());
    }
    let kid = header.kid.ok_or_else(invalid_token)?;
    if kid.is_empty() || kid.len() > 128 {
        return Err(invalid_token());
    }
    let key = key_for(jwks_url, &kid).await?;
    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&[APPLE_ISSUER]);
    v.set_audience(client_ids);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 60;
    let data = jsonwebtoken::decode::<AppleClaims>(token, &key, &v).map_err(|e| {
        tracing::debug!(error = %e, "Apple identity token refused");
        match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                Error::Unauthorized("Apple identity token expired".into())
            }
            _ => invalid_token(),
        }
    })?;
    let sub = data.claims.sub.trim();
    if sub.is_empty() || sub.len() > 255 {
        return Err(invalid_token());
    }
    Ok(data.claims)
}
