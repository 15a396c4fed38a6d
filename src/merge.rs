//! The merge rule: how an incoming record version combines with the stored one.
//!
//! This is the heart of deduplication, a pure function with no I/O. Every store calls
//! it (through [`plan_page`]), so every store keeps the same data and counts the same
//! outcomes.
//!
//! For an incoming record `r` and the stored one `s` (same stream, same id):
//! - no `s`: store `r`;
//! - `r.last_modified_at < s.last_modified_at` (as instants): stale, ignore;
//! - same instant and same cursor: the same version again, ignore (idempotent replay).
//!   Exception, a **restore**: when the stored copy was pruned (or holds no field but
//!   `id`) and the incoming one is not pruned and carries more than `id`, take the
//!   incoming payload and metadata. Nango restores a pruned payload when the integration
//!   saves the record again, without moving `last_modified_at` or the cursor, so only a
//!   read from before the record's cursor (a full re-read) can see it. A restore counts as
//!   `updated` (a tombstone's as `deleted`), like any other write of a newer payload;
//! - otherwise `r` wins, with two exceptions for the payload:
//!   - `r.pruned_at` is set: keep `s`'s payload, take `r`'s metadata;
//!   - `r` is deleted and its payload has no field but `id`: keep `s`'s payload, mark
//!     it deleted;
//! - `ADDED` after a delete brings the record back to life.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::time::Timestamp;

/// What merging one incoming record did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A new live record, or a deleted one brought back.
    Added,
    /// A live record got a newer version.
    Updated,
    /// The record is now a tombstone (deleted upstream, or first seen deleted).
    Deleted,
    /// The same version again: nothing written.
    Unchanged,
    /// An older version than the stored one: nothing written.
    Stale,
}

impl Outcome {
    /// Whether the store is written for this outcome.
    pub fn writes(self) -> bool {
        matches!(self, Outcome::Added | Outcome::Updated | Outcome::Deleted)
    }
}

/// Outcome counters, per commit, per run and per stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Records added (or brought back after a delete).
    pub added: u64,
    /// Records updated.
    pub updated: u64,
    /// Records deleted (including those a full re-read's sweep marked deleted).
    pub deleted: u64,
    /// Versions seen again.
    pub unchanged: u64,
    /// Versions older than the stored one.
    pub stale: u64,
}

impl Counts {
    /// Count one outcome.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Added => self.added += 1,
            Outcome::Updated => self.updated += 1,
            Outcome::Deleted => self.deleted += 1,
            Outcome::Unchanged => self.unchanged += 1,
            Outcome::Stale => self.stale += 1,
        }
    }

    /// Add another set of counts.
    pub fn add(&mut self, other: &Counts) {
        self.added += other.added;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
        self.stale += other.stale;
    }

    /// Records that changed the store.
    pub fn changed(&self) -> u64 {
        self.added + self.updated + self.deleted
    }

    /// All records counted.
    pub fn total(&self) -> u64 {
        self.changed() + self.unchanged + self.stale
    }
}

/// What the merge rule needs to know of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredVersion<'a> {
    /// The stored `last_modified_at`.
    pub last_modified_at: Timestamp,
    /// The stored cursor.
    pub cursor: &'a str,
    /// Whether the stored record is a tombstone.
    pub deleted: bool,
    /// Whether the stored copy lacks its payload: it was pruned (its metadata has a
    /// `pruned_at`) or its payload has no field but `id`. A same-version copy that is not
    /// pruned then fills it in (a restore).
    pub pruned: bool,
}

/// An owned [`StoredVersion`], for stores that read it out of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersionBuf {
    /// The stored `last_modified_at`.
    pub last_modified_at: Timestamp,
    /// The stored cursor.
    pub cursor: String,
    /// Whether the stored record is a tombstone.
    pub deleted: bool,
    /// See [`StoredVersion::pruned`].
    pub pruned: bool,
}

impl StoredVersionBuf {
    /// Borrow as a [`StoredVersion`].
    pub fn as_version(&self) -> StoredVersion<'_> {
        StoredVersion {
            last_modified_at: self.last_modified_at,
            cursor: &self.cursor,
            deleted: self.deleted,
            pruned: self.pruned,
        }
    }
}

/// Which payload a winning version is stored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadChoice {
    /// The incoming record's payload.
    Incoming,
    /// Keep the stored payload (pruned record, or `{id}`-only delete).
    Stored,
}

/// The merge rule's decision for one incoming record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write the incoming metadata, with the chosen payload.
    Write {
        /// What the write means.
        outcome: Outcome,
        /// Which payload to keep.
        payload: PayloadChoice,
    },
    /// Write nothing.
    Skip(Outcome),
}

