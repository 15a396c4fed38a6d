//! How fast the webhook receiver answers: verify the signature over the raw body, parse,
//! record the trigger in the scheduler, answer. The scheduler behind it is real (a SQLite
//! store and the fake Nango), so every burst also causes the coalesced runs it would in
//! production.
//!
//! - `webhook_receiver/oneshot/*`: one request through the axum router in process
//!   (`tower::ServiceExt::oneshot`), no network: a signed sync webhook, a refused one
//!   (401), and an unknown type.
//! - `burst`: 2,048 signed webhooks over loopback HTTP, 32 at a time; prints the p50,
//!   p99 and max answer time seen by the sender.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, Throughput};
use nango_sync::engine::scheduler::{Scheduler, SchedulerConfig};
use nango_sync::sink::{SharedSink, SqliteStore};
use nango_sync::webhook::{WebhookReceiver, WebhookVerifier, router};
use nango_sync::{Engine, NangoClient, SecretKey, StreamKey};
use nango_sync_testkit::{FakeConfig, FakeNango};
use tower::ServiceExt;

const KEY: &str = "bench-webhook-signing-key";

struct Setup {
    _fake: FakeNango,
    _dir: tempfile::TempDir,
    scheduler: Scheduler,
    app: axum::Router,
    body: String,
    signature: String,
}

async fn setup() -> Setup {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let stream = StreamKey::new("github", "acme-prod", "Ticket");
    fake.generate(&stream, 100, 100);
    let dir = tempfile::tempdir().unwrap();
    let sink: SharedSink = Arc::new(SqliteStore::open(dir.path().join("b.db")).await.unwrap());
    let client = NangoClient::builder()
        .host(fake.url())
        .secret_key(fake.secret_key())
        .build()
        .unwrap();
    let scheduler = Scheduler::new(
        Engine::new(client, sink),
        SchedulerConfig {
            poll_interval: None,
            ..SchedulerConfig::default()
        },
    );
    scheduler.register(stream.clone());
    let receiver = WebhookReceiver::new(WebhookVerifier::new(KEY), Arc::new(scheduler.clone()));
    let body = serde_json::json!({
        "checkpoints": {"from": "2026-11-26T19:00:00.000Z", "to": "2026-11-26T19:05:00.000Z"},
        "connectionId": stream.connection, "from": "nango", "model": stream.model,
        "modifiedAfter": "2026-11-26T19:00:00.000Z", "providerConfigKey": stream.integration,
        "queryTimeStamp": "2026-11-26T19:05:01.000Z",
        "responseResults": {"added": 10, "deleted": 0, "updated": 3}, "success": true,
        "syncName": "tickets", "syncType": "INCREMENTAL", "syncVariant": "base", "type": "sync"
    })
    .to_string();
    let signature = WebhookVerifier::sign(&SecretKey::new(KEY), body.as_bytes());
    Setup {
        _fake: fake,
        _dir: dir,
        scheduler,
        app: router(receiver),
        body,
        signature,
    }
}

fn request(body: &str, signature: &str) -> Request<Body> {
    Request::post("/webhook")
        .header("content-type", "application/json")
        .header("x-nango-hmac-sha256", signature)
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn oneshot(c: &mut Criterion, rt: &tokio::runtime::Runtime, s: &Setup) {
    let mut g = c.benchmark_group("webhook_receiver/oneshot");
    g.throughput(Throughput::Elements(1));
    let unknown = r#"{"connectionId":"acme-prod","providerConfigKey":"github","type":"brand_new"}"#;
    let unknown_sig = WebhookVerifier::sign(&SecretKey::new(KEY), unknown.as_bytes());
    let cases = [
        ("signed_sync", s.body.as_str(), s.signature.as_str(), 200),
        ("bad_signature", s.body.as_str(), &"0".repeat(64)[..], 401),
        ("unknown_type", unknown, unknown_sig.as_str(), 200),
    ];
    for (name, body, sig, expect) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                let resp = rt
                    .block_on(s.app.clone().oneshot(request(body, sig)))
                    .unwrap();
                assert_eq!(resp.status().as_u16(), expect);
                black_box(resp)
            })
        });
    }
    g.finish();
}

/// A burst over loopback HTTP; returns sorted answer times.
async fn burst(s: &Setup, total: usize, concurrency: usize) -> Vec<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let app = s.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let per_task = total / concurrency;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, url, body, sig) = (
            http.clone(),
            url.clone(),
            s.body.clone(),
            s.signature.clone(),
        );
        tasks.spawn(async move {
            let mut times = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let start = Instant::now();
                let resp = http
                    .post(&url)
                    .header("x-nango-hmac-sha256", &sig)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                times.push(start.elapsed());
            }
            times
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(t) = tasks.join_next().await {
        all.extend(t.unwrap());
    }
    all.sort();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = rt.block_on(setup());
    let mut c = Criterion::default().configure_from_args();
    oneshot(&mut c, &rt, &s);

    // Warm up the connections, then measure a burst.
    rt.block_on(burst(&s, 256, 32));
    let times = rt.block_on(burst(&s, 2048, 32));
    let stream = StreamKey::new("github", "acme-prod", "Ticket");
    let stats = s.scheduler.stats(&stream).unwrap();
    println!(
        "webhook_receiver/burst: {} webhooks over loopback HTTP, 32 concurrent senders: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; runs started {} for {} triggers",
        times.len(),
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
        stats.runs_started,
        stats.triggers,
    );
    rt.block_on(s.scheduler.shutdown());
    c.final_summary();
}
