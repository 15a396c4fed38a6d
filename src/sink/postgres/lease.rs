//! Several instances on one PostgreSQL store (migration 6): the membership table
//! (`instances`, one heartbeat row per live instance), the per-stream leases with their
//! fencing tokens (`leases`), the check of a commit's fence inside its transaction, and
//! the trigger channel on which an instance hands a stream's trigger to the stream's
//! holder (`NOTIFY`/`LISTEN`). Every time is the server's clock. See
//! [`crate::sink::lease`] for the rules, and `crate::engine::cluster` for their use.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::PgBindIterExt;
use sqlx::{AssertSqlSafe, Postgres, Row, SqlStr, Transaction};
use tokio::sync::mpsc;

use super::PostgresStore;
use super::error::{classify, decode};
use super::feed::{listen_on, listener_pool};
use super::rows::{stream_hash, to_i64, to_u64};
use crate::error::{Error, Result};
use crate::record::StreamKey;
use crate::sink::Commit;
use crate::sink::lease::{Fence, InstanceInfo, LeaseInfo};

/// The statements over the instances' tables, with the schema filled in.
fn sql(schema: &str, text: &str) -> SqlStr {
    sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(text.replace("{s}", schema)))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The channel of a schema's triggers: `nango_sync_t_` and 16 hex digits of the schema's
/// SHA-256.
pub(super) fn trigger_channel(schema: &str) -> String {
    let digest = Sha256::digest(schema.as_bytes());
    format!("nango_sync_t_{}", hex::encode(&digest[..8]))
}

/// A trigger handed from one instance to the stream's holder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TriggerMessage {
    /// The stream to run.
    pub stream: StreamKey,
    /// Whether the run should be a full re-read.
    pub full: bool,
}

impl PostgresStore {
    fn quoted(&self) -> String {
        format!("\"{}\"", self.schema)
    }

