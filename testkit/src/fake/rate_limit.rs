//! The fake's request limit per account, as Nango's rate-limit middleware applies it
//! (off unless [`FakeNango::set_rate_limit`](super::FakeNango::set_rate_limit) sets
//! one): a fixed 60-second window per account that starts at the first request after the
//! previous one ended, one point per `/records` request (rejected ones included), the
//! `X-RateLimit-Limit`, `-Remaining` and `-Reset` (epoch seconds of the window's end,
//! rounded down) headers on every answer, and a 429 with `Retry-After` (whole seconds,
//! rounded down: it can be 0) once the window's points are spent.

use std::time::{Duration, Instant};

use nango_sync::time::Timestamp;

/// The window of Nango's limiter.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    limit: Option<u32>,
    window: Option<(Instant, u32)>,
    rejected: u64,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// Epoch seconds of the window's end, rounded down.
    pub(crate) reset: i64,
    /// `Some(seconds)` when the request is refused (its `Retry-After`).
    pub(crate) retry_after: Option<u64>,
}

impl RateLimiter {
    pub(crate) fn set_limit(&mut self, limit: Option<u32>) {
        self.limit = limit;
        self.window = None;
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Count one request; `None` when no limit is set.
    pub(crate) fn take(&mut self) -> Option<Decision> {
        let limit = self.limit?;
        let now = Instant::now();
        let (start, used) = match self.window {
            Some((start, used)) if now.duration_since(start) < WINDOW => (start, used + 1),
            _ => (now, 1),
        };
        self.window = Some((start, used));
        let before_next = (start + WINDOW).saturating_duration_since(now);
        let now_ms = Timestamp::now().as_micros() / 1000;
        let reset = (now_ms + before_next.as_millis() as i64) / 1000;
        let refused = used > limit;
        if refused {
            self.rejected += 1;
        }
        Some(Decision {
            limit,
            remaining: limit.saturating_sub(used),
            reset,
            retry_after: refused.then_some(before_next.as_secs()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_points_and_refuses_beyond_the_limit() {
        let mut r = RateLimiter::default();
        assert_eq!(r.take(), None, "off by default");
        r.set_limit(Some(2));
        let a = r.take().unwrap();
        assert_eq!((a.limit, a.remaining, a.retry_after), (2, 1, None));
        let b = r.take().unwrap();
        assert_eq!((b.remaining, b.retry_after), (0, None));
        let c = r.take().unwrap();
        assert_eq!(c.remaining, 0);
        assert!(c.retry_after.is_some_and(|s| s <= 60));
        assert_eq!(r.rejected(), 1);
        let now = Timestamp::now().as_micros() / 1_000_000;
        assert!((now..=now + 60).contains(&c.reset));
    }
}
