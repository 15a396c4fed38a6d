//! The PostgreSQL store's outbox: the `<schema>.outbox` table (migration 4; its columns
//! are documented in [`crate::sink::outbox`]).
//!
//! Every change is one transaction that locks the rows concerned (`FOR UPDATE`),
//! applies the transitions of [`crate::sink::outbox`] and writes the rows back. A claim
//! reads its candidates with `FOR UPDATE SKIP LOCKED`: workers of several processes
//! claiming at once each take other items, without waiting for one another.

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, Row, SqlStr, Transaction};

use super::PostgresStore;
use super::error::{classify, decode};
use super::rows::{to_i64, to_u64};
use crate::error::Result;
use crate::record::RawJson;
use crate::sink::outbox::{
    self, Claim, ClaimRequest, Claimable, NewOutboxItem, OutboxCounts, OutboxItem, OutboxQuery,
    OutboxState, Settlement,
};
use crate::time::Timestamp;

/// The columns [`item_from_row`] reads, in order.
pub(super) const COLUMNS: &str = "id, integration, connection, action, input::text, \
     idempotency_key, then_sync::text, max_attempts, state, attempts, created_at, available_at, \
     updated_at, lease_until, worker, output::text, error::text, finished_at";

/// The outbox's statements, with the schema filled in once.
pub(super) struct OutboxStatements {
    insert: SqlStr,
    by_key: SqlStr,
    by_id: SqlStr,
    by_id_for_update: SqlStr,
    candidates: SqlStr,
    write_back: SqlStr,
    list: SqlStr,
    counts: SqlStr,
    purge: SqlStr,
}

impl OutboxStatements {
    pub(super) fn new(schema: &str) -> Self {
        // `schema` is validated and quoted; every value is a bind parameter.
        let s = |sql: String| -> SqlStr {
            sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(sql.replace("{s}", schema)))
        };
        OutboxStatements {
            insert: s(
                "INSERT INTO {s}.outbox (integration, connection, action, input, \
                   idempotency_key, then_sync, max_attempts, state, attempts, created_at, \
                   available_at, updated_at) \
                 VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb, $7, 'pending', 0, $8, $9, $8) \
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
                    .into(),
            ),
            by_key: s(format!(
                "SELECT {COLUMNS} FROM {{s}}.outbox WHERE idempotency_key = $1"
            )),
            by_id: s(format!("SELECT {COLUMNS} FROM {{s}}.outbox WHERE id = $1")),
            by_id_for_update: s(format!(
                "SELECT {COLUMNS} FROM {{s}}.outbox WHERE id = $1 FOR UPDATE"
            )),
            candidates: s(format!(
                "SELECT {COLUMNS} FROM {{s}}.outbox \
                 WHERE state IN ('pending', 'running') \
                   AND ((state = 'pending' AND available_at <= $1) \
                        OR (state = 'running' AND (lease_until IS NULL OR lease_until <= $1))) \
                 ORDER BY id LIMIT 16 FOR UPDATE SKIP LOCKED"
            )),
            write_back: s(
                "UPDATE {s}.outbox SET state = $2, attempts = $3, available_at = $4, \
                   updated_at = $5, lease_until = $6, worker = $7, output = $8::jsonb, \
                   error = $9::jsonb, finished_at = $10 \
                 WHERE id = $1"
                    .into(),
            ),
            list: s(format!(
                "SELECT {COLUMNS} FROM {{s}}.outbox \
                 WHERE id > $1 AND ($2::text[] IS NULL OR state = ANY($2)) \
                 ORDER BY id LIMIT $3"
            )),
            counts: s("SELECT state, count(*) FROM {s}.outbox GROUP BY state".into()),
            purge: s("DELETE FROM {s}.outbox WHERE state IN ('done', 'failed') \
                   AND finished_at IS NOT NULL AND finished_at < $1"
                .into()),
        }
    }
}

