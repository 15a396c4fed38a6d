//! `NangoClient::pages`: every page after a cursor, each next page asked for while the
//! one before is parsed, against the fake Nango: the same pages as one `list_records`
//! after another, one request per page, the request ahead really sent ahead, and faults
//! retried or returned as `list_records` would.

use std::time::Duration;

use nango_sync::{Cursor, Error, NangoClient, Page, RecordsQuery, RetryConfig, StreamKey};
use nango_sync_testkit::{FakeConfig, FakeNango, Fault, eventually};

fn stream() -> StreamKey {
    StreamKey::new("github", "acme", "Ticket")
}

async fn fake_with(records: usize) -> (FakeNango, NangoClient) {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    fake.generate(&stream(), records, 250);
    let client = fake
        .client_builder()
        .retry(RetryConfig::fast())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    (fake, client)
}

/// The pages `list_records` returns one after another from `cursor`.
async fn one_by_one(client: &NangoClient, cursor: Option<Cursor>, limit: u32) -> Vec<Page> {
    let (s, mut cursor, mut pages) = (stream(), cursor, Vec::new());
    loop {
        let page = client
            .list_records(&RecordsQuery::new(&s).cursor(cursor.as_ref()).limit(limit))
            .await
            .unwrap();
        cursor.clone_from(&page.next_cursor);
        let last = page.is_last();
        pages.push(page);
        if last {
            return pages;
        }
    }
}

async fn all_pages(client: &NangoClient, cursor: Option<Cursor>, limit: u32) -> Vec<Page> {
    let mut pages = client.pages(&stream(), cursor, limit);
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        out.push(page.unwrap());
    }
    assert!(pages.next().await.is_none(), "nothing after the last page");
    out
}

fn records_requests(fake: &FakeNango) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path == "/records")
        .map(|r| r.raw_query)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_those_of_list_records_with_one_request_each() {
    let (fake, client) = fake_with(2_350).await;
    let expected = one_by_one(&client, None, 500).await;
    assert_eq!(expected.len(), 5);
    let before = records_requests(&fake).len();
    let pages = all_pages(&client, None, 500).await;
    assert_eq!(pages, expected);
    assert_eq!(
        records_requests(&fake).len() - before,
        5,
        "one request per page, none wasted"
    );

    // From a cursor in the middle: the rest.
    let from = expected[1].next_cursor.clone();
    assert_eq!(all_pages(&client, from, 500).await, expected[2..]);

    // A stream that fits one page: one request, nothing asked ahead.
    let before = records_requests(&fake).len();
    let one = all_pages(&client, None, 5_000).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].records.len(), 2_350);
    assert_eq!(records_requests(&fake).len() - before, 1);
}

/// The request for page 2 reaches Nango while the caller still holds page 1 and has not
/// asked for more: it went out as soon as page 1's body arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_page_is_asked_for_before_the_caller_wants_it() {
    let (fake, client) = fake_with(1_000).await;
    let expected = one_by_one(&client, None, 400).await;
    let since = records_requests(&fake).len();
    let mut pages = client.pages(&stream(), None, 400);
    let first = pages.next().await.unwrap().unwrap();
    assert_eq!(first, expected[0]);
    page_requested(&fake, since, &first).await;
    assert_eq!(pages.next().await.unwrap().unwrap(), expected[1]);
}

/// Wait until the fake has answered a request for the page after `page`, among its
/// requests after the first `since`.
async fn page_requested(fake: &FakeNango, since: usize, page: &Page) {
    let next = page.next_cursor.as_ref().expect("more pages follow");
    let encoded = format!("cursor={}", url_encoded(next.as_str()));
    eventually(Duration::from_secs(10), || async {
        let requests = records_requests(fake).split_off(since);
        if requests.iter().any(|q| q.contains(&encoded)) {
            Ok(())
        } else {
            Err(format!("no request with {encoded} among {requests:?}"))
        }
    })
    .await;
}

fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A body cut short (once at page 2, once at the request sent ahead for page 3) and a
/// 503 are retried: the pages are still exactly those of `list_records`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_faults_ahead_and_in_hand_are_retried() {
    let (fake, client) = fake_with(1_200).await;
    let expected = one_by_one(&client, None, 300).await;
    for faults in [
        vec![Fault::TruncatedJson],
        vec![Fault::Status(503)],
        vec![Fault::CloseMidBody],
    ] {
        let mut pages = client.pages(&stream(), None, 300);
        let mut got = vec![pages.next().await.unwrap().unwrap()];
        // The request for page 2 may be out already; these hit the next ones.
        for f in &faults {
            fake.inject(f.clone());
        }
        while let Some(page) = pages.next().await {
            got.push(page.unwrap_or_else(|e| panic!("{faults:?}: {e}")));
        }
        assert_eq!(got, expected, "{faults:?}");
        fake.clear_faults();
    }
}

/// A permanent error is returned once, for the page it belongs to, and ends the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_ends_the_pages() {
    let (fake, client) = fake_with(900).await;
    let since = records_requests(&fake).len();
    let mut pages = client.pages(&stream(), None, 300);
    let first = pages.next().await.unwrap().unwrap();
    assert_eq!(first.records.len(), 300);
    // Page 2 was asked for already: the error hits page 3's request.
    page_requested(&fake, since, &first).await;
    fake.inject(Fault::Status(400));
    let second = pages.next().await.unwrap().unwrap();
    assert_eq!(second.records.len(), 300);
    let err = pages.next().await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Nango { status: 400, .. }), "{err}");
    assert!(pages.next().await.is_none(), "no page after an error");
}
