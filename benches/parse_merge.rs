//! The pure parts of the sync path: parsing a page of records (raw payloads, only `id`
//! and `_nango_metadata` parsed) versus a full `serde_json::Value` parse, and the merge
//! rule over a page. Throughput in records.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nango_sync::merge::{StoredVersionBuf, plan_page};
use nango_sync::{Page, Timestamp};

/// A `/records` body of `n` realistic records (~760 bytes each).
fn body(n: usize) -> String {
    let t = Timestamp::from_micros(1_795_722_442_728_380);
    let records: Vec<String> = (0..n)
        .map(|i| {
            let payload = serde_json::json!({
                "id": format!("rec-{i:08}"),
                "name": format!("Zoë Ångström {i}"),
                "email": format!("user{i}@example.com"),
                "title": "Head of Customer Success — EMEA",
                "company": {"id": format!("co-{}", i % 977), "name": "Crème Brûlée Industries", "domain": "example.org"},
                "address": {"street": "12 rue de la Paix", "city": "Paris", "zip": "75002", "country": "FR"},
                "tags": ["customer", "priority", "日本語", "emoji 🚀"],
                "score": i % 100,
                "active": !i.is_multiple_of(3),
                "owner": {"id": "u-42", "name": "Jürgen Weiß"},
                "notes": "Prefers email. Renewal in Q3; discuss the upgrade to the enterprise plan.",
            });
            let mut s = payload.to_string();
            s.pop();
            s.push_str(&format!(
                r#","_nango_metadata":{{"first_seen_at":"{0}","last_modified_at":"{0}","last_action":"ADDED","deleted_at":null,"pruned_at":null,"cursor":"MjAyNi0xMS0yNlQxOTo0NzoyMi43MjgzOCswMDowMHx8{i:032}"}}}}"#,
                t.to_json_form(0)
            ));
            s
        })
        .collect();
    format!(
        r#"{{"next_cursor":"abc","records":[{}]}}"#,
        records.join(",")
    )
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_page");
    for n in [100usize, 1_000, 10_000] {
        let body = body(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("raw", n), &body, |b, body| {
            b.iter(|| black_box(Page::parse(body.as_bytes()).unwrap()))
        });
        group.bench_with_input(BenchmarkId::new("value_tree", n), &body, |b, body| {
            b.iter(|| black_box(serde_json::from_str::<serde_json::Value>(body).unwrap()))
        });
    }
    group.finish();
}

fn bench_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge_page");
    for n in [100usize, 1_000, 10_000] {
        let page = Page::parse(body(n).as_bytes()).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("all_new", n), &page, |b, page| {
            b.iter(|| black_box(plan_page(&page.records, |_| None)))
        });
        group.bench_with_input(BenchmarkId::new("all_older", n), &page, |b, page| {
            b.iter(|| {
                black_box(plan_page(&page.records, |_| {
                    Some(StoredVersionBuf {
                        last_modified_at: Timestamp::EPOCH,
                        cursor: "x".into(),
                        deleted: false,
                        pruned: false,
                    })
                }))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse, bench_merge);
criterion_main!(benches);
