//! The consistency check of a sled store ([`SledStore::check`](super::SledStore::check)).

use std::collections::HashMap;

use super::Inner;
use super::error::sled_err;
use super::feed::{FeedCheck, TAG_CONSUMER, TAG_FEED, decode_position};
use super::rows::{OFF_ACTION, OFF_SEQ, RecordView, StreamRow};
use super::schema::{
    KEY_FORMAT, KEY_SEQ, KEY_SID, TAG_INDEX, TAG_META, TAG_RECORD, TAG_STREAM, be_u64, index_key,
    record_prefix,
};
use crate::error::Result;
use crate::record::LastAction;

/// At most this many problems are listed (the rest are counted).
const MAX_LISTED: usize = 50;

/// The result of [`SledStore::check`](super::SledStore::check).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCheck {
    /// Streams found.
    pub streams: u64,
    /// Records found (tombstones included).
    pub records: u64,
    /// What is wrong, one line each (the first 50, then a line counting the rest);
    /// empty when the store is consistent.
    pub problems: Vec<String>,
}

impl StoreCheck {
    /// Whether the check found nothing wrong.
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Default)]
struct Problems {
    listed: Vec<String>,
    more: u64,
}

impl Problems {
    fn add(&mut self, problem: String) {
        if self.listed.len() < MAX_LISTED {
            self.listed.push(problem);
        } else {
            self.more += 1;
        }
    }

    fn into_lines(mut self) -> Vec<String> {
        if self.more > 0 {
            self.listed.push(format!("and {} more problems", self.more));
        }
        self.listed
    }
}

impl Inner {
    /// One pass over every key, then the per-stream comparisons. Holds the read side of
    /// the apply lock, so it sees the store between two batches.
    pub(super) fn check(&self) -> Result<StoreCheck> {
        let _r = self.read_guard();
        let mut problems = Problems::default();
        let mut seq = None;
        let mut last_sid = None;
        let mut index: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut rows: HashMap<u64, StreamRow> = HashMap::new();
        // Per stream number: (live, deleted) records found.
        let mut counted: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut max_record_seq = (0u64, Vec::new());
        let mut records = 0u64;
        let mut history = super::history::HistoryCheck::default();
        let mut feed = FeedCheck::default();
        // Per stream number and generation: live records stamped with it (`sweep.rs`).
        let mut stamped: HashMap<(u64, u64), u64> = HashMap::new();
        for item in self.tree.iter() {
            let (key, value) = item.map_err(sled_err("check"))?;
            match key.first().copied() {
                Some(TAG_META) => match &key[..] {
                    KEY_FORMAT => {}
                    KEY_SEQ => seq = be_u64(&value),
                    KEY_SID => last_sid = be_u64(&value),
                    super::history::KEY_RUN_SEQ => history.run_seq = be_u64(&value),
                    other => problems.add(format!("unknown key {}", hex::encode(other))),
                },
                Some(TAG_INDEX) => match be_u64(&value) {
                    Some(sid) => {
                        if index.insert(sid, key.to_vec()).is_some() {
                            problems.add(format!("stream number {sid} is indexed twice"));
                        }
                    }
                    None => problems.add(format!(
                        "index entry {} has a malformed stream number",
                        hex::encode(&key)
                    )),
                },
                Some(TAG_STREAM) => {
                    let sid = key.get(1..).and_then(be_u64);
                    match (sid, serde_json::from_slice::<StreamRow>(&value)) {
                        (Some(sid), Ok(row)) => {
                            rows.insert(sid, row);
                        }
                        (None, _) => problems
                            .add(format!("stream row key {} is malformed", hex::encode(&key))),
                        (Some(sid), Err(e)) => problems
                            .add(format!("the row of stream number {sid} is malformed: {e}")),
                    }
                }
                Some(TAG_RECORD) if key.len() > 9 => {
                    records += 1;
                    let sid = be_u64(&key[1..9]).expect("8 bytes");
                    let id = String::from_utf8_lossy(&key[9..]);
                    match record_problem(&key[9..], &value) {
                        Some(problem) => {
                            problems.add(format!("record {id:?} of stream {sid}: {problem}"))
                        }
                        None => {
                            let view = RecordView::new(&value)?;
                            let entry = counted.entry(sid).or_default();
                            if view.deleted() {
                                entry.1 += 1;
                            } else {
                                entry.0 += 1;
                                *stamped.entry((sid, view.seen_gen())).or_default() += 1;
                            }
                            let record_seq = view.u64_at(OFF_SEQ);
                            if record_seq > max_record_seq.0 {
                                max_record_seq = (record_seq, key.to_vec());
                            }
                            feed.record(record_seq);
                        }
                    }
                }
                Some(super::schema::TAG_HISTORY) => {
                    if let Some(problem) = history.entry(&key, &value) {
                        problems.add(problem);
                    }
                }
                Some(TAG_FEED) => {
                    for problem in feed.entry(&self.tree, &key, &value)? {
                        problems.add(problem);
                    }
                }
                Some(TAG_CONSUMER) => {
                    if let Err(problem) = decode_position(&value) {
                        problems.add(format!(
                            "consumer {:?}: {problem}",
                            String::from_utf8_lossy(&key[1..])
                        ));
                    }
                }
                // The outbox's keys, checked by its module.
                Some(super::outbox::TAG_OUTBOX | super::outbox::TAG_QUEUE) => {
                    if let Some(problem) = super::outbox::key_problem(&key, &value) {
                        problems.add(problem);
                    }
                }
                _ => problems.add(format!("unknown key {}", hex::encode(&key))),
            }
        }

        let seq = seq.unwrap_or(0);
        if max_record_seq.0 > seq {
            problems.add(format!(
                "a record ({}) carries sequence number {}, past the store's last commit {seq}",
                hex::encode(&max_record_seq.1),
                max_record_seq.0
            ));
        }
        let last_sid = last_sid.unwrap_or(0);
        let mut sids: Vec<u64> = index.keys().chain(rows.keys()).copied().collect();
        sids.sort_unstable();
        sids.dedup();
        for &sid in &sids {
            if sid == 0 || sid > last_sid {
                problems.add(format!(
                    "stream number {sid} is past the last one handed out ({last_sid})"
                ));
            }
            let Some(row) = rows.get(&sid) else {
                problems.add(format!("stream number {sid} is indexed but has no row"));
                continue;
            };
            let name = &row.stream;
            match index.get(&sid) {
                None => problems.add(format!("stream {name} (number {sid}) is not indexed")),
                Some(key) if *key != index_key(name) => problems.add(format!(
                    "stream {name} (number {sid}) is indexed under another stream key"
                )),
                Some(_) => {}
            }
            let (live, deleted) = counted.get(&sid).copied().unwrap_or_default();
            if (live, deleted) != (row.live, row.deleted) {
                problems.add(format!(
                    "stream {name}: its row counts {} live and {} deleted records, the store holds {live} and {deleted}",
                    row.live, row.deleted
                ));
            }
            if let Some(seen) = row.seen_live {
                let held = stamped.get(&(sid, seen.generation)).copied().unwrap_or(0);
                if held != seen.count {
                    problems.add(format!(
                        "stream {name}: its row counts {} live records stamped with generation {}, the store holds {held}",
                        seen.count, seen.generation
                    ));
                }
            }
            if let (Some(cursor), Some(id)) = (&row.state.cursor, &row.cursor_record) {
                let mut key = record_prefix(sid);
                key.extend_from_slice(id.as_bytes());
                if self.tree.get(&key).map_err(sled_err("check"))?.is_none() {
                    problems.add(format!(
                        "stream {name}: its cursor {cursor} is the cursor of record {id:?}, which the store does not hold"
                    ));
                }
            }
        }
        for sid in counted.keys().filter(|sid| !rows.contains_key(sid)) {
            problems.add(format!("records of stream number {sid}, which has no row"));
        }
        for problem in feed.problems() {
            problems.add(problem);
        }
        for problem in history.problems(|sid| rows.contains_key(&sid)) {
            problems.add(problem);
        }
        Ok(StoreCheck {
            streams: rows.len() as u64,
            records,
            problems: problems.into_lines(),
        })
    }
}

