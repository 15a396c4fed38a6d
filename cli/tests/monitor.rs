//! Monitoring through the real binary: `history` and `status` as the command-line
//! contract says (JSON and tables, warnings with codes), `sync --reconcile`, `serve`'s
//! `GET /metrics` moved by a webhook-triggered run, logs without colours when redirected
//! and as JSON lines with the run's fields, and `sync` stopped by SIGINT.
#![cfg(feature = "sqlite")]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nango_sync::StreamKey;
use nango_sync::sink::{self, SqliteStore};
use nango_sync::webhook::WebhookVerifier;
use nango_sync::{RecordSink, SecretKey};
use nango_sync_testkit::{FakeConfig, FakeNango, Fault, assert_converged};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");
const KEY: &str = "monitor-test-signing-key";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `nango-sync ARGS` against `fake`, with its secret key; logs off unless asked.
fn cli(fake: &FakeNango, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NANGO_HOST", fake.url())
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env_remove("NANGO_SYNC_LOG")
        .env_remove("NANGO_SYNC_LOG_FORMAT")
        .output()
        .expect("run nango-sync")
}

fn sync_args<'a>(sink: &'a str, stream: &'a StreamKey) -> Vec<&'a str> {
    vec![
        "sync",
        "--sink",
        sink,
        "--integration",
        &stream.integration,
        "--connection",
        &stream.connection,
        "--model",
        &stream.model,
        "--page-size",
        "100",
    ]
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn codes(status_entry: &Value) -> Vec<String> {
    status_entry["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_status_follow_the_contract_and_reconcile_finds_a_silent_reset() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("sqlite://{}", dir.path().join("store.db").display());
    let s = StreamKey::new("github", "acme", "Ticket");
    fake.define_sync("github", "tickets", &["Ticket"]);
    fake.generate(&s, 250, 50);
    let sync = sync_args(&sink, &s);

    // Run 1: the first read; run 2: 5 added, 2 deleted; run 3: fails (a wrong key).
    let out = cli(&fake, &sync);
    assert!(out.status.success(), "{}", text(&out.stderr));
    fake.save(
        &s,
        (0..5)
            .map(|i| json!({"id": format!("new-{i}"), "title": "new"}))
            .collect(),
    );
    let first_two: Vec<String> = fake.records(&s)[..2].iter().map(|r| r.id.clone()).collect();
    fake.delete(&s, &[&first_two[0], &first_two[1]]);
    let out = cli(&fake, &sync);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut bad_key = sync.clone();
    bad_key.extend(["--secret-key", "not-the-key"]);
    let out = cli(&fake, &bad_key);
    assert!(!out.status.success(), "a wrong key fails the run");
    assert!(
        !text(&out.stderr).contains("not-the-key"),
        "the key is never printed"
    );

    // history --json: newest first, every field of the contract.
    let history = ok_json(cli(&fake, &["history", "--sink", &sink, "--json"]));
    let runs = history.as_array().unwrap();
    assert_eq!(runs.len(), 3, "{history:#}");
    let outcomes: Vec<&str> = runs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["error", "ok", "ok"]);
    for r in runs {
        for field in [
            "started_at",
            "finished_at",
            "outcome",
            "error",
            "pages",
            "added",
            "updated",
            "deleted",
            "full",
        ] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert!(r["started_at"].as_str().unwrap() <= r["finished_at"].as_str().unwrap());
        assert_eq!(r["stream"]["model"], "Ticket");
    }
    assert!(
        runs[0]["error"].as_str().unwrap().contains("401"),
        "{}",
        runs[0]
    );
    assert_eq!(
        (&runs[1]["added"], &runs[1]["deleted"], &runs[1]["error"]),
        (&json!(5), &json!(2), &Value::Null)
    );
    assert_eq!(
        (&runs[2]["added"], &runs[2]["full"]),
        (&json!(250), &json!(true))
    );
    assert!(runs[2]["pages"].as_u64().unwrap() >= 3);
    assert!(runs[1]["started_at"].as_str() > runs[2]["started_at"].as_str());

    // --limit, one stream's runs, and a half-given stream refused.
    let limited = ok_json(cli(
        &fake,
        &["history", "--sink", &sink, "--limit", "2", "--json"],
    ));
    assert_eq!(limited.as_array().unwrap()[..], runs[..2]);
    let one = ok_json(cli(
        &fake,
        &[
            "history",
            "--sink",
            &sink,
            "--integration",
            "github",
            "--connection",
            "acme",
            "--model",
            "Ticket",
            "--json",
        ],
    ));
    assert_eq!(&one, &history);
    let other = ok_json(cli(
        &fake,
        &[
            "history",
            "--sink",
            &sink,
            "--integration",
            "github",
            "--connection",
            "other",
            "--model",
            "Ticket",
            "--json",
        ],
    ));
    assert_eq!(other, json!([]));
    let out = cli(
        &fake,
        &["history", "--sink", &sink, "--integration", "github"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--connection"),
        "{}",
        text(&out.stderr)
    );

    // The table: a header and one line per run, newest first.
    let out = cli(&fake, &["history", "--sink", &sink]);
    assert!(out.status.success());
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("STARTED (UTC)") && lines[0].contains("OUTCOME"),
        "{table}"
    );
    assert!(
        lines[1].contains("error") && lines[1].contains("401"),
        "{table}"
    );
    assert!(
        lines[2].contains(" ok ") && lines[3].contains(" 250 "),
        "{table}"
    );

    // status --json: the contract's fields; the failed run is a warning, the lag is
    // measured from the last success (run 2).
    let status = ok_json(cli(&fake, &["status", "--sink", &sink, "--json"]));
    let st = &status[0];
    assert_eq!(st["stream"]["integration"], "github");
    assert_eq!(st["live_records"], 253, "{status:#}");
    assert_eq!(st["deleted_records"], 2);
    assert!(st["state"]["cursor"].is_string());
    assert_eq!(st["last_run"]["outcome"], "error");
    assert_eq!(st["last_success_at"], runs[1]["finished_at"]);
    assert!(st["lag_seconds"].as_u64().unwrap() < 600);
    assert_eq!(st["upstream_error"], Value::Null);
    assert_eq!(codes(st), ["last_run_failed"]);
    let message = st["warnings"][0]["message"].as_str().unwrap();
    assert!(message.contains("401"), "{message}");

    // Nango's cache is reset without a webhook: an incremental run sees nothing, the
    // count check sees the drift and `status` warns; `--reconcile repair` sweeps.
    let removed = fake.hard_reset(&s);
    assert_eq!(removed, 255, "every record, the deleted ones too");
    fake.generate(&s, 40, 40);
    let mut warn = sync.clone();
    warn.push("--reconcile");
    let out = cli(&fake, &warn);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = ok_json(cli(&fake, &["status", "--sink", &sink, "--json"]));
    assert_eq!(status[0]["live_records"], 293);
    assert_eq!(codes(&status[0]), ["count_mismatch"]);
    let message = status[0]["warnings"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("293") && message.contains("40") && message.contains("--full"),
        "{message}"
    );
    let out = cli(&fake, &["status", "--sink", &sink]);
    let table = text(&out.stdout);
    assert!(
        table.contains("[DEGRADED]") && table.contains("warning [count_mismatch]"),
        "{table}"
    );

    let mut repair = sync.clone();
    repair.extend(["--reconcile", "repair"]);
    let out = cli(&fake, &repair);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let store = SqliteStore::open(dir.path().join("store.db"))
        .await
        .unwrap();
    assert_converged(&fake, &store, &s).await;
    drop(store);
    let status = ok_json(cli(&fake, &["status", "--sink", &sink, "--json"]));
    assert_eq!(status[0]["live_records"], 40);
    assert_eq!(codes(&status[0]), Vec::<String>::new(), "{status:#}");
    let history = ok_json(cli(
        &fake,
        &["history", "--sink", &sink, "--limit", "2", "--json"],
    ));
    assert_eq!(history[0]["full"], true, "{history:#}");
    assert_eq!(
        history[0]["full_reason"],
        "the live record count differed from Nango's"
    );
    assert_eq!(history[0]["count_check"]["result"], "match");
    assert_eq!(history[0]["deleted"], 253);
    let out = cli(&fake, &["status", "--sink", &sink]);
    assert!(text(&out.stdout).contains("[ok]"), "{}", text(&out.stdout));
}

/// A running `nango-sync serve` with its stderr in a file.
struct Serve {
    child: tokio::process::Child,
    base: String,
}

async fn serve(fake: &FakeNango, args: &[&str], log: &Path, log_format: &str) -> Serve {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(["--log", "info", "--log-format", log_format, "serve"])
        .args(["--listen", "127.0.0.1:0", "--host"])
        .arg(fake.url())
        .args(args)
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env_remove("NANGO_WEBHOOK_KEY")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn nango-sync serve");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve printed nothing within 60 s")
        .unwrap()
        .unwrap_or_else(|| panic!("serve exited: {}", std::fs::read_to_string(log).unwrap()));
    let base = line
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Serve { child, base }
}

