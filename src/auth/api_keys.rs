//! API keys as credentials: the cached look-up of a key's owner (shared by every node through
//! the cache, invalidated by a tombstone on every change) and its last use.

use std::time::Duration;

use crate::auth::{self, AuthUser, Role};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::{self, api_keys};

/// How long a positive API-key look-up is cached.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// `last_used_at` of a key is written at most this often.
const KEY_TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The cache entry of a key, by the key's hash (positive look-ups only).
pub fn cache_key(key_hash: &str) -> String {
    format!("apikey:{key_hash}")
}

/// What a key's cache entry holds after a change: not a positive look-up, so the next request
/// asks the database; and it outlives any positive entry a concurrent look-up may try to write
/// (those are written with `set_nx` and fail while this is present).
pub const TOMBSTONE: &str = "stale";
/// How long a tombstone stays (longer than a positive entry lives).
pub const TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// Invalidates a key's cached look-up on every node.
pub async fn invalidate(state: &AppState, key_hash: &str) -> Result<()> {
    state
        .cache
        .set(&cache_key(key_hash), TOMBSTONE, Some(TOMBSTONE_TTL))
        .await?;
    Ok(())
}

/// Forgets the cached look-ups of every live key of a user, so that a change to the user
/// (disabled, role) applies to their keys on the next request.
pub async fn forget_user_keys(state: &AppState, user_id: i64) -> Result<()> {
    for h in api_keys::live_hashes(&state.db, user_id).await? {
        invalidate(state, &h).await?;
    }
    Ok(())
}

/// A positive look-up as cached: `key_id:user_id:role`.
fn parse_cached(v: &str) -> Option<(i64, i64, Role)> {
    let mut it = v.splitn(3, ':');
    let key_id = it.next()?.parse().ok()?;
    let user_id = it.next()?.parse().ok()?;
    let role = Role::parse(it.next()?)?;
    Some((key_id, user_id, role))
}

/// The owner of an API key (`qt-…`), from the cache when it has a positive look-up, else
/// from the database; a key's last use is recorded at most every [`KEY_TOUCH_EVERY`].
pub async fn user_of_key(state: &AppState, key: &str) -> Result<AuthUser> {
    let invalid = || Error::Unauthorized("invalid API key".into());
    if key.len() > 128 {
        return Err(invalid());
    }
    let hash = auth::token_hash(key);
    let ck = cache_key(&hash);
    let cached = state.cache.get(&ck).await?.and_then(|v| parse_cached(&v));
    let (key_id, user_id, role) = match cached {
        Some(c) => c,
        None => {
            let owner = storage::api_keys::lookup(&state.db, &hash)
                .await?
                .ok_or_else(invalid)?;
            let role = Role::parse(&owner.role).ok_or_else(invalid)?;
            // `set_nx`: never overwrites the tombstone a concurrent revocation left.
            state
                .cache
                .set_nx(
                    &ck,
                    &format!("{}:{}:{}", owner.key_id, owner.user_id, role.as_str()),
                    KEY_CACHE_TTL,
                )
                .await?;
            (owner.key_id, owner.user_id, role)
        }
    };
    if state
        .cache
        .set_nx(&format!("apikey-used:{key_id}"), "1", KEY_TOUCH_EVERY)
        .await?
    {
        let db = state.db.clone();
        state.tracker.spawn(async move {
            if let Err(e) = storage::api_keys::touch(&db, key_id).await {
                tracing::warn!(error = ?e, "could not record an API key's last use");
            }
        });
    }
    Ok(AuthUser {
        user_id,
        session_id: 0,
        role,
        api_key_id: Some(key_id),
    })
}
