//! `nango-sync serve` as a real process: webhooks, health, status, discovery, and a
//! SIGTERM in the middle of a run.
#![cfg(feature = "sqlite")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nango_sync::sink::{self, SqliteStore};
use nango_sync::webhook::WebhookVerifier;
use nango_sync::{RecordSink, SecretKey, StreamKey};
use nango_sync_testkit::{FakeConfig, FakeNango, Fault, assert_converged};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");
const KEY: &str = "serve-test-signing-key-current";
const OLD_KEY: &str = "serve-test-signing-key-previous";

struct Serve {
    child: Child,
    base: String,
    stderr: tokio::task::JoinHandle<String>,
}

/// Start `nango-sync serve` with `args` and wait for its "listening on" line.
async fn start(fake: &FakeNango, args: &[&str], env: &[(&str, &str)]) -> Serve {
    let mut cmd = Command::new(BIN);
    cmd.arg("--log")
        .arg("info")
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--host"])
        .arg(fake.url())
        .args(args)
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env_remove("NANGO_WEBHOOK_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn nango-sync serve");
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
        .unwrap_or_else(|| panic!("serve exited: {:?}", child.try_wait()));
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Serve {
        child,
        base: addr,
        stderr,
    }
}

/// An HTTP client (the crate builds reqwest without a default TLS provider).
fn http() -> reqwest::Client {
    nango_sync::client::install_crypto_provider();
    reqwest::Client::new()
}

