//! Seeded simulation: random upstream mutations (save, update, `{id}` delete, delete with
//! the full payload, undelete, prune, hard reset), incremental and full runs, runs
//! stopped between pages, injected HTTP faults and store failures, on every store.
//!
//! The oracle, checked after every successful run:
//! - with no hard reset since the last successful full run: the store's live records
//!   are exactly the fake's live records;
//! - after a hard reset (records vanished without an event, which only a full re-read can
//!   notice): every fake live record is stored live, and no record the fake holds as
//!   deleted is live locally;
//! - payloads: the fake's latest payload; for a pruned record the last full payload the
//!   store could read (the latest one when the store held it before the prune:
//!   a prune never wipes a payload);
//! - restores: re-saving a pruned record unchanged makes Nango refill its payload without
//!   moving its cursor, which an incremental run cannot see. Until a full re-read from the
//!   start has run, such a record may still hold what the store had (its `{id}` or an
//!   earlier payload of it); after one, it must hold the restored payload.
//!
//! Each store runs `NANGO_SYNC_SIM_SEEDS` seeds (default 150 to 300 per store); a failure
//! prints its seed, and `NANGO_SYNC_SIM_SEED=<n>` replays exactly that seed.
//! `scripts/sim-campaign.sh` runs thousands of seeds per store (not part of CI).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use nango_sync::engine::{EngineConfig, Progress};
use nango_sync::sink::fault::{FaultInjector, FaultPoint};
use nango_sync::sink::{self, SharedSink};
use nango_sync::{Engine, RetryConfig, StreamKey, SyncOptions};
use nango_sync_testkit::{FakeConfig, FakeNango, Fault, SplitMix64 as Rng, TestStore};
use serde_json::{Value, json};

/// The seeds to run: `NANGO_SYNC_SIM_SEED` (one), or `NANGO_SYNC_SIM_FROM` (default 1)
/// to `NANGO_SYNC_SIM_SEEDS`.
fn seeds(default: u64) -> Vec<u64> {
    if let Some(one) = std::env::var("NANGO_SYNC_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return vec![one];
    }
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let n = env("NANGO_SYNC_SIM_SEEDS").unwrap_or(default);
    let from = env("NANGO_SYNC_SIM_FROM").unwrap_or(1);
    (from..=n).collect()
}

/// Prints the seed when a step panics (an unwrap of the test's own plumbing).
struct SeedGuard(u64, &'static str);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed on store {} with seed {}: replay with NANGO_SYNC_SIM_SEED={}",
                self.1, self.0, self.0
            );
        }
    }
}

const IDS: u64 = 10;

/// What the simulation knows about the upstream history, for the oracle.
#[derive(Default)]
struct Model {
    /// Every payload ever saved per id.
    history: HashMap<String, Vec<Value>>,
    /// The version (`last_modified_at`) the oracle last verified in the store for a live,
    /// unpruned record.
    verified: HashMap<String, nango_sync::Timestamp>,
    /// A hard reset happened since the last successful full run.
    reset_pending: bool,
    /// Records whose payload Nango restored (without moving them) since the last
    /// successful full run from the start, with the version that was restored.
    restored: HashMap<String, (nango_sync::Timestamp, String)>,
}

fn payload(rng: &mut Rng, id: &str) -> Value {
    let v = rng.below(4);
    match rng.below(3) {
        0 => json!({"id": id, "v": v}),
        1 => json!({"id": id, "v": v, "title": format!("t-{v}"), "tags": ["a", v]}),
        _ => json!({"id": id, "v": v, "nested": {"n": v, "s": "é\"\\"}}),
    }
}

fn pick_ids(rng: &mut Rng, max: u64) -> Vec<String> {
    let n = 1 + rng.below(max);
    let set: BTreeSet<String> = (0..n).map(|_| format!("r{}", rng.below(IDS))).collect();
    set.into_iter().collect()
}

