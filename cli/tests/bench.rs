//! `nango-sync bench` with the real binary: the raw ceiling and the ratios in its report,
//! on every store a default build opens, and `--upstream` against a `dev-server` in
//! another process. Only what the report holds is checked (counts, ratios consistent
//! with the rates), never how fast anything ran.
#![cfg(all(feature = "sqlite", feature = "sled"))]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");

fn bench(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .envs(env.iter().copied())
        .env_remove("NANGO_SYNC_LOG")
        .output()
        .expect("run nango-sync bench");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench --json prints one JSON object")
}

fn rate(pass: &serde_json::Value) -> f64 {
    pass["records_per_second"].as_f64().expect("a rate")
}

/// Every pass of a round saw `records`, and the ratios are those of the rates.
fn check_round(round: &serde_json::Value, records: u64) {
    for pass in ["fetch", "raw", "store", "engine"] {
        assert_eq!(round[pass]["records"], records, "{pass}: {round}");
        assert!(rate(&round[pass]) > 0.0, "{pass}: {round}");
    }
    let store_ratio = rate(&round["store"]) / rate(&round["raw"]);
    let ratio = rate(&round["engine"]) / rate(&round["fetch"]).min(rate(&round["store"]));
    assert!((round["store_ratio"].as_f64().unwrap() - store_ratio).abs() < 1e-9);
    assert!((round["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
    assert!(round["store"]["commit_p99_ms"].as_f64().is_some());
}

#[test]
fn bench_reports_raw_ceiling_and_ratios_on_sqlite_and_sled() {
    let dir = tempfile::tempdir().unwrap();
    for sink in [
        format!("sqlite://{}", dir.path().join("b.db").display()),
        format!("sled://{}", dir.path().join("b-sled").display()),
    ] {
        let report = bench(&["--sink", &sink, "--records", "2500"], &[]);
        check_round(&report["fresh"], 2500);
        check_round(&report["update"], 2500);
        assert_eq!(report["no_change"]["http_requests"], 1, "{report}");
        assert_eq!(report["feed"]["all"]["records"], 2500);
        assert!(report.get("upstream").is_none());
        assert_eq!(report["id_order"], "sequential");
        // The stores are removed at the end (no --keep).
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{sink}: left {left:?}");
    }
}

#[test]
fn bench_with_scattered_ids_stores_uuid_shaped_ids_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let sink = format!("sqlite://{}", db.display());
    let report = bench(
        &[
            "--sink",
            &sink,
            "--records",
            "1500",
            "--id-order",
            "scattered",
            "--keep",
        ],
        &[],
    );
    assert_eq!(report["id_order"], "scattered");
    check_round(&report["fresh"], 1500);
    check_round(&report["update"], 1500);
    // The engine's store holds the ids as served. Each page (one commit, one `seq`) takes
    // ids from all over the id range: the two pages' ranges overlap (with ids in order,
    // a page is a range of its own).
    let conn = rusqlite::Connection::open(dir.path().join("b-engine.db")).unwrap();
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT id, seq FROM nango_records")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 1500);
    let mut pages: std::collections::BTreeMap<i64, (String, String)> = Default::default();
    for (id, seq) in &rows {
        let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(uuid.get_version_num(), 4, "{id}");
        let range = pages
            .entry(*seq)
            .or_insert_with(|| (id.clone(), id.clone()));
        range.0 = range.0.clone().min(id.clone());
        range.1 = range.1.clone().max(id.clone());
    }
    let ranges: Vec<_> = pages.values().collect();
    assert_eq!(ranges.len(), 2, "{pages:?}");
    assert!(
        ranges[0].0 < ranges[1].1 && ranges[1].0 < ranges[0].1,
        "the pages' id ranges overlap: {pages:?}"
    );
    let bad = Command::new(BIN)
        .args(["bench", "--sink", &sink, "--id-order", "random"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown id order"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// A `nango-sync dev-server` process, killed on drop.
struct DevServer {
    child: Child,
    host: String,
    key: String,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dev_server(records: usize) -> DevServer {
    let mut child = Command::new(BIN)
        .args(["dev-server", "--listen", "127.0.0.1:0", "--records"])
        .arg(records.to_string())
        .args(["--model", "Ticket"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start dev-server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut host, mut key) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(h) = line.strip_prefix("NANGO_HOST=") {
            host = h.to_string();
        } else if let Some(k) = line.strip_prefix("NANGO_SECRET_KEY=") {
            key = k.to_string();
        } else if line.starts_with("control API") {
            break;
        }
    }
    assert!(host.starts_with("http://"), "dev-server printed no host");
    DevServer { child, host, key }
}

#[test]
fn bench_upstream_measures_a_dev_server_in_another_process() {
    let server = dev_server(1800);
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("sqlite://{}", dir.path().join("up.db").display());
    let args = [
        "--sink",
        &sink,
        "--upstream",
        &server.host,
        "--integration",
        "demo-crm",
        "--connection",
        "acme",
        "--model",
        "Ticket",
        "--page-size",
        "500",
    ];
    let report = bench(&args, &[("NANGO_SECRET_KEY", &server.key)]);
    assert_eq!(report["upstream"], server.host.as_str());
    assert_eq!(report["records"], 1800);
    check_round(&report["fresh"], 1800);
    assert!(report["update"].is_null(), "{report}");
    // One page, the last, for a run that finds nothing new.
    assert_eq!(report["no_change"]["http_requests"], 1, "{report}");
    assert_eq!(report["feed"]["all"]["records"], 1800);

    // Without the key: one clear error, nothing measured.
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .env_remove("NANGO_SECRET_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret key"), "{stderr}");
    assert!(!stderr.contains(&server.key));
}
