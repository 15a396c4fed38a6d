//! The commit, prepared once for every store.
//!
//! Every store commits the same way: lock the stream, read the stored versions of the
//! page's ids, and write in one transaction. What to write is decided here, by a pure
//! function that no backend owns: [`prepare`] takes the stream's state, the [`Commit`]
//! and a lookup of stored versions, and returns a [`Prepared`] commit: the expected
//! cursor checked, every write with its payload choice (the [merge rule](crate::merge)
//! through [`plan_page`]), the generation stamp, the records a full re-read marks as
//! seen, and the sweep a completing full re-read runs. The store then applies it in its
//! own transaction, runs the sweep over its records (only the store can scan them), and
//! [`Prepared::finish`] gives the counts, the record-count changes and the stream's next
//! state.
//!
//! ```text
//! store                                   sink::commit (pure)
//! ─────                                   ───────────────────
//! begin; lock the stream, read its state
//!                                  ──────▶ prepare(state, commit, lookup)
//! lookup(id): the stored version   ◀──────   cursor check, plan_page, stamps,
//!   and the store's handle of it             payload choices, seen, sweep
//! apply writes() and seen()
//! run the sweep() (if any)
//!                                  ──────▶ finish(seq, swept)
//! write the stream row: state,     ◀──────   counts, record-count deltas,
//!   totals, record counts                    next state
//! commit
//! ```
//!
//! A lookup returns a *handle* with each stored version: whatever the store needs to
//! write that record again without looking it up twice (SQLite's rowid, sled's stored
//! value, nothing for the memory and PostgreSQL stores). Handles come back in the
//! writes and seen marks of their ids.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::feed::ChangeKind;
use crate::merge::{Counts, Outcome, PayloadSource, StoredVersionBuf, plan_page};
use crate::record::{LastAction, Metadata, RawJson, Record};
use crate::sink::{Commit, CommitOutcome, StreamState};
use crate::time::Timestamp;

/// A stored version found by a lookup, with the store's handle of its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<H> {
    /// What the merge rule needs to know of the stored record.
    pub version: StoredVersionBuf,
    /// The store's own reference to the row (a rowid, the stored bytes, `()`).
    pub handle: H,
}

/// A commit ready to apply: see the [module documentation](self).
#[derive(Debug)]
pub struct Prepared<'c, H> {
    commit: &'c Commit,
    generation: u64,
    writes: Vec<Write<'c, H>>,
    seen: Vec<Seen<'c, H>>,
    sweep: Option<Sweep<'c>>,
    counts: Counts,
    live: i64,
    deleted: i64,
    next: StreamState,
}

/// One record to write: the final version of one id of the page.
#[derive(Debug)]
pub struct Write<'c, H> {
    /// The winning version: its id and metadata are written.
    pub record: &'c Record,
    /// How the row is written, and with which payload.
    pub kind: WriteKind<'c, H>,
    /// What the write means (for change notifications).
    pub outcome: Outcome,
    /// The change kind the record's feed entry gets: relative to what the store held
    /// before this commit (a record added and updated within one page is `added`), see
    /// [`ChangeKind::of_write`]. Stored with the record, in the same transaction.
    pub change: ChangeKind,
}

/// How a [`Write`] changes the store.
#[derive(Debug)]
pub enum WriteKind<'c, H> {
    /// The store holds no record with this id: a new row with this payload.
    Insert {
        /// The payload to store.
        payload: &'c RawJson,
    },
    /// The stored row gets the new version and this payload.
    Replace {
        /// The handle of the stored row.
        stored: H,
        /// The payload to store.
        payload: &'c RawJson,
    },
    /// The stored row gets the new version's metadata and keeps its payload (a pruned
    /// version, or a delete that carries only `{id}`).
    KeepPayload {
        /// The handle of the stored row.
        stored: H,
    },
}

