//! The examples of embedding (`examples/desktop.rs`, `examples/server.rs`), run against
//! the fake Nango: their code is compiled into this test as modules and driven through
//! their `run` functions, with a real SQLite file and the PostgreSQL server of
//! `scripts/pg.sh`.
#![cfg(feature = "sqlite")]

use std::time::Duration;

use nango_sync::{RecordSink, StreamKey};
use nango_sync_testkit::{FakeConfig, FakeNango};
use serde_json::json;

#[allow(dead_code)]
#[path = "../examples/desktop.rs"]
mod desktop;

#[cfg(all(feature = "postgres", feature = "webhook"))]
#[allow(dead_code)]
#[path = "../examples/server.rs"]
mod server;

fn contact() -> StreamKey {
    StreamKey::new("demo-crm", "acme", "Contact")
}

/// Title of a record of the fake.
fn title(fake: &FakeNango, id: &str) -> String {
    fake.records(&contact())
        .into_iter()
        .find(|r| r.id == id)
        .and_then(|r| r.payload["title"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_app_shows_each_change_once_across_restarts() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    fake.generate(&contact(), 40, 40);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("desktop.db");
    let run = |syncs| {
        let config = desktop::Config {
            host: fake.url(),
            secret_key: fake.secret_key().expose().to_string(),
            db: db.display().to_string(),
            stream: contact(),
            sync_every: Duration::from_millis(50),
            syncs: Some(syncs),
        };
        async move {
            let mut view = Vec::new();
            desktop::run(config, &mut view).await.unwrap();
            String::from_utf8(view).unwrap()
        }
    };
    // First start: every record is new.
    let view = run(1).await;
    let lines: Vec<&str> = view.lines().collect();
    assert_eq!(lines.len(), 40, "{view}");
    let mut records = fake.records(&contact());
    records.sort_by(|a, b| a.id.cmp(&b.id)); // one commit: in id order
    for (line, record) in lines.iter().zip(records) {
        let title = record.payload["title"].as_str().unwrap();
        assert_eq!(*line, format!("added {} {title}", record.id));
    }
    // Upstream changes while the app is closed: the next start shows only them.
    let ids: Vec<String> = fake.live_payloads(&contact()).into_keys().collect();
    let mut edited = fake.live_payloads(&contact())[&ids[3]].clone();
    edited["title"] = json!("Edited title");
    fake.save(&contact(), vec![edited]);
    fake.delete(&contact(), &[&ids[7]]);
    fake.generate(&contact(), 1, 1);
    let new_id = fake
        .live_payloads(&contact())
        .into_keys()
        .find(|id| !ids.contains(id))
        .unwrap();
    let view = run(2).await;
    let mut want = vec![
        format!("updated {} Edited title", ids[3]),
        format!("deleted {}", ids[7]),
        format!("added {new_id} {}", title(&fake, &new_id)),
    ];
    want.sort();
    let mut got: Vec<String> = view.lines().map(str::to_owned).collect();
    got.sort();
    assert_eq!(got, want, "{view}");
    // Nothing new: nothing shown.
    assert_eq!(run(1).await, "");
    let store = nango_sync::sink::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let last = store.last_seq().await.unwrap();
    assert_eq!(
        store.consumer_position("desktop-view").await.unwrap().seq,
        last
    );
}

#[cfg(all(feature = "postgres", feature = "webhook"))]
mod server_app {
    use super::server;
    use super::*;
    use nango_sync::SecretKey;
    use nango_sync_testkit::WebhookSettings;
    use std::collections::BTreeMap;

    async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
        match http.get(url).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// The app's table (empty until the app has created it).
    async fn table(db: &sqlx::PgPool) -> BTreeMap<String, Option<String>> {
        sqlx::query_as::<_, (String, Option<String>)>("SELECT id, title FROM contacts")
            .fetch_all(db)
            .await
            .map(|rows| rows.into_iter().collect())
            .unwrap_or_default()
    }

    fn upstream(fake: &FakeNango) -> BTreeMap<String, Option<String>> {
        fake.live_payloads(&contact())
            .into_iter()
            .map(|(id, p)| (id, p["title"].as_str().map(str::to_owned)))
            .collect()
    }

    async fn wait_until_equal(db: &sqlx::PgPool, fake: &FakeNango, what: &str) {
        nango_sync_testkit::eventually(Duration::from_secs(30), || async {
            let (got, want) = (table(db).await, upstream(fake));
            if got == want {
                return Ok(());
            }
            Err(format!(
                "{what}: the app's table has {} rows, upstream {}",
                got.len(),
                want.len()
            ))
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_keeps_its_own_table_equal_to_upstream() {
        let url = nango_sync_testkit::stores::fresh_postgres_url();
        let (plain, _) = nango_sync::sink::split_schema_param(&url);
        let db = sqlx::PgPool::connect(&plain).await.unwrap();
        sqlx::query("DROP TABLE IF EXISTS contacts")
            .execute(&db)
            .await
            .unwrap();
        let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
        fake.generate(&contact(), 120, 50);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let webhook_key = "webhook-signing-key-of-the-test";
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = server::Config {
            database_url: url.clone(),
            host: fake.url(),
            secret_key: fake.secret_key().expose().to_string(),
            webhook_key: webhook_key.into(),
            stream: contact(),
        };
        let app = tokio::spawn(server::run(config, listener, async {
            let _ = stopped.await;
        }));
        // The first sync runs at start; the consumer fills the table.
        wait_until_equal(&db, &fake, "after the first sync").await;

        // Upstream changes arrive by signed webhook (no poll for 5 minutes).
        fake.set_webhooks(Some(WebhookSettings::new(
            format!("{base}/webhook"),
            SecretKey::new(webhook_key),
        )));
        let ids: Vec<String> = upstream(&fake).into_keys().collect();
        let mut edited = fake.live_payloads(&contact())[&ids[5]].clone();
        edited["title"] = json!("Edited by the provider");
        fake.save(&contact(), vec![edited]);
        fake.delete(&contact(), &[&ids[9], &ids[10]]);
        fake.generate(&contact(), 4, 4);
        wait_until_equal(&db, &fake, "after webhooks").await;

        // Its own routes, next to the webhook receiver.
        nango_sync::client::install_crypto_provider();
        let http = reqwest::Client::new();
        let (status, body) = get(&http, &format!("{base}/contacts/{}", ids[5])).await;
        assert_eq!(status, 200, "{body}");
        let contact: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(contact["title"], "Edited by the provider");
        assert_eq!(
            get(&http, &format!("{base}/contacts/{}", ids[9])).await.0,
            404
        );
        assert_eq!(
            get(&http, &format!("{base}/contacts")).await,
            (200, format!("{{\"contacts\":{}}}", 120 - 2 + 4))
        );
        let (status, _) = get(&http, &format!("{base}/webhook")).await;
        assert_eq!(status, 405, "the receiver is mounted (POST only)");

        stop.send(()).unwrap();
        app.await.unwrap().unwrap();
        // The consumer's position is in the store, at the last commit.
        let store = nango_sync::sink::open(&url).await.unwrap();
        assert_eq!(
            store.consumer_position("contacts-table").await.unwrap().seq,
            store.last_seq().await.unwrap()
        );
        sqlx::query("DROP TABLE contacts")
            .execute(&db)
            .await
            .unwrap();
    }
}
