//! SMS login (SPEC §5): `POST /user/sms/send`, `POST /user/login/sms`, phone encryption at rest,
//! and the Alibaba Cloud provider against a local fake that checks the request signature.
//!
//! With `SMS_PROVIDER=log` and `SERVICE_DEBUG=true` the server keeps the last code of a phone in
//! the cache under `sms:debug:<phone_hash>` (a documented dev aid); tests read it from there.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::Mac as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

/// A random mainland mobile number (national form) no other test uses.
fn mainland() -> String {
    format!("139{:08}", rand::random::<u32>() % 100_000_000)
}

fn phash(app: &TestApp, e164: &str) -> String {
    questech::auth::crypto::phone_hash(&app.state.config.encryption_key, e164)
}

async fn debug_code(app: &TestApp, e164: &str) -> String {
    let key = format!("sms:debug:{}", phash(app, e164));
    assert_eq!(key, questech::http::sms::debug_code_key(&phash(app, e164)));
    app.state
        .cache
        .get(&key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no debug code for {e164}"))
}

/// Lets the 60 s resend lock of `e164` lapse (instead of waiting a minute).
async fn lift_resend_lock(app: &TestApp, e164: &str) {
    let key = format!("sms:lock:{}", phash(app, e164));
    assert!(
        app.state.cache.get(&key).await.unwrap().is_some(),
        "the resend lock is set"
    );
    app.state.cache.del(&key).await.unwrap();
}

async fn send(app: &TestApp, phone: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    app.post("/user/sms/send", None, Some(json!({ "phone": phone })))
        .await
}

async fn send_ok(app: &TestApp, phone: &str) {
    let (s, _, b) = send(app, phone).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b, json!({"sent": true}));
}

async fn login(
    app: &TestApp,
    phone: &str,
    code: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    app.post(
        "/user/login/sms",
        None,
        Some(json!({ "phone": phone, "code": code })),
    )
    .await
}

fn other_code(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

fn retry_after(h: &reqwest::header::HeaderMap) -> u64 {
    h.get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in {h:?}"))
}

both!(send_then_resend_is_rate_limited, |app| async move {
    let phone = mainland();
    send_ok(&app, &phone).await;
    let code = debug_code(&app, &format!("+86{phone}")).await;
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );
    // The same number again, in either form, within 60 s.
    for again in [phone.clone(), format!("+86{phone}")] {
        let (s, h, b) = send(&app, &again).await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let secs = retry_after(&h);
        assert!((1..=60).contains(&secs), "Retry-After {secs}");
    }
    // The code was not replaced by the refused resend.
    assert_eq!(debug_code(&app, &format!("+86{phone}")).await, code);
    // The code is kept hashed, for 5 minutes at most.
    let stored = app
        .state
        .cache
        .get(&format!("sms:code:{}", phash(&app, &format!("+86{phone}"))))
        .await
        .unwrap()
        .expect("code entry");
    assert!(!stored.contains(&code), "code stored hashed: {stored}");
    let ttl = app
        .state
        .cache
        .ttl(&format!("sms:code:{}", phash(&app, &format!("+86{phone}"))))
        .await
        .unwrap()
        .expect("code entry expires");
    assert!(
        ttl <= Duration::from_secs(300) && ttl > Duration::from_secs(280),
        "{ttl:?}"
    );
    // Another phone is not affected; E.164 numbers work too.
    send_ok(&app, "+447700900123").await;
});

both!(bad_phones_are_400, |app| async move {
    for bad in [
        json!({"phone": "12812345678"}),
        json!({"phone": "1381234567"}),
        json!({"phone": "+1234567"}),
        json!({"phone": "+1234567890123456"}),
        json!({"phone": "0044 7700 900123"}),
        json!({"phone": "+44abc"}),
        json!({"phone": ""}),
        json!({"phone": "x".repeat(5000)}),
    ] {
        let (s, _, b) = app.post("/user/sms/send", None, Some(bad.clone())).await;
        assert_invalid(s, &b, "phone");
        let (s, _, b) = app
            .post(
                "/user/login/sms",
                None,
                Some(json!({"phone": bad["phone"], "code": "123456"})),
            )
            .await;
        assert_invalid(s, &b, "phone");
    }
    let (s, _, b) = app.post("/user/sms/send", None, Some(json!({}))).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, _, b) = login(&app, &mainland(), "12345").await;
    assert_invalid(s, &b, "code");
    let (s, _, b) = login(&app, &mainland(), "abcdef").await;
    assert_invalid(s, &b, "code");
    // No code was ever sent to this phone.
    let (s, h, b) = login(&app, &mainland(), "123456").await;
    assert_unauthorized(s, &h, &b);
});

