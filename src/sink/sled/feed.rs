//! The sled store's side of the change feed: its index keys, kept in each commit's
//! batch, the feed's reads, named consumers, the counts of a stream, the check of the
//! index, and the migration of a format-1 store (which had no index).
//!
//! | key | value |
//! |---|---|
//! | `'c'` + seq + sid + record id | empty: the feed's index, one key per record, at the sequence number of the commit that last changed it (both `u64` big-endian) |
//! | `'k'` + consumer name | a named consumer's position: seq (`u64` big-endian), then `0`, or `1` and the record id |
//!
//! A record's change kind is kept in two bits of its value's flags byte
//! ([`set_change`]); a record written by format 1 has none and is read with the kind
//! derived from its metadata ([`ChangeKind::of_legacy`]).
//!
//! A commit removes each changed record's old index key and adds its new one in the
//! batch that writes the record, so the index and the records change together. Commits
//! are serialized by the store's writer lock and a batch is applied under the apply
//! lock that readers hold while they read, so a feed read sees whole commits, in order.

use std::collections::HashMap;
use std::ops::Bound;

use ::sled::{Batch, Tree};

use super::Inner;
use super::error::{corrupt, sled_err};
use super::rows::{OFF_ACTION, OFF_FLAGS, OFF_SEQ, RecordView};
use super::schema::{KEY_FORMAT, KEY_SEQ, TAG_RECORD, be_u64, record_prefix};
use crate::error::Result;
use crate::feed::{
    Change, ChangeBatch, ChangeKind, ChangeQuery, Consumer, FeedPosition, RecordCounts, check_ack,
};
use crate::record::StreamKey;

/// The first byte of the feed's index keys.
pub(super) const TAG_FEED: u8 = b'c';
/// The first byte of the consumers' keys.
pub(super) const TAG_CONSUMER: u8 = b'k';

/// The two bits of a record value's flags byte that hold its change kind (0: none kept).
const CHANGE_SHIFT: u8 = 3;
const CHANGE_MASK: u8 = 0b11 << CHANGE_SHIFT;

/// Records indexed per batch while migrating a format-1 store.
const MIGRATION_CHUNK: usize = 10_000;

/// `'c'` + seq: the prefix of the index keys of one commit.
fn feed_prefix(seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(17 + 64);
    key.push(TAG_FEED);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The index key of record `id` of stream `sid` changed by commit `seq`.
pub(super) fn feed_key(seq: u64, sid: u64, id: &[u8]) -> Vec<u8> {
    let mut key = feed_prefix(seq);
    key.extend_from_slice(&sid.to_be_bytes());
    key.extend_from_slice(id);
    key
}

/// An index key's sequence number, stream number and record id.
fn parse_feed_key(key: &[u8]) -> Option<(u64, u64, &[u8])> {
    if key.len() < 17 || key[0] != TAG_FEED {
        return None;
    }
    Some((be_u64(&key[1..9])?, be_u64(&key[9..17])?, &key[17..]))
}

/// Keep `kind` in an encoded record value.
pub(super) fn set_change(value: &mut [u8], kind: ChangeKind) {
    value[OFF_FLAGS] = (value[OFF_FLAGS] & !CHANGE_MASK) | (kind.code() << CHANGE_SHIFT);
}

/// The change kind kept in a checked record value, if one is.
fn kept_change(value: &[u8]) -> Option<ChangeKind> {
    ChangeKind::from_code((value[OFF_FLAGS] & CHANGE_MASK) >> CHANGE_SHIFT)
}

/// The change kind of a checked record value: the one kept, or for a record written by
/// format 1, the one derived from its metadata (a tombstone is `deleted`, a live record
/// whose `last_action` is `ADDED` is `added`, any other `updated`).
pub(super) fn change_of(view: &RecordView<'_>, value: &[u8]) -> ChangeKind {
    kept_change(value).unwrap_or_else(|| {
        if view.deleted() {
            ChangeKind::Deleted
        } else if value[OFF_ACTION] == crate::record::LastAction::Added.code() {
            ChangeKind::Added
        } else {
            ChangeKind::Updated
        }
    })
}

/// In a commit's `batch`: record `id` of stream `sid`, whose value was `old` (none for
/// a new record), is now changed by commit `seq`.
pub(super) fn reindex(
    batch: &mut Batch,
    sid: u64,
    id: &[u8],
    old: Option<&[u8]>,
    seq: u64,
) -> Result<()> {
    if let Some(old) = old {
        let old_seq = RecordView::new(old)?.u64_at(OFF_SEQ);
        batch.remove(feed_key(old_seq, sid, id));
    }
    batch.insert(feed_key(seq, sid, id), &[][..]);
    Ok(())
}

fn consumer_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(TAG_CONSUMER);
    key.extend_from_slice(name.as_bytes());
    key
}

