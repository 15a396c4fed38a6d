//! PostgreSQL's read ahead (the rules are [`crate::sink::prefetch`]'s): the next
//! page's stored versions, read on another connection of the pool while the current
//! page commits, with the stream's `last_seq` (migration 10: the number of the last
//! commit that changed the stream) from the same snapshot as its version.
//!
//! The read never waits for a connection: with none idle in the pool it is not made.
//! A commit that awaits it, holding a connection of its own, can then never wait for
//! a connection it holds.

use std::collections::HashMap;

use sqlx::postgres::PgBindIterExt;
use sqlx::{PgPool, Row, SqlStr};
use tokio::task::JoinHandle;

use super::apply::{Handle, decode_stored};
use super::error::{classify, decode};
use crate::error::Result;
use crate::merge::StoredVersionBuf;
use crate::sink::commit;
use crate::sink::prefetch::{Prefetches, Snapshot};

/// Stored versions by id, with their handles.
pub(super) type Versions = HashMap<String, (StoredVersionBuf, Handle)>;

/// A read under way: `None` when the stream has no row yet.
pub(super) type Read = JoinHandle<Result<Option<Snapshot<(StoredVersionBuf, Handle)>>>>;

/// Start reading the stored versions of `ids` in the stream `hash` (`sql`: the
/// statement `prefetch_versions`). Nothing is started outside a tokio runtime or
/// without an idle connection.
pub(super) fn start(
    prefetches: &Prefetches<Read>,
    pool: &PgPool,
    sql: &SqlStr,
    hash: Vec<u8>,
    ids: Vec<String>,
) {
    let (sql, key) = (sql.clone(), hash.clone());
    // In key order, like the read in the transaction.
    let wanted: Vec<String> = commit::ids_in_key_order(ids.iter().map(String::as_str))
        .into_iter()
        .map(str::to_owned)
        .collect();
    prefetches.start(hash, ids, || {
        // Outside a tokio runtime there is nothing to run the read on.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let mut conn = pool.try_acquire()?;
        Some(runtime.spawn(async move {
            let rows = sqlx::query(sql)
                .bind(key)
                .bind(wanted.iter().map(String::as_str).bind_iter())
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| classify("prefetch stored versions", e))?;
            let mut version = None;
            let mut versions = Versions::with_capacity(rows.len());
            for row in rows {
                match row.try_get::<Option<String>, _>(0).map_err(decode)? {
                    None => version = Some(row.try_get::<i64, _>(7).map_err(decode)?),
                    Some(_) => {
                        let (id, stored, handle) = decode_stored(&row)?;
                        versions.insert(id, (stored, handle));
                    }
                }
            }
            Ok(version.map(|version| Snapshot { version, versions }))
        }))
    });
}
