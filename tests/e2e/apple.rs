//! Sign in with Apple (SPEC §5 `POST /user/login/apple`): identity tokens signed in the test with
//! RSA keys generated here, verified by the server against a JWKS served by a local server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

use crate::common::*;

const AUD: &str = "com.questech.app";
const ISS: &str = "https://appleid.apple.com";

struct Key {
    kid: String,
    private: RsaPrivateKey,
}

impl Key {
    async fn generate(kid: &str) -> Key {
        let private = tokio::task::spawn_blocking(|| {
            RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap()
        })
        .await
        .unwrap();
        Key {
            kid: kid.to_owned(),
            private,
        }
    }

    fn jwk(&self) -> Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": b64.encode(self.private.n().to_bytes_be()),
            "e": b64.encode(self.private.e().to_bytes_be()),
        })
    }

    /// A token signed by this key under header `kid` (not necessarily its own).
    fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let der = self.private.to_pkcs1_der().unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(der.as_bytes())).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(&self.kid), claims)
    }
}

fn claims(sub: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": sub,
        "iat": now,
        "exp": now + 600,
        "email": "someone@privaterelay.appleid.com",
    })
}

fn new_sub() -> String {
    format!("001234.{:032x}.0042", rand::random::<u128>())
}

/// A JWKS endpoint whose key list the test can change, counting its fetches.
struct Jwks {
    keys: Mutex<Vec<Value>>,
    fetches: AtomicUsize,
}