impl Serve {
    async fn post(&self, body: &str, key: Option<&str>) -> u16 {
        let mut req = http()
            .post(format!("{}/webhook", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            req = req.header(
                "X-Nango-Hmac-Sha256",
                WebhookVerifier::sign(&SecretKey::new(key), body.as_bytes()),
            );
        }
        req.send().await.unwrap().status().as_u16()
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

    /// The health entry of `stream`, once it is idle after at least `runs` runs.
    async fn wait_runs(&self, stream: &StreamKey, runs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let h = self.health().await;
            let entry = h["streams"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| {
                    s["connection"] == stream.connection.as_str()
                        && s["model"] == stream.model.as_str()
                })
                .cloned();
            if let Some(e) = entry
                && e["runs_finished"].as_u64().unwrap() >= runs
                && e["state"] != "running"
                && e["state"] != "pending"
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "{stream} did not finish {runs} runs: {h}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait for a clean exit; returns stderr.
    async fn terminate(mut self) -> String {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("serve did not stop within 60 s of SIGTERM")
            .unwrap();
        let stderr = self.stderr.await.unwrap();
        assert!(exit.success(), "serve exited with {exit}: {stderr}");
        stderr
    }
}

/// `nango-sync export` of a stream: id -> payload.
fn export(sink_url: &str, stream: &StreamKey) -> BTreeMap<String, Value> {
    let out = std::process::Command::new(BIN)
        .args(["export", "--sink", sink_url])
        .args(["--integration", &stream.integration])
        .args(["--connection", &stream.connection])
        .args(["--model", &stream.model])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("_nango_metadata");
            (v["id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn status_text(sink_url: &str) -> String {
    let out = std::process::Command::new(BIN)
        .args(["status", "--sink", sink_url])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn sync_body(stream: &StreamKey) -> String {
    json!({
        "checkpoints": {"from": "2026-11-26T19:00:00.000Z", "to": "2026-11-26T19:05:00.000Z"},
        "connectionId": stream.connection, "from": "nango", "model": stream.model,
        "modifiedAfter": "2026-11-26T19:00:00.000Z", "providerConfigKey": stream.integration,
        "responseResults": {"added": 1, "deleted": 0, "updated": 0}, "success": true,
        "syncName": "tickets", "syncType": "INCREMENTAL", "type": "sync"
    })
    .to_string()
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("previous.key"), format!("{OLD_KEY}\n")).unwrap();
    let path = dir.join("serve.toml");
    std::fs::write(
        &path,
        r#"
poll_interval = "1h"
max_concurrent_runs = 2
rate_limit_per_minute = 10000
page_size = 50

[[signing_keys]]
key_env = "SERVE_TEST_WEBHOOK_KEY"
[[signing_keys]]
key_file = "previous.key"

[[streams]]
integration = "github"
connection = "acme-prod"
models = ["Ticket"]

[[discover]]
integration = "github"
models = ["Ticket"]
"#,
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_syncs_on_webhooks_and_shows_health_status_and_discovery() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink_url = format!("sqlite://{}", dir.path().join("store.db").display());
    let config = write_config(dir.path());
    let ticket = StreamKey::new("github", "acme-prod", "Ticket");
    fake.generate(&ticket, 230, 100);

    let serve = start(
        &fake,
        &["--sink", &sink_url, "--config", config.to_str().unwrap()],
        &[("SERVE_TEST_WEBHOOK_KEY", KEY)],
    )
    .await;
    // It catches up at start, then follows webhooks (signed with either key).
    serve.wait_runs(&ticket, 1).await;
    assert_eq!(export(&sink_url, &ticket), fake.live_payloads(&ticket));
    fake.save(&ticket, vec![json!({"id": "tk-1", "title": "new"})]);
    fake.delete(&ticket, &["rec-0000002"]);
    assert_eq!(serve.post(&sync_body(&ticket), Some(OLD_KEY)).await, 200);
    serve.wait_runs(&ticket, 2).await;
    assert_eq!(export(&sink_url, &ticket), fake.live_payloads(&ticket));

    // Unsigned and forged webhooks are refused and trigger nothing.
    assert_eq!(serve.post(&sync_body(&ticket), None).await, 401);
    assert_eq!(serve.post(&sync_body(&ticket), Some("forged")).await, 401);
    assert_eq!(serve.post(r#"{"type":"brand_new"}"#, Some(KEY)).await, 200);
    let h = serve.health().await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["webhooks"]["unauthorized"], 2);
    assert_eq!(h["streams"][0]["runs_started"], 2);

    // A failure webhook shows up in `status`.
    let failure = json!({
        "connectionId": "acme-prod", "error": {"description": "token expired", "type": "auth_error"},
        "model": "Ticket", "providerConfigKey": "github", "success": false,
        "syncName": "tickets", "type": "sync"
    })
    .to_string();
    assert_eq!(serve.post(&failure, Some(KEY)).await, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = status_text(&sink_url);
        if text.contains("upstream error") {
            assert!(text.contains("token expired"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the failure: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new connection announced by a sync webhook starts syncing by itself.
    let new = StreamKey::new("github", "new-customer", "Ticket");
    fake.generate(&new, 75, 75);
    assert_eq!(serve.post(&sync_body(&new), Some(KEY)).await, 200);
    serve.wait_runs(&new, 1).await;
    assert_eq!(export(&sink_url, &new), fake.live_payloads(&new));

    let stderr = serve.terminate().await;
    assert!(stderr.contains("serving"), "{stderr}");
    for secret in [KEY, OLD_KEY, fake.secret_key().expose()] {
        assert!(!stderr.contains(secret), "a secret leaked into the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_leaves_the_store_consistent_and_the_next_start_resumes() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let sink_url = format!("sqlite://{}", db.display());
    let stream = StreamKey::new("github", "acme-prod", "Ticket");
    fake.generate(&stream, 2000, 100);
    // Slow pages, so the first run is still going when SIGTERM arrives (and seconds of
    // slack for a loaded machine).
    for _ in 0..30 {
        fake.inject(Fault::Slow(Duration::from_millis(300)));
    }
    let args = [
        "--sink",
        &sink_url,
        "--integration",
        "github",
        "--connection",
        "acme-prod",
        "--model",
        "Ticket",
        "--page-size",
        "10",
        "--rate-limit",
        "100000",
        "--poll-interval",
        "0",
        "--webhook-key",
        KEY,
    ];
    let serve = start(&fake, &args, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.request_count() < 8 {
        assert!(Instant::now() < deadline, "the run did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    serve.terminate().await;
    let requests_at_exit = fake.request_count();

    // The store is consistent: a prefix of the stream, with the cursor of its last record.
    {
        let store = SqliteStore::open(&db).await.unwrap();
        let state = store.stream_state(&stream).await.unwrap();
        let local = sink::read_all(&store, &stream, false).await.unwrap();
        let upstream = fake.records(&stream);
        let n = local.len();
        assert!(n > 0 && n < 2000, "{n} records stored");
        assert_eq!(n % 10, 0, "whole pages only");
        let mut prefix: Vec<&str> = upstream[..n].iter().map(|r| r.id.as_str()).collect();
        prefix.sort();
        let stored: Vec<&str> = local.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(stored, prefix);
        assert_eq!(
            state.cursor.as_ref().map(|c| c.as_str()),
            Some(upstream[n - 1].meta.cursor.as_str())
        );
        assert!(
            state.full_read.is_some(),
            "the first full read is still open"
        );
        let status = store.streams().await.unwrap().remove(0);
        let last = status.last_run.unwrap();
        assert!(last.error.unwrap().contains("stopped by shutdown"));
    }

    // The next start resumes from the stored cursor and completes the full read.
    let serve = start(&fake, &args, &[]).await;
    serve.wait_runs(&stream, 1).await;
    let resumed = &fake.requests()[requests_at_exit];
    assert!(
        resumed.raw_query.contains("cursor="),
        "the restart resumed from the cursor: {resumed:?}"
    );
    serve.terminate().await;
    let store = SqliteStore::open(&db).await.unwrap();
    assert_converged(&fake, &store, &stream).await;
    let state = store.stream_state(&stream).await.unwrap();
    assert_eq!(state.full_read, None);
    assert_eq!(state.generation, 1);
}
