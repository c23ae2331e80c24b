//! Users and their balance.

use serde::Serialize;
use sqlx::FromRow;

use super::{Db, Dialect, Page};
use crate::error::{Error, Result};
use crate::time::now_ms;

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    pub password_hash: Option<String>,
    pub nickname: String,
    pub avatar_url: String,
    pub phone_enc: Option<String>,
    pub role: String,
    pub disabled: i64,
    pub credits: i64,
    pub reserved: i64,
    pub created_at: i64,
}

const COLS: &str = "id, username, password_hash, nickname, avatar_url, phone_enc, role, disabled, credits, reserved, created_at";

/// The public user object of SPEC §5.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    #[serde(serialize_with = "crate::time::ser_id")]
    #[schema(value_type = String)]
    pub id: i64,
    pub username: String,
    pub nickname: String,
    pub avatar_url: String,
    pub phone_masked: Option<String>,
    pub role: String,
    pub credits: i64,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Admin views only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

impl UserRow {
    pub fn is_disabled(&self) -> bool {
        self.disabled != 0
    }

    /// `phone_masked` is computed by the caller that holds the encryption key.
    pub fn view(&self, phone_masked: Option<String>) -> UserView {
        UserView {
            id: self.id,
            username: self.username.clone(),
            nickname: self.nickname.clone(),
            avatar_url: self.avatar_url.clone(),
            phone_masked,
            role: self.role.clone(),
            credits: self.credits,
            created_at: self.created_at,
            disabled: None,
        }
    }
}

pub struct NewUser<'a> {
    pub id: i64,
    pub username: &'a str,
    pub password_hash: Option<&'a str>,
    pub nickname: &'a str,
    pub role: &'a str,
    pub phone_enc: Option<&'a str>,
    pub phone_hash: Option<&'a str>,
    pub apple_sub: Option<&'a str>,
    pub signup_bonus: i64,
}

/// Creates the user and, if there is a bonus, its `signup_bonus` ledger row, in one transaction.
/// A taken username, phone or Apple id is `conflict`.
#[tracing::instrument(skip_all, fields(username = u.username))]
pub async fn create(db: &Db, u: NewUser<'_>) -> Result<UserRow> {
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    // Usernames are unique regardless of letter case (see `by_username`). MySQL's unique key
    // already compares case-insensitively; SQLite's compares bytes, so there the insert itself
    // checks for another spelling. The insert is the transaction's first statement, so it holds
    // SQLite's write lock while it checks: two racing registrations cannot both pass.
    let insert = match db.dialect {
        Dialect::MySql => {
            "INSERT INTO users (id, username, password_hash, nickname, avatar_url, phone_enc, phone_hash, apple_sub, role, disabled, credits, reserved, ledger_seq, created_at, updated_at) \
             VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, 0, ?, 0, ?, ?, ?)"
        }
        Dialect::Sqlite => {
            "INSERT INTO users (id, username, password_hash, nickname, avatar_url, phone_enc, phone_hash, apple_sub, role, disabled, credits, reserved, ledger_seq, created_at, updated_at) \
             SELECT ?, ?, ?, ?, '', ?, ?, ?, ?, 0, ?, 0, ?, ?, ? \
             WHERE NOT EXISTS (SELECT 1 FROM users WHERE username = ? COLLATE NOCASE)"
        }
    };
    let mut q = sqlx::query(insert)
        .bind(u.id)
        .bind(u.username)
        .bind(u.password_hash)
        .bind(u.nickname)
        .bind(u.phone_enc)
        .bind(u.phone_hash)
        .bind(u.apple_sub)
        .bind(u.role)
        .bind(u.signup_bonus)
        .bind(i64::from(u.signup_bonus > 0))
        .bind(now)
        .bind(now);
    if db.dialect == Dialect::Sqlite {
        q = q.bind(u.username);
    }
    let taken = || Error::Conflict("username or phone already taken".into());
    match q.execute(&mut *tx).await {
        Ok(r) if r.rows_affected() == 0 => return Err(taken()),
        Ok(_) => {}
        Err(e) => {
            return Err(match Error::from(e) {
                Error::Conflict(_) => taken(),
                other => other,
            })
        }
    }
    if u.signup_bonus > 0 {
        sqlx::query(
            "INSERT INTO credit_ledger (id, user_id, delta, balance_after, seq, reason, note, ref_id, created_at) VALUES (?, ?, ?, ?, 1, 'signup_bonus', NULL, NULL, ?)",
        )
        .bind(crate::ids::next_id())
        .bind(u.id)
        .bind(u.signup_bonus)
        .bind(u.signup_bonus)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(UserRow {
        id: u.id,
        username: u.username.to_owned(),
        password_hash: u.password_hash.map(str::to_owned),
        nickname: u.nickname.to_owned(),
        avatar_url: String::new(),
        phone_enc: u.phone_enc.map(str::to_owned),
        role: u.role.to_owned(),
        disabled: 0,
        credits: u.signup_bonus,
        reserved: 0,
        created_at: now,
    })
}

pub async fn by_id(db: &Db, id: i64) -> Result<Option<UserRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(&db.write)
            .await?,
    )
}