fn encode_position(position: &FeedPosition) -> Vec<u8> {
    let mut v = position.seq.to_be_bytes().to_vec();
    match &position.id {
        None => v.push(0),
        Some(id) => {
            v.push(1);
            v.extend_from_slice(id.as_bytes());
        }
    }
    v
}

/// A consumer's stored position, or what is wrong with it.
pub(super) fn decode_position(value: &[u8]) -> std::result::Result<FeedPosition, &'static str> {
    if value.len() < 9 {
        return Err("consumer position is truncated");
    }
    let seq = be_u64(&value[..8]).ok_or("consumer position is truncated")?;
    let id = match value[8] {
        0 if value.len() == 9 => None,
        1 => Some(
            std::str::from_utf8(&value[9..])
                .map_err(|_| "consumer position id is not UTF-8")?
                .to_owned(),
        ),
        _ => return Err("consumer position has an unknown layout"),
    };
    Ok(FeedPosition { seq, id })
}

impl Inner {
    /// See [`RecordSink::changes`](crate::RecordSink::changes).
    pub(super) fn changes(&self, query: &ChangeQuery) -> Result<ChangeBatch> {
        let _r = self.read_guard();
        let last = self.get_u64(KEY_SEQ)?;
        let mut changes = Vec::new();
        if query.limit == 0 {
            return Ok(ChangeBatch::assemble(query, changes, last));
        }
        let since = &query.since;
        let lower = match &since.id {
            None => match since.seq.checked_add(1) {
                Some(next) => Bound::Included(feed_prefix(next)),
                None => return Ok(ChangeBatch::assemble(query, changes, last)),
            },
            // Inside a commit: its keys share one stream number, found on its first key.
            Some(id) => match self.tree.scan_prefix(feed_prefix(since.seq)).next() {
                Some(item) => {
                    let (key, _) = item.map_err(sled_err("read the change feed"))?;
                    let (_, sid, _) =
                        parse_feed_key(&key).ok_or_else(|| corrupt("change feed key"))?;
                    Bound::Excluded(feed_key(since.seq, sid, id.as_bytes()))
                }
                None => Bound::Included(feed_prefix(since.seq.saturating_add(1))),
            },
        };
        let upper = Bound::Excluded(vec![TAG_FEED + 1]);
        let mut streams: HashMap<u64, StreamKey> = HashMap::new();
        for item in self.tree.range::<Vec<u8>, _>((lower, upper)) {
            let (key, _) = item.map_err(sled_err("read the change feed"))?;
            let (seq, sid, id) = parse_feed_key(&key).ok_or_else(|| corrupt("change feed key"))?;
            let stream = match streams.entry(sid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(self.row(sid)?.stream),
            };
            if !query.filter.matches(stream) {
                continue;
            }
            let id = std::str::from_utf8(id).map_err(|_| corrupt("record id is not UTF-8"))?;
            let mut record_key = record_prefix(sid);
            record_key.extend_from_slice(id.as_bytes());
            let value = self
                .tree
                .get(&record_key)
                .map_err(sled_err("read the change feed"))?
                .ok_or_else(|| {
                    corrupt(format!(
                        "the change feed lists record {id:?} of stream {stream} at {seq}, which the store does not hold"
                    ))
                })?;
            let view = RecordView::new(&value)?;
            let kind = change_of(&view, &value);
            let record = view.to_record(id.to_owned())?;
            if record.seq != seq {
                return Err(corrupt(format!(
                    "the change feed lists record {id:?} of stream {stream} at {seq}, but its last change is {}",
                    record.seq
                )));
            }
            changes.push(Change {
                stream: stream.clone(),
                kind,
                record,
            });
            if changes.len() == query.limit {
                break;
            }
        }
        Ok(ChangeBatch::assemble(query, changes, last))
    }

    pub(super) fn last_seq(&self) -> Result<u64> {
        self.get_u64(KEY_SEQ)
    }

    pub(super) fn consumer_position(&self, name: &str) -> Result<FeedPosition> {
        match self
            .tree
            .get(consumer_key(name))
            .map_err(sled_err("read a consumer position"))?
        {
            Some(v) => decode_position(&v).map_err(corrupt),
            None => Ok(FeedPosition::START),
        }
    }

    pub(super) fn ack(&self, name: &str, position: &FeedPosition) -> Result<FeedPosition> {
        let _w = self.lock_write();
        check_ack(name, position, self.get_u64(KEY_SEQ)?)?;
        let stored = self.consumer_position(name)?;
        if *position <= stored {
            return Ok(stored);
        }
        let mut batch = Batch::default();
        batch.insert(consumer_key(name), encode_position(position));
        self.apply(batch, "acknowledge a feed position")?;
        Ok(position.clone())
    }

