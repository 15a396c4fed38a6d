//! Late writes: a record Nango committed after a reader already passed its position.
//!
//! Nango stamps `last_modified_at` when a write's transaction starts, so a slow
//! transaction can become visible behind a cursor a sync run already read past
//! (protocol §3). [`FakeNango::save_late`] reproduces that: it saves a record and then
//! moves it to an earlier instant, as if its transaction had started then.

use serde_json::Value;

use super::{Effect, FakeNango, normalize_all};
use nango_sync::record::StreamKey;
use nango_sync::time::Timestamp;

impl FakeNango {
    /// Save one record (insert, update or undelete, like [`FakeNango::save`]) as a write
    /// that started at `at` but committed only now: its `last_modified_at` (and its
    /// `first_seen_at` when it is new) is `at`, which can be before cursors that readers
    /// already hold. Nothing happens to an identical payload.
    ///
    /// # Panics
    /// When the record is not an object with a non-empty `id` (a bug in the test).
    pub fn save_late(&self, stream: &StreamKey, record: Value, at: Timestamp) -> Effect {
        let normalized = normalize_all(std::slice::from_ref(&record));
        let id = normalized[0].id.clone();
        let effect = self.shared.save_normalized(stream, normalized);
        if effect.unchanged.contains(&id) {
            return effect;
        }
        self.shared.write().stream_mut(stream).move_back(&id, at);
        effect
    }
}
