//! Write-back end to end against the fake Nango over HTTP: actions (sync and async, each
//! error class), the proxy, sync operations and their effect on records, connections,
//! the outbox worker (retries, permanent failures, then-sync) and the transactional
//! outbox (an application's own SQL insert into the outbox table).
#![cfg(feature = "sqlite")]

use std::time::Duration;

use nango_sync::client::{
    ActionRequest, ConnectionsQuery, ProxyRequest, SyncRef, SyncSelector, SyncState, SyncStatus,
    TriggerOptions, WaitOptions,
};
use nango_sync::engine::outbox::{OutboxConfig, OutboxWorker};
use nango_sync::sink::outbox::{NewOutboxItem, OutboxItem, OutboxState};
use nango_sync::{Engine, Error, RawJson, SharedSink, StreamKey};
use nango_sync_testkit::fake::{ActionFailure, ActionScript};
use nango_sync_testkit::{Harness, TestStore};
use serde::Deserialize;
use serde_json::{Value, json};

async fn setup() -> Harness {
    let h = Harness::start(TestStore::sqlite().await).await;
    h.fake.add_connection("github", "acme");
    h
}

fn contacts() -> StreamKey {
    StreamKey::new("github", "acme", "Contact")
}

#[tokio::test]
async fn a_sync_action_returns_its_typed_output() {
    let h = setup().await;
    h.fake.script_action("create-issue", ActionScript::echo());
    #[derive(Debug, Deserialize, PartialEq)]
    struct Issue {
        title: String,
        labels: Vec<String>,
    }
    let out: Issue = h
        .client
        .trigger_action(
            "github",
            "acme",
            "create-issue",
            &json!({"title": "Zoë's bug", "labels": ["a"]}),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        Issue {
            title: "Zoë's bug".into(),
            labels: vec!["a".into()]
        }
    );
    let raw = h
        .client
        .trigger_action_raw(&ActionRequest {
            integration: "github",
            connection: "acme",
            action: "create-issue",
            input: None,
        })
        .await
        .unwrap();
    assert_eq!(raw.as_str(), "null");
    let log = h.fake.action_executions();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].input, json!({"title": "Zoë's bug", "labels": ["a"]}));
    assert_eq!(log[1].input, Value::Null);
}