/// What is wrong with a record's id or encoded value, if anything.
fn record_problem(id: &[u8], value: &[u8]) -> Option<String> {
    if std::str::from_utf8(id).is_err() {
        return Some("the id is not UTF-8".into());
    }
    let view = match RecordView::parse(value) {
        Ok(view) => view,
        Err(problem) => return Some(problem.into()),
    };
    if LastAction::from_code(value[OFF_ACTION]).is_none() {
        return Some("unknown last action".into());
    }
    if view.cursor().is_err() {
        return Some("the cursor is not UTF-8".into());
    }
    if std::str::from_utf8(view.payload_bytes()).is_err() {
        return Some("the payload is not UTF-8".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Cursor, Metadata};
    use crate::sink::sled::rows::{HEADER, encode_record};
    use crate::time::Timestamp;

    fn value(cursor: &str, payload: &[u8]) -> Vec<u8> {
        let meta = Metadata {
            first_seen_at: Timestamp::from_micros(1),
            last_modified_at: Timestamp::from_micros(2),
            last_action: LastAction::Added,
            deleted_at: None,
            pruned_at: None,
            cursor: Cursor(cursor.into()),
        };
        encode_record(1, 0, &meta, payload)
    }

    #[test]
    fn record_problems_are_named() {
        assert_eq!(record_problem(b"a", &value("c", b"{}")), None);
        assert_eq!(
            record_problem(b"\xff", &value("c", b"{}")).as_deref(),
            Some("the id is not UTF-8")
        );
        assert_eq!(
            record_problem(b"a", &value("c", b"{}")[..HEADER - 1]).as_deref(),
            Some("record value has an unknown layout")
        );
        assert_eq!(
            record_problem(b"a", &value("cursor", b"")[..HEADER + 2]).as_deref(),
            Some("record value is truncated")
        );
        let mut bad_action = value("c", b"{}");
        bad_action[OFF_ACTION] = 99;
        assert_eq!(
            record_problem(b"a", &bad_action).as_deref(),
            Some("unknown last action")
        );
        let mut bad_cursor = value("c", b"{}");
        bad_cursor[HEADER] = 0xff;
        assert_eq!(
            record_problem(b"a", &bad_cursor).as_deref(),
            Some("the cursor is not UTF-8")
        );
        assert_eq!(
            record_problem(b"a", &value("c", b"{\xff}")).as_deref(),
            Some("the payload is not UTF-8")
        );
    }
}