both!(daily_limit_is_ten_codes, |app| async move {
    let phone = mainland();
    let e164 = format!("+86{phone}");
    for i in 0..10 {
        send_ok(&app, &phone).await;
        if i < 9 {
            lift_resend_lock(&app, &e164).await;
        }
    }
    lift_resend_lock(&app, &e164).await;
    let (s, h, b) = send(&app, &phone).await;
    assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let secs = retry_after(&h);
    assert!(
        secs > 23 * 3600 && secs <= 24 * 3600,
        "Retry-After points at the end of the day window: {secs}"
    );
    // The refusal did not leave a resend lock behind.
    let lock = format!("sms:lock:{}", phash(&app, &e164));
    assert!(app.state.cache.get(&lock).await.unwrap().is_none());
    // The last code still works.
    let code = debug_code(&app, &e164).await;
    let (s, _, b) = login(&app, &phone, &code).await;
    assert_eq!(s, StatusCode::OK, "{b}");
});

both!(client_address_is_limited_per_hour, |app| async move {
    for _ in 0..30 {
        send_ok(&app, &mainland()).await;
    }
    let fresh = mainland();
    let (s, h, b) = send(&app, &fresh).await;
    assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(retry_after(&h) > 60, "{h:?}");
    // Nothing was locked or sent for the refused phone.
    let lock = format!("sms:lock:{}", phash(&app, &format!("+86{fresh}")));
    assert!(app.state.cache.get(&lock).await.unwrap().is_none());
});

both!(login_creates_the_account_then_finds_it, |app| async move {
    let phone = mainland();
    let e164 = format!("+86{phone}");
    let masked = format!("{}****{}", &phone[..3], &phone[7..]);
    send_ok(&app, &phone).await;
    let code = debug_code(&app, &e164).await;
    let (s, _, b) = login(&app, &phone, &code).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["created"], true, "{b}");
    let user = &b["user"];
    assert_eq!(user["phone_masked"], masked, "{b}");
    assert_eq!(user["nickname"], masked, "{b}");
    assert_eq!(user["credits"], 100, "signup bonus: {b}");
    assert_eq!(user["role"], "user");
    let username = user["username"].as_str().unwrap();
    assert!(
        username.starts_with('u')
            && (3..=20).contains(&username.len())
            && username.bytes().all(|c| c.is_ascii_alphanumeric()),
        "{username}"
    );
    let text = b.to_string();
    assert!(
        !text.contains(&phone[3..]),
        "no clear phone in the response: {text}"
    );
    let access = b["tokens"]["access_token"].as_str().unwrap().to_owned();
    let uid = user["id"].as_str().unwrap().to_owned();

    // The token works and the profile shows the masked phone only.
    let (s, _, me) = app.get("/user/me", Some(&access)).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["id"], uid.as_str());
    assert_eq!(me["phone_masked"], masked);
    assert!(!me.to_string().contains(&phone[3..]), "{me}");

    // At rest: encrypted and hashed, never clear.
    let (enc, hash): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT phone_enc, phone_hash FROM users WHERE id = ?")
            .bind(uid.parse::<i64>().unwrap())
            .fetch_one(&app.state.db.write)
            .await
            .unwrap();
    let enc = enc.expect("phone_enc set");
    assert!(!enc.contains(&phone[3..]), "{enc}");
    assert_ne!(enc, e164);
    assert_eq!(
        questech::auth::crypto::decrypt(&app.state.config.encryption_key, &enc).as_deref(),
        Some(e164.as_str())
    );
    assert!(
        questech::auth::crypto::decrypt(&[9u8; 32], &enc).is_none(),
        "another key cannot read it"
    );
    assert_eq!(hash.as_deref(), Some(phash(&app, &e164).as_str()));

    // A used code cannot be used again.
    let (s, h, b) = login(&app, &phone, &code).await;
    assert_unauthorized(s, &h, &b);

    // Second login (E.164 form this time): same account, not created, no second bonus.
    lift_resend_lock(&app, &e164).await;
    send_ok(&app, &e164).await;
    let code2 = debug_code(&app, &e164).await;
    let (s, _, b) = login(&app, &e164, &code2).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["created"], false, "{b}");
    assert_eq!(b["user"]["id"], uid.as_str());
    assert_eq!(b["user"]["credits"], 100);
    let bonuses: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM credit_ledger WHERE user_id = ? AND reason = 'signup_bonus'",
    )
    .bind(uid.parse::<i64>().unwrap())
    .fetch_one(&app.state.db.write)
    .await
    .unwrap();
    assert_eq!(bonuses, 1);
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE phone_hash = ?")
        .bind(phash(&app, &e164))
        .fetch_one(&app.state.db.write)
        .await
        .unwrap();
    assert_eq!(users, 1);
    // Each login is its own session.
    assert_ne!(b["tokens"]["access_token"], access.as_str());
});

