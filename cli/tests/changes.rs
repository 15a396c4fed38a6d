//! `nango-sync changes` with the real binary: the JSON Lines of the contract, `--since`,
//! filters, named consumers, `--follow` woken by another process's commits and stopped
//! by SIGTERM, and a crash test: a consumer process killed with SIGKILL at random
//! moments while syncs run concurrently, restarted each time; over all its outputs no
//! change is missed and its stored position never moves back.
//!
//! Kills: `NANGO_SYNC_FEED_KILLS` (8 by default; `scripts/crash-campaign.sh` runs
//! hundreds), seed `NANGO_SYNC_CRASH_SEED`.
#![cfg(all(feature = "sqlite", unix))]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nango_sync::feed::{ChangeKind, ChangeQuery, FeedPosition};
use nango_sync::{RecordSink, SharedSink, StreamKey};
use nango_sync_testkit::{FakeConfig, FakeNango};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_nango-sync");

/// One line of `changes`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    seq: u64,
    stream: StreamKey,
    id: String,
    change: ChangeKind,
    record: Value,
}

impl Line {
    fn parse(text: &str) -> Line {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let obj = v.as_object().expect("a JSON object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut want = vec![
            "change",
            "connection",
            "id",
            "integration",
            "model",
            "record",
            "seq",
            "variant",
        ];
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want, "the fields of a line: {text}");
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("{k}: {text}"))
                .to_string()
        };
        let line = Line {
            seq: v["seq"].as_u64().expect("seq"),
            stream: StreamKey::new(s("integration"), s("connection"), s("model"))
                .with_variant(s("variant")),
            id: s("id"),
            change: ChangeKind::parse(&s("change")).expect("a change kind"),
            record: v["record"].clone(),
        };
        assert_eq!(line.record["id"].as_str(), Some(line.id.as_str()), "{text}");
        assert!(
            line.record["_nango_metadata"].is_object(),
            "the record carries its metadata: {text}"
        );
        line
    }

    fn position(&self) -> FeedPosition {
        FeedPosition::after_change(self.seq, self.id.clone())
    }
}

fn lines(out: &[u8]) -> Vec<Line> {
    String::from_utf8_lossy(out)
        .lines()
        .map(Line::parse)
        .collect()
}

/// Lines strictly in feed order.
fn assert_in_feed_order(lines: &[Line], what: &str) {
    for w in lines.windows(2) {
        assert!(
            w[0].position() < w[1].position(),
            "{what}: {:?} then {:?}",
            w[0].position(),
            w[1].position()
        );
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn contact() -> StreamKey {
    StreamKey::new("demo-crm", "acme", "Contact")
}

fn deal() -> StreamKey {
    StreamKey::new("demo-crm", "acme", "Deal")
}

fn sync_cmd(fake: &FakeNango, url: &str, full: bool) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["sync", "--sink", url])
        .args(["--integration", "demo-crm", "--connection", "acme"])
        .args([
            "--model",
            "Contact",
            "--model",
            "Deal",
            "--page-size",
            "100",
        ])
        .env("NANGO_HOST", fake.url())
        .env("NANGO_SECRET_KEY", fake.secret_key().expose())
        .env_remove("NANGO_SYNC_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if full {
        cmd.arg("--full");
    }
    cmd
}

fn sync(fake: &FakeNango, url: &str) {
    let out = sync_cmd(fake, url, false).output().unwrap();
    assert!(out.status.success(), "sync: {}", text(&out.stderr));
}

fn changes(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["changes", "--sink", url])
        .args(args)
        .env_remove("NANGO_SYNC_LOG")
        .output()
        .unwrap()
}

