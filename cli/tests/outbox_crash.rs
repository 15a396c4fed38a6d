//! The outbox survives crashes: `nango-sync serve` delivering a hundred queued actions is
//! killed with SIGKILL at random moments and restarted. At the end every item is done or
//! failed as its action says, every action ran at least once according to the fake's
//! execution log, none is lost, and the re-deliveries (an action run again because its
//! worker died with the item running) are counted and reported.
//!
//! Kills per store: `NANGO_SYNC_OUTBOX_KILLS` (8 by default); the seed:
//! `NANGO_SYNC_CRASH_SEED`. `scripts/crash-campaign.sh` runs hundreds (a long campaign
//! enqueues a hundred more items whenever fewer than ten are left, so every kill still
//! lands in deliveries).
#![cfg(all(feature = "sqlite", unix))]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nango_sync::sink::outbox::{NewOutboxItem, OutboxQuery, OutboxState};
use nango_sync::{RawJson, sink};
use nango_sync_testkit::fake::{ActionFailure, ActionScript};
use nango_sync_testkit::{FakeConfig, FakeNango};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");
const ITEMS: u64 = 100;

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn seed() -> u64 {
    std::env::var("NANGO_SYNC_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0b0c_5eed)
}

/// xorshift64*, so a failing run can be replayed with its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn serve(fake: &FakeNango, url: &str) -> Child {
    Command::new(BIN)
        .args(["serve", "--sink", url, "--listen", "127.0.0.1:0"])
        .args(["--poll-interval", "0", "--outbox-concurrency", "4"])
        .args(["--outbox-lease", "1s", "--outbox-backoff", "20ms"])
        .env("NANGO_HOST", fake.url())
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env_remove("NANGO_SYNC_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve")
}

/// The action of item `n`: every tenth is refused by the provider (a permanent error),
/// every seventh fails with a network error first (retried), the others succeed.
fn action_of(n: u64) -> &'static str {
    if n % 10 == 9 {
        "refused"
    } else if n % 7 == 3 {
        "flaky"
    } else {
        "deliver"
    }
}

/// Executions per item number (from the input), finished or not.
fn executions(fake: &FakeNango) -> BTreeMap<u64, usize> {
    let mut runs = BTreeMap::new();
    for x in fake.action_executions() {
        if let Some(n) = x.input["n"].as_u64() {
            *runs.entry(n).or_insert(0) += 1;
        }
    }
    runs
}

/// Enqueue [`ITEMS`] more items, numbered on from `enqueued`.
async fn enqueue(url: &str, enqueued: &mut u64) {
    let store = sink::open(url).await.unwrap();
    for n in *enqueued..*enqueued + ITEMS {
        let mut item = NewOutboxItem::new("github", "acme", action_of(n));
        item.input = Some(RawJson::from_trusted(json!({ "n": n }).to_string()));
        item.max_attempts = 1000;
        store.outbox_enqueue(item).await.unwrap();
    }
    *enqueued += ITEMS;
}

