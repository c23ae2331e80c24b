//! The batch's insert-only rows, written as one multi-row `INSERT` per table.

use super::*;

// ---- the batch's insert-only rows ---------------------------------------------------------------

pub(super) struct ReservationIns<'a> {
    pub(super) id: i64,
    pub(super) user_id: i64,
    pub(super) amount: i64,
    pub(super) node_id: &'a str,
    pub(super) ref_id: String,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
}

pub(super) struct LedgerIns<'a> {
    pub(super) user_id: i64,
    pub(super) delta: i64,
    pub(super) balance_after: i64,
    /// The user's ledger sequence, taken under the user's row lock (commit order).
    pub(super) seq: i64,
    pub(super) reason: &'a str,
    pub(super) ref_id: String,
    pub(super) created_at: i64,
}

pub(super) struct UsageIns<'a> {
    pub(super) user_id: i64,
    pub(super) kind: &'a str,
    pub(super) model: &'a str,
    pub(super) api_key_id: Option<i64>,
    pub(super) prompt_tokens: i64,
    pub(super) completion_tokens: i64,
    pub(super) credits: i64,
    pub(super) latency_ms: i64,
    pub(super) status: &'a str,
    pub(super) created_at: i64,
}

/// Rows collected while a batch is applied, inserted together before its commit.
#[derive(Default)]
pub(super) struct Rows<'a> {
    pub(super) reservations: Vec<ReservationIns<'a>>,
    /// A message with the `seq` and `credits_charged` it is stored with.
    pub(super) messages: Vec<(&'a StoredMessage, i64, i64)>,
    pub(super) ledger: Vec<LedgerIns<'a>>,
    pub(super) usage: Vec<UsageIns<'a>>,
}

/// `INSERT INTO {head} VALUES (?, …), (?, …)…` for `n` rows of `cols` columns.
pub(super) fn values_sql(head: &str, cols: usize, n: usize) -> String {
    let mut row = String::with_capacity(cols * 3 + 2);
    row.push('(');
    for i in 0..cols {
        row.push_str(if i == 0 { "?" } else { ", ?" });
    }
    row.push(')');
    let mut sql = String::with_capacity(head.len() + 20 + n * (row.len() + 2));
    sql.push_str("INSERT INTO ");
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&row);
    }
    sql
}

impl<'a> Rows<'a> {
    pub(super) fn reservation(
        &mut self,
        user_id: i64,
        amount: i64,
        node_id: &'a str,
        ref_id: &str,
        now: i64,
        ttl_ms: i64,
    ) -> i64 {
        let id = crate::ids::next_id();
        self.reservations.push(ReservationIns {
            id,
            user_id,
            amount,
            node_id,
            ref_id: ref_id.to_owned(),
            created_at: now,
            expires_at: now + ttl_ms,
        });
        id
    }

    /// A ledger row of `(delta, balance_after, seq)`.
    pub(super) fn ledger(
        &mut self,
        user_id: i64,
        (delta, balance_after, seq): (i64, i64, i64),
        reason: &'a str,
        ref_id: String,
        now: i64,
    ) {
        self.ledger.push(LedgerIns {
            user_id,
            delta,
            balance_after,
            seq,
            reason,
            ref_id,
            created_at: now,
        });
    }

    pub(super) async fn insert(&self, conn: &mut AnyConnection) -> Result<()> {
        self.insert_reservations(conn).await?;
        self.insert_messages(conn).await?;
        self.insert_ledger(conn).await?;
        self.insert_usage(conn).await?;
        Ok(())
    }

    async fn insert_reservations(&self, conn: &mut AnyConnection) -> Result<()> {
        for chunk in self.reservations.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                "credit_reservations (id, user_id, amount, node_id, ref_id, created_at, expires_at)",
                7,
                chunk.len(),
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(r.id)
                    .bind(r.user_id)
                    .bind(r.amount)
                    .bind(r.node_id)
                    .bind(r.ref_id.as_str())
                    .bind(r.created_at)
                    .bind(r.expires_at);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn insert_messages(&self, conn: &mut AnyConnection) -> Result<()> {
        for chunk in self.messages.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                &format!("messages ({})", super::super::chat::MSG_COLS),
                13,
                chunk.len(),
            );
            let mut q = sqlx::query(&sql);
            for (m, seq, credits) in chunk {
                q = q
                    .bind(m.id)
                    .bind(m.conversation_id)
                    .bind(*seq)
                    .bind(m.role.as_str())
                    .bind(m.content.as_str())
                    .bind(m.status.as_str())
                    .bind(m.model.as_str())
                    .bind(m.usage.prompt_tokens)
                    .bind(m.usage.completion_tokens)
                    .bind(*credits)
                    .bind(m.client_msg_id.as_deref())
                    .bind(m.created_at)
                    .bind(m.meta_json());
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn insert_ledger(&self, conn: &mut AnyConnection) -> Result<()> {
        for chunk in self.ledger.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                "credit_ledger (id, user_id, delta, balance_after, seq, reason, ref_id, created_at)",
                8,
                chunk.len(),
            );
            let mut q = sqlx::query(&sql);
            for l in chunk {
                q = q
                    .bind(crate::ids::next_id())
                    .bind(l.user_id)
                    .bind(l.delta)
                    .bind(l.balance_after)
                    .bind(l.seq)
                    .bind(l.reason)
                    .bind(l.ref_id.as_str())
                    .bind(l.created_at);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn insert_usage(&self, conn: &mut AnyConnection) -> Result<()> {
        for chunk in self.usage.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                "usage_logs (id, user_id, kind, model, api_key_id, prompt_tokens, completion_tokens, credits, latency_ms, status, created_at)",
                11,
                chunk.len(),
            );
            let mut q = sqlx::query(&sql);
            for u in chunk {
                q = q
                    .bind(crate::ids::next_id())
                    .bind(u.user_id)
                    .bind(u.kind)
                    .bind(u.model)
                    .bind(u.api_key_id)
                    .bind(u.prompt_tokens)
                    .bind(u.completion_tokens)
                    .bind(u.credits)
                    .bind(u.latency_ms)
                    .bind(u.status)
                    .bind(u.created_at);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::values_sql;

    #[test]
    fn values_sql_has_one_placeholder_per_value() {
        assert_eq!(
            values_sql("t (a, b)", 2, 3),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)"
        );
        assert_eq!(values_sql("t (a)", 1, 1), "INSERT INTO t (a) VALUES (?)");
    }
}
