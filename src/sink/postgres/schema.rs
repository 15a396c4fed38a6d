//! The PostgreSQL schema: versioned migrations (`migrations/NNNN_name.sql`, applied by
//! [`migrate`]), the checks of a connect ([`check_version`] for a read-only open,
//! [`check_tables`]), the schema operations of `repair` ([`schema_exists`],
//! [`rename_schema`]), and the statements over it, with the schema's name filled in once.
//!
//! Values are always bound; the only identifier formatted into SQL is the schema name,
//! validated and quoted.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, SqlStr};

use super::BACKEND;
use super::error::{classify, is_missing_table_or_column};
use super::options::validate_schema;
use crate::error::{Error, Result};

/// The embedded migrations: version, name, SQL (with `{schema}` placeholders).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (
        2,
        "change_feed",
        include_str!("migrations/0002_change_feed.sql"),
    ),
    (
        3,
        "run_history",
        include_str!("migrations/0003_run_history.sql"),
    ),
    (4, "outbox", include_str!("migrations/0004_outbox.sql")),
    (
        5,
        "feed_per_commit",
        include_str!("migrations/0005_feed_per_commit.sql"),
    ),
    (
        6,
        "instances",
        include_str!("migrations/0006_instances.sql"),
    ),
    (
        7,
        "hot_updates",
        include_str!("migrations/0007_hot_updates.sql"),
    ),
    (
        8,
        "seen_live",
        include_str!("migrations/0008_seen_live.sql"),
    ),
    (
        9,
        "feed_ids_uncompressed",
        include_str!("migrations/0009_feed_ids_uncompressed.sql"),
    ),
    (
        10,
        "stream_last_seq",
        include_str!("migrations/0010_stream_last_seq.sql"),
    ),
];

/// First key of the advisory lock taken while migrating (the second is the schema's hash).
const MIGRATION_LOCK: i32 = 0x6e73_796e; // "nsyn"

/// Create the schema if needed and apply the migrations it lacks, under an advisory lock.
pub(super) async fn migrate(pool: &PgPool, schema: &str, quoted: &str) -> Result<()> {
    let err = |op: &'static str| {
        move |e: sqlx::Error| classify(format!("migrate schema {schema}: {op}"), e)
    };
    let mut tx = pool.begin().await.map_err(err("begin"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(MIGRATION_LOCK)
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(err("lock"))?;
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted}; \
         CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations ( \
           version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    );
    sqlx::raw_sql(AssertSqlSafe(setup))
        .execute(&mut *tx)
        .await
        .map_err(err("create schema"))?;
    let current: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(version) FROM {quoted}.schema_migrations"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(err("read version"))?;
    let current = current.unwrap_or(0);
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(Error::store(
            BACKEND,
            format!("migrate schema {schema}"),
            false,
            format!(
                "the schema is at version {current}, newer than this nango-sync knows ({latest}); upgrade nango-sync"
            ),
        ));
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        sqlx::raw_sql(AssertSqlSafe(sql.replace("{schema}", quoted)))
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                // 42P07: a table of the migration exists though the migration is not
                // recorded.
                sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "42P07") => {
                    Error::damaged(
                        BACKEND,
                        format!("migrate schema {schema}"),
                        format!(
                            "{} (migration {version} is not recorded in {schema}.schema_migrations)",
                            db.message()
                        ),
                    )
                }
                _ => err("apply migration")(e),
            })?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)"
        )))
        .bind(version)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(err("record migration"))?;
    }
    tx.commit().await.map_err(err("commit"))
}

