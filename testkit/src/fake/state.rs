//! The records store of the fake: streams, records, the stream order index, the clock and
//! the mutation rules.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use base64::Engine as _;
use uuid::Uuid;

use super::generate::{self, GenKind, IdOrder};
use super::json::{Normalized, push_str_lit};
use super::{Effect, FakeRecord};
use nango_sync::record::{Cursor, LastAction, Metadata, StreamKey};
use nango_sync::time::Timestamp;

/// A position in a stream: `(last_modified_at, internal uuid)`.
pub(crate) type Pos = (Timestamp, Uuid);

/// The batch clock: real time by default, or a manual clock; every tick is strictly
/// later than the previous one.
#[derive(Debug)]
pub(crate) struct Clock {
    manual: Option<(i64, i64)>,
    last: i64,
}

impl Clock {
    pub(crate) fn new(start: Option<Timestamp>, step_micros: i64) -> Self {
        Clock {
            manual: start.map(|s| (s.as_micros(), step_micros.max(1))),
            last: i64::MIN,
        }
    }

    fn now(&mut self) -> i64 {
        match &mut self.manual {
            Some((next, step)) => {
                let t = *next;
                *next += *step;
                t
            }
            None => Timestamp::now().as_micros(),
        }
    }

    /// A microsecond instant after every previous tick.
    pub(crate) fn tick(&mut self) -> Timestamp {
        let t = self.now().max(self.last.saturating_add(1));
        self.last = t;
        Timestamp::from_micros(t)
    }

    /// Two instants for a soft delete: `m`, a whole millisecond (Nango's application
    /// clock) and `u`, a microsecond instant slightly after it (the database clock),
    /// both after every previous tick.
    pub(crate) fn tick_delete(&mut self) -> (Timestamp, Timestamp) {
        let now = self.now();
        let mut m = now.div_euclid(1000) * 1000;
        if m <= self.last {
            m = (self.last + 1).div_euclid(1000) * 1000;
            if m <= self.last {
                m += 1000;
            }
        }
        let u = now.max(m + 1);
        self.last = u;
        (Timestamp::from_micros(m), Timestamp::from_micros(u))
    }
}

/// A saved payload: normalized text, or a generated record kept as the few numbers that
/// determine it (rendered on demand, so a fake holding a million generated records
/// stays small).
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    /// Normalized JSON text.
    Text(Box<str>),
    /// Generated record number `n` of a kind (see `generate::write_generated`).
    Generated {
        /// What determines the payload besides `n`.
        kind: GenKind,
        /// The record number.
        n: u32,
    },
}

impl Payload {
    /// Append the JSON text.
    pub(crate) fn write(&self, out: &mut String) {
        match self {
            Payload::Text(t) => out.push_str(t),
            Payload::Generated { kind, n } => {
                super::generate::write_generated(*kind, u64::from(*n), out)
            }
        }
    }

    /// The JSON text.
    pub(crate) fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Payload::Text(t) => std::borrow::Cow::Borrowed(t),
            Payload::Generated { .. } => {
                let mut s = String::with_capacity(900);
                self.write(&mut s);
                std::borrow::Cow::Owned(s)
            }
        }
    }

    /// Whether both are the same JSON text.
    pub(crate) fn same(&self, other: &Payload) -> bool {
        match (self, other) {
            (Payload::Text(a), Payload::Text(b)) => a == b,
            (Payload::Generated { kind, n }, Payload::Generated { kind: k2, n: n2 })
                if (kind, n) == (k2, n2) =>
            {
                true
            }
            _ => self.text() == other.text(),
        }
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload::Text(s.into())
    }
}

/// "No instant": the `deleted`/`pruned` index of a record that has none.
const NONE: u32 = u32::MAX;

/// A record's `body` at or above this is `OTHER + index into Stream::others`; below, an
/// index into `Stream::kinds` (a generated record).
const OTHER: u32 = 1 << 31;

/// One stored record, 40 bytes: instants are indexes into the stream's table of
/// instants, and a generated record keeps its id and payload as numbers.
#[derive(Debug, Clone, Copy)]
struct Rec {
    uuid: Uuid,
    first_seen: u32,
    modified: u32,
    /// `NONE` when not deleted.
    deleted: u32,
    /// `NONE` when not pruned.
    pruned: u32,
    /// The generated record number (when `body < OTHER`).
    n: u32,
    body: u32,
}

/// The id and payload of a record that is not a plain generated one.
#[derive(Debug)]
struct OtherBody {
    id: Box<str>,
    /// The payload last saved, kept after a prune.
    saved: Payload,
}

/// One entry of the order log: the record in `slot` at the instant `t`. The entry is
/// current when the record's `modified` is still `t`; otherwise the record has moved
/// on and the entry is stale.
#[derive(Debug, Clone, Copy)]
struct Entry {
    t: u32,
    slot: u32,
}

/// A record of a stream, read-only.
#[derive(Clone, Copy)]
pub(crate) struct RecRef<'a> {
    s: &'a Stream,
    r: &'a Rec,
}