    pub(super) fn consumers(&self) -> Result<Vec<Consumer>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([TAG_CONSUMER]) {
            let (key, value) = item.map_err(sled_err("list consumers"))?;
            let name = std::str::from_utf8(&key[1..])
                .map_err(|_| corrupt("consumer name is not UTF-8"))?
                .to_owned();
            out.push(Consumer {
                name,
                position: decode_position(&value).map_err(corrupt)?,
            });
        }
        Ok(out)
    }

    pub(super) fn remove_consumer(&self, name: &str) -> Result<bool> {
        let _w = self.lock_write();
        let key = consumer_key(name);
        if self
            .tree
            .get(&key)
            .map_err(sled_err("remove a consumer"))?
            .is_none()
        {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.remove(key);
        self.apply(batch, "remove a consumer")?;
        Ok(true)
    }

    pub(super) fn count(&self, stream: &StreamKey) -> Result<RecordCounts> {
        let _r = self.read_guard();
        match self.sid(stream)? {
            Some(sid) => {
                let row = self.row(sid)?;
                Ok(RecordCounts {
                    live: row.live,
                    deleted: row.deleted,
                })
            }
            None => Ok(RecordCounts::default()),
        }
    }
}

/// What is wrong with an index key (it must name a record that carries its sequence
/// number), if anything.
pub(super) fn feed_key_problem(tree: &Tree, key: &[u8]) -> Result<Option<String>> {
    let Some((seq, sid, id)) = parse_feed_key(key) else {
        return Ok(Some(format!(
            "change feed key {} is malformed",
            hex::encode(key)
        )));
    };
    let mut record_key = record_prefix(sid);
    record_key.extend_from_slice(id);
    let name = String::from_utf8_lossy(id);
    Ok(match tree.get(&record_key).map_err(sled_err("check"))? {
        None => Some(format!(
            "the change feed lists record {name:?} of stream {sid} at {seq}, which the store does not hold"
        )),
        Some(v) => match RecordView::parse(&v) {
            Ok(view) if view.u64_at(OFF_SEQ) != seq => Some(format!(
                "the change feed lists record {name:?} of stream {sid} at {seq}, but its last change is {}",
                view.u64_at(OFF_SEQ)
            )),
            _ => None,
        },
    })
}

/// Whether the index holds the key of a record (stream `sid`, `id`, last changed by
/// commit `seq`).
pub(super) fn is_indexed(tree: &Tree, seq: u64, sid: u64, id: &[u8]) -> Result<bool> {
    Ok(tree
        .get(feed_key(seq, sid, id))
        .map_err(sled_err("check"))?
        .is_some())
}

/// Bring a format-1 store to format 2: index every record in the change feed, then
/// record the new format. Idempotent: the index keys of an interrupted run are removed
/// first, and the format is written last, so an interrupted migration is simply run
/// again by the next open. Each chunk is one batch; the store is not used meanwhile
/// (sled's lock is held by this process).
pub(super) fn migrate_from_format_1(tree: &Tree, format: u64) -> Result<()> {
    let err = sled_err("migrate the store to format 2 (the change feed's index)");
    loop {
        let keys: Vec<_> = tree
            .scan_prefix([TAG_FEED])
            .keys()
            .take(MIGRATION_CHUNK)
            .collect::<std::result::Result<_, _>>()
            .map_err(&err)?;
        if keys.is_empty() {
            break;
        }
        let mut batch = Batch::default();
        for k in keys {
            batch.remove(k);
        }
        tree.apply_batch(batch).map_err(&err)?;
    }
    let mut batch = Batch::default();
    let mut pending = 0;
    let mut indexed = 0u64;
    for item in tree.scan_prefix([TAG_RECORD]) {
        let (key, value) = item.map_err(&err)?;
        if key.len() < 9 {
            continue;
        }
        let sid = be_u64(&key[1..9]).ok_or_else(|| corrupt("record key"))?;
        let seq = RecordView::new(&value)?.u64_at(OFF_SEQ);
        batch.insert(feed_key(seq, sid, &key[9..]), &[][..]);
        pending += 1;
        indexed += 1;
        if pending == MIGRATION_CHUNK {
            tree.apply_batch(std::mem::take(&mut batch)).map_err(&err)?;
            pending = 0;
        }
    }
    batch.insert(KEY_FORMAT, &format.to_be_bytes());
    tree.apply_batch(batch).map_err(&err)?;
    tree.flush().map_err(&err)?;
    tracing::info!(
        records = indexed,
        "sled store migrated to format {format}: every record indexed in the change feed"
    );
    Ok(())
}

impl super::SledStore {
    /// A receiver of the commit signal (sled stores have one process).
    pub(super) fn feed_subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.signal.subscribe()
    }
}
