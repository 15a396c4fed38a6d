//! Webhooks end to end: the fake Nango, the receiver served on loopback, the scheduler
//! and a SQLite store.
#![cfg(all(feature = "webhook", feature = "sqlite"))]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nango_sync::StoredRecord;
use nango_sync::engine::scheduler::{DiscoveryRule, Scheduler, SchedulerConfig};
use nango_sync::feed::{ChangeBatch, ChangeQuery, Consumer, FeedPosition, RecordCounts};
use nango_sync::sink::outbox::{
    Claim, ClaimRequest, NewOutboxItem, OutboxCounts, OutboxItem, OutboxQuery, Settlement,
};
use nango_sync::sink::{
    Commit, CommitOutcome, HistoryQuery, ListQuery, RecordSink, RunEntry, RunSummary, SharedSink,
    StreamState, StreamStatus,
};
use nango_sync::webhook::{WebhookEvent, WebhookReceiver, WebhookVerifier, router};
use nango_sync::{Engine, SecretKey, StreamKey};
use nango_sync_testkit::eventually;
use nango_sync_testkit::{FakeConfig, FakeNango, TestStore, WebhookSettings, local_live};
use serde_json::{Value, json};

const KEY: &str = "webhook-signing-key-current";
const OLD_KEY: &str = "webhook-signing-key-previous";

struct Setup {
    fake: Arc<FakeNango>,
    sink: SharedSink,
    scheduler: Scheduler,
    receiver: WebhookReceiver,
    url: String,
    http: reqwest::Client,
    _store: TestStore,
}

async fn setup(config: SchedulerConfig) -> Setup {
    setup_with(config, None).await
}