async fn check_oracle(
    fake: &FakeNango,
    store: &SharedSink,
    stream: &StreamKey,
    model: &mut Model,
    step: usize,
) -> Result<(), String> {
    let local: BTreeMap<String, Value> = sink::read_all(&**store, stream, false)
        .await
        .map_err(|e| format!("step {step}: read_all: {e}"))?
        .into_iter()
        .map(|r| (r.id.clone(), r.payload.to_value()))
        .collect();
    let upstream = fake.records(stream);
    let live = fake.live_payloads(stream);
    if !model.reset_pending {
        let l: BTreeSet<&String> = local.keys().collect();
        let u: BTreeSet<&String> = live.keys().collect();
        if l != u {
            return Err(format!(
                "step {step}: live ids differ: local {l:?}, upstream {u:?}"
            ));
        }
    } else {
        for r in upstream.iter().filter(|r| r.meta.deleted_at.is_some()) {
            if local.contains_key(&r.id) {
                return Err(format!(
                    "step {step}: {} is deleted upstream but live locally",
                    r.id
                ));
            }
        }
    }
    for r in &upstream {
        let Some(saved) = live.get(&r.id) else {
            continue;
        };
        let Some(got) = local.get(&r.id) else {
            return Err(format!(
                "step {step}: {} is live upstream but not locally",
                r.id
            ));
        };
        let restore_unseen = model
            .restored
            .get(&r.id)
            .is_some_and(|(t, c)| *t == r.meta.last_modified_at && *c == r.meta.cursor.as_str());
        if r.meta.pruned_at.is_none() && !restore_unseen {
            if got != saved {
                return Err(format!(
                    "step {step}: {} holds {got}, upstream {saved}",
                    r.id
                ));
            }
            model.verified.insert(r.id.clone(), r.meta.last_modified_at);
        } else if model.verified.get(&r.id) == Some(&r.meta.last_modified_at) {
            // The store held this very version before the prune (a prune does not move
            // a record): it must keep its payload.
            if got != saved {
                return Err(format!(
                    "step {step}: pruned {} lost its payload: holds {got}, had {saved}",
                    r.id
                ));
            }
        } else {
            let bare = json!({ "id": r.id });
            let known = model.history.get(&r.id).is_some_and(|h| h.contains(got));
            if *got != bare && !known {
                return Err(format!(
                    "step {step}: pruned {} holds {got}, never a payload of it",
                    r.id
                ));
            }
        }
    }
    Ok(())
}

