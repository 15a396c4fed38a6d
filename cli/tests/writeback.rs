//! The write-back commands with the real binary against the fake Nango: `action` (sync,
//! `--async`, `--enqueue --sink`), `outbox`, `proxy`, `trigger`, and `serve` delivering
//! the outbox.
#![cfg(feature = "sqlite")]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nango_sync::StreamKey;
use nango_sync_testkit::fake::{ActionFailure, ActionScript};
use nango_sync_testkit::{FakeConfig, FakeNango, assert_converged};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");

async fn fake() -> FakeNango {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    fake.add_connection("github", "acme");
    fake
}

fn cmd(fake: &FakeNango, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("NANGO_HOST", fake.url())
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env_remove("NANGO_SYNC_LOG");
    c
}

fn run(fake: &FakeNango, args: &[&str]) -> Output {
    cmd(fake, args).output().expect("run nango-sync")
}

fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    [base, extra].concat()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failure: non-zero, nothing on stdout, one line on stderr; returns the line.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn action_prints_the_output_and_nangos_errors_in_one_line() {
    let fake = fake().await;
    fake.script_action("echo", ActionScript::echo());
    fake.script_action(
        "refused",
        ActionScript::failing(ActionFailure::ProviderError {
            status: 422,
            body: json!({"message": "title is required"}),
        }),
    );
    let base = ["action", "--integration", "github", "--connection", "acme"];

    let out = run(
        &fake,
        &with(&base, &["--name", "echo", "--input", r#"{"t":"Zoë"}"#]),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"t": "Zoë"}));

    let out = run(
        &fake,
        &with(
            &base,
            &["--name", "echo", "--input", r#"{"n":2}"#, "--async"],
        ),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({"n": 2})
    );
    let log = fake.action_executions();
    assert!(log.last().unwrap().async_id.is_some(), "{log:?}");

    let err = one_line_error(&run(&fake, &with(&base, &["--name", "nope"])));
    assert!(err.contains("404") && err.contains("not_found"), "{err}");
    let err = one_line_error(&run(&fake, &with(&base, &["--name", "refused"])));
    assert!(
        err.contains("424") && err.contains("title is required"),
        "{err}"
    );
    let before = fake.request_count();
    let err = one_line_error(&run(
        &fake,
        &with(&base, &["--name", "echo", "--input", "{oops"]),
    ));
    assert!(err.contains("--input"), "{err}");
    assert_eq!(fake.request_count(), before, "bad input sends nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_prints_the_body_on_stdout_and_the_status_on_stderr() {
    let fake = fake().await;
    let out = run(
        &fake,
        &[
            "proxy",
            "--integration",
            "github",
            "--connection",
            "acme",
            "POST",
            "/repos/acme/app/issues?state=open",
            "--data",
            r#"{"title":"x"}"#,
            "--header",
            "X-GitHub-Api-Version: 2022-11-28",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("200"), "{}", text(&out.stderr));
    let echo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/repos/acme/app/issues");
    assert_eq!(echo["query"], "state=open");
    assert_eq!(echo["body"], json!({"title": "x"}));
    assert_eq!(echo["headers"]["x-github-api-version"], "2022-11-28");
    let sent = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path.starts_with("/proxy"))
        .unwrap();
    assert_eq!(sent.path, "/proxy/repos/acme/app/issues");

    let out = run(
        &fake,
        &[
            "proxy",
            "--integration",
            "github",
            "--connection",
            "acme",
            "GET",
            "/status/404",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    let echo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        echo["path"], "/status/404",
        "the provider's body is printed"
    );

    let err = one_line_error(&run(
        &fake,
        &[
            "proxy",
            "--integration",
            "github",
            "--connection",
            "acme",
            "GET",
            "/x",
            "--header",
            "no-colon",
        ],
    ));
    assert!(err.contains("--header"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_runs_syncs_and_rereads_an_emptied_cache() {
    let fake = fake().await;
    let stream = StreamKey::new("github", "acme", "Contact");
    fake.generate(&stream, 40, 20);
    fake.define_sync("github", "contacts", &["Contact"]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let sync = [
        "sync",
        "--sink",
        &url,
        "--integration",
        "github",
        "--connection",
        "acme",
        "--model",
        "Contact",
    ];
    let out = run(&fake, &sync);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(
        &fake,
        &["trigger", "--integration", "github", "--sync", "contacts"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("triggered contacts"));
    let out = run(
        &fake,
        &[
            "trigger",
            "--integration",
            "github",
            "--connection",
            "acme",
            "--sync",
            "contacts",
            "--reset",
            "--empty-cache",
            "--sink",
            &url,
            "--model",
            "Contact",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("github/acme/Contact"), "{stdout}");
    let commands: Vec<_> = fake
        .sync_commands()
        .into_iter()
        .map(|c| (c.connection, c.reset, c.empty_cache))
        .collect();
    assert_eq!(
        commands,
        [(None, false, false), (Some("acme".to_string()), true, true)]
    );
    let store = nango_sync::sink::open(&url).await.unwrap();
    assert_converged(&fake, &*store, &stream).await;
    drop(store);

    let err = one_line_error(&run(
        &fake,
        &["trigger", "--integration", "github", "--sync", "nosuch"],
    ));
    assert!(err.contains("no_syncs_found"), "{err}");
}

/// `outbox --json` of `url`.
fn outbox(fake: &FakeNango, url: &str) -> Vec<Value> {
    let out = run(fake, &["outbox", "--sink", url, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_delivers_enqueued_actions_and_outbox_lists_them() {
    let fake = fake().await;
    let stream = StreamKey::new("github", "acme", "Contact");
    fake.generate(&stream, 5, 5);
    fake.script_action(
        "create-contact",
        ActionScript::echo().writes_record("Contact"),
    );
    fake.script_action(
        "flaky",
        ActionScript::output(json!({"ok": true})).failing_first(2, ActionFailure::InternalError),
    );
    fake.script_action(
        "refused",
        ActionScript::failing(ActionFailure::ProviderError {
            status: 409,
            body: json!({"message": "exists"}),
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let out = run(
        &fake,
        &[
            "sync",
            "--sink",
            &url,
            "--integration",
            "github",
            "--connection",
            "acme",
            "--model",
            "Contact",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let enqueue = |name: &str, extra: &[&str]| {
        let args = [
            &[
                "action",
                "--integration",
                "github",
                "--connection",
                "acme",
                "--name",
                name,
                "--sink",
                &url,
                "--enqueue",
            ][..],
            extra,
        ]
        .concat();
        let out = run(&fake, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
        printed["id"].as_u64().expect("an id")
    };
    let created = enqueue(
        "create-contact",
        &[
            "--input",
            r#"{"id":"new-1","name":"Ada"}"#,
            "--then-sync",
            "Contact",
            "--key",
            "new-1",
        ],
    );
    assert_eq!(
        enqueue("create-contact", &["--key", "new-1"]),
        created,
        "an idempotency key enqueues once"
    );
    let flaky = enqueue("flaky", &[]);
    let refused = enqueue("refused", &[]);
    let listed = outbox(&fake, &url);
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|i| i["state"] == "pending"), "{listed:?}");
    assert!(fake.action_executions().is_empty(), "enqueue runs nothing");

    // serve with no stream: it delivers the outbox.
    let mut serve = cmd(
        &fake,
        &[
            "serve",
            "--sink",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--poll-interval",
            "0",
            "--outbox-backoff",
            "50ms",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let base = first
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Done when the three actions settled: 1 + 3 + 1 runs.
    while fake
        .action_executions()
        .iter()
        .filter(|x| x.outcome.is_some())
        .count()
        < 5
    {
        assert!(Instant::now() < deadline, "{:?}", fake.action_executions());
        std::thread::sleep(Duration::from_millis(20));
    }
    // And the then-sync of the first one ran (its record is local).
    let found = loop {
        let out = run(
            &fake,
            &[
                "export",
                "--sink",
                &url,
                "--integration",
                "github",
                "--connection",
                "acme",
                "--model",
                "Contact",
            ],
        );
        if text(&out.stdout).contains("\"new-1\"") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    nango_sync::client::install_crypto_provider();
    let health = loop {
        let text = reqwest::get(format!("{base}/health"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let health: Value = serde_json::from_str(&text).unwrap();
        let o = &health["outbox"];
        if o["pending"] == 0 && o["running"] == 0 {
            break health;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let o = &health["outbox"];
    assert_eq!(
        (
            o["pending"].as_u64(),
            o["done"].as_u64(),
            o["failed"].as_u64()
        ),
        (Some(0), Some(2), Some(1)),
        "{health}"
    );
    assert_eq!(o["worker"]["retried"], 2, "{health}");
    // The same story in Prometheus' terms: items per state, settled attempts by outcome.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "nango_sync_outbox_items{state=\"pending\"} 0",
        "nango_sync_outbox_items{state=\"done\"} 2",
        "nango_sync_outbox_items{state=\"failed\"} 1",
        "nango_sync_outbox_deliveries_total{outcome=\"done\"} 2",
        "nango_sync_outbox_deliveries_total{outcome=\"failed\"} 1",
        "nango_sync_outbox_deliveries_total{outcome=\"retry\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    let status = serve.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(found, "the record the action wrote never came back");

    let listed = outbox(&fake, &url);
    let by_id = |id: u64| listed.iter().find(|i| i["id"] == id).unwrap().clone();
    let c = by_id(created);
    assert_eq!(
        (c["state"].as_str(), c["attempts"].as_u64()),
        (Some("done"), Some(1))
    );
    assert_eq!(c["output"], json!({"id": "new-1", "name": "Ada"}));
    let f = by_id(flaky);
    assert_eq!(
        (f["state"].as_str(), f["attempts"].as_u64()),
        (Some("done"), Some(3))
    );
    assert_eq!(f["output"], json!({"ok": true}));
    let r = by_id(refused);
    assert_eq!(
        (r["state"].as_str(), r["attempts"].as_u64()),
        (Some("failed"), Some(1))
    );
    assert_eq!(r["error"]["status"], 424);
    assert_eq!(r["error"]["code"], "script_http_error");
    assert_eq!(r["error"]["payload"], json!({"message": "exists"}));

    let out = run(&fake, &["outbox", "--sink", &url]);
    let plain = text(&out.stdout);
    assert!(plain.contains("2 done, 1 failed"), "{plain}");
    let out = run(
        &fake,
        &["outbox", "--sink", &url, "--state", "failed", "--json"],
    );
    let failed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed.len(), 1);
}