async fn crash_outbox(url: &str) {
    let seed = seed();
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    fake.add_connection("github", "acme");
    let slow = Duration::from_millis(30);
    fake.script_action("deliver", ActionScript::echo().slow(slow));
    fake.script_action(
        "flaky",
        ActionScript::echo()
            .slow(slow)
            .failing_first(5, ActionFailure::NetworkError),
    );
    fake.script_action(
        "refused",
        ActionScript::failing(ActionFailure::ProviderError {
            status: 422,
            body: json!({"message": "refused"}),
        })
        .slow(slow),
    );
    let mut enqueued = 0;
    enqueue(url, &mut enqueued).await;

    let mut rng = Rng(seed | 1);
    let kills = env_number("NANGO_SYNC_OUTBOX_KILLS", 8);
    let mut mid_action = 0;
    for kill in 0..kills {
        // Kill by progress: after a random number of further action runs started (0:
        // while serve starts), then a random few milliseconds later.
        let started = fake.action_executions().len();
        let wait_for = started + rng.below(6) as usize;
        let mut child = serve(&fake, url);
        let deadline = Instant::now() + Duration::from_secs(30);
        while fake.action_executions().len() < wait_for
            && child.try_wait().unwrap().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        if fake.action_executions().iter().any(|x| x.outcome.is_none()) {
            mid_action += 1;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "seed {seed}, kill {kill}: serve exited on its own"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // The store opens after every kill, and no item is lost.
        let store = sink::open(url)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}, kill {kill}: the store does not open: {e}"));
        let counts = store.outbox_counts().await.unwrap();
        assert_eq!(
            counts.pending + counts.running + counts.done + counts.failed,
            enqueued,
            "seed {seed}, kill {kill}: {counts:?}"
        );
        drop(store);
        // A long campaign never runs out of work: a hundred more when few are left.
        if counts.pending + counts.running < 10 {
            enqueue(url, &mut enqueued).await;
        }
    }

    // Let it finish: serve until nothing is pending or running, then stop it cleanly.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut child = serve(&fake, url);
        std::thread::sleep(Duration::from_millis(1500));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "seed {seed}: serve stopped with {status:?}"
        );
        let store = sink::open(url).await.unwrap();
        let counts = store.outbox_counts().await.unwrap();
        if counts.pending == 0 && counts.running == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the outbox never drained: {counts:?}"
        );
    }

    let store = sink::open(url).await.unwrap();
    let items = store
        .outbox_list(&OutboxQuery::first(1_000_000))
        .await
        .unwrap();
    assert_eq!(items.len() as u64, enqueued, "seed {seed}: items lost");
    let runs = executions(&fake);
    let mut redelivered_items = 0;
    let mut attempts_total = 0;
    for item in &items {
        let n = item.input.as_ref().unwrap().to_value()["n"]
            .as_u64()
            .unwrap();
        let ran = runs.get(&n).copied().unwrap_or(0);
        assert!(ran >= 1, "seed {seed}: item {n} never ran");
        attempts_total += u64::from(item.attempts);
        match action_of(n) {
            "refused" => {
                assert_eq!(item.state, OutboxState::Failed, "seed {seed}: {item:?}");
                let e = item.error.as_ref().unwrap();
                assert_eq!(
                    (e.status, e.code.as_str()),
                    (Some(424), "script_http_error")
                );
            }
            _ => {
                assert_eq!(item.state, OutboxState::Done, "seed {seed}: {item:?}");
                assert_eq!(
                    item.output.as_ref().unwrap().to_value(),
                    json!({ "n": n }),
                    "seed {seed}"
                );
            }
        }
        if ran > 1 && action_of(n) == "deliver" {
            redelivered_items += 1;
        }
        assert!(
            u64::from(item.attempts) >= ran as u64,
            "seed {seed}: item {n} ran {ran} times in {} attempts",
            item.attempts
        );
    }
    let total_runs: usize = runs.values().sum();
    let first_runs = runs.len();
    let reruns_after_kill: usize = runs
        .iter()
        .filter(|(n, _)| action_of(**n) == "deliver")
        .map(|(_, r)| r - 1)
        .sum();
    eprintln!(
        "{}: {kills} kills (seed {seed}), {mid_action} with an action running; {enqueued} items, {} done, {} failed; {total_runs} action runs ({first_runs} first runs, {} runs again), {attempts_total} attempts; re-delivered after a kill: {reruns_after_kill} runs of {redelivered_items} items that always succeed",
        nango_sync::redact_url(url),
        items
            .iter()
            .filter(|i| i.state == OutboxState::Done)
            .count(),
        items
            .iter()
            .filter(|i| i.state == OutboxState::Failed)
            .count(),
        total_runs - first_runs,
    );
    assert!(
        kills == 0 || mid_action > 0,
        "seed {seed}: no kill hit a running action"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_outbox_survives_sigkill_of_serve() {
    let dir = tempfile::tempdir().unwrap();
    crash_outbox(&format!("sqlite://{}", dir.path().join("s.db").display())).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg(feature = "sled")]
async fn sled_outbox_survives_sigkill_of_serve() {
    let dir = tempfile::tempdir().unwrap();
    crash_outbox(&format!("sled://{}", dir.path().join("s").display())).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg(feature = "postgres")]
async fn postgres_outbox_survives_sigkill_of_serve() {
    crash_outbox(&nango_sync_testkit::stores::fresh_postgres_url()).await;
}
