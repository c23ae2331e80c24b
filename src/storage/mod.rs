//! Storage: one layer over SQLite (embedded default) and MySQL 8 / MariaDB, chosen by
//! `DATABASE_URL`.
//!
//! Queries go through sqlx's driver-neutral `Any` pool so that one SQL text serves both
//! databases (`?` placeholders, integers, text and reals only). Where the dialects differ,
//! the difference lives in [`Dialect`] and nowhere else.

pub mod agents;
pub mod api_keys;
pub mod app_config;
pub mod articles;
pub mod chat;
pub mod lease;
pub mod ledger;
pub mod models;
pub mod sessions;
pub mod uploads;
pub mod usage;
pub mod users;
pub mod writer;

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

/// How long a request waits for a MySQL / MariaDB connection before it is answered 503
/// `unavailable`: an outage reaches clients within a second, with `Retry-After`, not as a hang.
/// Longer than any wait for a free connection under load (32 connections, statements of a few
/// milliseconds; the hot writes go through the group-commit writer's own connections).
const ACQUIRE_TIMEOUT_MYSQL: Duration = Duration::from_millis(750);
/// SQLite is a local file that cannot be unreachable: a wait there is only for a free connection.
const ACQUIRE_TIMEOUT_SQLITE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    MySql,
}

impl Dialect {
    pub fn of(url: &str) -> Dialect {
        if crate::config::is_sqlite(url) {
            Dialect::Sqlite
        } else {
            Dialect::MySql
        }
    }

    /// `SUM(x)` as a 64-bit integer (MySQL returns DECIMAL, which the neutral driver cannot read).
    pub fn sum_i64(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("COALESCE(SUM({expr}), 0)"),
            Dialect::MySql => format!("CAST(COALESCE(SUM({expr}), 0) AS SIGNED)"),
        }
    }

    /// Case-insensitive substring match on a column (`LIKE` differs in case rules).
    pub fn ilike(self, col: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{col} LIKE ? ESCAPE '\\'"),
            Dialect::MySql => format!("LOWER({col}) LIKE LOWER(?) ESCAPE '\\\\'"),
        }
    }
}

/// The database: a write pool, a read pool (the replica when `DATABASE_READ_URL` is set, else the
/// write pool again), the dialect, and the group-commit writer of the hot write paths.
#[derive(Clone, Debug)]
pub struct Db {
    pub write: AnyPool,
    pub read: AnyPool,
    pub dialect: Dialect,
    pub writer: writer::Writer,
}

/// Group-commit writer tasks: SQLite has one writer per database; on MySQL a few let a batch
/// of one user's shard commit while another's is being applied.
fn writer_shards(dialect: Dialect) -> usize {
    match dialect {
        Dialect::Sqlite => 1,
        Dialect::MySql => 4,
    }
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static MYSQL_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/mysql");

impl Db {
    #[tracing::instrument(skip_all, fields(dialect))]
    pub async fn connect(url: &str, read_url: Option<&str>) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of(url);
        tracing::Span::current().record("dialect", tracing::field::debug(dialect));
        let write = pool(url, dialect).await?;
        let read = match read_url {
            Some(r) => pool(r, Dialect::of(r)).await?,
            None => write.clone(),
        };
        Ok(Db {
            writer: writer::Writer::spawn(write.clone(), dialect, writer_shards(dialect)),
            write,
            read,
            dialect,
        })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATOR,
            Dialect::MySql => &MYSQL_MIGRATOR,
        };
        migrator.run(&self.write).await?;
        Ok(())
    }

    /// Round trip to the write database, for `/health`.
    pub async fn ping(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut conn = self.write.acquire().await?;
        conn.execute("SELECT 1").await?;
        Ok(t.elapsed())
    }

    /// Starts a write transaction.
    ///
    /// Rule for every caller: the first statement of a write transaction is a write. SQLite's
    /// `BEGIN` is deferred; a transaction that reads first and writes later can fail with
    /// SQLITE_BUSY instead of waiting for the lock. Starting with the write makes it wait
    /// (busy_timeout) and keeps MySQL's row locks short as well.
    pub async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Any>> {
        self.write.begin().await
    }
}