impl Serve {
    async fn get(&self, path: &str) -> (u16, String) {
        nango_sync::client::install_crypto_provider();
        let resp = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Wait until the stream has finished `runs` runs and is idle.
    async fn wait_runs(&self, runs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (_, body) = self.get("/health").await;
            let h: Value = serde_json::from_str(&body).unwrap();
            let e = &h["streams"][0];
            if e["runs_finished"].as_u64().unwrap_or(0) >= runs
                && e["state"] != "running"
                && e["state"] != "pending"
            {
                return h;
            }
            assert!(Instant::now() < deadline, "{runs} runs not finished: {h}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post_webhook(&self, body: &str) -> u16 {
        reqwest::Client::new()
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

    /// SIGTERM, then wait for the exit (a success when `clean`).
    async fn stop(mut self, clean: bool) {
        let pid = self.child.id().unwrap();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let exit = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("serve did not stop within 60 s of SIGTERM")
            .unwrap();
        assert!(!clean || exit.success(), "serve exited with {exit}");
    }
}

/// The samples of `name` in a Prometheus text exposition whose labels include every
/// one of `labels`, summed.
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

fn sync_webhook(s: &StreamKey, added: u64) -> String {
    json!({
        "connectionId": s.connection, "from": "nango", "model": s.model,
        "modifiedAfter": "2026-11-26T19:00:00.000Z", "providerConfigKey": s.integration,
        "responseResults": {"added": added, "deleted": 0, "updated": 0}, "success": true,
        "syncName": "tickets", "syncType": "INCREMENTAL", "type": "sync"
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_the_counts_a_webhook_triggered_run_committed() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("sqlite://{}", dir.path().join("store.db").display());
    let log = dir.path().join("serve.log");
    let s = StreamKey::new("github", "acme", "Ticket");
    fake.generate(&s, 120, 60);
    let srv = serve(
        &fake,
        &[
            "--sink",
            &sink,
            "--integration",
            "github",
            "--connection",
            "acme",
            "--model",
            "Ticket",
            "--poll-interval",
            "1h",
            "--webhook-key",
            KEY,
        ],
        &log,
        "text",
    )
    .await;
    srv.wait_runs(1).await;
    let (code, before) = srv.get("/metrics").await;
    assert_eq!(code, 200);
    let ticket = [("model", "Ticket"), ("connection", "acme")];
    let committed = |exp: &str, change: &str| {
        let mut labels = ticket.to_vec();
        labels.push(("change", change));
        sample(exp, "nango_sync_records_committed_total", &labels)
    };
    assert_eq!(committed(&before, "added"), 120.0, "{before}");
    assert!(sample(&before, "nango_sync_requests_total", &[("class", "2xx")]) >= 1.0);
    assert!(before.contains("# HELP nango_sync_runs_total"), "{before}");

    // Upstream: 7 added, 3 updated, 4 deleted; a signed sync webhook triggers the run.
    fake.save(
        &s,
        (0..7)
            .map(|i| json!({"id": format!("new-{i}"), "title": "new"}))
            .collect(),
    );
    let ids: Vec<String> = fake.records(&s).iter().map(|r| r.id.clone()).collect();
    fake.save(
        &s,
        ids[..3]
            .iter()
            .map(|id| json!({"id": id, "title": "changed"}))
            .collect(),
    );
    let gone: Vec<&str> = ids[3..7].iter().map(String::as_str).collect();
    fake.delete(&s, &gone);
    assert_eq!(srv.post_webhook(&sync_webhook(&s, 7)).await, 200);
    srv.wait_runs(2).await;
    let (_, after) = srv.get("/metrics").await;
    for (change, n) in [("added", 7.0), ("updated", 3.0), ("deleted", 4.0)] {
        assert_eq!(
            committed(&after, change) - committed(&before, change),
            n,
            "{change}: {after}"
        );
    }
    let runs_ok = |exp: &str| {
        let mut labels = ticket.to_vec();
        labels.push(("outcome", "ok"));
        sample(exp, "nango_sync_runs_total", &labels)
    };
    assert_eq!(runs_ok(&after) - runs_ok(&before), 1.0);
    let accepted = |exp: &str| {
        sample(
            exp,
            "nango_sync_webhooks_total",
            &[("outcome", "accepted"), ("type", "sync")],
        )
    };
    assert_eq!(accepted(&after) - accepted(&before), 1.0, "{after}");
    assert!(
        sample(
            &after,
            "nango_sync_run_duration_seconds_count",
            &[("model", "Ticket")]
        ) >= 2.0
    );
    assert!(sample(&after, "nango_sync_lag_seconds", &ticket).is_finite());
    let (code, health) = srv.get("/health").await;
    assert_eq!(code, 200);
    let h: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["streams"][0]["health"], "ok", "{h}");

    // A failure webhook: the stream is degraded, with the code and what to do.
    let failure = json!({
        "connectionId": "acme", "error": {"description": "token expired", "type": "auth_error"},
        "model": "Ticket", "providerConfigKey": "github", "success": false,
        "syncName": "tickets", "type": "sync"
    })
    .to_string();
    assert_eq!(srv.post_webhook(&failure).await, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let h = loop {
        let (code, body) = srv.get("/health").await;
        assert_eq!(code, 200, "{body}");
        let h: Value = serde_json::from_str(&body).unwrap();
        if h["status"] == "degraded" {
            break h;
        }
        assert!(Instant::now() < deadline, "never degraded: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stream = &h["streams"][0];
    assert_eq!(stream["health"], "degraded", "{h}");
    assert_eq!(codes(stream), ["upstream_error"], "{h}");
    assert!(
        stream["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("token expired"),
        "{h}"
    );
    let (_, exposition) = srv.get("/metrics").await;
    let mut labels = ticket.to_vec();
    labels.push(("code", "upstream_error"));
    assert_eq!(
        sample(&exposition, "nango_sync_stream_warnings", &labels),
        1.0,
        "{exposition}"
    );

    srv.stop(true).await;

    // The log went to a file: plain text, no colour codes.
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a redirected log: {log}"
    );
    assert!(!log.contains(KEY) && !log.contains(fake.secret_key().expose()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_stream_and_run_id_of_each_run() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("sqlite://{}", dir.path().join("store.db").display());
    let s = StreamKey::new("github", "acme", "Ticket");
    fake.generate(&s, 120, 60);
    let mut args = vec!["--log", "info", "--log-format", "json"];
    args.extend(sync_args(&sink, &s));
    let out = cli(&fake, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines at info");
    let history = ok_json(cli(&fake, &["history", "--sink", &sink, "--json"]));
    let run_id = history[0]["id"].as_str().unwrap();
    let in_run: Vec<&Value> = lines.iter().filter(|l| l["run_id"] == run_id).collect();
    assert!(
        !in_run.is_empty(),
        "no line with the run id {run_id}: {stderr}"
    );
    for l in &in_run {
        assert!(
            l["stream"].as_str().unwrap().contains("Ticket"),
            "a run's line without its stream: {l}"
        );
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_sync_after_the_commit_in_flight_and_records_the_run_interrupted() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let sink = format!("sqlite://{}", db.display());
    let s = StreamKey::new("github", "acme", "Ticket");
    fake.generate(&s, 1000, 100);
    for _ in 0..40 {
        fake.inject(Fault::Slow(Duration::from_millis(200)));
    }
    let mut args = sync_args(&sink, &s);
    *args.last_mut().unwrap() = "10";
    let mut child = Command::new(BIN)
        .args(&args)
        .env("NANGO_HOST", fake.url())
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env_remove("NANGO_SYNC_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.request_count() < 3 {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "sync did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );

    // Whole pages, the cursor of the last stored record, the run recorded interrupted.
    {
        let store = SqliteStore::open(&db).await.unwrap();
        let local = sink::read_all(&store, &s, false).await.unwrap();
        let n = local.len();
        assert!(n < 1000, "{n} records: the run was not interrupted");
        assert_eq!(n % 10, 0, "whole pages only: {n}");
        let state = store.stream_state(&s).await.unwrap();
        if n > 0 {
            assert_eq!(
                state.cursor.as_ref().map(|c| c.as_str()),
                Some(fake.records(&s)[n - 1].meta.cursor.as_str())
            );
        }
    }
    let history = ok_json(cli(&fake, &["history", "--sink", &sink, "--json"]));
    assert_eq!(history[0]["outcome"], "interrupted", "{history:#}");
    let pages = history[0]["pages"].as_u64().unwrap();
    assert_eq!(
        history[0]["added"].as_u64().unwrap(),
        pages * 10,
        "{history:#}"
    );

    // The next sync resumes and completes.
    fake.clear_faults();
    let out = cli(&fake, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let store = SqliteStore::open(&db).await.unwrap();
    assert_converged(&fake, &store, &s).await;
    let runs = ok_json(cli(&fake, &["history", "--sink", &sink, "--json"]));
    let outcomes: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "interrupted"]);
}

/// `/health` answers 503 once the store cannot be read (its PostgreSQL schema dropped
/// under the running service); `serve`'s JSON log lines are all JSON, and those of a run
/// carry its stream and run id.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_503_when_the_store_cannot_be_read() {
    use nango_sync_testkit::stores::{fresh_postgres_url, postgres_server_url};

    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let url = fresh_postgres_url();
    let schema = url.rsplit_once("schema=").unwrap().1.to_string();
    let s = StreamKey::new("github", "acme", "Ticket");
    fake.generate(&s, 80, 40);
    let srv = serve(
        &fake,
        &[
            "--sink",
            &url,
            "--integration",
            "github",
            "--connection",
            "acme",
            "--model",
            "Ticket",
            "--poll-interval",
            "1h",
            "--webhook-key",
            KEY,
        ],
        &log,
        "json",
    )
    .await;
    srv.wait_runs(1).await;
    let (code, body) = srv.get("/health").await;
    assert_eq!(code, 200, "{body}");

    let pool = sqlx::PgPool::connect(&postgres_server_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = srv.get("/health").await;
        if code == 503 {
            let h: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(h["status"], "unavailable", "{h}");
            assert!(
                h["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("the store cannot be read"),
                "{h}"
            );
            break;
        }
        assert_eq!(code, 200, "{body}");
        assert!(Instant::now() < deadline, "/health never noticed: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    srv.stop(false).await;

    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let in_run: Vec<&Value> = lines.iter().filter(|l| l["run_id"].is_string()).collect();
    assert!(!in_run.is_empty(), "no line of a run: {log}");
    assert!(
        in_run
            .iter()
            .all(|l| l["stream"].as_str().unwrap().contains("Ticket")),
        "{log}"
    );
}