/// For a read-only open: the schema exists and is at the version this nango-sync writes.
pub(super) async fn check_version(pool: &PgPool, schema: &str, quoted: &str) -> Result<()> {
    let operation = || format!("open schema {schema}");
    if !schema_exists_in(pool, schema).await? {
        return Err(Error::store(
            BACKEND,
            operation(),
            false,
            format!("there is no schema {schema}"),
        ));
    }
    let version: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(version) FROM {quoted}.schema_migrations"
    )))
    .fetch_one(pool)
    .await
    .map_err(|e| classify(operation(), e))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    match version {
        Some(v) if v == latest => Ok(()),
        Some(v) if v > latest => Err(Error::store(
            BACKEND,
            operation(),
            false,
            format!(
                "the schema is at version {v}, newer than this nango-sync knows ({latest}); upgrade nango-sync"
            ),
        )),
        other => Err(Error::damaged(
            BACKEND,
            operation(),
            format!(
                "the schema is at version {}, not {latest}, and a read-only open does not migrate",
                other.unwrap_or(0)
            ),
        )),
    }
}

/// The records table's fillfactor (100, PostgreSQL's default, when none is set on it).
pub(super) async fn fillfactor_of(pool: &PgPool, schema: &str) -> Result<u8> {
    let value: Option<String> = sqlx::query_scalar(
        "SELECT (SELECT o.option_value FROM pg_options_to_table(c.reloptions) AS o \
                 WHERE o.option_name = 'fillfactor') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = 'records'",
    )
    .bind(schema)
    .fetch_optional(pool)
    .await
    .map_err(|e| classify(format!("read the fillfactor of {schema}.records"), e))?
    .flatten();
    match value {
        None => Ok(100),
        Some(v) => v.parse().map_err(|_| {
            Error::store(
                BACKEND,
                format!("read the fillfactor of {schema}.records"),
                false,
                format!("the table's fillfactor {v:?} is not a number from 10 to 100"),
            )
        }),
    }
}

/// Set the records table's fillfactor to `fillfactor` (validated, 10 to 100) when it is
/// another (`PostgresOptions::with_fillfactor`). The change takes a lock that waits for
/// no commit (`SHARE UPDATE EXCLUSIVE`) and applies to pages written from then on.
pub(super) async fn set_fillfactor(
    pool: &PgPool,
    schema: &str,
    quoted: &str,
    fillfactor: u8,
) -> Result<()> {
    let current = fillfactor_of(pool, schema).await?;
    if current == fillfactor {
        return Ok(());
    }
    // `quoted` is the validated, quoted schema; the fillfactor a number.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE {quoted}.records SET (fillfactor = {fillfactor})"
    )))
    .execute(pool)
    .await
    .map_err(|e| classify(format!("set the fillfactor of {schema}.records"), e))?;
    tracing::info!(
        schema,
        from = current,
        to = fillfactor,
        "set the records table's fillfactor (pages written from now on)"
    );
    Ok(())
}

/// The store's tables are there with the columns the store uses, and the commit counter
/// has its one row; otherwise the schema is damaged.
pub(super) async fn check_tables(pool: &PgPool, schema: &str, quoted: &str) -> Result<()> {
    let operation = || format!("check the tables of schema {schema}");
    let damaged = |e: sqlx::Error| {
        if is_missing_table_or_column(&e) {
            match e {
                sqlx::Error::Database(db) => {
                    Error::damaged(BACKEND, operation(), db.message().to_string())
                }
                other => classify(operation(), other),
            }
        } else {
            classify(operation(), e)
        }
    };
    let probes = [
        format!(
            "SELECT stream_id, key_hash, integration, connection, model, variant, cursor, generation, \
               full_read, added, updated, deleted, unchanged, stale, live_records, deleted_records, \
               last_run, upstream_error, seen_live_generation, seen_live_count \
               FROM {quoted}.streams LIMIT 0"
        ),
        format!(
            "SELECT s.last_success, r.run_seq, r.stream_id, r.run_id, r.instance, r.started_at, \
               r.finished_at, r.outcome, r.run FROM {quoted}.streams s, {quoted}.runs r LIMIT 0"
        ),
        format!(
            "SELECT stream_id, id, payload, first_seen_at, last_modified_at, last_action, deleted_at, \
               pruned_at, cursor, deleted, seq, seen_generation, change_kind FROM {quoted}.records LIMIT 0"
        ),
        format!("SELECT name, seq, id, updated_at FROM {quoted}.consumers LIMIT 0"),
        format!("SELECT seq, chunk, stream_id, ids, live FROM {quoted}.feed_commits LIMIT 0"),
        format!(
            "SELECT {} FROM {quoted}.outbox LIMIT 0",
            super::outbox::COLUMNS
        ),
        format!(
            "SELECT instance_id, started_at, heartbeat_at, expires_at FROM {quoted}.instances LIMIT 0"
        ),
        format!(
            "SELECT key_hash, integration, connection, model, variant, holder, token, acquired_at, \
               expires_at FROM {quoted}.leases LIMIT 0"
        ),
        format!("SELECT account, window_reset, used FROM {quoted}.rate_windows LIMIT 0"),
    ];
    for sql in probes {
        sqlx::query(AssertSqlSafe(sql))
            .execute(pool)
            .await
            .map_err(damaged)?;
    }
    let rows: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT seq FROM {quoted}.commit_seq"
    )))
    .fetch_all(pool)
    .await
    .map_err(damaged)?;
    if rows.len() != 1 {
        return Err(Error::damaged(
            BACKEND,
            operation(),
            format!(
                "{quoted}.commit_seq holds {} rows instead of one",
                rows.len()
            ),
        ));
    }
    Ok(())
}

