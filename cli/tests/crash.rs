//! Crash tests: the real `nango-sync sync` process, killed with SIGKILL at random
//! moments while upstream keeps changing, restarted until it finishes. After every kill
//! the store opens and its cursor never points past a record it does not hold; at the end
//! the store's live records equal the fake's.
//!
//! For sled, another test kills the process while sled writes a snapshot (it makes sled
//! write one every few writes, `sled://DIR?snapshot_after_ops=N`). Kill counts:
//! `NANGO_SYNC_CRASH_KILLS` (random moments, 30 per store by default) and
//! `NANGO_SYNC_SNAPSHOT_KILLS` (during snapshots, 8 by default, into a stream of
//! `NANGO_SYNC_SNAPSHOT_RECORDS` records, 6,000 by default, of
//! `NANGO_SYNC_SNAPSHOT_RECORD_BYTES` bytes, 700 by default); `scripts/crash-campaign.sh`
//! runs hundreds of each. A small store has small snapshots, which a kill rarely cuts
//! short: most of its leftovers are complete (sled alone would open them); at 50,000
//! records most are partial, as in the field.
#![cfg(all(feature = "sqlite", unix))]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nango_sync::StreamKey;
use nango_sync::sink::{self, DynRecordSink};
#[cfg(feature = "postgres")]
use nango_sync_testkit::stores::fresh_postgres_url;
use nango_sync_testkit::{FakeConfig, FakeNango, Fault, assert_converged, assert_cursor_covered};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");

/// Kills per store in the normal test run; `NANGO_SYNC_CRASH_KILLS` asks for more.
fn kills() -> usize {
    env_number("NANGO_SYNC_CRASH_KILLS", 30)
}

/// A small seeded generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Names the seed and the kill when a check panics (so a failure can be replayed).
struct Replay {
    seed: u64,
    kill: Option<usize>,
}

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            match self.kill {
                Some(kill) => eprintln!(
                    "failed after kill {kill}; replay with NANGO_SYNC_CRASH_SEED={}",
                    self.seed
                ),
                None => eprintln!(
                    "failed at the end; replay with NANGO_SYNC_CRASH_SEED={}",
                    self.seed
                ),
            }
        }
    }
}

/// Atomic progress: every record of the fake at or before the stored cursor is stored
/// with its current version.
async fn check_cursor_invariant(
    store: &dyn DynRecordSink,
    fake: &FakeNango,
    stream: &StreamKey,
    kill: usize,
    seed: u64,
) {
    let _replay = Replay {
        seed,
        kill: Some(kill),
    };
    assert_cursor_covered(fake, store, stream).await;
}

/// Convergence: the store's live records equal the fake's.
async fn check_converged(
    store: &dyn DynRecordSink,
    fake: &FakeNango,
    stream: &StreamKey,
    seed: u64,
) {
    let _replay = Replay { seed, kill: None };
    assert_converged(fake, store, stream).await;
}

/// Open the store after a kill (it must open).
async fn reopen(url: &str, kill: usize, seed: u64) -> nango_sync::SharedSink {
    sink::open(url)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}, kill {kill}: store does not open: {e}"))
}

/// Save `n` randomly picked records of `stream` again with `tag: kill` added (records
/// whose payload was reduced to `{id}` are left out).
fn resave_random(
    fake: &FakeNango,
    stream: &StreamKey,
    rng: &mut Rng,
    n: usize,
    tag: &str,
    kill: usize,
) {
    let recs = fake.records(stream);
    let picked: Vec<serde_json::Value> = (0..n)
        .map(|_| {
            let mut p = recs[rng.below(recs.len() as u64) as usize].payload.clone();
            p[tag] = json!(kill);
            p
        })
        .filter(|p| p.as_object().is_some_and(|o| o.len() > 2))
        .collect();
    fake.save(stream, picked);
}

/// Delete `n` randomly picked records of `stream` upstream.
fn delete_random(fake: &FakeNango, stream: &StreamKey, rng: &mut Rng, n: usize) {
    let recs = fake.records(stream);
    let ids: Vec<String> = (0..n)
        .map(|_| recs[rng.below(recs.len() as u64) as usize].id.clone())
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    fake.delete(stream, &ids);
}

/// How many records pages the fake has answered so far.
fn records_requests(fake: &FakeNango) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.path.ends_with("/records") || r.path.ends_with("/records/"))
        .count()
}

