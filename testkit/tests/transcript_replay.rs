//! Replays the 57 steps recorded from Nango's real records store
//! (`tests/data/nango-records-transcript.jsonl`: one JSON object per step, the change made
//! or the read and its response)
//! against a fresh `FakeNango` and checks that the fake answers every read the same way:
//! status, error codes, record ids and order, payloads, last actions, which change step
//! each timestamp belongs to, the uuids inside cursors, and `next_cursor`.

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use nango_sync::{StreamKey, Timestamp};
use nango_sync_testkit::{FakeConfig, FakeNango};
use serde_json::Value;

const TRANSCRIPT: &str = include_str!("data/nango-records-transcript.jsonl");

/// A change step's wall-clock window, in microseconds, inclusive.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: i64,
    to: i64,
}

impl Window {
    fn contains(&self, t: Timestamp) -> bool {
        (self.from..=self.to).contains(&t.as_micros())
    }
}

/// A transcript window: millisecond bounds, so the upper one covers its whole millisecond.
fn transcript_window(at: &Value) -> Window {
    let ms = |k: &str| {
        Timestamp::parse(at[k].as_str().unwrap())
            .unwrap()
            .as_micros()
    };
    Window {
        from: ms("not_before"),
        to: ms("not_after") + 999,
    }
}

fn now_floor_ms() -> i64 {
    Timestamp::now().as_micros().div_euclid(1000) * 1000
}

fn now_ceil_ms() -> i64 {
    (Timestamp::now().as_micros() + 999).div_euclid(1000) * 1000
}

fn encode_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_cursor(c: &str) -> (String, String) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(c)
        .unwrap_or_else(|e| panic!("cursor {c:?} is not padded base64: {e}"));
    let text = String::from_utf8(bytes).unwrap();
    let (ts, uuid) = text
        .split_once("||")
        .unwrap_or_else(|| panic!("cursor {text:?} has no ||"));
    (ts.to_string(), uuid.to_string())
}

fn stream_of(args: &Value) -> StreamKey {
    StreamKey::new(
        args["provider_config_key"].as_str().unwrap(),
        args["connection_id"].as_str().unwrap(),
        args["model"].as_str().unwrap(),
    )
}