impl<'a> RecRef<'a> {
    fn other(&self) -> Option<&'a OtherBody> {
        (self.r.body >= OTHER).then(|| &self.s.others[(self.r.body - OTHER) as usize])
    }

    /// The record id.
    pub(crate) fn id(&self) -> Cow<'a, str> {
        match self.other() {
            Some(o) => Cow::Borrowed(&o.id),
            None => Cow::Owned(generate::generated_id(
                u64::from(self.r.n),
                self.s.kinds[self.r.body as usize].ids,
            )),
        }
    }

    pub(crate) fn pos(&self) -> Pos {
        (self.last_modified_at(), self.r.uuid)
    }

    pub(crate) fn first_seen_at(&self) -> Timestamp {
        self.s.time(self.r.first_seen)
    }

    pub(crate) fn last_modified_at(&self) -> Timestamp {
        self.s.time(self.r.modified)
    }

    pub(crate) fn deleted_at(&self) -> Option<Timestamp> {
        (self.r.deleted != NONE).then(|| self.s.time(self.r.deleted))
    }

    pub(crate) fn pruned_at(&self) -> Option<Timestamp> {
        (self.r.pruned != NONE).then(|| self.s.time(self.r.pruned))
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.r.deleted != NONE
    }

    /// Saved once and never changed since (`created_at = updated_at`).
    pub(crate) fn is_added(&self) -> bool {
        self.r.first_seen == self.r.modified || self.first_seen_at() == self.last_modified_at()
    }

    /// Nango's `CASE WHEN deleted_at IS NOT NULL THEN 'DELETED' WHEN created_at =
    /// updated_at THEN 'ADDED' ELSE 'UPDATED' END`.
    pub(crate) fn last_action(&self) -> LastAction {
        if self.is_deleted() {
            LastAction::Deleted
        } else if self.is_added() {
            LastAction::Added
        } else {
            LastAction::Updated
        }
    }

    /// The payload last saved (kept after a prune).
    fn saved(&self) -> Cow<'a, Payload> {
        match self.other() {
            Some(o) => Cow::Borrowed(&o.saved),
            None => Cow::Owned(Payload::Generated {
                kind: self.s.kinds[self.r.body as usize],
                n: self.r.n,
            }),
        }
    }

    /// The JSON text of the payload last saved (kept after a prune).
    pub(crate) fn saved_text(&self) -> String {
        self.saved().text().into_owned()
    }

    fn push_id_lit(&self, out: &mut String) {
        match self.other() {
            Some(o) => push_str_lit(out, &o.id),
            None => {
                out.push('"');
                let ids = self.s.kinds[self.r.body as usize].ids;
                generate::push_generated_id(out, u64::from(self.r.n), ids);
                out.push('"');
            }
        }
    }

    /// Append the record as served: payload fields (only `id` when pruned), then
    /// `_nango_metadata`.
    pub(crate) fn render(&self, out: &mut String, rd: &mut Renderer) {
        if self.r.pruned != NONE {
            out.push_str("{\"id\":");
            self.push_id_lit(out);
        } else {
            match self.other() {
                Some(o) => o.saved.write(out),
                None => {
                    let kind = self.s.kinds[self.r.body as usize];
                    generate::write_generated(kind, u64::from(self.r.n), out);
                }
            }
            // Reopen the object for `_nango_metadata`.
            out.pop();
        }
        let modified = self.last_modified_at();
        out.push_str(",\"_nango_metadata\":{\"first_seen_at\":\"");
        rd.push_ts(self.first_seen_at(), out);
        out.push_str("\",\"last_modified_at\":\"");
        rd.push_ts(modified, out);
        out.push_str("\",\"last_action\":\"");
        out.push_str(self.last_action().as_str());
        out.push_str("\",\"deleted_at\":");
        rd.push_opt_ts(self.deleted_at(), out);
        out.push_str(",\"pruned_at\":");
        rd.push_opt_ts(self.pruned_at(), out);
        out.push_str(",\"cursor\":\"");
        rd.push_cursor((modified, self.r.uuid), out);
        out.push_str("\"}}");
    }

    /// The payload as served: the saved one, or only `{id}` when pruned.
    pub(crate) fn served_payload_text(&self) -> String {
        if self.r.pruned != NONE {
            let mut s = String::from("{\"id\":");
            self.push_id_lit(&mut s);
            s.push('}');
            s
        } else {
            self.saved_text()
        }
    }

    pub(crate) fn to_fake_record(self, offset: i32) -> FakeRecord {
        FakeRecord {
            id: self.id().into_owned(),
            payload: serde_json::from_str(&self.served_payload_text())
                .unwrap_or(serde_json::Value::Null),
            meta: Metadata {
                first_seen_at: self.first_seen_at(),
                last_modified_at: self.last_modified_at(),
                last_action: self.last_action(),
                deleted_at: self.deleted_at(),
                pruned_at: self.pruned_at(),
                cursor: Cursor(encode_cursor(self.pos(), offset)),
            },
            uuid: self.r.uuid,
        }
    }
}

/// Writes the timestamps and cursors of a page, remembering the text of the last
/// instants rendered: the records of one batch share them.
#[derive(Debug)]
pub(crate) struct Renderer {
    offset: i32,
    /// `(instant, its text)`, most recent first.
    cache: [(i64, String); 2],
    /// The text of the cursor being encoded, kept for its allocation.
    scratch: String,
}

impl Renderer {
    pub(crate) fn new(offset: i32) -> Self {
        Renderer {
            offset,
            cache: [(i64::MIN, String::new()), (i64::MIN, String::new())],
            scratch: String::new(),
        }
    }

    /// The text of `t` in PostgreSQL `to_json` form.
    fn ts(&mut self, t: Timestamp) -> &str {
        let t = t.as_micros();
        if self.cache[0].0 != t || self.cache[0].1.is_empty() {
            self.cache.swap(0, 1);
            if self.cache[0].0 != t || self.cache[0].1.is_empty() {
                let (at, text) = &mut self.cache[0];
                *at = t;
                text.clear();
                Timestamp::from_micros(t).write_json_form(self.offset, text);
            }
        }
        &self.cache[0].1
    }

    pub(crate) fn push_ts(&mut self, t: Timestamp, out: &mut String) {
        out.push_str(self.ts(t));
    }

    fn push_opt_ts(&mut self, t: Option<Timestamp>, out: &mut String) {
        match t {
            Some(t) => {
                out.push('"');
                self.push_ts(t, out);
                out.push('"');
            }
            None => out.push_str("null"),
        }
    }