fn changes_ok(url: &str, args: &[&str]) -> Vec<Line> {
    let out = changes(url, args);
    assert!(
        out.status.success(),
        "changes {args:?}: {}",
        text(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let lines = lines(&out.stdout);
    assert_in_feed_order(&lines, &format!("changes {args:?}"));
    lines
}

/// Every record of the store with the position and kind of its last change, from the
/// library's feed.
async fn feed_of(store: &SharedSink) -> Vec<(FeedPosition, StreamKey, ChangeKind)> {
    let batch = store
        .changes(&ChangeQuery::since(0).with_limit(usize::MAX))
        .await
        .unwrap();
    batch
        .changes
        .into_iter()
        .map(|c| (c.position(), c.stream, c.kind))
        .collect()
}

fn summary(lines: &[Line]) -> Vec<(FeedPosition, StreamKey, ChangeKind)> {
    lines
        .iter()
        .map(|l| (l.position(), l.stream.clone(), l.change))
        .collect()
}

fn pick(fake: &FakeNango, stream: &StreamKey, n: usize, step: usize) -> Vec<String> {
    fake.records(stream)
        .into_iter()
        .step_by(step)
        .take(n)
        .map(|r| r.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_follow_the_contract() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("feed.db").display());
    fake.generate(&contact(), 250, 250);
    fake.generate(&deal(), 120, 120);
    sync(&fake, &url);

    // Everything: one line per record, all `added`, the same as the library's feed.
    let all = changes_ok(&url, &[]);
    assert_eq!(all.len(), 370);
    assert!(all.iter().all(|l| l.change == ChangeKind::Added));
    let store = nango_sync::sink::open(&url).await.unwrap();
    assert_eq!(summary(&all), feed_of(&store).await);
    let first_sync_last = all.last().unwrap().seq;

    // Upstream: updates, `{id}` deletes, new records; then one more sync.
    let updated = pick(&fake, &contact(), 10, 7);
    let payloads: Vec<Value> = fake
        .records(&contact())
        .into_iter()
        .filter(|r| updated.contains(&r.id))
        .map(|r| {
            let mut p = r.payload;
            p["edited"] = json!(true);
            p
        })
        .collect();
    fake.save(&contact(), payloads);
    let deleted = pick(&fake, &deal(), 5, 11);
    fake.delete(
        &deal(),
        &deleted.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    fake.generate(&deal(), 3, 3);
    sync(&fake, &url);

    // `--since` the first sync: exactly the changed records, with their kinds.
    let since = changes_ok(&url, &["--since", &first_sync_last.to_string()]);
    let kinds: BTreeMap<(String, String), ChangeKind> = since
        .iter()
        .map(|l| ((l.stream.model.clone(), l.id.clone()), l.change))
        .collect();
    assert_eq!(kinds.len(), since.len(), "compacted: one line per record");
    let count = |k| kinds.values().filter(|&&v| v == k).count();
    assert_eq!(count(ChangeKind::Updated), 10, "{kinds:?}");
    assert_eq!(count(ChangeKind::Deleted), 5, "{kinds:?}");
    assert_eq!(count(ChangeKind::Added), 3, "{kinds:?}");
    for id in &updated {
        let line = since.iter().find(|l| &l.id == id).unwrap();
        assert_eq!(line.record["edited"], json!(true), "the current record");
    }
    for id in &deleted {
        let line = since.iter().find(|l| &l.id == id).unwrap();
        assert_eq!(line.record["_nango_metadata"]["last_action"], "DELETED");
        assert!(
            line.record.as_object().unwrap().len() > 2,
            "a deleted record keeps its last payload: {}",
            line.record
        );
    }
    assert!(since.iter().all(|l| l.seq > first_sync_last));
    // The whole feed is compacted too: the changed records moved to the end.
    let all = changes_ok(&url, &["--since", "0"]);
    assert_eq!(all.len(), 373);
    assert_eq!(summary(&all), feed_of(&store).await);
    assert_eq!(&all[all.len() - since.len()..], &since[..]);

    // Filters.
    let deals = changes_ok(
        &url,
        &[
            "--integration",
            "demo-crm",
            "--connection",
            "acme",
            "--model",
            "Deal",
        ],
    );
    assert_eq!(deals.len(), 123);
    assert!(deals.iter().all(|l| l.stream == deal()));
    assert_eq!(
        changes_ok(&url, &["--integration", "demo-crm", "--connection", "acme"]).len(),
        373
    );
    assert!(changes_ok(&url, &["--integration", "other"]).is_empty());

    // A named consumer: everything once, then only what a later commit changed, and
    // its stored position is its last line's.
    assert_eq!(changes_ok(&url, &["--consumer", "indexer"]), all);
    assert!(changes_ok(&url, &["--consumer", "indexer"]).is_empty());
    let position = store.consumer_position("indexer").await.unwrap();
    assert!(position >= all.last().unwrap().position(), "{position}");
    fake.generate(&contact(), 4, 4);
    sync(&fake, &url);
    let next = changes_ok(&url, &["--consumer", "indexer"]);
    assert_eq!(next.len(), 4);
    assert!(next.iter().all(|l| l.change == ChangeKind::Added));
    // Another consumer is independent of it.
    assert_eq!(changes_ok(&url, &["--consumer", "audit"]).len(), 377);

    // Bad arguments: non-zero, one line on stderr, nothing on stdout.
    for args in [
        &["--since", "3", "--consumer", "x"][..],
        &["--model", "Deal"],
        &["--since", "-1"],
        &["--consumer", ""],
    ] {
        let out = changes(&url, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!text(&out.stderr).trim().is_empty(), "{args:?}");
    }
    let out = changes("sqlite:///nonexistent-dir/x/feed.db", &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("nonexistent-dir"), "{err}");
}

/// Collects a child's stdout lines on a thread.
struct Reader {
    lines: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

fn read_lines(child: &mut Child) -> Reader {
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let thread = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                // A line cut by a kill has no newline: it was never complete.
                Ok(_) if line.ends_with('\n') => sink.lock().unwrap().push(line),
                Ok(_) => return,
            }
        }
    });
    Reader { lines, thread }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_wakes_on_another_process_commits_and_stops_on_sigterm() {
    let fake = FakeNango::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("feed.db").display());
    fake.generate(&contact(), 50, 50);
    sync(&fake, &url);
    for (stop, name) in [("TERM", "follow-term"), ("INT", "follow-int")] {
        let mut child = Command::new(BIN)
            .args(["changes", "--sink", &url, "--consumer", name, "--follow"])
            .args(["--integration", "demo-crm", "--connection", "acme"])
            .env_remove("NANGO_SYNC_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let reader = read_lines(&mut child);
        let wait_for = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while reader.lines.lock().unwrap().len() < n {
                assert!(
                    Instant::now() < deadline,
                    "--follow printed {} lines, not {n}",
                    reader.lines.lock().unwrap().len()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        // What the store holds first, then what another process commits.
        let (first, expected) = if stop == "TERM" { (50, 60) } else { (60, 70) };
        wait_for(first);
        fake.generate(&contact(), 7, 7);
        fake.generate(&deal(), 3, 3);
        sync(&fake, &url);
        wait_for(expected);
        std::thread::sleep(Duration::from_millis(200));
        signal(&child, stop);
        let status = child.wait().unwrap();
        reader.thread.join().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(status.success(), "SIG{stop}: {status:?} {err}");
        assert!(err.is_empty(), "{err}");
        let got: Vec<Line> = reader
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| Line::parse(l))
            .collect();
        assert_eq!(got.len(), expected, "SIG{stop}");
        assert_in_feed_order(&got, "--follow");
        let store = nango_sync::sink::open(&url).await.unwrap();
        assert_eq!(summary(&got), feed_of(&store).await);
        assert_eq!(
            store.consumer_position(name).await.unwrap().seq,
            store.last_seq().await.unwrap(),
            "the consumer stored the position of its last line"
        );
    }
}

/// Kills in the normal test run; `NANGO_SYNC_FEED_KILLS` asks for more.
fn kills() -> usize {
    std::env::var("NANGO_SYNC_FEED_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

fn seed() -> u64 {
    std::env::var("NANGO_SYNC_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xfeed_5eed)
}

/// xorshift64*, seeded so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Syncs in a loop while upstream changes (adds, updates, `{id}` deletes, a hard delete
/// swept by a full re-read), until `stop`.
fn sync_loop(fake: Arc<FakeNango>, url: String, stop: Arc<AtomicBool>, seed: u64) -> usize {
    let mut rng = Rng(seed | 1);
    let mut runs = 0;
    while !stop.load(Ordering::SeqCst) {
        let stream = if rng.below(2) == 0 { contact() } else { deal() };
        let recs = fake.records(&stream);
        match rng.below(5) {
            0 if !recs.is_empty() => {
                let picked: Vec<Value> = (0..15)
                    .map(|_| {
                        let mut p = recs[rng.below(recs.len() as u64) as usize].payload.clone();
                        p["crash_run"] = json!(runs);
                        p
                    })
                    .filter(|p| p.as_object().is_some_and(|o| o.len() > 2))
                    .collect();
                fake.save(&stream, picked);
            }
            1 if !recs.is_empty() => {
                let ids: Vec<String> = (0..5)
                    .map(|_| recs[rng.below(recs.len() as u64) as usize].id.clone())
                    .collect();
                fake.delete(&stream, &ids.iter().map(String::as_str).collect::<Vec<_>>());
            }
            _ => {}
        }
        fake.generate(&stream, 40, 40);
        let full = rng.below(6) == 0;
        let out = sync_cmd(&fake, &url, full).output().unwrap();
        assert!(out.status.success(), "sync: {}", text(&out.stderr));
        runs += 1;
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_at_random_moments_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("feed.db").display());
    consumer_killed_at_random_moments(url, seed()).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_consumer_killed_at_random_moments_misses_nothing() {
    let url = nango_sync_testkit::stores::fresh_postgres_url();
    consumer_killed_at_random_moments(url, seed() + 1).await;
}

/// Kill a following consumer at random moments while another thread syncs into the
/// store at `url`; no change of the feed is missed.
async fn consumer_killed_at_random_moments(url: String, seed: u64) {
    let fake = Arc::new(FakeNango::start(FakeConfig::default()).await.unwrap());
    fake.generate(&contact(), 300, 100);
    fake.generate(&deal(), 100, 100);
    sync(&fake, &url);
    let stop = Arc::new(AtomicBool::new(false));
    let syncs = {
        let (fake, url, stop) = (fake.clone(), url.clone(), stop.clone());
        std::thread::spawn(move || sync_loop(fake, url, stop, seed))
    };
    let store = nango_sync::sink::open(&url).await.unwrap();
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut outputs: Vec<Vec<Line>> = Vec::new();
    let mut stored = FeedPosition::START;
    let total = kills();
    let mut killed_while_writing = 0;
    let mut landed_late = 0;
    let logs = tempfile::tempdir().unwrap();
    for kill in 0..total {
        let log = logs.path().join(format!("run-{kill}.log"));
        let mut child = Command::new(BIN)
            .args(["changes", "--sink", &url, "--consumer", "crash", "--follow"])
            .env("NANGO_SYNC_LOG", "nango_sync=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let reader = read_lines(&mut child);
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.thread.join().unwrap();
        let got: Vec<Line> = reader
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| Line::parse(l))
            .collect();
        let what = format!(
            "seed {seed}, run {kill} (its stderr: {})",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert_in_feed_order(&got, &what);
        // It resumed after the position stored by the run before.
        if let Some(first) = got.first() {
            assert!(first.position() > stored, "{what}: {first:?} <= {stored}");
        }
        let now = store.consumer_position("crash").await.unwrap();
        assert!(
            now >= stored,
            "{what}: the position moved back: {stored} -> {now}"
        );
        // Every line but the last has its position stored: the position is at least the
        // one before the last line (or, past it, the end of that line's commit, stored
        // when a batch ended there), and never past what was written (a batch's end may
        // be past its last line: the end of the last commit read). With one line, the one
        // before it is where the process started: at least the position read after the
        // previous kill, later when an acknowledgment the previous process sent just
        // before its kill landed in PostgreSQL after that read.
        if let Some(last) = got.last() {
            let before_last = got.len().checked_sub(2).map(|i| got[i].position());
            let covered = before_last.as_ref().is_none_or(|b| now >= *b);
            let not_past = now <= last.position() || now.id.is_none();
            assert!(
                covered && not_past,
                "{what}: stored {now} after {} lines: the one before the last {before_last:?}, \
                 the last {:?}; stored before this run {stored}",
                got.len(),
                last.position()
            );
            if now < last.position() {
                killed_while_writing += 1;
            }
            if got.len() == 1 && now < last.position() && now != stored {
                landed_late += 1;
            }
        }
        stored = now;
        outputs.push(got);
    }
    stop.store(true, Ordering::SeqCst);
    let runs = syncs.join().unwrap();
    // Drain what is left.
    let rest = changes_ok(&url, &["--consumer", "crash"]);
    if let Some(first) = rest.first() {
        assert!(first.position() > stored);
    }
    outputs.push(rest);
    // No change missed: the last change of every record (the compacted feed) is in
    // some output, with the same kind and record.
    let mut written: BTreeMap<FeedPosition, &Line> = BTreeMap::new();
    for line in outputs.iter().flatten() {
        written.insert(line.position(), line);
    }
    let feed = store
        .changes(&ChangeQuery::since(0).with_limit(usize::MAX))
        .await
        .unwrap();
    for change in &feed.changes {
        let line = written.get(&change.position()).unwrap_or_else(|| {
            panic!(
                "seed {seed}: {} {} at {} was never written",
                change.stream,
                change.id(),
                change.position()
            )
        });
        assert_eq!(line.change, change.kind);
        assert_eq!(line.stream, change.stream);
        let record: Value = serde_json::from_str(&change.record.to_export_line()).unwrap();
        assert_eq!(line.record, record);
    }
    let lines: usize = outputs.iter().map(Vec::len).sum();
    eprintln!(
        "seed {seed}: {total} kills of a following consumer during {runs} concurrent syncs; {lines} lines, {} records in the feed, none missed; {killed_while_writing} kills between a line and its acknowledgment; \
         {landed_late} acknowledgments of a killed process stored after the test read the position",
        feed.changes.len()
    );
    assert!(runs > 0);
}
