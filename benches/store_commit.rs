//! One commit of a page into each store, at page sizes 100, 1,000 and 10,000: fresh
//! inserts and updates of every record; and fresh inserts at scattered ids (as a real
//! API's ids arrive) into a stream already holding 100,000 records. Throughput in records.
//!
//! Stores: memory, and sqlite, sled and postgres when their features are on
//! (`cargo bench --bench store_commit --all-features`). Postgres needs
//! `NANGO_SYNC_TEST_POSTGRES_URL` (for example through `scripts/pg.sh`); without it the
//! postgres group is skipped with a note. Each postgres store gets a fresh schema
//! `nango_sync_bench_<n>_<micros>`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nango_sync::sink::{Commit, SharedSink};
use nango_sync::{Cursor, LastAction, Metadata, RawJson, Record, StreamKey, Timestamp};

/// A realistic record of about 760 bytes.
fn record(i: usize, version: i64) -> Record {
    let id = format!("rec-{i:08}");
    let payload = serde_json::json!({
        "id": id,
        "name": format!("Zoë Ångström {i}"),
        "email": format!("user{i}@example.com"),
        "phone": "+33 1 23 45 67 89",
        "title": "Head of Customer Success — EMEA",
        "company": {"id": format!("co-{}", i % 977), "name": "Crème Brûlée Industries", "domain": "example.org"},
        "address": {"street": "12 rue de la Paix", "city": "Paris", "zip": "75002", "country": "FR"},
        "tags": ["customer", "priority", "日本語", "emoji 🚀"],
        "score": i % 100,
        "active": !i.is_multiple_of(3),
        "created_at": "2026-01-02T03:04:05.678Z",
        "updated_at": "2026-11-26T19:47:22.728Z",
        "owner": {"id": "u-42", "name": "Jürgen Weiß"},
        "notes": "Prefers email. Renewal in Q3; discuss the upgrade to the enterprise plan.",
        "version": version,
        "source": "demo-crm",
        "locale": "fr-FR"
    });
    let t = Timestamp::from_micros(1_795_000_000_000_000 + version * 1_000_000);
    Record {
        payload_is_bare: false,
        payload: RawJson::from_trusted(payload.to_string()),
        meta: Metadata {
            first_seen_at: t,
            last_modified_at: t,
            last_action: if version == 0 {
                LastAction::Added
            } else {
                LastAction::Updated
            },
            deleted_at: None,
            pruned_at: None,
            cursor: Cursor(format!(
                "MjAyNi0xMS0yNlQxOTo0NzoyMi43MjgzOCswMDowMHx8{version:04}{i:032}"
            )),
        },
        id,
    }
}

fn page(n: usize, version: i64) -> Vec<Record> {
    (0..n).map(|i| record(i, version)).collect()
}

/// Records `from..from + n` with ids scattered over the key space, as a stream ordered
/// by modification time brings them (the ids of an API are not in that order).
fn scattered_page(from: usize, n: usize) -> Vec<Record> {
    (from..from + n)
        .map(|i| {
            let mut r = record(i, 0);
            let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            r.id = format!("{:016x}", z ^ (z >> 31));
            r
        })
        .collect()
}