/// A stored record a full re-read saw without writing it (the same version again, or
/// an older one): it gets the re-read's generation, so the sweep spares it.
#[derive(Debug)]
pub struct Seen<'c, H> {
    /// The record's id.
    pub id: &'c str,
    /// The handle of the stored row.
    pub stored: H,
}

impl<H> WriteKind<'_, H> {
    /// The handle of the stored row this write replaces or keeps; `None` for an insert.
    pub fn stored(&self) -> Option<&H> {
        match self {
            WriteKind::Insert { .. } => None,
            WriteKind::Replace { stored, .. } | WriteKind::KeepPayload { stored } => Some(stored),
        }
    }
}

/// What the completing commit of a full re-read marks deleted: every live record of
/// the stream whose generation is older than [`Sweep::generation`] (the re-read did not
/// see it, so Nango no longer has it).
#[derive(Debug)]
pub struct Sweep<'c> {
    /// Records stamped with an older generation are swept.
    pub generation: u64,
    /// The `deleted_at` of swept records.
    pub deleted_at: Timestamp,
    page: HashSet<&'c str>,
}

impl Sweep<'_> {
    /// Whether a stored record is swept: live, and last seen by an older generation.
    pub fn sweeps(&self, seen_generation: u64, deleted: bool) -> bool {
        seen_generation < self.generation && !deleted
    }

    /// Whether `id` is one of the page's ids. The page's records are never swept: a
    /// store that runs the sweep after applying the writes finds them stamped with the
    /// new generation already; a store that scans its records as they were before the
    /// commit (sled, whose writes land in one batch at the end) skips these ids.
    pub fn spares(&self, id: &str) -> bool {
        self.page.contains(id)
    }

    /// The change kind of a swept record: [`ChangeKind::Deleted`].
    pub const CHANGE: ChangeKind = ChangeKind::Deleted;

    /// Turn a record's metadata into the tombstone the sweep leaves.
    pub fn tombstone(&self, meta: &mut Metadata) {
        meta.last_action = LastAction::Deleted;
        meta.deleted_at = Some(self.deleted_at);
    }
}

/// Which record the stream's cursor belongs to after a commit
/// ([`Prepared::cursor_record`]), for a store that keeps track of it (sled's check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorRecord<'c> {
    /// The cursor does not move: it belongs to the record it belonged to before.
    Unchanged,
    /// The cursor moves to the cursor of the page's last record, this one.
    Record(&'c str),
    /// The cursor moves to a cursor that is not the page's last record's (an empty
    /// page, or a cursor that goes past the page): no record is known to carry it.
    Untracked,
}

/// What a store writes to the stream's row after applying a commit, and returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// What the commit did (its counts include the sweep's deletions).
    pub outcome: CommitOutcome,
    /// The stream's state after the commit.
    pub state: StreamState,
    /// The change of the stream's live record count.
    pub live_delta: i64,
    /// The change of the stream's tombstone count.
    pub deleted_delta: i64,
}

/// Fail with [`Error::CursorConflict`] unless the stream is at the cursor `commit`
/// expects. [`prepare`] checks it first; a store that reads the stored versions before
/// preparing (in one batch) checks it before that read.
pub fn check_cursor(state: &StreamState, commit: &Commit) -> Result<()> {
    if state.cursor != commit.expected_cursor {
        return Err(Error::CursorConflict {
            stream: commit.stream.to_string(),
            expected: commit.expected_cursor.as_ref().map(|c| c.0.clone()),
            actual: state.cursor.as_ref().map(|c| c.0.clone()),
        });
    }
    Ok(())
}

