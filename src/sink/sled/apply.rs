//! A commit, applied: under the writer lock, read the stored versions, let
//! [`commit::prepare`] decide, and write what it prepared in one [`Batch`] with the
//! stream's row (with the record its cursor belongs to, for the check), the change
//! feed's entry of the commit (and the live counts of the earlier commits whose records
//! it changes again), and the sequence counter.

use ::sled::Batch;

use super::error::sled_err;
use super::feed::{FeedEntry, set_change};
use super::rows::{RecordView, encode_record, seen_by, tombstone};
use super::schema::{KEY_SEQ, record_prefix, stream_row_key};
use super::sweep::stamp_of;
use super::{BACKEND, Inner, corrupt};
use crate::error::Result;
use crate::sink::commit::{self, CursorRecord, Stored, Sweep, WriteKind};
use crate::sink::fault::Faults;
use crate::sink::seen::SeenTally;
use crate::sink::{Commit, CommitOutcome};

impl Inner {
    /// Apply `commit`: all of it lands in one batch, or nothing does.
    pub(super) fn commit(&self, faults: &Faults, commit: Commit) -> Result<CommitOutcome> {
        let _w = self.lock_write();
        let seq = self.get_u64(KEY_SEQ)? + 1;
        let mut batch = Batch::default();
        let (sid, mut row) = self.row_for_write(&commit.stream, &mut batch)?;

        // The stored versions, one get per distinct id; the stored value is the handle
        // (a kept payload and a seen mark are written from it).
        let mut key = record_prefix(sid);
        let prefix_len = key.len();
        let prepared = commit::prepare(&row.state, &commit, |id| {
            key.truncate(prefix_len);
            key.extend_from_slice(id.as_bytes());
            match self.tree.get(&key).map_err(sled_err("read"))? {
                Some(value) => Ok(Some(Stored {
                    version: RecordView::new(&value)?.version(id)?,
                    handle: value,
                })),
                None => Ok(None),
            }
        })?;

        let generation = prepared.generation();
        let mut entry = FeedEntry::default();
        let tally = SeenTally::of(row.seen_live, row.live, &prepared, |v| stamp_of(v))?;
        for w in prepared.writes() {
            let (payload, old) = match &w.kind {
                WriteKind::Insert { payload } => (payload.as_str().as_bytes(), None),
                WriteKind::Replace { payload, stored } => {
                    (payload.as_str().as_bytes(), Some(&stored[..]))
                }
                WriteKind::KeepPayload { stored } => {
                    (RecordView::new(stored)?.payload_bytes(), Some(&stored[..]))
                }
            };
            key.truncate(prefix_len);
            key.extend_from_slice(w.record.id.as_bytes());
            let mut value = encode_record(seq, generation, &w.record.meta, payload);
            set_change(&mut value, w.change);
            batch.insert(key.as_slice(), value);
            entry.changed(w.record.id.as_bytes(), old)?;
        }
        for s in prepared.seen() {
            key.truncate(prefix_len);
            key.extend_from_slice(s.id.as_bytes());
            batch.insert(key.as_slice(), seen_by(&s.stored, generation));
        }
        // The scan sees the records as they were before this batch: the page's own are
        // spared by id. It is skipped when the stream's count says that every live
        // record carries the full read's generation (`sweep.rs`).
        let mut swept = 0u64;
        let mut scanned = None;
        if let Some(sweep) = prepared.sweep().filter(|s| {
            !tally.nothing_to_sweep(s.generation, row.live, prepared.live_delta_of_writes())
        }) {
            #[cfg(test)]
            self.sweep_scans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Live records the sweep spares for carrying a newer generation.
            let mut newer = 0u64;
            for item in self.tree.scan_prefix(record_prefix(sid)) {
                let (k, v) = item.map_err(sled_err("sweep"))?;
                if std::str::from_utf8(&k[prefix_len..]).is_ok_and(|id| sweep.spares(id)) {
                    continue;
                }
                let view = RecordView::new(&v)?;
                if sweep.sweeps(view.seen_gen(), view.deleted()) {
                    let mut value = tombstone(&v, sweep.deleted_at, seq);
                    set_change(&mut value, Sweep::CHANGE);
                    entry.changed(&k[prefix_len..], Some(&v))?;
                    batch.insert(k, value);
                    swept += 1;
                } else if !view.deleted() && view.seen_gen() > sweep.generation {
                    newer += 1;
                }
            }
            scanned = Some((sweep.generation, newer));
        }
        entry.write(&self.tree, &mut batch, seq, sid)?;
        faults.after_records(BACKEND)?;

        match prepared.cursor_record() {
            CursorRecord::Unchanged => {}
            CursorRecord::Record(id) => row.cursor_record = Some(id.to_owned()),
            CursorRecord::Untracked => row.cursor_record = None,
        }
        let done = prepared.finish(seq, swept);
        row.state = done.state;
        row.totals.add(&done.outcome.counts);
        row.live = row
            .live
            .checked_add_signed(done.live_delta)
            .ok_or_else(|| corrupt("negative live record count"))?;
        row.deleted = row
            .deleted
            .checked_add_signed(done.deleted_delta)
            .ok_or_else(|| corrupt("negative deleted record count"))?;
        row.seen_live = tally.finish(scanned, row.live);
        batch.insert(&stream_row_key(sid)[..], row.to_json()?);
        batch.insert(KEY_SEQ, &seq.to_be_bytes());
        faults.before_commit(BACKEND)?;
        self.apply(batch, "commit")?;
        Ok(done.outcome)
    }
}