both!(international_phone_is_masked, |app| async move {
    let phone = format!("+4477009{:05}", rand::random::<u32>() % 100_000);
    send_ok(&app, &phone).await;
    let code = debug_code(&app, &phone).await;
    let (s, _, b) = login(&app, &phone, &code).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["user"]["phone_masked"],
        format!("+44******{}", &phone[phone.len() - 4..])
    );
    assert!(!b.to_string().contains(&phone[3..]), "{b}");
});

both!(five_wrong_codes_kill_the_code, |app| async move {
    let phone = mainland();
    let e164 = format!("+86{phone}");
    send_ok(&app, &phone).await;
    let code = debug_code(&app, &e164).await;
    for _ in 0..5 {
        let (s, h, b) = login(&app, &phone, &other_code(&code)).await;
        assert_unauthorized(s, &h, &b);
    }
    let (s, h, b) = login(&app, &phone, &code).await;
    assert_unauthorized(s, &h, &b);
    // A new code (after the resend lock) starts with fresh tries.
    lift_resend_lock(&app, &e164).await;
    send_ok(&app, &phone).await;
    let code = debug_code(&app, &e164).await;
    // Four wrong tries and one malformed (400, not counted) still leave the right code usable.
    for _ in 0..4 {
        let (s, h, b) = login(&app, &phone, &other_code(&code)).await;
        assert_unauthorized(s, &h, &b);
    }
    let (s, _, b) = login(&app, &phone, "12-456").await;
    assert_invalid(s, &b, "code");
    let (s, _, b) = login(&app, &phone, &code).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["created"], true);
});

both!(a_code_is_for_its_phone_only, |app| async move {
    let (a, b_phone) = (mainland(), mainland());
    send_ok(&app, &a).await;
    let code = debug_code(&app, &format!("+86{a}")).await;
    // No code was sent to b; a's code does not open b.
    let (s, h, b) = login(&app, &b_phone, &code).await;
    assert_unauthorized(s, &h, &b);
    // An expired (here: removed) code is refused even when right.
    app.state
        .cache
        .del(&format!("sms:code:{}", phash(&app, &format!("+86{a}"))))
        .await
        .unwrap();
    let (s, h, b) = login(&app, &a, &code).await;
    assert_unauthorized(s, &h, &b);
});

both!(disabled_account_is_403, |app| async move {
    let phone = mainland();
    let e164 = format!("+86{phone}");
    send_ok(&app, &phone).await;
    let code = debug_code(&app, &e164).await;
    let (s, _, b) = login(&app, &phone, &code).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = b["user"]["id"].as_str().unwrap().to_owned();
    app.sql("UPDATE users SET disabled = 1 WHERE id = ?", &[&id])
        .await;
    lift_resend_lock(&app, &e164).await;
    send_ok(&app, &phone).await;
    let code = debug_code(&app, &e164).await;
    let (s, _, b) = login(&app, &phone, &code).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
});

both!(
    concurrent_logins_with_one_code_make_one_session,
    |app| async move {
        let phone = mainland();
        send_ok(&app, &phone).await;
        let code = debug_code(&app, &format!("+86{phone}")).await;
        let app = Arc::new(app);
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (app, phone, code) = (app.clone(), phone.clone(), code.clone());
            tasks.push(tokio::spawn(
                async move { login(&app, &phone, &code).await.0 },
            ));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                StatusCode::OK => ok += 1,
                StatusCode::UNAUTHORIZED => {}
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(ok, 1, "exactly one login per code");
    }
);

