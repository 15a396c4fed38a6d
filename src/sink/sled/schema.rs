//! The sled store's layout: one tree, its keys, the on-disk format version, and the
//! marker file beside sled's own.
//!
//! See the [module documentation](super#layout) for the table of keys. Record values
//! are encoded by [`rows`](super::rows).

use crate::record::StreamKey;

/// The one tree every key lives in (a sled batch is atomic within one tree only).
pub(super) const TREE: &str = "nango_sync";
/// The on-disk format this build reads and writes: 3, the change feed indexed per
/// commit (format 1 had no index, format 2 one key per record; both are migrated when
/// opened, see `feed::migrate`).
pub(super) const FORMAT: u64 = 3;

/// A file written next to sled's own once the store is created (sled ignores it): an
/// empty database beside it is a damaged store, not a new one.
pub(super) const MARKER: &str = "nango-sync-store";
pub(super) const MARKER_TEXT: &str = "a nango-sync store: sled database\n";

pub(super) const KEY_FORMAT: &[u8] = b"\x00format";
pub(super) const KEY_SEQ: &[u8] = b"\x00seq";
pub(super) const KEY_SID: &[u8] = b"\x00sid";
/// The first byte of the store's own keys (format, seq, sid).
pub(super) const TAG_META: u8 = 0;
pub(super) const TAG_INDEX: u8 = b'i';
pub(super) const TAG_STREAM: u8 = b's';
pub(super) const TAG_RECORD: u8 = b'r';
/// A recorded run (see `history.rs`).
pub(super) const TAG_HISTORY: u8 = b'h';

/// `'i'` then each field of the stream key, length-prefixed.
pub(super) fn index_key(stream: &StreamKey) -> Vec<u8> {
    let fields = [
        &stream.integration,
        &stream.connection,
        &stream.model,
        &stream.variant,
    ];
    let mut key = Vec::with_capacity(1 + fields.iter().map(|f| 4 + f.len()).sum::<usize>());
    key.push(TAG_INDEX);
    for f in fields {
        key.extend_from_slice(&(f.len() as u32).to_be_bytes());
        key.extend_from_slice(f.as_bytes());
    }
    key
}

pub(super) fn stream_row_key(sid: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = TAG_STREAM;
    key[1..].copy_from_slice(&sid.to_be_bytes());
    key
}

/// `'r'` + sid: the prefix of a stream's record keys (room for an id after it).
pub(super) fn record_prefix(sid: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + 64);
    key.push(TAG_RECORD);
    key.extend_from_slice(&sid.to_be_bytes());
    key
}

pub(super) fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_are_length_prefixed() {
        let a = StreamKey::new("ab", "c", "M");
        let b = StreamKey::new("a", "bc", "M");
        assert_ne!(index_key(&a), index_key(&b));
    }
}
