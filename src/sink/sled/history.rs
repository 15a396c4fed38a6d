//! The run history of the sled store: tag `h` keys and the stream row's last runs.
//!
//! | key | value |
//! |---|---|
//! | `0x00 "runs"` | the number of the last run recorded, store-wide (`u64`, big-endian) |
//! | `'h'` + sid + run number | one recorded run: its summary as JSON |
//!
//! A stream's runs iterate oldest first under its prefix (the run number is big-endian),
//! so the newest are read by iterating backwards. Recording a run is one batch: the
//! run, the run counter, the stream's row (last run, last successful run) and the
//! removal of the stream's runs older than the last `keep`.

use std::collections::HashMap;

use ::sled::Batch;

use super::error::{corrupt, sled_err};
use super::rows::StreamRow;
use super::schema::{TAG_HISTORY, be_u64, stream_row_key};
use super::{BACKEND, Inner};
use crate::error::{Error, Result};
use crate::record::StreamKey;
use crate::sink::history::runs_to_keep;
use crate::sink::{HistoryQuery, RunEntry, RunOutcome, RunSummary, StreamStatus};

/// The store-wide run counter.
pub(super) const KEY_RUN_SEQ: &[u8] = b"\x00runs";

/// `'h'` + sid: the prefix of a stream's runs.
fn history_prefix(sid: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = TAG_HISTORY;
    key[1..].copy_from_slice(&sid.to_be_bytes());
    key
}

fn history_key(sid: u64, number: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..9].copy_from_slice(&history_prefix(sid));
    key[9..].copy_from_slice(&number.to_be_bytes());
    key
}

fn decode(value: &[u8]) -> Result<RunSummary> {
    serde_json::from_slice(value).map_err(|e| corrupt(format!("recorded run: {e}")))
}

impl Inner {
    /// Record `run` of `stream`, keeping the stream's last `keep` runs.
    pub(super) fn record_run(
        &self,
        stream: &StreamKey,
        run: &RunSummary,
        keep: usize,
    ) -> Result<()> {
        let json = serde_json::to_vec(run)
            .map_err(|e| Error::store(BACKEND, "encode the run", false, e))?;
        let _w = self.lock_write();
        let mut batch = Batch::default();
        let (sid, mut row) = self.row_for_write(stream, &mut batch)?;
        let number = self.get_u64(KEY_RUN_SEQ)? + 1;
        batch.insert(KEY_RUN_SEQ, &number.to_be_bytes());
        batch.insert(&history_key(sid, number)[..], json);
        // The stream's runs, oldest first; with the new one there is one more.
        let mut older = Vec::new();
        for item in self.tree.scan_prefix(history_prefix(sid)) {
            let (k, _) = item.map_err(sled_err("record_run"))?;
            older.push(k);
        }
        let excess = (older.len() + 1).saturating_sub(runs_to_keep(keep));
        for k in older.into_iter().take(excess) {
            batch.remove(k);
        }
        if run.outcome == RunOutcome::Ok {
            row.last_success = Some(run.clone());
        }
        row.last_run = Some(run.clone());
        batch.insert(&stream_row_key(sid)[..], row.to_json()?);
        self.apply(batch, "record_run")
    }

    pub(super) fn last_run(&self, stream: &StreamKey) -> Result<Option<RunSummary>> {
        let _r = self.read_guard();
        match self.sid(stream)? {
            Some(sid) => Ok(self.row(sid)?.last_run),
            None => Ok(None),
        }
    }

    pub(super) fn stream_status(&self, stream: &StreamKey) -> Result<Option<StreamStatus>> {
        let _r = self.read_guard();
        match self.sid(stream)? {
            Some(sid) => Ok(Some(self.row(sid)?.into_status())),
            None => Ok(None),
        }
    }

    /// The runs `query` asks for, newest first.
    pub(super) fn run_history(&self, query: &HistoryQuery) -> Result<Vec<RunEntry>> {
        let _r = self.read_guard();
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(stream) = &query.stream {
            let Some(sid) = self.sid(stream)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for item in self.tree.scan_prefix(history_prefix(sid)).rev() {
                let (_, v) = item.map_err(sled_err("run_history"))?;
                out.push(RunEntry {
                    stream: stream.clone(),
                    run: decode(&v)?,
                });
                if out.len() == query.limit {
                    break;
                }
            }
            return Ok(out);
        }
        // Every stream's: at most `keep` runs per stream, so all of them fit.
        let mut all = Vec::new();
        for item in self.tree.scan_prefix([TAG_HISTORY]) {
            let (k, v) = item.map_err(sled_err("run_history"))?;
            let (sid, number) = parse_key(&k).ok_or_else(|| corrupt("run history key"))?;
            all.push((number, sid, v));
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut streams: HashMap<u64, StreamKey> = HashMap::new();
        let mut out = Vec::new();
        for (_, sid, v) in all.into_iter().take(query.limit) {
            let stream = match streams.get(&sid) {
                Some(s) => s.clone(),
                None => {
                    let s = self.row(sid)?.stream;
                    streams.insert(sid, s.clone());
                    s
                }
            };
            out.push(RunEntry {
                stream,
                run: decode(&v)?,
            });
        }
        Ok(out)
    }
}

impl StreamRow {
    /// The status this row gives.
    pub(super) fn into_status(self) -> StreamStatus {
        StreamStatus {
            stream: self.stream,
            state: self.state,
            totals: self.totals,
            live_records: self.live,
            deleted_records: self.deleted,
            last_run: self.last_run,
            upstream_error: self.upstream_error,
            last_success: self.last_success,
        }
    }
}

/// `(sid, run number)` of a history key.
fn parse_key(key: &[u8]) -> Option<(u64, u64)> {
    if key.len() != 17 || key[0] != TAG_HISTORY {
        return None;
    }
    Some((be_u64(&key[1..9])?, be_u64(&key[9..])?))
}

/// What the consistency check collects of the history: the run counter and every
/// entry's stream and number.
#[derive(Default)]
pub(super) struct HistoryCheck {
    pub(super) run_seq: Option<u64>,
    entries: Vec<(u64, u64)>,
}

impl HistoryCheck {
    /// Look at one `'h'` key; what is wrong with it, if anything.
    pub(super) fn entry(&mut self, key: &[u8], value: &[u8]) -> Option<String> {
        let Some((sid, number)) = parse_key(key) else {
            return Some(format!("run history key {} is malformed", hex::encode(key)));
        };
        self.entries.push((sid, number));
        decode(value)
            .err()
            .map(|e| format!("run {number} of stream number {sid}: {e}"))
    }

    /// The problems of the entries as a whole, given the streams that have rows.
    pub(super) fn problems(&self, has_row: impl Fn(u64) -> bool) -> Vec<String> {
        let last = self.run_seq.unwrap_or(0);
        let mut out = Vec::new();
        for &(sid, number) in &self.entries {
            if !has_row(sid) {
                out.push(format!(
                    "run {number} of stream number {sid}, which has no row"
                ));
            }
            if number > last {
                out.push(format!(
                    "run {number} of stream number {sid} is past the last run recorded ({last})"
                ));
            }
        }
        out
    }
}