    /// Append Nango's cursor of `pos`: standard padded base64 of
    /// `"<to_json(updated_at)>||<uuid>"`.
    pub(crate) fn push_cursor(&mut self, pos: Pos, out: &mut String) {
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        text.push_str(self.ts(pos.0));
        text.push_str("||");
        text.push_str(pos.1.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
        base64::engine::general_purpose::STANDARD.encode_string(&text, out);
        self.scratch = text;
    }
}

/// Nango's current cursor: standard padded base64 of `"<to_json(updated_at)>||<uuid>"`.
pub(crate) fn encode_cursor(pos: Pos, offset: i32) -> String {
    let mut out = String::new();
    Renderer::new(offset).push_cursor(pos, &mut out);
    out
}

/// Decode a cursor like Nango: base64 (padding optional), exactly two `||`-separated
/// parts, an ISO datetime with an offset and a UUID. `None` when invalid.
pub(crate) fn decode_cursor(cursor: &str) -> Option<Pos> {
    let bytes = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
        .decode(cursor.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.split("||");
    let (sort, id) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let t = Timestamp::parse(sort).ok()?;
    if !sort.contains('T') {
        return None;
    }
    let uuid = Uuid::parse_str(id).ok()?;
    if id.len() != 36 {
        return None;
    }
    Some((t, uuid))
}

/// One stream's records.
///
/// Records live in a slab (`recs`, 40 bytes each; a record keeps its slot until a hard
/// reset). Ids are found through `gen_slots` (indexed by `n` for ids of exactly a
/// generated form, `rec-NNNNNNN` or scattered) or `other_slots`. The stream order
/// `(last_modified_at, uuid)` is an append-only log of entries sorted by that key: every
/// mutation that moves a record gives it an instant later than every earlier one, so
/// its new entry goes at the end and its old entry turns stale. Stale entries are
/// dropped when they outnumber the records. About 52 bytes per generated record.
#[derive(Debug)]
pub(crate) struct Stream {
    recs: Vec<Rec>,
    /// The instants records refer to (index = `Rec::first_seen` etc).
    times: Vec<i64>,
    /// The kinds of generated payloads.
    kinds: Vec<GenKind>,
    others: Vec<OtherBody>,
    /// Unused entries of `others`.
    free_others: Vec<u32>,
    /// The slot of the record whose id is the generated id of `n`, at index `n`
    /// (`NONE`: no such record): the first one inserted, of either id order (generated,
    /// or saved with such an id); a record whose id is `n`'s in the other order is in
    /// `other_slots`.
    gen_slots: Vec<u32>,
    other_slots: HashMap<Box<str>, u32>,
    /// Entries sorted by `(times[t], recs[slot].uuid)`, stale ones included.
    order: Vec<Entry>,
    /// The uuid namespace: `uuid5(NIL, "<internal connection id><model>")`.
    ns: Uuid,
    /// `"<internal connection id><model>"`.
    prefix: String,
    /// The next number of `generate`.
    pub(crate) next_generated: u64,
}

impl Stream {
    fn new(internal_connection_id: u64, store_model: &str) -> Self {
        let prefix = format!("{internal_connection_id}{store_model}");
        Stream {
            recs: Vec::new(),
            times: Vec::new(),
            kinds: Vec::new(),
            others: Vec::new(),
            free_others: Vec::new(),
            gen_slots: Vec::new(),
            other_slots: HashMap::new(),
            order: Vec::new(),
            ns: Uuid::new_v5(&Uuid::nil(), prefix.as_bytes()),
            prefix,
            next_generated: 1,
        }
    }

    fn uuid_of(&self, id: &str) -> Uuid {
        let mut name = String::with_capacity(self.prefix.len() + id.len());
        name.push_str(&self.prefix);
        name.push_str(id);
        Uuid::new_v5(&self.ns, name.as_bytes())
    }

    fn time(&self, i: u32) -> Timestamp {
        Timestamp::from_micros(self.times[i as usize])
    }

    fn intern(&mut self, t: Timestamp) -> u32 {
        let i = u32::try_from(self.times.len()).expect("fewer than 2^32 instants");
        self.times.push(t.as_micros());
        i
    }

    fn at(&self, slot: u32) -> RecRef<'_> {
        RecRef {
            s: self,
            r: &self.recs[slot as usize],
        }
    }

    /// How many records (deleted ones included).
    pub(crate) fn len(&self) -> usize {
        self.recs.len()
    }

    /// How many records are not deleted.
    pub(crate) fn live_count(&self) -> usize {
        self.recs.iter().filter(|r| r.deleted == NONE).count()
    }

    fn slot_of(&self, id: &str) -> Option<u32> {
        if let Some((n, order)) = generate::parse_generated_id(id)
            && let Some(&slot) = self.gen_slots.get(n as usize)
            && slot != NONE
            && self.id_order_at(slot) == Some(order)
        {
            return Some(slot);
        }
        self.other_slots.get(id).copied()
    }

    /// The id order of the generated form of the id of the record at `slot` (`None`: its
    /// id is of no generated form).
    fn id_order_at(&self, slot: u32) -> Option<IdOrder> {
        let body = self.recs[slot as usize].body;
        if body < OTHER {
            Some(self.kinds[body as usize].ids)
        } else {
            generate::parse_generated_id(&self.others[(body - OTHER) as usize].id).map(|(_, o)| o)
        }
    }

    /// The record with this id.
    pub(crate) fn get(&self, id: &str) -> Option<RecRef<'_>> {
        self.slot_of(id).map(|slot| self.at(slot))
    }