/// Finds a user by name, ignoring letter case (`Alice` and `alice` are one account on every
/// backend: MySQL's default collation is case-insensitive, SQLite needs `COLLATE NOCASE`).
pub async fn by_username(db: &Db, username: &str) -> Result<Option<UserRow>> {
    let sql = match db.dialect {
        Dialect::MySql => format!("SELECT {COLS} FROM users WHERE username = ?"),
        Dialect::Sqlite => format!("SELECT {COLS} FROM users WHERE username = ? COLLATE NOCASE"),
    };
    Ok(sqlx::query_as(&sql)
        .bind(username)
        .fetch_optional(&db.write)
        .await?)
}

pub async fn by_phone_hash(db: &Db, phone_hash: &str) -> Result<Option<UserRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLS} FROM users WHERE phone_hash = ?"))
            .bind(phone_hash)
            .fetch_optional(&db.write)
            .await?,
    )
}

pub async fn by_apple_sub(db: &Db, sub: &str) -> Result<Option<UserRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLS} FROM users WHERE apple_sub = ?"))
            .bind(sub)
            .fetch_optional(&db.write)
            .await?,
    )
}

#[derive(Default)]
pub struct ProfilePatch {
    pub nickname: Option<String>,
    pub avatar_url: Option<String>,
    pub password_hash: Option<String>,
}

pub async fn update_profile(db: &Db, id: i64, p: ProfilePatch) -> Result<()> {
    sqlx::query(
        "UPDATE users SET nickname = COALESCE(?, nickname), avatar_url = COALESCE(?, avatar_url), \
         password_hash = COALESCE(?, password_hash), updated_at = ? WHERE id = ?",
    )
    .bind(p.nickname)
    .bind(p.avatar_url)
    .bind(p.password_hash)
    .bind(now_ms())
    .bind(id)
    .execute(&db.write)
    .await?;
    Ok(())
}

pub async fn set_role_disabled(
    db: &Db,
    id: i64,
    role: Option<&str>,
    disabled: Option<bool>,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE users SET role = COALESCE(?, role), disabled = COALESCE(?, disabled), updated_at = ? WHERE id = ?",
    )
    .bind(role)
    .bind(disabled.map(i64::from))
    .bind(now_ms())
    .bind(id)
    .execute(&db.write)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Admin search: by username or nickname substring, newest first.
pub async fn search(db: &Db, q: Option<&str>, page: Page) -> Result<(Vec<UserRow>, i64)> {
    let pattern = q.map(|q| {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let filter = match pattern {
        Some(_) => format!(
            "WHERE ({} OR {})",
            db.dialect.ilike("username"),
            db.dialect.ilike("nickname")
        ),
        None => String::new(),
    };
    let count_sql = format!("SELECT COUNT(*) FROM users {filter}");
    let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
    let sql = format!("SELECT {COLS} FROM users {filter} ORDER BY id DESC LIMIT ? OFFSET ?");
    let mut rows = sqlx::query_as::<_, UserRow>(&sql);
    if let Some(p) = &pattern {
        count = count.bind(p.clone()).bind(p.clone());
        rows = rows.bind(p.clone()).bind(p.clone());
    }
    let total = count.fetch_one(&db.read).await?;
    let items = rows
        .bind(page.page_size)
        .bind(page.offset())
        .fetch_all(&db.read)
        .await?;
    Ok((items, total))
}