fn ids_of(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

struct Replay {
    fake: FakeNango,
    http: reqwest::Client,
    /// Change step → (the transcript's window, our window).
    windows: Vec<(u64, Window, Window)>,
    /// Read step → our response body.
    bodies: HashMap<u64, Value>,
    failures: Vec<String>,
}

impl Replay {
    fn fail(&mut self, step: u64, label: &str, what: String) {
        self.failures.push(format!("step {step} ({label}): {what}"));
    }

    fn our_window(&self, step: u64) -> Window {
        self.windows
            .iter()
            .find(|(s, ..)| *s == step)
            .map(|w| w.2)
            .unwrap_or_else(|| panic!("no window for step {step}"))
    }

    /// The change step whose transcript window contains `t` (exactly one).
    fn transcript_step_of(&self, t: Timestamp) -> Result<u64, String> {
        let hits: Vec<u64> = self
            .windows
            .iter()
            .filter(|(_, w, _)| w.contains(t))
            .map(|(s, ..)| *s)
            .collect();
        match hits.as_slice() {
            [s] => Ok(*s),
            _ => Err(format!(
                "transcript timestamp {t} falls in the windows of steps {hits:?}"
            )),
        }
    }

    async fn change(&mut self, step: &Value) {
        let n = step["step"].as_u64().unwrap();
        let label = step["label"].as_str().unwrap_or("").to_string();
        let op = step["op"].as_str().unwrap();
        let args = &step["args"];
        if op == "note" {
            let conn = &args["connection"];
            self.fake.add_connection(
                conn["provider_config_key"].as_str().unwrap(),
                conn["connection_id"].as_str().unwrap(),
            );
            let offset = if args["timezone"] == "UTC" { 0 } else { -300 };
            self.fake.set_utc_offset(offset);
            return;
        }
        // Keep our windows of consecutive changes apart.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let stream = stream_of(args);
        let records: Vec<Value> = args["records"].as_array().cloned().unwrap_or_default();
        let from = now_floor_ms();
        let effect = match op {
            "add" | "update" | "update_identical" | "undelete" => {
                Some(self.fake.save(&stream, records))
            }
            "delete_id_only" => {
                let ids: Vec<String> = records
                    .iter()
                    .map(|r| r["id"].as_str().unwrap().to_string())
                    .collect();
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                Some(self.fake.delete(&stream, &ids))
            }
            "delete_full_payload" => Some(self.fake.delete_with_payload(&stream, records)),
            "prune" => {
                let src = &args["until_cursor_from"];
                let body = &self.bodies[&src["step"].as_u64().unwrap()];
                let rec = &body["records"][src["position"].as_u64().unwrap() as usize - 1];
                assert_eq!(
                    rec["id"], src["record_id"],
                    "step {n}: the prune cursor's record"
                );
                let cursor = rec["_nango_metadata"]["cursor"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let count = self
                    .fake
                    .prune_until(&stream, &cursor)
                    .expect("our own cursor is valid");
                if count != step["effect"]["pruned_count"].as_u64().unwrap() {
                    self.fail(
                        n,
                        &label,
                        format!(
                            "pruned {count}, expected {}",
                            step["effect"]["pruned_count"]
                        ),
                    );
                }
                None
            }
            "hard_reset" => {
                let removed = self.fake.hard_reset(&stream);
                if removed != step["effect"]["removed_count"].as_u64().unwrap() {
                    self.fail(
                        n,
                        &label,
                        format!(
                            "removed {removed}, expected {}",
                            step["effect"]["removed_count"]
                        ),
                    );
                }
                None
            }
            other => panic!("step {n}: unknown op {other}"),
        };
        let ours = Window {
            from,
            to: now_ceil_ms(),
        };
        self.windows.push((n, transcript_window(&step["at"]), ours));
        if let Some(e) = effect {
            let want = &step["effect"];
            for (name, got) in [
                ("added", &e.added),
                ("updated", &e.updated),
                ("deleted", &e.deleted),
                ("unchanged", &e.unchanged),
            ] {
                let got: BTreeSet<String> = got.iter().cloned().collect();
                if got != ids_of(&want[name]) {
                    self.fail(
                        n,
                        &label,
                        format!("effect.{name} = {got:?}, expected {}", want[name]),
                    );
                }
            }
        }
    }

    /// Our value for a volatile query parameter named by `refs`.
    fn substitute(&self, n: u64, key: &str, r: &Value) -> String {
        let src = r["step"].as_u64().unwrap();
        let from = r["from"].as_str().unwrap();
        match from {
            "response.body.next_cursor" => self.bodies[&src]["next_cursor"]
                .as_str()
                .unwrap()
                .to_string(),
            "last record's _nango_metadata.cursor" => {
                let recs = self.bodies[&src]["records"].as_array().unwrap();
                recs.last().unwrap()["_nango_metadata"]["cursor"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
            "at.not_before" => Timestamp::from_micros(self.our_window(src).from).to_utc_z(),
            "at.not_before with Z replaced by +00:00" => {
                Timestamp::from_micros(self.our_window(src).from)
                    .to_utc_z()
                    .replace('Z', "+00:00")
            }
            f if f.starts_with("records[0]._nango_metadata.last_modified_at") => {
                let t = self.bodies[&src]["records"][0]["_nango_metadata"]["last_modified_at"]
                    .as_str()
                    .unwrap();
                Timestamp::parse(t).unwrap().to_utc_z()
            }
            other => panic!("step {n}: unknown ref {key} from {other:?}"),
        }
    }

    async fn read(&mut self, step: &Value, cursor_map: &HashMap<String, String>) {
        let n = step["step"].as_u64().unwrap();
        let label = step["label"].as_str().unwrap_or("").to_string();
        let req = &step["request"];
        // Rebuild the query: same keys and order, volatile values replaced by ours.
        let mut parts = Vec::new();
        for part in req["raw_query"].as_str().unwrap().split('&') {
            let (k, v) = part.split_once('=').unwrap();
            let ours = if let Some(r) = step.get("refs").and_then(|refs| refs.get(k)) {
                encode_component(&self.substitute(n, k, r))
            } else if k == "cursor" {
                let theirs = req["query"]["cursor"].as_str().unwrap();
                cursor_map
                    .get(theirs)
                    .map(|c| encode_component(c))
                    .unwrap_or_else(|| v.to_string())
            } else {
                v.to_string()
            };
            parts.push(format!("{k}={ours}"));
        }
        let url = format!(
            "{}{}?{}",
            self.fake.url(),
            req["path"].as_str().unwrap(),
            parts.join("&")
        );
        let mut builder = self.http.get(&url);
        for (name, value) in req["headers"].as_object().unwrap() {
            let value = value
                .as_str()
                .unwrap()
                .replace("<SECRET>", self.fake.secret_key().expose());
            builder = builder.header(name.as_str(), value);
        }
        let resp = builder
            .send()
            .await
            .unwrap_or_else(|e| panic!("step {n}: request failed: {e}"));
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("step {n}: body: {e}"));
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("step {n}: body is not JSON: {e}"));
        let want = &step["response"];
        if status != want["status"].as_u64().unwrap() as u16 {
            self.fail(
                n,
                &label,
                format!("status {status}, expected {}; body {body}", want["status"]),
            );
            return;
        }
        if content_type.as_deref() != want["headers"]["content-type"].as_str() {
            self.fail(n, &label, format!("content-type {content_type:?}"));
        }
        let want_body = &want["body"];
        if status != 200 {
            self.compare_error(n, &label, &body, want_body);
        } else {
            self.compare_page(n, &label, &body, want_body);
        }
        self.bodies.insert(n, body);
    }

    fn compare_error(&mut self, n: u64, label: &str, got: &Value, want: &Value) {
        let (g, w) = (&got["error"], &want["error"]);
        if g["code"] != w["code"] {
            self.fail(
                n,
                label,
                format!("error code {}, expected {}", g["code"], w["code"]),
            );
        }
        let shape = |v: &Value| -> Vec<(Value, Value)> {
            v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| (e["code"].clone(), e["path"].clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        if shape(g) != shape(w) {
            self.fail(
                n,
                label,
                format!("errors {}, expected {}", g["errors"], w["errors"]),
            );
        }
        // The fake reproduces Nango's messages too.
        if got != want {
            self.fail(n, label, format!("error body {got}, expected {want}"));
        }
    }

    fn compare_page(&mut self, n: u64, label: &str, got: &Value, want: &Value) {
        let keys = |v: &Value| {
            v.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        if keys(got) != keys(want) {
            self.fail(n, label, format!("page keys {:?}", keys(got)));
            return;
        }
        let (g, w) = (
            got["records"].as_array().unwrap(),
            want["records"].as_array().unwrap(),
        );
        let gids: Vec<&Value> = g.iter().map(|r| &r["id"]).collect();
        let wids: Vec<&Value> = w.iter().map(|r| &r["id"]).collect();
        if gids != wids {
            self.fail(n, label, format!("record ids {gids:?}, expected {wids:?}"));
            return;
        }
        for (gr, wr) in g.iter().zip(w) {
            let id = wr["id"].as_str().unwrap();
            self.compare_record(n, label, id, gr, wr);
        }
        match (got["next_cursor"].as_str(), want["next_cursor"].as_str()) {
            (None, None) => {}
            (Some(c), Some(wc)) => {
                let last = g.last().unwrap()["_nango_metadata"]["cursor"]
                    .as_str()
                    .unwrap();
                if c != last {
                    self.fail(
                        n,
                        label,
                        "next_cursor is not the last record's cursor".into(),
                    );
                }
                if decode_cursor(c).1 != decode_cursor(wc).1 {
                    self.fail(
                        n,
                        label,
                        format!(
                            "next_cursor uuid {} != {}",
                            decode_cursor(c).1,
                            decode_cursor(wc).1
                        ),
                    );
                }
            }
            (gc, wc) => self.fail(n, label, format!("next_cursor {gc:?}, expected {wc:?}")),
        }
    }

    fn compare_record(&mut self, n: u64, label: &str, id: &str, got: &Value, want: &Value) {
        let payload = |v: &Value| {
            let mut o = v.as_object().unwrap().clone();
            o.remove("_nango_metadata");
            Value::Object(o)
        };
        if payload(got) != payload(want) {
            self.fail(
                n,
                label,
                format!("{id}: payload {}, expected {}", payload(got), payload(want)),
            );
        }
        let (gm, wm) = (&got["_nango_metadata"], &want["_nango_metadata"]);
        let mkeys: Vec<String> = gm.as_object().unwrap().keys().cloned().collect();
        let wkeys: Vec<String> = wm.as_object().unwrap().keys().cloned().collect();
        if mkeys.iter().collect::<BTreeSet<_>>() != wkeys.iter().collect::<BTreeSet<_>>() {
            self.fail(n, label, format!("{id}: metadata keys {mkeys:?}"));
        }
        if gm["last_action"] != wm["last_action"] {
            self.fail(
                n,
                label,
                format!(
                    "{id}: last_action {}, expected {}",
                    gm["last_action"], wm["last_action"]
                ),
            );
        }
        for field in [
            "first_seen_at",
            "last_modified_at",
            "deleted_at",
            "pruned_at",
        ] {
            match (gm[field].as_str(), wm[field].as_str()) {
                (None, None) => {}
                (Some(g), Some(w)) => {
                    let (gt, wt) = (Timestamp::parse(g).unwrap(), Timestamp::parse(w).unwrap());
                    if g[g.len() - 6..] != w[w.len() - 6..] {
                        self.fail(
                            n,
                            label,
                            format!("{id}: {field} {g} has another offset than {w}"),
                        );
                    }
                    match self.transcript_step_of(wt) {
                        Ok(s) => {
                            if !self.our_window(s).contains(gt) {
                                self.fail(n, label, format!("{id}: {field} {g} is not in our window of step {s} ({w} is in theirs)"));
                            }
                        }
                        Err(e) => self.fail(n, label, format!("{id}: {field}: {e}")),
                    }
                }
                (g, w) => self.fail(n, label, format!("{id}: {field} {g:?}, expected {w:?}")),
            }
        }
        // Which timestamps coincide (an add: first_seen_at == last_modified_at; a delete with
        // the unchanged payload: last_modified_at == deleted_at) must match too.
        let instant = |m: &Value, f: &str| m[f].as_str().map(|t| Timestamp::parse(t).unwrap());
        for (a, b) in [
            ("first_seen_at", "last_modified_at"),
            ("last_modified_at", "deleted_at"),
        ] {
            let ours = instant(gm, a).cmp(&instant(gm, b));
            let theirs = instant(wm, a).cmp(&instant(wm, b));
            if ours != theirs {
                self.fail(
                    n,
                    label,
                    format!("{id}: {a} vs {b} is {ours:?}, expected {theirs:?}"),
                );
            }
        }
        let (gc, wc) = (
            gm["cursor"].as_str().unwrap(),
            wm["cursor"].as_str().unwrap(),
        );
        let ((gts, guuid), (_, wuuid)) = (decode_cursor(gc), decode_cursor(wc));
        if guuid != wuuid {
            self.fail(
                n,
                label,
                format!("{id}: cursor uuid {guuid}, expected {wuuid}"),
            );
        }
        if Some(gts.as_str()) != gm["last_modified_at"].as_str() {
            self.fail(
                n,
                label,
                format!(
                    "{id}: cursor time {gts} != last_modified_at {}",
                    gm["last_modified_at"]
                ),
            );
        }
    }
}

/// Map every cursor the transcript's server produced to the one our fake produced at the
/// same place, for requests whose cursor has no `refs` entry.
fn learn_cursors(map: &mut HashMap<String, String>, got: &Value, want: &Value) {
    if let (Some(g), Some(w)) = (got["next_cursor"].as_str(), want["next_cursor"].as_str()) {
        map.insert(w.to_string(), g.to_string());
    }
    if let (Some(g), Some(w)) = (got["records"].as_array(), want["records"].as_array()) {
        for (gr, wr) in g.iter().zip(w) {
            if let (Some(gc), Some(wc)) = (
                gr["_nango_metadata"]["cursor"].as_str(),
                wr["_nango_metadata"]["cursor"].as_str(),
            ) {
                map.insert(wc.to_string(), gc.to_string());
            }
        }
    }
}

#[tokio::test]
async fn fake_answers_like_nango_for_every_transcript_step() {
    let steps: Vec<Value> = TRANSCRIPT
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(steps.len(), 57);
    nango_sync::client::install_crypto_provider();
    let fake = FakeNango::start(FakeConfig {
        first_internal_connection_id: 9101,
        utc_offset_minutes: 0,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut replay = Replay {
        fake,
        http: reqwest::Client::new(),
        windows: Vec::new(),
        bodies: HashMap::new(),
        failures: Vec::new(),
    };
    let mut cursor_map = HashMap::new();
    let mut reads = 0;
    let mut expected = 0;
    for step in &steps {
        let n = step["step"].as_u64().unwrap();
        expected += 1;
        assert_eq!(n, expected, "steps are in order");
        if step.get("op").is_some() {
            replay.change(step).await;
        } else {
            replay.read(step, &cursor_map).await;
            reads += 1;
            if let Some(body) = replay.bodies.get(&n) {
                learn_cursors(&mut cursor_map, body, &step["response"]["body"]);
            }
        }
    }
    assert_eq!(reads, 40, "read steps replayed");
    let streams = replay.fake.streams();
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(
        replay.failures.is_empty(),
        "{} mismatches with Nango's transcript:\n{}",
        replay.failures.len(),
        replay.failures.join("\n")
    );
}
