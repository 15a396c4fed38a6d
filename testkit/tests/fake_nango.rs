//! The fake Nango server: pagination at scale, byte budget, ordering, faults, the control
//! API, determinism, and the crate's own client against it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use nango_sync::{Cursor, NangoClient, RecordsQuery, RetryConfig, StreamKey, Timestamp};
use nango_sync_testkit::{FakeConfig, FakeNango, Fault};
use serde_json::{Value, json};

fn setup() {
    nango_sync::client::install_crypto_provider();
}

async fn fake() -> FakeNango {
    setup();
    FakeNango::start(FakeConfig::default()).await.unwrap()
}

fn stream() -> StreamKey {
    StreamKey::new("github", "acme-prod", "Ticket")
}

/// A raw `GET /records` with the right headers; returns status, content type and body.
async fn get(fake: &FakeNango, query: &str) -> (u16, String, String) {
    get_as(fake, query, &stream(), Some(fake.secret_key().expose())).await
}

async fn get_as(
    fake: &FakeNango,
    query: &str,
    s: &StreamKey,
    key: Option<&str>,
) -> (u16, String, String) {
    let mut req = reqwest::Client::new()
        .get(format!("{}/records?{query}", fake.url()))
        .header("Connection-Id", &s.connection)
        .header("Provider-Config-Key", &s.integration);
    if let Some(key) = key {
        req = req.header("Authorization", format!("Bearer {key}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

async fn json_body(resp: reqwest::Response) -> Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null)
}

fn client(fake: &FakeNango) -> NangoClient {
    NangoClient::builder()
        .host(fake.url())
        .secret_key(fake.secret_key())
        .retry(RetryConfig::fast())
        .build()
        .unwrap()
}

/// Page through a stream with the crate's client; returns the ids in order and the pages.
async fn read_all(fake: &FakeNango, s: &StreamKey, limit: u32) -> (Vec<String>, usize) {
    let client = client(fake);
    let mut cursor: Option<Cursor> = None;
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_records(&RecordsQuery::new(s).limit(limit).cursor(cursor.as_ref()))
            .await
            .unwrap();
        pages += 1;
        assert!(page.records.len() <= limit as usize);
        ids.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next_cursor {
            Some(c) => {
                assert_eq!(
                    Some(&c),
                    page.records.last().map(|r| &r.meta.cursor),
                    "next_cursor is the last record's cursor"
                );
                cursor = Some(c);
            }
            None => break,
        }
        assert!(pages < 100_000, "runaway pagination");
    }
    (ids, pages)
}

fn cursor_parts(c: &str) -> (Timestamp, uuid::Uuid) {
    let text =
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(c).unwrap()).unwrap();
    let (t, u) = text.split_once("||").unwrap();
    (
        Timestamp::parse(t).unwrap(),
        uuid::Uuid::parse_str(u).unwrap(),
    )
}

#[tokio::test]
async fn client_pages_through_thousands_of_records_exactly_once() {
    let fake = fake().await;
    let s = stream();
    let effect = fake.generate(&s, 5_000, 500);
    assert_eq!(effect.added.len(), 5_000);
    fake.delete(&s, &["rec-0000010", "rec-0004999"]);
    fake.save(&s, vec![json!({"id": "rec-0000020", "title": "changed"})]);

    let (ids, pages) = read_all(&fake, &s, 700).await;
    assert_eq!(pages, 8);
    assert_eq!(
        ids.len(),
        5_000,
        "every record exactly once, deleted ones included"
    );
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 5_000);
    let expected: Vec<String> = fake.records(&s).into_iter().map(|r| r.id).collect();
    assert_eq!(ids, expected, "stream order");
    // The two deletes and the update moved to the end of the stream.
    assert_eq!(&ids[4_997..], ["rec-0000010", "rec-0004999", "rec-0000020"]);
    assert_eq!(fake.live_payloads(&s).len(), 4_998);
    let requests = fake.requests();
    assert_eq!(requests.len(), pages);
    assert!(
        requests
            .iter()
            .all(|r| r.status == 200 && r.path == "/records"),
        "{requests:?}"
    );
}

