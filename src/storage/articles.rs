//! Articles (SPEC §10): published ones are public, newest first; admins see everything.
//!
//! `published_at` is set the first time an article is published and never changes after that:
//! unpublishing hides the article but keeps the date, and publishing it again shows it with its
//! original date (its place in the list does not jump).

use serde::Serialize;
use sqlx::FromRow;

use super::{Db, Page};
use crate::error::Result;

#[derive(Debug, Clone, FromRow)]
pub struct ArticleRow {
    pub id: i64,
    pub title: String,
    #[sqlx(try_from = "super::Text")]
    pub summary: String,
    #[sqlx(try_from = "super::Text")]
    pub body: String,
    pub category: String,
    pub cover_url: String,
    pub published: i64,
    pub published_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str =
    "id, title, summary, body, category, cover_url, published, published_at, created_at, updated_at";

/// The public article object of SPEC §10.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ArticleView {
    #[serde(serialize_with = "crate::time::ser_id")]
    #[schema(value_type = String)]
    pub id: i64,
    pub title: String,
    pub summary: String,
    pub body: String,
    pub category: String,
    pub cover_url: String,
    /// When it was first published (null for a never-published draft, admin views only).
    #[serde(serialize_with = "crate::time::ser_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub published_at: Option<i64>,
}

/// The admin article object: the public one plus `published` and timestamps.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdminArticleView {
    #[serde(flatten)]
    pub public: ArticleView,
    pub published: bool,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl ArticleRow {
    pub fn view(&self) -> ArticleView {
        ArticleView {
            id: self.id,
            title: self.title.clone(),
            summary: self.summary.clone(),
            body: self.body.clone(),
            category: self.category.clone(),
            cover_url: self.cover_url.clone(),
            published_at: self.published_at,
        }
    }

    pub fn admin_view(&self) -> AdminArticleView {
        AdminArticleView {
            public: self.view(),
            published: self.published != 0,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// Any article by id (admins).
pub async fn get(db: &Db, id: i64) -> Result<Option<ArticleRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLS} FROM articles WHERE id = ?"))
            .bind(id)
            .fetch_optional(&db.write)
            .await?,
    )
}

/// A published article by id (the public).
pub async fn get_published(db: &Db, id: i64) -> Result<Option<ArticleRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM articles WHERE id = ? AND published = 1"
    ))
    .bind(id)
    .fetch_optional(&db.read)
    .await?)
}

/// Published articles, newest `published_at` first, optionally of one category.
pub async fn list_published(
    db: &Db,
    category: Option<&str>,
    page: Page,
) -> Result<(Vec<ArticleRow>, i64)> {
    let filter = match category {
        Some(_) => "WHERE published = 1 AND category = ?",
        None => "WHERE published = 1",
    };
    let count_sql = format!("SELECT COUNT(*) FROM articles {filter}");
    let list_sql = format!(
        "SELECT {COLS} FROM articles {filter} ORDER BY published_at DESC, id DESC LIMIT ? OFFSET ?"
    );
    let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
    let mut rows = sqlx::query_as::<_, ArticleRow>(&list_sql);
    if let Some(c) = category {
        count = count.bind(c);
        rows = rows.bind(c);
    }
    let total = count.fetch_one(&db.read).await?;
    let items = rows
        .bind(page.page_size)
        .bind(page.offset())
        .fetch_all(&db.read)
        .await?;
    Ok((items, total))
}

/// Every article, newest first (admins).
pub async fn list_all(db: &Db, page: Page) -> Result<(Vec<ArticleRow>, i64)> {
    super::paged(db, COLS, "articles", "id DESC", None, page).await
}

pub async fn insert(db: &Db, a: &ArticleRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO articles ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(a.id)
    .bind(&a.title)
    .bind(&a.summary)
    .bind(&a.body)
    .bind(&a.category)
    .bind(&a.cover_url)
    .bind(a.published)
    .bind(a.published_at)
    .bind(a.created_at)
    .bind(a.updated_at)
    .execute(&db.write)
    .await?;
    Ok(())
}

/// Writes every editable column of `a`. `published_at` is only ever filled once: a concurrent
/// first publication keeps whichever date was written first.
pub async fn update(db: &Db, a: &ArticleRow) -> Result<()> {
    sqlx::query(
        "UPDATE articles SET title = ?, summary = ?, body = ?, category = ?, cover_url = ?, \
         published = ?, published_at = COALESCE(published_at, ?), updated_at = ? WHERE id = ?",
    )
    .bind(&a.title)
    .bind(&a.summary)
    .bind(&a.body)
    .bind(&a.category)
    .bind(&a.cover_url)
    .bind(a.published)
    .bind(a.published_at)
    .bind(a.updated_at)
    .bind(a.id)
    .execute(&db.write)
    .await?;
    Ok(())
}

pub async fn delete(db: &Db, id: i64) -> Result<bool> {
    let r = sqlx::query("DELETE FROM articles WHERE id = ?")
        .bind(id)
        .execute(&db.write)
        .await?;
    Ok(r.rows_affected() > 0)
}