/// An item from a row of [`COLUMNS`].
fn item_from_row(row: &PgRow) -> Result<OutboxItem> {
    let state: String = row.try_get(8).map_err(decode)?;
    let state = OutboxState::parse(&state).ok_or_else(|| {
        crate::Error::store(
            super::BACKEND,
            "read an outbox item",
            false,
            format!("unknown outbox state {state:?}"),
        )
    })?;
    let then_sync: String = row.try_get(6).map_err(decode)?;
    let error: Option<String> = row.try_get(16).map_err(decode)?;
    let (then_sync, error) = outbox::decode_json_columns(&then_sync, error.as_deref());
    let ts = |i: usize| -> Result<Timestamp> {
        Ok(Timestamp::from_micros(row.try_get(i).map_err(decode)?))
    };
    let opt_ts = |i: usize| -> Result<Option<Timestamp>> {
        Ok(row
            .try_get::<Option<i64>, _>(i)
            .map_err(decode)?
            .map(Timestamp::from_micros))
    };
    let count = |i: usize| -> Result<u32> {
        let n: i32 = row.try_get(i).map_err(decode)?;
        Ok(u32::try_from(n.max(0)).unwrap_or(0))
    };
    Ok(OutboxItem {
        id: to_u64(row.try_get(0).map_err(decode)?),
        integration: row.try_get(1).map_err(decode)?,
        connection: row.try_get(2).map_err(decode)?,
        action: row.try_get(3).map_err(decode)?,
        input: row
            .try_get::<Option<String>, _>(4)
            .map_err(decode)?
            .map(RawJson::from_trusted),
        key: row.try_get(5).map_err(decode)?,
        then_sync,
        max_attempts: count(7)?,
        state,
        attempts: count(9)?,
        created_at: ts(10)?,
        available_at: ts(11)?,
        updated_at: ts(12)?,
        lease_until: opt_ts(13)?,
        worker: row.try_get(14).map_err(decode)?,
        output: row
            .try_get::<Option<String>, _>(15)
            .map_err(decode)?
            .map(RawJson::from_trusted),
        error,
        finished_at: opt_ts(17)?,
    })
}

