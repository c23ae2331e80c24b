//! SMS login (SPEC §5): `POST /user/sms/send` and `POST /user/login/sms`.
//!
//! Everything about a phone lives in the cache under its keyed hash (`phone_hash`, see
//! [`crate::auth::crypto`]), never the number itself:
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `sms:lock:<phone_hash>` | `1` | 60 s after a code was sent (resend lock) |
//! | `sms:day:<phone_hash>` | codes sent | 24 h window from the first (at most 10) |
//! | `sms:ip:<ip>` | codes sent for this client address | 1 h window (at most [`IP_MAX_PER_HOUR`]) |
//! | `sms:code:<phone_hash>` | `<code id>.<sha256(code ":" phone_hash)>` | 5 min |
//! | `sms:tries:<code id>` | verification attempts | 5 min (the code dies past 5) |
//! | `sms:used:<code id>` | `1` once the code logged someone in | 5 min (single use) |
//! | `sms:debug:<phone_hash>` | the last code in clear | 5 min; **dev aid only**, see below |
//!
//! Dev aid: with `SERVICE_DEBUG=true` *and* `SMS_PROVIDER=log` the last code of each phone is also
//! kept in clear under `sms:debug:<phone_hash>`, so tests and local tools can read it from the cache
//! instead of scraping logs. It is never written with any other provider or outside debug mode.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ClientIp, Json};
use crate::auth::account::{open_session, user_view, UserAndTokens};
use crate::auth::crypto::{self, mask_phone};
use crate::config::SmsProvider;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::storage::users;

pub const RESEND_AFTER: Duration = Duration::from_secs(60);
pub const DAY_MAX: i64 = 10;
pub const DAY: Duration = Duration::from_secs(24 * 3600);
pub const IP_MAX_PER_HOUR: i64 = 30;
pub const CODE_TTL: Duration = Duration::from_secs(300);
pub const MAX_TRIES: i64 = 5;

/// The cache key of the dev aid (see the module docs).
pub fn debug_code_key(phone_hash: &str) -> String {
    format!("sms:debug:{phone_hash}")
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(login_sms))
}

/// Seconds to announce in `Retry-After` for a key's remaining lifetime (rounded up, at least 1).
async fn retry_after(state: &AppState, key: &str, fallback: Duration) -> Result<Error> {
    let ttl = state.cache.ttl(key).await?.unwrap_or(fallback);
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Ok(Error::rate_limited(secs.max(1)))
}

fn code_digest(code: &str, phone_hash: &str) -> String {
    hex::encode(Sha256::digest(format!("{code}:{phone_hash}").as_bytes()))
}

/// Equality in time independent of where the inputs differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SmsSendBody {
    /// Mainland mobile (`13812345678`) or E.164 (`+447700900123`); spaces and dashes between
    /// the digits are ignored.
    #[schema(
        max_length = 32,
        pattern = r"^[ -]*(1[ -]*[3-9]([ -]*[0-9]){9}|\+[ -]*[1-9]([ -]*[0-9]){7,14})[ -]*$"
    )]
    phone: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Sent {
    sent: bool,
}

#[utoipa::path(post, path = "/sms/send", tag = "user", request_body = SmsSendBody, responses((status = 202, description = "a code is on its way", body = Sent), (status = 429, description = "too soon, or too many codes today", body = crate::error::ApiError), (status = "4XX", description = "error", body = crate::error::ApiError), (status = 502, description = "the SMS provider failed", body = crate::error::ApiError)))]
async fn send(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<SmsSendBody>,
) -> Result<(StatusCode, Json<Sent>)> {
    let phone = crypto::normalize_phone(&body.phone)?;
    let ph = crypto::phone_hash(&state.config.encryption_key, &phone);
    let lock = format!("sms:lock:{ph}");
    if !state.cache.set_nx(&lock, "1", RESEND_AFTER).await? {
        return Err(retry_after(&state, &lock, RESEND_AFTER).await?);
    }
    // From here on the lock is ours: any failure releases it, so the user may try again at once.
    match send_locked(&state, &ip, &phone, &ph).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(Sent { sent: true }))),
        Err(e) => {
            if let Err(ce) = state.cache.del(&lock).await {
                tracing::warn!(error = %ce, "cannot release the SMS resend lock");
            }
            Err(e)
        }
    }
}

async fn send_locked(state: &AppState, ip: &str, phone: &str, ph: &str) -> Result<()> {
    let day = format!("sms:day:{ph}");
    if state.cache.incr(&day, DAY).await? > DAY_MAX {
        tracing::info!(phone = %mask_phone(phone), "SMS refused: daily limit of this phone");
        return Err(retry_after(state, &day, DAY).await?);
    }
    let ip_key = format!("sms:ip:{ip}");
    if state.cache.incr(&ip_key, Duration::from_secs(3600)).await? > IP_MAX_PER_HOUR {
        state.cache.decr(&day).await?;
        tracing::warn!(ip, "SMS refused: hourly limit of this client address");
        return Err(retry_after(state, &ip_key, Duration::from_secs(3600)).await?);
    }
    let code = format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32));
    if let Err(e) = crate::auth::sms::send_code(&state.config.sms_provider, phone, &code).await {
        // A failed send does not count against the phone's day.
        state.cache.decr(&day).await?;
        return Err(e);
    }
    let id = format!("{:016x}", rand::random::<u64>());
    state
        .cache
        .set(
            &format!("sms:code:{ph}"),
            &format!("{id}.{}", code_digest(&code, ph)),
            Some(CODE_TTL),
        )
        .await?;
    if state.config.service_debug && state.config.sms_provider == SmsProvider::Log {
        state
            .cache
            .set(&debug_code_key(ph), &code, Some(CODE_TTL))
            .await?;
    }
    Ok(())
}