// ---- Alibaba Cloud --------------------------------------------------------------------------

const ALI_ID: &str = "LTAI-test-id";
const ALI_SECRET: &str = "test-secret/with+odd~chars";
const ALI_SIGN: &str = "奇境 探索~QT*";
const ALI_TEMPLATE: &str = "SMS_123456789";

/// RFC 3986 as Alibaba Cloud wants it, written independently of the server's.
fn pct(s: &str) -> String {
    const KEEP: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~";
    s.bytes()
        .map(|b| {
            if KEEP.contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Default)]
struct FakeAliyun {
    /// `Code` of the next answers.
    answer: Mutex<String>,
    /// Params of every correctly signed request.
    calls: Mutex<Vec<BTreeMap<String, String>>>,
    /// Why requests were refused.
    refused: Mutex<Vec<String>>,
    nonces: Mutex<HashSet<String>>,
}

impl FakeAliyun {
    fn check(&self, raw_query: &str) -> Result<BTreeMap<String, String>, String> {
        let mut params = BTreeMap::new();
        let mut signature = None;
        for (k, v) in url::form_urlencoded::parse(raw_query.as_bytes()) {
            if k == "Signature" {
                signature = Some(v.into_owned());
            } else if params.insert(k.into_owned(), v.into_owned()).is_some() {
                return Err("duplicate parameter".into());
            }
        }
        // No `+` may stand for a space: RFC 3986 encoding only.
        if raw_query.contains('+') {
            return Err(format!("`+` in the query: {raw_query}"));
        }
        let signature = signature.ok_or("no Signature")?;
        let canonical: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
            .collect();
        let to_sign = format!("GET&%2F&{}", pct(&canonical.join("&")));
        let mut mac =
            hmac::Hmac::<sha1::Sha1>::new_from_slice(format!("{ALI_SECRET}&").as_bytes()).unwrap();
        mac.update(to_sign.as_bytes());
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        if signature != expected {
            return Err(format!("signature {signature} != {expected}"));
        }
        let want = [
            ("AccessKeyId", ALI_ID),
            ("Action", "SendSms"),
            ("Format", "JSON"),
            ("RegionId", "cn-hangzhou"),
            ("SignName", ALI_SIGN),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("TemplateCode", ALI_TEMPLATE),
            ("Version", "2017-05-25"),
        ];
        for (k, v) in want {
            if params.get(k).map(String::as_str) != Some(v) {
                return Err(format!("{k} = {:?}, want {v:?}", params.get(k)));
            }
        }
        let ts = params.get("Timestamp").ok_or("no Timestamp")?;
        let t = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%SZ")
            .map_err(|e| format!("Timestamp {ts}: {e}"))?;
        let skew = (chrono::Utc::now().naive_utc() - t).num_seconds().abs();
        if skew > 300 {
            return Err(format!("Timestamp {ts} is {skew} s off"));
        }
        let nonce = params.get("SignatureNonce").ok_or("no SignatureNonce")?;
        if nonce.is_empty() || !self.nonces.lock().unwrap().insert(nonce.clone()) {
            return Err(format!("SignatureNonce {nonce:?} reused or empty"));
        }
        let tp: Value =
            serde_json::from_str(params.get("TemplateParam").ok_or("no TemplateParam")?)
                .map_err(|e| format!("TemplateParam: {e}"))?;
        let code = tp["code"].as_str().ok_or("TemplateParam.code")?;
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("code {code:?}"));
        }
        Ok(params)
    }
}

async fn start_fake_aliyun(fake: Arc<FakeAliyun>) -> String {
    use axum::extract::{RawQuery, State};
    async fn handler(
        State(fake): State<Arc<FakeAliyun>>,
        RawQuery(q): RawQuery,
    ) -> (axum::http::StatusCode, axum::Json<Value>) {
        match fake.check(&q.unwrap_or_default()) {
            Ok(params) => {
                fake.calls.lock().unwrap().push(params);
                let code = fake.answer.lock().unwrap().clone();
                (
                    axum::http::StatusCode::OK,
                    axum::Json(
                        json!({"Code": code, "Message": "fake", "RequestId": "r-1", "BizId": "b-1"}),
                    ),
                )
            }
            Err(why) => {
                fake.refused.lock().unwrap().push(why);
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    axum::Json(json!({"Code": "SignatureDoesNotMatch", "Message": "fake refused"})),
                )
            }
        }
    }
    let app = axum::Router::new()
        .route("/", axum::routing::get(handler))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