async fn schema_exists_in(pool: &PgPool, schema: &str) -> Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .map_err(|e| classify(format!("look for schema {schema}"), e))
}

/// One connection to the database of `url`, for schema operations.
async fn admin_pool(url: &str) -> Result<PgPool> {
    let shown = crate::secret::redact_url(url);
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::invalid("postgres URL", format!("{shown}: {e}")))?
        .application_name("nango-sync");
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|e| classify(format!("connect to {shown}"), e))
}

/// Whether the database of `url` holds a schema named `schema`.
pub(crate) async fn schema_exists(url: &str, schema: &str) -> Result<bool> {
    validate_schema(schema)?;
    let pool = admin_pool(url).await?;
    let exists = schema_exists_in(&pool, schema).await;
    pool.close().await;
    exists
}

/// Rename schema `from` to `to` (which must not exist) in the database of `url`.
pub(crate) async fn rename_schema(url: &str, from: &str, to: &str) -> Result<()> {
    validate_schema(from)?;
    validate_schema(to)?;
    let pool = admin_pool(url).await?;
    // Both names are validated; they are quoted identifiers, never values.
    let result = sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER SCHEMA \"{from}\" RENAME TO \"{to}\""
    )))
    .execute(&pool)
    .await
    .map_err(|e| classify(format!("rename schema {from} to {to}"), e));
    pool.close().await;
    result.map(|_| ())
}

/// The SQL of every statement, with the schema filled in once.
pub(super) struct Statements {
    pub(super) lock_stream: SqlStr,
    pub(super) insert_stream: SqlStr,
    pub(super) stored_versions: SqlStr,
    pub(super) prefetch_versions: SqlStr,
    pub(super) insert_records: SqlStr,
    pub(super) update_metadata: SqlStr,
    pub(super) next_seq: SqlStr,
    pub(super) update_records: SqlStr,
    pub(super) mark_seen: SqlStr,
    pub(super) update_stream: SqlStr,
    pub(super) stream_state: SqlStr,
    pub(super) set_upstream_error: SqlStr,
    pub(super) get: SqlStr,
    pub(super) list_first: SqlStr,
    pub(super) list_after: SqlStr,
    pub(super) streams: SqlStr,
}

/// The columns a page write sets, and the rows it writes: `$2..$10` one array per
/// column, `$11` the commit's sequence number, `$12` its generation stamp, `$13` the
/// array of change kinds.
const WRITE_COLUMNS: &str = "stream_id, id, payload, first_seen_at, last_modified_at, last_action, \
     deleted_at, pruned_at, cursor, deleted, seq, seen_generation, change_kind";
