//! Values of the sled store: stream rows (JSON) and records (a fixed binary header,
//! the cursor, then the payload JSON verbatim).

use serde::{Deserialize, Serialize};

use super::BACKEND;
use super::error::corrupt;
use crate::error::{Error, Result};
use crate::merge::{Counts, StoredVersionBuf, payload_bytes_are_bare};
use crate::record::{Cursor, LastAction, Metadata, RawJson, StoredRecord, StreamKey};
use crate::sink::{RunSummary, StreamState};
use crate::time::Timestamp;

/// A stream's row: its key, state, totals, record counts, last run, upstream error, and
/// the record whose cursor is the stream's cursor.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StreamRow {
    pub(super) stream: StreamKey,
    pub(super) state: StreamState,
    pub(super) totals: Counts,
    pub(super) live: u64,
    pub(super) deleted: u64,
    pub(super) last_run: Option<RunSummary>,
    pub(super) upstream_error: Option<String>,
    /// The id of the record whose cursor became the stream's cursor (the last record of
    /// the commit that moved it), when it was one; checked by
    /// [`SledStore::check`](super::SledStore::check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cursor_record: Option<String>,
    /// The last run that ended `ok` (see `history.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_success: Option<RunSummary>,
    /// The live records stamped with the running full read's generation, while known
    /// exactly (see `sweep.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) seen_live: Option<crate::sink::seen::SeenLive>,
}

impl StreamRow {
    pub(super) fn new(stream: StreamKey) -> Self {
        StreamRow {
            stream,
            state: StreamState::default(),
            totals: Counts::default(),
            live: 0,
            deleted: 0,
            last_run: None,
            upstream_error: None,
            cursor_record: None,
            last_success: None,
            seen_live: None,
        }
    }

    pub(super) fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::store(BACKEND, "encode stream row", false, e))
    }
}

const RECORD_VERSION: u8 = 1;
pub(super) const OFF_SEQ: usize = 1;
const OFF_GEN: usize = 9;
const OFF_FIRST_SEEN: usize = 17;
const OFF_LAST_MODIFIED: usize = 25;
pub(super) const OFF_ACTION: usize = 33;
pub(super) const OFF_FLAGS: usize = 34;
const OFF_DELETED_AT: usize = 35;
const OFF_PRUNED_AT: usize = 43;
const OFF_CURSOR_LEN: usize = 51;
pub(super) const HEADER: usize = 55;
const FLAG_DELETED_AT: u8 = 1;
const FLAG_PRUNED_AT: u8 = 2;
/// The record is a tombstone (`Metadata::is_deleted`), for filtering without decoding.
const FLAG_DELETED: u8 = 4;

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// A record value: the header, the cursor, then `payload`.
pub(super) fn encode_record(seq: u64, seen_gen: u64, meta: &Metadata, payload: &[u8]) -> Vec<u8> {
    let cursor = meta.cursor.as_str().as_bytes();
    let mut v = Vec::with_capacity(HEADER + cursor.len() + payload.len());
    v.push(RECORD_VERSION);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&seen_gen.to_be_bytes());
    v.extend_from_slice(&meta.first_seen_at.as_micros().to_be_bytes());
    v.extend_from_slice(&meta.last_modified_at.as_micros().to_be_bytes());
    v.push(meta.last_action.code());
    let mut flags = 0;
    if meta.deleted_at.is_some() {
        flags |= FLAG_DELETED_AT;
    }
    if meta.pruned_at.is_some() {
        flags |= FLAG_PRUNED_AT;
    }
    if meta.is_deleted() {
        flags |= FLAG_DELETED;
    }
    v.push(flags);
    v.extend_from_slice(
        &meta
            .deleted_at
            .map_or(0, Timestamp::as_micros)
            .to_be_bytes(),
    );
    v.extend_from_slice(&meta.pruned_at.map_or(0, Timestamp::as_micros).to_be_bytes());
    v.extend_from_slice(&(cursor.len() as u32).to_be_bytes());
    v.extend_from_slice(cursor);
    v.extend_from_slice(payload);
    v
}

/// `value` (an encoded record) seen by generation `generation`.
pub(super) fn seen_by(value: &[u8], generation: u64) -> Vec<u8> {
    let mut value = value.to_vec();
    put_u64(&mut value, OFF_GEN, generation);
    value
}

/// `value` (an encoded, live record) turned into the tombstone a sweep leaves: deleted
/// at `deleted_at` by commit `seq`, its payload kept.
pub(super) fn tombstone(value: &[u8], deleted_at: Timestamp, seq: u64) -> Vec<u8> {
    let mut value = value.to_vec();
    value[OFF_ACTION] = LastAction::Deleted.code();
    value[OFF_FLAGS] |= FLAG_DELETED_AT | FLAG_DELETED;
    put_u64(&mut value, OFF_DELETED_AT, deleted_at.as_micros() as u64);
    put_u64(&mut value, OFF_SEQ, seq);
    value
}

/// A checked view of an encoded record value.
pub(super) struct RecordView<'a> {
    bytes: &'a [u8],
    cursor_end: usize,
}

