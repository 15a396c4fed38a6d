//! Measurements of `nango-sync serve` among several instances and at scale, run by
//! `scripts/instances-bench.sh` (not by CI; it prints what it measured):
//!
//! - `spread`: `STREAMS` streams (default 100) of `RECORDS` records (default 2,000) served
//!   by 1, 2 and 3 instances (`INSTANCES`, default `1,2,3`) on one PostgreSQL
//!   (`NANGO_SYNC_TEST_POSTGRES_URL`): the first sync's total records per second; with
//!   several instances, the time until a SIGKILLed instance's streams are leased by the
//!   others (`LEASE_TTL_MS`, default 5,000) and until a change on each of them is
//!   committed.
//! - `scale`: `STREAMS` streams (default 1,000) of `RECORDS` records (default 20) on one
//!   `serve` (SQLite) against a fake announcing `RATE` requests per minute (default
//!   2,000): the start-up sync, then one changed record and one signed webhook per
//!   stream; the time until every change is committed, webhook answer times, answers 429,
//!   and the peak RSS and CPU time of `serve`.
//!
//! `BIN` is the `nango-sync` binary to run (the script builds it in release mode).

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nango_sync::sink::{PostgresStore, SqliteStore};
use nango_sync::webhook::WebhookVerifier;
use nango_sync::{RecordSink, SecretKey, StreamKey};
use nango_sync_testkit::stores::postgres_server_url;
use nango_sync_testkit::{FakeConfig, FakeNango};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const KEY: &str = "instances-bench-signing-key";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Serve {
    child: Child,
    base: String,
}

async fn start(
    bin: &str,
    fake: &FakeNango,
    sink: &str,
    config: &std::path::Path,
    extra: &[String],
) -> Serve {
    let mut child = Command::new(bin)
        .args([
            "--log",
            "warn",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--host",
        ])
        .arg(fake.url())
        .args(["--sink", sink, "--config"])
        .arg(config)
        .args(extra)
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env("BENCH_WEBHOOK_KEY", KEY)
        .env_remove("NANGO_WEBHOOK_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run nango-sync serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("serve exited");
    let base = line
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .expect("listening on ...")
        .to_string();
    Serve { child, base }
}

impl Serve {
    fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status();
        }
    }

    async fn stop(mut self) {
        self.signal("TERM");
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }

    /// Peak RSS (kB) and CPU time (s) so far, from /proc.
    fn usage(&self) -> (u64, f64) {
        let pid = self.child.id().unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        (hwm, ticks as f64 / 100.0)
    }
}

fn webhook_body(stream: &StreamKey) -> String {
    json!({
        "checkpoints": {"from": "2026-11-26T19:00:00.000Z", "to": "2026-11-26T19:05:00.000Z"},
        "connectionId": stream.connection, "from": "nango", "model": stream.model,
        "modifiedAfter": "2026-11-26T19:00:00.000Z", "providerConfigKey": stream.integration,
        "responseResults": {"added": 0, "deleted": 0, "updated": 1}, "success": true,
        "syncName": "bench", "syncType": "INCREMENTAL", "type": "sync"
    })
    .to_string()
}

