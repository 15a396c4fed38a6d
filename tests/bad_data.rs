//! Bad data from Nango: a record without `id`, a record that is not an object,
//! unparseable metadata timestamps, an unknown `last_action`, a missing
//! `_nango_metadata`; and a huge (valid) record.
//!
//! The documented behaviour (engine module docs, README): the run of that stream stops
//! with an error naming the stream, the cursor the page was read from and the record;
//! nothing of that page is committed; other streams go on; the next run, once Nango
//! serves good data, converges.
#![cfg(feature = "sqlite")]

use std::time::Duration;

use nango_sync::sink;
use nango_sync::{Error, StreamKey, SyncOptions};
use nango_sync_testkit::{Fault, Harness, TestStore};
use serde_json::json;

/// The fake, a SQLite store and an engine reading pages of `page_size`.
async fn setup(page_size: u32) -> Harness {
    Harness::builder()
        .page_size(page_size)
        .timeout(Duration::from_secs(60))
        .start(TestStore::sqlite().await)
        .await
}

fn stream() -> StreamKey {
    StreamKey::new("github", "acme", "Ticket")
}

const META: &str = r#"{"first_seen_at":"2026-01-02T03:04:05.123456+00:00","last_modified_at":"2026-01-02T03:04:05.123456+00:00","last_action":"ADDED","deleted_at":null,"pruned_at":null,"cursor":"YmFkLXJlY29yZA=="}"#;

/// Each kind of bad record, and what the error must say about it.
fn bad_records() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "no id",
            format!(r#"{{"title":"x","_nango_metadata":{META}}}"#),
            "record 20: missing id",
        ),
        (
            "payload not an object",
            r#""just a string""#.to_string(),
            "record 20 to be a JSON object",
        ),
        (
            "payload an array",
            r#"[1,2,3]"#.to_string(),
            "record 20 to be a JSON object",
        ),
        (
            "unparseable timestamp",
            format!(
                r#"{{"id":"bad-ts","_nango_metadata":{}}}"#,
                META.replace(
                    r#""last_modified_at":"2026-01-02T03:04:05.123456+00:00""#,
                    r#""last_modified_at":"yesterday at noon""#
                )
            ),
            "record 20 (id \"bad-ts\"): _nango_metadata: last_modified_at",
        ),
        (
            "unknown last_action",
            format!(
                r#"{{"id":"bad-action","_nango_metadata":{}}}"#,
                META.replace("ADDED", "MOVED")
            ),
            "record 20 (id \"bad-action\"): _nango_metadata: unknown last_action \"MOVED\"",
        ),
        (
            "no metadata",
            r#"{"id":"bare"}"#.to_string(),
            "record 20 (id \"bare\"): missing _nango_metadata",
        ),
        (
            "id of the wrong type",
            format!(r#"{{"id":{{"nested":1}},"_nango_metadata":{META}}}"#),
            "record 20: id must be a string or a number",
        ),
    ]
}