/// The distinct ids among `ids`, sorted by their bytes: the order of a store's index of
/// ids (SQLite's `BINARY`, PostgreSQL's `COLLATE "C"`). A statement that reads or writes
/// them in this order visits the index's leaves in turn, each once, however the page
/// orders its ids; random ids in page order visit them at random, each more than once.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn ids_in_key_order<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ids: Vec<&str> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Prepare `commit` for a stream in `state`.
///
/// `lookup` returns the stored version of an id with the store's handle of its row
/// (`None` when the store holds no such record); it is called once per distinct id of
/// the page, in page order of first appearance, and its first error ends the commit.
///
/// Fails with [`Error::CursorConflict`] when the stream's cursor is not the one the
/// commit expects (before any lookup).
pub fn prepare<'c, H>(
    state: &StreamState,
    commit: &'c Commit,
    mut lookup: impl FnMut(&str) -> Result<Option<Stored<H>>>,
) -> Result<Prepared<'c, H>> {
    check_cursor(state, commit)?;
    let records = &commit.records[..];
    // One entry per distinct id, in lookup order: whether the stored record is a
    // tombstone, and its handle.
    let mut found: Vec<Option<(bool, H)>> = Vec::with_capacity(records.len());
    let mut failed = None;
    let plan = plan_page(records, |id| {
        let stored = if failed.is_some() {
            None
        } else {
            lookup(id).unwrap_or_else(|e| {
                failed = Some(e);
                None
            })
        };
        match stored {
            Some(s) => {
                found.push(Some((s.version.deleted, s.handle)));
                Some(s.version)
            }
            None => {
                found.push(None);
                None
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }

    let generation = commit.full_read.map_or(state.generation, |f| f.generation);
    let (mut live, mut deleted) = (0i64, 0i64);
    let mut writes = Vec::with_capacity(plan.writes.len());
    for w in &plan.writes {
        let record = &records[w.index];
        let stored = found[w.slot].take();
        let change = ChangeKind::of_write(record.is_deleted(), matches!(stored, Some((false, _))));
        match &stored {
            Some((true, _)) => deleted -= 1,
            Some((false, _)) => live -= 1,
            None => {}
        }
        if record.is_deleted() {
            deleted += 1;
        } else {
            live += 1;
        }
        let kind = match (stored, w.payload) {
            (Some((_, stored)), PayloadSource::Page(i)) => WriteKind::Replace {
                stored,
                payload: &records[i].payload,
            },
            (Some((_, stored)), PayloadSource::Stored) => WriteKind::KeepPayload { stored },
            (None, PayloadSource::Page(i)) => WriteKind::Insert {
                payload: &records[i].payload,
            },
            // The merge rule keeps a stored payload only when there is one; a record
            // the store does not hold is written with its own.
            (None, PayloadSource::Stored) => WriteKind::Insert {
                payload: &record.payload,
            },
        };
        writes.push(Write {
            record,
            kind,
            outcome: w.outcome,
            change,
        });
    }
    let seen = if commit.full_read.is_some() {
        plan.untouched
            .iter()
            .filter_map(|u| {
                let (_, stored) = found[u.slot].take()?;
                Some(Seen {
                    id: records[u.index].id.as_str(),
                    stored,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let sweep = commit.full_read.filter(|f| f.complete).map(|f| Sweep {
        generation: f.generation,
        deleted_at: commit.now,
        page: records.iter().map(|r| r.id.as_str()).collect(),
    });

    let mut next = state.clone();
    next.cursor = commit.cursor.clone();
    match commit.full_read {
        Some(f) if f.complete => {
            next.generation = f.generation;
            next.full_read = None;
        }
        Some(f) => next.full_read = Some(f.generation),
        None => {}
    }
    Ok(Prepared {
        commit,
        generation,
        writes,
        seen,
        sweep,
        counts: plan.counts,
        live,
        deleted,
        next,
    })
}

impl<'c, H> Prepared<'c, H> {
    /// The commit being prepared.
    pub fn commit(&self) -> &'c Commit {
        self.commit
    }

    /// The generation stamped on every record the commit writes or sees.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The writes, at most one per id, in page order of first appearance.
    pub fn writes(&self) -> &[Write<'c, H>] {
        &self.writes
    }

    /// The stored records a full re-read saw without writing them: each gets
    /// [`Prepared::generation`].
    pub fn seen(&self) -> &[Seen<'c, H>] {
        &self.seen
    }

    /// The change of the stream's live record count made by the writes alone (the
    /// sweep's deletions not counted).
    pub fn live_delta_of_writes(&self) -> i64 {
        self.live
    }

    /// The sweep to run after the writes, on the completing commit of a full re-read.
    pub fn sweep(&self) -> Option<&Sweep<'c>> {
        self.sweep.as_ref()
    }

    /// The stream's state after the commit.
    pub fn next_state(&self) -> &StreamState {
        &self.next
    }

    /// Which record the stream's cursor belongs to after the commit: see
    /// [`CursorRecord`].
    pub fn cursor_record(&self) -> CursorRecord<'c> {
        let commit = self.commit;
        // `prepare` checked that the stream is at the expected cursor.
        if commit.cursor == commit.expected_cursor {
            return CursorRecord::Unchanged;
        }
        match (commit.records.last(), &commit.cursor) {
            (Some(last), Some(cursor)) if last.meta.cursor == *cursor => {
                CursorRecord::Record(last.id.as_str())
            }
            _ => CursorRecord::Untracked,
        }
    }

    /// Finish the commit numbered `seq`, whose sweep marked `swept` records deleted.
    pub fn finish(self, seq: u64, swept: u64) -> Finished {
        let mut counts = self.counts;
        counts.deleted += swept;
        let swept_i = i64::try_from(swept).unwrap_or(i64::MAX);
        Finished {
            outcome: CommitOutcome { seq, counts, swept },
            state: self.next,
            live_delta: self.live - swept_i,
            deleted_delta: self.deleted + swept_i,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::record::{Cursor, LastAction, StreamKey};
    use crate::sink::FullRead;

    fn ts(t: i64) -> Timestamp {
        Timestamp::from_micros(t)
    }

    /// A version of `id` at instant `t` with payload `payload` (`{"id":..}` when empty).
    fn rec(id: &str, t: i64, action: LastAction, payload: &str) -> Record {
        let bare = payload.is_empty();
        let payload = if bare {
            format!(r#"{{"id":"{id}"}}"#)
        } else {
            format!(r#"{{"id":"{id}","v":"{payload}"}}"#)
        };
        Record {
            id: id.into(),
            payload: RawJson::from_trusted(payload),
            payload_is_bare: bare,
            meta: Metadata {
                first_seen_at: ts(1),
                last_modified_at: ts(t),
                last_action: action,
                deleted_at: (action == LastAction::Deleted).then(|| ts(t)),
                pruned_at: None,
                cursor: Cursor(format!("c{t}")),
            },
        }
    }

    fn added(id: &str, t: i64, v: &str) -> Record {
        rec(id, t, LastAction::Added, v)
    }

    fn pruned(id: &str, t: i64) -> Record {
        let mut r = rec(id, t, LastAction::Updated, "");
        r.meta.pruned_at = Some(ts(t));
        r
    }

    /// A stored record of the case: id, instant, tombstone.
    type StoredRow = (&'static str, i64, bool);

    struct Case {
        name: &'static str,
        state: StreamState,
        expected_cursor: Option<&'static str>,
        full_read: Option<FullRead>,
        stored: &'static [StoredRow],
        page: Vec<Record>,
        /// Records the sweep of the store marks deleted (for `finish`).
        swept: u64,
        expect: Expect,
    }

    #[derive(Debug, PartialEq)]
    struct Expect {
        /// `id kind`: `insert PAYLOAD`, `replace HANDLE with PAYLOAD`, `keep HANDLE`.
        writes: Vec<String>,
        /// `id HANDLE`.
        seen: Vec<String>,
        generation: u64,
        /// The sweep's generation bound, and whether it spares `a`.
        sweep: Option<(u64, bool)>,
        counts: Counts,
        live_delta: i64,
        deleted_delta: i64,
        next: StreamState,
    }

    fn state(cursor: Option<&str>, generation: u64, full_read: Option<u64>) -> StreamState {
        StreamState {
            cursor: cursor.map(Cursor::from),
            generation,
            full_read,
        }
    }

    fn counts(added: u64, updated: u64, deleted: u64, unchanged: u64, stale: u64) -> Counts {
        Counts {
            added,
            updated,
            deleted,
            unchanged,
            stale,
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// Prepare the case's commit against its stored rows (handles `row-ID`), finish it,
    /// and describe what came out.
    fn run(case: &Case) -> Result<Expect> {
        let stored: BTreeMap<&str, (i64, bool)> =
            case.stored.iter().map(|&(id, t, d)| (id, (t, d))).collect();
        let mut commit = Commit::new(
            StreamKey::new("github", "acme", "Ticket"),
            case.expected_cursor.map(Cursor::from),
            case.page
                .last()
                .map(|r| r.meta.cursor.clone())
                .or(case.expected_cursor.map(Cursor::from)),
            case.page.clone(),
        );
        commit.full_read = case.full_read;
        commit.now = ts(999);
        let mut lookups = Vec::new();
        let prepared = prepare(&case.state, &commit, |id| {
            lookups.push(id.to_string());
            Ok(stored.get(id).map(|&(t, deleted)| Stored {
                version: StoredVersionBuf {
                    last_modified_at: ts(t),
                    cursor: format!("c{t}"),
                    deleted,
                    pruned: false,
                },
                handle: format!("row-{id}"),
            }))
        })?;
        let mut distinct: Vec<&str> = case.page.iter().map(|r| r.id.as_str()).collect();
        distinct.dedup();
        assert_eq!(
            lookups, distinct,
            "{}: one lookup per distinct id",
            case.name
        );
        let writes = prepared
            .writes()
            .iter()
            .map(|w| {
                let what = match &w.kind {
                    WriteKind::Insert { payload } => format!("insert {payload}"),
                    WriteKind::Replace { stored, payload } => {
                        format!("replace {stored} with {payload}")
                    }
                    WriteKind::KeepPayload { stored } => format!("keep {stored}"),
                };
                format!("{} {what}", w.record.id)
            })
            .collect();
        let seen = prepared
            .seen()
            .iter()
            .map(|s| format!("{} {}", s.id, s.stored))
            .collect();
        let generation = prepared.generation();
        let sweep = prepared.sweep().map(|s| (s.generation, s.spares("a")));
        let done = prepared.finish(7, case.swept);
        assert_eq!(done.outcome.seq, 7);
        assert_eq!(done.outcome.swept, case.swept);
        Ok(Expect {
            writes,
            seen,
            generation,
            sweep,
            counts: done.outcome.counts,
            live_delta: done.live_delta,
            deleted_delta: done.deleted_delta,
            next: done.state,
        })
    }

    #[test]
    fn prepared_commits() {
        let cases = vec![
            Case {
                name: "a first page: every record inserted with its own payload",
                state: StreamState::default(),
                expected_cursor: None,
                full_read: None,
                stored: &[],
                page: vec![added("a", 1, "x"), rec("b", 2, LastAction::Deleted, "")],
                swept: 0,
                expect: Expect {
                    writes: strings(&[r#"a insert {"id":"a","v":"x"}"#, r#"b insert {"id":"b"}"#]),
                    seen: vec![],
                    generation: 0,
                    sweep: None,
                    counts: counts(1, 0, 1, 0, 0),
                    live_delta: 1,
                    deleted_delta: 1,
                    next: state(Some("c2"), 0, None),
                },
            },
            Case {
                name: "stored records: a newer version replaces, a pruned one keeps the payload, older and same versions write nothing",
                state: state(Some("c0"), 3, None),
                expected_cursor: Some("c0"),
                full_read: None,
                stored: &[
                    ("a", 10, false),
                    ("b", 10, false),
                    ("c", 10, false),
                    ("d", 10, false),
                ],
                page: vec![
                    rec("a", 11, LastAction::Updated, "y"),
                    pruned("b", 11),
                    rec("c", 9, LastAction::Updated, "old"),
                    rec("d", 10, LastAction::Updated, "same"),
                ],
                swept: 0,
                expect: Expect {
                    writes: strings(&[
                        r#"a replace row-a with {"id":"a","v":"y"}"#,
                        "b keep row-b",
                    ]),
                    seen: vec![],
                    generation: 3,
                    sweep: None,
                    counts: counts(0, 2, 0, 1, 1),
                    live_delta: 0,
                    deleted_delta: 0,
                    next: state(Some("c10"), 3, None),
                },
            },
            Case {
                name: "an undelete and an {id}-only delete move the record counts",
                state: state(Some("c0"), 0, None),
                expected_cursor: Some("c0"),
                full_read: None,
                stored: &[("x", 10, true), ("y", 10, false)],
                page: vec![
                    added("x", 20, "back"),
                    rec("y", 21, LastAction::Deleted, ""),
                ],
                swept: 0,
                expect: Expect {
                    writes: strings(&[
                        r#"x replace row-x with {"id":"x","v":"back"}"#,
                        "y keep row-y",
                    ]),
                    seen: vec![],
                    generation: 0,
                    sweep: None,
                    counts: counts(1, 0, 1, 0, 0),
                    live_delta: 0,
                    deleted_delta: 0,
                    next: state(Some("c21"), 0, None),
                },
            },
            Case {
                name: "a repeated id is one write, merged in page order",
                state: StreamState::default(),
                expected_cursor: None,
                full_read: None,
                stored: &[],
                page: vec![
                    added("a", 1, "one"),
                    added("a", 2, "two"),
                    added("a", 1, "one"),
                ],
                swept: 0,
                expect: Expect {
                    writes: strings(&[r#"a insert {"id":"a","v":"two"}"#]),
                    seen: vec![],
                    generation: 0,
                    sweep: None,
                    counts: counts(1, 1, 0, 0, 1),
                    live_delta: 1,
                    deleted_delta: 0,
                    next: state(Some("c1"), 0, None),
                },
            },
            Case {
                name: "a full re-read stamps its generation and marks the records it sees unchanged",
                state: state(Some("c0"), 1, None),
                expected_cursor: Some("c0"),
                full_read: Some(FullRead {
                    generation: 2,
                    complete: false,
                }),
                stored: &[("a", 10, false), ("b", 10, false), ("c", 10, false)],
                page: vec![
                    rec("a", 10, LastAction::Updated, "same"),
                    rec("b", 11, LastAction::Updated, "new"),
                    rec("c", 9, LastAction::Updated, "old"),
                ],
                swept: 0,
                expect: Expect {
                    writes: strings(&[r#"b replace row-b with {"id":"b","v":"new"}"#]),
                    seen: strings(&["a row-a", "c row-c"]),
                    generation: 2,
                    sweep: None,
                    counts: counts(0, 1, 0, 1, 1),
                    live_delta: 0,
                    deleted_delta: 0,
                    next: state(Some("c9"), 1, Some(2)),
                },
            },
            Case {
                name: "the completing commit of a full re-read sweeps, sparing the page",
                state: state(Some("c0"), 1, Some(2)),
                expected_cursor: Some("c0"),
                full_read: Some(FullRead {
                    generation: 2,
                    complete: true,
                }),
                stored: &[("a", 10, false)],
                page: vec![rec("a", 10, LastAction::Updated, "same")],
                swept: 3,
                expect: Expect {
                    writes: vec![],
                    seen: strings(&["a row-a"]),
                    generation: 2,
                    sweep: Some((2, true)),
                    counts: counts(0, 0, 3, 1, 0),
                    live_delta: -3,
                    deleted_delta: 3,
                    next: state(Some("c10"), 2, None),
                },
            },
            Case {
                name: "an empty page moves nothing but the state",
                state: state(Some("c5"), 0, Some(1)),
                expected_cursor: Some("c5"),
                full_read: Some(FullRead {
                    generation: 1,
                    complete: true,
                }),
                stored: &[],
                page: vec![],
                swept: 0,
                expect: Expect {
                    writes: vec![],
                    seen: vec![],
                    generation: 1,
                    sweep: Some((1, false)),
                    counts: Counts::default(),
                    live_delta: 0,
                    deleted_delta: 0,
                    next: state(Some("c5"), 1, None),
                },
            },
        ];
        for case in &cases {
            let got = run(case).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(got, case.expect, "{}", case.name);
        }
    }

    #[test]
    fn change_kinds_are_relative_to_what_the_store_held() {
        use crate::feed::ChangeKind::{Added, Deleted, Updated};
        // (case, stored rows, page, the kind of each write)
        type KindCase<'a> = (
            &'a str,
            &'a [StoredRow],
            Vec<Record>,
            Vec<(&'a str, ChangeKind)>,
        );
        let cases: Vec<KindCase<'_>> = vec![
            (
                "new records, live and deleted",
                &[],
                vec![added("a", 1, "x"), rec("b", 2, LastAction::Deleted, "")],
                vec![("a", Added), ("b", Deleted)],
            ),
            (
                "a new id added then updated in one page is added",
                &[],
                vec![added("a", 1, "x"), rec("a", 2, LastAction::Updated, "y")],
                vec![("a", Added)],
            ),
            (
                "a live record updated, pruned, deleted",
                &[("a", 10, false), ("b", 10, false), ("c", 10, false)],
                vec![
                    rec("a", 11, LastAction::Updated, "y"),
                    pruned("b", 11),
                    rec("c", 11, LastAction::Deleted, ""),
                ],
                vec![("a", Updated), ("b", Updated), ("c", Deleted)],
            ),
            (
                "a tombstone brought back is added, deleted again is deleted",
                &[("a", 10, true), ("b", 10, true)],
                vec![
                    added("a", 11, "back"),
                    rec("b", 11, LastAction::Deleted, ""),
                ],
                vec![("a", Added), ("b", Deleted)],
            ),
            (
                "a live record deleted and added again in one page is updated",
                &[("a", 10, false)],
                vec![
                    rec("a", 11, LastAction::Deleted, ""),
                    added("a", 12, "again"),
                ],
                vec![("a", Updated)],
            ),
            (
                "stale and repeated versions write nothing (their seq and kind stay)",
                &[("a", 10, false), ("b", 10, true)],
                vec![
                    rec("a", 9, LastAction::Updated, "old"),
                    rec("b", 10, LastAction::Deleted, ""),
                ],
                vec![],
            ),
        ];
        for (name, stored, page, want) in cases {
            let rows: BTreeMap<&str, (i64, bool)> =
                stored.iter().map(|&(id, t, d)| (id, (t, d))).collect();
            let commit = Commit::new(
                StreamKey::new("github", "acme", "Ticket"),
                None,
                page.last().map(|r| r.meta.cursor.clone()),
                page,
            );
            let prepared = prepare(&StreamState::default(), &commit, |id| {
                Ok(rows.get(id).map(|&(t, deleted)| Stored {
                    version: StoredVersionBuf {
                        last_modified_at: ts(t),
                        cursor: format!("c{t}"),
                        deleted,
                        pruned: false,
                    },
                    handle: (),
                }))
            })
            .unwrap();
            let got: Vec<(&str, ChangeKind)> = prepared
                .writes()
                .iter()
                .map(|w| (w.record.id.as_str(), w.change))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_conflicting_commit_is_refused_before_any_lookup() {
        let commit = Commit::new(
            StreamKey::new("github", "acme", "Ticket"),
            Some(Cursor::from("c0")),
            Some(Cursor::from("c1")),
            vec![added("a", 1, "x")],
        );
        let mut lookups = 0;
        let err = prepare(&state(Some("c9"), 0, None), &commit, |_| {
            lookups += 1;
            Ok(None::<Stored<()>>)
        })
        .unwrap_err();
        assert!(
            matches!(&err, Error::CursorConflict { expected, actual, .. }
                if expected.as_deref() == Some("c0") && actual.as_deref() == Some("c9")),
            "{err}"
        );
        assert_eq!(lookups, 0);
        assert!(check_cursor(&state(Some("c0"), 0, None), &commit).is_ok());
    }

    #[test]
    fn the_first_lookup_error_ends_the_commit() {
        let commit = Commit::new(
            StreamKey::new("github", "acme", "Ticket"),
            None,
            Some(Cursor::from("c3")),
            vec![added("a", 1, "x"), added("b", 2, "y"), added("c", 3, "z")],
        );
        let mut lookups = Vec::new();
        let err = prepare(&StreamState::default(), &commit, |id| {
            lookups.push(id.to_string());
            if id == "b" {
                return Err(Error::store("memory", "read", true, "disk on fire"));
            }
            Ok(None::<Stored<()>>)
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(lookups, ["a", "b"], "no lookup after the error");
    }

    #[test]
    fn the_cursor_record_is_the_last_record_when_the_cursor_moves_to_its_cursor() {
        /// The cursor record of a commit moving the stream from `from` to `to`.
        fn cursor_record(from: Option<&str>, to: Option<&str>, page: &[Record]) -> String {
            let commit = Commit::new(
                StreamKey::new("github", "acme", "Ticket"),
                from.map(Cursor::from),
                to.map(Cursor::from),
                page.to_vec(),
            );
            let prepared = prepare(&state(from, 0, None), &commit, |_| Ok(None::<Stored<()>>))
                .expect("no conflict");
            format!("{:?}", prepared.cursor_record())
        }
        let page = [added("a", 1, "x"), added("b", 2, "y")];
        let cases = [
            (
                "to the last record's cursor",
                None,
                Some("c2"),
                &page[..],
                r#"Record("b")"#,
            ),
            ("past the page", None, Some("c9"), &page[..], "Untracked"),
            (
                "to an earlier record's cursor",
                None,
                Some("c1"),
                &page[..],
                "Untracked",
            ),
            (
                "an empty page moving it",
                Some("c1"),
                Some("c5"),
                &[][..],
                "Untracked",
            ),
            (
                "an empty page keeping it",
                Some("c1"),
                Some("c1"),
                &[][..],
                "Unchanged",
            ),
            (
                "a page keeping it",
                Some("c2"),
                Some("c2"),
                &page[..],
                "Unchanged",
            ),
        ];
        for (name, from, to, page, want) in cases {
            assert_eq!(cursor_record(from, to, page), want, "{name}");
        }
    }

    #[test]
    fn a_sweep_tombstones_a_record_keeping_its_metadata() {
        let mut commit = Commit::new(StreamKey::new("g", "c", "M"), None, None, vec![]);
        commit.full_read = Some(FullRead {
            generation: 4,
            complete: true,
        });
        commit.now = ts(77);
        let prepared = prepare(&StreamState::default(), &commit, |_| Ok(None::<Stored<()>>))
            .expect("no conflict");
        let sweep = prepared.sweep().expect("a completing full re-read sweeps");
        assert!(sweep.sweeps(3, false));
        assert!(!sweep.sweeps(4, false), "seen by this re-read");
        assert!(!sweep.sweeps(3, true), "already a tombstone");
        let mut meta = added("a", 5, "x").meta;
        sweep.tombstone(&mut meta);
        assert_eq!(
            (meta.last_action, meta.deleted_at, meta.last_modified_at),
            (LastAction::Deleted, Some(ts(77)), ts(5))
        );
    }
}
