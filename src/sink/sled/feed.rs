//! The sled store's side of the change feed: its index, one entry per commit, kept in
//! each commit's batch, the feed's reads, named consumers, the counts of a stream, the
//! check of the index, and the migration of format-1 and format-2 stores.
//!
//! | key | value |
//! |---|---|
//! | `'e'` + seq | a commit's header: how many of its records it is still the last change of (`u64`), then how many chunks hold its ids (`u32`) |
//! | `'e'` + seq + chunk | a chunk of the commit's ids: the stream number (`u64`), then up to [`CHUNK_IDS`] record ids in code-point order, each prefixed with its length (`u32`) |
//! | `'k'` + consumer name | a named consumer's position: seq (`u64` big-endian), then `0`, or `1` and the record id |
//!
//! (seq and chunk big-endian, so the entries iterate in commit order, then id order.)
//!
//! A record's change kind is kept in two bits of its value's flags byte
//! ([`set_change`]); a record written by format 1 has none and is read with the kind
//! derived from its metadata ([`ChangeKind::of_legacy`]). Its value also holds the
//! sequence number of its last change.
//!
//! The index is per commit, not per record, so that the commit path writes a few keys
//! per commit instead of removing and adding one key per changed record: a commit that
//! changes records writes its entry ([`FeedEntry`]), and for each distinct commit whose
//! records it rewrites, decrements that commit's live count by the number rewritten,
//! removing the entry (header and chunks) when it reaches 0. A reader walks the entries
//! from its position and fetches each id's record: a record whose sequence number is not
//! the entry's was changed again by a later commit and is skipped there (it is listed at
//! its last change). All of it is in the batch that writes the records, so the index and
//! the records change together. Commits are serialized by the store's writer lock and a
//! batch is applied under the apply lock that readers hold while they read, so a feed
//! read sees whole commits, in order.

use std::collections::{BTreeMap, HashMap};

use ::sled::{Batch, Tree};

use super::Inner;
use super::error::{corrupt, sled_err, sled_error};
use super::rows::{OFF_ACTION, OFF_FLAGS, OFF_SEQ, RecordView};
use super::schema::{KEY_FORMAT, KEY_SEQ, TAG_RECORD, be_u64, record_prefix};
use crate::error::Result;
use crate::feed::{
    Change, ChangeBatch, ChangeKind, ChangeQuery, Consumer, FeedPosition, RecordCounts, check_ack,
};
use crate::record::StreamKey;

/// The first byte of the feed's index keys (format 3: one entry per commit).
pub(super) const TAG_FEED: u8 = b'e';
/// The first byte of format 2's index keys (one per record), removed by the migration.
pub(super) const TAG_FEED_V2: u8 = b'c';
/// The first byte of the consumers' keys.
pub(super) const TAG_CONSUMER: u8 = b'k';

/// At most this many ids in one chunk of a commit's entry (a full re-read's sweep can
/// change a whole stream in one commit).
pub(super) const CHUNK_IDS: usize = 1_000;

/// The two bits of a record value's flags byte that hold its change kind (0: none kept).
const CHANGE_SHIFT: u8 = 3;
const CHANGE_MASK: u8 = 0b11 << CHANGE_SHIFT;

/// Keys removed per batch while migrating.
const MIGRATION_CHUNK: usize = 10_000;

/// `'e'` + seq: the key of a commit's header, and the prefix of its chunks' keys.
fn header_key(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = TAG_FEED;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `'e'` + seq + chunk: the key of a chunk of a commit's ids.
fn chunk_key(seq: u64, chunk: u32) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..9].copy_from_slice(&header_key(seq));
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

/// An index key: a commit's header (seq) or one of its chunks (seq, chunk).
enum FeedKey {
    Header(u64),
    Chunk(u64, u32),
}

fn parse_feed_key(key: &[u8]) -> Option<FeedKey> {
    if key.first() != Some(&TAG_FEED) {
        return None;
    }
    let seq = be_u64(key.get(1..9)?)?;
    match key.len() {
        9 => Some(FeedKey::Header(seq)),
        13 => Some(FeedKey::Chunk(
            seq,
            u32::from_be_bytes(key[9..13].try_into().ok()?),
        )),
        _ => None,
    }
}

/// A commit's header: records it is still the last change of, and chunks of ids.
fn encode_header(live: u64, chunks: u32) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..8].copy_from_slice(&live.to_be_bytes());
    v[8..].copy_from_slice(&chunks.to_be_bytes());
    v
}

fn decode_header(value: &[u8]) -> std::result::Result<(u64, u32), &'static str> {
    if value.len() != 12 {
        return Err("change feed header has an unknown layout");
    }
    let live = be_u64(&value[..8]).ok_or("change feed header is truncated")?;
    let chunks = u32::from_be_bytes(value[8..].try_into().expect("4 bytes"));
    Ok((live, chunks))
}