#[tokio::test]
async fn a_bad_record_stops_the_run_naming_stream_cursor_and_record_and_commits_nothing_of_its_page()
 {
    for (kind, raw, expected) in bad_records() {
        let s = setup(20).await;
        s.fake.generate(&stream(), 60, 60);
        // The second page carries the bad record (after its 20 good ones): faults apply
        // to requests in order, and `Slow(0)` answers the first one normally.
        s.fake.inject(Fault::Slow(Duration::ZERO));
        s.fake.inject(Fault::RawRecord(raw.clone()));
        let err = s.sync(&stream()).await.unwrap_err();
        assert!(
            matches!(err.root(), Error::MalformedPage { .. }),
            "{kind}: {err}"
        );
        assert!(!err.is_retryable(), "{kind}: bad data is not retried");
        let text = err.to_string();
        let state = s.sink.stream_state(&stream()).await.unwrap();
        let cursor = state.cursor.clone().expect("the first page was committed");
        assert!(
            text.contains("github/acme/Ticket"),
            "{kind}: stream: {text}"
        );
        assert!(
            text.contains(&format!(", cursor {}", &cursor.as_str()[..40])),
            "{kind}: the cursor the page was read from: {text}"
        );
        assert!(text.contains(expected), "{kind}: record: {text}");
        // Nothing of the bad page: exactly the first page is stored.
        let stored = sink::read_all(&*s.sink, &stream(), true).await.unwrap();
        assert_eq!(stored.len(), 20, "{kind}: only the first page is stored");
        let upstream = s.fake.records(&stream());
        assert_eq!(upstream[19].meta.cursor, cursor, "{kind}");
        for r in &upstream[20..] {
            assert!(
                s.sink.get(&stream(), &r.id).await.unwrap().is_none(),
                "{kind}: {} of the bad page was committed",
                r.id
            );
        }
        // The run summary keeps the error, for `status`.
        let last = s.sink.streams().await.unwrap()[0].last_run.clone().unwrap();
        assert!(
            last.error.as_deref().is_some_and(|e| e.contains(expected)),
            "{kind}: {last:?}"
        );
        // Nango serves good data again: the next run converges from the stored cursor.
        let report = s.sync(&stream()).await.unwrap();
        // (The first sync was a full re-read: the next run resumes it from the cursor.)
        assert_eq!(report.counts.added, 40, "{kind}");
        s.assert_converged(&stream()).await;
    }
}

#[tokio::test]
async fn a_bad_record_on_the_first_page_names_the_start() {
    let s = setup(50).await;
    s.fake.generate(&stream(), 10, 10);
    s.fake.inject(Fault::RawRecord(r#"{"id":"x"}"#.into()));
    let err = s.sync(&stream()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("github/acme/Ticket, no cursor") && text.contains("record 10 (id \"x\")"),
        "{text}"
    );
    assert_eq!(s.sink.stream_state(&stream()).await.unwrap().cursor, None);
    assert!(
        sink::read_all(&*s.sink, &stream(), true)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn other_streams_go_on_when_one_gets_bad_data() {
    let s = setup(25).await;
    let streams: Vec<StreamKey> = ["Ticket", "Issue", "Comment"]
        .iter()
        .map(|m| StreamKey::new("github", "acme", *m))
        .collect();
    for st in &streams {
        s.fake.generate(st, 60, 60);
    }
    // The first request of whichever stream asks first gets the bad record.
    s.fake.inject(Fault::RawRecord(r#"[]"#.into()));
    let results = s.engine.sync_all(&streams, &SyncOptions::default()).await;
    let failed: Vec<(&StreamKey, &Error)> = streams
        .iter()
        .zip(&results)
        .filter_map(|(st, r)| r.as_ref().err().map(|e| (st, e)))
        .collect();
    assert_eq!(failed.len(), 1, "{results:?}");
    let (bad, err) = failed[0];
    assert!(
        err.to_string().contains(&bad.to_string()),
        "the error names its stream: {err}"
    );
    for st in streams.iter().filter(|st| *st != bad) {
        s.assert_converged(st).await;
    }
    // The failed stream catches up on its next run.
    s.sync(bad).await.unwrap();
    s.assert_converged(bad).await;
}

#[tokio::test]
async fn a_huge_record_is_stored_whole() {
    let s = setup(100).await;
    let big = "é0123456789abcdef\"\\".repeat(5 * 1024 * 1024 / 20);
    s.fake.generate(&stream(), 30, 30);
    s.fake.save(
        &stream(),
        vec![json!({"id": "huge", "body": big, "n": [1, 2, 3]})],
    );
    s.fake.generate(&stream(), 30, 30);
    let report = s.sync(&stream()).await.unwrap();
    assert_eq!(report.counts.added, 61);
    let stored = s.sink.get(&stream(), "huge").await.unwrap().unwrap();
    let v = stored.payload.to_value();
    assert!(v["body"].as_str().unwrap().len() > 5_000_000);
    assert_eq!(v["body"].as_str().unwrap(), big);
    s.assert_converged(&stream()).await;
}
