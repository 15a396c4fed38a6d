//! `nango-sync repair` on every store, through the real binary, against the fake Nango:
//! a readable store (rebuilt from the streams it knew, with the payloads only it held
//! listed) and a damaged one (a garbage SQLite file, a sled directory whose log is
//! overwritten, a PostgreSQL schema missing a table), which every command refuses with a
//! clear error until `repair` moves it aside, unchanged, and rebuilds it.
#![cfg(feature = "sqlite")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nango_sync::StreamKey;
use nango_sync::sink;
use nango_sync::sink::outbox::{NewOutboxItem, OutboxState};
use nango_sync_testkit::{FakeConfig, FakeNango, local_live};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");

fn contacts() -> StreamKey {
    StreamKey::new("demo-crm", "acme", "Contact")
}

fn deals() -> StreamKey {
    StreamKey::new("demo-crm", "acme", "Deal")
}

async fn fake() -> FakeNango {
    let fake = FakeNango::start(FakeConfig {
        seed: 11,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    fake.generate(&contacts(), 1200, 300);
    fake.generate(&deals(), 50, 50);
    fake
}

fn run(fake: &FakeNango, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NANGO_HOST", fake.url())
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env_remove("NANGO_SYNC_LOG")
        .output()
        .expect("run nango-sync")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sync(fake: &FakeNango, url: &str) {
    let out = run(
        fake,
        &[
            "sync",
            "--sink",
            url,
            "--integration",
            "demo-crm",
            "--connection",
            "acme",
            "--model",
            "Contact",
            "--model",
            "Deal",
            "--page-size",
            "500",
        ],
    );
    assert!(out.status.success(), "sync: {}", text(&out.stderr));
}

/// `repair --json` with `extra` arguments; returns the report.
fn repair(fake: &FakeNango, url: &str, extra: &[&str]) -> Value {
    let mut args = vec!["repair", "--sink", url, "--json", "--page-size", "400"];
    args.extend_from_slice(extra);
    let out = run(fake, &args);
    assert!(
        out.status.success(),
        "repair failed: {}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("repair --json printed no JSON ({e}): {}", text(&out.stdout)))
}

const STREAM_ARGS: &[&str] = &[
    "--integration",
    "demo-crm",
    "--connection",
    "acme",
    "--model",
    "Contact",
    "--model",
    "Deal",
];

/// The store's live records equal the fake's (payloads as Nango serves them now).
async fn assert_equals_fake(url: &str, fake: &FakeNango, stream: &StreamKey) {
    let store = sink::open(url)
        .await
        .unwrap_or_else(|e| panic!("the rebuilt store does not open: {e}"));
    let local = local_live(&*store, stream).await;
    let upstream: BTreeMap<String, Value> = fake
        .records(stream)
        .into_iter()
        .filter(|r| !r.meta.is_deleted())
        .map(|r| (r.id, r.payload))
        .collect();
    assert_eq!(local.len(), upstream.len(), "{stream}: live record count");
    assert!(
        local == upstream,
        "{stream}: the rebuilt store differs from Nango"
    );
}

fn stream_entry<'a>(report: &'a Value, model: &str) -> &'a Value {
    report["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"]["model"] == model)
        .unwrap_or_else(|| panic!("no {model} stream in the report: {report:#}"))
}

fn ids(list: &Value) -> Vec<String> {
    list["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A readable store whose records Nango has since pruned, deleted with only `{id}`, or
/// dropped without a trace: `repair` (no streams given) rebuilds both streams the store
/// knew and lists what only the old store held. Returns where the old store went.
async fn readable_store_is_rebuilt(url: &str) -> String {
    let fake = fake().await;
    sync(&fake, url);
    // After the sync: delete two with `{id}` only (synced: the store keeps their
    // payload), prune three (no event: the store never hears of it), drop every deal.
    fake.delete(&contacts(), &["rec-0000010", "rec-0000011"]);
    sync(&fake, url);
    assert_eq!(
        fake.prune(&contacts(), &["rec-0000003", "rec-0000001", "rec-0000002"]),
        3
    );
    assert_eq!(fake.hard_reset(&deals()), 50);
    // Two actions not delivered yet.
    {
        let store = sink::open(url).await.unwrap();
        let mut item = NewOutboxItem::new("demo-crm", "acme", "create-issue");
        item.input = Some(nango_sync::RawJson::from_trusted(r#"{"title":"Bug"}"#));
        item.key = Some("issue-1".into());
        item.then_sync = vec!["Contact".into()];
        store.outbox_enqueue(item).await.unwrap();
        store
            .outbox_enqueue(NewOutboxItem::new("demo-crm", "acme", "close-issue"))
            .await
            .unwrap();
    }

    let report = repair(&fake, url, &[]);
    assert_eq!(report["old_store_readable"], true, "{report:#}");
    assert_eq!(report["streams"].as_array().unwrap().len(), 2, "{report:#}");
    let c = stream_entry(&report, "Contact");
    assert_eq!(c["in_old_store"], true);
    assert_eq!(c["error"], Value::Null);
    assert_eq!(c["live_records"], 1198);
    assert_eq!(c["deleted_records"], 2);
    assert_eq!(
        (&c["old_live_records"], &c["old_deleted_records"]),
        (&1198.into(), &2.into())
    );
    assert_eq!(c["payloads_lost"]["count"], 5, "{c:#}");
    assert_eq!(
        ids(&c["payloads_lost"]),
        [
            "rec-0000001",
            "rec-0000002",
            "rec-0000003",
            "rec-0000010",
            "rec-0000011"
        ]
    );
    assert_eq!(c["only_in_old_store"]["count"], 0);
    let d = stream_entry(&report, "Deal");
    assert_eq!(d["live_records"], 0);
    assert_eq!(d["only_in_old_store"]["count"], 50, "{d:#}");
    assert_eq!(ids(&d["only_in_old_store"]).len(), 50);
    assert_eq!(ids(&d["only_in_old_store"])[0], "rec-0000001");
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("2 undelivered actions carried over"),
        "{notes}"
    );
    // The undelivered actions are queued in the new store as they were.
    let store = sink::open(url).await.unwrap();
    let items = store
        .outbox_list(&nango_sync::sink::outbox::OutboxQuery::first(10))
        .await
        .unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(items.iter().all(|i| i.state == OutboxState::Pending));
    assert_eq!(items[0].action, "create-issue");
    assert_eq!(items[0].key.as_deref(), Some("issue-1"));
    assert_eq!(items[0].then_sync, ["Contact"]);
    assert_eq!(
        items[0].input.as_ref().unwrap().to_value(),
        serde_json::json!({"title": "Bug"})
    );
    assert_eq!(items[1].action, "close-issue");
    drop(store);

    assert_equals_fake(url, &fake, &contacts()).await;
    assert_equals_fake(url, &fake, &deals()).await;
    report["moved_to"].as_str().unwrap().to_string()
}

/// A damaged store: every command that opens it fails with one line naming the store,
/// saying it is damaged and what to run; `repair` without streams changes nothing;
/// with them, it moves the store aside unchanged and rebuilds it. Returns the report.
async fn damaged_store_is_rebuilt(url: &str, damage: impl FnOnce(), files: Option<&Path>) -> Value {
    let fake = fake().await;
    sync(&fake, url);
    damage();
    for args in [
        vec!["status", "--sink", url],
        vec![
            "export",
            "--sink",
            url,
            "--integration",
            "demo-crm",
            "--connection",
            "acme",
            "--model",
            "Contact",
        ],
    ] {
        let out = run(&fake, &args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded on a damaged store"
        );
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("damaged"), "{err}");
        assert!(
            err.contains("run `nango-sync repair --sink "),
            "the error says what to do: {err}"
        );
    }

    // Without streams: refused, nothing changed.
    let out = run(&fake, &["repair", "--sink", url]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot be read")
            && err.contains("must be given")
            && err.contains("nothing was changed"),
        "{err}"
    );
    let out = run(&fake, &["status", "--sink", url]);
    assert!(
        text(&out.stderr).contains("damaged"),
        "still the damaged store"
    );

    let before = files.map(contents_of);
    let report = repair(&fake, url, STREAM_ARGS);
    assert_eq!(report["old_store_readable"], false, "{report:#}");
    assert!(
        report["old_store_error"]
            .as_str()
            .unwrap()
            .contains("damaged"),
        "{report:#}"
    );
    for model in ["Contact", "Deal"] {
        let s = stream_entry(&report, model);
        assert_eq!(s["given"], true);
        assert_eq!(s["error"], Value::Null);
        assert_eq!(s["old_live_records"], Value::Null);
    }
    assert_eq!(stream_entry(&report, "Contact")["live_records"], 1200);
    if let Some(before) = before {
        assert!(
            contents_of(Path::new(report["moved_to"].as_str().unwrap())) == before,
            "repair changed the damaged store it moved aside"
        );
    }
    assert_equals_fake(url, &fake, &contacts()).await;
    assert_equals_fake(url, &fake, &deals()).await;
    let out = run(&fake, &["status", "--sink", url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    report
}

/// Every file of a store (a file, or a directory's files by relative path) and its bytes.
fn contents_of(path: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    if path.is_dir() {
        walk(path, path, &mut out);
    } else {
        out.insert(PathBuf::new(), std::fs::read(path).unwrap());
    }
    out
}

fn no_scratch_left(dir: &Path) {
    let left: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".repair-"))
        .collect();
    assert!(left.is_empty(), "scratch copies left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_readable_store_is_rebuilt_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let url = format!("sqlite://{}", path.display());
    let moved = readable_store_is_rebuilt(&url).await;
    assert!(
        moved.starts_with(&format!("{}.damaged-", path.display())),
        "{moved}"
    );
    // The old store is kept, with what it held.
    let old = sink::open(&format!("sqlite://{moved}")).await.unwrap();
    assert_eq!(
        sink::read_all(&*old, &deals(), false).await.unwrap().len(),
        50
    );
    no_scratch_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_garbage_file_is_moved_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let url = format!("sqlite://{}", path.display());
    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let p = path.clone();
    damaged_store_is_rebuilt(
        &url,
        move || {
            // No WAL or shared memory file either: only garbage.
            for side in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{side}", p.display()));
            }
            std::fs::write(&p, &garbage).unwrap();
        },
        Some(&path),
    )
    .await;
    no_scratch_left(dir.path());
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread")]
async fn sled_readable_store_is_rebuilt_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sled");
    let url = format!("sled://{}", path.display());
    let moved = readable_store_is_rebuilt(&url).await;
    assert!(
        moved.starts_with(&format!("{}.damaged-", path.display())),
        "{moved}"
    );
    let old = sink::open(&format!("sled://{moved}")).await.unwrap();
    assert_eq!(
        sink::read_all(&*old, &deals(), false).await.unwrap().len(),
        50
    );
    no_scratch_left(dir.path());
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread")]
async fn sled_corrupted_log_is_moved_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sled");
    let url = format!("sled://{}", path.display());
    let db = path.join("db");
    damaged_store_is_rebuilt(
        &url,
        move || {
            let len = std::fs::metadata(&db).unwrap().len() as usize;
            std::fs::write(&db, vec![0x5a; len]).unwrap();
        },
        // sled's own recovery, run by the commands that failed, may change the log;
        // repair itself changes nothing.
        Some(&path),
    )
    .await;
    no_scratch_left(dir.path());
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread")]
async fn sled_store_in_use_is_not_repaired() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sled");
    let url = format!("sled://{}", path.display());
    sync(&fake, &url);
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path.join("db"))
        .unwrap();
    holder.try_lock().unwrap();
    let out = run(&fake, &["repair", "--sink", &url]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("another process uses the store"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    let entries: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["store.sled"], "nothing moved or copied");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_store_is_not_repaired() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("none.db").display());
    let out = run(&fake, &["repair", "--sink", &url]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("there is no store to repair"), "{err}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    let out = run(&fake, &["repair", "--sink", "memory://"]);
    assert!(text(&out.stderr).contains("memory:// keeps nothing to repair"));
}

#[cfg(feature = "postgres")]
mod postgres {
    use nango_sync_testkit::stores::postgres_server_url as server_url;

    use super::*;

    fn url_with_schema(schema: &str) -> String {
        let base = server_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}schema={schema}")
    }

    async fn schema_exists(schema: &str) -> bool {
        let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        exists
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn postgres_readable_store_is_rebuilt_and_kept() {
        let schema = format!("rp_{}", uuid::Uuid::new_v4().simple());
        let moved = readable_store_is_rebuilt(&url_with_schema(&schema)).await;
        let renamed = moved.strip_prefix("schema ").expect("a schema");
        assert!(
            renamed.starts_with(&format!("{schema}_damaged_")) || renamed.contains("_damaged_"),
            "{moved}"
        );
        assert!(schema_exists(renamed).await);
        let old = sink::open(&url_with_schema(renamed)).await.unwrap();
        assert_eq!(
            sink::read_all(&*old, &deals(), false).await.unwrap().len(),
            50
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn postgres_schema_missing_a_table_is_renamed_and_rebuilt() {
        let schema = format!("rp_{}", uuid::Uuid::new_v4().simple());
        let url = url_with_schema(&schema);
        let s = schema.clone();
        let report = damaged_store_is_rebuilt(
            &url,
            move || {
                // Blocking on a fresh runtime: the damage is done between two commands.
                std::thread::spawn(move || {
                    tokio::runtime::Runtime::new().unwrap().block_on(async {
                        let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE \"{s}\".records")))
                            .execute(&pool)
                            .await
                            .unwrap();
                        pool.close().await;
                    })
                })
                .join()
                .unwrap();
            },
            None,
        )
        .await;
        let moved = report["moved_to"].as_str().unwrap();
        let renamed = moved.strip_prefix("schema ").unwrap();
        assert!(renamed.contains("_damaged_"), "{moved}");
        // Kept as it was: its streams table is there, its records table still missing.
        let pool = sqlx::PgPool::connect(&server_url()).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
        )
        .bind(renamed)
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        assert_eq!(
            tables,
            [
                "commit_seq",
                "consumers",
                "feed_commits",
                "outbox",
                "runs",
                "schema_migrations",
                "streams"
            ]
        );
    }
}