async fn post_webhook(http: &reqwest::Client, base: &str, stream: &StreamKey) -> Duration {
    let body = webhook_body(stream);
    let started = Instant::now();
    let status = http
        .post(format!("{base}/webhook"))
        .header("content-type", "application/json")
        .header(
            "X-Nango-Hmac-Sha256",
            WebhookVerifier::sign(&SecretKey::new(KEY), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("webhook sent")
        .status();
    assert!(status.is_success(), "webhook answered {status}");
    started.elapsed()
}

fn write_config(dir: &std::path::Path, streams: &[StreamKey], extra: &str) -> std::path::PathBuf {
    let mut text = format!(
        "poll_interval = \"1h\"\n{extra}\n[[signing_keys]]\nkey_env = \"BENCH_WEBHOOK_KEY\"\n"
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

fn streams(n: usize) -> Vec<StreamKey> {
    (0..n)
        .map(|i| StreamKey::new("bench", format!("c{i:04}"), "Contact"))
        .collect()
}

/// Live records of every stream together, from the streams' counters.
async fn total_live<S: RecordSink>(store: &S) -> u64 {
    store
        .streams()
        .await
        .map(|all| all.iter().map(|s| s.live_records).sum())
        .unwrap_or(0)
}

/// Change one record of each stream upstream (a new field); returns its id per stream.
fn change_one(fake: &FakeNango, streams: &[StreamKey], rev: u64) -> Vec<String> {
    streams
        .iter()
        .map(|s| {
            let r = fake
                .records(s)
                .into_iter()
                .find(|r| r.meta.deleted_at.is_none())
                .expect("a record");
            let mut p = r.payload.clone();
            p["bench_rev"] = json!(rev);
            fake.save(s, vec![p]);
            r.id
        })
        .collect()
}

async fn committed<S: RecordSink>(
    store: &S,
    streams: &[StreamKey],
    ids: &[String],
    rev: u64,
) -> usize {
    let mut n = 0;
    for (s, id) in streams.iter().zip(ids) {
        if let Ok(Some(r)) = store.get(s, id).await
            && r.payload.to_value()["bench_rev"] == json!(rev)
        {
            n += 1;
        }
    }
    n
}

async fn spread(bin: &str) {
    let n_streams: usize = env_or("STREAMS", 100);
    let records: usize = env_or("RECORDS", 2000);
    let ttl_ms: u64 = env_or("LEASE_TTL_MS", 5000);
    let counts: Vec<usize> = std::env::var("INSTANCES")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let http = reqwest::Client::new();
    println!("spread: {n_streams} streams x {records} records, lease time {ttl_ms} ms");
    for &n in &counts {
        let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
        let all = streams(n_streams);
        for s in &all {
            fake.generate(s, records, 1000);
        }
        let total = (n_streams * records) as u64;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &all, "rate_limit_per_minute = 1000000\n");
        let base = postgres_server_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}schema=bench_{}", uuid::Uuid::new_v4().simple());
        let store = PostgresStore::connect_url(&url).await.unwrap();
        let started = Instant::now();
        let mut serves = Vec::new();
        for i in 0..n {
            let extra = vec![
                "--instance-id".to_string(),
                format!("bench-{i}"),
                "--lease-ttl".to_string(),
                format!("{ttl_ms}ms"),
            ];
            serves.push(start(bin, &fake, &url, &config, &extra).await);
        }
        while total_live(&store).await < total {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = started.elapsed();
        let cpu: f64 = serves.iter().map(|s| s.usage().1).sum();
        println!(
            "  {n} instance(s): first sync of {total} records in {:.2} s: {:.0} records/s (serve CPU {:.1} s)",
            took.as_secs_f64(),
            total as f64 / took.as_secs_f64(),
            cpu
        );
        if n >= 2 {
            // Settled: every stream leased, the leases spread over every instance.
            loop {
                let leases = store.leases().await.unwrap();
                let holders: BTreeSet<&str> = leases
                    .iter()
                    .filter(|l| l.live)
                    .map(|l| l.holder.as_str())
                    .collect();
                if leases.iter().filter(|l| l.live).count() == n_streams && holders.len() == n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let victim = serves.remove(0);
            let held: Vec<StreamKey> = store
                .leases()
                .await
                .unwrap()
                .into_iter()
                .filter(|l| l.live && l.holder == "bench-0")
                .map(|l| l.stream)
                .collect();
            victim.signal("KILL");
            let killed = Instant::now();
            let ids = change_one(&fake, &held, 1);
            for s in &held {
                post_webhook(&http, &serves[0].base, s).await;
            }
            let mut moved_at = None;
            loop {
                if moved_at.is_none() {
                    let leases = store.leases().await.unwrap();
                    if held.iter().all(|s| {
                        leases
                            .iter()
                            .any(|l| &l.stream == s && l.live && l.holder != "bench-0")
                    }) {
                        moved_at = Some(killed.elapsed());
                    }
                }
                if moved_at.is_some() && committed(&store, &held, &ids, 1).await == held.len() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!(
                "    SIGKILL of one of {n}: its {} streams leased elsewhere after {} ms, a change on each committed after {} ms",
                held.len(),
                moved_at.unwrap().as_millis(),
                killed.elapsed().as_millis()
            );
            let mut v = victim;
            let _ = v.child.wait().await;
        }
        for s in serves {
            s.stop().await;
        }
        fake.shutdown().await;
    }
}

async fn scale(bin: &str) {
    let n_streams: usize = env_or("STREAMS", 1000);
    let records: usize = env_or("RECORDS", 20);
    let rate: u32 = env_or("RATE", 2000);
    let http = reqwest::Client::new();
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let all = streams(n_streams);
    for s in &all {
        fake.generate(s, records, records.max(1));
    }
    fake.set_rate_limit(Some(rate));
    let total = (n_streams * records) as u64;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &all, "");
    let db = dir.path().join("scale.db");
    let url = format!("sqlite://{}", db.display());
    println!(
        "scale: {n_streams} streams x {records} records, the fake announcing {rate} requests per minute"
    );
    let started = Instant::now();
    let serve = start(bin, &fake, &url, &config, &[]).await;
    let store = SqliteStore::open(&db).await.unwrap();
    while total_live(&store).await < total {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let startup = started.elapsed();
    let (_, cpu_startup) = serve.usage();
    println!(
        "  start-up sync: {:.1} s ({} answers 429 so far)",
        startup.as_secs_f64(),
        fake.rate_limited_requests()
    );
    let ids = change_one(&fake, &all, 1);
    let first = Instant::now();
    let mut acks = Vec::with_capacity(all.len());
    for chunk in all.chunks(50) {
        let sent =
            futures::future::join_all(chunk.iter().map(|s| post_webhook(&http, &serve.base, s)))
                .await;
        acks.extend(sent);
    }
    let sent_in = first.elapsed();
    acks.sort();
    let p = |q: f64| {
        acks[((acks.len() as f64 * q) as usize).min(acks.len() - 1)].as_secs_f64() * 1000.0
    };
    loop {
        let done = committed(&store, &all, &ids, 1).await;
        if done == all.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_committed = first.elapsed();
    let (rss_kb, cpu) = serve.usage();
    println!(
        "  {} webhooks sent in {:.2} s, answered in p50 {:.1} ms, p99 {:.1} ms",
        acks.len(),
        sent_in.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
    println!(
        "  every change committed {:.1} s after the first webhook; answers 429 in all: {}; requests: {}",
        all_committed.as_secs_f64(),
        fake.rate_limited_requests(),
        fake.requests()
            .iter()
            .filter(|r| r.path == "/records")
            .count()
    );
    println!(
        "  serve: peak RSS {:.1} MB, CPU {:.1} s (start-up {:.1} s)",
        rss_kb as f64 / 1024.0,
        cpu,
        cpu_startup
    );
    serve.stop().await;
    fake.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    nango_sync::client::install_crypto_provider();
    let bin = std::env::var("BIN").unwrap_or_else(|_| "target/release/nango-sync".into());
    match std::env::args().nth(1).as_deref() {
        Some("spread") => spread(&bin).await,
        Some("scale") => scale(&bin).await,
        _ => {
            eprintln!("usage: instances_bench spread|scale (see scripts/instances-bench.sh)");
            std::process::exit(2);
        }
    }
}
