//! A request budget shared by every stream of one Nango account.
//!
//! Nango limits requests per account in fixed 60-second windows (200 per minute on the
//! free plan, 1,000 on Starter, 2,000 on Growth). A [`RateBudget`] hands out that many
//! permits per window to every client that shares it, and pauses all of them when Nango
//! answers 429 anyway.
//!
//! **Learning the account's limit.** Nango states its limit on every answer of
//! `/records` (`X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`: the
//! epoch second its window ends); the client passes them to
//! [`RateBudget::observe`]. The budget then uses the account's limit (never more than
//! its cap: a configured limit stays an upper bound), aligns its window with Nango's,
//! and counts as spent what Nango counted (requests of other processes of the account
//! included). [`RateBudget::learning`] starts from a guess and takes the limit Nango
//! states; [`RateBudget::per_minute`] never goes above its limit.
//!
//! **Several processes.** A [`RateLedger`] (the PostgreSQL store's, for instances
//! sharing a store) counts the permits every process of the account took in Nango's
//! current window, so that together they stay within the limit. One permit in a hundred
//! (at least one) stays in reserve for requests sent before a process knew Nango's
//! window (its first), which no ledger counts.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Requests per minute, shared by clients (see the module documentation).
pub struct RateBudget {
    per_minute: u32,
    /// The upper bound of a learned limit (`None`: whatever Nango states).
    cap: Option<u32>,
    window: Duration,
    state: Mutex<State>,
    ledger: Mutex<Option<std::sync::Arc<dyn RateLedger>>>,
}

impl std::fmt::Debug for RateBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateBudget")
            .field("limit", &self.limit())
            .field("cap", &self.cap)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    /// The end of Nango's current window, once an answer stated it.
    window_end: Option<Instant>,
    /// Nango's window as the epoch second it ends (`X-RateLimit-Reset`), the key of the
    /// ledger's count.
    window_key: Option<i64>,
    used: u32,
    /// What Nango counted as spent in its current window (every process's requests).
    spent: u32,
    /// The limit Nango stated last.
    learned: Option<u32>,
    paused_until: Option<Instant>,
}

/// What an answer of Nango said about the account's limit (`X-RateLimit-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateObservation {
    /// Requests allowed per window (`X-RateLimit-Limit`).
    pub limit: u32,
    /// Requests left in the window (`X-RateLimit-Remaining`).
    pub remaining: u32,
    /// The epoch second the window ends (`X-RateLimit-Reset`).
    pub reset: i64,
}

impl RateObservation {
    /// Read the three headers; `None` unless all three are there and numbers.
    pub(crate) fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<Self> {
        let num = |name: &str| -> Option<i64> {
            headers.get(name)?.to_str().ok()?.trim().parse::<i64>().ok()
        };
        Some(RateObservation {
            limit: u32::try_from(num("x-ratelimit-limit")?).ok()?,
            remaining: u32::try_from(num("x-ratelimit-remaining")?.max(0)).ok()?,
            reset: num("x-ratelimit-reset")?,
        })
    }
}

/// A count of permits shared by the processes of one account (see the module
/// documentation): [`RateLedger::take`] grants a permit of the window `window` (Nango's
/// `X-RateLimit-Reset`) when fewer than `limit` were taken in it by every process,
/// counting at least `spent` (what Nango reported spent).
pub trait RateLedger: Send + Sync + 'static {
    /// Take one permit of `window`: `Ok(true)` granted, `Ok(false)` spent.
    fn take(
        &self,
        window: i64,
        limit: u32,
        spent: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::Result<bool>> + Send + '_>>;
}

impl RateBudget {
    /// A budget of `per_minute` requests in every 60-second window: a configured limit,
    /// lowered (never raised) by what Nango states.
    pub fn per_minute(per_minute: u32) -> Self {
        Self::with_window(per_minute, Duration::from_secs(60))
    }

    /// A budget that starts at `initial` requests per minute and takes the limit Nango
    /// states on its answers (`X-RateLimit-Limit`), whatever it is.
    pub fn learning(initial: u32) -> Self {
        let mut b = Self::per_minute(initial);
        b.cap = None;
        b
    }

    /// A budget of `permits` requests per `window` (shorter windows are for tests).
    pub fn with_window(permits: u32, window: Duration) -> Self {
        RateBudget {
            per_minute: permits.max(1),
            cap: Some(permits.max(1)),
            window,
            state: Mutex::new(State {
                window_start: Instant::now(),
                window_end: None,
                window_key: None,
                used: 0,
                spent: 0,
                learned: None,
                paused_until: None,
            }),
            ledger: Mutex::new(None),
        }
    }

    /// Share the count with other processes of the account through `ledger`.
    pub fn set_ledger(&self, ledger: std::sync::Arc<dyn RateLedger>) {
        *self.ledger.lock().unwrap_or_else(|p| p.into_inner()) = Some(ledger);
    }

    /// Requests allowed per window: the limit Nango stated (within the cap), or the
    /// configured one before Nango stated any.
    pub fn limit(&self) -> u32 {
        let learned = self.state.lock().unwrap_or_else(|p| p.into_inner()).learned;
        self.effective(learned)
    }

    fn effective(&self, learned: Option<u32>) -> u32 {
        let limit = learned.unwrap_or(self.per_minute).max(1);
        self.cap.map_or(limit, |cap| limit.min(cap))
    }