async fn aliyun_case(backend: Backend) {
    let fake = Arc::new(FakeAliyun::default());
    *fake.answer.lock().unwrap() = "OK".into();
    let endpoint = start_fake_aliyun(fake.clone()).await;
    let Some(app) = spawn_app(
        backend,
        &[
            ("SMS_PROVIDER", "aliyun"),
            ("ALIYUN_ACCESS_KEY_ID", ALI_ID),
            ("ALIYUN_ACCESS_KEY_SECRET", ALI_SECRET),
            ("ALIYUN_SMS_SIGN_NAME", ALI_SIGN),
            ("ALIYUN_SMS_TEMPLATE_CODE", ALI_TEMPLATE),
            ("ALIYUN_SMS_ENDPOINT", &endpoint),
        ],
    )
    .await
    else {
        return;
    };
    let phone = mainland();
    let e164 = format!("+86{phone}");
    send_ok(&app, &phone).await;
    assert!(
        fake.refused.lock().unwrap().is_empty(),
        "{:?}",
        fake.refused.lock().unwrap()
    );
    let params = fake
        .calls
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("one call");
    assert_eq!(
        params["PhoneNumbers"], phone,
        "mainland numbers go without +86"
    );
    let code = serde_json::from_str::<Value>(&params["TemplateParam"]).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    // The dev aid exists only for the log provider.
    let debug = format!("sms:debug:{}", phash(&app, &e164));
    assert!(app.state.cache.get(&debug).await.unwrap().is_none());
    // The code the provider delivered logs in.
    let (s, _, b) = login(&app, &phone, &code).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["created"], true);

    // International numbers go as country code + number.
    send_ok(&app, "+447700900123").await;
    assert_eq!(
        fake.calls.lock().unwrap().last().unwrap()["PhoneNumbers"],
        "447700900123"
    );

    // The provider refuses: 502 with a generic message, and no resend lock is left behind.
    *fake.answer.lock().unwrap() = "isv.BUSINESS_LIMIT_CONTROL".into();
    let other = mainland();
    let (s, _, b) = send(&app, &other).await;
    let msg = assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert!(!msg.contains("BUSINESS_LIMIT_CONTROL"), "{msg}");
    assert!(!msg.contains(&other[3..]), "{msg}");
    let lock = format!("sms:lock:{}", phash(&app, &format!("+86{other}")));
    assert!(app.state.cache.get(&lock).await.unwrap().is_none());
    let calls_before = fake.calls.lock().unwrap().len();
    let (s, _, b) = send(&app, &other).await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    assert_eq!(
        fake.calls.lock().unwrap().len(),
        calls_before + 1,
        "retried at once"
    );
    // Failed sends do not use up the day: back to OK, it goes through.
    *fake.answer.lock().unwrap() = "OK".into();
    send_ok(&app, &other).await;
    let day: i64 = app
        .state
        .cache
        .get(&format!("sms:day:{}", phash(&app, &format!("+86{other}"))))
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(day, 1);
    assert!(fake.refused.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliyun_signed_requests_sqlite() {
    aliyun_case(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliyun_signed_requests_mysql_redis() {
    aliyun_case(Backend::MySqlRedis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliyun_unreachable_is_502_and_unlocked() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let Some(app) = spawn_app(
        Backend::Sqlite,
        &[
            ("SMS_PROVIDER", "aliyun"),
            ("ALIYUN_ACCESS_KEY_ID", ALI_ID),
            ("ALIYUN_ACCESS_KEY_SECRET", ALI_SECRET),
            ("ALIYUN_SMS_SIGN_NAME", ALI_SIGN),
            ("ALIYUN_SMS_TEMPLATE_CODE", ALI_TEMPLATE),
            ("ALIYUN_SMS_ENDPOINT", &endpoint),
        ],
    )
    .await
    else {
        return;
    };
    let phone = mainland();
    for _ in 0..2 {
        let (s, _, b) = send(&app, &phone).await;
        assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
    }
}
