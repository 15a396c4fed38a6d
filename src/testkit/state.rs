//! The records store of the fake: streams, records, the stream order index, the clock and
//! the mutation rules.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use base64::Engine as _;
use uuid::Uuid;

use super::json::{Normalized, push_str_lit};
use super::{Effect, FakeRecord};
use crate::record::{Cursor, LastAction, Metadata, StreamKey};
use crate::time::Timestamp;

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
    /// Generated record number `n` (see `generate::write_generated`).
    Generated {
        /// The seed, stream and revision mix.
        mix: u64,
        /// The record number.
        n: u32,
        /// The target size in bytes.
        bytes: u32,
    },
}

impl Payload {
    /// Append the JSON text.
    pub(crate) fn write(&self, out: &mut String) {
        match self {
            Payload::Text(t) => out.push_str(t),
            Payload::Generated { mix, n, bytes } => {
                super::generate::write_generated(*mix, u64::from(*n), *bytes, out)
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
            (
                Payload::Generated { mix, n, bytes },
                Payload::Generated {
                    mix: m2,
                    n: n2,
                    bytes: b2,
                },
            ) if (mix, n, bytes) == (m2, n2, b2) => true,
            _ => self.text() == other.text(),
        }
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload::Text(s.into())
    }
}

/// One stored record.
#[derive(Debug, Clone)]
pub(crate) struct Rec {
    pub(crate) id: String,
    pub(crate) uuid: Uuid,
    /// The payload last saved, kept after a prune.
    pub(crate) saved: Payload,
    pub(crate) first_seen_at: Timestamp,
    pub(crate) last_modified_at: Timestamp,
    pub(crate) deleted_at: Option<Timestamp>,
    pub(crate) pruned_at: Option<Timestamp>,
}

impl Rec {
    pub(crate) fn pos(&self) -> Pos {
        (self.last_modified_at, self.uuid)
    }

    /// Nango's `CASE WHEN deleted_at IS NOT NULL THEN 'DELETED' WHEN created_at =
    /// updated_at THEN 'ADDED' ELSE 'UPDATED' END`.
    pub(crate) fn last_action(&self) -> LastAction {
        if self.deleted_at.is_some() {
            LastAction::Deleted
        } else if self.first_seen_at == self.last_modified_at {
            LastAction::Added
        } else {
            LastAction::Updated
        }
    }

    /// Append the record as served: payload fields (only `id` when pruned), then
    /// `_nango_metadata`.
    pub(crate) fn render(&self, out: &mut String, offset: i32) {
        if self.pruned_at.is_some() {
            out.push_str("{\"id\":");
            push_str_lit(out, &self.id);
        } else {
            self.saved.write(out);
            // Reopen the object for `_nango_metadata`.
            out.pop();
        }
        out.push_str(",\"_nango_metadata\":{\"first_seen_at\":\"");
        out.push_str(&self.first_seen_at.to_json_form(offset));
        out.push_str("\",\"last_modified_at\":\"");
        out.push_str(&self.last_modified_at.to_json_form(offset));
        out.push_str("\",\"last_action\":\"");
        out.push_str(self.last_action().as_str());
        out.push_str("\",\"deleted_at\":");
        push_opt_ts(out, self.deleted_at, offset);
        out.push_str(",\"pruned_at\":");
        push_opt_ts(out, self.pruned_at, offset);
        out.push_str(",\"cursor\":\"");
        out.push_str(&encode_cursor(self.pos(), offset));
        out.push_str("\"}}");
    }

    pub(crate) fn served_payload_text(&self) -> String {
        if self.pruned_at.is_some() {
            let mut s = String::from("{\"id\":");
            push_str_lit(&mut s, &self.id);
            s.push('}');
            s
        } else {
            self.saved.text().into_owned()
        }
    }