    /// Every record, in no particular order.
    pub(crate) fn records(&self) -> impl Iterator<Item = RecRef<'_>> {
        self.recs.iter().map(move |r| RecRef { s: self, r })
    }

    /// The sort key of an order entry.
    fn key(&self, e: Entry) -> (i64, &Uuid) {
        (self.times[e.t as usize], &self.recs[e.slot as usize].uuid)
    }

    fn is_current(&self, e: Entry) -> bool {
        self.recs[e.slot as usize].modified == e.t
    }

    /// The index of the first order entry within `lower`.
    fn start(&self, lower: Bound<Pos>) -> usize {
        let below = |e: &Entry, b: &Pos, inclusive: bool| {
            let (t, uuid) = self.key(*e);
            let k = (t, uuid);
            let b = (b.0.as_micros(), &b.1);
            if inclusive { k < b } else { k <= b }
        };
        match lower {
            Bound::Unbounded => 0,
            Bound::Included(b) => self.order.partition_point(|e| below(e, &b, true)),
            Bound::Excluded(b) => self.order.partition_point(|e| below(e, &b, false)),
        }
    }

    /// The records in stream order.
    pub(crate) fn ordered(&self) -> impl Iterator<Item = RecRef<'_>> {
        self.range_from(Bound::Unbounded)
    }

    /// The records within `lower` (and up to the end), in stream order.
    pub(crate) fn range_from(&self, lower: Bound<Pos>) -> impl Iterator<Item = RecRef<'_>> {
        self.order[self.start(lower)..]
            .iter()
            .filter(|e| self.is_current(**e))
            .map(|e| self.at(e.slot))
    }

    /// Append the entries of records that just moved (to instants after every earlier
    /// one, except for a late write), keeping the log sorted.
    fn push_moves(&mut self, mut moved: Vec<Entry>) {
        if moved.is_empty() {
            return;
        }
        moved.sort_unstable_by(|a, b| self.key(*a).cmp(&self.key(*b)));
        let in_order = self
            .order
            .last()
            .is_none_or(|last| self.key(*last) < self.key(moved[0]));
        if in_order {
            self.order.extend(moved);
            if self.order.len() > 2 * self.recs.len() {
                self.compact();
            }
        } else {
            // A move back in time (a late write): insert at the sorted positions.
            self.compact();
            if moved.len() <= 64 {
                for e in moved {
                    let at = self.order.partition_point(|x| self.key(*x) < self.key(e));
                    self.order.insert(at, e);
                }
            } else {
                self.order.extend(moved);
                let mut order = std::mem::take(&mut self.order);
                order.sort_unstable_by(|a, b| self.key(*a).cmp(&self.key(*b)));
                self.order = order;
            }
        }
    }

    /// Drop the stale entries of the order log.
    fn compact(&mut self) {
        let recs = &self.recs;
        self.order.retain(|e| recs[e.slot as usize].modified == e.t);
    }

    /// Move the record to an earlier instant `at` (a write that started then and
    /// committed only now); its `first_seen_at` too when it was never changed.
    pub(crate) fn move_back(&mut self, id: &str, at: Timestamp) {
        let Some(slot) = self.slot_of(id) else { return };
        let added = self.at(slot).is_added();
        let t = self.intern(at);
        let r = &mut self.recs[slot as usize];
        if added {
            r.first_seen = t;
        }
        r.modified = t;
        self.push_moves(vec![Entry { t, slot }]);
    }

    /// The `kinds` index of a generated payload.
    fn kind(&mut self, kind: GenKind) -> u32 {
        let i = match self.kinds.iter().rposition(|k| *k == kind) {
            Some(i) => i,
            None => {
                self.kinds.push(kind);
                self.kinds.len() - 1
            }
        };
        u32::try_from(i)
            .ok()
            .filter(|i| *i < OTHER)
            .expect("few payload kinds")
    }

    /// Set the id and payload of a record (`body`, `n`), reusing its `others` entry.
    fn set_body(&mut self, slot: u32, id: &str, payload: Payload) {
        let old = self.recs[slot as usize].body;
        let generated = match payload {
            Payload::Generated { kind, n }
                if generate::parse_generated_id(id) == Some((n, kind.ids)) =>
            {
                Some((n, self.kind(kind)))
            }
            _ => None,
        };
        let (n, body) = match generated {
            Some((n, kind)) => {
                if old >= OTHER && old != NONE {
                    let i = old - OTHER;
                    self.others[i as usize] = OtherBody {
                        id: "".into(),
                        saved: Payload::Text("".into()),
                    };
                    self.free_others.push(i);
                }
                (n, kind)
            }
            None => {
                let body = OtherBody {
                    id: id.into(),
                    saved: payload,
                };
                let i = if old >= OTHER && old != NONE {
                    old - OTHER
                } else if let Some(i) = self.free_others.pop() {
                    i
                } else {
                    self.others.push(OtherBody {
                        id: "".into(),
                        saved: Payload::Text("".into()),
                    });
                    u32::try_from(self.others.len() - 1)
                        .ok()
                        .filter(|i| *i < OTHER - 1)
                        .expect("fewer than 2^31 - 1 records with other payloads")
                };
                self.others[i as usize] = body;
                (0, OTHER + i)
            }
        };
        let r = &mut self.recs[slot as usize];
        r.n = n;
        r.body = body;
    }

    /// A new record (body set from `payload`); returns its slot.
    fn insert(
        &mut self,
        id: &str,
        payload: Payload,
        first_seen: u32,
        modified: u32,
        deleted: u32,
    ) -> u32 {
        let slot = u32::try_from(self.recs.len())
            .ok()
            .filter(|s| *s != NONE)
            .expect("fewer than 2^32 - 1 records");
        self.recs.push(Rec {
            uuid: self.uuid_of(id),
            first_seen,
            modified,
            deleted,
            pruned: NONE,
            n: 0,
            body: NONE,
        });
        self.set_body(slot, id, payload);
        match generate::parse_generated_id(id) {
            Some((n, _))
                if (n as usize) < (2 * self.gen_slots.len()).max(4096)
                    && self.gen_slots.get(n as usize).is_none_or(|s| *s == NONE) =>
            {
                let n = n as usize;
                if self.gen_slots.len() <= n {
                    self.gen_slots.resize(n + 1, NONE);
                }
                self.gen_slots[n] = slot;
            }
            _ => {
                self.other_slots.insert(id.into(), slot);
            }
        }
        slot
    }

    /// Save a batch (Nango's upsert without soft delete).
    pub(crate) fn save(&mut self, records: Vec<Normalized>, clock: &mut Clock) -> Effect {
        self.save_payloads(
            dedupe(records)
                .into_iter()
                .map(|n| Saved {
                    id: n.id,
                    text: n.text.into(),
                })
                .collect(),
            clock,
        )
    }

    /// Save a batch of payloads with distinct ids (Nango's upsert without soft delete).
    pub(crate) fn save_payloads(&mut self, records: Vec<Saved>, clock: &mut Clock) -> Effect {
        let t = self.intern(clock.tick());
        let mut effect = Effect::default();
        let mut moved = Vec::new();
        for n in records {
            let list = match self.save_one(&n.id, n.text, t, &mut moved) {
                Outcome::Added => &mut effect.added,
                Outcome::Updated => &mut effect.updated,
                Outcome::Unchanged => &mut effect.unchanged,
            };
            list.push(n.id);
        }
        self.push_moves(moved);
        effect
    }

    /// Save generated records `first..first + count` with the payloads of `(mix,
    /// bytes)` in one batch, appending what happened to each to `outcomes`. Like
    /// [`Stream::save_payloads`] without an id `String` per record.
    pub(crate) fn save_generated(
        &mut self,
        first: u64,
        count: u64,
        kind: GenKind,
        clock: &mut Clock,
        outcomes: &mut Vec<Outcome>,
    ) {
        let t = self.intern(clock.tick());
        let mut moved = Vec::with_capacity(count as usize);
        let mut id = String::with_capacity(36);
        for k in first..first + count {
            id.clear();
            generate::push_generated_id(&mut id, k, kind.ids);
            let n = u32::try_from(k).expect("fewer than 2^32 generated records");
            let payload = Payload::Generated { kind, n };
            outcomes.push(self.save_one(&id, payload, t, &mut moved));
        }
        self.push_moves(moved);
    }

    /// Save one record of a batch at instant `t`; a record that moves gets an entry in
    /// `moved`.
    fn save_one(&mut self, id: &str, payload: Payload, t: u32, moved: &mut Vec<Entry>) -> Outcome {
        let Some(slot) = self.slot_of(id) else {
            let slot = self.insert(id, payload, t, t, NONE);
            moved.push(Entry { t, slot });
            return Outcome::Added;
        };
        let r = self.recs[slot as usize];
        let outcome = if r.deleted != NONE {
            self.set_body(slot, id, payload);
            let r = &mut self.recs[slot as usize];
            r.first_seen = t;
            r.modified = t;
            r.deleted = NONE;
            r.pruned = NONE;
            Outcome::Added
        } else if !self.at(slot).saved().same(&payload) {
            self.set_body(slot, id, payload);
            let r = &mut self.recs[slot as usize];
            r.modified = t;
            r.pruned = NONE;
            Outcome::Updated
        } else {
            // Identical payload: nothing moves; a pruned payload comes back.
            self.recs[slot as usize].pruned = NONE;
            return Outcome::Unchanged;
        };
        if r.modified != t {
            moved.push(Entry { t, slot });
        }
        outcome
    }

    /// Soft-delete a batch with the given payloads (Nango's upsert with soft delete).
    pub(crate) fn delete(&mut self, records: Vec<Normalized>, clock: &mut Clock) -> Effect {
        let (m, u) = clock.tick_delete();
        let (m, u) = (self.intern(m), self.intern(u));
        let mut effect = Effect::default();
        let mut moved = Vec::new();
        for n in dedupe(records) {
            let Some(slot) = self.slot_of(&n.id) else {
                // Never seen: a DELETED record appears, not reported as deleted.
                let slot = self.insert(&n.id, n.text.into(), u, m, m);
                moved.push(Entry { t: m, slot });
                continue;
            };
            let old = self.recs[slot as usize];
            let changed = *self.at(slot).saved().text() != *n.text;
            self.set_body(slot, &n.id, n.text.into());
            let r = &mut self.recs[slot as usize];
            r.deleted = m;
            r.modified = if changed { u } else { m };
            r.pruned = NONE;
            if old.deleted == NONE {
                effect.deleted.push(n.id);
            }
            if old.modified != r.modified {
                moved.push(Entry {
                    t: r.modified,
                    slot,
                });
            }
        }
        self.push_moves(moved);
        effect
    }

    /// Prune every not yet pruned record at or before `until` (inclusive), or only `ids`.
    pub(crate) fn prune(
        &mut self,
        until: Option<Pos>,
        ids: Option<&[&str]>,
        clock: &mut Clock,
    ) -> u64 {
        match (until, ids) {
            (Some(until), _) => self.prune_until(until, usize::MAX, clock).0,
            (None, Some(ids)) => {
                let targets: Vec<u32> = ids
                    .iter()
                    .filter_map(|id| self.slot_of(id))
                    .filter(|slot| self.recs[*slot as usize].pruned == NONE)
                    .collect();
                self.prune_slots(&targets, clock)
            }
            (None, None) => 0,
        }
    }

    /// Prune the first `limit` not yet pruned records at or before `until`, in stream
    /// order; returns how many, and whether more remain.
    pub(crate) fn prune_until(
        &mut self,
        until: Pos,
        limit: usize,
        clock: &mut Clock,
    ) -> (u64, bool) {
        let end = self.start(Bound::Excluded(until));
        let mut targets: Vec<u32> = self.order[..end]
            .iter()
            .filter(|e| self.is_current(**e) && self.recs[e.slot as usize].pruned == NONE)
            .map(|e| e.slot)
            .take(limit.saturating_add(1))
            .collect();
        let more = targets.len() > limit;
        targets.truncate(limit);
        (self.prune_slots(&targets, clock), more)
    }

    fn prune_slots(&mut self, targets: &[u32], clock: &mut Clock) -> u64 {
        if targets.is_empty() {
            return 0;
        }
        let t = self.intern(clock.tick());
        for slot in targets {
            self.recs[*slot as usize].pruned = t;
        }
        targets.len() as u64
    }

    /// Remove every record; no event.
    pub(crate) fn hard_reset(&mut self) -> u64 {
        let n = self.recs.len() as u64;
        self.recs = Vec::new();
        self.times = Vec::new();
        self.kinds = Vec::new();
        self.others = Vec::new();
        self.free_others = Vec::new();
        self.gen_slots = Vec::new();
        self.other_slots = HashMap::new();
        self.order = Vec::new();
        n
    }
}

