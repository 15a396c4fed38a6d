//! Several `nango-sync serve` processes on one PostgreSQL store: webhooks sent to any
//! instance all land, an instance killed with SIGKILL in the middle of its runs has its
//! streams taken over within the lease time, runs of one stream never overlap (from the
//! run history), and the data ends equal to the fake's; an instance paused (SIGSTOP)
//! past its lease while another takes over has its next commit refused when it resumes
//! (SIGCONT), and nothing it held is written. Needs the PostgreSQL of `scripts/pg.sh`.
#![cfg(feature = "postgres")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nango_sync::sink::{HistoryQuery, PostgresStore, read_all};
use nango_sync::webhook::WebhookVerifier;
use nango_sync::{RecordSink, SecretKey, StreamKey};
use nango_sync_testkit::stores::fresh_postgres_url;
use nango_sync_testkit::{FakeConfig, FakeNango, Fault, assert_converged};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");
const KEY: &str = "instances-test-signing-key";
const TTL_MS: u64 = 2000;

struct Serve {
    id: String,
    child: Child,
    base: String,
    stderr: tokio::task::JoinHandle<String>,
}

fn http() -> reqwest::Client {
    nango_sync::client::install_crypto_provider();
    reqwest::Client::new()
}

/// `serve` as instance `id` of the streams in `config`, on `url`.
async fn start(fake: &FakeNango, url: &str, config: &Path, id: &str) -> Serve {
    let mut child = Command::new(BIN)
        .args([
            "--log",
            "info",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--host",
        ])
        .arg(fake.url())
        .args(["--sink", url, "--config"])
        .arg(config)
        .args(["--instance-id", id, "--lease-ttl", &format!("{TTL_MS}ms")])
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env("INSTANCES_TEST_KEY", KEY)
        .env_remove("NANGO_WEBHOOK_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let stderr = tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(line)) = err_lines.next_line().await {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve printed nothing within 60 s")
        .unwrap()
        .unwrap_or_else(|| panic!("serve {id} exited"));
    let base = line
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Serve {
        id: id.to_string(),
        child,
        base,
        stderr,
    }
}