    pub(crate) fn to_fake_record(&self, offset: i32) -> FakeRecord {
        FakeRecord {
            id: self.id.clone(),
            payload: serde_json::from_str(&self.served_payload_text())
                .unwrap_or(serde_json::Value::Null),
            meta: Metadata {
                first_seen_at: self.first_seen_at,
                last_modified_at: self.last_modified_at,
                last_action: self.last_action(),
                deleted_at: self.deleted_at,
                pruned_at: self.pruned_at,
                cursor: Cursor(encode_cursor(self.pos(), offset)),
            },
            uuid: self.uuid,
        }
    }
}

fn push_opt_ts(out: &mut String, t: Option<Timestamp>, offset: i32) {
    match t {
        Some(t) => {
            out.push('"');
            out.push_str(&t.to_json_form(offset));
            out.push('"');
        }
        None => out.push_str("null"),
    }
}

/// Nango's current cursor: standard padded base64 of `"<to_json(updated_at)>||<uuid>"`.
pub(crate) fn encode_cursor(pos: Pos, offset: i32) -> String {
    let text = format!("{}||{}", pos.0.to_json_form(offset), pos.1);
    base64::engine::general_purpose::STANDARD.encode(text)
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
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) by_id: HashMap<String, Rec>,
    pub(crate) index: BTreeMap<Pos, String>,
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
            by_id: HashMap::new(),
            index: BTreeMap::new(),
            ns: Uuid::new_v5(&Uuid::nil(), prefix.as_bytes()),
            prefix,
            next_generated: 1,
        }
    }

    fn uuid_of(&self, id: &str) -> Uuid {
        Uuid::new_v5(&self.ns, format!("{}{}", self.prefix, id).as_bytes())
    }

    fn reindex(&mut self, old: Option<Pos>, rec: Rec) {
        if let Some(old) = old {
            self.index.remove(&old);
        }
        self.index.insert(rec.pos(), rec.id.clone());
        self.by_id.insert(rec.id.clone(), rec);
    }

    /// The records in stream order.
    pub(crate) fn ordered(&self) -> impl Iterator<Item = &Rec> {
        self.index.values().map(|id| &self.by_id[id])
    }

    /// Records strictly after `after` and at or after `from`, in stream order.
    pub(crate) fn range_from(&self, lower: Bound<Pos>) -> impl Iterator<Item = &Rec> {
        self.index
            .range((lower, Bound::Unbounded))
            .map(|(_, id)| &self.by_id[id])
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
        let t = clock.tick();
        let mut effect = Effect::default();
        for n in records {
            match self.by_id.get(&n.id).cloned() {
                None => {
                    let rec = Rec {
                        uuid: self.uuid_of(&n.id),
                        id: n.id.clone(),
                        saved: n.text,
                        first_seen_at: t,
                        last_modified_at: t,
                        deleted_at: None,
                        pruned_at: None,
                    };
                    self.reindex(None, rec);
                    effect.added.push(n.id);
                }
                Some(mut rec) => {
                    let old = rec.pos();
                    if rec.deleted_at.is_some() {
                        rec.first_seen_at = t;
                        rec.last_modified_at = t;
                        rec.deleted_at = None;
                        rec.pruned_at = None;
                        rec.saved = n.text;
                        effect.added.push(n.id);
                    } else if !rec.saved.same(&n.text) {
                        rec.last_modified_at = t;
                        rec.pruned_at = None;
                        rec.saved = n.text;
                        effect.updated.push(n.id);
                    } else {
                        // Identical payload: nothing moves; a pruned payload comes back.
                        rec.pruned_at = None;
                        effect.unchanged.push(n.id);
                    }
                    self.reindex(Some(old), rec);
                }
            }
        }
        effect
    }

    /// Soft-delete a batch with the given payloads (Nango's upsert with soft delete).
    pub(crate) fn delete(&mut self, records: Vec<Normalized>, clock: &mut Clock) -> Effect {
        let (m, u) = clock.tick_delete();
        let mut effect = Effect::default();
        for n in dedupe(records) {
            match self.by_id.get(&n.id).cloned() {
                None => {
                    // Never seen: a DELETED record appears, not reported as deleted.
                    let rec = Rec {
                        uuid: self.uuid_of(&n.id),
                        id: n.id.clone(),
                        saved: n.text.into(),
                        first_seen_at: u,
                        last_modified_at: m,
                        deleted_at: Some(m),
                        pruned_at: None,
                    };
                    self.reindex(None, rec);
                }
                Some(mut rec) => {
                    let old = rec.pos();
                    let was_deleted = rec.deleted_at.is_some();
                    let changed = *rec.saved.text() != *n.text;
                    rec.deleted_at = Some(m);
                    rec.last_modified_at = if changed { u } else { m };
                    rec.pruned_at = None;
                    rec.saved = n.text.into();
                    if !was_deleted {
                        effect.deleted.push(n.id);
                    }
                    self.reindex(Some(old), rec);
                }
            }
        }
        effect
    }

    /// Prune every not yet pruned record at or before `until` (inclusive), or only `ids`.
    pub(crate) fn prune(
        &mut self,
        until: Option<Pos>,
        ids: Option<&[&str]>,
        clock: &mut Clock,
    ) -> u64 {
        let targets: Vec<String> = match (until, ids) {
            (Some(until), _) => self
                .index
                .range(..=until)
                .filter(|(_, id)| self.by_id[*id].pruned_at.is_none())
                .map(|(_, id)| id.clone())
                .collect(),
            (None, Some(ids)) => ids
                .iter()
                .filter(|id| self.by_id.get(**id).is_some_and(|r| r.pruned_at.is_none()))
                .map(|id| id.to_string())
                .collect(),
            (None, None) => Vec::new(),
        };
        if targets.is_empty() {
            return 0;
        }
        let t = clock.tick();
        for id in &targets {
            if let Some(r) = self.by_id.get_mut(id) {
                r.pruned_at = Some(t);
            }
        }
        targets.len() as u64
    }

    /// Remove every record; no event.
    pub(crate) fn hard_reset(&mut self) -> u64 {
        let n = self.by_id.len() as u64;
        self.by_id.clear();
        self.index.clear();
        n
    }
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
}
