//! The SQLite store's outbox: the `nango_outbox` table (migration 5; its columns are
//! documented in [`crate::sink::outbox`]).
//!
//! Every change is one `BEGIN IMMEDIATE` transaction on the writer connection: it reads
//! the rows concerned, applies the transitions of [`crate::sink::outbox`] and writes the
//! rows back. `BEGIN IMMEDIATE` takes SQLite's write lock first, so two processes (or
//! two stores) claiming from one file never take the same item. Reads use the read
//! connections.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::error::sql_err;
use crate::error::Result;
use crate::record::RawJson;
use crate::sink::outbox::{
    self, Claim, ClaimRequest, Claimable, NewOutboxItem, OutboxCounts, OutboxItem, OutboxQuery,
    OutboxState, Settlement,
};
use crate::time::Timestamp;

/// The columns [`item_from_row`] reads, in order.
const COLUMNS: &str = "id, integration, connection, action, input, idempotency_key, then_sync, \
     max_attempts, state, attempts, created_at, available_at, updated_at, lease_until, worker, \
     output, error, finished_at";

/// An item from a row of [`COLUMNS`].
fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxItem> {
    let state: String = r.get(8)?;
    let state = OutboxState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            8,
            rusqlite::types::Type::Text,
            format!("unknown outbox state {state:?}").into(),
        )
    })?;
    let then_sync: String = r.get(6)?;
    let error: Option<String> = r.get(16)?;
    let (then_sync, error) = outbox::decode_json_columns(&then_sync, error.as_deref());
    let ts = |i| r.get::<_, i64>(i).map(Timestamp::from_micros);
    let opt_ts = |i| {
        r.get::<_, Option<i64>>(i)
            .map(|t| t.map(Timestamp::from_micros))
    };
    let count = |i| {
        r.get::<_, i64>(i)
            .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
    };
    Ok(OutboxItem {
        id: r.get::<_, i64>(0)? as u64,
        integration: r.get(1)?,
        connection: r.get(2)?,
        action: r.get(3)?,
        input: r.get::<_, Option<String>>(4)?.map(RawJson::from_trusted),
        key: r.get(5)?,
        then_sync,
        max_attempts: count(7)?,
        state,
        attempts: count(9)?,
        created_at: ts(10)?,
        available_at: ts(11)?,
        updated_at: ts(12)?,
        lease_until: opt_ts(13)?,
        worker: r.get(14)?,
        output: r.get::<_, Option<String>>(15)?.map(RawJson::from_trusted),
        error,
        finished_at: opt_ts(17)?,
    })
}

/// Write back what a transition changes.
fn write_back(c: &Connection, item: &OutboxItem) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE nango_outbox SET state = ?2, attempts = ?3, available_at = ?4, updated_at = ?5,
             lease_until = ?6, worker = ?7, output = ?8, error = ?9, finished_at = ?10
         WHERE id = ?1",
    )?
    .execute(params![
        item.id as i64,
        item.state.as_str(),
        i64::from(item.attempts),
        item.available_at.as_micros(),
        item.updated_at.as_micros(),
        item.lease_until.map(Timestamp::as_micros),
        item.worker,
        item.output.as_ref().map(RawJson::as_str),
        item.error.as_ref().map(|e| e.to_json()),
        item.finished_at.map(Timestamp::as_micros),
    ])?;
    Ok(())
}

fn by_id(c: &Connection, id: u64) -> rusqlite::Result<Option<OutboxItem>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM nango_outbox WHERE id = ?1"))?
        .query_row([id as i64], item_from_row)
        .optional()
}

pub(super) fn enqueue(c: &mut Connection, new: NewOutboxItem) -> Result<OutboxItem> {
    new.check()?;
    let e = |e| sql_err("enqueue an outbox item", e);
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    if let Some(key) = &new.key {
        let existing = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM nango_outbox WHERE idempotency_key = ?1"
            ))
            .map_err(e)?
            .query_row([key], item_from_row)
            .optional()
            .map_err(e)?;
        if let Some(item) = existing {
            return Ok(item);
        }
    }
    let then_sync = serde_json::to_string(&new.then_sync).expect("strings serialize");
    tx.prepare_cached(
        "INSERT INTO nango_outbox (integration, connection, action, input, idempotency_key,
             then_sync, max_attempts, state, attempts, created_at, available_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?8, ?9, ?8)",
    )
    .map_err(e)?
    .execute(params![
        new.integration,
        new.connection,
        new.action,
        new.input.as_ref().map(RawJson::as_str),
        new.key,
        then_sync,
        i64::from(new.max_attempts),
        new.created_at.as_micros(),
        new.available_at.as_micros(),
    ])
    .map_err(e)?;
    let id = tx.last_insert_rowid() as u64;
    tx.commit().map_err(e)?;
    Ok(new.into_item(id))
}

