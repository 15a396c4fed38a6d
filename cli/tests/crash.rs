//! Crash tests: the real `nango-sync sync` process, killed with SIGKILL at random
//! moments while upstream keeps changing, restarted until it finishes. After every kill
//! the store opens and its cursor never points past a record it does not hold; at the end
//! the store's live records equal the fake's.
#![cfg(all(feature = "sqlite", unix))]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nango_sync::StreamKey;
use nango_sync::sink;
#[cfg(feature = "postgres")]
use nango_sync_testkit::stores::fresh_postgres_url;
use nango_sync_testkit::{FakeConfig, FakeNango, assert_converged, assert_cursor_covered};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");

/// Kills per store in the normal test run; `NANGO_SYNC_CRASH_KILLS` asks for more.
fn kills() -> usize {
    std::env::var("NANGO_SYNC_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
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

/// Atomic progress, checked on the store as the killed process left it.
async fn check_cursor_invariant(
    url: &str,
    fake: &FakeNango,
    stream: &StreamKey,
    kill: usize,
    seed: u64,
) {
    let store = sink::open(url)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}, kill {kill}: store does not open: {e}"));
    eprintln!("seed {seed}, kill {kill}: checking the cursor");
    assert_cursor_covered(fake, &*store, stream).await;
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
        let mut child = sync(rng.below(4) == 0).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
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
        check_cursor_invariant(url, &fake, &stream, kill, seed).await;
        // Upstream moves on between restarts.
        match rng.below(4) {
            0 => {
                let recs = fake.records(&stream);
                let picked: Vec<serde_json::Value> = (0..20)
                    .map(|_| {
                        let mut p = recs[rng.below(recs.len() as u64) as usize].payload.clone();
                        p["crash_test"] = json!(kill);
                        p
                    })
                    .filter(|p| p.as_object().is_some_and(|o| o.len() > 2))
                    .collect();
                fake.save(&stream, picked);
            }
            1 => {
                let recs = fake.records(&stream);
                let ids: Vec<String> = (0..10)
                    .map(|_| recs[rng.below(recs.len() as u64) as usize].id.clone())
                    .collect();
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                fake.delete(&stream, &ids);
            }
            _ => {}
        }
        // Always new work, so most kills land in a running sync.
        fake.generate(&stream, 200, 100);
    }
    assert!(
        killed_mid_run * 2 >= total,
        "seed {seed}: only {killed_mid_run} of {total} kills hit a running sync"
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
    eprintln!("seed {seed}: checking convergence");
    assert_converged(&fake, &*store, &stream).await;
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
    crash_until_done(
        &format!("sled://{}", dir.path().join("crash.sled").display()),
        seed() + 1,
    )
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_survives_sigkill_at_random_moments() {
    crash_until_done(&fresh_postgres_url(), seed() + 2).await;
}