    /// Inside a commit's transaction, before anything is written: when the commit
    /// carries a [`Fence`], check that its instance still holds the stream's lease with
    /// its token and that the lease has not expired, and lock the lease row until the
    /// transaction ends (`FOR SHARE`: a takeover waits for the commit). The transaction
    /// may stay idle no longer than the lease has left (a holder paused inside a commit
    /// loses its session, and its locks, when its lease runs out). A commit without a
    /// fence is not checked.
    pub(super) async fn check_fence(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        commit: &Commit,
    ) -> Result<()> {
        let Some(fence) = &commit.fence else {
            return Ok(());
        };
        let held: Option<String> = sqlx::query_scalar(sql(
            &self.quoted(),
            "SELECT set_config('idle_in_transaction_session_timeout', \
               greatest(1, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint)::text, true) \
             FROM {s}.leases WHERE key_hash = $1 AND holder = $2 AND token = $3 \
               AND expires_at > clock_timestamp() FOR SHARE",
        ))
        .bind(stream_hash(&commit.stream))
        .bind(&*fence.instance)
        .bind(to_i64(fence.token))
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| classify("check the stream's lease", e))?;
        match held {
            Some(_) => Ok(()),
            None => Err(Error::LeaseLost {
                stream: commit.stream.to_string(),
                instance: fence.instance.to_string(),
                token: fence.token,
            }),
        }
    }

    /// The result of a leased commit, as the caller sees it: a commit that failed
    /// while its lease is no longer held (expired, taken over) failed because of that
    /// (a holder paused inside its commit loses its session to the idle timeout set by
    /// [`PostgresStore::check_fence`]), so it is reported as
    /// [`Error::LeaseLost`]; nothing of it was written either way.
    pub(super) async fn fenced(
        &self,
        commit: &Commit,
        result: Result<crate::sink::CommitOutcome>,
    ) -> Result<crate::sink::CommitOutcome> {
        let (Some(fence), Err(e)) = (&commit.fence, &result) else {
            return result;
        };
        if e.is_lease_lost() {
            return result;
        }
        let held: Option<i32> = sqlx::query_scalar(sql(
            &self.quoted(),
            "SELECT 1 FROM {s}.leases WHERE key_hash = $1 AND holder = $2 AND token = $3 \
               AND expires_at > clock_timestamp()",
        ))
        .bind(stream_hash(&commit.stream))
        .bind(&*fence.instance)
        .bind(to_i64(fence.token))
        .fetch_optional(&self.pool)
        .await
        .unwrap_or(Some(1));
        match held {
            Some(_) => result,
            None => {
                tracing::debug!(stream = %commit.stream, error = %e, "a leased commit failed after its lease was lost");
                Err(Error::LeaseLost {
                    stream: commit.stream.to_string(),
                    instance: fence.instance.to_string(),
                    token: fence.token,
                })
            }
        }
    }

    /// Record that `instance` lives, for `ttl` from now (its heartbeat).
    pub async fn heartbeat(&self, instance: &str, ttl: Duration) -> Result<()> {
        sqlx::query(sql(
            &self.quoted(),
            "INSERT INTO {s}.instances (instance_id, expires_at) \
             VALUES ($1, clock_timestamp() + $2 * interval '1 millisecond') \
             ON CONFLICT (instance_id) DO UPDATE \
             SET heartbeat_at = clock_timestamp(), expires_at = EXCLUDED.expires_at",
        ))
        .bind(instance)
        .bind(millis(ttl))
        .execute(&self.pool)
        .await
        .map_err(|e| classify("record the instance's heartbeat", e))?;
        Ok(())
    }

    /// The instances whose heartbeat is in force, sorted by id. Rows of instances dead
    /// for more than an hour are removed on the way.
    pub async fn live_instances(&self) -> Result<Vec<String>> {
        sqlx::query(sql(
            &self.quoted(),
            "DELETE FROM {s}.instances WHERE expires_at < clock_timestamp() - interval '1 hour'",
        ))
        .execute(&self.pool)
        .await
        .map_err(|e| classify("remove dead instances", e))?;
        sqlx::query(sql(
            &self.quoted(),
            "DELETE FROM {s}.rate_windows \
             WHERE window_reset < extract(epoch FROM clock_timestamp())::bigint - 3600",
        ))
        .execute(&self.pool)
        .await
        .map_err(|e| classify("remove old rate windows", e))?;
        sqlx::query_scalar(sql(
            &self.quoted(),
            "SELECT instance_id FROM {s}.instances WHERE expires_at > clock_timestamp() \
             ORDER BY instance_id",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("read the live instances", e))
    }

    /// The shared count of Nango's rate-limit windows of `account` (for example the
    /// Nango host), for [`RateBudget::set_ledger`](crate::client::RateBudget::set_ledger):
    /// every instance of the account that shares this store takes its permits from it.
    pub fn rate_ledger(&self, account: &str) -> std::sync::Arc<dyn crate::client::RateLedger> {
        std::sync::Arc::new(PgRateLedger {
            pool: self.pool.clone(),
            take: sql(
                &self.quoted(),
                "INSERT INTO {s}.rate_windows AS w (account, window_reset, used) \
                 VALUES ($1, $2, $4 + 1) \
                 ON CONFLICT (account, window_reset) DO UPDATE SET used = greatest(w.used, $4) + 1 \
                 WHERE greatest(w.used, $4) < $3 \
                 RETURNING used",
            ),
            account: account.to_string(),
        })
    }

    /// Every instance of the membership table, live or not, sorted by id.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        let rows = sqlx::query(sql(
            &self.quoted(),
            "SELECT instance_id, expires_at > clock_timestamp(), \
               (extract(epoch FROM clock_timestamp() - heartbeat_at) * 1000)::bigint \
             FROM {s}.instances ORDER BY instance_id",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("read the instances", e))?;
        rows.iter()
            .map(|r| {
                Ok(InstanceInfo {
                    instance: r.try_get(0).map_err(decode)?,
                    live: r.try_get(1).map_err(decode)?,
                    heartbeat_age_ms: r.try_get(2).map_err(decode)?,
                })
            })
            .collect()
    }

    /// Leave: remove `instance` from the membership and release every lease it holds
    /// (other instances take its streams at once instead of after the leases expire).
    pub async fn leave(&self, instance: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(sql(
            &self.quoted(),
            "UPDATE {s}.leases SET expires_at = clock_timestamp() \
             WHERE holder = $1 AND expires_at > clock_timestamp()",
        ))
        .bind(instance)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("release the instance's leases", e))?;
        sqlx::query(sql(
            &self.quoted(),
            "DELETE FROM {s}.instances WHERE instance_id = $1",
        ))
        .bind(instance)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("leave the instances", e))?;
        tx.commit().await.map_err(|e| classify("leave", e))
    }

    /// Take the lease of `stream` for `instance`, for `ttl`, when nobody holds it (no
    /// lease yet, or it expired or was released), or when `instance` itself holds it (a
    /// restarted instance with the same id). The token grows by one each time the lease
    /// is taken. Does not wait for a commit in progress under the current lease (that
    /// lease row is locked): returns `None` then, as when another instance holds it.
    pub async fn acquire_lease(
        &self,
        stream: &StreamKey,
        instance: &str,
        ttl: Duration,
    ) -> Result<Option<Fence>> {
        let hash = stream_hash(stream);
        let mut tx = self.begin().await?;
        let current = sqlx::query(sql(
            &self.quoted(),
            "SELECT holder, expires_at > clock_timestamp() FROM {s}.leases \
             WHERE key_hash = $1 FOR UPDATE SKIP LOCKED",
        ))
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| classify("read the stream's lease", e))?;
        let token: Option<i64> = match current {
            Some(row) => {
                let holder: String = row.try_get(0).map_err(decode)?;
                let live: bool = row.try_get(1).map_err(decode)?;
                if live && holder != instance {
                    None
                } else {
                    sqlx::query_scalar(sql(
                        &self.quoted(),
                        "UPDATE {s}.leases SET holder = $2, token = token + 1, \
                           acquired_at = clock_timestamp(), \
                           expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
                         WHERE key_hash = $1 RETURNING token",
                    ))
                    .bind(&hash)
                    .bind(instance)
                    .bind(millis(ttl))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| classify("take the stream's lease", e))?
                }
            }
            // No row, or a row locked by a commit in progress (then the insert does
            // nothing).
            None => sqlx::query_scalar(sql(
                &self.quoted(),
                "INSERT INTO {s}.leases (key_hash, integration, connection, model, variant, \
                   holder, token, acquired_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 1, clock_timestamp(), \
                   clock_timestamp() + $7 * interval '1 millisecond') \
                 ON CONFLICT (key_hash) DO NOTHING RETURNING token",
            ))
            .bind(&hash)
            .bind(&stream.integration)
            .bind(&stream.connection)
            .bind(&stream.model)
            .bind(&stream.variant)
            .bind(instance)
            .bind(millis(ttl))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| classify("take the stream's lease", e))?,
        };
        tx.commit()
            .await
            .map_err(|e| classify("take the stream's lease", e))?;
        Ok(token.map(|t| Fence::new(instance, to_u64(t))))
    }

    /// Renew the leases `fences` of `instance` for `ttl` from now; returns the streams
    /// whose lease was renewed. A lease that expired, was released or was taken over is
    /// not renewed (it is lost: its holder must stop running the stream).
    pub async fn renew_leases(
        &self,
        instance: &str,
        ttl: Duration,
        fences: &[(StreamKey, u64)],
    ) -> Result<Vec<StreamKey>> {
        if fences.is_empty() {
            return Ok(Vec::new());
        }
        // Rows in one order, whoever renews.
        let mut by_hash: Vec<(Vec<u8>, &StreamKey, u64)> = fences
            .iter()
            .map(|(s, t)| (stream_hash(s), s, *t))
            .collect();
        by_hash.sort();
        let renewed: Vec<Vec<u8>> = sqlx::query_scalar(sql(
            &self.quoted(),
            "UPDATE {s}.leases l SET expires_at = clock_timestamp() + $2 * interval '1 millisecond' \
             FROM UNNEST($3::bytea[], $4::bigint[]) AS h(key_hash, token) \
             WHERE l.key_hash = h.key_hash AND l.token = h.token AND l.holder = $1 \
               AND l.expires_at > clock_timestamp() \
             RETURNING l.key_hash",
        ))
        .bind(instance)
        .bind(millis(ttl))
        .bind(by_hash.iter().map(|(h, _, _)| h.as_slice()).bind_iter())
        .bind(by_hash.iter().map(|(_, _, t)| to_i64(*t)).bind_iter())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("renew the leases", e))?;
        let index: HashMap<&[u8], &StreamKey> =
            by_hash.iter().map(|(h, s, _)| (h.as_slice(), *s)).collect();
        Ok(renewed
            .iter()
            .filter_map(|h| index.get(h.as_slice()).map(|s| (*s).clone()))
            .collect())
    }

    /// Release `fence`'s lease of `stream` (when it is still held with that token), so
    /// that another instance can take it at once. Returns whether it was held.
    pub async fn release_lease(&self, stream: &StreamKey, fence: &Fence) -> Result<bool> {
        let done = sqlx::query(sql(
            &self.quoted(),
            "UPDATE {s}.leases SET expires_at = clock_timestamp() \
             WHERE key_hash = $1 AND holder = $2 AND token = $3 AND expires_at > clock_timestamp()",
        ))
        .bind(stream_hash(stream))
        .bind(&*fence.instance)
        .bind(to_i64(fence.token))
        .execute(&self.pool)
        .await
        .map_err(|e| classify("release the stream's lease", e))?;
        Ok(done.rows_affected() == 1)
    }

    /// Every stream's lease, sorted by stream.
    pub async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let rows = sqlx::query(sql(
            &self.quoted(),
            "SELECT integration, connection, model, variant, holder, token, \
               expires_at > clock_timestamp(), \
               (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint \
             FROM {s}.leases ORDER BY integration, connection, model, variant",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("read the leases", e))?;
        rows.iter()
            .map(|r| {
                Ok(LeaseInfo {
                    stream: StreamKey {
                        integration: r.try_get(0).map_err(decode)?,
                        connection: r.try_get(1).map_err(decode)?,
                        model: r.try_get(2).map_err(decode)?,
                        variant: r.try_get(3).map_err(decode)?,
                    },
                    holder: r.try_get(4).map_err(decode)?,
                    token: to_u64(r.try_get(5).map_err(decode)?),
                    live: r.try_get(6).map_err(decode)?,
                    expires_in_ms: r.try_get(7).map_err(decode)?,
                })
            })
            .collect()
    }

    /// Hand a trigger of `stream` to whichever instance holds its lease (`NOTIFY` on
    /// the store's trigger channel; every instance listening with
    /// [`PostgresStore::listen_triggers`] receives it, and the holder runs the stream).
    pub async fn notify_trigger(&self, stream: &StreamKey, full: bool) -> Result<()> {
        let payload = serde_json::to_string(&TriggerMessage {
            stream: stream.clone(),
            full,
        })
        .map_err(|e| Error::invalid("trigger", e.to_string()))?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(trigger_channel(&self.schema))
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(|e| classify("pass the trigger on", e))?;
        Ok(())
    }

    /// Receive the triggers other instances pass on ([`PostgresStore::notify_trigger`]):
    /// a task `LISTEN`s on a connection of its own (reconnecting with backoff) until the
    /// receiver is dropped. After a reconnection, triggers sent meanwhile are lost; the
    /// poll timers of the streams' holders catch what they announced.
    pub fn listen_triggers(&self) -> mpsc::Receiver<TriggerMessage> {
        let (tx, rx) = mpsc::channel(1024);
        let channel = trigger_channel(&self.schema);
        let pool = listener_pool(self.connect.clone());
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let setup = listen_on(&pool, &channel);
                let mut listener = tokio::select! {
                    () = tx.closed() => return,
                    l = setup => match l {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot LISTEN for triggers; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                            continue;
                        }
                    },
                };
                backoff = Duration::from_millis(100);
                loop {
                    let next = tokio::select! {
                        () = tx.closed() => return,
                        n = listener.try_recv() => n,
                    };
                    match next {
                        Ok(Some(n)) => match serde_json::from_str::<TriggerMessage>(n.payload()) {
                            Ok(msg) => {
                                if tx.send(msg).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "a trigger notification that is not one: ignored");
                            }
                        },
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN for triggers failed; reconnecting");
                            break;
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
            }
        });
        rx
    }
}