async fn setup_with(config: SchedulerConfig, gate: Option<Arc<Gate>>) -> Setup {
    let fake = Arc::new(FakeNango::start(FakeConfig::default()).await.unwrap());
    let store = TestStore::sqlite().await;
    let sink: SharedSink = match gate {
        Some(gate) => Arc::new(GatedSink {
            inner: store.sink.clone(),
            gate,
        }),
        None => store.sink.clone(),
    };
    let client = fake.client_builder().build().unwrap();
    let engine = Engine::new(client, sink.clone());
    let scheduler = Scheduler::new(engine, config);
    let receiver = WebhookReceiver::new(
        WebhookVerifier::new(KEY).with_key(OLD_KEY),
        Arc::new(scheduler.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let app = router(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Setup {
        fake,
        sink,
        scheduler,
        receiver,
        url,
        http: reqwest::Client::new(),
        _store: store,
    }
}

/// No polling and no run at registration: only webhooks make streams run.
fn webhooks_only() -> SchedulerConfig {
    SchedulerConfig {
        poll_interval: None,
        run_on_register: false,
        ..SchedulerConfig::default()
    }
}

fn stream() -> StreamKey {
    StreamKey::new("github", "acme-prod", "Ticket")
}

fn ticket(id: &str, title: &str) -> Value {
    json!({"id": id, "title": title, "labels": ["bug"]})
}

/// A sync webhook body as Nango sends it.
fn sync_body(stream: &StreamKey, full: bool) -> String {
    json!({
        "checkpoints": {"from": if full { Value::Null } else { json!("2026-11-26T19:00:00.000Z") }, "to": "2026-11-26T19:05:00.000Z"},
        "connectionId": stream.connection,
        "from": "nango",
        "model": stream.model,
        "modifiedAfter": "2026-11-26T19:00:00.000Z",
        "providerConfigKey": stream.integration,
        "queryTimeStamp": "2026-11-26T19:05:01.000Z",
        "responseResults": {"added": 1, "deleted": 0, "updated": 0},
        "success": true,
        "syncName": "tickets",
        "syncType": "INCREMENTAL",
        "syncVariant": "base",
        "type": "sync"
    })
    .to_string()
}

impl Setup {
    async fn post(&self, body: &str, key: Option<&str>) -> u16 {
        let mut req = self
            .http
            .post(&self.url)
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

    async fn local(&self, stream: &StreamKey) -> BTreeMap<String, Value> {
        local_live(&*self.sink, stream).await
    }

    /// Wait (generously) until the store holds exactly what the fake holds.
    async fn converged(&self, stream: &StreamKey) {
        eventually(Duration::from_secs(60), || async {
            if self.local(stream).await == self.fake.live_payloads(stream) {
                return Ok(());
            }
            Err(format!("the store did not converge for {stream}"))
        })
        .await
    }

    async fn idle(&self, stream: &StreamKey) {
        eventually(Duration::from_secs(60), || async {
            let st = self.scheduler.stats(stream).unwrap();
            if !st.running && !st.pending && st.runs_started == st.runs_finished {
                return Ok(());
            }
            Err(format!("{stream} did not become idle: {st:?}"))
        })
        .await
    }

    async fn upstream_error(&self, stream: &StreamKey) -> Option<String> {
        self.sink
            .streams()
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.stream == *stream)
            .and_then(|s| s.upstream_error)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_lands_the_data_in_the_store() {
    let s = setup(webhooks_only()).await;
    let k = stream();
    s.scheduler.register(k.clone());
    s.fake.generate(&k, 250, 100);
    assert_eq!(s.post(&sync_body(&k, false), Some(KEY)).await, 200);
    s.converged(&k).await;

    // A change upstream and its webhook: the next run pulls it with the stored cursor.
    s.fake.save(
        &k,
        vec![ticket("tk-1", "new"), ticket("rec-0000001", "edited")],
    );
    assert_eq!(s.post(&sync_body(&k, false), Some(KEY)).await, 200);
    s.converged(&k).await;
    s.idle(&k).await;
    let pulls_without_cursor = s
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == "/records" && !r.raw_query.contains("cursor="))
        .count();
    assert_eq!(
        pulls_without_cursor, 1,
        "only the first run reads from no cursor; a webhook pulls from the stored one"
    );
    assert!(
        s.fake
            .requests()
            .iter()
            .all(|r| !r.raw_query.contains("modified_after")),
        "the webhook's modifiedAfter is never used"
    );
    s.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_unsigned_webhooks_get_401_and_trigger_nothing() {
    let s = setup(webhooks_only()).await;
    let k = stream();
    s.scheduler.register(k.clone());
    s.fake.generate(&k, 10, 10);
    let body = sync_body(&k, false);
    assert_eq!(s.post(&body, None).await, 401);
    assert_eq!(s.post(&body, Some("an-attacker-key")).await, 401);
    // Signed, then tampered with.
    let sig = WebhookVerifier::sign(&SecretKey::new(KEY), body.as_bytes());
    let tampered = body.replace("acme-prod", "acme-prodx");
    let status = s
        .http
        .post(&s.url)
        .header("X-Nango-Hmac-Sha256", sig)
        .body(tampered)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = s.scheduler.stats(&k).unwrap();
    assert_eq!((st.triggers, st.runs_started), (0, 0));
    assert_eq!(s.fake.request_count(), 0, "nothing was fetched");
    assert_eq!(s.receiver.stats().unauthorized, 3);
    assert!(s.local(&k).await.is_empty());
    s.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_key_rotation_the_previous_key_is_accepted() {
    let s = setup(webhooks_only()).await;
    let k = stream();
    s.scheduler.register(k.clone());
    s.fake.save(&k, vec![ticket("tk-1", "one")]);
    assert_eq!(s.post(&sync_body(&k, false), Some(OLD_KEY)).await, 200);
    s.converged(&k).await;
    s.fake.save(&k, vec![ticket("tk-2", "two")]);
    assert_eq!(s.post(&sync_body(&k, false), Some(KEY)).await, 200);
    s.converged(&k).await;
    // After the overlap the old key is dropped.
    s.receiver.set_verifier(WebhookVerifier::new(KEY));
    assert_eq!(s.post(&sync_body(&k, false), Some(OLD_KEY)).await, 401);
    s.scheduler.shutdown().await;
}

/// Holds every commit while closed, so a test can keep a run in flight for as long as
/// it needs (a burst of webhooks over loopback HTTP takes a while on a loaded machine).
#[derive(Debug)]
struct Gate {
    open: tokio::sync::watch::Sender<bool>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Gate {
    fn closed() -> Arc<Gate> {
        Arc::new(Gate {
            open: tokio::sync::watch::channel(false).0,
            waiting: Default::default(),
        })
    }
    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }
}

/// A store whose commits wait at the [`Gate`].
#[derive(Debug)]
struct GatedSink {
    inner: SharedSink,
    gate: Arc<Gate>,
}

impl RecordSink for GatedSink {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn stream_state(&self, stream: &StreamKey) -> nango_sync::Result<StreamState> {
        self.inner.stream_state(stream).await
    }
    async fn commit(&self, commit: Commit) -> nango_sync::Result<CommitOutcome> {
        let mut rx = self.gate.open.subscribe();
        self.gate
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = rx.wait_for(|open| *open).await;
        self.gate
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.commit(commit).await
    }
    async fn set_upstream_error(
        &self,
        stream: &StreamKey,
        error: Option<&str>,
    ) -> nango_sync::Result<()> {
        self.inner.set_upstream_error(stream, error).await
    }
    async fn get(&self, stream: &StreamKey, id: &str) -> nango_sync::Result<Option<StoredRecord>> {
        self.inner.get(stream, id).await
    }
    async fn list(
        &self,
        stream: &StreamKey,
        query: &ListQuery,
    ) -> nango_sync::Result<Vec<StoredRecord>> {
        self.inner.list(stream, query).await
    }
    async fn streams(&self) -> nango_sync::Result<Vec<StreamStatus>> {
        self.inner.streams().await
    }
    async fn record_run(
        &self,
        stream: &StreamKey,
        run: &RunSummary,
        keep: usize,
    ) -> nango_sync::Result<()> {
        self.inner.record_run(stream, run, keep).await
    }
    async fn last_run(&self, stream: &StreamKey) -> nango_sync::Result<Option<RunSummary>> {
        self.inner.last_run(stream).await
    }
    async fn run_history(&self, query: &HistoryQuery) -> nango_sync::Result<Vec<RunEntry>> {
        self.inner.run_history(query).await
    }
    async fn changes(&self, query: &ChangeQuery) -> nango_sync::Result<ChangeBatch> {
        self.inner.changes(query).await
    }
    async fn last_seq(&self) -> nango_sync::Result<u64> {
        self.inner.last_seq().await
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe()
    }
    async fn consumer_position(&self, consumer: &str) -> nango_sync::Result<FeedPosition> {
        self.inner.consumer_position(consumer).await
    }
    async fn ack(
        &self,
        consumer: &str,
        position: &FeedPosition,
    ) -> nango_sync::Result<FeedPosition> {
        self.inner.ack(consumer, position).await
    }
    async fn consumers(&self) -> nango_sync::Result<Vec<Consumer>> {
        self.inner.consumers().await
    }
    async fn remove_consumer(&self, consumer: &str) -> nango_sync::Result<bool> {
        self.inner.remove_consumer(consumer).await
    }
    async fn count(&self, stream: &StreamKey) -> nango_sync::Result<RecordCounts> {
        self.inner.count(stream).await
    }

    // The outbox: the inner store's.
    async fn outbox_enqueue(&self, item: NewOutboxItem) -> nango_sync::Result<OutboxItem> {
        self.inner.outbox_enqueue(item).await
    }
    async fn outbox_claim(&self, request: &ClaimRequest) -> nango_sync::Result<Option<OutboxItem>> {
        self.inner.outbox_claim(request).await
    }
    async fn outbox_extend(
        &self,
        claim: &Claim,
        until: nango_sync::Timestamp,
        now: nango_sync::Timestamp,
    ) -> nango_sync::Result<bool> {
        self.inner.outbox_extend(claim, until, now).await
    }
    async fn outbox_settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now: nango_sync::Timestamp,
    ) -> nango_sync::Result<bool> {
        self.inner.outbox_settle(claim, settlement, now).await
    }
    async fn outbox_get(&self, id: u64) -> nango_sync::Result<Option<OutboxItem>> {
        self.inner.outbox_get(id).await
    }
    async fn outbox_list(&self, query: &OutboxQuery) -> nango_sync::Result<Vec<OutboxItem>> {
        self.inner.outbox_list(query).await
    }
    async fn outbox_counts(&self) -> nango_sync::Result<OutboxCounts> {
        self.inner.outbox_counts().await
    }
    async fn outbox_purge(
        &self,
        finished_before: nango_sync::Timestamp,
    ) -> nango_sync::Result<u64> {
        self.inner.outbox_purge(finished_before).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_a_burst_of_1000_webhooks_cause_at_most_two_runs() {
    let gate = Gate::closed();
    gate.set(true);
    let s = setup_with(webhooks_only(), Some(gate.clone())).await;
    let k = stream();
    s.scheduler.register(k.clone());
    s.fake.generate(&k, 500, 100);

    // The same webhook delivered twice (a timeout made Nango send it again).
    let body = sync_body(&k, false);
    assert_eq!(s.post(&body, Some(KEY)).await, 200);
    assert_eq!(s.post(&body, Some(KEY)).await, 200);
    s.converged(&k).await;
    s.idle(&k).await;
    let st = s.scheduler.stats(&k).unwrap();
    assert!(
        (1..=2).contains(&st.runs_started),
        "{} runs",
        st.runs_started
    );

    // A change, then 1,000 webhooks at once. The first one starts a run, which is held
    // at its first commit until the whole burst was answered: every other webhook of
    // the burst arrives while it is in flight.
    s.fake.save(&k, vec![ticket("tk-burst", "burst")]);
    let before = s.scheduler.stats(&k).unwrap().runs_started;
    gate.set(false);
    assert_eq!(s.post(&body, Some(KEY)).await, 200);
    eventually(Duration::from_secs(60), || async {
        match gate.waiting.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Err("the run did not reach its commit".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..20 {
        let http = s.http.clone();
        let url = s.url.clone();
        let body = body.clone();
        tasks.spawn(async move {
            let sig = WebhookVerifier::sign(&SecretKey::new(KEY), body.as_bytes());
            for _ in 0..(if chunk == 0 { 49 } else { 50 }) {
                let status = http
                    .post(&url)
                    .header("X-Nango-Hmac-Sha256", &sig)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 200, "chunk {chunk}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    gate.set(true);
    s.converged(&k).await;
    s.idle(&k).await;
    let st = s.scheduler.stats(&k).unwrap();
    let runs = st.runs_started - before;
    assert!((1..=2).contains(&runs), "{runs} runs for a burst of 1000");
    assert_eq!(st.triggers, 1002);
    assert!(st.triggers_coalesced >= 1002 - 4);
    assert_eq!(s.receiver.stats().accepted, 1002);
    s.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_webhooks_lost_the_poll_catches_up_within_one_interval() {
    let interval = Duration::from_millis(500);
    let s = setup(SchedulerConfig {
        poll_interval: Some(interval),
        run_on_register: true,
        ..SchedulerConfig::default()
    })
    .await;
    let k = stream();
    // The fake sends webhooks to the receiver, but every one is lost.
    s.fake.set_webhooks(Some(
        WebhookSettings::new(s.url.clone(), SecretKey::new(KEY)).drop_all(true),
    ));
    s.fake.generate(&k, 120, 50);
    s.scheduler.register(k.clone());
    s.converged(&k).await;
    let polls_before = s.scheduler.stats(&k).unwrap().polls;
    s.fake
        .save(&k, vec![ticket("tk-late", "only a poll finds me")]);
    s.fake.delete(&k, &["rec-0000003"]);
    s.converged(&k).await;
    let st = s.scheduler.stats(&k).unwrap();
    assert!(st.polls > polls_before, "the poll did it");
    assert_eq!(st.triggers, 0, "no webhook arrived");
    assert!(s.fake.webhook_deliveries().iter().all(|d| d.dropped));
    assert!(!s.fake.webhook_deliveries().is_empty());
    s.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_delivers_signed_webhooks_that_trigger_syncs() {
    let s = setup(webhooks_only()).await;
    let k = stream();
    s.scheduler.register(k.clone());
    s.fake.set_webhooks(Some(WebhookSettings::new(
        s.url.clone(),
        SecretKey::new(KEY),
    )));
    s.fake.generate(&k, 300, 100);
    s.converged(&k).await;
    s.fake
        .save(&k, vec![ticket("tk-9", "via the fake's webhook")]);
    s.converged(&k).await;
    s.idle(&k).await;
    let deliveries = s.fake.webhook_deliveries();
    assert!(
        deliveries.iter().all(|d| d.status == Some(200)),
        "{deliveries:?}"
    );
    assert!(s.scheduler.stats(&k).unwrap().triggers >= 2);
    s.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_webhook_type_gets_200_and_changes_nothing() {
    let s = setup(webhooks_only()).await;
    let k = stream();
    s.scheduler.register(k.clone());
    s.fake.generate(&k, 10, 10);
    let mut events = s.scheduler.subscribe();
    for body in [
        r#"{"type":"brand_new_kind","connectionId":"acme-prod","providerConfigKey":"github"}"#,
        r#"{"raw":"a provider payload Nango could not match"}"#,
    ] {
        assert_eq!(s.post(body, Some(KEY)).await, 200);
    }
    assert_eq!(events.recv().await.unwrap().kind(), "brand_new_kind");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.scheduler.stats(&k).unwrap().runs_started, 0);
    assert_eq!(s.fake.request_count(), 0);
    assert!(s.sink.streams().await.unwrap().is_empty());
    // A verified body that is not a webhook is a 400, not a trigger.
    assert_eq!(s.post("not json", Some(KEY)).await, 400);
    s.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_webhook_shows_in_status_until_a_success() {
    let s = setup(webhooks_only()).await;
    let (a, b) = (stream(), StreamKey::new("github", "acme-prod", "User"));
    s.scheduler.register(a.clone());
    s.scheduler.register(b.clone());
    let failure = json!({
        "connectionId": "acme-prod", "error": {"description": "token expired", "type": "auth_error"},
        "failedAt": "2026-11-26T19:05:00.000Z", "from": "nango", "model": "Ticket,User",
        "providerConfigKey": "github", "startedAt": "2026-11-26T19:00:00.000Z",
        "success": false, "syncName": "tickets", "syncType": "INCREMENTAL", "type": "sync"
    })
    .to_string();
    assert_eq!(s.post(&failure, Some(KEY)).await, 200);
    eventually(Duration::from_secs(30), || async {
        match s.upstream_error(&b).await {
            Some(_) => Ok(()),
            None => Err(format!("no upstream error recorded for {b}")),
        }
    })
    .await;
    let err = s.upstream_error(&a).await.unwrap();
    assert!(err.contains("token expired"), "{err}");
    assert_eq!(
        s.scheduler.stats(&a).unwrap().runs_started,
        0,
        "a failure triggers nothing"
    );

    s.fake.save(&a, vec![ticket("tk-1", "back")]);
    assert_eq!(s.post(&sync_body(&a, false), Some(KEY)).await, 200);
    s.converged(&a).await;
    eventually(Duration::from_secs(30), || async {
        match s.upstream_error(&a).await {
            None => Ok(()),
            Some(e) => Err(format!("{a} still has its upstream error: {e}")),
        }
    })
    .await;
    assert!(
        s.upstream_error(&b).await.is_some(),
        "User is still failing"
    );
    s.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_announced_by_a_webhook_starts_syncing_by_itself() {
    let s = setup(webhooks_only()).await;
    s.scheduler
        .add_discovery_rule(DiscoveryRule::new("github", ["Ticket"]));
    let new = StreamKey::new("github", "new-customer", "Ticket");
    s.fake.generate(&new, 150, 50);
    let mut events = s.scheduler.subscribe();
    let auth = json!({
        "authMode": "OAUTH2", "connectionId": "new-customer", "environment": "prod",
        "from": "nango", "operation": "creation", "provider": "github",
        "providerConfigKey": "github", "success": true, "type": "auth"
    })
    .to_string();
    assert_eq!(s.post(&auth, Some(KEY)).await, 200);
    match events.recv().await.unwrap() {
        WebhookEvent::Auth(a) => assert_eq!(a.operation.as_deref(), Some("creation")),
        other => panic!("expected the auth event, got {other:?}"),
    }
    assert!(
        !s.scheduler.is_registered(&new),
        "auth webhooks register nothing"
    );

    assert_eq!(s.post(&sync_body(&new, true), Some(KEY)).await, 200);
    assert!(s.scheduler.is_registered(&new));
    s.converged(&new).await;

    // A model the rule does not name stays unregistered.
    let other = StreamKey::new("github", "new-customer", "User");
    s.fake.generate(&other, 5, 5);
    assert_eq!(s.post(&sync_body(&other, false), Some(KEY)).await, 200);
    assert!(!s.scheduler.is_registered(&other));
    s.scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_webhook_re_reads_and_sweeps() {
    let s = setup(webhooks_only()).await;
    let k = stream();
    s.scheduler.register(k.clone());
    s.fake.generate(&k, 40, 40);
    assert_eq!(s.post(&sync_body(&k, false), Some(KEY)).await, 200);
    s.converged(&k).await;
    s.idle(&k).await;
    // Nango's cache is emptied and refilled: old records vanish without a delete.
    s.fake.hard_reset(&k);
    s.fake.save(&k, vec![ticket("tk-after-reset", "fresh")]);
    assert_eq!(s.post(&sync_body(&k, true), Some(KEY)).await, 200);
    s.converged(&k).await;
    assert_eq!(s.local(&k).await.len(), 1);
    s.scheduler.shutdown().await;
}

/// A receiver that answers scripted statuses and keeps what it got.
async fn scripted_receiver(
    statuses: Vec<u16>,
) -> (
    String,
    Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
) {
    use axum::extract::State;
    type Seen = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>;
    let seen: Seen = Arc::default();
    let statuses = Arc::new(std::sync::Mutex::new(statuses.into_iter()));
    async fn answer(
        State((seen, statuses)): State<(Seen, Arc<std::sync::Mutex<std::vec::IntoIter<u16>>>)>,
        headers: axum::http::HeaderMap,
        body: String,
    ) -> axum::http::StatusCode {
        seen.lock().unwrap().push((headers, body));
        let code = statuses.lock().unwrap().next().unwrap_or(200);
        axum::http::StatusCode::from_u16(code).unwrap()
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(answer))
        .with_state((seen.clone(), statuses));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_signs_sorts_and_retries_like_nango() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let k = stream();
    let fast = vec![Duration::from_millis(10), Duration::from_millis(20)];

    // 5xx twice, then 200: three attempts, both signatures, sorted keys.
    let (url, seen) = scripted_receiver(vec![503, 500, 200]).await;
    fake.set_webhooks(Some(
        WebhookSettings::new(url, SecretKey::new(KEY)).retry_delays(fast.clone()),
    ));
    let d = fake.send_sync_webhook(&k, true).await;
    assert_eq!((d.attempts, d.status), (3, Some(200)));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let (headers, body) = &seen[2];
    let verifier = WebhookVerifier::new(KEY).allow_legacy_signature(true);
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_string());
    verifier
        .verify(h("x-nango-hmac-sha256").as_deref(), None, body.as_bytes())
        .unwrap();
    verifier
        .verify(None, h("x-nango-signature").as_deref(), body.as_bytes())
        .unwrap();
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    assert!(h("user-agent").unwrap().starts_with("nango/"));
    let value: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        &nango_sync_testkit::fake::canonical_json(&value),
        body,
        "keys sorted"
    );
    match WebhookEvent::parse(body.as_bytes()).unwrap() {
        WebhookEvent::Sync(w) => {
            assert!(w.is_full_sync());
            assert_eq!(w.stream(), k);
        }
        other => panic!("{other:?}"),
    }

    // 4xx and 3xx are never retried; a network error is, up to three attempts.
    for (status, attempts) in [(400u16, 1u32), (401, 1), (302, 1)] {
        let (url, _) = scripted_receiver(vec![status]).await;
        fake.set_webhooks(Some(
            WebhookSettings::new(url, SecretKey::new(KEY)).retry_delays(fast.clone()),
        ));
        let d = fake.send_sync_webhook(&k, false).await;
        assert_eq!((d.attempts, d.status), (attempts, Some(status)));
    }
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    fake.set_webhooks(Some(
        WebhookSettings::new(closed, SecretKey::new(KEY)).retry_delays(fast),
    ));
    let d = fake
        .send_webhook(&json!({"type": "auth", "b": 1, "a": 2}))
        .await;
    assert_eq!((d.attempts, d.status), (3, None));
    assert!(d.error.is_some());
    assert_eq!(d.kind, "auth");
}
