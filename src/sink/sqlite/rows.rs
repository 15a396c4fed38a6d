//! Rows of the SQLite store and the values they hold: records, stream rows and statuses.
//!
//! Timestamps are microseconds since the epoch (`INTEGER`), `last_action` its
//! [code](crate::record::LastAction::code), counters `INTEGER`, the last run JSON text.

use rusqlite::{Connection, OptionalExtension, params};

use crate::merge::Counts;
use crate::record::{Cursor, LastAction, Metadata, RawJson, StoredRecord, StreamKey};
use crate::sink::{StreamState, StreamStatus};
use crate::time::Timestamp;

/// The columns [`record_from_row`] reads, in order.
pub(super) const RECORD_COLUMNS: &str =
    "id, payload, first_seen_at, last_modified_at, last_action, deleted_at, pruned_at, cursor, seq";

/// A record from a row of [`RECORD_COLUMNS`].
pub(super) fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    record_from_row_at(r, 0)
}

/// A record from a row whose [`RECORD_COLUMNS`] start at column `first`.
pub(super) fn record_from_row_at(
    r: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<StoredRecord> {
    let code: u8 = r.get(first + 4)?;
    let last_action = LastAction::from_code(code).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            first + 4,
            rusqlite::types::Type::Integer,
            format!("bad last_action code {code}").into(),
        )
    })?;
    Ok(StoredRecord {
        id: r.get(first)?,
        payload: RawJson::from_trusted(r.get::<_, String>(first + 1)?),
        meta: Metadata {
            first_seen_at: Timestamp::from_micros(r.get(first + 2)?),
            last_modified_at: Timestamp::from_micros(r.get(first + 3)?),
            last_action,
            deleted_at: r
                .get::<_, Option<i64>>(first + 5)?
                .map(Timestamp::from_micros),
            pruned_at: r
                .get::<_, Option<i64>>(first + 6)?
                .map(Timestamp::from_micros),
            cursor: Cursor(r.get(first + 7)?),
        },
        seq: r.get::<_, i64>(first + 8)? as u64,
    })
}

/// An optional timestamp as a column value.
pub(super) fn micros(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_micros)
}

/// The id and state of a stream; `None` when the stream has no row yet.
pub(super) fn stream_row(
    conn: &Connection,
    key: &StreamKey,
) -> rusqlite::Result<Option<(i64, StreamState)>> {
    conn.prepare_cached(
        "SELECT stream_id, cursor, generation, full_read FROM nango_streams
         WHERE integration = ?1 AND connection = ?2 AND model = ?3 AND variant = ?4",
    )?
    .query_row(
        params![key.integration, key.connection, key.model, key.variant],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                StreamState {
                    cursor: r.get::<_, Option<String>>(1)?.map(Cursor),
                    generation: r.get::<_, i64>(2)? as u64,
                    full_read: r.get::<_, Option<i64>>(3)?.map(|g| g as u64),
                },
            ))
        },
    )
    .optional()
}

/// The id and state of a stream, its row created when missing.
pub(super) fn ensure_stream(
    conn: &Connection,
    key: &StreamKey,
) -> rusqlite::Result<(i64, StreamState)> {
    if let Some(row) = stream_row(conn, key)? {
        return Ok(row);
    }
    conn.prepare_cached("INSERT INTO nango_streams (integration, connection, model, variant) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![key.integration, key.connection, key.model, key.variant])?;
    Ok((conn.last_insert_rowid(), StreamState::default()))
}

/// The statuses query: every stream with its record counts (kept by every commit).
pub(super) fn statuses_sql() -> String {
    status_sql("")
}

/// The statuses query over the streams `filter` (a fixed SQL condition on `s`, or
/// empty for every stream).
pub(super) fn status_sql(filter: &str) -> String {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!("WHERE {filter}")
    };
    format!(
        "SELECT s.integration, s.connection, s.model, s.variant, s.cursor, s.generation, s.full_read,
                s.added, s.updated, s.deleted, s.unchanged, s.stale, s.last_run, s.upstream_error,
                s.live_records, s.deleted_records, s.last_success
         FROM nango_streams s {filter}
         ORDER BY s.integration, s.connection, s.model, s.variant"
    )
}

/// A status from a row of [`statuses_sql`].
pub(super) fn status_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StreamStatus> {
    let live: i64 = r.get(14)?;
    let deleted: i64 = r.get(15)?;
    let last_run: Option<String> = r.get(12)?;
    Ok(StreamStatus {
        stream: StreamKey {
            integration: r.get(0)?,
            connection: r.get(1)?,
            model: r.get(2)?,
            variant: r.get(3)?,
        },
        state: StreamState {
            cursor: r.get::<_, Option<String>>(4)?.map(Cursor),
            generation: r.get::<_, i64>(5)? as u64,
            full_read: r.get::<_, Option<i64>>(6)?.map(|g| g as u64),
        },
        totals: Counts {
            added: r.get::<_, i64>(7)? as u64,
            updated: r.get::<_, i64>(8)? as u64,
            deleted: r.get::<_, i64>(9)? as u64,
            unchanged: r.get::<_, i64>(10)? as u64,
            stale: r.get::<_, i64>(11)? as u64,
        },
        live_records: live as u64,
        deleted_records: deleted as u64,
        last_run: last_run.and_then(|s| serde_json::from_str(&s).ok()),
        upstream_error: r.get(13)?,
        last_success: r
            .get::<_, Option<String>>(16)?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}