#[tokio::test]
async fn positions_strictly_increase_and_shared_timestamps_sort_by_uuid() {
    let fake = fake().await;
    let s = stream();
    fake.generate(&s, 1_000, 1_000);
    fake.generate(&s, 10, 1);
    let (status, _, body) = get(&fake, "model=Ticket&limit=10000").await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    let recs = page["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1_010);
    let positions: Vec<(Timestamp, uuid::Uuid)> = recs
        .iter()
        .map(|r| cursor_parts(r["_nango_metadata"]["cursor"].as_str().unwrap()))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing (last_modified_at, uuid)"
    );
    let first_batch: BTreeSet<Timestamp> = positions[..1_000].iter().map(|p| p.0).collect();
    assert_eq!(first_batch.len(), 1, "one timestamp per batch");
    let singles: BTreeSet<Timestamp> = positions[1_000..].iter().map(|p| p.0).collect();
    assert_eq!(singles.len(), 10);
    // Reading from the middle of a shared timestamp continues exactly after it.
    let mid = recs[499]["_nango_metadata"]["cursor"].as_str().unwrap();
    let (_, _, body) = get(
        &fake,
        &format!(
            "model=Ticket&limit=3&cursor={}",
            mid.replace('=', "%3D")
                .replace('+', "%2B")
                .replace('/', "%2F")
        ),
    )
    .await;
    let page: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&Value> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(
        ids,
        vec![&recs[500]["id"], &recs[501]["id"], &recs[502]["id"]]
    );
}

#[tokio::test]
async fn byte_budget_gives_short_pages_with_a_cursor() {
    let fake = fake().await;
    let s = stream();
    fake.generate(&s, 300, 300);
    fake.set_max_response_bytes(Some(20_000));
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!(
                "model=Ticket&limit=1000&cursor={}",
                c.replace('=', "%3D")
                    .replace('+', "%2B")
                    .replace('/', "%2F")
            ),
            None => "model=Ticket&limit=1000".to_string(),
        };
        let (status, _, body) = get(&fake, &q).await;
        assert_eq!(status, 200);
        assert!(body.len() <= 20_000, "page of {} bytes", body.len());
        let page: Value = serde_json::from_str(&body).unwrap();
        let recs = page["records"].as_array().unwrap();
        assert!(
            !recs.is_empty() && recs.len() < 40,
            "short page of {}",
            recs.len()
        );
        seen.extend(recs.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert!(pages >= 10, "{pages} pages");
    assert_eq!(seen.len(), 300);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 300);
    // A budget smaller than one record still serves one record per page.
    fake.set_max_response_bytes(Some(10));
    let (_, _, body) = get(&fake, "model=Ticket&limit=5").await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_string());
    // The crate's client follows short pages to the end.
    fake.set_max_response_bytes(Some(50_000));
    let (ids, pages) = read_all(&fake, &s, 1000).await;
    assert_eq!(ids.len(), 300);
    assert!(pages > 1);
}