/// The rows of a page write, `u`, from its parameters (see [`WRITE_COLUMNS`]).
const WRITE_ROWS: &str = "UNNEST($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int2[], $7::int8[], $8::int8[], \
                 $9::text[], $10::bool[], $13::int2[]) \
       AS u(id, payload, first_seen_at, last_modified_at, last_action, deleted_at, pruned_at, cursor, deleted, \
            change_kind)";

/// The columns of a stream's status, in the order `rows::status_from_row` reads them.
pub(super) const STATUS_COLUMNS: &str = "integration, connection, model, variant, cursor, generation, full_read, \
     added, updated, deleted, unchanged, stale, live_records, deleted_records, \
     last_run::text, upstream_error, last_success::text";

/// The stored version of the record `u.id` of the stream `stream_id` (an SQL expression),
/// in the columns `apply.rs` reads: `last_modified_at, cursor, deleted, pruned, seq,
/// seen_generation`. A lateral subquery, one primary-key probe per id. A bare payload
/// (`{"id": ...}`) is small: the size test, which reads only the value's header, spares
/// building and comparing a JSON object for every stored record with a real payload.
fn stored_version_of(stream_id: &str) -> String {
    format!(
        "SELECT o.last_modified_at, o.cursor, o.deleted, \
           o.pruned_at IS NOT NULL OR (pg_column_size(o.payload) <= 64 + 2 * octet_length(o.id) \
             AND o.payload = jsonb_build_object('id', o.id)) AS pruned, o.seq, o.seen_generation \
         FROM {{s}}.records o WHERE o.stream_id = {stream_id} AND o.id = u.id OFFSET 0"
    )
}