async fn serve_jwks(keys: Vec<Value>) -> (Arc<Jwks>, String) {
    use axum::extract::State;
    let jwks = Arc::new(Jwks {
        keys: Mutex::new(keys),
        fetches: AtomicUsize::new(0),
    });
    async fn handler(State(j): State<Arc<Jwks>>) -> axum::Json<Value> {
        j.fetches.fetch_add(1, Ordering::SeqCst);
        axum::Json(json!({ "keys": *j.keys.lock().unwrap() }))
    }
    let app = axum::Router::new()
        .route("/auth/{tag}/keys", axum::routing::get(handler))
        .with_state(jwks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // A path of its own: the server caches key sets by URL for the whole process, and a port
    // may be handed out again to a later test.
    let tag = format!("{:016x}", rand::random::<u64>());
    (jwks, format!("http://{addr}/auth/{tag}/keys"))
}

async fn login(app: &TestApp, token: &str, nickname: Option<&str>) -> (StatusCode, Value) {
    let mut body = json!({ "identity_token": token });
    if let Some(n) = nickname {
        body["nickname"] = json!(n);
    }
    let (s, h, b) = app.post("/user/login/apple", None, Some(body)).await;
    if s == StatusCode::UNAUTHORIZED {
        assert_unauthorized(s, &h, &b);
    }
    (s, b)
}

async fn apple_app(backend: Backend, jwks_url: &str) -> Option<TestApp> {
    spawn_app(
        backend,
        &[
            ("APPLE_JWKS_URL", jwks_url),
            ("APPLE_CLIENT_IDS", &format!("com.questech.other, {AUD}")),
        ],
    )
    .await
}

async fn valid_then_linked(backend: Backend) {
    let key = Key::generate("k1").await;
    let (jwks, url) = serve_jwks(vec![key.jwk()]).await;
    let Some(app) = apple_app(backend, &url).await else {
        return;
    };
    let sub = new_sub();
    let (s, b) = login(&app, &key.sign(&claims(&sub)), Some("Ada")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["created"], true);
    assert_eq!(b["user"]["nickname"], "Ada");
    assert_eq!(b["user"]["credits"], 100, "signup bonus");
    assert!(b["user"]["phone_masked"].is_null());
    let id = b["user"]["id"].as_str().unwrap().to_owned();
    let access = b["tokens"]["access_token"].as_str().unwrap().to_owned();
    let (s, _, me) = app.get("/user/me", Some(&access)).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["id"], id.as_str());
    let stored: Option<String> = sqlx::query_scalar("SELECT apple_sub FROM users WHERE id = ?")
        .bind(id.parse::<i64>().unwrap())
        .fetch_one(&app.state.db.write)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(sub.as_str()));

    // Same Apple user again: same account, nickname untouched.
    let (s, b) = login(&app, &key.sign(&claims(&sub)), Some("Other")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["created"], false);
    assert_eq!(b["user"]["id"], id.as_str());
    assert_eq!(b["user"]["nickname"], "Ada");

    // Another Apple user, for the other configured client id, without a nickname.
    let mut c = claims(&new_sub());
    c["aud"] = json!("com.questech.other");
    let (s, b) = login(&app, &key.sign(&c), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["created"], true);
    assert_ne!(b["user"]["id"], id.as_str());
    assert!(!b["user"]["nickname"].as_str().unwrap().is_empty());

    // The key set was fetched once and is cached.
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

    // A disabled account cannot log in.
    app.sql("UPDATE users SET disabled = 1 WHERE id = ?", &[&id])
        .await;
    let (s, b) = login(&app, &key.sign(&claims(&sub)), None).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_creates_then_links_sqlite() {
    valid_then_linked(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_creates_then_links_mysql_redis() {
    valid_then_linked(Backend::MySqlRedis).await;
}

async fn bad_tokens(backend: Backend) {
    let key = Key::generate("k1").await;
    let forger = Key::generate("k1").await;
    let (jwks, url) = serve_jwks(vec![key.jwk()]).await;
    let Some(app) = apple_app(backend, &url).await else {
        return;
    };
    let sub = new_sub();
    let now = chrono::Utc::now().timestamp();

    let mut wrong_aud = claims(&sub);
    wrong_aud["aud"] = json!("com.evil.app");
    let mut wrong_iss = claims(&sub);
    wrong_iss["iss"] = json!("https://evil.example.com");
    let mut expired = claims(&sub);
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut no_sub = claims(&sub);
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut no_exp = claims(&sub);
    no_exp.as_object_mut().unwrap().remove("exp");

    let hs256 = jsonwebtoken::encode(
        &{
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("k1".into());
            h
        },
        &claims(&sub),
        &EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    let cases = [
        ("wrong audience", key.sign(&wrong_aud)),
        ("wrong issuer", key.sign(&wrong_iss)),
        ("expired", key.sign(&expired)),
        ("no sub", key.sign(&no_sub)),
        ("no exp", key.sign(&no_exp)),
        (
            "signed by another key with the same kid",
            forger.sign(&claims(&sub)),
        ),
        ("no kid", key.sign_as(None, &claims(&sub))),
        ("HS256", hs256),
        ("garbage", "not.a.jwt".to_owned()),
        ("empty", String::new()),
    ];
    for (what, token) in cases {
        let (s, b) = login(&app, &token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {b}");
    }
    // A token whose payload was altered after signing.
    let good = key.sign(&claims(&sub));
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims(&new_sub());
    c["aud"] = json!(AUD);
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let (s, b) = login(&app, &tampered, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "tampered: {b}");

    // No account was made by any of them; the right token still works.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE apple_sub IS NOT NULL")
        .fetch_one(&app.state.db.write)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let (s, b) = login(&app, &good, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Bad tokens naming a known kid never cause refetches.
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

    // Missing field, bad nickname: 400.
    let (s, _, b) = app.post("/user/login/apple", None, Some(json!({}))).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, _, b) = app
        .post(
            "/user/login/apple",
            None,
            Some(json!({"identity_token": good, "nickname": "x".repeat(65)})),
        )
        .await;
    assert_invalid(s, &b, "nickname");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_401_sqlite() {
    bad_tokens(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_401_mysql_redis() {
    bad_tokens(Backend::MySqlRedis).await;
}

/// Apple rotates keys: a token with an unknown `kid` makes the server fetch the key set again,
/// but at most once per 10 s.
async fn key_rotation(backend: Backend) {
    let k1 = Key::generate("k1").await;
    let k2 = Key::generate("k2").await;
    let (jwks, url) = serve_jwks(vec![k1.jwk()]).await;
    let Some(app) = apple_app(backend, &url).await else {
        return;
    };
    let sub = new_sub();
    let (s, b) = login(&app, &k1.sign(&claims(&sub)), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
    let first_fetch = std::time::Instant::now();

    // Apple rotates to k2. Right after the last fetch, an unknown kid is refused without
    // asking again (throttle).
    *jwks.keys.lock().unwrap() = vec![k2.jwk()];
    let (s, b) = login(&app, &k2.sign(&claims(&sub)), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "throttled");

    // Once the throttle has passed, the unknown kid triggers one refetch and works.
    let wait = Duration::from_millis(10_300).saturating_sub(first_fetch.elapsed());
    tokio::time::sleep(wait).await;
    let (s, b) = login(&app, &k2.sign(&claims(&sub)), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["created"], false, "same Apple user, same account");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);

    // A kid nobody publishes: 401, and no new fetch right after the last one.
    let (s, b) = login(&app, &k2.sign_as(Some("k-unknown"), &claims(&sub)), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    // k1 was rotated out.
    let (s, b) = login(&app, &k1.sign(&claims(&sub)), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetches_the_key_set_sqlite() {
    key_rotation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetches_the_key_set_mysql_redis() {
    key_rotation(Backend::MySqlRedis).await;
}

both!(disabled_without_client_ids, |app| async move {
    let key = Key::generate("k1").await;
    let (s, _, b) = app
        .post(
            "/user/login/apple",
            None,
            Some(json!({"identity_token": key.sign(&claims(&new_sub()))})),
        )
        .await;
    let msg = assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden");
    assert!(msg.contains("APPLE_CLIENT_IDS"), "{msg}");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_unreachable_is_502() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/auth/{:016x}/keys",
        l.local_addr().unwrap(),
        rand::random::<u64>()
    );
    drop(l);
    let Some(app) = apple_app(Backend::Sqlite, &url).await else {
        return;
    };
    let key = Key::generate("k1").await;
    let (s, b) = login(&app, &key.sign(&claims(&new_sub())), None).await;
    assert_error(s, &b, StatusCode::BAD_GATEWAY, "upstream_error");
}

async fn login_with_nonce(app: &TestApp, token: &str, nonce: Option<&str>) -> (StatusCode, Value) {
    let mut body = json!({ "identity_token": token });
    if let Some(n) = nonce {
        body["nonce"] = json!(n);
    }
    let (s, _, b) = app.post("/user/login/apple", None, Some(body)).await;
    (s, b)
}

fn with_nonce(sub: &str, raw: &str) -> Value {
    use sha2::Digest as _;
    let mut c = claims(sub);
    c["nonce"] = json!(hex::encode(sha2::Sha256::digest(raw.as_bytes())));
    c
}

async fn nonce_checked(backend: Backend) {
    let key = Key::generate("k1").await;
    let (_jwks, url) = serve_jwks(vec![key.jwk()]).await;
    let Some(app) = apple_app(backend, &url).await else {
        return;
    };
    let sub = new_sub();
    let raw = format!("raw-{:x}", rand::random::<u64>());
    let token = key.sign(&with_nonce(&sub, &raw));
    // The matching raw nonce logs in.
    let (s, b) = login_with_nonce(&app, &token, Some(&raw)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // The same token and nonce again: a replay, refused on every node.
    let (s, b) = login_with_nonce(&app, &token, Some(&raw)).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    // A token that carries a nonce: without it, with a wrong one, with the hash itself.
    let raw2 = format!("raw-{:x}", rand::random::<u64>());
    let claims2 = with_nonce(&sub, &raw2);
    let token2 = key.sign(&claims2);
    let hashed = claims2["nonce"].as_str().unwrap().to_owned();
    for nonce in [None, Some("wrong"), Some(hashed.as_str())] {
        let (s, b) = login_with_nonce(&app, &token2, nonce).await;
        assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Refusals did not use the nonce up.
    let (s, b) = login_with_nonce(&app, &token2, Some(&raw2)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // A token without a nonce: the documented behaviour without one, refused with one.
    let plain = key.sign(&claims(&sub));
    let (s, b) = login_with_nonce(&app, &plain, Some("unexpected")).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = login_with_nonce(&app, &plain, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // A malformed nonce is a bad request.
    let (s, b) = login_with_nonce(&app, &plain, Some("")).await;
    assert_invalid(s, &b, "nonce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_is_checked_sqlite() {
    nonce_checked(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonce_is_checked_mysql_redis() {
    nonce_checked(Backend::MySqlRedis).await;
}