impl Decision {
    /// The outcome to count.
    pub fn outcome(self) -> Outcome {
        match self {
            Decision::Write { outcome, .. } | Decision::Skip(outcome) => outcome,
        }
    }
}

/// The merge rule (see the module documentation).
pub fn merge(incoming: &Record, stored: Option<StoredVersion<'_>>) -> Decision {
    let deleted = incoming.is_deleted();
    let Some(s) = stored else {
        let outcome = if deleted {
            Outcome::Deleted
        } else {
            Outcome::Added
        };
        return Decision::Write {
            outcome,
            payload: PayloadChoice::Incoming,
        };
    };
    let lma = incoming.meta.last_modified_at;
    if lma < s.last_modified_at {
        return Decision::Skip(Outcome::Stale);
    }
    let outcome = || {
        if deleted {
            Outcome::Deleted
        } else if s.deleted {
            Outcome::Added
        } else {
            Outcome::Updated
        }
    };
    if lma == s.last_modified_at && incoming.meta.cursor.as_str() == s.cursor {
        if s.pruned && incoming.meta.pruned_at.is_none() && !incoming.payload_is_bare {
            // A restore: Nango refilled the payload under the same version.
            return Decision::Write {
                outcome: outcome(),
                payload: PayloadChoice::Incoming,
            };
        }
        return Decision::Skip(Outcome::Unchanged);
    }
    let keep_stored = incoming.meta.pruned_at.is_some() || (deleted && incoming.payload_is_bare);
    let payload = if keep_stored {
        PayloadChoice::Stored
    } else {
        PayloadChoice::Incoming
    };
    Decision::Write {
        outcome: outcome(),
        payload,
    }
}

/// Whether a stored payload has no field but `id` (`{"id": ...}`), as the JSON text a
/// store holds. Cheap for real payloads: text longer than a bare object of this id could
/// ever be is rejected without parsing.
pub fn payload_text_is_bare(id: &str, payload: &str) -> bool {
    if payload.len() > bare_length_limit(id) {
        return false;
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(payload) {
        Ok(map) => map.len() == 1 && map.contains_key("id"),
        Err(_) => false,
    }
}

/// [`payload_text_is_bare`] for a payload a store holds as bytes: only bytes short
/// enough to be a bare object are checked to be UTF-8 and parsed.
pub fn payload_bytes_are_bare(id: &str, payload: &[u8]) -> bool {
    payload.len() <= bare_length_limit(id)
        && std::str::from_utf8(payload).is_ok_and(|p| payload_text_is_bare(id, p))
}

/// The longest a bare object of `id` can be: `{"id":"<id>"}` with every id byte escaped
/// as `\uXXXX` (6 bytes) and generous whitespace is still shorter than this.
fn bare_length_limit(id: &str) -> usize {
    6 * id.len() + 64
}

/// Where the payload of a planned write comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadSource {
    /// The payload of `records[i]` of the page.
    Page(usize),
    /// Keep the payload the store already holds.
    Stored,
}

/// One write of a [`PagePlan`]: the final version of one id in the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedWrite {
    /// Index of the record whose id and metadata are written.
    pub index: usize,
    /// Where the payload comes from.
    pub payload: PayloadSource,
    /// The outcome of the last winning version (for change notifications).
    pub outcome: Outcome,
    /// Whether the store held a record with this id before the page.
    pub existed: bool,
    /// The position of this id among the page's distinct ids, in order of first
    /// appearance: the order in which `plan_page` looked them up.
    pub slot: usize,
}

/// A distinct id of a [`PagePlan`] that writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Untouched {
    /// Index of the first record of the page with this id.
    pub index: usize,
    /// See [`PlannedWrite::slot`].
    pub slot: usize,
}

/// The merge rule applied to a whole page, with repeated ids within the page resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PagePlan {
    /// At most one write per id, in page order of first appearance.
    pub writes: Vec<PlannedWrite>,
    /// The ids that write nothing (stale or unchanged versions only), in order of
    /// first appearance; a full re-read still marks them as seen.
    pub untouched: Vec<Untouched>,
    /// The outcome of every record of the page.
    pub counts: Counts,
}

