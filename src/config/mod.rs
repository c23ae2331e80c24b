//! Configuration (SPEC §3): environment variables, a `.env` file and an optional `questech.toml`.
//!
//! Loading is a pure function of a key/value map so tests build configs without touching the
//! process environment. A bad value stops start-up with one line naming the variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod secrets;
#[cfg(test)]
mod tests;
mod uploads;
mod vars;

pub use uploads::{S3Store, UploadStore};
use vars::{check_url, Vars};

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {why}")]
pub struct ConfigError {
    pub var: String,
    pub why: String,
}

fn err(var: &str, why: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_owned(),
        why: why.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmsProvider {
    /// Writes the code to the log (development only).
    Log,
    Aliyun(AliyunSms),
}

#[derive(Clone, PartialEq, Eq)]
pub struct AliyunSms {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub sign_name: String,
    pub template_code: String,
    pub endpoint: String,
}

impl std::fmt::Debug for AliyunSms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AliyunSms")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field("sign_name", &self.sign_name)
            .field("template_code", &self.template_code)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub bind_addr: SocketAddr,
    pub database_url: String,
    pub database_read_url: Option<String>,
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel (lets tests and tenants share one Redis).
    pub redis_prefix: String,
    pub jwt_secret: Secret,
    pub jwt_access_ttl: Duration,
    pub jwt_refresh_ttl: Duration,
    pub service_debug: bool,
    pub openai_api_key: Option<Secret>,
    pub openai_base_url: String,
    pub deepseek_api_key: Option<Secret>,
    pub deepseek_base_url: String,
    pub default_model: Option<String>,
    pub llm_max_concurrency: usize,
    pub llm_queue_capacity: usize,
    pub llm_first_token_timeout: Duration,
    pub llm_total_timeout: Duration,
    pub llm_max_retries: u32,
    pub llm_retryable_statuses: Vec<u16>,
    pub user_rpm: u32,
    pub user_max_inflight: u32,
    pub login_max_failures_per_account: u32,
    pub login_max_failures_per_ip: u32,
    pub login_failure_window: Duration,
    pub trust_proxy_headers: bool,
    pub llm_breaker_failures: u32,
    pub llm_breaker_cooldown: Duration,
    pub shutdown_grace: Duration,
    pub actor_idle: Duration,
    /// How long what a node holds (turn locks, reservations, in-flight slots) outlives its last
    /// renewal; renewed every quarter of it. Survivors take over a stopped node's after it.
    pub node_lease: Duration,
    pub encryption_key: [u8; 32],
    pub cors_origins: Vec<String>,
    pub signup_bonus_credits: i64,
    pub apple_client_ids: Vec<String>,
    pub apple_jwks_url: String,
    pub sms_provider: SmsProvider,
    pub upload_dir: PathBuf,
    /// Where uploads are kept (`UPLOAD_STORE`: `UPLOAD_DIR` or an S3 bucket).
    pub upload_store: UploadStore,
    pub max_upload_bytes: u64,
    pub metrics_token: Option<Secret>,
    pub node_id: String,
    /// Delay between the `echo` model's words (`ECHO_DELAY_MS`, default 20).
    pub echo_delay_ms: u64,
    /// Base of the LLM retry backoff (`LLM_BACKOFF_BASE_MS`, default 200).
    pub llm_backoff_base_ms: u64,
    /// bcrypt cost (`BCRYPT_COST`, default 12; tests use 4).
    pub bcrypt_cost: u32,
    /// Where generated dev secrets and the SQLite file live (`DATA_DIR`, default `data`).
    pub data_dir: PathBuf,
}

/// Reads typed values out of the merged key/value map, naming the variable on any error.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