impl PostgresStore {
    /// Connect to a sink URL the way [`crate::sink::open`] does
    /// (`postgres://...[?schema=NAME]`), keeping the store's own type (for the lease
    /// methods, which are not part of [`crate::RecordSink`]).
    pub async fn connect_url(url: &str) -> Result<Self> {
        let (url, schema) = crate::sink::split_schema_param(url);
        let mut options = super::PostgresOptions::new();
        if let Some(schema) = schema {
            options = options.with_schema(schema);
        }
        Self::connect_with(&url, options).await
    }
}

/// [`PostgresStore::rate_ledger`]: one row per account and window, its count raised by
/// one statement per permit.
struct PgRateLedger {
    pool: sqlx::PgPool,
    take: SqlStr,
    account: String,
}

impl crate::client::RateLedger for PgRateLedger {
    fn take(
        &self,
        window: i64,
        limit: u32,
        spent: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool>> + Send + '_>> {
        Box::pin(async move {
            if spent >= limit {
                return Ok(false);
            }
            let granted: Option<i32> = sqlx::query_scalar(self.take.clone())
                .bind(&self.account)
                .bind(window)
                .bind(i32::try_from(limit).unwrap_or(i32::MAX))
                .bind(i32::try_from(spent).unwrap_or(i32::MAX))
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| classify("take a permit of the shared rate budget", e))?;
            Ok(granted.is_some())
        })
    }
}
