//! The memory store's outbox: items in a map by id, under the store's outbox lock. The
//! reference the conformance suite compares the other stores' outboxes with.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use crate::error::Result;
use crate::sink::outbox::{
    self, Claim, ClaimRequest, Claimable, NewOutboxItem, OutboxCounts, OutboxItem, OutboxQuery,
    Settlement,
};
use crate::time::Timestamp;

/// Every item, and the idempotency keys in use.
#[derive(Debug, Default)]
pub(super) struct MemoryOutbox {
    last_id: u64,
    items: BTreeMap<u64, OutboxItem>,
    keys: HashMap<String, u64>,
}

impl MemoryOutbox {
    pub(super) fn enqueue(&mut self, new: NewOutboxItem) -> Result<OutboxItem> {
        new.check()?;
        if let Some(id) = new.key.as_ref().and_then(|k| self.keys.get(k))
            && let Some(existing) = self.items.get(id)
        {
            return Ok(existing.clone());
        }
        self.last_id += 1;
        let item = new.into_item(self.last_id);
        if let Some(k) = &item.key {
            self.keys.insert(k.clone(), item.id);
        }
        self.items.insert(item.id, item.clone());
        Ok(item)
    }

    pub(super) fn claim(&mut self, req: &ClaimRequest) -> Option<OutboxItem> {
        for item in self.items.values_mut() {
            match outbox::claimable(item, req.now) {
                Claimable::No => {}
                Claimable::Abandon => outbox::abandon(item, req.now),
                Claimable::Deliver => {
                    outbox::claim(item, req);
                    return Some(item.clone());
                }
            }
        }
        None
    }

    pub(super) fn extend(&mut self, claim: &Claim, until: Timestamp, now: Timestamp) -> bool {
        match self.items.get_mut(&claim.id) {
            Some(item) if outbox::holds(item, claim) => {
                outbox::extend(item, until, now);
                true
            }
            _ => false,
        }
    }

    pub(super) fn settle(&mut self, claim: &Claim, s: Settlement, now: Timestamp) -> bool {
        match self.items.get_mut(&claim.id) {
            Some(item) if outbox::holds(item, claim) => {
                outbox::settle(item, s, now);
                true
            }
            _ => false,
        }
    }

    pub(super) fn get(&self, id: u64) -> Option<OutboxItem> {
        self.items.get(&id).cloned()
    }

    pub(super) fn list(&self, query: &OutboxQuery) -> Vec<OutboxItem> {
        let lower = query.after_id.map_or(Bound::Unbounded, Bound::Excluded);
        self.items
            .range((lower, Bound::Unbounded))
            .map(|(_, item)| item)
            .filter(|item| query.selects(item))
            .take(query.limit)
            .cloned()
            .collect()
    }

    pub(super) fn counts(&self) -> OutboxCounts {
        let mut counts = OutboxCounts::default();
        for item in self.items.values() {
            counts.add(item.state);
        }
        counts
    }

    pub(super) fn purge(&mut self, before: Timestamp) -> u64 {
        let gone: Vec<u64> = self
            .items
            .values()
            .filter(|item| outbox::purged(item, before))
            .map(|item| item.id)
            .collect();
        for id in &gone {
            if let Some(item) = self.items.remove(id)
                && let Some(k) = item.key
            {
                self.keys.remove(&k);
            }
        }
        gone.len() as u64
    }
}
