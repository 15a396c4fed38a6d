//! `bench`'s raw ceiling: the plainest fastest write of the same pages and cursor that
//! each backend allows, with no merge and no lookups, so a store's write path can be
//! read as a fraction of what its database does at best on this machine.
//!
//! Each page is written in one transaction (one batch for sled) holding every record's
//! id and payload and the stream's cursor:
//! - SQLite: the store's pragmas (WAL, `synchronous=NORMAL`, 16 KiB pages), one table
//!   `(id TEXT PRIMARY KEY, payload TEXT)`, one prepared upsert per record;
//! - sled: one batch of `id → payload` plus the cursor, applied, then flushed (the
//!   store's default durability), with the store's default page cache;
//! - PostgreSQL: one table `(id text PRIMARY KEY, payload jsonb)`, one multi-row
//!   `UNNEST` upsert per page and the cursor's update, in one transaction.

use anyhow::{Context, Result, bail};
use nango_sync::Record;
use nango_sync::sink::SinkUrl;

/// An open raw target.
pub enum RawStore {
    #[cfg(feature = "sqlite")]
    Sqlite(rusqlite::Connection),
    #[cfg(feature = "sled")]
    Sled(sled::Db),
    /// The pool and the statements, with the quoted schema filled in.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool, [String; 2]),
}

impl RawStore {
    /// Open the raw target at `url`; `create`: create its tables (the target must not
    /// exist: the bench removes it first), else open the one a previous pass wrote.
    pub async fn open(url: &str, create: bool) -> Result<RawStore> {
        match SinkUrl::parse(url)? {
            #[cfg(feature = "sqlite")]
            SinkUrl::Sqlite(path) => {
                let conn = rusqlite::Connection::open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                conn.execute_batch(
                    "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA wal_autocheckpoint = 4096;",
                )
                .context("cannot set up the raw SQLite file")?;
                if create {
                    conn.execute_batch(
                        "CREATE TABLE raw_records (id TEXT PRIMARY KEY, payload TEXT NOT NULL); \
                     CREATE TABLE raw_cursor (one INTEGER PRIMARY KEY, cursor TEXT); \
                     INSERT INTO raw_cursor VALUES (1, NULL);",
                    )
                    .context("cannot create the raw SQLite tables")?;
                }
                Ok(RawStore::Sqlite(conn))
            }
            #[cfg(feature = "sled")]
            SinkUrl::Sled(path) => {
                // sled makes its directory when missing, whether `create` or not.
                let _ = create;
                let db = sled::Config::new()
                    .path(&path)
                    .cache_capacity(nango_sync::sink::sled::SledOptions::DEFAULT_CACHE_CAPACITY)
                    .open()
                    .with_context(|| format!("cannot open sled at {}", path.display()))?;
                Ok(RawStore::Sled(db))
            }
            #[cfg(feature = "postgres")]
            SinkUrl::Postgres(_) => {
                let (base, schema) = nango_sync::sink::split_schema_param(url);
                // The store's page setting; the raw ceiling's table keeps PostgreSQL's.
                let (base, _) = nango_sync::sink::split_param(&base, "fillfactor");
                let schema = schema.context("the raw target names its schema")?;
                let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&base)
                    .await
                    .context("cannot connect to PostgreSQL for the raw ceiling")?;
                let ddl = format!(
                    "CREATE SCHEMA {quoted}; \
                     CREATE TABLE {quoted}.raw_records (id text COLLATE \"C\" PRIMARY KEY, payload jsonb NOT NULL); \
                     CREATE TABLE {quoted}.raw_cursor (one boolean PRIMARY KEY, cursor text); \
                     INSERT INTO {quoted}.raw_cursor VALUES (true, NULL)"
                );
                if create {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
                        .execute(&pool)
                        .await
                        .context("cannot create the raw PostgreSQL tables")?;
                }
                let statements = [
                    format!(
                        "INSERT INTO {quoted}.raw_records (id, payload) \
                         SELECT u.id, u.payload::jsonb FROM UNNEST($1::text[], $2::text[]) AS u(id, payload) \
                         ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload"
                    ),
                    format!("UPDATE {quoted}.raw_cursor SET cursor = $1"),
                ];
                Ok(RawStore::Postgres(pool, statements))
            }
            #[allow(unreachable_patterns)]
            _ => bail!("no raw ceiling for this store"),
        }
    }

    /// Write one page and the cursor that follows it, in one transaction.
    pub async fn write(&mut self, records: &[Record], cursor: Option<&str>) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            RawStore::Sqlite(conn) => {
                let tx = conn.transaction()?;
                {
                    let mut upsert = tx.prepare_cached(
                        "INSERT INTO raw_records (id, payload) VALUES (?1, ?2) \
                         ON CONFLICT (id) DO UPDATE SET payload = excluded.payload",
                    )?;
                    for r in records {
                        upsert.execute((r.id.as_str(), r.payload.as_str()))?;
                    }
                    tx.prepare_cached("UPDATE raw_cursor SET cursor = ?1 WHERE one = 1")?
                        .execute([cursor])?;
                }
                tx.commit()?;
            }
            #[cfg(feature = "sled")]
            RawStore::Sled(db) => {
                let mut batch = sled::Batch::default();
                for r in records {
                    batch.insert(r.id.as_bytes(), r.payload.as_str().as_bytes());
                }
                batch.insert(&b"\xffcursor"[..], cursor.unwrap_or_default().as_bytes());
                db.apply_batch(batch)?;
                db.flush()?;
            }
            #[cfg(feature = "postgres")]
            RawStore::Postgres(pool, [upsert, set_cursor]) => {
                use sqlx::postgres::PgBindIterExt;
                let mut tx = pool.begin().await?;
                sqlx::query(sqlx::AssertSqlSafe(upsert.clone()))
                    .bind(records.iter().map(|r| r.id.as_str()).bind_iter())
                    .bind(records.iter().map(|r| r.payload.as_str()).bind_iter())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(set_cursor.clone()))
                    .bind(cursor)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Settle what the writes left for later, as the stores' `flush` does: SQLite copies
    /// its WAL back into the database file and empties it (the same `TRUNCATE`
    /// checkpoint); sled and PostgreSQL have nothing left (each write flushed or
    /// committed).
    pub async fn flush(&mut self) -> Result<()> {
        match self {
            #[cfg(feature = "sqlite")]
            RawStore::Sqlite(conn) => {
                let busy: i64 = conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                    .context("the raw SQLite checkpoint failed")?;
                if busy != 0 {
                    bail!("the raw SQLite checkpoint could not empty the WAL");
                }
            }
            #[cfg(feature = "sled")]
            RawStore::Sled(_) => {}
            #[cfg(feature = "postgres")]
            RawStore::Postgres(..) => {}
        }
        Ok(())
    }
}