/// A named way to make a fresh store.
type StoreFactory = (&'static str, Box<dyn Fn(usize) -> SharedSink>);

fn stores(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Vec<StoreFactory> {
    let _ = rt;
    let mut out: Vec<StoreFactory> = Vec::new();
    out.push((
        "memory",
        Box::new(|_| Arc::new(nango_sync::sink::MemoryStore::new())),
    ));
    #[cfg(feature = "sqlite")]
    {
        let dir = dir.to_path_buf();
        let handle = rt.handle().clone();
        out.push((
            "sqlite",
            Box::new(move |n| {
                let path = dir.join(format!("bench-{n}-{}.db", Timestamp::now().as_micros()));
                Arc::new(
                    handle
                        .block_on(nango_sync::sink::SqliteStore::open(path))
                        .unwrap(),
                )
            }),
        ));
    }
    #[cfg(feature = "sled")]
    {
        let dir = dir.to_path_buf();
        let handle = rt.handle().clone();
        out.push((
            "sled",
            Box::new(move |n| {
                let path = dir.join(format!("bench-{n}-{}.sled", Timestamp::now().as_micros()));
                Arc::new(
                    handle
                        .block_on(nango_sync::sink::SledStore::open(path))
                        .unwrap(),
                )
            }),
        ));
    }
    #[cfg(feature = "postgres")]
    match std::env::var("NANGO_SYNC_TEST_POSTGRES_URL") {
        Ok(url) => {
            let handle = rt.handle().clone();
            out.push((
                "postgres",
                Box::new(move |n| {
                    let schema = format!("nango_sync_bench_{n}_{}", Timestamp::now().as_micros());
                    Arc::new(
                        handle
                            .block_on(nango_sync::sink::PostgresStore::connect_with(
                                &url,
                                nango_sync::sink::postgres::PostgresOptions::new()
                                    .with_schema(schema),
                            ))
                            .unwrap(),
                    )
                }),
            ));
        }
        Err(_) => eprintln!(
            "note: NANGO_SYNC_TEST_POSTGRES_URL is not set: the postgres group is skipped (scripts/pg.sh sets it)"
        ),
    }
    #[cfg(not(any(feature = "sqlite", feature = "sled")))]
    let _ = dir;
    out
}

fn bench_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamKey::new("bench", "conn", "Contact");
    for (name, make) in stores(&rt, dir.path()) {
        let mut group = c.benchmark_group(format!("commit/{name}"));
        group.sample_size(10);
        for n in [100usize, 1_000, 10_000] {
            group.throughput(Throughput::Elements(n as u64));
            // Fresh inserts: a new stream per iteration.
            let store = make(n);
            let mut k = 0u64;
            group.bench_with_input(BenchmarkId::new("fresh", n), &n, |b, &n| {
                b.iter_batched(
                    || {
                        k += 1;
                        (
                            StreamKey::new("bench", format!("conn-{k}"), "Contact"),
                            page(n, 0),
                        )
                    },
                    |(s, records)| {
                        rt.block_on(store.commit(Commit::new(
                            s,
                            None,
                            Some(Cursor("c".into())),
                            records,
                        )))
                        .unwrap();
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
            // Updates of every record of one stream.
            let store = make(n);
            rt.block_on(store.commit(Commit::new(
                stream.clone(),
                None,
                Some(Cursor("v0".into())),
                page(n, 0),
            )))
            .unwrap();
            let mut version = 0i64;
            group.bench_with_input(BenchmarkId::new("update", n), &n, |b, &n| {
                b.iter_batched(
                    || {
                        version += 1;
                        (
                            Some(Cursor(format!("v{}", version - 1))),
                            Some(Cursor(format!("v{version}"))),
                            page(n, version),
                        )
                    },
                    |(expected, cursor, records)| {
                        black_box(
                            rt.block_on(store.commit(Commit::new(
                                stream.clone(),
                                expected,
                                cursor,
                                records,
                            )))
                            .unwrap(),
                        );
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
        // Fresh inserts at scattered ids into a stream that already holds 100,000.
        let store = make(0);
        let held = 100_000;
        let mut cursor = None;
        for p in 0..held / 1_000 {
            let next = Some(Cursor(format!("s{p}")));
            rt.block_on(store.commit(Commit::new(
                stream.clone(),
                cursor,
                next.clone(),
                scattered_page(p * 1_000, 1_000),
            )))
            .unwrap();
            cursor = next;
        }
        let mut from = held;
        group.throughput(Throughput::Elements(1_000));
        group.bench_function("fresh-scattered-into-100k/1000", |b| {
            b.iter_batched(
                || {
                    from += 1_000;
                    let next = Some(Cursor(format!("s{from}")));
                    let commit = Commit::new(
                        stream.clone(),
                        cursor.clone(),
                        next.clone(),
                        scattered_page(from, 1_000),
                    );
                    cursor = next;
                    commit
                },
                |commit| black_box(rt.block_on(store.commit(commit)).unwrap()),
                criterion::BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, bench_commit);
criterion_main!(benches);