#[tokio::test]
async fn pages_have_nango_shape_key_order_and_string_ids() {
    let fake = fake().await;
    // Through the control API the payload's key order is kept.
    let resp = reqwest::Client::new()
        .post(format!("{}/_fake/records", fake.url()))
        .bearer_auth(fake.secret_key().expose())
        .header("Content-Type", "application/json")
        .body(r#"{"integration":"github","connection":"acme-prod","model":"Ticket","records":[{"zeta":1,"id":1005,"alpha":{"b":2,"a":1}}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let effect: Value = json_body(resp).await;
    assert_eq!(effect["added"], json!(["1005"]));
    let (status, ct, body) = get(&fake, "model=Ticket").await;
    assert_eq!(
        (status, ct.as_str()),
        (200, "application/json; charset=utf-8")
    );
    assert!(body.starts_with(r#"{"next_cursor":null,"records":[{"zeta":1,"id":"1005","alpha":{"b":2,"a":1},"_nango_metadata":{"first_seen_at":""#), "{body}");
    assert!(
        body.contains(r#""last_action":"ADDED","deleted_at":null,"pruned_at":null,"cursor":""#),
        "{body}"
    );
    // Offsets are rendered as +00:00, then -05:00 after a change.
    assert!(body.contains("+00:00\""), "{body}");
    fake.set_utc_offset(-300);
    let (_, _, body) = get(&fake, "model=Ticket").await;
    assert!(
        body.contains("-05:00\"") && !body.contains("+00:00"),
        "{body}"
    );
}

#[tokio::test]
async fn mutations_follow_nango_semantics() {
    let fake = fake().await;
    let s = stream();
    let a = json!({"id": "a", "v": 1});
    assert_eq!(
        fake.save(&s, vec![a.clone(), json!({"id": "b", "v": 1})])
            .added,
        ["a", "b"]
    );
    let before = fake.records(&s);
    let e = fake.save(&s, vec![a.clone()]);
    assert_eq!(e.unchanged, ["a"]);
    assert_eq!(
        fake.records(&s),
        before,
        "an identical save changes nothing"
    );
    assert_eq!(
        fake.save(&s, vec![json!({"id": "a", "v": 2})]).updated,
        ["a"]
    );
    let rec = |id: &str| fake.records(&s).into_iter().find(|r| r.id == id).unwrap();
    assert_eq!(rec("a").meta.last_action, nango_sync::LastAction::Updated);

    // Delete with {id}: payload reduced, deleted_at in whole ms before last_modified_at.
    assert_eq!(fake.delete(&s, &["a"]).deleted, ["a"]);
    let d = rec("a");
    assert_eq!(d.payload, json!({"id": "a"}));
    assert!(d.meta.deleted_at.unwrap() < d.meta.last_modified_at);
    assert_eq!(d.meta.deleted_at.unwrap().as_micros() % 1000, 0);
    // Deleting again moves it forward and is not reported.
    let e = fake.delete(&s, &["a"]);
    assert!(e.deleted.is_empty());
    assert!(rec("a").meta.last_modified_at > d.meta.last_modified_at);
    // Undelete: ADDED with a new first_seen_at.
    assert_eq!(fake.save(&s, vec![a.clone()]).added, ["a"]);
    let u = rec("a");
    assert_eq!(u.meta.last_action, nango_sync::LastAction::Added);
    assert_eq!(u.meta.first_seen_at, u.meta.last_modified_at);
    assert!(u.meta.first_seen_at > d.meta.first_seen_at);
    // Delete with the unchanged full payload keeps it; last_modified_at == deleted_at.
    assert_eq!(fake.delete_with_payload(&s, vec![a.clone()]).deleted, ["a"]);
    let f = rec("a");
    assert_eq!(f.payload, a);
    assert_eq!(Some(f.meta.last_modified_at), f.meta.deleted_at);
    // A never-seen id appears as DELETED {id} but is not reported.
    assert!(fake.delete(&s, &["ghost"]).deleted.is_empty());
    assert_eq!(
        rec("ghost").meta.last_action,
        nango_sync::LastAction::Deleted
    );

    // Prune: payload {id}, pruned_at set, position unchanged; saving it again brings it back.
    let b_before = rec("b");
    assert_eq!(fake.prune(&s, &["b"]), 1);
    assert_eq!(fake.prune(&s, &["b"]), 0, "already pruned");
    let p = rec("b");
    assert_eq!(p.payload, json!({"id": "b"}));
    assert!(p.meta.pruned_at.is_some());
    assert_eq!(
        (p.meta.last_modified_at, &p.meta.cursor),
        (b_before.meta.last_modified_at, &b_before.meta.cursor)
    );
    assert_eq!(
        fake.live_payloads(&s)["b"],
        json!({"id": "b", "v": 1}),
        "live payloads keep the saved payload"
    );
    assert_eq!(
        fake.save(&s, vec![json!({"id": "b", "v": 1})]).unchanged,
        ["b"]
    );
    assert_eq!(rec("b").payload, json!({"id": "b", "v": 1}));
    assert_eq!(rec("b").meta.pruned_at, None);
    // Prune until a cursor is inclusive.
    let first = fake.records(&s)[0].meta.cursor.clone();
    assert_eq!(fake.prune_until(&s, first.as_str()).unwrap(), 1);
    assert!(fake.prune_until(&s, "garbage").is_err());

    // Hard reset: everything gone without events; an old cursor still works.
    let old = fake.records(&s).last().unwrap().meta.cursor.clone();
    assert_eq!(fake.hard_reset(&s), 3);
    assert!(fake.records(&s).is_empty());
    fake.save(&s, vec![json!({"id": "new"})]);
    let page = client(&fake)
        .list_records(&RecordsQuery::new(&s).cursor(Some(&old)))
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].id, "new");
}

#[tokio::test]
async fn validation_auth_and_routing_errors() {
    let fake = fake().await;
    let s = stream();
    fake.save(&s, vec![json!({"id": "a"})]);
    let key = fake.secret_key().expose().to_string();
    let code = |body: &str| {
        serde_json::from_str::<Value>(body).unwrap()["error"]["code"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let (st, _, b) = get_as(&fake, "model=Ticket", &s, None).await;
    assert_eq!((st, code(&b).as_str()), (401, "missing_auth_header"));
    let (st, _, b) = get_as(&fake, "model=Ticket", &s, Some("not-a-uuid")).await;
    assert_eq!((st, code(&b).as_str()), (401, "invalid_secret_key_format"));
    let (st, _, b) = get_as(
        &fake,
        "model=Ticket",
        &s,
        Some("4f1a7c2e-9b3d-4e8f-a6c5-1d2e3f4a5b6c"),
    )
    .await;
    assert_eq!((st, code(&b).as_str()), (401, "unknown_account"));
    let resp = reqwest::Client::new()
        .get(format!("{}/records?model=Ticket", fake.url()))
        .header("Authorization", format!("Basic {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Auth comes before query validation, which comes before the headers.
    let (st, _, b) = get_as(
        &fake,
        "modelx=1",
        &StreamKey::new("github", "nope", "Ticket"),
        None,
    )
    .await;
    assert_eq!((st, code(&b).as_str()), (401, "missing_auth_header"));
    let (st, _, b) = get_as(
        &fake,
        "model=Ticket&limit=0",
        &StreamKey::new("github", "nope", "Ticket"),
        Some(&key),
    )
    .await;
    assert_eq!((st, code(&b).as_str()), (400, "invalid_query_params"));
    let (st, _, b) = get_as(
        &fake,
        "model=Ticket",
        &StreamKey::new("github", "nope", "Ticket"),
        Some(&key),
    )
    .await;
    assert_eq!((st, code(&b).as_str()), (400, "unknown_connection"));
    let resp = reqwest::Client::new()
        .get(format!("{}/records?model=Ticket", fake.url()))
        .bearer_auth(&key)
        .header("Connection-Id", "acme-prod")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = json_body(resp).await;
    assert_eq!(body["error"]["code"], "invalid_headers");
    assert_eq!(
        body["error"]["errors"][0]["path"],
        json!(["provider-config-key"])
    );

    for (q, want) in [
        (
            "model=Ticket&modifiedAfter=2026-01-01T00:00:00Z",
            "unrecognized_keys",
        ),
        ("model=Ticket&limit=10001", "too_big"),
        ("model=ticket", "invalid_format"),
        ("model=Ticket&variant=a%20b", "invalid_format"),
        ("model=Ticket&filter=nope", "invalid_value"),
    ] {
        let (st, _, b) = get(&fake, q).await;
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            (st, v["error"]["errors"][0]["code"].as_str().unwrap()),
            (400, want),
            "{q}: {b}"
        );
    }
    let (st, _, b) = get(&fake, "model=Ticket&cursor=not-a-valid-cursor").await;
    assert_eq!(
        (st, b.as_str()),
        (
            500,
            r#"{"error":{"code":"server_error","message":"Failed to fetch records"}}"#
        )
    );
    let (st, _, b) = get(&fake, "model=Contact").await;
    assert_eq!(
        (st, b.as_str()),
        (200, r#"{"next_cursor":null,"records":[]}"#)
    );
    // A variant is its own stream.
    fake.save(&s.clone().with_variant("eu"), vec![json!({"id": "eu-1"})]);
    let (_, _, b) = get(&fake, "model=Ticket&variant=eu").await;
    assert!(b.contains("\"eu-1\"") && !b.contains("\"a\""), "{b}");

    // Non-JSON content type, unknown paths.
    let resp = reqwest::Client::new()
        .get(format!("{}/records?model=Ticket", fake.url()))
        .bearer_auth(&key)
        .header("Content-Type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = reqwest::Client::new()
        .get(format!("{}/nope", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let html = FakeNango::start(FakeConfig {
        unknown_path_html: true,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{}/nope", html.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn injected_faults() {
    let fake = fake().await;
    let s = stream();
    fake.generate(&s, 10, 10);

    fake.inject(Fault::Status(503));
    let (st, ct, b) = get(&fake, "model=Ticket").await;
    assert_eq!(st, 503);
    assert!(ct.starts_with("application/json"));
    assert!(serde_json::from_str::<Value>(&b).unwrap()["error"]["code"].is_string());

    fake.inject(Fault::RateLimited { retry_after: 0 });
    let resp = reqwest::Client::new()
        .get(format!("{}/records?model=Ticket", fake.url()))
        .bearer_auth(fake.secret_key().expose())
        .header("Connection-Id", "acme-prod")
        .header("Provider-Config-Key", "github")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "0");
    assert!(resp.headers().contains_key("x-ratelimit-reset"));
    assert_eq!(json_body(resp).await["error"]["code"], "too_many_request");

    fake.inject(Fault::Html);
    let (st, ct, _) = get(&fake, "model=Ticket").await;
    assert_eq!((st, ct.starts_with("text/html")), (200, true));

    fake.inject(Fault::Slow(Duration::from_millis(300)));
    let t = Instant::now();
    let (st, _, _) = get(&fake, "model=Ticket").await;
    assert_eq!(st, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    fake.inject(Fault::ShortPage(2));
    let (_, _, b) = get(&fake, "model=Ticket&limit=100").await;
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["next_cursor"],
        v["records"][1]["_nango_metadata"]["cursor"]
    );

    fake.inject(Fault::TruncatedJson);
    let (st, _, b) = get(&fake, "model=Ticket").await;
    assert_eq!(st, 200);
    assert!(serde_json::from_str::<Value>(&b).is_err());

    for fault in [Fault::CloseMidBody, Fault::CloseBeforeBody] {
        fake.inject(fault.clone());
        let result = async {
            reqwest::Client::new()
                .get(format!("{}/records?model=Ticket", fake.url()))
                .bearer_auth(fake.secret_key().expose())
                .header("Connection-Id", "acme-prod")
                .header("Provider-Config-Key", "github")
                .send()
                .await?
                .bytes()
                .await
        }
        .await;
        assert!(result.is_err(), "{fault:?}: {result:?}");
    }

    // Faults are consumed one request each; the client retries through them.
    fake.inject(Fault::Status(503));
    fake.inject(Fault::TruncatedJson);
    fake.inject(Fault::CloseMidBody);
    let page = client(&fake)
        .list_records(&RecordsQuery::new(&s).limit(100))
        .await
        .unwrap();
    assert_eq!(page.records.len(), 10);
    let statuses: Vec<u16> = fake
        .requests()
        .iter()
        .rev()
        .take(4)
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 503],
        "503, truncated, cut, then a good page"
    );
}

#[tokio::test]
async fn control_api_scripts_upstream_changes() {
    let fake = fake().await;
    let http = reqwest::Client::new();
    let key = fake.secret_key().expose().to_string();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", fake.url()))
            .bearer_auth(&key)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
    };
    // `base` with the fields of `extra` added or replaced.
    let merged = |mut base: Value, extra: Value| {
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    };
    let target = |extra: Value| {
        merged(
            json!({"integration": "github", "connection": "acme-prod", "model": "Ticket"}),
            extra,
        )
    };
    let ok = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()
    };
    let r = ok(post(
        "/_fake/records",
        target(json!({"records": [{"id": "a", "n": 1}, {"id": "b"}]})),
    )
    .await
    .unwrap())
    .await;
    assert_eq!(r["added"], json!(["a", "b"]));
    let r = ok(post(
        "/_fake/records",
        target(json!({"records": [{"id": "a", "n": 2}]})),
    )
    .await
    .unwrap())
    .await;
    assert_eq!(r["updated"], json!(["a"]));
    let r = ok(post("/_fake/delete", target(json!({"ids": ["b"]})))
        .await
        .unwrap())
    .await;
    assert_eq!(r["deleted"], json!(["b"]));
    let r = ok(post("/_fake/prune", target(json!({"ids": ["a"]})))
        .await
        .unwrap())
    .await;
    assert_eq!(r["pruned"], 1);
    let r = ok(post(
        "/_fake/generate",
        target(json!({"count": 25, "batch_size": 10})),
    )
    .await
    .unwrap())
    .await;
    assert_eq!(r["added"], 25);
    let r = ok(post(
        "/_fake/regenerate",
        target(json!({"count": 20, "revision": 1})),
    )
    .await
    .unwrap())
    .await;
    assert_eq!(
        (r["updated"].clone(), r["added"].clone()),
        (json!(20), json!(0))
    );
    let r = post(
        "/_fake/regenerate",
        target(json!({"count": 20, "revision": 0})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400, "revision 0 is the first one");
    let r = ok(http
        .get(format!("{}/_fake/streams", fake.url()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(r["streams"][0]["records"], 27);
    assert_eq!(r["streams"][0]["live"], 26);
    let r = ok(post(
        "/_fake/connections",
        json!({"integration": "github", "connection": "other"}),
    )
    .await
    .unwrap())
    .await;
    assert_eq!(r["internal_connection_id"], 9102);
    let r = ok(post("/_fake/fault", json!({"status": 502, "times": 2}))
        .await
        .unwrap())
    .await;
    assert_eq!(r["queued"], 2);
    assert_eq!(get(&fake, "model=Ticket").await.0, 502);
    assert_eq!(get(&fake, "model=Ticket").await.0, 502);
    assert_eq!(get(&fake, "model=Ticket").await.0, 200);
    let r = ok(post("/_fake/offset", json!({"minutes": 330}))
        .await
        .unwrap())
    .await;
    assert_eq!(r["utc_offset_minutes"], 330);
    assert!(get(&fake, "model=Ticket").await.2.contains("+05:30\""));
    // Scattered ids: UUID-shaped, updated in place by a regeneration of the same order.
    let scattered = |extra: Value| {
        merged(
            target(json!({"model": "Board", "id_order": "scattered"})),
            extra,
        )
    };
    let r = ok(post("/_fake/generate", scattered(json!({"count": 12})))
        .await
        .unwrap())
    .await;
    assert_eq!(r["added"], 12);
    let r = ok(post(
        "/_fake/regenerate",
        scattered(json!({"count": 12, "revision": 2})),
    )
    .await
    .unwrap())
    .await;
    assert_eq!(
        (r["updated"].clone(), r["added"].clone()),
        (json!(12), json!(0))
    );
    let board = StreamKey::new("github", "acme-prod", "Board");
    let ids: Vec<String> = fake.records(&board).into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 12);
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(uuid.get_version_num(), 4, "{id}");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_ne!(sorted, ids, "the records are not served in id order");
    let r = post(
        "/_fake/generate",
        target(json!({"count": 1, "id_order": "random"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("unknown id order"), "{body}");
    let r = ok(post("/_fake/reset", scattered(json!({}))).await.unwrap()).await;
    assert_eq!(r["removed"], 12);
    let r = ok(post("/_fake/reset", target(json!({}))).await.unwrap()).await;
    assert_eq!(r["removed"], 27);
    assert_eq!(fake.streams()[0].1, 0);

    // Same auth as the API; bad bodies are 400.
    let r = http
        .post(format!("{}/_fake/records", fake.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = post("/_fake/records", json!({"integration": "github"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post("/_fake/records", target(json!({"records": [{"no_id": 1}]})))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post("/_fake/fault", json!({})).await.unwrap();
    assert_eq!(r.status(), 400);

    // PATCH /records/prune, Nango's own prune API.
    fake.generate(&stream(), 5, 5);
    let third = fake.records(&stream())[2].meta.cursor.clone();
    let r = http
        .patch(format!("{}/records/prune", fake.url()))
        .bearer_auth(&key)
        .header("Connection-Id", "acme-prod")
        .header("Provider-Config-Key", "github")
        .header("Content-Type", "application/json")
        .body(json!({"model": "Ticket", "until_cursor": third.as_str(), "limit": 2}).to_string())
        .send()
        .await
        .unwrap();
    let r = ok(r).await;
    assert_eq!(
        (r["count"].as_u64(), r["has_more"].as_bool()),
        (Some(2), Some(true))
    );
}

#[tokio::test]
async fn generation_is_deterministic_by_seed() {
    setup();
    let s = stream();
    let start = |seed| {
        FakeNango::start(FakeConfig {
            seed,
            ..FakeConfig::default()
        })
    };
    let (a, b, c) = (
        start(7).await.unwrap(),
        start(7).await.unwrap(),
        start(8).await.unwrap(),
    );
    for f in [&a, &b, &c] {
        f.generate(&s, 200, 50);
    }
    let (pa, pb, pc) = (
        a.live_payloads(&s),
        b.live_payloads(&s),
        c.live_payloads(&s),
    );
    assert_eq!(pa, pb);
    assert_ne!(pa, pc);
    assert_eq!(pa.keys().next().unwrap(), "rec-0000001");
    assert_eq!(pa.keys().last().unwrap(), "rec-0000200");
    assert_eq!(a.secret_key(), b.secret_key());
    assert_ne!(a.secret_key(), c.secret_key());
    let key = uuid::Uuid::parse_str(a.secret_key().expose()).unwrap();
    assert_eq!(key.get_version_num(), 4);
    assert!(
        !format!("{a:?}").contains(a.secret_key().expose()),
        "no secret in Debug"
    );
    // Payloads are realistic: nested objects, arrays, non-ASCII text, 700-800 bytes.
    let sizes: Vec<usize> = pa.values().map(|v| v.to_string().len()).collect();
    let avg = sizes.iter().sum::<usize>() / sizes.len();
    assert!((650..=850).contains(&avg), "{avg}");
    let one = &pa["rec-0000001"];
    assert!(one["assignee"].is_object() && one["labels"].is_array());
    assert!(pa.values().any(|v| !v.to_string().is_ascii()));
    // Numbering continues.
    a.generate(&s, 1, 1);
    assert!(a.live_payloads(&s).contains_key("rec-0000201"));
    // A manual clock makes timestamps deterministic too.
    let t0 = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
    let cfg = || FakeConfig {
        clock_start: Some(t0),
        ..FakeConfig::default()
    };
    let (m1, m2) = (
        FakeNango::start(cfg()).await.unwrap(),
        FakeNango::start(cfg()).await.unwrap(),
    );
    m1.generate(&s, 20, 5);
    m2.generate(&s, 20, 5);
    assert_eq!(m1.records(&s), m2.records(&s));
    assert_eq!(m1.records(&s)[0].meta.last_modified_at, t0);
}

#[tokio::test]
async fn server_keeps_serving_while_tests_mutate_and_shuts_down() {
    let fake = fake().await;
    let s = stream();
    fake.generate(&s, 2_000, 100);
    let client = client(&fake);
    let reader = {
        let s = s.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..20 {
                let page = client
                    .list_records(&RecordsQuery::new(&s).limit(1000))
                    .await
                    .unwrap();
                n += page.records.len();
            }
            n
        })
    };
    for i in 0..50 {
        fake.save(
            &s,
            vec![json!({"id": format!("rec-{:07}", i + 1), "touched": i})],
        );
    }
    assert_eq!(reader.await.unwrap(), 20_000);
    let url = fake.url();
    fake.shutdown().await;
    assert!(
        reqwest::Client::new()
            .get(format!("{url}/records"))
            .send()
            .await
            .is_err(),
        "stopped"
    );
}

/// Nango's records store, re-saving a pruned record: the upsert rewrites the pruned row,
/// so the payload comes back and `pruned_at` is cleared, but nothing moves
/// `last_modified_at` or the cursor. Read by the wire, step by step: an incremental read
/// after the re-save sees nothing; a full read returns the restored payload under the
/// cursor it had.
#[tokio::test]
async fn resaving_a_pruned_record_restores_its_payload_in_place() {
    let fake = fake().await;
    let s = stream();
    let a = json!({"id": "a", "title": "ay", "n": 1});
    fake.save(&s, vec![a.clone(), json!({"id": "b", "title": "bee"})]);
    assert_eq!(fake.prune(&s, &["a", "b"]), 2);

    let read = |query: &'static str| {
        let fake = &fake;
        async move {
            let (status, _, body) = get(fake, query).await;
            assert_eq!(status, 200, "{query}: {body}");
            serde_json::from_str::<Value>(&body).unwrap()
        }
    };
    let pruned = read("model=Ticket").await;
    let records = pruned["records"].as_array().unwrap().clone();
    assert_eq!(records.len(), 2);
    for r in &records {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["id", "_nango_metadata"]),
            "pruned: {r}"
        );
        assert!(r["_nango_metadata"]["pruned_at"].is_string(), "{r}");
    }
    let by_id = |rs: &[Value], id: &str| rs.iter().find(|r| r["id"] == id).unwrap().clone();
    let last_cursor = records[1]["_nango_metadata"]["cursor"]
        .as_str()
        .unwrap()
        .to_string();

    // The integration saves "a" again, unchanged.
    let effect = fake.save(&s, vec![a.clone()]);
    assert_eq!(effect.unchanged, ["a"], "an identical re-save is no change");

    let (status, _, body) = get(
        &fake,
        &format!("model=Ticket&cursor={}", urlencode(&last_cursor)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"next_cursor": null, "records": []}),
        "an incremental read does not see a restore"
    );

    let full = read("model=Ticket").await;
    let after = full["records"].as_array().unwrap();
    assert_eq!(after.len(), 2);
    let (ra, rb) = (by_id(after, "a"), by_id(after, "b"));
    let (pa, pb) = (by_id(&records, "a"), by_id(&records, "b"));
    for field in ["cursor", "last_modified_at", "first_seen_at", "last_action"] {
        assert_eq!(
            ra["_nango_metadata"][field], pa["_nango_metadata"][field],
            "a restore keeps {field}"
        );
    }
    assert_eq!(ra["_nango_metadata"]["pruned_at"], Value::Null);
    assert_eq!(ra["title"], "ay");
    assert_eq!(ra["n"], 1);
    assert_eq!(rb, pb, "b was not saved again: still pruned");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Nango's routes are not strict about a trailing slash, and its Node SDK sends
/// `GET /records/?...`: the fake answers both forms alike, and an unknown path with 404.
#[tokio::test]
async fn routes_accept_a_trailing_slash() {
    let fake = fake().await;
    let s = stream();
    fake.save(&s, vec![json!({"id": "a"})]);
    let http = reqwest::Client::new();
    let send = |path: &str| {
        http.get(format!("{}{path}?model=Ticket", fake.url()))
            .header("Connection-Id", &s.connection)
            .header("Provider-Config-Key", &s.integration)
            .header(
                "Authorization",
                format!("Bearer {}", fake.secret_key().expose()),
            )
            .send()
    };
    let plain = send("/records").await.unwrap();
    assert_eq!(plain.status(), 200);
    let plain = json_body(plain).await;
    let slashed = send("/records/").await.unwrap();
    assert_eq!(slashed.status(), 200);
    assert_eq!(json_body(slashed).await, plain);
    assert_eq!(send("/recordz/").await.unwrap().status(), 404);
}