impl Config {
    /// Loads from `questech.toml` (lowest), `.env`, then the process environment (highest).
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut map = HashMap::new();
        if let Ok(text) = std::fs::read_to_string("questech.toml") {
            let table: toml::Table = text
                .parse()
                .map_err(|e| err("questech.toml", format!("cannot parse: {e}")))?;
            for (k, v) in table {
                let s = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    _ => {
                        return Err(err(
                            &k,
                            "questech.toml values must be strings, numbers or booleans",
                        ))
                    }
                };
                map.insert(k.to_ascii_uppercase(), s);
            }
        }
        if let Ok(iter) = dotenvy::from_filename_iter(".env") {
            for item in iter {
                let (k, v) = item.map_err(|e| err(".env", format!("cannot parse: {e}")))?;
                map.insert(k, v);
            }
        }
        map.extend(std::env::vars());
        Self::from_map(&map)
    }

    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let v = Vars(map);
        let (bind_addr, database_url, database_read_url, redis_url) = addresses(&v)?;
        let sqlite = is_sqlite(&database_url);
        let service_debug = v.bool("SERVICE_DEBUG", sqlite)?;
        let data_dir = PathBuf::from(v.string("DATA_DIR", "data"));
        let production = !service_debug && !sqlite;

        let (jwt_secret, encryption_key) = secrets::keys(&v, &data_dir, production)?;

        let sms_provider = sms_provider(&v)?;

        let llm_retryable_statuses = retryable_statuses(&v)?;

        let bcrypt_cost = v.num("BCRYPT_COST", 12u32)?;
        if !(4..=31).contains(&bcrypt_cost) {
            return Err(err("BCRYPT_COST", "must be between 4 and 31"));
        }
        let node_id = v.opt("NODE_ID").unwrap_or_else(secrets::default_node_id);
        let cfg = Config {
            bind_addr,
            database_url,
            database_read_url,
            redis_url,
            redis_prefix: v.string("REDIS_PREFIX", "qt:"),
            jwt_secret: Secret(jwt_secret),
            jwt_access_ttl: v.secs("JWT_ACCESS_TTL_SECS", 900)?,
            jwt_refresh_ttl: v.secs("JWT_REFRESH_TTL_SECS", 2_592_000)?,
            service_debug,
            openai_api_key: v.opt("OPENAI_API_KEY").map(Secret),
            openai_base_url: v.url("OPENAI_BASE_URL", "https://api.openai.com/v1")?,
            deepseek_api_key: v.opt("DEEPSEEK_API_KEY").map(Secret),
            deepseek_base_url: v.url("DEEPSEEK_BASE_URL", "https://api.deepseek.com/v1")?,
            default_model: v.opt("DEFAULT_MODEL"),
            llm_max_concurrency: v.num("LLM_MAX_CONCURRENCY", 256usize)?,
            llm_queue_capacity: v.num("LLM_QUEUE_CAPACITY", 1024usize)?,
            llm_first_token_timeout: v.secs("LLM_FIRST_TOKEN_TIMEOUT_SECS", 30)?,
            llm_total_timeout: v.secs("LLM_TOTAL_TIMEOUT_SECS", 300)?,
            llm_max_retries: v.num("LLM_MAX_RETRIES", 2u32)?,
            llm_retryable_statuses,
            user_rpm: v.num("USER_RPM", 60u32)?,
            user_max_inflight: v.num("USER_MAX_INFLIGHT", 4u32)?,
            login_max_failures_per_account: v.num("LOGIN_MAX_FAILURES_PER_ACCOUNT", 5u32)?,
            login_max_failures_per_ip: v.num("LOGIN_MAX_FAILURES_PER_IP", 20u32)?,
            login_failure_window: v.secs("LOGIN_FAILURE_WINDOW_SECS", 900)?,
            trust_proxy_headers: v.bool("TRUST_PROXY_HEADERS", false)?,
            llm_breaker_failures: v.num("LLM_BREAKER_FAILURES", 5u32)?,
            llm_breaker_cooldown: v.secs("LLM_BREAKER_COOLDOWN_SECS", 30)?,
            shutdown_grace: v.secs("SHUTDOWN_GRACE_SECS", 30)?,
            actor_idle: v.secs("ACTOR_IDLE_SECS", 300)?,
            node_lease: v.secs("NODE_LEASE_SECS", 10)?.max(Duration::from_secs(1)),
            encryption_key,
            cors_origins: v.list("CORS_ORIGINS"),
            signup_bonus_credits: v.num("SIGNUP_BONUS_CREDITS", 100i64)?,
            apple_client_ids: v.list("APPLE_CLIENT_IDS"),
            apple_jwks_url: v.url("APPLE_JWKS_URL", "https://appleid.apple.com/auth/keys")?,
            sms_provider,
            upload_dir: PathBuf::from(v.string("UPLOAD_DIR", "data/uploads")),
            upload_store: uploads::upload_store(&v)?,
            max_upload_bytes: v.num("MAX_UPLOAD_BYTES", 10_485_760u64)?,
            metrics_token: v.opt("METRICS_TOKEN").map(Secret),
            node_id,
            bcrypt_cost,
            data_dir,
            echo_delay_ms: v.num("ECHO_DELAY_MS", 20u64)?,
            llm_backoff_base_ms: v.num("LLM_BACKOFF_BASE_MS", 200u64)?,
        };
        if cfg.signup_bonus_credits < 0 {
            return Err(err("SIGNUP_BONUS_CREDITS", "must not be negative"));
        }
        if cfg.llm_max_concurrency == 0 {
            return Err(err("LLM_MAX_CONCURRENCY", "must be at least 1"));
        }
        Ok(cfg)
    }

    pub fn is_sqlite(&self) -> bool {
        is_sqlite(&self.database_url)
    }
}

