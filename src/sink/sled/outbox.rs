//! The sled store's outbox, in the store's one tree:
//!
//! | key | value |
//! |---|---|
//! | `'o'` + id (`u64` big-endian) | one item (JSON) |
//! | `'q' 0x00` | the last item id handed out |
//! | `'q' 0x01` + id | the queue: one empty entry per item not finished yet, in id order |
//! | `'q' 0x02` + idempotency key | the id of the item that has the key |
//!
//! Every change takes the store's write lock, reads what it needs, applies the
//! transitions of [`crate::sink::outbox`] and writes one [`Batch`] (flushed per the
//! store's durability). A claim walks the queue from its start, so finished items cost
//! nothing.

use ::sled::Batch;
use serde::{Deserialize, Serialize};

use super::error::sled_err;
use super::schema::be_u64;
use super::{Inner, corrupt};
use crate::error::Result;
use crate::record::RawJson;
use crate::sink::outbox::{
    self, Claim, ClaimRequest, Claimable, NewOutboxItem, OutboxCounts, OutboxError, OutboxItem,
    OutboxQuery, OutboxState, Settlement,
};
use crate::time::Timestamp;

/// The first byte of an item's key.
pub(super) const TAG_OUTBOX: u8 = b'o';
/// The first byte of the queue's, the counter's and the keys' entries.
pub(super) const TAG_QUEUE: u8 = b'q';
const KEY_LAST_ID: &[u8] = b"q\x00";
const QUEUE: u8 = 1;
const KEYS: u8 = 2;

fn item_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = TAG_OUTBOX;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn queue_key(id: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = TAG_QUEUE;
    k[1] = QUEUE;
    k[2..].copy_from_slice(&id.to_be_bytes());
    k
}

fn idempotency_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&[TAG_QUEUE, KEYS]);
    k.extend_from_slice(key.as_bytes());
    k
}

/// An item as stored (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct ItemRow {
    integration: String,
    connection: String,
    action: String,
    input: Option<String>,
    key: Option<String>,
    then_sync: Vec<String>,
    max_attempts: u32,
    state: OutboxState,
    attempts: u32,
    created_at: i64,
    available_at: i64,
    updated_at: i64,
    lease_until: Option<i64>,
    worker: Option<String>,
    output: Option<String>,
    error: Option<OutboxError>,
    finished_at: Option<i64>,
}

fn encode(item: &OutboxItem) -> Result<Vec<u8>> {
    let row = ItemRow {
        integration: item.integration.clone(),
        connection: item.connection.clone(),
        action: item.action.clone(),
        input: item.input.as_ref().map(|j| j.as_str().to_owned()),
        key: item.key.clone(),
        then_sync: item.then_sync.clone(),
        max_attempts: item.max_attempts,
        state: item.state,
        attempts: item.attempts,
        created_at: item.created_at.as_micros(),
        available_at: item.available_at.as_micros(),
        updated_at: item.updated_at.as_micros(),
        lease_until: item.lease_until.map(Timestamp::as_micros),
        worker: item.worker.clone(),
        output: item.output.as_ref().map(|j| j.as_str().to_owned()),
        error: item.error.clone(),
        finished_at: item.finished_at.map(Timestamp::as_micros),
    };
    serde_json::to_vec(&row)
        .map_err(|e| crate::Error::store(super::BACKEND, "encode an outbox item", false, e))
}

fn decode(id: u64, bytes: &[u8]) -> Result<OutboxItem> {
    let r: ItemRow =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("outbox item {id}: {e}")))?;
    Ok(OutboxItem {
        id,
        integration: r.integration,
        connection: r.connection,
        action: r.action,
        input: r.input.map(RawJson::from_trusted),
        key: r.key,
        then_sync: r.then_sync,
        max_attempts: r.max_attempts,
        state: r.state,
        attempts: r.attempts,
        created_at: Timestamp::from_micros(r.created_at),
        available_at: Timestamp::from_micros(r.available_at),
        updated_at: Timestamp::from_micros(r.updated_at),
        lease_until: r.lease_until.map(Timestamp::from_micros),
        worker: r.worker,
        output: r.output.map(RawJson::from_trusted),
        error: r.error,
        finished_at: r.finished_at.map(Timestamp::from_micros),
    })
}

