//! An in-process end-to-end sync: the fake Nango on loopback serves 20,000 generated
//! records (about 740 bytes each), and the engine syncs them into a fresh store: fetch,
//! parse, merge and commit, pipelined like in production. Throughput in records.
//!
//! Stores: memory, and sqlite and sled when their features are on. One group per store,
//! `sync/<store>/fresh/<page size>` at pages of 1,000 and 10,000. For a fuller picture
//! (ceilings, updates, memory) run `nango-sync bench`.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nango_sync::engine::EngineConfig;
use nango_sync::sink::SharedSink;
use nango_sync::{Engine, NangoClient, RetryConfig, StreamKey, SyncOptions, Timestamp};
use nango_sync_testkit::{FakeConfig, FakeNango, GenerateSpec};

const RECORDS: usize = 20_000;

/// A named way to make a fresh store.
type StoreFactory = (&'static str, Box<dyn Fn() -> SharedSink>);

fn stores(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Vec<StoreFactory> {
    let _ = (rt, dir);
    let mut out: Vec<StoreFactory> = vec![(
        "memory",
        Box::new(|| Arc::new(nango_sync::sink::MemoryStore::new())),
    )];
    #[cfg(feature = "sqlite")]
    {
        let dir = dir.to_path_buf();
        let handle = rt.handle().clone();
        out.push((
            "sqlite",
            Box::new(move || {
                let path = dir.join(format!("sync-{}.db", Timestamp::now().as_micros()));
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
            Box::new(move || {
                let path = dir.join(format!("sync-{}.sled", Timestamp::now().as_micros()));
                Arc::new(
                    handle
                        .block_on(nango_sync::sink::SledStore::open(path))
                        .unwrap(),
                )
            }),
        ));
    }
    out
}

fn bench_sync(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamKey::new("bench", "conn", "Ticket");
    let fake = rt
        .block_on(FakeNango::start(FakeConfig::default()))
        .unwrap();
    fake.generate_with(&stream, GenerateSpec::new(RECORDS, 1000));
    let client = NangoClient::builder()
        .host(fake.url())
        .secret_key(fake.secret_key())
        .retry(RetryConfig::fast())
        .build()
        .unwrap();
    for (name, make) in stores(&rt, dir.path()) {
        let mut group = c.benchmark_group(format!("sync/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(RECORDS as u64));
        for page_size in [1_000u32, 10_000] {
            let config = EngineConfig {
                page_size,
                ..EngineConfig::default()
            };
            group.bench_with_input(BenchmarkId::new("fresh", page_size), &page_size, |b, _| {
                b.iter_batched(
                    || Engine::with_config(client.clone(), make(), config.clone()),
                    |engine| {
                        let report = rt
                            .block_on(engine.sync(&stream, &SyncOptions::default()))
                            .unwrap();
                        assert_eq!(report.counts.added, RECORDS as u64);
                    },
                    criterion::BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
    rt.block_on(fake.shutdown());
}

criterion_group!(benches, bench_sync);
criterion_main!(benches);