async fn pool(url: &str, dialect: Dialect) -> anyhow::Result<AnyPool> {
    let mut url = url.to_owned();
    let mut opts = AnyPoolOptions::new().acquire_timeout(match dialect {
        Dialect::Sqlite => ACQUIRE_TIMEOUT_SQLITE,
        Dialect::MySql => ACQUIRE_TIMEOUT_MYSQL,
    });
    match dialect {
        Dialect::Sqlite => {
            // Create the file (and its folder) on first start: `cargo run` needs no setup.
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned();
            if !path.is_empty() && path != ":memory:" {
                if let Some(parent) = std::path::Path::new(&path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent)?;
                    }
                }
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
            opts = opts
                .max_connections(8)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL: readers never block the writer; foreign keys on; wait for locks.
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;",
                        )
                        .await?;
                        Ok(())
                    })
                });
        }
        Dialect::MySql => {
            opts = opts.max_connections(32).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            });
        }
    }
    let connect = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
    Ok(opts.connect_with(connect).await?)
}

/// Page/page_size handling shared by every paginated list (SPEC §5).
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub page: i64,
    pub page_size: i64,
}

impl Page {
    pub fn new(page: Option<i64>, page_size: Option<i64>) -> Page {
        Page {
            page: page.unwrap_or(1).max(1),
            page_size: page_size.unwrap_or(20).clamp(1, 100),
        }
    }
    pub fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.page_size)
    }
}

/// One page of `SELECT {cols} FROM {from} ORDER BY {order}` with the total count of
/// `FROM {from}`, read from the read pool. `from` is the table and its `WHERE`; `scope` binds its
/// single `?` (a user id), if it has one.
pub async fn paged<T>(
    db: &Db,
    cols: &str,
    from: &str,
    order: &str,
    scope: Option<i64>,
    page: Page,
) -> crate::error::Result<(Vec<T>, i64)>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let count_sql = format!("SELECT COUNT(*) FROM {from}");
    let page_sql = format!("SELECT {cols} FROM {from} ORDER BY {order} LIMIT ? OFFSET ?");
    let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
    let mut items = sqlx::query_as::<_, T>(&page_sql);
    if let Some(id) = scope {
        count = count.bind(id);
        items = items.bind(id);
    }
    let total = count.fetch_one(&db.read).await?;
    let items = items
        .bind(page.page_size)
        .bind(page.offset())
        .fetch_all(&db.read)
        .await?;
    Ok((items, total))
}

/// The paginated answer shape `{items, page, page_size, total}`.
#[derive(serde::Serialize, Debug)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub page_size: i64,
    pub total: i64,
}

impl<T> Paged<T> {
    pub fn new(items: Vec<T>, p: Page, total: i64) -> Self {
        Paged {
            items,
            page: p.page,
            page_size: p.page_size,
            total,
        }
    }
}

/// A text column as the neutral driver hands it over. MySQL reports `TEXT`/`MEDIUMTEXT` columns
/// as BLOB, which `String` refuses to decode ("mismatched types"); this reads either as UTF-8.
/// Use it on such columns with `#[sqlx(try_from = "Text")]` (`OptText` for nullable ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(pub String);

fn is_blob(ty: &sqlx::any::AnyTypeInfo) -> bool {
    <Vec<u8> as sqlx::Type<sqlx::Any>>::compatible(ty)
}

impl sqlx::Type<sqlx::Any> for Text {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <String as sqlx::Type<sqlx::Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Any>>::compatible(ty) || is_blob(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for Text {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::ValueRef as _;
        if is_blob(&value.type_info()) {
            let bytes = <Vec<u8> as sqlx::Decode<sqlx::Any>>::decode(value)?;
            Ok(Text(String::from_utf8(bytes)?))
        } else {
            Ok(Text(<String as sqlx::Decode<sqlx::Any>>::decode(value)?))
        }
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0
    }
}

/// A nullable text column (see [`Text`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptText(pub Option<String>);

impl sqlx::Type<sqlx::Any> for OptText {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <Text as sqlx::Type<sqlx::Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <Text as sqlx::Type<sqlx::Any>>::compatible(ty)
            || <Option<String> as sqlx::Type<sqlx::Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for OptText {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::ValueRef as _;
        if value.is_null() {
            return Ok(OptText(None));
        }
        Ok(OptText(Some(
            <Text as sqlx::Decode<sqlx::Any>>::decode(value)?.0,
        )))
    }
}

impl From<OptText> for Option<String> {
    fn from(t: OptText) -> Option<String> {
        t.0
    }
}
