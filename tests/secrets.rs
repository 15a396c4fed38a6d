//! Secret keys never appear in logs, `Debug` output or error messages, even of runs
//! that fail and retry.
#![cfg(feature = "sqlite")]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nango_sync::webhook::WebhookVerifier;
use nango_sync::{Engine, NangoClient, RetryConfig, SecretKey, StreamKey, SyncOptions};
use nango_sync_testkit::{FakeConfig, FakeNango, Fault, Harness, TestStore};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn secrets_stay_out_of_logs_debug_and_errors() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let secret = "3c6e0b8a-9c0b-4e7d-8f1a-2b3c4d5e6f70";
    let wrong = "7d1f2e3a-4b5c-4d6e-8f70-8192a3b4c5d6";
    let signing = "whsec-signing-key-do-not-print";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut texts: Vec<String> = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let fake = FakeNango::start(FakeConfig {
                secret_key: Some(SecretKey::new(secret)),
                ..FakeConfig::default()
            })
            .await
            .unwrap();
            let stream = StreamKey::new("github", "acme", "Ticket");
            fake.generate(&stream, 30, 30);
            let store = TestStore::sqlite().await;
            let sink = store.sink.clone();
            for key in [secret, wrong] {
                let client = NangoClient::builder()
                    .host(fake.url())
                    .secret_key(key)
                    .retry(RetryConfig {
                        max_attempts: 3,
                        ..RetryConfig::fast()
                    })
                    .timeout(Duration::from_millis(300))
                    .build()
                    .unwrap();
                texts.push(format!("{client:?}"));
                let engine = Engine::new(client, sink.clone());
                texts.push(format!("{engine:?}"));
                // Retries (logged), then success or a 401.
                fake.inject(Fault::Status(503));
                fake.inject(Fault::Slow(Duration::from_secs(1)));
                match engine.sync(&stream, &SyncOptions::full()).await {
                    Ok(r) => texts.push(format!("{r:?}")),
                    Err(e) => {
                        texts.push(format!("{e}"));
                        texts.push(format!("{e:?}"));
                    }
                }
            }
            let verifier = WebhookVerifier::new(signing).with_key("previous-signing-key");
            texts.push(format!("{verifier:?}"));
            let err = verifier
                .verify(Some(&"0".repeat(64)), None, b"{}")
                .unwrap_err();
            texts.push(format!("{err} {err:?}"));
            for s in sink.streams().await.unwrap() {
                texts.push(format!("{s:?}"));
            }
        });
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("retrying"),
        "the failing run logged its retries:\n{logs}"
    );
    assert!(
        texts.iter().any(|t| t.contains("401")),
        "one run failed with 401: {texts:?}"
    );
    for (what, text) in std::iter::once(("logs", &logs)).chain(texts.iter().map(|t| ("output", t)))
    {
        for s in [secret, wrong, signing, "previous-signing-key"] {
            assert!(!text.contains(s), "{what} contain a secret:\n{text}");
        }
    }
}

#[tokio::test]
async fn hostile_stream_keys_are_data_not_sql() {
    let h = Harness::start(TestStore::sqlite().await).await;
    let (fake, sink, engine) = (&h.fake, &h.sink, &h.engine);
    let hostile = [
        StreamKey::new("github", "acme'; DROP TABLE nango_records;--", "Ticket"),
        StreamKey::new(
            "github",
            "a\"b'c; DELETE FROM nango_streams WHERE '1'='1",
            "Ticket",
        ),
        StreamKey::new("github", "x' OR 1=1 --", "Ticket").with_variant("v1-_x"),
    ];
    for (i, stream) in hostile.iter().enumerate() {
        fake.save(
            stream,
            vec![serde_json::json!({"id": format!("r{i}'); --"), "n": i})],
        );
    }
    for r in engine.sync_all(&hostile, &SyncOptions::default()).await {
        r.unwrap();
    }
    let statuses = sink.streams().await.unwrap();
    assert_eq!(
        statuses.len(),
        hostile.len(),
        "every stream kept, none dropped"
    );
    for (i, stream) in hostile.iter().enumerate() {
        let r = sink
            .get(stream, &format!("r{i}'); --"))
            .await
            .unwrap()
            .expect("stored verbatim");
        assert_eq!(r.payload.to_value()["n"], i);
        assert!(
            statuses.iter().any(|s| &s.stream == stream),
            "{stream} read back verbatim"
        );
    }
    // A model name Nango would reject never reaches the store or the network.
    let bad = StreamKey::new("github", "acme", "Ticket'; DROP TABLE x;--");
    let before = fake.request_count();
    let err = engine
        .sync(&bad, &SyncOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("model name"), "{err}");
    assert_eq!(fake.request_count(), before);
}