async fn crash_until_done(url: &str, seed: u64) {
    let fake = FakeNango::start(FakeConfig {
        seed,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let stream = StreamKey::new("demo-crm", "acme", "Contact");
    fake.generate(&stream, 3000, 500);
    let mut rng = Rng(seed | 1);
    let sync = |full: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "sync",
            "--sink",
            url,
            "--integration",
            "demo-crm",
            "--connection",
            "acme",
            "--model",
            "Contact",
        ])
        .args(["--page-size", "100"])
        .env("NANGO_HOST", fake.url())
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if full {
            cmd.arg("--full");
        }
        cmd
    };
    let total = kills();
    let mut killed_mid_run = 0;
    for kill in 0..total {
        // The kill follows the run's progress, not the clock: every records request of
        // this run is answered slowly, the test waits until the run has been served a
        // random number of pages (0: kill while it starts), then kills it a random few
        // milliseconds later: while it commits that page, or while it waits for the
        // next one. A fast machine moves the moment, not the odds of hitting a run.
        let full = rng.below(4) == 0;
        let served_before = records_requests(&fake);
        let pages = if full { rng.below(20) } else { rng.below(2) };
        for _ in 0..(pages + 8) {
            fake.inject(Fault::Slow(Duration::from_millis(25)));
        }
        let mut child = sync(full).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while records_requests(&fake) < served_before + pages as usize
            && child.try_wait().unwrap().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rng.below(20)));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !finished {
            killed_mid_run += 1;
        } else if !status.success() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("seed {seed}, kill {kill}: sync failed on its own: {err}");
        }
        check_cursor_invariant(&*reopen(url, kill, seed).await, &fake, &stream, kill, seed).await;
        // Upstream moves on between restarts.
        match rng.below(4) {
            0 => resave_random(&fake, &stream, &mut rng, 20, "crash_test", kill),
            1 => delete_random(&fake, &stream, &mut rng, 10),
            _ => {}
        }
        // Always new work, so every run has pages to read.
        fake.generate(&stream, 200, 100);
        fake.clear_faults();
    }
    assert!(
        killed_mid_run * 2 >= total,
        "seed {seed}: only {killed_mid_run} of {total} kills hit a running sync"
    );
    eprintln!(
        "{url}: {total} kills at random moments (seed {seed}), {killed_mid_run} of them during a sync; the store opened and kept the cursor invariant after every kill"
    );
    // Let it finish.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = sync(false).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: sync never finished: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = sink::open(url).await.unwrap();
    check_converged(&*store, &fake, &stream, seed).await;
}

