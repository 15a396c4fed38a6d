//! The run history of the PostgreSQL store: table `runs` (migration 3), and the stream
//! row's `last_run` and `last_success` columns.
//!
//! Recording a run is one transaction: the stream's row is created if needed and
//! locked, the run inserted, the row's last run (and last successful run) set, and the
//! stream's runs older than the last `keep` deleted. Runs are read back newest first by
//! `run_seq`, the order of recording.

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row, SqlStr};

use super::error::{classify, decode};
use super::rows::{status_from_row, stream_hash, to_i64};
use super::schema::STATUS_COLUMNS;
use super::{BACKEND, PostgresStore};
use crate::error::{Error, Result};
use crate::record::StreamKey;
use crate::sink::history::runs_to_keep;
use crate::sink::{HistoryQuery, RunEntry, RunOutcome, RunSummary, StreamStatus};

/// The statements of the history, with the schema filled in once.
pub(super) struct Statements {
    lock_stream: SqlStr,
    insert_run: SqlStr,
    set_last_run: SqlStr,
    prune: SqlStr,
    last_run: SqlStr,
    stream_runs: SqlStr,
    all_runs: SqlStr,
    stream_status: SqlStr,
}

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        // `schema` is validated and quoted; every other value is a bind parameter.
        let s = |sql: &str| -> SqlStr {
            sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(sql.replace("{s}", schema)))
        };
        let runs = |filter: &str| {
            s(&format!(
                "SELECT t.integration, t.connection, t.model, t.variant, r.run::text \
                 FROM {{s}}.runs r JOIN {{s}}.streams t ON t.stream_id = r.stream_id \
                 {filter} ORDER BY r.run_seq DESC LIMIT $1"
            ))
        };
        Statements {
            lock_stream: s("SELECT stream_id FROM {s}.streams WHERE key_hash = $1 FOR UPDATE"),
            insert_run: s(
                "INSERT INTO {s}.runs (stream_id, run_id, instance, started_at, finished_at, outcome, run) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
            ),
            set_last_run: s("UPDATE {s}.streams SET last_run = $2::jsonb, \
                   last_success = CASE WHEN $3 THEN $2::jsonb ELSE last_success END \
                 WHERE stream_id = $1"),
            prune: s("DELETE FROM {s}.runs WHERE stream_id = $1 AND run_seq <= \
                   (SELECT run_seq FROM {s}.runs WHERE stream_id = $1 \
                    ORDER BY run_seq DESC OFFSET $2 LIMIT 1)"),
            last_run: s("SELECT last_run::text FROM {s}.streams WHERE key_hash = $1"),
            stream_runs: runs("WHERE t.key_hash = $2"),
            all_runs: runs(""),
            stream_status: s(&format!(
                "SELECT {STATUS_COLUMNS} FROM {{s}}.streams WHERE key_hash = $1"
            )),
        }
    }
}

fn decode_run(json: &str) -> Result<RunSummary> {
    serde_json::from_str(json).map_err(|e| {
        Error::store(
            BACKEND,
            "read the run history",
            false,
            format!("a recorded run is not a run summary: {e}"),
        )
    })
}

fn entry(row: &PgRow) -> Result<RunEntry> {
    let json: String = row.try_get(4).map_err(decode)?;
    Ok(RunEntry {
        stream: StreamKey {
            integration: row.try_get(0).map_err(decode)?,
            connection: row.try_get(1).map_err(decode)?,
            model: row.try_get(2).map_err(decode)?,
            variant: row.try_get(3).map_err(decode)?,
        },
        run: decode_run(&json)?,
    })
}

impl PostgresStore {
    /// Record `run` of `stream`, keeping the stream's last `keep` runs.
    pub(super) async fn history_record(
        &self,
        stream: &StreamKey,
        run: &RunSummary,
        keep: usize,
    ) -> Result<()> {
        let err = |e| classify("record the run", e);
        let json = serde_json::to_string(run)
            .map_err(|e| Error::store(BACKEND, "encode the run", false, e))?;
        let hash = stream_hash(stream);
        let mut tx = self.begin().await?;
        self.bind_stream(sqlx::query(self.sql.insert_stream.clone()), stream, &hash)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let stream_id: i64 = sqlx::query_scalar(self.history.lock_stream.clone())
            .bind(&hash)
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query(self.history.insert_run.clone())
            .bind(stream_id)
            .bind(run.id.to_string())
            .bind(&run.instance)
            .bind(run.started_at.as_micros())
            .bind(run.finished_at.as_micros())
            .bind(run.outcome.as_str())
            .bind(&json)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query(self.history.set_last_run.clone())
            .bind(stream_id)
            .bind(&json)
            .bind(run.outcome == RunOutcome::Ok)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query(self.history.prune.clone())
            .bind(stream_id)
            .bind(to_i64(runs_to_keep(keep) as u64))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    pub(super) async fn history_last_run(&self, stream: &StreamKey) -> Result<Option<RunSummary>> {
        let json: Option<Option<String>> = sqlx::query_scalar(self.history.last_run.clone())
            .bind(stream_hash(stream))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| classify("read the last run", e))?;
        json.flatten().map(|j| decode_run(&j)).transpose()
    }

    pub(super) async fn history_read(&self, query: &HistoryQuery) -> Result<Vec<RunEntry>> {
        let limit = to_i64(query.limit as u64);
        let q = match &query.stream {
            Some(stream) => sqlx::query(self.history.stream_runs.clone())
                .bind(limit)
                .bind(stream_hash(stream)),
            None => sqlx::query(self.history.all_runs.clone()).bind(limit),
        };
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("read the run history", e))?;
        rows.iter().map(entry).collect()
    }

    pub(super) async fn history_stream_status(
        &self,
        stream: &StreamKey,
    ) -> Result<Option<StreamStatus>> {
        let row = sqlx::query(self.history.stream_status.clone())
            .bind(stream_hash(stream))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| classify("read the stream status", e))?;
        row.as_ref().map(status_from_row).transpose()
    }
}