/// Checks `code` for the phone `ph`, counting the attempt. Succeeds once per code.
async fn consume_code(state: &AppState, ph: &str, code: &str) -> Result<()> {
    let wrong = || Error::Unauthorized("invalid or expired code".into());
    let Some(stored) = state.cache.get(&format!("sms:code:{ph}")).await? else {
        return Err(wrong());
    };
    let Some((id, digest)) = stored.split_once('.') else {
        return Err(wrong());
    };
    let tries = state
        .cache
        .incr(&format!("sms:tries:{id}"), CODE_TTL)
        .await?;
    if tries > MAX_TRIES {
        return Err(wrong());
    }
    if !same(digest, &code_digest(code, ph)) {
        return Err(wrong());
    }
    // Single use, even under concurrent logins with the same code.
    if !state
        .cache
        .set_nx(&format!("sms:used:{id}"), "1", CODE_TTL)
        .await?
    {
        return Err(wrong());
    }
    Ok(())
}

/// How an account created by SMS or Apple login is found again.
pub(super) enum Identity<'a> {
    Phone { enc: &'a str, hash: &'a str },
    Apple { sub: &'a str },
}

async fn find(state: &AppState, ident: &Identity<'_>) -> Result<Option<users::UserRow>> {
    match ident {
        Identity::Phone { hash, .. } => users::by_phone_hash(&state.db, hash).await,
        Identity::Apple { sub } => users::by_apple_sub(&state.db, sub).await,
    }
}

/// `u` and 11 random lower-case letters and digits.
fn random_username() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let mut s = String::from("u");
    for _ in 0..11 {
        s.push(char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]));
    }
    s
}

/// The account of `ident`, created (with a random username and the signup bonus) if there is
/// none yet. `true` when it was created by this call. Two racing first logins end with one
/// account: the loser's insert hits the unique key and finds the winner's.
pub(super) async fn find_or_create(
    state: &AppState,
    ident: Identity<'_>,
    nickname: &str,
) -> Result<(users::UserRow, bool)> {
    if let Some(u) = find(state, &ident).await? {
        return Ok((u, false));
    }
    let (phone_enc, phone_hash, apple_sub) = match &ident {
        Identity::Phone { enc, hash } => (Some(*enc), Some(*hash), None),
        Identity::Apple { sub } => (None, None, Some(*sub)),
    };
    for _ in 0..4 {
        let username = random_username();
        let created = users::create(
            &state.db,
            users::NewUser {
                id: crate::ids::next_id(),
                username: &username,
                password_hash: None,
                nickname,
                role: "user",
                phone_enc,
                phone_hash,
                apple_sub,
                signup_bonus: state.config.signup_bonus_credits,
            },
        )
        .await;
        match created {
            Ok(u) => return Ok((u, true)),
            Err(Error::Conflict(_)) => {
                if let Some(u) = find(state, &ident).await? {
                    return Ok((u, false));
                }
                // The random username was taken: draw another.
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::internal(anyhow::anyhow!(
        "could not find a free username for a new account"
    )))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SmsLoginBody {
    #[schema(
        max_length = 32,
        pattern = r"^[ -]*(1[ -]*[3-9]([ -]*[0-9]){9}|\+[ -]*[1-9]([ -]*[0-9]){7,14})[ -]*$"
    )]
    phone: String,
    /// The 6 digits received by SMS.
    #[schema(pattern = r"^[0-9]{6}$")]
    code: String,
}

#[utoipa::path(post, path = "/login/sms", tag = "user", request_body = SmsLoginBody, responses((status = 200, description = "logged in; `created` when this login made the account", body = UserAndTokens), (status = "4XX", description = "error", body = crate::error::ApiError)))]
async fn login_sms(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(body): Json<SmsLoginBody>,
) -> Result<Json<UserAndTokens>> {
    let phone = crypto::normalize_phone(&body.phone)?;
    let code = body.code.as_str();
    if !super::rules::matches(super::rules::pattern::SMS_CODE, code) {
        return Err(Error::invalid(
            "code",
            "must be the 6 digits received by SMS",
        ));
    }
    let key = &state.config.encryption_key;
    let ph = crypto::phone_hash(key, &phone);
    consume_code(&state, &ph, code).await?;
    let enc = crypto::encrypt(key, &phone)?;
    let (user, created) = find_or_create(
        &state,
        Identity::Phone {
            enc: &enc,
            hash: &ph,
        },
        &mask_phone(&phone),
    )
    .await?;
    if user.is_disabled() {
        return Err(Error::Forbidden("this account is disabled".into()));
    }
    if created {
        tracing::info!(user_id = user.id, phone = %mask_phone(&phone), "account created by SMS login");
    }
    let tokens = open_session(&state, &user, &headers, &ip).await?;
    Ok(Json(UserAndTokens {
        user: user_view(&state, &user),
        tokens,
        created: Some(created),
    }))
}
