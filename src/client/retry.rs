//! Retry policy: exponential backoff with jitter, bounded by attempts and a deadline.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::error::Error;

/// When and how often to retry a failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in total, the first one included (default 8).
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles after each further one (default 200 ms).
    pub initial_backoff: Duration,
    /// The longest wait between two attempts (default 30 s).
    pub max_backoff: Duration,
    /// Give up when the next wait would end past this much time since the first attempt
    /// (default 5 min).
    pub max_elapsed: Duration,
    /// The shortest wait after a 429, whatever `Retry-After` says (default 1 s: Nango
    /// can answer `Retry-After: 0`).
    pub min_rate_limit_wait: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
            min_rate_limit_wait: Duration::from_secs(1),
        }
    }
}

impl RetryConfig {
    /// Never retry.
    pub fn none() -> Self {
        RetryConfig {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Short waits, for tests against a local server.
    pub fn fast() -> Self {
        RetryConfig {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            max_elapsed: Duration::from_secs(30),
            min_rate_limit_wait: Duration::from_millis(20),
        }
    }

    /// The wait before attempt `attempt + 1` after `err` failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32, err: &Error) -> Duration {
        if let Error::Nango {
            status: 429,
            retry_after,
            ..
        } = err
        {
            return rate_limit_wait(*retry_after, self) + jitter(Duration::from_millis(100), 0.0);
        }
        let exp = attempt.saturating_sub(1).min(20);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let base = match err {
            // A 503 may say when to come back.
            Error::Nango {
                retry_after: Some(secs),
                ..
            } => base.max(Duration::from_secs(*secs)).min(self.max_backoff),
            _ => base,
        };
        // "Equal jitter": between half and all of the exponential wait.
        jitter(base, 0.5)
    }
}

/// What [`RetryConfig::run`] returns when the policy gives up on a retryable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnGiveUp {
    /// [`Error::RetriesExhausted`] wrapping the last error.
    Wrap,
    /// The last error itself.
    Last,
}

impl RetryConfig {
    /// Run `attempt` (called with the 1-based attempt number) until it succeeds, fails
    /// with an error that is not retryable, or the policy gives up: after
    /// `max_attempts`, or when the next wait would end past `max_elapsed`.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &str,
        on_give_up: OnGiveUp,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        self.run_if(what, on_give_up, Error::is_retryable, attempt)
            .await
    }

    /// [`RetryConfig::run`], retrying only the errors `retry` accepts (for requests
    /// that must not be sent twice when the first one may have been carried out).
    pub(crate) async fn run_if<T, F, Fut>(
        &self,
        what: &str,
        on_give_up: OnGiveUp,
        retry: impl Fn(&Error) -> bool,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let started = std::time::Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let err = match attempt(attempts).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !retry(&err) {
                return Err(err);
            }
            let wait = self.delay(attempts, &err);
            let elapsed = started.elapsed();
            if attempts >= self.max_attempts || elapsed + wait > self.max_elapsed {
                return Err(match on_give_up {
                    OnGiveUp::Wrap => Error::RetriesExhausted {
                        attempts,
                        elapsed_ms: elapsed.as_millis() as u64,
                        last: Box::new(err),
                    },
                    OnGiveUp::Last => err,
                });
            }
            tracing::warn!(operation = what, attempt = attempts, wait_ms = wait.as_millis() as u64, error = %err, "retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The wait after a 429: `Retry-After`, but at least the configured minimum.
pub(crate) fn rate_limit_wait(retry_after: Option<u64>, cfg: &RetryConfig) -> Duration {
    Duration::from_secs(retry_after.unwrap_or(0)).max(cfg.min_rate_limit_wait)
}

/// A duration between `floor * d` and `d`, chosen at random.
fn jitter(d: Duration, floor: f64) -> Duration {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(floor + (1.0 - floor) * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nango(status: u16, retry_after: Option<u64>) -> Error {
        Error::Nango {
            status,
            code: "x".into(),
            message: None,
            request: "r".into(),
            retry_after,
            payload: None,
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let cfg = RetryConfig::default();
        let e = nango(503, None);
        for attempt in 1..=12 {
            let full = cfg
                .initial_backoff
                .saturating_mul(1 << (attempt - 1))
                .min(cfg.max_backoff);
            for _ in 0..50 {
                let d = cfg.delay(attempt, &e);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn rate_limit_waits_at_least_the_minimum() {
        let cfg = RetryConfig::default();
        for retry_after in [None, Some(0)] {
            let d = cfg.delay(1, &nango(429, retry_after));
            assert!(
                d >= Duration::from_secs(1) && d < Duration::from_millis(1100),
                "{d:?}"
            );
        }
        let d = cfg.delay(1, &nango(429, Some(7)));
        assert!(
            d >= Duration::from_secs(7) && d < Duration::from_millis(7100),
            "{d:?}"
        );
    }

    #[test]
    fn service_unavailable_honours_retry_after() {
        let cfg = RetryConfig::default();
        let d = cfg.delay(1, &nango(503, Some(3)));
        assert!(
            d >= Duration::from_millis(1500) && d <= Duration::from_secs(3),
            "{d:?}"
        );
    }
}