fn count_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl PostgresStore {
    async fn outbox_write_back(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        item: &OutboxItem,
    ) -> Result<()> {
        sqlx::query(self.outbox_sql.write_back.clone())
            .bind(to_i64(item.id))
            .bind(item.state.as_str())
            .bind(count_i32(item.attempts))
            .bind(item.available_at.as_micros())
            .bind(item.updated_at.as_micros())
            .bind(item.lease_until.map(Timestamp::as_micros))
            .bind(item.worker.clone())
            .bind(item.output.as_ref().map(|o| o.as_str().to_owned()))
            .bind(item.error.as_ref().map(|e| e.to_json()))
            .bind(item.finished_at.map(Timestamp::as_micros))
            .execute(&mut **tx)
            .await
            .map_err(|e| classify("write an outbox item", e))?;
        Ok(())
    }

    pub(super) async fn outbox_enqueue_impl(&self, new: NewOutboxItem) -> Result<OutboxItem> {
        new.check()?;
        let then_sync = serde_json::to_string(&new.then_sync).expect("strings serialize");
        let id: Option<i64> = sqlx::query_scalar(self.outbox_sql.insert.clone())
            .bind(&new.integration)
            .bind(&new.connection)
            .bind(&new.action)
            .bind(new.input.as_ref().map(|i| i.as_str().to_owned()))
            .bind(new.key.clone())
            .bind(then_sync)
            .bind(count_i32(new.max_attempts))
            .bind(new.created_at.as_micros())
            .bind(new.available_at.as_micros())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| classify("enqueue an outbox item", e))?;
        if let Some(id) = id {
            return Ok(new.into_item(to_u64(id)));
        }
        // The key is taken: the item that has it.
        let row = sqlx::query(self.outbox_sql.by_key.clone())
            .bind(new.key.clone())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("read an outbox item by key", e))?;
        item_from_row(&row)
    }

    pub(super) async fn outbox_claim_impl(&self, req: &ClaimRequest) -> Result<Option<OutboxItem>> {
        let mut tx = self.begin().await?;
        let claimed = loop {
            let rows = sqlx::query(self.outbox_sql.candidates.clone())
                .bind(req.now.as_micros())
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| classify("claim an outbox item", e))?;
            if rows.is_empty() {
                break None;
            }
            let mut found = None;
            let mut abandoned = 0;
            for row in &rows {
                let mut item = item_from_row(row)?;
                match outbox::claimable(&item, req.now) {
                    Claimable::No => {}
                    Claimable::Abandon => {
                        outbox::abandon(&mut item, req.now);
                        self.outbox_write_back(&mut tx, &item).await?;
                        abandoned += 1;
                    }
                    Claimable::Deliver => {
                        outbox::claim(&mut item, req);
                        self.outbox_write_back(&mut tx, &item).await?;
                        found = Some(item);
                        break;
                    }
                }
            }
            if found.is_some() || abandoned == 0 {
                break found;
            }
        };
        tx.commit()
            .await
            .map_err(|e| classify("claim an outbox item", e))?;
        Ok(claimed)
    }

    pub(super) async fn outbox_change_claimed(
        &self,
        operation: &'static str,
        claim: &Claim,
        f: impl FnOnce(&mut OutboxItem),
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(self.outbox_sql.by_id_for_update.clone())
            .bind(to_i64(claim.id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| classify(operation, e))?;
        // A claim that no longer holds its item changes nothing. The transaction is
        // rolled back here, not on drop: sqlx only queues the rollback of a dropped
        // transaction, and the idle pooled connection would keep the row locked, hiding
        // it from the claims' `SKIP LOCKED`.
        let item = match row.as_ref().map(item_from_row).transpose() {
            Ok(Some(item)) if outbox::holds(&item, claim) => item,
            other => {
                tx.rollback().await.map_err(|e| classify(operation, e))?;
                return other.map(|_| false);
            }
        };
        let mut item = item;
        f(&mut item);
        self.outbox_write_back(&mut tx, &item).await?;
        tx.commit().await.map_err(|e| classify(operation, e))?;
        Ok(true)
    }

    pub(super) async fn outbox_settle_impl(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        self.outbox_change_claimed("settle an outbox item", claim, |item| {
            outbox::settle(item, settlement, now)
        })
        .await
    }

    pub(super) async fn outbox_extend_impl(
        &self,
        claim: &Claim,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<bool> {
        self.outbox_change_claimed("extend an outbox lease", claim, |item| {
            outbox::extend(item, until, now)
        })
        .await
    }

    pub(super) async fn outbox_get_impl(&self, id: u64) -> Result<Option<OutboxItem>> {
        let row = sqlx::query(self.outbox_sql.by_id.clone())
            .bind(to_i64(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| classify("read an outbox item", e))?;
        row.map(|r| item_from_row(&r)).transpose()
    }

    pub(super) async fn outbox_list_impl(&self, query: &OutboxQuery) -> Result<Vec<OutboxItem>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let states: Option<Vec<&str>> =
            (!query.states.is_empty()).then(|| query.states.iter().map(|s| s.as_str()).collect());
        let rows = sqlx::query(self.outbox_sql.list.clone())
            .bind(query.after_id.map_or(0, to_i64))
            .bind(states)
            .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("list outbox items", e))?;
        rows.iter().map(item_from_row).collect()
    }

    pub(super) async fn outbox_counts_impl(&self) -> Result<OutboxCounts> {
        let rows = sqlx::query(self.outbox_sql.counts.clone())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("count outbox items", e))?;
        let mut counts = OutboxCounts::default();
        for row in rows {
            let state: String = row.try_get(0).map_err(decode)?;
            let n = to_u64(row.try_get(1).map_err(decode)?);
            match OutboxState::parse(&state) {
                Some(OutboxState::Pending) => counts.pending += n,
                Some(OutboxState::Running) => counts.running += n,
                Some(OutboxState::Done) => counts.done += n,
                Some(OutboxState::Failed) => counts.failed += n,
                None => {}
            }
        }
        Ok(counts)
    }

    pub(super) async fn outbox_purge_impl(&self, before: Timestamp) -> Result<u64> {
        let done = sqlx::query(self.outbox_sql.purge.clone())
            .bind(before.as_micros())
            .execute(&self.pool)
            .await
            .map_err(|e| classify("purge outbox items", e))?;
        Ok(done.rows_affected())
    }
}