impl Serve {
    async fn webhook(&self, body: &str) -> u16 {
        http()
            .post(format!("{}/webhook", self.base))
            .header("content-type", "application/json")
            .header(
                "X-Nango-Hmac-Sha256",
                WebhookVerifier::sign(&SecretKey::new(KEY), body.as_bytes()),
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn health(&self) -> Value {
        let text = http()
            .get(format!("{}/health", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    /// SIGTERM, wait, and the stderr it wrote.
    async fn stop(mut self) -> String {
        if self.child.id().is_some() {
            self.signal("TERM");
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        self.stderr.await.unwrap_or_default()
    }
}

fn sync_body(stream: &StreamKey, full: bool) -> String {
    json!({
        "checkpoints": {"from": if full { Value::Null } else { json!("2026-11-26T19:00:00.000Z") }, "to": "2026-11-26T19:05:00.000Z"},
        "connectionId": stream.connection, "from": "nango", "model": stream.model,
        "modifiedAfter": "2026-11-26T19:00:00.000Z", "providerConfigKey": stream.integration,
        "responseResults": {"added": 1, "deleted": 0, "updated": 0}, "success": true,
        "syncName": "contacts", "syncType": if full { "INITIAL" } else { "INCREMENTAL" }, "type": "sync"
    })
    .to_string()
}

fn write_config(dir: &Path, streams: &[StreamKey], page_size: u32) -> std::path::PathBuf {
    let mut text = format!(
        "poll_interval = \"1h\"\nmax_concurrent_runs = 4\nrate_limit_per_minute = 1000000\npage_size = {page_size}\n\n[[signing_keys]]\nkey_env = \"INSTANCES_TEST_KEY\"\n"
    );
    for s in streams {
        text.push_str(&format!(
            "\n[[streams]]\nintegration = \"{}\"\nconnection = \"{}\"\nmodels = [\"{}\"]\n",
            s.integration, s.connection, s.model
        ));
    }
    let path = dir.join("serve.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Wait until every stream's live count in the store is the fake's.
async fn wait_counts(
    store: &PostgresStore,
    fake: &FakeNango,
    streams: &[StreamKey],
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    loop {
        let mut behind = Vec::new();
        for s in streams {
            let local = store.count(s).await.unwrap().live;
            let upstream = fake.live_payloads(s).len() as u64;
            if local != upstream {
                behind.push(format!("{s}: {local} of {upstream}"));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not caught up within {within:?}: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No two recorded runs of a stream overlap in time, whichever instance ran them;
/// returns the runs per instance.
async fn assert_runs_never_overlap(
    store: &PostgresStore,
    streams: &[StreamKey],
) -> BTreeMap<String, usize> {
    let mut per_instance = BTreeMap::new();
    for s in streams {
        let mut runs = store
            .run_history(&HistoryQuery::stream(s, 10_000))
            .await
            .unwrap();
        runs.sort_by_key(|r| r.run.started_at);
        for r in &runs {
            assert!(
                !r.run.instance.is_empty(),
                "{s}: a run without its instance"
            );
            *per_instance.entry(r.run.instance.clone()).or_insert(0) += 1;
        }
        for w in runs.windows(2) {
            assert!(
                w[0].run.finished_at <= w[1].run.started_at,
                "{s}: runs overlap: {:?} and {:?}",
                w[0].run,
                w[1].run,
            );
            assert!(
                w[0].run.finished_at <= w[1].run.started_at,
                "{s}: runs overlap: {} by {} ({} to {}) and {} by {} ({} to {})",
                w[0].run.id,
                w[0].run.instance,
                w[0].run.started_at,
                w[0].run.finished_at,
                w[1].run.id,
                w[1].run.instance,
                w[1].run.started_at,
                w[1].run.finished_at,
            );
        }
    }
    per_instance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_streams_and_survive_a_kill() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let streams: Vec<StreamKey> = (0..12)
        .map(|i| StreamKey::new("github", format!("c{i:02}"), "Contact"))
        .collect();
    for s in &streams {
        fake.generate(s, 300, 100);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &streams, 20);
    let url = fresh_postgres_url();
    let store = PostgresStore::connect_url(&url).await.unwrap();

    let mut serves = Vec::new();
    for id in ["i1", "i2", "i3"] {
        serves.push(start(&fake, &url, &config, id).await);
    }
    wait_counts(
        &store,
        &fake,
        &streams,
        Duration::from_secs(90),
        "first sync",
    )
    .await;

    // The streams are spread: every instance holds some once they settled.
    let deadline = Instant::now() + Duration::from_secs(20);
    let holders = loop {
        let leases = store.leases().await.unwrap();
        let holders: BTreeMap<String, usize> =
            leases
                .iter()
                .filter(|l| l.live)
                .fold(BTreeMap::new(), |mut m, l| {
                    *m.entry(l.holder.clone()).or_insert(0) += 1;
                    m
                });
        if holders.len() == 3 && holders.values().sum::<usize>() == streams.len() {
            break holders;
        }
        assert!(
            Instant::now() < deadline,
            "the streams were not spread over the three instances: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("leases per instance: {holders:?}");

    // Changes on every stream, each announced by a webhook to a random instance; slow
    // pages so that runs are in progress when an instance is killed.
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..400 {
        fake.inject(Fault::Slow(Duration::from_millis(40)));
    }
    for s in &streams {
        fake.generate(s, 120, 40);
        let target = &serves[rng.below(3) as usize];
        assert!((200..300).contains(&target.webhook(&sync_body(s, false)).await));
    }
    // Kill an instance that is running one of its streams (or, failing that, i2).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut victim = 1;
    for (i, s) in serves.iter().enumerate() {
        let h = s.health().await;
        let running = h["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|st| st["state"] == "running" && st["runs_here"] == true);
        if running {
            victim = i;
            break;
        }
    }
    let held_by_victim: BTreeSet<StreamKey> = store
        .leases()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.live && l.holder == serves[victim].id)
        .map(|l| l.stream)
        .collect();
    assert!(!held_by_victim.is_empty(), "the victim held no stream");
    let killed = serves.remove(victim);
    let killed_id = killed.id.clone();
    killed.signal("KILL");
    let killed_at = Instant::now();
    let _ = killed.stop().await;

    // Its streams are taken over within the lease time (plus one heartbeat).
    let takeover = loop {
        let leases = store.leases().await.unwrap();
        let moved = held_by_victim.iter().all(|s| {
            leases
                .iter()
                .any(|l| &l.stream == s && l.live && l.holder != killed_id)
        });
        if moved {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_millis(TTL_MS * 3),
            "the streams of {killed_id} were not taken over: {leases:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "takeover of {} streams of {killed_id}: {} ms (lease time {TTL_MS} ms)",
        held_by_victim.len(),
        takeover.as_millis()
    );
    // The lease runs out at most the lease time after the kill, and a survivor's next
    // heartbeat (every quarter of it) takes it; the margin is for a loaded machine.
    assert!(
        takeover <= Duration::from_millis(TTL_MS * 2),
        "takeover took {takeover:?}"
    );

    // More changes after the kill, announced to the survivors at random.
    for s in &streams {
        fake.generate(s, 30, 30);
        let ids: Vec<String> = fake
            .records(s)
            .iter()
            .take(3)
            .map(|r| r.id.clone())
            .collect();
        fake.delete(s, &ids.iter().map(String::as_str).collect::<Vec<_>>());
        let target = &serves[rng.below(2) as usize];
        assert!((200..300).contains(&target.webhook(&sync_body(s, false)).await));
    }
    wait_counts(
        &store,
        &fake,
        &streams,
        Duration::from_secs(90),
        "after the kill",
    )
    .await;
    // Let the runs in progress end, then compare everything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &streams {
        assert_converged(&fake, &store, s).await;
    }

    let per_instance = assert_runs_never_overlap(&store, &streams).await;
    eprintln!("runs per instance: {per_instance:?}");
    assert!(per_instance.len() >= 2, "{per_instance:?}");
    let mut passed_on = 0;
    let mut received = 0;
    for s in &serves {
        let h = s.health().await;
        passed_on += h["instance"]["triggers_passed_on"].as_u64().unwrap();
        received += h["instance"]["triggers_received"].as_u64().unwrap();
    }
    eprintln!("triggers passed on: {passed_on}, received by holders: {received}");
    assert!(
        passed_on > 0 && received > 0,
        "no trigger went through another instance"
    );
    for s in serves {
        let id = s.id.clone();
        let err = s.stop().await;
        assert!(
            err.contains("leases released"),
            "{id} did not leave cleanly: {err}"
        );
    }
    // Every lease was released by the instances that stopped.
    assert!(store.leases().await.unwrap().iter().all(|l| !l.live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_is_fenced_off_when_it_resumes() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let stream = StreamKey::new("github", "paused", "Contact");
    fake.generate(&stream, 200, 100);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), std::slice::from_ref(&stream), 10);
    let url = fresh_postgres_url();
    let store = PostgresStore::connect_url(&url).await.unwrap();

    let a = start(&fake, &url, &config, "a").await;
    wait_counts(
        &store,
        &fake,
        std::slice::from_ref(&stream),
        Duration::from_secs(60),
        "first sync",
    )
    .await;
    let b = start(&fake, &url, &config, "b").await;
    // Once both run, the lease settles on the instance the stream is assigned to.
    let live = ["a".to_string(), "b".to_string()];
    let assigned = nango_sync::engine::cluster::assigned(&live, &stream)
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_millis(TTL_MS * 4);
    let holder = loop {
        let l = store.leases().await.unwrap()[0].clone();
        if l.live && l.holder == assigned {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the lease did not settle on {assigned}: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (paused, other) = if holder.holder == "a" { (a, b) } else { (b, a) };

    // A long run on the holder: a full re-read of slow pages.
    fake.generate(&stream, 400, 100);
    for _ in 0..200 {
        fake.inject(Fault::Slow(Duration::from_millis(60)));
    }
    assert!((200..300).contains(&paused.webhook(&sync_body(&stream, true)).await));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = paused.health().await;
        if h["streams"][0]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not start: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    paused.signal("STOP");
    let paused_at = Instant::now();

    // The other instance takes the stream over with the next token and catches up.
    let deadline = Instant::now() + Duration::from_millis(TTL_MS * 4);
    let taken = loop {
        let l = store.leases().await.unwrap()[0].clone();
        if l.live && l.holder == other.id {
            break l;
        }
        assert!(Instant::now() < deadline, "no takeover: {l:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "taken over after {} ms (lease time {TTL_MS} ms)",
        paused_at.elapsed().as_millis()
    );
    assert_eq!(taken.token, holder.token + 1);
    wait_counts(
        &store,
        &fake,
        std::slice::from_ref(&stream),
        Duration::from_secs(60),
        "after the takeover",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = other.health().await;
        if h["streams"][0]["state"] == "idle" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new holder's run did not end: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = read_all(&store, &stream, true).await.unwrap();
    let state = store.stream_state(&stream).await.unwrap();
    let seq = store.last_seq().await.unwrap();

    // Resumed: its run goes on to its next commit, which is refused.
    paused.signal("CONT");
    tokio::time::sleep(Duration::from_millis(TTL_MS * 2)).await;
    assert_eq!(
        read_all(&store, &stream, true).await.unwrap(),
        before,
        "the fenced instance wrote"
    );
    assert_eq!(store.stream_state(&stream).await.unwrap(), state);
    assert_eq!(store.last_seq().await.unwrap(), seq);
    assert_converged(&fake, &store, &stream).await;
    let runs = store
        .run_history(&HistoryQuery::stream(&stream, 1000))
        .await
        .unwrap();
    assert_runs_never_overlap(&store, std::slice::from_ref(&stream)).await;
    assert!(runs.iter().any(|r| r.run.instance == other.id), "{runs:?}");

    let paused_id = paused.id.clone();
    let err = paused.stop().await;
    assert!(
        err.contains("no longer holds the stream's lease") && err.contains("was refused"),
        "{paused_id} did not report its lost lease: {err}"
    );
    let _ = other.stop().await;
}

/// Streams discovered by webhooks that all reach one instance are shared: the other
/// instance registers them (from the trigger passed on, or from the store), takes the
/// leases assigned to it, and every stream converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_streams_are_shared() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let streams: Vec<StreamKey> = (0..8)
        .map(|i| StreamKey::new("github", format!("new{i}"), "Contact"))
        .collect();
    for s in &streams {
        fake.generate(s, 30, 30);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        "poll_interval = \"1h\"\nrate_limit_per_minute = 1000000\n\n[[signing_keys]]\nkey_env = \"INSTANCES_TEST_KEY\"\n\n[[discover]]\nintegration = \"github\"\nmodels = [\"Contact\"]\n",
    )
    .unwrap();
    let url = fresh_postgres_url();
    let store = PostgresStore::connect_url(&url).await.unwrap();
    let a = start(&fake, &url, &config, "a").await;
    let b = start(&fake, &url, &config, "b").await;
    for s in &streams {
        assert!((200..300).contains(&a.webhook(&sync_body(s, false)).await));
    }
    wait_counts(
        &store,
        &fake,
        &streams,
        Duration::from_secs(60),
        "discovered streams",
    )
    .await;
    for s in &streams {
        assert_converged(&fake, &store, s).await;
    }
    let holders: BTreeSet<String> = store
        .leases()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.live)
        .map(|l| l.holder)
        .collect();
    assert_eq!(
        holders.len(),
        2,
        "the discovered streams were not shared: {holders:?}"
    );
    let registered_on_b = b.health().await["streams"].as_array().unwrap().len();
    assert_eq!(registered_on_b, streams.len());
    assert_runs_never_overlap(&store, &streams).await;
    let _ = a.stop().await;
    let _ = b.stop().await;
}