impl<'a> RecordView<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Result<Self> {
        Self::parse(bytes).map_err(corrupt)
    }

    /// The view, or what is wrong with the value.
    pub(super) fn parse(bytes: &'a [u8]) -> std::result::Result<Self, &'static str> {
        if bytes.len() < HEADER || bytes[0] != RECORD_VERSION {
            return Err("record value has an unknown layout");
        }
        let len =
            u32::from_be_bytes(bytes[OFF_CURSOR_LEN..HEADER].try_into().expect("4 bytes")) as usize;
        let cursor_end = HEADER + len;
        if bytes.len() < cursor_end {
            return Err("record value is truncated");
        }
        Ok(RecordView { bytes, cursor_end })
    }

    pub(super) fn u64_at(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    fn ts_at(&self, at: usize) -> Timestamp {
        Timestamp::from_micros(self.u64_at(at) as i64)
    }

    pub(super) fn seen_gen(&self) -> u64 {
        self.u64_at(OFF_GEN)
    }

    pub(super) fn deleted(&self) -> bool {
        self.bytes[OFF_FLAGS] & FLAG_DELETED != 0
    }

    pub(super) fn cursor(&self) -> Result<&'a str> {
        std::str::from_utf8(&self.bytes[HEADER..self.cursor_end])
            .map_err(|_| corrupt("cursor is not UTF-8"))
    }

    pub(super) fn payload_bytes(&self) -> &'a [u8] {
        &self.bytes[self.cursor_end..]
    }

    pub(super) fn version(&self, id: &str) -> Result<StoredVersionBuf> {
        let pruned = self.bytes[OFF_FLAGS] & FLAG_PRUNED_AT != 0
            || payload_bytes_are_bare(id, self.payload_bytes());
        Ok(StoredVersionBuf {
            last_modified_at: self.ts_at(OFF_LAST_MODIFIED),
            cursor: self.cursor()?.to_owned(),
            deleted: self.deleted(),
            pruned,
        })
    }

    pub(super) fn to_record(&self, id: String) -> Result<StoredRecord> {
        let flags = self.bytes[OFF_FLAGS];
        let last_action = LastAction::from_code(self.bytes[OFF_ACTION])
            .ok_or_else(|| corrupt("unknown last action"))?;
        let payload = std::str::from_utf8(self.payload_bytes())
            .map_err(|_| corrupt("payload is not UTF-8"))?;
        Ok(StoredRecord {
            id,
            payload: RawJson::from_trusted(payload),
            meta: Metadata {
                first_seen_at: self.ts_at(OFF_FIRST_SEEN),
                last_modified_at: self.ts_at(OFF_LAST_MODIFIED),
                last_action,
                deleted_at: (flags & FLAG_DELETED_AT != 0).then(|| self.ts_at(OFF_DELETED_AT)),
                pruned_at: (flags & FLAG_PRUNED_AT != 0).then(|| self.ts_at(OFF_PRUNED_AT)),
                cursor: Cursor(self.cursor()?.to_owned()),
            },
            seq: self.u64_at(OFF_SEQ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_values_round_trip() {
        let meta = Metadata {
            first_seen_at: Timestamp::from_micros(-5),
            last_modified_at: Timestamp::from_micros(1_790_000_000_123_456),
            last_action: LastAction::Deleted,
            deleted_at: Some(Timestamp::from_micros(7)),
            pruned_at: None,
            cursor: Cursor("c'ü".into()),
        };
        let v = encode_record(9, 3, &meta, br#"{"id":"x"}"#);
        let view = RecordView::new(&v).unwrap();
        assert!(view.deleted());
        assert_eq!(view.seen_gen(), 3);
        let r = view.to_record("x".into()).unwrap();
        assert_eq!(
            (r.meta, r.seq, r.payload.as_str()),
            (meta, 9, r#"{"id":"x"}"#)
        );
        assert!(RecordView::new(&v[..HEADER + 1]).is_err());
    }

    #[test]
    fn a_swept_record_is_a_tombstone_with_its_payload() {
        let mut meta = Metadata {
            first_seen_at: Timestamp::from_micros(1),
            last_modified_at: Timestamp::from_micros(2),
            last_action: LastAction::Updated,
            deleted_at: None,
            pruned_at: None,
            cursor: Cursor("c".into()),
        };
        let live = encode_record(4, 1, &meta, br#"{"id":"x","t":1}"#);
        let swept = tombstone(&seen_by(&live, 2), Timestamp::from_micros(99), 5);
        let view = RecordView::new(&swept).unwrap();
        assert!(view.deleted());
        assert_eq!(view.seen_gen(), 2);
        let r = view.to_record("x".into()).unwrap();
        meta.last_action = LastAction::Deleted;
        meta.deleted_at = Some(Timestamp::from_micros(99));
        assert_eq!(
            (r.meta, r.seq, r.payload.as_str()),
            (meta, 5, r#"{"id":"x","t":1}"#)
        );
    }
}