/// A chunk of ids: the stream number, then each id prefixed with its length.
fn encode_chunk(sid: u64, ids: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + ids.iter().map(|id| 4 + id.len()).sum::<usize>());
    v.extend_from_slice(&sid.to_be_bytes());
    for id in ids {
        v.extend_from_slice(&(id.len() as u32).to_be_bytes());
        v.extend_from_slice(id);
    }
    v
}

/// A chunk's stream number and ids, or what is wrong with it.
fn decode_chunk(value: &[u8]) -> std::result::Result<(u64, Vec<&[u8]>), &'static str> {
    let sid = value
        .get(..8)
        .and_then(be_u64)
        .ok_or("change feed chunk is truncated")?;
    let mut ids = Vec::new();
    let mut rest = &value[8..];
    while !rest.is_empty() {
        let len = rest
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or("change feed chunk is truncated")?;
        let id = rest
            .get(4..4 + len)
            .ok_or("change feed chunk is truncated")?;
        ids.push(id);
        rest = &rest[4 + len..];
    }
    Ok((sid, ids))
}

/// What one commit does to the index, gathered while it plans its writes and put in
/// its batch by [`FeedEntry::write`].
#[derive(Default)]
pub(super) struct FeedEntry {
    /// The ids the commit changes (of its one stream).
    ids: Vec<Vec<u8>>,
    /// Per earlier commit: how many of its records this one changes again.
    retired: HashMap<u64, u64>,
}

impl FeedEntry {
    /// The commit changes record `id`, whose stored value was `old` (none for a new
    /// record).
    pub(super) fn changed(&mut self, id: &[u8], old: Option<&[u8]>) -> Result<()> {
        if let Some(old) = old {
            let old_seq = RecordView::new(old)?.u64_at(OFF_SEQ);
            *self.retired.entry(old_seq).or_default() += 1;
        }
        self.ids.push(id.to_vec());
        Ok(())
    }