/// Where the node listens and what it connects to.
#[allow(clippy::type_complexity)]
fn addresses(
    v: &Vars,
) -> Result<(SocketAddr, String, Option<String>, Option<String>), ConfigError> {
    let bind_addr = v
        .string("BIND_ADDR", "127.0.0.1:10089")
        .parse()
        .map_err(|_| err("BIND_ADDR", "expected host:port, e.g. 127.0.0.1:10089"))?;
    let database_url = v.string("DATABASE_URL", "sqlite://data/questech.db");
    check_url(
        "DATABASE_URL",
        &database_url,
        &["sqlite", "mysql", "mariadb"],
    )?;
    let database_read_url = v.opt("DATABASE_READ_URL");
    if let Some(u) = &database_read_url {
        check_url("DATABASE_READ_URL", u, &["sqlite", "mysql", "mariadb"])?;
    }
    let redis_url = v.opt("REDIS_URL");
    if let Some(u) = &redis_url {
        check_url("REDIS_URL", u, &["redis", "rediss", "redis+unix", "unix"])?;
    }
    Ok((bind_addr, database_url, database_read_url, redis_url))
}

fn sms_provider(v: &Vars) -> Result<SmsProvider, ConfigError> {
    let provider = match v.string("SMS_PROVIDER", "log").as_str() {
        "log" => SmsProvider::Log,
        "aliyun" => {
            let need = |k: &str| {
                v.opt(k)
                    .ok_or_else(|| err(k, "required when SMS_PROVIDER=aliyun"))
            };
            SmsProvider::Aliyun(AliyunSms {
                access_key_id: need("ALIYUN_ACCESS_KEY_ID")?,
                access_key_secret: need("ALIYUN_ACCESS_KEY_SECRET")?,
                sign_name: need("ALIYUN_SMS_SIGN_NAME")?,
                template_code: need("ALIYUN_SMS_TEMPLATE_CODE")?,
                endpoint: v.url("ALIYUN_SMS_ENDPOINT", "https://dysmsapi.aliyuncs.com")?,
            })
        }
        other => {
            return Err(err(
                "SMS_PROVIDER",
                format!("expected log or aliyun, got {other:?}"),
            ))
        }
    };
    Ok(provider)
}

fn retryable_statuses(v: &Vars) -> Result<Vec<u16>, ConfigError> {
    let retryable = v.string("LLM_RETRYABLE_STATUSES", "429,500,502,503,504");
    retryable
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u16>().ok().filter(|n| (100..600).contains(n)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            err(
                "LLM_RETRYABLE_STATUSES",
                "expected comma-separated HTTP statuses",
            )
        })
}