async fn run_seed(
    seed: u64,
    store: &SharedSink,
    faults: &FaultInjector,
    backend: &'static str,
) -> Result<(), String> {
    let _guard = SeedGuard(seed, backend);
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5);
    let fake = Arc::new(
        FakeNango::start(FakeConfig {
            seed,
            ..FakeConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?,
    );
    let stream = StreamKey::new("sim", format!("seed-{seed}"), "Ticket");
    fake.add_connection(&stream.integration, &stream.connection);
    let client = fake
        .client_builder()
        .retry(RetryConfig {
            max_attempts: 5,
            ..RetryConfig::fast()
        })
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let engine = Engine::with_config(
        client,
        store.clone(),
        EngineConfig {
            page_size: 1 + rng.below(6) as u32,
            pipeline_depth: 1 + rng.below(2) as usize,
            commit_retry: RetryConfig {
                max_attempts: 3,
                ..RetryConfig::fast()
            },
            ..EngineConfig::default()
        },
    );
    let mut model = Model::default();
    let trace = std::env::var_os("NANGO_SYNC_SIM_TRACE").is_some();
    let steps = 8 + rng.below(14) as usize;
    for step in 0..=steps {
        let last = step == steps;
        let action = if last { 99 } else { rng.below(100) };
        if trace {
            eprintln!(
                "step {step}: action {action}; upstream {:?}",
                fake.records(&stream)
                    .iter()
                    .map(|r| (
                        r.id.clone(),
                        r.meta.last_action,
                        r.meta.pruned_at.is_some(),
                        r.payload.to_string()
                    ))
                    .collect::<Vec<_>>()
            );
        }
        match action {
            0..=24 => {
                let records: Vec<Value> = pick_ids(&mut rng, 4)
                    .iter()
                    .map(|id| payload(&mut rng, id))
                    .collect();
                for r in &records {
                    model
                        .history
                        .entry(r["id"].as_str().unwrap().to_string())
                        .or_default()
                        .push(r.clone());
                }
                let before: HashMap<String, bool> = fake
                    .records(&stream)
                    .into_iter()
                    .map(|r| (r.id.clone(), r.meta.pruned_at.is_some()))
                    .collect();
                fake.save(&stream, records);
                for r in fake.records(&stream) {
                    if before.get(&r.id) == Some(&true) && r.meta.pruned_at.is_none() {
                        // Restored in place: moved records are not pruned either, so
                        // the oracle checks the version too.
                        model.restored.insert(
                            r.id.clone(),
                            (r.meta.last_modified_at, r.meta.cursor.as_str().to_owned()),
                        );
                    }
                }
            }
            25..=31 => {
                let ids = pick_ids(&mut rng, 2);
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                fake.delete(&stream, &ids);
            }
            32..=35 => {
                let records: Vec<Value> = pick_ids(&mut rng, 2)
                    .iter()
                    .map(|id| payload(&mut rng, id))
                    .collect();
                for r in &records {
                    model
                        .history
                        .entry(r["id"].as_str().unwrap().to_string())
                        .or_default()
                        .push(r.clone());
                }
                fake.delete_with_payload(&stream, records);
            }
            36..=41 => {
                let ids = pick_ids(&mut rng, 3);
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                fake.prune(&stream, &ids);
            }
            42..=43 => {
                fake.hard_reset(&stream);
                model.reset_pending = true;
            }
            _ => {
                // A run: full or incremental, maybe with a fault, maybe stopped early.
                let full = last || rng.chance(20);
                let mut expect_failure = false;
                if !last {
                    match rng.below(100) {
                        0..=14 => {
                            let faults = [
                                Fault::Status(500),
                                Fault::Status(503),
                                Fault::RateLimited { retry_after: 0 },
                                Fault::TruncatedJson,
                                Fault::CloseBeforeBody,
                                Fault::CloseMidBody,
                                Fault::ShortPage(1),
                            ];
                            for _ in 0..1 + rng.below(2) {
                                // Skip a few requests so the fault lands mid-run.
                                for _ in 0..rng.below(3) {
                                    fake.inject(Fault::Slow(Duration::ZERO));
                                }
                                fake.inject(
                                    faults[rng.below(faults.len() as u64) as usize].clone(),
                                );
                            }
                        }
                        15..=19 => {
                            for _ in 0..rng.below(3) {
                                fake.inject(Fault::Slow(Duration::ZERO));
                            }
                            fake.inject(Fault::Status(400));
                            expect_failure = true;
                        }
                        20..=27 => {
                            let point = if rng.chance(50) {
                                FaultPoint::AfterRecords
                            } else {
                                FaultPoint::BeforeCommit
                            };
                            faults.arm(point);
                            expect_failure = true;
                        }
                        _ => {}
                    }
                }
                let stop_after = (!last && rng.chance(12)).then(|| 1 + rng.below(3));
                let notify = Arc::new(tokio::sync::Notify::new());
                let n2 = notify.clone();
                let options = SyncOptions {
                    full,
                    progress: stop_after.map(|k| {
                        Arc::new(move |p: &Progress| {
                            if p.pages >= k {
                                n2.notify_one();
                            }
                        }) as nango_sync::engine::ProgressFn
                    }),
                    ..SyncOptions::default()
                };
                let result = engine
                    .sync_until(&stream, &options, notify.notified())
                    .await;
                fake.clear_faults();
                faults.disarm();
                if trace {
                    eprintln!(
                        "  run full={full} stop_after={stop_after:?} expect_failure={expect_failure}: {:?}",
                        result.as_ref().map(|r| r.as_ref().map(|r| (
                            r.full,
                            r.full_reason,
                            r.counts,
                            r.swept
                        )))
                    );
                }
                match result {
                    Ok(Some(report)) => {
                        // A resumed full re-read cannot notice records that vanished
                        // after its first part saw them: only one from the start can.
                        if report.full
                            && report.full_reason != Some(nango_sync::FullReadReason::Resuming)
                        {
                            model.reset_pending = false;
                            model.restored.clear();
                        }
                        check_oracle(&fake, store, &stream, &mut model, step).await?;
                    }
                    Ok(None) => {}
                    Err(e) if expect_failure => {
                        let _ = e;
                    }
                    Err(e) => return Err(format!("step {step}: unexpected error: {e}")),
                }
                if last && model.reset_pending {
                    return Err("the last full run did not clear the reset".into());
                }
            }
        }
    }
    Ok(())
}

/// Run the seeds on `store`, whose commits check its fault injector.
async fn simulate(store: TestStore, default_seeds: u64) {
    let backend = store.sink.backend();
    let seeds = seeds(default_seeds);
    let started = std::time::Instant::now();
    for &seed in &seeds {
        if let Err(e) = run_seed(seed, &store.sink, &store.faults, backend).await {
            panic!(
                "simulation failed on store {backend} with seed {seed}: {e}\n  replay with NANGO_SYNC_SIM_SEED={seed}"
            );
        }
    }
    eprintln!(
        "{backend}: {} seeds in {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulation_memory() {
    simulate(TestStore::memory(), 300).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulation_sqlite() {
    simulate(TestStore::sqlite().await, 200).await;
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulation_sled() {
    simulate(TestStore::sled().await, 200).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulation_postgres() {
    simulate(TestStore::postgres().await, 150).await;
}