/// What the store's check says about an outbox key (`None`: fine).
pub(super) fn key_problem(key: &[u8], value: &[u8]) -> Option<String> {
    match key {
        [TAG_OUTBOX, id @ ..] => match be_u64(id) {
            Some(id) => decode(id, value).err().map(|e| e.to_string()),
            None => Some(format!("outbox key {} is malformed", hex::encode(key))),
        },
        KEY_LAST_ID => be_u64(value)
            .is_none()
            .then(|| "the last outbox id is malformed".to_string()),
        [TAG_QUEUE, QUEUE, id @ ..] => (be_u64(id).is_none() || !value.is_empty())
            .then(|| format!("outbox queue entry {} is malformed", hex::encode(key))),
        [TAG_QUEUE, KEYS, ..] => be_u64(value)
            .is_none()
            .then(|| format!("outbox key entry {} is malformed", hex::encode(key))),
        _ => Some(format!("unknown key {}", hex::encode(key))),
    }
}

impl Inner {
    fn outbox_item(&self, id: u64) -> Result<Option<OutboxItem>> {
        match self
            .tree
            .get(item_key(id))
            .map_err(sled_err("read an outbox item"))?
        {
            Some(v) => decode(id, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Stage `item` (and its queue entry) in `batch`.
    fn stage(batch: &mut Batch, item: &OutboxItem) -> Result<()> {
        batch.insert(&item_key(item.id)[..], encode(item)?);
        if item.state.is_finished() {
            batch.remove(&queue_key(item.id)[..]);
        } else {
            batch.insert(&queue_key(item.id)[..], &[][..]);
        }
        Ok(())
    }

    pub(super) fn outbox_enqueue(&self, new: NewOutboxItem) -> Result<OutboxItem> {
        new.check()?;
        let _w = self.lock_write();
        if let Some(key) = &new.key
            && let Some(v) = self
                .tree
                .get(idempotency_key(key))
                .map_err(sled_err("read an outbox key"))?
        {
            let id = be_u64(&v).ok_or_else(|| corrupt("outbox key entry"))?;
            return self
                .outbox_item(id)?
                .ok_or_else(|| corrupt(format!("outbox key names a missing item {id}")));
        }
        let id = match self
            .tree
            .get(KEY_LAST_ID)
            .map_err(sled_err("read the last outbox id"))?
        {
            Some(v) => be_u64(&v).ok_or_else(|| corrupt("last outbox id"))?,
            None => 0,
        } + 1;
        let item = new.into_item(id);
        let mut batch = Batch::default();
        batch.insert(KEY_LAST_ID, &id.to_be_bytes());
        if let Some(k) = &item.key {
            batch.insert(idempotency_key(k), &id.to_be_bytes());
        }
        Self::stage(&mut batch, &item)?;
        self.apply(batch, "enqueue an outbox item")?;
        Ok(item)
    }

    pub(super) fn outbox_claim(&self, req: &ClaimRequest) -> Result<Option<OutboxItem>> {
        let _w = self.lock_write();
        let mut batch = Batch::default();
        let mut claimed = None;
        let mut changed = false;
        for entry in self.tree.scan_prefix([TAG_QUEUE, QUEUE]) {
            let (k, _) = entry.map_err(sled_err("scan the outbox queue"))?;
            let id = be_u64(&k[2..]).ok_or_else(|| corrupt("outbox queue entry"))?;
            let mut item = self
                .outbox_item(id)?
                .ok_or_else(|| corrupt(format!("the outbox queue names a missing item {id}")))?;
            match outbox::claimable(&item, req.now) {
                Claimable::No => {}
                Claimable::Abandon => {
                    outbox::abandon(&mut item, req.now);
                    Self::stage(&mut batch, &item)?;
                    changed = true;
                }
                Claimable::Deliver => {
                    outbox::claim(&mut item, req);
                    Self::stage(&mut batch, &item)?;
                    changed = true;
                    claimed = Some(item);
                    break;
                }
            }
        }
        if changed {
            self.apply(batch, "claim an outbox item")?;
        }
        Ok(claimed)
    }

    /// Change the item `claim` holds with `f`; `false` when the claim no longer holds it.
    pub(super) fn outbox_change_claimed(
        &self,
        operation: &'static str,
        claim: &Claim,
        f: impl FnOnce(&mut OutboxItem),
    ) -> Result<bool> {
        let _w = self.lock_write();
        let Some(mut item) = self.outbox_item(claim.id)? else {
            return Ok(false);
        };
        if !outbox::holds(&item, claim) {
            return Ok(false);
        }
        f(&mut item);
        let mut batch = Batch::default();
        Self::stage(&mut batch, &item)?;
        self.apply(batch, operation)?;
        Ok(true)
    }

    pub(super) fn outbox_settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        self.outbox_change_claimed("settle an outbox item", claim, |item| {
            outbox::settle(item, settlement, now)
        })
    }

    pub(super) fn outbox_extend(
        &self,
        claim: &Claim,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<bool> {
        self.outbox_change_claimed("extend an outbox lease", claim, |item| {
            outbox::extend(item, until, now)
        })
    }

    pub(super) fn outbox_get(&self, id: u64) -> Result<Option<OutboxItem>> {
        let _r = self.read_guard();
        self.outbox_item(id)
    }

    pub(super) fn outbox_list(&self, query: &OutboxQuery) -> Result<Vec<OutboxItem>> {
        let _r = self.read_guard();
        let start = item_key(query.after_id.map_or(0, |id| id.saturating_add(1)));
        let mut out = Vec::new();
        if query.limit == 0 {
            return Ok(out);
        }
        for entry in self.tree.range(start.to_vec()..vec![TAG_OUTBOX + 1]) {
            let (k, v) = entry.map_err(sled_err("list outbox items"))?;
            let id = be_u64(&k[1..]).ok_or_else(|| corrupt("outbox key"))?;
            let item = decode(id, &v)?;
            if query.selects(&item) {
                out.push(item);
                if out.len() == query.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub(super) fn outbox_counts(&self) -> Result<OutboxCounts> {
        let _r = self.read_guard();
        let mut counts = OutboxCounts::default();
        for entry in self.tree.scan_prefix([TAG_OUTBOX]) {
            let (k, v) = entry.map_err(sled_err("count outbox items"))?;
            let id = be_u64(&k[1..]).ok_or_else(|| corrupt("outbox key"))?;
            counts.add(decode(id, &v)?.state);
        }
        Ok(counts)
    }

    pub(super) fn outbox_purge(&self, before: Timestamp) -> Result<u64> {
        let _w = self.lock_write();
        let mut batch = Batch::default();
        let mut n = 0;
        for entry in self.tree.scan_prefix([TAG_OUTBOX]) {
            let (k, v) = entry.map_err(sled_err("purge outbox items"))?;
            let id = be_u64(&k[1..]).ok_or_else(|| corrupt("outbox key"))?;
            let item = decode(id, &v)?;
            if outbox::purged(&item, before) {
                batch.remove(k);
                if let Some(key) = &item.key {
                    batch.remove(idempotency_key(key));
                }
                n += 1;
            }
        }
        if n > 0 {
            self.apply(batch, "purge outbox items")?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keys_sort_by_id() {
        assert!(item_key(2) < item_key(256));
        assert!(queue_key(2) < queue_key(256));
        assert!(key_problem(&item_key(1), b"{}").is_some());
        assert!(key_problem(KEY_LAST_ID, &7u64.to_be_bytes()).is_none());
        assert!(key_problem(&queue_key(3), b"").is_none());
        assert!(key_problem(&idempotency_key("k"), &3u64.to_be_bytes()).is_none());
        assert!(key_problem(b"qz", b"").is_some());
    }
}