/// Apply the merge rule to every record of a page.
///
/// `lookup` returns the stored version of an id (it is called once per distinct id, in
/// page order of first appearance).
/// An id that appears twice in the page is merged against the earlier version of the
/// same page, so the plan holds one final write per id, as if the records had been
/// merged one by one.
pub fn plan_page<F>(records: &[Record], mut lookup: F) -> PagePlan
where
    F: FnMut(&str) -> Option<StoredVersionBuf>,
{
    struct Slot {
        stored: Option<StoredVersionBuf>,
        /// Index of the winning record so far in the page.
        current: Option<usize>,
        payload: PayloadSource,
        write: Option<usize>,
        first: usize,
    }
    let mut plan = PagePlan {
        writes: Vec::with_capacity(records.len()),
        ..PagePlan::default()
    };
    let mut slots: Vec<Slot> = Vec::with_capacity(records.len());
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let slot_ix = *by_id.entry(r.id.as_str()).or_insert_with(|| {
            slots.push(Slot {
                stored: lookup(&r.id),
                current: None,
                payload: PayloadSource::Stored,
                write: None,
                first: i,
            });
            slots.len() - 1
        });
        let slot = &mut slots[slot_ix];
        let version = match slot.current {
            Some(c) => Some(StoredVersion {
                last_modified_at: records[c].meta.last_modified_at,
                cursor: records[c].meta.cursor.as_str(),
                deleted: records[c].is_deleted(),
                pruned: records[c].meta.pruned_at.is_some()
                    || match slot.payload {
                        PayloadSource::Page(p) => records[p].payload_is_bare,
                        PayloadSource::Stored => slot.stored.as_ref().is_none_or(|s| s.pruned),
                    },
            }),
            None => slot.stored.as_ref().map(StoredVersionBuf::as_version),
        };
        let decision = merge(r, version);
        plan.counts.record(decision.outcome());
        if let Decision::Write { outcome, payload } = decision {
            let payload = match payload {
                PayloadChoice::Incoming => PayloadSource::Page(i),
                PayloadChoice::Stored => slot.payload,
            };
            slot.current = Some(i);
            slot.payload = payload;
            let write = PlannedWrite {
                index: i,
                payload,
                outcome,
                existed: slot.stored.is_some(),
                slot: slot_ix,
            };
            match slot.write {
                Some(w) => plan.writes[w] = write,
                None => {
                    slot.write = Some(plan.writes.len());
                    plan.writes.push(write);
                }
            }
        }
    }
    plan.untouched = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.write.is_none())
        .map(|(slot, s)| Untouched {
            index: s.first,
            slot,
        })
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Cursor, LastAction, Metadata, RawJson};

    fn rec(id: &str, lma: i64, cursor: &str, action: LastAction, payload: &str) -> Record {
        let deleted = action == LastAction::Deleted;
        Record {
            id: id.into(),
            payload_is_bare: payload == format!(r#"{{"id":"{id}"}}"#),
            payload: RawJson::from_trusted(payload),
            meta: Metadata {
                first_seen_at: Timestamp::from_micros(1),
                last_modified_at: Timestamp::from_micros(lma),
                last_action: action,
                deleted_at: deleted.then_some(Timestamp::from_micros(lma)),
                pruned_at: None,
                cursor: Cursor(cursor.into()),
            },
        }
    }

    fn stored(lma: i64, cursor: &str, deleted: bool) -> StoredVersionBuf {
        StoredVersionBuf {
            last_modified_at: Timestamp::from_micros(lma),
            cursor: cursor.into(),
            deleted,
            pruned: false,
        }
    }

    /// A stored version whose copy lacks its payload (pruned, or `{id}` only).
    fn stored_pruned(lma: i64, cursor: &str, deleted: bool) -> StoredVersionBuf {
        StoredVersionBuf {
            pruned: true,
            ..stored(lma, cursor, deleted)
        }
    }

    fn write(outcome: Outcome, payload: PayloadChoice) -> Decision {
        Decision::Write { outcome, payload }
    }

    const FULL: &str = r#"{"id":"a","title":"x"}"#;
    const BARE: &str = r#"{"id":"a"}"#;

    #[test]
    fn every_clause_of_the_merge_rule() {
        use Outcome::*;
        use PayloadChoice::*;
        let pruned = |mut r: Record| {
            r.meta.pruned_at = Some(Timestamp::from_micros(99));
            r.payload = RawJson::from_trusted(BARE);
            r.payload_is_bare = true;
            r
        };
        let cases: Vec<(&str, Record, Option<StoredVersionBuf>, Decision)> = vec![
            (
                "first sight",
                rec("a", 10, "c10", LastAction::Added, FULL),
                None,
                write(Added, Incoming),
            ),
            (
                "first sight of a deleted record",
                rec("a", 10, "c10", LastAction::Deleted, BARE),
                None,
                write(Deleted, Incoming),
            ),
            (
                "first sight of a pruned record",
                pruned(rec("a", 10, "c10", LastAction::Added, FULL)),
                None,
                write(Added, Incoming),
            ),
            (
                "stale",
                rec("a", 9, "c9", LastAction::Updated, FULL),
                Some(stored(10, "c10", false)),
                Decision::Skip(Stale),
            ),
            (
                "stale delete",
                rec("a", 9, "c9", LastAction::Deleted, BARE),
                Some(stored(10, "c10", false)),
                Decision::Skip(Stale),
            ),
            (
                "same version",
                rec("a", 10, "c10", LastAction::Added, FULL),
                Some(stored(10, "c10", false)),
                Decision::Skip(Unchanged),
            ),
            (
                "prune of the stored version is the same version",
                pruned(rec("a", 10, "c10", LastAction::Added, FULL)),
                Some(stored(10, "c10", false)),
                Decision::Skip(Unchanged),
            ),
            (
                "restore: the same version, no longer pruned, fills the payload in",
                rec("a", 10, "c10", LastAction::Added, FULL),
                Some(stored_pruned(10, "c10", false)),
                write(Updated, Incoming),
            ),
            (
                "restore of a tombstone's payload stays a tombstone",
                rec("a", 10, "c10", LastAction::Deleted, FULL),
                Some(stored_pruned(10, "c10", true)),
                write(Deleted, Incoming),
            ),
            (
                "the same version still pruned is unchanged",
                pruned(rec("a", 10, "c10", LastAction::Added, FULL)),
                Some(stored_pruned(10, "c10", false)),
                Decision::Skip(Unchanged),
            ),
            (
                "the same version with only {id} has nothing to fill in",
                rec("a", 10, "c10", LastAction::Added, BARE),
                Some(stored_pruned(10, "c10", false)),
                Decision::Skip(Unchanged),
            ),
            (
                "a stale unpruned copy does not restore",
                rec("a", 9, "c9", LastAction::Updated, FULL),
                Some(stored_pruned(10, "c10", false)),
                Decision::Skip(Stale),
            ),
            (
                "update",
                rec("a", 11, "c11", LastAction::Updated, FULL),
                Some(stored(10, "c10", false)),
                write(Updated, Incoming),
            ),
            (
                "same instant, other cursor",
                rec("a", 10, "c10b", LastAction::Updated, FULL),
                Some(stored(10, "c10", false)),
                write(Updated, Incoming),
            ),
            (
                "delete with {id} payload keeps the old payload",
                rec("a", 11, "c11", LastAction::Deleted, BARE),
                Some(stored(10, "c10", false)),
                write(Deleted, Stored),
            ),
            (
                "delete with a full payload takes it",
                rec("a", 11, "c11", LastAction::Deleted, FULL),
                Some(stored(10, "c10", false)),
                write(Deleted, Incoming),
            ),
            (
                "deleted again",
                rec("a", 12, "c12", LastAction::Deleted, BARE),
                Some(stored(11, "c11", true)),
                write(Deleted, Stored),
            ),
            (
                "newer pruned version keeps the payload",
                pruned(rec("a", 11, "c11", LastAction::Updated, FULL)),
                Some(stored(10, "c10", false)),
                write(Updated, Stored),
            ),
            (
                "undelete",
                rec("a", 12, "c12", LastAction::Added, FULL),
                Some(stored(11, "c11", true)),
                write(Added, Incoming),
            ),
            (
                "undelete of a pruned version keeps the payload",
                pruned(rec("a", 12, "c12", LastAction::Added, FULL)),
                Some(stored(11, "c11", true)),
                write(Added, Stored),
            ),
        ];
        for (name, incoming, stored, expected) in cases {
            assert_eq!(
                merge(&incoming, stored.as_ref().map(StoredVersionBuf::as_version)),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn bare_payload_text() {
        let cases = [
            ("a", r#"{"id":"a"}"#, true),
            ("a", r#"{ "id" : "a" }"#, true),
            ("a", r#"{"id":"a","t":1}"#, false),
            ("a", r#"{}"#, false),
            ("a", r#"not json"#, false),
            ("é", r#"{"id":"\u00e9"}"#, true),
        ];
        for (id, text, bare) in cases {
            assert_eq!(payload_text_is_bare(id, text), bare, "{text}");
            assert_eq!(payload_bytes_are_bare(id, text.as_bytes()), bare, "{text}");
        }
        let long = format!(r#"{{"id":"a","pad":"{}"}}"#, "x".repeat(500));
        assert!(!payload_text_is_bare("a", &long));
        assert!(!payload_bytes_are_bare("a", long.as_bytes()));
        assert!(!payload_bytes_are_bare("a", b"{\"id\":\"\xff\"}"));
    }

    #[test]
    fn a_restore_within_one_page_merges_against_the_pruned_version() {
        let mut first = rec("a", 10, "c10", LastAction::Added, BARE);
        first.meta.pruned_at = Some(Timestamp::from_micros(20));
        let page = vec![first, rec("a", 10, "c10", LastAction::Added, FULL)];
        let plan = plan_page(&page, |_| None);
        assert_eq!(plan.writes.len(), 1);
        assert_eq!(plan.writes[0].payload, PayloadSource::Page(1));
        assert_eq!(plan.counts.added, 1);
        assert_eq!(plan.counts.updated, 1);
    }

    #[test]
    fn timestamps_compare_as_instants_not_text() {
        // Same instant, rendered in two zones upstream, parsed into one Timestamp.
        let a = Timestamp::parse("2026-11-26T14:47:55.147815-05:00").unwrap();
        let b = Timestamp::parse("2026-11-26T19:47:55.147815+00:00").unwrap();
        assert_eq!(a, b);
        let mut r = rec("a", 0, "c", LastAction::Updated, FULL);
        r.meta.last_modified_at = Timestamp::parse("2026-11-26T14:47:56-05:00").unwrap();
        let s = StoredVersionBuf {
            last_modified_at: b,
            cursor: "x".into(),
            deleted: false,
            pruned: false,
        };
        assert_eq!(
            merge(&r, Some(s.as_version())),
            write(Outcome::Updated, PayloadChoice::Incoming)
        );
    }

    #[test]
    fn plan_counts_every_outcome() {
        let page = vec![
            rec("new", 20, "c20", LastAction::Added, r#"{"id":"new"}"#),
            rec(
                "upd",
                21,
                "c21",
                LastAction::Updated,
                r#"{"id":"upd","v":2}"#,
            ),
            rec("del", 22, "c22", LastAction::Deleted, r#"{"id":"del"}"#),
            rec("same", 5, "c5", LastAction::Added, r#"{"id":"same"}"#),
            rec("old", 3, "c3", LastAction::Updated, r#"{"id":"old"}"#),
        ];
        let plan = plan_page(&page, |id| match id {
            "upd" => Some(stored(10, "c10", false)),
            "del" => Some(stored(10, "c10b", false)),
            "same" => Some(stored(5, "c5", false)),
            "old" => Some(stored(7, "c7", false)),
            _ => None,
        });
        assert_eq!(
            plan.counts,
            Counts {
                added: 1,
                updated: 1,
                deleted: 1,
                unchanged: 1,
                stale: 1
            }
        );
        assert_eq!(plan.writes.len(), 3);
        assert_eq!(
            plan.writes[2],
            PlannedWrite {
                index: 2,
                payload: PayloadSource::Stored,
                outcome: Outcome::Deleted,
                existed: true,
                slot: 2,
            }
        );
        assert_eq!(
            plan.untouched,
            [
                Untouched { index: 3, slot: 3 },
                Untouched { index: 4, slot: 4 }
            ]
        );
    }

    #[test]
    fn repeated_id_in_a_page_merges_against_the_earlier_version() {
        let page = vec![
            rec("a", 20, "c20", LastAction::Updated, r#"{"id":"a","v":2}"#),
            rec("b", 20, "c20b", LastAction::Added, r#"{"id":"b"}"#),
            rec("a", 21, "c21", LastAction::Deleted, r#"{"id":"a"}"#),
            rec("a", 19, "c19", LastAction::Updated, r#"{"id":"a","v":1}"#),
        ];
        let mut lookups = 0;
        let plan = plan_page(&page, |id| {
            lookups += 1;
            (id == "a").then(|| stored(10, "c10", false))
        });
        assert_eq!(lookups, 2, "one lookup per distinct id");
        assert_eq!(
            plan.counts,
            Counts {
                added: 1,
                updated: 1,
                deleted: 1,
                unchanged: 0,
                stale: 1
            }
        );
        // One write for "a": the delete's metadata with the payload of the first version.
        assert_eq!(
            plan.writes[0],
            PlannedWrite {
                index: 2,
                payload: PayloadSource::Page(0),
                outcome: Outcome::Deleted,
                existed: true,
                slot: 0,
            }
        );
        assert_eq!(plan.writes.len(), 2);
        assert!(plan.untouched.is_empty());
    }
}
