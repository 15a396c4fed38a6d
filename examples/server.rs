//! A server's use of nango-sync: an axum app that mounts the webhook receiver next to its
//! own routes, keeps Nango's records in PostgreSQL, and keeps one of its own tables
//! (`contacts`, in the same database) up to date from the change feed.
//!
//! ```sh
//! DATABASE_URL=postgres://app@localhost/app NANGO_SECRET_KEY=... NANGO_WEBHOOK_KEY=... \
//!     cargo run --example server --features postgres,webhook -- demo-crm acme Contact
//! ```
//!
//! Arguments: integration, connection, model. Environment: `DATABASE_URL`,
//! `NANGO_SECRET_KEY`, `NANGO_WEBHOOK_KEY`, `NANGO_HOST` (default Nango's cloud),
//! `LISTEN` (default `127.0.0.1:8080`). Routes: `POST /webhook` (Nango's webhooks),
//! `GET /contacts/{id}` and `GET /contacts` (the app's own table). Ctrl-C stops it.
//!
//! The feed's consumer `contacts-table` applies each batch of changes to the table in one
//! transaction, then acknowledges it. Delivery is at least once (a crash between the two
//! applies the batch again), so the writes are idempotent upserts and deletes of the
//! record's current state: applying a change twice leaves the same table. Several
//! instances may share the database: the consumer's position is in the store, and a
//! commit made by any instance wakes the others (`LISTEN`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use nango_sync::engine::scheduler::{Scheduler, SchedulerConfig};
use nango_sync::feed::{StreamFilter, Subscription};
use nango_sync::webhook::{WebhookReceiver, WebhookVerifier, router};
use nango_sync::{Engine, NangoClient, SharedSink, StreamKey};
use sqlx::PgPool;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The fields of a record the app keeps in its own table.
#[derive(Debug, serde::Deserialize)]
pub struct Contact {
    pub id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

/// The app's settings.
pub struct Config {
    pub database_url: String,
    pub host: String,
    pub secret_key: String,
    pub webhook_key: String,
    pub stream: StreamKey,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [integration, connection, model] = args.as_slice() else {
        return Err("usage: server INTEGRATION CONNECTION MODEL".into());
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let config = Config {
        database_url: env("DATABASE_URL").ok_or("set DATABASE_URL")?,
        host: env("NANGO_HOST").unwrap_or_else(|| nango_sync::client::DEFAULT_HOST.into()),
        secret_key: env("NANGO_SECRET_KEY").ok_or("set NANGO_SECRET_KEY")?,
        webhook_key: env("NANGO_WEBHOOK_KEY").ok_or("set NANGO_WEBHOOK_KEY")?,
        stream: StreamKey::new(integration.as_str(), connection.as_str(), model.as_str()),
    };
    let listen = env("LISTEN").unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    run(config, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Serve until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    // Nango's records, in the database (`?schema=NAME` picks the store's schema).
    let store = nango_sync::sink::open(&config.database_url).await?;
    let client = NangoClient::builder()
        .host(&config.host)
        .secret_key(config.secret_key)
        .build()?;
    // Webhooks trigger syncs; a poll every 5 minutes catches the ones Nango lost.
    let scheduler = Scheduler::new(
        Engine::new(client, store.clone()),
        SchedulerConfig::default(),
    );
    scheduler.register(config.stream.clone());
    let webhooks = WebhookReceiver::new(
        WebhookVerifier::new(config.webhook_key),
        Arc::new(scheduler.clone()),
    );

    // The app's own table, in the same database.
    let (url, _schema) = nango_sync::sink::split_schema_param(&config.database_url);
    let db = PgPool::connect(&url).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS contacts (id TEXT PRIMARY KEY, title TEXT, status TEXT)",
    )
    .execute(&db)
    .await?;
    let filter = StreamFilter::stream(&config.stream);
    let updater = tokio::spawn(keep_contacts_table(store, db.clone(), filter));

    let app = Router::new()
        .route("/contacts", get(count_contacts))
        .route("/contacts/{id}", get(get_contact))
        .with_state(db)
        .merge(router(webhooks));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    scheduler.shutdown().await; // finishes the commit in flight
    updater.abort();
    Ok(())
}

/// The feed's consumer: apply each batch of changes to `contacts`, then acknowledge it.
async fn keep_contacts_table(store: SharedSink, db: PgPool, filter: StreamFilter) {
    loop {
        if let Err(e) = follow(store.clone(), &db, filter.clone()).await {
            eprintln!("contacts table: {e}; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn follow(store: SharedSink, db: &PgPool, filter: StreamFilter) -> Result<(), BoxError> {
    let mut feed = Subscription::for_consumer(store, "contacts-table")
        .await?
        .with_filter(filter);
    loop {
        let batch = feed.next_batch().await?; // waits for the next commit when caught up
        let mut tx = db.begin().await?;
        for change in &batch {
            match change.deserialize::<Contact>()? {
                Some(c) => {
                    sqlx::query(
                        "INSERT INTO contacts (id, title, status) VALUES ($1, $2, $3)
                         ON CONFLICT (id) DO UPDATE SET title = $2, status = $3",
                    )
                    .bind(&c.id)
                    .bind(&c.title)
                    .bind(&c.status)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM contacts WHERE id = $1")
                        .bind(change.id())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        feed.ack().await?;
    }
}

async fn get_contact(State(db): State<PgPool>, Path(id): Path<String>) -> impl IntoResponse {
    type Row = (String, Option<String>, Option<String>);
    let row: Result<Option<Row>, _> =
        sqlx::query_as("SELECT id, title, status FROM contacts WHERE id = $1")
            .bind(&id)
            .fetch_optional(&db)
            .await;
    match row {
        Ok(Some((id, title, status))) => {
            let body = serde_json::json!({ "id": id, "title": title, "status": status });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "no such contact".into(),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

async fn count_contacts(State(db): State<PgPool>) -> impl IntoResponse {
    match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM contacts")
        .fetch_one(&db)
        .await
    {
        Ok(n) => (StatusCode::OK, format!("{{\"contacts\":{n}}}")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