#[tokio::test]
async fn action_errors_surface_with_nangos_code_payload_and_retry_class() {
    let h = setup().await;
    // 404: unknown action, permanent.
    let e = h
        .client
        .trigger_action::<_, Value>("github", "acme", "nope", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    assert_eq!(e.nango_code(), Some("not_found"));
    assert!(!e.is_retryable());

    // 424: the provider refused the script's request; the payload is the provider's body.
    h.fake.script_action(
        "refused",
        ActionScript::failing(ActionFailure::ProviderError {
            status: 422,
            body: json!({"message": "title is required"}),
        }),
    );
    let e = h
        .client
        .trigger_action::<_, Value>("github", "acme", "refused", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(424), "{e}");
    assert_eq!(e.nango_code(), Some("script_http_error"));
    assert_eq!(
        e.nango_payload(),
        Some(&json!({"message": "title is required"}))
    );
    assert!(!e.is_retryable());

    // 500 action_script_runtime_error: the script threw on purpose, permanent.
    h.fake.script_action(
        "threw",
        ActionScript::failing(ActionFailure::ActionError(json!({"reason": "duplicate"}))),
    );
    let e = h
        .client
        .trigger_action::<_, Value>("github", "acme", "threw", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(500));
    assert_eq!(e.nango_code(), Some("action_script_runtime_error"));
    assert_eq!(e.nango_payload(), Some(&json!({"reason": "duplicate"})));
    assert!(!e.is_retryable());
    let runs = |name: &str| {
        h.fake
            .action_executions()
            .iter()
            .filter(|x| x.action == name)
            .count()
    };
    assert_eq!(runs("refused"), 1, "a permanent error is not retried");
    assert_eq!(runs("threw"), 1, "a permanent error is not retried");

    // 500 script_network_error: transient, but the action may have run, so the client
    // does not send it again by itself; the error says it may be retried (the outbox
    // does so durably).
    h.fake.script_action(
        "flaky",
        ActionScript::output(json!({"ok": true})).failing_first(1, ActionFailure::NetworkError),
    );
    let e = h
        .client
        .trigger_action::<_, Value>("github", "acme", "flaky", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.nango_code(), Some("script_network_error"));
    assert!(e.is_retryable());
    assert_eq!(runs("flaky"), 1);
    let out: Value = h
        .client
        .trigger_action("github", "acme", "flaky", &json!({}))
        .await
        .unwrap();
    assert_eq!(out, json!({"ok": true}));
    assert_eq!(runs("flaky"), 2);

    // 400: a connection Nango does not know.
    h.fake.script_action("ok", ActionScript::echo());
    let e = h
        .client
        .trigger_action::<_, Value>("github", "nobody", "ok", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s / 100), Some(4), "{e}");
    assert!(!e.is_retryable());

    // Bad input is refused before any request.
    let before = h.fake.request_count();
    let e = h
        .client
        .trigger_action::<_, Value>("github", "acme", "", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
    assert_eq!(h.fake.request_count(), before);
}

#[tokio::test]
async fn an_async_action_is_polled_to_its_output_or_its_error() {
    let h = setup().await;
    h.fake.script_action(
        "slow-echo",
        ActionScript::echo().slow(Duration::from_millis(150)),
    );
    let handle = h
        .client
        .trigger_action_async("github", "acme", "slow-echo", &json!({"n": 7}), 0)
        .await
        .unwrap();
    assert!(!handle.id.is_empty());
    let options =
        WaitOptions::default().with_intervals(Duration::from_millis(20), Duration::from_millis(80));
    let out: Value = h.client.wait_action(&handle.id, &options).await.unwrap();
    assert_eq!(out, json!({"n": 7}));
    let log = h.fake.action_executions();
    assert_eq!(log[0].async_id.as_deref(), Some(handle.id.as_str()));

    h.fake.script_action(
        "refused",
        ActionScript::failing(ActionFailure::ProviderError {
            status: 409,
            body: json!({"message": "conflict"}),
        }),
    );
    let handle = h
        .client
        .trigger_action_async("github", "acme", "refused", &json!({}), 1)
        .await
        .unwrap();
    let e = h
        .client
        .wait_action::<Value>(&handle.id, &options)
        .await
        .unwrap_err();
    assert_eq!(e.nango_code(), Some("script_http_error"), "{e}");
    assert_eq!(e.nango_payload(), Some(&json!({"message": "conflict"})));
    let runs = h
        .fake
        .action_executions()
        .iter()
        .filter(|x| x.action == "refused")
        .count();
    assert_eq!(runs, 2, "X-Max-Retries 1: Nango runs it once more");

    let e = h
        .client
        .trigger_action_async("github", "acme", "refused", &json!({}), 9)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
}

#[tokio::test]
async fn the_proxy_forwards_method_query_body_and_headers_and_streams_the_answer() {
    let h = setup().await;
    let request = ProxyRequest::new("PATCH", "/repos/acme/app/issues/3?draft=true")
        .unwrap()
        .query("per_page", "5")
        .header("X-GitHub-Api-Version", "2022-11-28")
        .json(&json!({"state": "closed"}))
        .unwrap()
        .retries(3)
        .retry_on([409]);
    let response = h.client.proxy("github", "acme", &request).await.unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "PATCH");
    assert_eq!(echo["path"], "/repos/acme/app/issues/3");
    assert_eq!(echo["query"], "draft=true&per_page=5");
    assert_eq!(echo["body"], json!({"state": "closed"}));
    assert_eq!(echo["headers"]["x-github-api-version"], "2022-11-28");
    assert_eq!(echo["retries"], "3");
    assert_eq!(echo["retry_on"], "409");

    // A provider's error is a response, not an error, until the caller says so.
    let response = h
        .client
        .proxy(
            "github",
            "acme",
            &ProxyRequest::new("GET", "/status/404").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(!response.is_success());
    let e = response.error_for_status().await.unwrap_err();
    assert_eq!(e.status(), Some(404));

    // A long answer arrives in chunks.
    let mut response = h
        .client
        .proxy(
            "github",
            "acme",
            &ProxyRequest::new("GET", "/bytes/25000").unwrap(),
        )
        .await
        .unwrap();
    let (mut chunks, mut bytes) = (0, 0);
    while let Some(chunk) = response.chunk().await.unwrap() {
        chunks += 1;
        bytes += chunk.len();
    }
    assert_eq!(bytes, 25_000);
    assert!(chunks > 1, "{chunks} chunk");

    // Nango's own refusal of an unknown connection.
    let response = h
        .client
        .proxy("github", "nobody", &ProxyRequest::new("GET", "/x").unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(ProxyRequest::new("TRACE", "/x").is_err());
}

#[tokio::test]
async fn sync_operations_reach_nango_and_an_emptied_cache_is_read_again_fully() {
    let h = setup().await;
    let stream = contacts();
    h.fake.define_sync("github", "contacts", &["Contact"]);
    h.fake.generate(&stream, 30, 10);
    h.sync(&stream).await.unwrap();
    h.assert_converged(&stream).await;

    let sync = [SyncRef::new("contacts")];
    h.client
        .trigger_syncs("github", Some("acme"), &sync, TriggerOptions::default())
        .await
        .unwrap();
    h.client
        .pause_syncs("github", Some("acme"), &sync)
        .await
        .unwrap();
    assert!(h.fake.sync_schedule("github", "acme", "contacts").paused);
    h.client.start_syncs("github", None, &sync).await.unwrap();
    assert!(!h.fake.sync_schedule("github", "acme", "contacts").paused);
    let stored = h
        .client
        .update_sync_frequency("github", "acme", &sync[0], Some("every 2h"))
        .await
        .unwrap();
    assert_eq!(
        h.fake.sync_schedule("github", "acme", "contacts").frequency,
        Some(stored)
    );

    let e = h
        .client
        .trigger_syncs(
            "github",
            Some("acme"),
            &[SyncRef::new("nosuch")],
            TriggerOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert_eq!(e.nango_code(), Some("no_syncs_found"));
    let e = h
        .client
        .trigger_syncs(
            "github",
            Some("acme"),
            &sync,
            TriggerOptions {
                reset: false,
                empty_cache: true,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");

    // Reset with emptyCache: Nango saves every record again under new versions; the
    // local store re-reads the stream fully and stays equal.
    let before: Vec<_> = h.fake.records(&stream).iter().map(|r| r.uuid).collect();
    let reports = h
        .engine
        .trigger_syncs(
            "github",
            Some("acme"),
            &sync,
            TriggerOptions::reset_and_empty_cache(),
            std::slice::from_ref(&stream),
        )
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    let report = reports.into_iter().next().unwrap().unwrap();
    assert!(report.full, "{report:?}");
    let after: Vec<_> = h.fake.records(&stream).iter().map(|r| r.uuid).collect();
    assert_eq!(after.len(), before.len());
    assert_ne!(after, before, "the records were saved again");
    h.assert_converged(&stream).await;

    let commands: Vec<_> = h
        .fake
        .sync_commands()
        .into_iter()
        .map(|c| (c.command, c.reset, c.empty_cache))
        .collect();
    assert!(
        commands.contains(&("trigger".to_string(), true, true)),
        "{commands:?}"
    );
}

#[tokio::test]
async fn connections_are_listed_page_by_page() {
    let h = setup().await;
    for i in 0..5 {
        h.fake.add_connection("github", &format!("c{i}"));
    }
    h.fake.add_connection("slack", "s0");
    let query = ConnectionsQuery::new().integration("github").limit(2);
    let mut seen = Vec::new();
    for page in 0.. {
        let got = h
            .client
            .list_connections(&query.clone().page(page))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 2);
        seen.extend(got.into_iter().map(|c| c.connection_id));
    }
    seen.sort();
    assert_eq!(seen, ["acme", "c0", "c1", "c2", "c3", "c4"]);
    let all = h
        .client
        .all_connections(&ConnectionsQuery::new().limit(4))
        .await
        .unwrap();
    assert_eq!(all.len(), 7);
    assert!(
        all.iter()
            .any(|c| c.provider_config_key == "slack" && c.connection_id == "s0")
    );
}

/// A worker with short waits, for tests.
fn worker(engine: Engine, concurrency: usize) -> OutboxWorker {
    OutboxWorker::new(
        engine,
        OutboxConfig {
            concurrency,
            lease: Duration::from_secs(5),
            poll_interval: Duration::from_millis(20),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            shutdown_grace: Duration::from_secs(5),
            ..OutboxConfig::default()
        },
    )
}

/// Wait until no item is pending or running (10 s at most).
async fn drained(sink: &SharedSink) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = sink.outbox_counts().await.unwrap();
        if c.pending == 0 && c.running == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not drain: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn item(sink: &SharedSink, id: u64) -> OutboxItem {
    sink.outbox_get(id).await.unwrap().expect("the item exists")
}

#[tokio::test]
async fn the_worker_delivers_retries_transient_errors_and_fails_permanent_ones_at_once() {
    let h = setup().await;
    h.fake.script_action("echo", ActionScript::echo());
    h.fake.script_action(
        "flaky",
        ActionScript::output(json!({"ok": 1})).failing_first(2, ActionFailure::InternalError),
    );
    h.fake.script_action(
        "refused",
        ActionScript::failing(ActionFailure::ProviderError {
            status: 422,
            body: json!({"message": "bad"}),
        }),
    );
    h.fake
        .script_action("down", ActionScript::failing(ActionFailure::NetworkError));
    let w = worker(h.engine.clone(), 2);
    let mut ids = Vec::new();
    for (name, input) in [
        ("echo", Some(r#"{"x":1}"#)),
        ("flaky", None),
        ("refused", None),
        ("nope", None),
        ("down", None),
    ] {
        let mut new = NewOutboxItem::new("github", "acme", name);
        new.input = input.map(RawJson::from_trusted);
        new.max_attempts = 3;
        ids.push(w.enqueue(new).await.unwrap().id);
    }
    let task = tokio::spawn({
        let w = w.clone();
        async move { w.run().await }
    });
    drained(&h.sink).await;
    w.stop();
    task.await.unwrap();

    let echo = item(&h.sink, ids[0]).await;
    assert_eq!(echo.state, OutboxState::Done);
    assert_eq!(echo.output.unwrap().as_str(), r#"{"x":1}"#);
    assert_eq!(echo.attempts, 1);
    let flaky = item(&h.sink, ids[1]).await;
    assert_eq!(flaky.state, OutboxState::Done, "{flaky:?}");
    assert_eq!(flaky.attempts, 3);
    let refused = item(&h.sink, ids[2]).await;
    assert_eq!(refused.state, OutboxState::Failed);
    assert_eq!(refused.attempts, 1, "a 424 is not retried");
    let err = refused.error.unwrap();
    assert_eq!(
        (err.status, err.code.as_str()),
        (Some(424), "script_http_error")
    );
    assert_eq!(err.payload, Some(json!({"message": "bad"})));
    let nope = item(&h.sink, ids[3]).await;
    assert_eq!(nope.state, OutboxState::Failed);
    assert_eq!(nope.attempts, 1, "a 404 is not retried");
    assert_eq!(nope.error.unwrap().code, "not_found");
    let down = item(&h.sink, ids[4]).await;
    assert_eq!(down.state, OutboxState::Failed);
    assert_eq!(down.attempts, 3, "retried up to max_attempts");
    assert_eq!(down.error.unwrap().code, "script_network_error");

    let stats = w.stats();
    assert_eq!((stats.done, stats.failed), (2, 3), "{stats:?}");
    assert_eq!(stats.retried, 4, "{stats:?}");
    let runs = h.fake.action_executions().len();
    assert_eq!(runs, 1 + 3 + 1 + 3, "every attempt that reached a script");
}

#[tokio::test]
async fn an_action_writing_upstream_comes_back_through_then_sync_without_any_webhook() {
    let h = setup().await;
    let stream = contacts();
    h.fake.generate(&stream, 3, 3);
    h.sync(&stream).await.unwrap();
    h.fake.script_action(
        "create-contact",
        ActionScript::echo().writes_record("Contact"),
    );
    let w = worker(h.engine.clone(), 1);
    let mut new = NewOutboxItem::new("github", "acme", "create-contact");
    new.input = Some(RawJson::from_trusted(r#"{"id":"new-1","name":"Ada"}"#));
    new.then_sync = vec!["Contact".into()];
    let id = w.enqueue(new).await.unwrap().id;
    let task = tokio::spawn({
        let w = w.clone();
        async move { w.run().await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if h.local_live(&stream).await.contains_key("new-1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.stop();
    task.await.unwrap();
    assert_eq!(item(&h.sink, id).await.state, OutboxState::Done);
    assert_eq!(h.local_live(&stream).await["new-1"]["name"], "Ada");
    assert_eq!(w.stats().syncs_triggered, 1);
    h.assert_converged(&stream).await;
    assert!(
        h.fake.requests().iter().all(|r| r.path != "/webhook"),
        "no webhook involved"
    );
}

#[tokio::test]
async fn an_app_inserts_into_the_sqlite_outbox_inside_its_own_transaction() {
    let h = setup().await;
    h.fake.script_action("create-issue", ActionScript::echo());
    let path = h.store().path().to_path_buf();
    let mut app = rusqlite::Connection::open(&path).unwrap();
    app.busy_timeout(Duration::from_secs(5)).unwrap();
    app.execute_batch("CREATE TABLE issues (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
        .unwrap();
    // Committed together: the app's row and the action that tells the provider.
    let tx = app.transaction().unwrap();
    tx.execute("INSERT INTO issues (title) VALUES ('crash on start')", [])
        .unwrap();
    tx.execute(
        "INSERT INTO nango_outbox (integration, connection, action, input, then_sync)
         VALUES ('github', 'acme', 'create-issue', json_object('title', 'crash on start'), '[\"Issue\"]')",
        [],
    )
    .unwrap();
    tx.commit().unwrap();
    // Rolled back together: neither exists.
    let tx = app.transaction().unwrap();
    tx.execute("INSERT INTO issues (title) VALUES ('never')", [])
        .unwrap();
    tx.execute(
        "INSERT INTO nango_outbox (integration, connection, action) VALUES ('github', 'acme', 'create-issue')",
        [],
    )
    .unwrap();
    tx.rollback().unwrap();
    drop(app);

    let items = h
        .sink
        .outbox_list(&nango_sync::sink::outbox::OutboxQuery::first(10))
        .await
        .unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    let it = &items[0];
    assert_eq!(it.state, OutboxState::Pending);
    assert_eq!(it.then_sync, ["Issue"]);
    assert_eq!(it.max_attempts, 5);
    let w = worker(h.engine.clone(), 1);
    w.wake();
    let task = tokio::spawn({
        let w = w.clone();
        async move { w.run().await }
    });
    drained(&h.sink).await;
    w.stop();
    task.await.unwrap();
    let done = item(&h.sink, it.id).await;
    assert_eq!(done.state, OutboxState::Done);
    assert_eq!(
        done.output.unwrap().to_value(),
        json!({"title": "crash on start"})
    );
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn an_app_inserts_into_the_postgres_outbox_inside_its_own_transaction() {
    let store = TestStore::postgres().await;
    let url = store.url().to_string();
    let schema = url
        .split("schema=")
        .nth(1)
        .expect("a schema in the URL")
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let h = Harness::start(store).await;
    h.fake.add_connection("github", "acme");
    h.fake.script_action("create-issue", ActionScript::echo());
    let pool = sqlx::PgPool::connect(&nango_sync_testkit::stores::postgres_server_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".issues (id bigserial PRIMARY KEY, title text NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".issues (title) VALUES ('crash on start')"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".outbox (integration, connection, action, input)
         VALUES ('github', 'acme', 'create-issue', jsonb_build_object('title', 'crash on start'))"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".outbox (integration, connection, action) VALUES ('github', 'acme', 'never')"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    let counts = h.sink.outbox_counts().await.unwrap();
    assert_eq!(counts.pending, 1, "{counts:?}");
    let w = worker(h.engine.clone(), 1);
    let task = tokio::spawn({
        let w = w.clone();
        async move { w.run().await }
    });
    drained(&h.sink).await;
    w.stop();
    task.await.unwrap();
    let items = h
        .sink
        .outbox_list(&nango_sync::sink::outbox::OutboxQuery::first(10))
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].state, OutboxState::Done);
    assert_eq!(
        items[0].output.as_ref().unwrap().to_value(),
        json!({"title": "crash on start"})
    );
    pool.close().await;
}

#[tokio::test]
async fn sync_status_reports_what_the_sync_operations_did() {
    let h = setup().await;
    let stream = contacts();
    // One definition serves the sync operations and `GET /sync/status`.
    h.fake.define_sync("github", "contacts", &["Contact"]);
    h.fake.generate(&stream, 12, 12);
    let sync = [SyncRef::new("contacts")];
    let one = SyncSelector::Names(vec!["contacts".into()]);
    let status = |s: Vec<SyncStatus>| {
        assert_eq!(s.len(), 1, "one sync of one connection: {s:?}");
        s.into_iter().next().unwrap()
    };

    let before = status(
        h.client
            .sync_status("github", Some("acme"), &one)
            .await
            .unwrap(),
    );
    assert_eq!(before.status, SyncState::Success);
    assert_eq!(before.record_count.get("Contact"), Some(&12));

    h.client
        .pause_syncs("github", Some("acme"), &sync)
        .await
        .unwrap();
    h.client
        .update_sync_frequency("github", "acme", &sync[0], Some("every 2h"))
        .await
        .unwrap();
    let paused = status(
        h.client
            .sync_status("github", Some("acme"), &one)
            .await
            .unwrap(),
    );
    assert_eq!(paused.status, SyncState::Paused);
    // Stored as Nango stores it: the interval without `every `.
    assert_eq!(paused.frequency.as_deref(), Some("2h"));

    h.client.start_syncs("github", None, &sync).await.unwrap();
    let started = status(
        h.client
            .sync_status("github", Some("acme"), &SyncSelector::All)
            .await
            .unwrap(),
    );
    assert_eq!(started.status, SyncState::Success);
}

#[tokio::test]
async fn every_write_back_route_accepts_a_trailing_slash_like_nango() {
    let h = setup().await;
    h.fake.script_action("echo", ActionScript::echo());
    h.fake.define_sync("github", "contacts", &["Contact"]);
    nango_sync::client::install_crypto_provider();
    let http = reqwest::Client::new();
    let key = h.fake.secret_key();
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{}{path}", h.fake.url()))
            .bearer_auth(key.expose())
            .header("Connection-Id", "acme")
            .header("Provider-Config-Key", "github");
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, text)
        }
    };
    use reqwest::Method;
    let (status, text) = send(
        Method::POST,
        "/action/trigger/",
        Some(json!({"action_name": "echo", "input": {"a": 1}})),
    )
    .await;
    assert_eq!((status, text.as_str()), (200, r#"{"a":1}"#));
    let sync =
        json!({"provider_config_key": "github", "connection_id": "acme", "syncs": ["contacts"]});
    for path in ["/sync/trigger/", "/sync/start/", "/sync/pause/"] {
        let (status, text) = send(Method::POST, path, Some(sync.clone())).await;
        assert_eq!(status, 200, "{path}: {text}");
    }
    let (status, text) = send(
        Method::PUT,
        "/sync/update-connection-frequency/",
        Some(
            json!({"provider_config_key": "github", "connection_id": "acme",
            "sync_name": "contacts", "frequency": "every 2h"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = send(Method::GET, "/connections/?limit=5", None).await;
    assert_eq!(status, 200, "{text}");
    // A proxy path is the provider's: its trailing slash is forwarded.
    let (status, text) = send(Method::GET, "/proxy/repos/acme/", None).await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echo["path"], "/repos/acme/");
    let handle = h
        .client
        .trigger_action_async("github", "acme", "echo", &json!({"b": 2}), 0)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = send(Method::GET, &format!("/action/{}/", handle.id), None).await;
        if status == 200 {
            assert_eq!(text, r#"{"b":2}"#);
            break;
        }
        assert_eq!(status, 404, "{text}");
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn prune_after_a_run_is_opt_in_and_the_store_keeps_the_payloads() {
    let h = setup().await;
    let stream = contacts();
    h.fake.generate(&stream, 25, 10);
    // Off by default: nothing pruned.
    h.sync(&stream).await.unwrap();
    assert!(
        h.fake
            .records(&stream)
            .iter()
            .all(|r| r.meta.pruned_at.is_none())
    );
    let before = h.local_live(&stream).await;

    let engine = h.engine_with(nango_sync::engine::EngineConfig {
        prune_after_run: true,
        ..Default::default()
    });
    h.fake.generate(&stream, 5, 5);
    engine
        .sync(&stream, &nango_sync::SyncOptions::default())
        .await
        .unwrap();
    let upstream = h.fake.records(&stream);
    assert_eq!(upstream.len(), 30);
    assert!(
        upstream.iter().all(|r| r.meta.pruned_at.is_some()),
        "every record up to the stored cursor is pruned"
    );
    let after = h.local_live(&stream).await;
    assert_eq!(after.len(), 30);
    for (id, payload) in &before {
        assert_eq!(&after[id], payload, "the store keeps the payload of {id}");
    }

    // The call itself: bad arguments are refused before any request; Nango's errors
    // come back typed.
    let cursor = upstream.last().unwrap().meta.cursor.clone();
    let e = h
        .client
        .prune_records(&stream, &cursor, 0)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
    let out = h.client.prune_records(&stream, &cursor, 10).await.unwrap();
    assert_eq!(out.count, 0, "pruning again prunes nothing more");
    let e = h
        .client
        .prune_records(&StreamKey::new("github", "nobody", "Contact"), &cursor, 10)
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s / 100), Some(4), "{e}");
}