    /// Put the entry of commit `seq` (stream `sid`) in its `batch`, and retire the ids
    /// it supersedes: one read of each earlier commit's header.
    pub(super) fn write(
        mut self,
        tree: &Tree,
        batch: &mut Batch,
        seq: u64,
        sid: u64,
    ) -> Result<()> {
        for (&old_seq, &count) in &self.retired {
            let key = header_key(old_seq);
            let value = tree
                .get(key)
                .map_err(sled_err("read the change feed"))?
                .ok_or_else(|| {
                    corrupt(format!(
                        "the change feed has no entry for commit {old_seq}, the last change of records this commit changes"
                    ))
                })?;
            let (live, chunks) = decode_header(&value).map_err(corrupt)?;
            let live = live.checked_sub(count).ok_or_else(|| {
                corrupt(format!(
                    "the change feed's entry for commit {old_seq} counts {live} records, fewer than the {count} this commit changes again"
                ))
            })?;
            if live == 0 {
                batch.remove(&key[..]);
                for chunk in 0..chunks {
                    batch.remove(&chunk_key(old_seq, chunk)[..]);
                }
            } else {
                batch.insert(&key[..], &encode_header(live, chunks)[..]);
            }
        }
        if self.ids.is_empty() {
            return Ok(());
        }
        self.ids.sort_unstable();
        let chunks = self.ids.chunks(CHUNK_IDS);
        let count = u32::try_from(chunks.len()).map_err(|_| corrupt("too many ids in a commit"))?;
        for (n, ids) in chunks.enumerate() {
            let ids: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
            batch.insert(&chunk_key(seq, n as u32)[..], encode_chunk(sid, &ids));
        }
        batch.insert(
            &header_key(seq)[..],
            &encode_header(self.ids.len() as u64, count)[..],
        );
        Ok(())
    }
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
        // Inside commit `since.seq`, the ids after `since.id`; else from the next commit.
        let (lower, after) = match &since.id {
            None => match since.seq.checked_add(1) {
                Some(next) => (header_key(next), None),
                None => return Ok(ChangeBatch::assemble(query, changes, last)),
            },
            Some(id) => (header_key(since.seq), Some(id.as_bytes())),
        };
        let mut streams: HashMap<u64, StreamKey> = HashMap::new();
        let mut record_key = Vec::with_capacity(9 + 64);
        'entries: for item in self.tree.range(lower.to_vec()..vec![TAG_FEED + 1]) {
            let (key, value) = item.map_err(sled_err("read the change feed"))?;
            let seq = match parse_feed_key(&key) {
                Some(FeedKey::Chunk(seq, _)) => seq,
                Some(FeedKey::Header(_)) => continue,
                None => return Err(corrupt("change feed key")),
            };
            let (sid, ids) = decode_chunk(&value).map_err(corrupt)?;
            let stream = match streams.entry(sid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(self.row(sid)?.stream),
            };
            if !query.filter.matches(stream) {
                continue;
            }
            let after = after.filter(|_| seq == since.seq);
            for id in ids {
                if after.is_some_and(|after| id <= after) {
                    continue;
                }
                let id = std::str::from_utf8(id).map_err(|_| corrupt("record id is not UTF-8"))?;
                record_key.clear();
                record_key.extend_from_slice(&record_prefix(sid));
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
                if view.u64_at(OFF_SEQ) != seq {
                    // Changed again by a later commit: listed there.
                    continue;
                }
                let kind = change_of(&view, &value);
                changes.push(Change {
                    stream: stream.clone(),
                    kind,
                    record: view.to_record(id.to_owned())?,
                });
                if changes.len() == query.limit {
                    break 'entries;
                }
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

/// The check of the index, fed every index key and every record's sequence number by
/// the store's check (in key order: the index keys come before the records).
#[derive(Default)]
pub(super) struct FeedCheck {
    /// Per commit: its header's live count and number of chunks.
    headers: BTreeMap<u64, (u64, u32)>,
    /// Per commit: its chunks seen, its stream number, and its last id seen.
    chunks: BTreeMap<u64, (Vec<u32>, u64, Vec<u8>)>,
    /// Per commit: the ids of its entry whose record it is the last change of.
    matched: HashMap<u64, u64>,
    /// Per commit: the records it is the last change of.
    records: HashMap<u64, u64>,
}

impl FeedCheck {
    /// Check an index key and its value; what is wrong with it, if anything.
    pub(super) fn entry(&mut self, tree: &Tree, key: &[u8], value: &[u8]) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        match parse_feed_key(key) {
            None => problems.push(format!("change feed key {} is malformed", hex::encode(key))),
            Some(FeedKey::Header(seq)) => match decode_header(value) {
                Ok(header) => {
                    self.headers.insert(seq, header);
                }
                Err(problem) => problems.push(format!("commit {seq}: {problem}")),
            },
            Some(FeedKey::Chunk(seq, chunk)) => {
                let (sid, ids) = match decode_chunk(value) {
                    Ok(decoded) => decoded,
                    Err(problem) => {
                        problems.push(format!("commit {seq}, chunk {chunk}: {problem}"));
                        return Ok(problems);
                    }
                };
                if ids.is_empty() {
                    problems.push(format!(
                        "commit {seq}, chunk {chunk}: the change feed chunk is empty"
                    ));
                }
                let seen = self
                    .chunks
                    .entry(seq)
                    .or_insert_with(|| (Vec::new(), sid, Vec::new()));
                seen.0.push(chunk);
                if seen.1 != sid {
                    problems.push(format!(
                        "commit {seq}: the change feed's chunks name streams {} and {sid}",
                        seen.1
                    ));
                }
                let mut record_key = record_prefix(sid);
                for id in ids {
                    let name = String::from_utf8_lossy(id);
                    if !seen.2.is_empty() && id <= &seen.2[..] {
                        problems.push(format!(
                            "commit {seq}: the change feed lists record {name:?} out of order"
                        ));
                    }
                    seen.2 = id.to_vec();
                    record_key.truncate(9);
                    record_key.extend_from_slice(id);
                    match tree.get(&record_key).map_err(sled_err("check"))? {
                        None => problems.push(format!(
                            "the change feed lists record {name:?} of stream {sid} at {seq}, which the store does not hold"
                        )),
                        Some(v) => {
                            if RecordView::parse(&v).is_ok_and(|view| view.u64_at(OFF_SEQ) == seq) {
                                *self.matched.entry(seq).or_default() += 1;
                            }
                        }
                    }
                }
            }
        }
        Ok(problems)
    }

    /// A record whose last change is commit `seq`.
    pub(super) fn record(&mut self, seq: u64) {
        *self.records.entry(seq).or_default() += 1;
    }

    /// What is wrong with the index as a whole.
    pub(super) fn problems(self) -> Vec<String> {
        let mut problems = Vec::new();
        for (&seq, &(live, chunks)) in &self.headers {
            let matched = self.matched.get(&seq).copied().unwrap_or(0);
            if live == 0 {
                problems.push(format!(
                    "the change feed keeps an entry for commit {seq}, which is the last change of no record"
                ));
            }
            if live != matched {
                problems.push(format!(
                    "the change feed's entry for commit {seq} counts {live} records it is the last change of, its ids name {matched}"
                ));
            }
            let seen = self
                .chunks
                .get(&seq)
                .map(|c| c.0.clone())
                .unwrap_or_default();
            if seen != (0..chunks).collect::<Vec<_>>() {
                problems.push(format!(
                    "the change feed's entry for commit {seq} has {} chunks, its header says {chunks}",
                    seen.len()
                ));
            }
        }
        for seq in self
            .chunks
            .keys()
            .filter(|seq| !self.headers.contains_key(seq))
        {
            problems.push(format!(
                "the change feed holds ids of commit {seq} without its header"
            ));
        }
        let mut records: Vec<_> = self.records.iter().collect();
        records.sort_unstable();
        for (&seq, &count) in records {
            let matched = self.matched.get(&seq).copied().unwrap_or(0);
            if matched != count {
                problems.push(format!(
                    "{} of the {count} records last changed by commit {seq} are missing from the change feed's index",
                    count - matched.min(count)
                ));
            }
        }
        problems
    }
}

/// Remove every key starting with `prefix`, a batch of [`MIGRATION_CHUNK`] at a time.
fn remove_prefix(
    tree: &Tree,
    prefix: &[u8],
    err: &impl Fn(::sled::Error) -> crate::Error,
) -> Result<()> {
    loop {
        let keys: Vec<_> = tree
            .scan_prefix(prefix)
            .keys()
            .take(MIGRATION_CHUNK)
            .collect::<std::result::Result<_, _>>()
            .map_err(err)?;
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for k in keys {
            batch.remove(k);
        }
        tree.apply_batch(batch).map_err(err)?;
    }
}

/// Bring a format-1 store (no index) or format-2 store (one index key per record) to
/// `format` (one entry per commit): build the entries from the records, grouped by
/// their sequence number, stream by stream (a commit changes one stream), then remove
/// format 2's keys, and record the new format last. Idempotent: the entries of an
/// interrupted run are removed first and everything is derived from the records, so an
/// interrupted migration is simply run again by the next open. The store is not used
/// meanwhile (sled's lock is held by this process).
pub(super) fn migrate(tree: &Tree, from: u64, format: u64) -> Result<()> {
    let operation = format!(
        "migrate the store from format {from} to format {format} (the change feed's index)"
    );
    let err = |e: ::sled::Error| sled_error(operation.clone(), e);
    remove_prefix(tree, &[TAG_FEED], &err)?;
    let mut batch = Batch::default();
    let mut pending = 0usize;
    let mut indexed = 0u64;
    let mut commits = 0u64;
    // The current stream's ids, per commit, in id order.
    let mut stream: Option<u64> = None;
    let mut by_seq: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut flush = |sid: u64,
                     by_seq: &mut BTreeMap<u64, Vec<Vec<u8>>>,
                     batch: &mut Batch,
                     pending: &mut usize|
     -> Result<()> {
        for (seq, ids) in std::mem::take(by_seq) {
            let mut count = 0u32;
            for (n, chunk) in ids.chunks(CHUNK_IDS).enumerate() {
                let chunk: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                batch.insert(&chunk_key(seq, n as u32)[..], encode_chunk(sid, &chunk));
                count += 1;
            }
            batch.insert(
                &header_key(seq)[..],
                &encode_header(ids.len() as u64, count)[..],
            );
            commits += 1;
            *pending += ids.len();
            if *pending >= MIGRATION_CHUNK {
                tree.apply_batch(std::mem::take(batch)).map_err(&err)?;
                *pending = 0;
            }
        }
        Ok(())
    };
    for item in tree.scan_prefix([TAG_RECORD]) {
        let (key, value) = item.map_err(&err)?;
        if key.len() < 9 {
            continue;
        }
        let sid = be_u64(&key[1..9]).ok_or_else(|| corrupt("record key"))?;
        if let Some(previous) = stream.filter(|&s| s != sid) {
            flush(previous, &mut by_seq, &mut batch, &mut pending)?;
        }
        stream = Some(sid);
        let seq = RecordView::new(&value)?.u64_at(OFF_SEQ);
        by_seq.entry(seq).or_default().push(key[9..].to_vec());
        indexed += 1;
    }
    if let Some(sid) = stream {
        flush(sid, &mut by_seq, &mut batch, &mut pending)?;
    }
    tree.apply_batch(batch).map_err(&err)?;
    remove_prefix(tree, &[TAG_FEED_V2], &err)?;
    tree.insert(KEY_FORMAT, &format.to_be_bytes())
        .map_err(&err)?;
    tree.flush().map_err(&err)?;
    tracing::info!(
        records = indexed,
        commits,
        "sled store migrated from format {from} to format {format}: the change feed indexed per commit"
    );
    Ok(())
}

impl super::SledStore {
    /// A receiver of the commit signal (sled stores have one process).
    pub(super) fn feed_subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.signal.subscribe()
    }
}