/// What saving one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Added,
    Updated,
    Unchanged,
}

/// One payload to save (see [`Stream::save_payloads`]).
#[derive(Debug)]
pub(crate) struct Saved {
    pub(crate) id: String,
    pub(crate) text: Payload,
}

/// Keep the first record of each id (Nango drops duplicate keys of one batch).
fn dedupe(records: Vec<Normalized>) -> Vec<Normalized> {
    let mut seen = std::collections::HashSet::new();
    records
        .into_iter()
        .filter(|n| seen.insert(n.id.clone()))
        .collect()
}

/// The whole store.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) clock: Clock,
    pub(crate) connections: BTreeMap<(String, String), u64>,
    next_connection_id: u64,
    pub(crate) streams: BTreeMap<StreamKey, Stream>,
}

impl State {
    pub(crate) fn new(first_internal_connection_id: u64, clock: Clock) -> Self {
        State {
            clock,
            connections: BTreeMap::new(),
            next_connection_id: first_internal_connection_id,
            streams: BTreeMap::new(),
        }
    }

    /// Register a connection; returns its internal id.
    pub(crate) fn add_connection(&mut self, integration: &str, connection: &str) -> u64 {
        let key = (integration.to_string(), connection.to_string());
        if let Some(id) = self.connections.get(&key) {
            return *id;
        }
        let id = self.next_connection_id;
        self.next_connection_id += 1;
        self.connections.insert(key, id);
        id
    }