    /// What an answer of Nango stated about the account's limit: take its limit (within
    /// the cap), align the window with Nango's, and count as spent at least what Nango
    /// counted.
    pub fn observe(&self, o: RateObservation) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let now_ms = crate::time::Timestamp::now().as_micros() / 1000;
        // `reset` is rounded down to the second: the window ends within the second
        // after it.
        let left_ms =
            (o.reset * 1000 + 1000 - now_ms).clamp(0, self.window.as_millis() as i64 + 1000);
        let end = now + Duration::from_millis(left_ms as u64);
        s.learned = Some(o.limit.max(1));
        let spent = o.limit.saturating_sub(o.remaining);
        if s.window_key == Some(o.reset) {
            s.used = s.used.max(spent);
            s.spent = s.spent.max(spent);
        } else if s.window_key.is_none_or(|k| k < o.reset) {
            s.window_key = Some(o.reset);
            s.window_end = Some(end);
            s.window_start = end.checked_sub(self.window).unwrap_or(now);
            s.used = spent;
            s.spent = spent;
        }
    }

    /// Wait for a permit.
    pub async fn acquire(&self) {
        let mut waited: Option<Instant> = None;
        loop {
            let wait_until = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match s.paused_until {
                    Some(until) if until > now => Some(until),
                    _ => {
                        s.paused_until = None;
                        let end = s.window_end.unwrap_or(s.window_start + self.window);
                        if now >= end {
                            s.window_start = now;
                            s.window_end = None;
                            s.window_key = None;
                            s.used = 0;
                            s.spent = 0;
                        }
                        if s.used < self.effective(s.learned) {
                            s.used += 1;
                            None
                        } else {
                            Some(s.window_end.unwrap_or(s.window_start + self.window))
                        }
                    }
                }
            };
            // Among several processes, the ledger has the last word on Nango's window.
            let wait_until = match wait_until {
                None => self.ledger_allows().await,
                other => other,
            };
            match wait_until {
                None => {
                    if let Some(since) = waited {
                        use crate::monitor::metrics::{
                            RATE_BUDGET_WAIT_SECONDS, RATE_BUDGET_WAITS,
                        };
                        metrics::counter!(RATE_BUDGET_WAITS).increment(1);
                        metrics::histogram!(RATE_BUDGET_WAIT_SECONDS)
                            .record(since.elapsed().as_secs_f64());
                    }
                    return;
                }
                Some(t) => {
                    waited.get_or_insert_with(Instant::now);
                    tokio::time::sleep_until(t).await
                }
            }
        }
    }

    /// After a local permit: whether the ledger (if any) grants it too; `Some(t)` when
    /// every permit of Nango's window is spent (wait until `t`, the window's end).
    async fn ledger_allows(&self) -> Option<Instant> {
        let ledger = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let (key, limit, spent, end) = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (
                s.window_key?,
                self.effective(s.learned),
                s.spent,
                s.window_end?,
            )
        };
        // One permit in a hundred (at least one) stays in reserve for the requests
        // processes sent before they knew Nango's window, which no ledger counted.
        let limit = limit.saturating_sub((limit / 100).max(1)).max(1);
        match ledger.take(key, limit, spent).await {
            Ok(true) => None,
            Ok(false) => {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.window_key == Some(key) {
                    s.used = s.used.max(limit);
                }
                Some(end.max(Instant::now() + Duration::from_millis(50)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the shared rate budget could not be read: counting locally");
                None
            }
        }
    }

    /// Stop handing out permits for `d` (Nango answered 429).
    pub fn pause_for(&self, d: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + d;
        if s.paused_until.is_none_or(|p| p < until) {
            s.paused_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn hands_out_the_limit_per_window_then_waits() {
        let b = RateBudget::with_window(3, Duration::from_secs(60));
        let start = Instant::now();
        for _ in 0..3 {
            b.acquire().await;
        }
        assert_eq!(
            Instant::now(),
            start,
            "the first three permits need no wait"
        );
        b.acquire().await;
        assert!(Instant::now() >= start + Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn learns_the_limit_within_its_cap_and_counts_what_nango_counted() {
        let reset = crate::time::Timestamp::now().as_micros() / 1_000_000 + 30;
        let capped = RateBudget::per_minute(200);
        capped.observe(RateObservation {
            limit: 2000,
            remaining: 1990,
            reset,
        });
        assert_eq!(
            capped.limit(),
            200,
            "a configured limit stays an upper bound"
        );
        let learning = RateBudget::learning(200);
        learning.observe(RateObservation {
            limit: 2000,
            remaining: 1990,
            reset,
        });
        assert_eq!(learning.limit(), 2000);
        let lower = RateBudget::per_minute(200);
        lower.observe(RateObservation {
            limit: 100,
            remaining: 100,
            reset,
        });
        assert_eq!(lower.limit(), 100, "a lower stated limit is taken");

        // Another process spent all but 2 of the window: two permits, then a wait for
        // the window's end.
        let b = RateBudget::learning(200);
        b.observe(RateObservation {
            limit: 50,
            remaining: 2,
            reset,
        });
        let start = Instant::now();
        b.acquire().await;
        b.acquire().await;
        assert_eq!(Instant::now(), start);
        b.acquire().await;
        assert!(Instant::now() >= start + Duration::from_secs(29));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_permit() {
        let b = RateBudget::per_minute(100);
        let start = Instant::now();
        b.pause_for(Duration::from_secs(5));
        b.acquire().await;
        assert!(Instant::now() >= start + Duration::from_secs(5));
    }
}