fn seed() -> u64 {
    std::env::var("NANGO_SYNC_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_c0de)
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_survives_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    crash_until_done(
        &format!("sqlite://{}", dir.path().join("crash.db").display()),
        seed(),
    )
    .await;
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread")]
async fn sled_survives_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.sled");
    crash_until_done(&format!("sled://{}", path.display()), seed() + 1).await;
    // The records, the stream rows and the change feed's index agree after every kill.
    let store = nango_sync::sink::SledStore::open(&path).await.unwrap();
    let check = store.check().await.unwrap();
    assert!(check.is_consistent(), "{:?}", check.problems);
}

/// Kills during sled snapshots in the normal test run; `NANGO_SYNC_SNAPSHOT_KILLS` asks
/// for more (`scripts/crash-campaign.sh` asks for hundreds).
#[cfg(feature = "sled")]
fn snapshot_kills() -> usize {
    env_number("NANGO_SYNC_SNAPSHOT_KILLS", 8)
}

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The names of the snapshots sled is writing in `dir` (`snap.<LSN>.generating`).
#[cfg(feature = "sled")]
fn snapshots_in_progress(dir: &std::path::Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("snap.") && n.ends_with(".generating"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether sled alone (without this store's recovery) opens the directory: tried on a
/// copy, so the directory itself is left as the kill left it.
#[cfg(feature = "sled")]
fn sled_alone_opens(dir: &std::path::Path) -> bool {
    let copy = tempfile::tempdir().unwrap();
    nango_sync_testkit::stores::copy_dir(dir, copy.path());
    ::sled::open(copy.path()).is_ok()
}

/// What a campaign of kills during snapshots saw.
#[cfg(feature = "sled")]
#[derive(Debug, Default)]
struct SnapshotCampaign {
    /// Kills sent.
    kills: usize,
    /// Kills sent while a snapshot was being written (its `.generating` file seen).
    during_snapshot: usize,
    /// Kills after which the `.generating` file was still there: the process died
    /// inside sled's snapshot write, before the rename.
    left_partial_snapshot: usize,
    /// Of those, the directories sled alone refuses to open (the leftover is partial):
    /// the failure this store recovers from.
    sled_alone_refuses: usize,
    /// Opens that recovered (removed a leftover) and found the store consistent.
    recovered: usize,
    /// Runs that ended before their kill.
    finished_first: usize,
}

/// `nango-sync sync` into sled with a snapshot every few writes, killed (SIGKILL) while
/// sled writes a snapshot, many times; upstream changes between the runs. After every
/// kill the store opens (recovering from the interrupted snapshot), passes its check and
/// keeps the cursor invariant; at the end it equals the fake.
#[cfg(feature = "sled")]
async fn kill_during_snapshots(dir: &std::path::Path, seed: u64) -> SnapshotCampaign {
    use nango_sync::sink::SledStore;
    use nango_sync_testkit::GenerateSpec;

    let records = env_number("NANGO_SYNC_SNAPSHOT_RECORDS", 6_000);
    let fake = FakeNango::start(FakeConfig {
        seed,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let stream = StreamKey::new("demo-crm", "acme", "Contact");
    let began = Instant::now();
    let record_bytes = env_number("NANGO_SYNC_SNAPSHOT_RECORD_BYTES", 700) as u32;
    fake.generate_with(
        &stream,
        GenerateSpec {
            record_bytes,
            ..GenerateSpec::new(records, 1000)
        },
    );
    let url = format!("sled://{}?snapshot_after_ops=3", dir.display());
    let sync = |full: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["sync", "--sink", &url])
            .args(["--integration", "demo-crm", "--connection", "acme"])
            .args(["--model", "Contact", "--page-size", "100"])
            .env("NANGO_HOST", fake.url())
            .env("NANGO_SECRET_KEY", fake.secret_key().expose())
            .env_remove("NANGO_SYNC_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if full {
            cmd.arg("--full");
        }
        cmd
    };
    // A first sync to the end, so that the store (and each snapshot) has its full size.
    let out = sync(false).output().unwrap();
    assert!(
        out.status.success(),
        "seed {seed}: the first sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rng = Rng(seed | 1);
    let mut seen = SnapshotCampaign::default();
    let total = snapshot_kills();
    let started = Instant::now();
    while seen.kills < total {
        let mut child = sync(rng.below(5) == 0).spawn().unwrap();
        // Kill at the 1st or 2nd snapshot of the run (the first is written while the
        // store opens, the next ones every 3 writes), a few microseconds after its file
        // appears, so that the kill lands at different points of the write.
        let target = 1 + rng.below(2) as usize;
        let delay = if rng.below(4) == 0 {
            Duration::from_micros(rng.below(200))
        } else {
            Duration::ZERO
        };
        let mut snapshots = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut killed_in_snapshot = false;
        let finished = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            snapshots.extend(snapshots_in_progress(dir));
            if snapshots.len() >= target {
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                killed_in_snapshot = !snapshots_in_progress(dir).is_empty();
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: no snapshot seen in 30 s"
            );
            std::thread::sleep(Duration::from_micros(20));
        };
        let _ = child.kill();
        let status = child.wait().unwrap();
        if finished {
            seen.finished_first += 1;
            if !status.success() {
                use std::io::Read;
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("seed {seed}: sync failed on its own: {err}");
            }
        } else {
            seen.kills += 1;
            seen.during_snapshot += usize::from(killed_in_snapshot);
            if !snapshots_in_progress(dir).is_empty() {
                seen.left_partial_snapshot += 1;
                if !sled_alone_opens(dir) {
                    seen.sled_alone_refuses += 1;
                }
            }
        }
        {
            let store = SledStore::open(dir).await.unwrap_or_else(|e| {
                panic!(
                    "seed {seed}, kill {}: the store does not open: {e}",
                    seen.kills
                )
            });
            if store.recovery().is_some() {
                seen.recovered += 1;
            }
            let check = store.check().await.unwrap();
            assert!(
                check.is_consistent(),
                "seed {seed}, kill {}: {:?}",
                seen.kills,
                check.problems
            );
            check_cursor_invariant(&store, &fake, &stream, seen.kills, seed).await;
            // Upstream moves on between restarts.
            match rng.below(3) {
                0 => resave_random(&fake, &stream, &mut rng, 50, "snapshot_test", seen.kills),
                1 => delete_random(&fake, &stream, &mut rng, 20),
                _ => {}
            }
        }
        // New work: enough pages for a second snapshot in the next run.
        fake.generate(&stream, 500, 250);
    }
    // Let it finish.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = sync(false).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: sync never finished: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = sink::open(&url).await.unwrap();
    check_converged(&*store, &fake, &stream, seed).await;
    eprintln!(
        "sled snapshot campaign, seed {seed}: {} kills in {:.0} s ({:.0} s with the first and last syncs), {} sent while a snapshot was being written, {} left an interrupted snapshot, {} of them a directory sled alone refuses to open, {} opens recovered from one; {} runs finished before their kill; the store opened and was consistent after every kill and equals the fake at the end",
        seen.kills,
        started.elapsed().as_secs_f64(),
        began.elapsed().as_secs_f64(),
        seen.during_snapshot,
        seen.left_partial_snapshot,
        seen.sled_alone_refuses,
        seen.recovered,
        seen.finished_first
    );
    seen
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread")]
async fn sled_survives_sigkill_during_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let seen = kill_during_snapshots(&dir.path().join("snap.sled"), seed() + 3).await;
    assert!(
        seen.left_partial_snapshot * 4 >= seen.kills,
        "only {} of {} kills landed inside a snapshot write: {seen:?}",
        seen.left_partial_snapshot,
        seen.kills
    );
    assert_eq!(
        seen.recovered, seen.left_partial_snapshot,
        "every interrupted snapshot is recovered from: {seen:?}"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_survives_sigkill_at_random_moments() {
    crash_until_done(&fresh_postgres_url(), seed() + 2).await;
}