    /// The stream, created (and its connection registered) when missing.
    pub(crate) fn stream_mut(&mut self, key: &StreamKey) -> &mut Stream {
        if !self.streams.contains_key(key) {
            let conn = self.add_connection(&key.integration, &key.connection);
            self.streams
                .insert(key.clone(), Stream::new(conn, &store_model(key)));
        }
        self.streams.get_mut(key).expect("just inserted")
    }

    /// Split borrow: the stream and the clock.
    pub(crate) fn stream_and_clock(&mut self, key: &StreamKey) -> (&mut Stream, &mut Clock) {
        self.stream_mut(key);
        let State { streams, clock, .. } = self;
        (streams.get_mut(key).expect("exists"), clock)
    }
}

/// The model name Nango stores: `Model`, or `Model::variant` for a variant.
pub(crate) fn store_model(key: &StreamKey) -> String {
    match key.variant_param() {
        Some(v) => format!("{}::{v}", key.model),
        None => key.model.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_match_nango() {
        let s = Stream::new(9101, "Ticket");
        assert_eq!(
            s.uuid_of("tk-001").to_string(),
            "7e6b471c-3b40-580b-882a-b22357720182"
        );
        assert_eq!(
            s.uuid_of("1005").to_string(),
            "bafa78bf-d058-5d22-9160-f66654f9be37"
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let pos = (
            Timestamp::from_micros(1_795_722_442_728_380),
            Uuid::parse_str("9ea45547-3eeb-54bc-93e3-a2d5157d44f2").unwrap(),
        );
        let c = encode_cursor(pos, 0);
        assert_eq!(
            c,
            "MjAyNi0xMS0yNlQxOTo0NzoyMi43MjgzOCswMDowMHx8OWVhNDU1NDctM2VlYi01NGJjLTkzZTMtYTJkNTE1N2Q0NGYy"
        );
        assert_eq!(decode_cursor(&c), Some(pos));
        assert_eq!(decode_cursor(&encode_cursor(pos, -300)), Some(pos));
        for bad in [
            "not-a-valid-cursor",
            "Y3JlYXRlZF9hdF4yMDI0LTAxLTAxVDAwOjAwOjAwLjAwMFp8aWReMQ==",
            "",
            "fHw=",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn clock_is_strictly_increasing() {
        let mut c = Clock::new(Some(Timestamp::from_micros(1_000_000)), 1);
        let a = c.tick();
        let (m, u) = c.tick_delete();
        assert!(m > a && u > m && m.as_micros() % 1000 == 0);
        let b = c.tick();
        assert!(b > u);
        let mut real = Clock::new(None, 1);
        let mut last = real.tick();
        for _ in 0..1000 {
            let (m, u) = real.tick_delete();
            assert!(m > last && u > m);
            let t = real.tick();
            assert!(t > u);
            last = t;
        }
    }

    fn text(id: &str, v: u64) -> Normalized {
        Normalized {
            id: id.to_string(),
            text: format!("{{\"id\":{},\"v\":{v}}}", super::super::json::str_lit(id)),
        }
    }

    /// The stream order is sorted, holds every record once and agrees with `get` and
    /// with ranges from any record's position.
    fn check(s: &Stream, model: &std::collections::BTreeMap<String, (String, bool)>) {
        let ordered: Vec<RecRef<'_>> = s.ordered().collect();
        assert_eq!(ordered.len(), s.len());
        assert_eq!(ordered.len(), model.len());
        for w in ordered.windows(2) {
            assert!(w[0].pos() < w[1].pos(), "{:?} {:?}", w[0].pos(), w[1].pos());
        }
        for r in &ordered {
            let id = r.id();
            let (payload, deleted) = &model[id.as_ref()];
            assert_eq!(&r.saved_text(), payload, "{id}");
            assert_eq!(r.is_deleted(), *deleted, "{id}");
            assert_eq!(s.get(&id).map(|g| g.pos()), Some(r.pos()));
        }
        assert_eq!(s.live_count(), model.values().filter(|v| !v.1).count());
        for k in (0..ordered.len()).step_by(7) {
            let pos = ordered[k].pos();
            let after: Vec<Pos> = s
                .range_from(Bound::Excluded(pos))
                .map(|r| r.pos())
                .collect();
            let from: Vec<Pos> = s
                .range_from(Bound::Included(pos))
                .map(|r| r.pos())
                .collect();
            assert_eq!(after.len(), ordered.len() - k - 1);
            assert_eq!(from.len(), ordered.len() - k);
            assert_eq!(from[1..], after[..]);
        }
        // Stale entries never outnumber records by much (one batch at most).
        assert!(
            s.order.len() <= 2 * s.recs.len() + 64,
            "{} {}",
            s.order.len(),
            s.recs.len()
        );
    }

    #[test]
    fn order_log_stays_sorted_through_moves_late_writes_and_compaction() {
        use super::super::generate::{SplitMix64, generated_id, write_generated};
        let mut r = SplitMix64::new(5);
        let mut clock = Clock::new(Some(Timestamp::from_micros(1_700_000_000_000_000)), 1_000);
        let mut s = Stream::new(9101, "Ticket");
        let mut model = std::collections::BTreeMap::new();
        // Generated ids of both orders (the same numbers), and others.
        let orders = [IdOrder::Sequential, IdOrder::Scattered];
        let ids: Vec<String> = orders
            .iter()
            .flat_map(|o| (1..=40u64).map(|k| generated_id(k, *o)))
            .chain(["rec-12", "rec-99999999", "é\"x", "tk-1", "tk-2"].map(String::from))
            .collect();
        for step in 0..3000u64 {
            match r.below(100) {
                0..35 => {
                    let batch: Vec<Normalized> = (0..1 + r.below(8))
                        .map(|_| text(&ids[r.below(ids.len() as u64) as usize], r.below(3)))
                        .collect();
                    let mut seen = std::collections::HashSet::new();
                    for n in &batch {
                        if seen.insert(n.id.clone()) {
                            model.insert(n.id.clone(), (n.text.clone(), false));
                        }
                    }
                    s.save(batch, &mut clock);
                }
                35..55 => {
                    let first = 1 + r.below(40);
                    let count = 1 + r.below(10).min(40 - first);
                    let kind = GenKind {
                        mix: r.below(3),
                        bytes: 450 + r.below(2) as u32 * 300,
                        ids: orders[r.below(2) as usize],
                    };
                    let mut outcomes = Vec::new();
                    s.save_generated(first, count, kind, &mut clock, &mut outcomes);
                    assert_eq!(outcomes.len() as u64, count);
                    for k in first..first + count {
                        let mut payload = String::new();
                        write_generated(kind, k, &mut payload);
                        model.insert(generated_id(k, kind.ids), (payload, false));
                    }
                }
                55..70 => {
                    let batch: Vec<Normalized> = (0..1 + r.below(4))
                        .map(|_| text(&ids[r.below(ids.len() as u64) as usize], r.below(3)))
                        .collect();
                    let mut seen = std::collections::HashSet::new();
                    for n in &batch {
                        if seen.insert(n.id.clone()) {
                            model.insert(n.id.clone(), (n.text.clone(), true));
                        }
                    }
                    s.delete(batch, &mut clock);
                }
                70..80 => {
                    let picked: Vec<&str> = (0..r.below(5))
                        .map(|_| ids[r.below(ids.len() as u64) as usize].as_str())
                        .collect();
                    s.prune(None, Some(&picked), &mut clock);
                }
                80..85 => {
                    let ordered: Vec<Pos> = s.ordered().map(|r| r.pos()).collect();
                    if !ordered.is_empty() {
                        let until = ordered[r.below(ordered.len() as u64) as usize];
                        let (n, more) = s.prune_until(until, 3, &mut clock);
                        assert!(n <= 3 && (!more || n == 3));
                        assert!(
                            s.range_from(Bound::Unbounded)
                                .take_while(|r| r.pos() <= until)
                                .count()
                                > 0
                        );
                    }
                }
                85..97 => {
                    // A late write: back to an instant between earlier records.
                    let id = &ids[r.below(ids.len() as u64) as usize];
                    if s.get(id).is_some() {
                        let back = 1_000 * (1 + r.below(step + 1)) as i64 + r.below(1000) as i64;
                        let at = Timestamp::from_micros(clock.tick().as_micros() - back);
                        s.move_back(id, at);
                        assert_eq!(s.get(id).unwrap().last_modified_at(), at);
                    }
                }
                97 => {
                    s.hard_reset();
                    model.clear();
                }
                _ => {
                    let pruned: Vec<RecRef<'_>> =
                        s.records().filter(|r| r.pruned_at().is_some()).collect();
                    for p in pruned {
                        assert!(p.served_payload_text().starts_with("{\"id\":"));
                    }
                }
            }
            check(&s, &model);
        }
    }

    #[test]
    fn generated_records_of_both_id_orders_are_distinct_records() {
        use super::super::generate::{generated_id, write_generated};
        let mut clock = Clock::new(Some(Timestamp::from_micros(1_700_000_000_000_000)), 1_000);
        let mut s = Stream::new(9101, "Ticket");
        let kind = |ids| GenKind {
            mix: 7,
            bytes: 700,
            ids,
        };
        let (seq, scattered) = (kind(IdOrder::Sequential), kind(IdOrder::Scattered));
        // A scattered id saved by hand first: generating its number updates it.
        let third = generated_id(3, IdOrder::Scattered);
        s.save(vec![text(&third, 1)], &mut clock);
        let mut outcomes = Vec::new();
        s.save_generated(1, 4, seq, &mut clock, &mut outcomes);
        s.save_generated(1, 4, scattered, &mut clock, &mut outcomes);
        use Outcome::{Added, Updated};
        assert_eq!(
            outcomes,
            [Added, Added, Added, Added, Added, Added, Updated, Added]
        );
        assert_eq!(s.len(), 8);
        for k in 1..=4 {
            for kind in [seq, scattered] {
                let id = generated_id(k, kind.ids);
                let mut payload = String::new();
                write_generated(kind, k, &mut payload);
                let rec = s.get(&id).expect("found by its id");
                assert_eq!(rec.id(), id);
                assert_eq!(rec.saved_text(), payload);
                assert!(payload.contains(&format!("\"id\":\"{id}\"")), "{payload}");
            }
        }
        // Text saved over one order's record leaves the other's alone.
        let second = generated_id(2, IdOrder::Scattered);
        s.save(vec![text(&second, 4)], &mut clock);
        assert_eq!(s.get(&second).unwrap().saved_text(), text(&second, 4).text);
        let mut payload = String::new();
        write_generated(seq, 2, &mut payload);
        assert_eq!(s.get("rec-0000002").unwrap().saved_text(), payload);
        outcomes.clear();
        s.save_generated(1, 4, scattered, &mut clock, &mut outcomes);
        assert_eq!(
            outcomes,
            [
                Outcome::Unchanged,
                Updated,
                Outcome::Unchanged,
                Outcome::Unchanged
            ]
        );
    }

    #[test]
    fn generated_records_turn_into_text_and_back() {
        use super::super::generate::{generated_id, write_generated};
        let mut clock = Clock::new(Some(Timestamp::from_micros(1_700_000_000_000_000)), 1_000);
        let mut s = Stream::new(9101, "Ticket");
        // An id of the generated form saved by hand before generation, one far beyond
        // the generated numbers, and one that is not of the exact form.
        s.save(
            vec![
                text("rec-0000003", 1),
                text("rec-4000000000", 1),
                text("rec-03", 1),
            ],
            &mut clock,
        );
        let kind = |mix: u64| GenKind {
            mix,
            bytes: 700,
            ids: IdOrder::Sequential,
        };
        let mut outcomes = Vec::new();
        s.save_generated(1, 5, kind(7), &mut clock, &mut outcomes);
        assert_eq!(
            outcomes,
            [
                Outcome::Added,
                Outcome::Added,
                Outcome::Updated,
                Outcome::Added,
                Outcome::Added
            ]
        );
        let generated = |k: u64, mix: u64| {
            let mut p = String::new();
            write_generated(kind(mix), k, &mut p);
            p
        };
        assert_eq!(s.get("rec-0000003").unwrap().saved_text(), generated(3, 7));
        assert_eq!(
            s.get("rec-4000000000").unwrap().saved_text(),
            text("rec-4000000000", 1).text
        );
        assert!(s.get("rec-3").is_none() && s.get("rec-03").is_some());
        // Text over a generated payload, then generated again: the text's room is reused.
        s.save(vec![text("rec-0000002", 5)], &mut clock);
        assert_eq!(
            s.get("rec-0000002").unwrap().saved_text(),
            text("rec-0000002", 5).text
        );
        let others = s.others.len();
        outcomes.clear();
        s.save_generated(2, 1, kind(7), &mut clock, &mut outcomes);
        assert_eq!(outcomes, [Outcome::Updated]);
        s.save(vec![text("rec-0000004", 5)], &mut clock);
        assert_eq!(s.others.len(), others);
        // The same generated payload again: unchanged, nothing moves.
        let before: Vec<Pos> = s.ordered().map(|r| r.pos()).collect();
        outcomes.clear();
        s.save_generated(1, 2, kind(7), &mut clock, &mut outcomes);
        assert_eq!(outcomes, [Outcome::Unchanged, Outcome::Unchanged]);
        assert_eq!(before, s.ordered().map(|r| r.pos()).collect::<Vec<_>>());
        // A new revision changes every payload.
        outcomes.clear();
        s.save_generated(1, 5, kind(8), &mut clock, &mut outcomes);
        assert_eq!(outcomes, [Outcome::Updated; 5]);
        // One batch: the last five, ordered by uuid.
        let mut ids: Vec<String> = s.ordered().map(|r| r.id().into_owned()).collect();
        ids.drain(..ids.len() - 5);
        ids.sort();
        let sequential = |k| generated_id(k, IdOrder::Sequential);
        assert_eq!(ids, (1..=5).map(sequential).collect::<Vec<_>>());
        assert_eq!(s.get("rec-0000001").unwrap().saved_text(), generated(1, 8));
        assert_eq!(s.hard_reset(), 7);
        assert!(s.get("rec-0000001").is_none() && s.ordered().next().is_none());
    }

    #[test]
    fn a_generated_record_is_40_bytes() {
        assert_eq!(std::mem::size_of::<Rec>(), 40);
        assert_eq!(std::mem::size_of::<Entry>(), 8);
    }
}
