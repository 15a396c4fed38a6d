//! Rows of the PostgreSQL store and the values they hold: records, stream states and
//! statuses, and the key of a stream.
//!
//! Timestamps are microseconds since the epoch (`bigint`), `last_action` its
//! [code](crate::record::LastAction::code) (`smallint`), counters `bigint`, the last run
//! `jsonb`.

use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::BACKEND;
use super::error::decode;
use crate::error::{Error, Result};
use crate::merge::Counts;
use crate::record::{Cursor, LastAction, Metadata, RawJson, StoredRecord, StreamKey};
use crate::sink::{RunSummary, StreamState, StreamStatus};
use crate::time::Timestamp;

/// A record from a row of [`RECORD_COLUMNS`](super::schema::RECORD_COLUMNS).
pub(super) fn record_from_row(row: &PgRow) -> Result<StoredRecord> {
    let code: i16 = row.try_get(4).map_err(decode)?;
    let last_action = u8::try_from(code)
        .ok()
        .and_then(LastAction::from_code)
        .ok_or_else(|| {
            Error::store(
                BACKEND,
                "read record",
                false,
                format!("unknown last_action {code}"),
            )
        })?;
    let payload: String = row.try_get(1).map_err(decode)?;
    let ts = |i: usize| -> Result<Option<Timestamp>> {
        Ok(row
            .try_get::<Option<i64>, _>(i)
            .map_err(decode)?
            .map(Timestamp::from_micros))
    };
    Ok(StoredRecord {
        id: row.try_get(0).map_err(decode)?,
        payload: RawJson::from_trusted(payload),
        meta: Metadata {
            first_seen_at: Timestamp::from_micros(row.try_get(2).map_err(decode)?),
            last_modified_at: Timestamp::from_micros(row.try_get(3).map_err(decode)?),
            last_action,
            deleted_at: ts(5)?,
            pruned_at: ts(6)?,
            cursor: Cursor(row.try_get(7).map_err(decode)?),
        },
        seq: to_u64(row.try_get(8).map_err(decode)?),
    })
}

/// A status from a row of the statuses query.
pub(super) fn status_from_row(row: &PgRow) -> Result<StreamStatus> {
    let n = |i: usize| -> Result<u64> { Ok(to_u64(row.try_get(i).map_err(decode)?)) };
    let run = |i: usize| -> Result<Option<RunSummary>> {
        match row.try_get::<Option<String>, _>(i).map_err(decode)? {
            Some(json) => {
                Ok(Some(serde_json::from_str(&json).map_err(|e| {
                    Error::store(BACKEND, "read last run", false, e)
                })?))
            }
            None => Ok(None),
        }
    };
    let last_run = run(14)?;
    Ok(StreamStatus {
        stream: StreamKey {
            integration: row.try_get(0).map_err(decode)?,
            connection: row.try_get(1).map_err(decode)?,
            model: row.try_get(2).map_err(decode)?,
            variant: row.try_get(3).map_err(decode)?,
        },
        state: state_from_row(row, 4)?,
        totals: Counts {
            added: n(7)?,
            updated: n(8)?,
            deleted: n(9)?,
            unchanged: n(10)?,
            stale: n(11)?,
        },
        live_records: n(12)?,
        deleted_records: n(13)?,
        last_run,
        upstream_error: row.try_get(15).map_err(decode)?,
        last_success: run(16)?,
    })
}

/// A stream state from columns `cursor, generation, full_read` starting at `first`.
pub(super) fn state_from_row(row: &PgRow, first: usize) -> Result<StreamState> {
    Ok(StreamState {
        cursor: row
            .try_get::<Option<String>, _>(first)
            .map_err(decode)?
            .map(Cursor),
        generation: to_u64(row.try_get(first + 1).map_err(decode)?),
        full_read: row
            .try_get::<Option<i64>, _>(first + 2)
            .map_err(decode)?
            .map(to_u64),
    })
}

/// SHA-256 of the stream key's fields, each prefixed by its length: the streams' unique
/// key (fixed size, whatever the fields hold).
pub(super) fn stream_hash(stream: &StreamKey) -> Vec<u8> {
    let mut h = Sha256::new();
    for f in [
        &stream.integration,
        &stream.connection,
        &stream.model,
        &stream.variant,
    ] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    h.finalize().to_vec()
}

/// A count or number as a `bigint`.
pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` as a count or number.
pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_hashes_do_not_collide_on_concatenation() {
        assert_ne!(
            stream_hash(&StreamKey::new("ab", "c", "M")),
            stream_hash(&StreamKey::new("a", "bc", "M"))
        );
    }
}