pub(super) const RECORD_COLUMNS: &str = "r.id, r.payload::text, r.first_seen_at, r.last_modified_at, r.last_action, r.deleted_at, r.pruned_at, r.cursor, r.seq";

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        // `schema` is validated and quoted; every other value is a bind parameter.
        let s = |sql: String| -> SqlStr {
            sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(sql.replace("{s}", schema)))
        };
        let upsert_stream = |column: &str| {
            s(format!(
                "INSERT INTO {{s}}.streams (key_hash, integration, connection, model, variant, {column}) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (key_hash) DO UPDATE SET {column} = EXCLUDED.{column}",
            ))
        };
        // `$kind`: the change kind to list (NULL: every kind, tombstones when `$2`).
        let list = |after: &str, kind: &str| {
            s(format!(
                "SELECT {RECORD_COLUMNS} FROM {{s}}.records r \
                 JOIN {{s}}.streams t ON t.stream_id = r.stream_id \
                 WHERE t.key_hash = $1 \
                   AND CASE WHEN {kind}::int2 IS NULL THEN $2 OR NOT r.deleted \
                            ELSE {KIND} = {kind}::int2 END {after} \
                 ORDER BY r.id LIMIT $3",
                KIND = super::feed::KIND,
            ))
        };
        Statements {
            lock_stream: s(
                "SELECT stream_id, cursor, generation, full_read, live_records, seen_live_generation, \
                   seen_live_count, last_seq FROM {s}.streams WHERE key_hash = $1 FOR UPDATE"
                    .into(),
            ),
            insert_stream: s("INSERT INTO {s}.streams (key_hash, integration, connection, model, variant) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_hash) DO NOTHING"
                .into()),
            stored_versions: s(format!(
                "SELECT u.id, r.* FROM UNNEST($2::text[]) AS u(id) \
                 CROSS JOIN LATERAL ({}) AS r",
                stored_version_of("$1")
            )),
            // One snapshot: the stream's `last_seq` (the row whose id is NULL) and the
            // stored versions, or no row at all for a stream without a row yet.
            prefetch_versions: s(format!(
                "WITH st AS (SELECT stream_id, last_seq FROM {{s}}.streams WHERE key_hash = $1) \
                 SELECT NULL::text, NULL::int8, NULL::text, NULL::bool, NULL::bool, NULL::int8, \
                   NULL::int8, st.last_seq FROM st \
                 UNION ALL \
                 SELECT u.id, r.*, st.last_seq FROM st CROSS JOIN UNNEST($2::text[]) AS u(id) \
                 CROSS JOIN LATERAL ({}) AS r",
                stored_version_of("st.stream_id")
            )),
            next_seq: s("UPDATE {s}.commit_seq SET seq = seq + 1 RETURNING seq".into()),
            // Stored records get their new version by an update (same parameters as a
            // page insert), not an upsert: the commit's lookup found them, and the
            // stream's lock keeps them there.
            update_records: s(format!(
                "UPDATE {{s}}.records AS r SET payload = u.payload::jsonb, first_seen_at = u.first_seen_at, \
                   last_modified_at = u.last_modified_at, last_action = u.last_action, \
                   deleted_at = u.deleted_at, pruned_at = u.pruned_at, cursor = u.cursor, \
                   deleted = u.deleted, seq = $11, seen_generation = $12, change_kind = u.change_kind \
                 FROM {WRITE_ROWS} WHERE r.stream_id = $1 AND r.id = u.id"
            )),
            insert_records: s(format!(
                "INSERT INTO {{s}}.records ({WRITE_COLUMNS}) \
                 SELECT $1, u.id, u.payload::jsonb, u.first_seen_at, u.last_modified_at, u.last_action, \
                   u.deleted_at, u.pruned_at, u.cursor, u.deleted, $11, $12, u.change_kind \
                 FROM {WRITE_ROWS}"
            )),
            update_metadata: s(
                "UPDATE {s}.records AS r SET first_seen_at = u.first_seen_at, \
                   last_modified_at = u.last_modified_at, last_action = u.last_action, \
                   deleted_at = u.deleted_at, pruned_at = u.pruned_at, cursor = u.cursor, \
                   deleted = u.deleted, seq = $10, seen_generation = $11, change_kind = u.change_kind \
                 FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::int2[], $6::int8[], $7::int8[], \
                             $8::text[], $9::bool[], $12::int2[]) \
                   AS u(id, first_seen_at, last_modified_at, last_action, deleted_at, pruned_at, cursor, deleted, \
                        change_kind) \
                 WHERE r.stream_id = $1 AND r.id = u.id"
                    .into(),
            ),
            mark_seen: s("UPDATE {s}.records AS r SET seen_generation = $2 \
                 FROM UNNEST($3::text[]) AS u(id) \
                 WHERE r.stream_id = $1 AND r.id = u.id AND r.seen_generation <> $2"
                .into()),
            update_stream: s("UPDATE {s}.streams SET cursor = $2, generation = $3, full_read = $4, \
                   added = added + $5, updated = updated + $6, deleted = deleted + $7, \
                   unchanged = unchanged + $8, stale = stale + $9, \
                   live_records = live_records + $10, deleted_records = deleted_records + $11, \
                   seen_live_generation = $12, seen_live_count = $13, last_seq = $17 \
                 WHERE stream_id = $1 \
                 RETURNING (SELECT count(*) FROM (SELECT pg_notify($15, $16) WHERE $14) n)"
                .into()),
            stream_state: s("SELECT cursor, generation, full_read FROM {s}.streams WHERE key_hash = $1".into()),
            set_upstream_error: upsert_stream("upstream_error"),
            get: s(format!(
                "SELECT {RECORD_COLUMNS} FROM {{s}}.records r JOIN {{s}}.streams t ON t.stream_id = r.stream_id \
                 WHERE t.key_hash = $1 AND r.id = $2"
            )),
            list_first: list("", "$4"),
            list_after: list("AND r.id > $4", "$5"),
            streams: s(format!(
                "SELECT {STATUS_COLUMNS} FROM {{s}}.streams ORDER BY integration, connection, model, variant"
            )),
        }
    }
}
