//! The run history of the SQLite store: table `nango_runs` (schema 4), and the stream
//! row's `last_run` and `last_success` columns.
//!
//! Recording a run is one `BEGIN IMMEDIATE` transaction: the run's row, the stream's
//! last run (and last successful run), and the deletion of the stream's runs older than
//! the last `keep`. Runs are read back newest first by `run_seq`, the order of
//! recording.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::BACKEND;
use super::error::sql_err;
use super::rows::{ensure_stream, status_from_row, status_sql};
use crate::error::{Error, Result};
use crate::record::StreamKey;
use crate::sink::history::runs_to_keep;
use crate::sink::{HistoryQuery, RunEntry, RunOutcome, RunSummary, StreamStatus};

const KEY_MATCH: &str =
    "s.integration = ?1 AND s.connection = ?2 AND s.model = ?3 AND s.variant = ?4";

/// Record `run` of `stream`, keeping the stream's last `keep` runs.
pub(super) fn record(
    conn: &mut Connection,
    stream: &StreamKey,
    run: &RunSummary,
    keep: usize,
) -> Result<()> {
    let e = |e| sql_err("record the run", e);
    let json = serde_json::to_string(run)
        .map_err(|e| Error::store(BACKEND, "record the run", false, e))?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    let (stream_id, _) = ensure_stream(&tx, stream).map_err(e)?;
    tx.prepare_cached(
        "INSERT INTO nango_runs (stream_id, run_id, instance, started_at, finished_at, outcome, run)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(e)?
    .execute(params![
        stream_id,
        run.id.to_string(),
        run.instance,
        run.started_at.as_micros(),
        run.finished_at.as_micros(),
        run.outcome.as_str(),
        json,
    ])
    .map_err(e)?;
    let sql = if run.outcome == RunOutcome::Ok {
        "UPDATE nango_streams SET last_run = ?2, last_success = ?2 WHERE stream_id = ?1"
    } else {
        "UPDATE nango_streams SET last_run = ?2 WHERE stream_id = ?1"
    };
    tx.prepare_cached(sql)
        .map_err(e)?
        .execute(params![stream_id, json])
        .map_err(e)?;
    let keep = i64::try_from(runs_to_keep(keep)).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "DELETE FROM nango_runs WHERE stream_id = ?1 AND run_seq <=
           (SELECT run_seq FROM nango_runs WHERE stream_id = ?1
            ORDER BY run_seq DESC LIMIT 1 OFFSET ?2)",
    )
    .map_err(e)?
    .execute(params![stream_id, keep])
    .map_err(e)?;
    tx.commit().map_err(e)
}

/// The stream's last run.
pub(super) fn last_run(conn: &Connection, stream: &StreamKey) -> Result<Option<RunSummary>> {
    let e = |e| sql_err("read the last run", e);
    let json: Option<Option<String>> = conn
        .prepare_cached(&format!(
            "SELECT s.last_run FROM nango_streams s WHERE {KEY_MATCH}"
        ))
        .map_err(e)?
        .query_row(
            params![
                stream.integration,
                stream.connection,
                stream.model,
                stream.variant
            ],
            |r| r.get(0),
        )
        .optional()
        .map_err(e)?;
    json.flatten().map(|j| decode(&j)).transpose()
}

/// The runs `query` asks for, newest first.
pub(super) fn read(conn: &Connection, query: &HistoryQuery) -> Result<Vec<RunEntry>> {
    let e = |e| sql_err("read the run history", e);
    let filter = if query.stream.is_some() {
        KEY_MATCH
    } else {
        "?1 IS NULL AND ?2 IS NULL AND ?3 IS NULL AND ?4 IS NULL"
    };
    let sql = format!(
        "SELECT s.integration, s.connection, s.model, s.variant, r.run
         FROM nango_runs r JOIN nango_streams s ON s.stream_id = r.stream_id
         WHERE {filter} ORDER BY r.run_seq DESC LIMIT ?5"
    );
    let key = query.stream.as_ref();
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&sql).map_err(e)?;
    let rows = stmt
        .query_map(
            params![
                key.map(|k| &k.integration),
                key.map(|k| &k.connection),
                key.map(|k| &k.model),
                key.map(|k| &k.variant),
                limit
            ],
            |r| {
                Ok((
                    StreamKey {
                        integration: r.get(0)?,
                        connection: r.get(1)?,
                        model: r.get(2)?,
                        variant: r.get(3)?,
                    },
                    r.get::<_, String>(4)?,
                ))
            },
        )
        .map_err(e)?;
    let mut out = Vec::new();
    for row in rows {
        let (stream, json) = row.map_err(e)?;
        out.push(RunEntry {
            stream,
            run: decode(&json)?,
        });
    }
    Ok(out)
}

/// The status of one stream.
pub(super) fn stream_status(conn: &Connection, stream: &StreamKey) -> Result<Option<StreamStatus>> {
    let e = |e| sql_err("read the stream status", e);
    conn.prepare_cached(&status_sql(KEY_MATCH))
        .map_err(e)?
        .query_row(
            params![
                stream.integration,
                stream.connection,
                stream.model,
                stream.variant
            ],
            status_from_row,
        )
        .optional()
        .map_err(e)
}

fn decode(json: &str) -> Result<RunSummary> {
    serde_json::from_str(json).map_err(|e| {
        Error::store(
            BACKEND,
            "read the run history",
            false,
            format!("a recorded run is not a run summary: {e}"),
        )
    })
}