pub(super) fn claim(c: &mut Connection, req: &ClaimRequest) -> Result<Option<OutboxItem>> {
    let e = |e| sql_err("claim an outbox item", e);
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    let now = req.now.as_micros();
    let claimed = loop {
        // A few candidates at a time: items abandoned on the way are failed and skipped.
        let candidates: Vec<OutboxItem> = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM nango_outbox
                 WHERE state IN ('pending', 'running')
                   AND ((state = 'pending' AND available_at <= ?1)
                        OR (state = 'running' AND (lease_until IS NULL OR lease_until <= ?1)))
                 ORDER BY id LIMIT 16"
            ))
            .map_err(e)?
            .query_map([now], item_from_row)
            .map_err(e)?
            .collect::<rusqlite::Result<_>>()
            .map_err(e)?;
        if candidates.is_empty() {
            break None;
        }
        let mut found = None;
        let mut abandoned = 0;
        for mut item in candidates {
            match outbox::claimable(&item, req.now) {
                Claimable::No => {}
                Claimable::Abandon => {
                    outbox::abandon(&mut item, req.now);
                    write_back(&tx, &item).map_err(e)?;
                    abandoned += 1;
                }
                Claimable::Deliver => {
                    outbox::claim(&mut item, req);
                    write_back(&tx, &item).map_err(e)?;
                    found = Some(item);
                    break;
                }
            }
        }
        if found.is_some() || abandoned == 0 {
            break found;
        }
    };
    tx.commit().map_err(e)?;
    Ok(claimed)
}

/// Change the item `claim` holds with `f`; `false` when the claim no longer holds it.
pub(super) fn change_claimed(
    c: &mut Connection,
    operation: &'static str,
    claim: &Claim,
    f: impl FnOnce(&mut OutboxItem),
) -> Result<bool> {
    let e = |e| sql_err(operation, e);
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    let Some(mut item) = by_id(&tx, claim.id).map_err(e)? else {
        return Ok(false);
    };
    if !outbox::holds(&item, claim) {
        return Ok(false);
    }
    f(&mut item);
    write_back(&tx, &item).map_err(e)?;
    tx.commit().map_err(e)?;
    Ok(true)
}

pub(super) fn settle(
    c: &mut Connection,
    claim: &Claim,
    settlement: Settlement,
    now: Timestamp,
) -> Result<bool> {
    change_claimed(c, "settle an outbox item", claim, |item| {
        outbox::settle(item, settlement, now)
    })
}

pub(super) fn extend(
    c: &mut Connection,
    claim: &Claim,
    until: Timestamp,
    now: Timestamp,
) -> Result<bool> {
    change_claimed(c, "extend an outbox lease", claim, |item| {
        outbox::extend(item, until, now)
    })
}

pub(super) fn get(c: &Connection, id: u64) -> Result<Option<OutboxItem>> {
    by_id(c, id).map_err(|e| sql_err("read an outbox item", e))
}

pub(super) fn list(c: &Connection, query: &OutboxQuery) -> Result<Vec<OutboxItem>> {
    let e = |e| sql_err("list outbox items", e);
    // The states as a bit set, so one cached statement serves every query.
    let mask: i64 = if query.states.is_empty() {
        0b1111
    } else {
        query
            .states
            .iter()
            .map(|s| 1i64 << state_bit(*s))
            .fold(0, |a, b| a | b)
    };
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    let after = query.after_id.map_or(0, |id| id as i64);
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM nango_outbox
         WHERE id > ?1
           AND (?2 >> (CASE state WHEN 'pending' THEN 0 WHEN 'running' THEN 1
                                  WHEN 'done' THEN 2 ELSE 3 END)) & 1 = 1
         ORDER BY id LIMIT ?3"
    ))
    .map_err(e)?
    .query_map(params![after, mask, limit], item_from_row)
    .map_err(e)?
    .collect::<rusqlite::Result<_>>()
    .map_err(e)
}

fn state_bit(s: OutboxState) -> u32 {
    match s {
        OutboxState::Pending => 0,
        OutboxState::Running => 1,
        OutboxState::Done => 2,
        OutboxState::Failed => 3,
    }
}

pub(super) fn counts(c: &Connection) -> Result<OutboxCounts> {
    let e = |e| sql_err("count outbox items", e);
    let mut counts = OutboxCounts::default();
    let mut stmt = c
        .prepare_cached("SELECT state, count(*) FROM nango_outbox GROUP BY state")
        .map_err(e)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(e)?;
    for row in rows {
        let (state, n) = row.map_err(e)?;
        let n = n as u64;
        match OutboxState::parse(&state) {
            Some(OutboxState::Pending) => counts.pending += n,
            Some(OutboxState::Running) => counts.running += n,
            Some(OutboxState::Done) => counts.done += n,
            Some(OutboxState::Failed) => counts.failed += n,
            None => {}
        }
    }
    Ok(counts)
}

pub(super) fn purge(c: &mut Connection, before: Timestamp) -> Result<u64> {
    let e = |e| sql_err("purge outbox items", e);
    let n = c
        .prepare_cached(
            "DELETE FROM nango_outbox WHERE state IN ('done', 'failed')
               AND finished_at IS NOT NULL AND finished_at < ?1",
        )
        .map_err(e)?
        .execute([before.as_micros()])
        .map_err(e)?;
    Ok(n as u64)
}
