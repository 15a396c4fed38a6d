//! Progress on stderr (bars on a terminal, plain lines otherwise) and summaries.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use nango_sync::engine::{Progress, ProgressFn};
use nango_sync::{FullReadReason, RunReport, StreamKey};

/// Shows the progress of runs.
pub struct Reporter {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    bars: HashMap<StreamKey, ProgressBar>,
    plain: bool,
    last_line: HashMap<StreamKey, Instant>,
    started: Instant,
}

impl Reporter {
    /// One bar (or one line every few seconds) per stream.
    pub fn new(streams: &[StreamKey]) -> Self {
        let plain = !std::io::stderr().is_terminal() || crate::logging::json();
        let multi = MultiProgress::with_draw_target(if plain {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let style = ProgressStyle::with_template("{spinner:.green} {prefix:<28} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let mut bars = HashMap::new();
        for s in streams {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(s.model.clone());
            bar.set_message("starting");
            bar.enable_steady_tick(Duration::from_millis(120));
            bars.insert(s.clone(), bar);
        }
        Reporter {
            inner: Arc::new(Mutex::new(Inner {
                bars,
                plain,
                last_line: HashMap::new(),
                started: Instant::now(),
            })),
        }
    }

    /// The callback to pass in `SyncOptions::progress`.
    pub fn callback(&self) -> ProgressFn {
        let inner = self.inner.clone();
        Arc::new(move |p: &Progress| {
            let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
            let total = p.counts.total();
            let elapsed = inner.started.elapsed();
            let msg = format!(
                "{total} records, {} pages ({} added, {} updated, {} deleted){} {}",
                p.pages,
                p.counts.added,
                p.counts.updated,
                p.counts.deleted,
                if p.full { " full read" } else { "" },
                rate(total, elapsed)
            );
            if inner.plain {
                let now = Instant::now();
                let due = inner
                    .last_line
                    .get(&p.stream)
                    .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(2));
                if due {
                    inner.last_line.insert(p.stream.clone(), now);
                    if crate::logging::json() {
                        tracing::info!(stream = %p.stream, pages = p.pages, added = p.counts.added, updated = p.counts.updated, deleted = p.counts.deleted, full = p.full, "progress: {msg}");
                    } else {
                        eprintln!("{}: {msg}", p.stream);
                    }
                }
            } else if let Some(bar) = inner.bars.get(&p.stream) {
                bar.set_message(msg);
            }
        })
    }

    /// Stop the bars.
    pub fn finish(&self) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for bar in inner.bars.values() {
            bar.finish_and_clear();
        }
    }
}

/// `12,345 records/s`.
pub fn rate(records: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || records == 0 {
        return "-".to_string();
    }
    format!("{} records/s", thousands((records as f64 / secs) as u64))
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line summarizing a run.
pub fn report_line(r: &RunReport) -> String {
    let secs = (r.finished_at.as_micros() - r.started_at.as_micros()) as f64 / 1e6;
    let c = &r.counts;
    let mut line = format!(
        "{}: {} records in {} pages, {:.2} s ({}): {} added, {} updated, {} deleted, {} unchanged, {} stale",
        r.stream,
        c.total(),
        r.pages,
        secs,
        rate(c.total(), Duration::from_secs_f64(secs.max(0.0))),
        c.added,
        c.updated,
        c.deleted,
        c.unchanged,
        c.stale
    );
    if r.full {
        line.push_str(&format!(
            "; full read ({}), {} swept",
            r.full_reason.map_or("requested", FullReadReason::as_str),
            r.swept
        ));
    }
    line
}

/// A run as JSON.
pub fn report_json(r: &RunReport) -> serde_json::Value {
    serde_json::json!({
        "stream": r.stream,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "pages": r.pages,
        "commits": r.commits,
        "counts": r.counts,
        "swept": r.swept,
        "full": r.full,
        "full_reason": r.full_reason,
        "cursor": r.cursor,
        "records_per_second": r.records_per_second(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
