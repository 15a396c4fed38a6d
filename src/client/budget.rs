//! A request budget shared by every stream of one Nango account.
//!
//! Nango limits requests per account in fixed 60-second windows (200 per minute on the
//! free plan). A [`RateBudget`] hands out that many permits per window to every client
//! that shares it, and pauses all of them when Nango answers 429 anyway.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Requests per minute, shared by clients (see the module documentation).
#[derive(Debug)]
pub struct RateBudget {
    per_minute: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    used: u32,
    paused_until: Option<Instant>,
}

impl RateBudget {
    /// A budget of `per_minute` requests in every 60-second window.
    pub fn per_minute(per_minute: u32) -> Self {
        Self::with_window(per_minute, Duration::from_secs(60))
    }

    /// A budget of `permits` requests per `window` (shorter windows are for tests).
    pub fn with_window(permits: u32, window: Duration) -> Self {
        RateBudget {
            per_minute: permits.max(1),
            window,
            state: Mutex::new(State {
                window_start: Instant::now(),
                used: 0,
                paused_until: None,
            }),
        }
    }

    /// Requests allowed per window.
    pub fn limit(&self) -> u32 {
        self.per_minute
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
                        if now.duration_since(s.window_start) >= self.window {
                            s.window_start = now;
                            s.used = 0;
                        }
                        if s.used < self.per_minute {
                            s.used += 1;
                            None
                        } else {
                            Some(s.window_start + self.window)
                        }
                    }
                }
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
    async fn a_pause_holds_every_permit() {
        let b = RateBudget::per_minute(100);
        let start = Instant::now();
        b.pause_for(Duration::from_secs(5));
        b.acquire().await;
        assert!(Instant::now() >= start + Duration::from_secs(5));
    }
}
