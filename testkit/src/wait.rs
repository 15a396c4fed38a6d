//! Waiting in a test for something another task or process does: [`eventually`] polls a
//! condition until it holds, and fails the test with the condition's last word when it
//! does not within a limit. The limit is a bound on a failure's wait, not a timing the
//! test measures: set it generously, so that a slow machine only takes longer.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] tries its condition.
pub const POLL: Duration = Duration::from_millis(20);

/// Try `attempt` every [`POLL`] until it returns `Ok`, and return that value; panic with
/// the last `Err` (what was seen instead) once `limit` has passed.
///
/// ```
/// # async fn example() {
/// use std::time::Duration;
/// let started = std::time::Instant::now();
/// let waited = nango_sync_testkit::eventually(Duration::from_secs(10), || async {
///     let ms = started.elapsed().as_millis();
///     if ms >= 50 { Ok(ms) } else { Err(format!("only {ms} ms")) }
/// })
/// .await;
/// assert!(waited >= 50);
/// # }
/// ```
///
/// # Panics
/// When `limit` passes without an `Ok`, with the last error.
#[track_caller]
pub fn eventually<T, F, Fut>(limit: Duration, mut attempt: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = Instant::now() + limit;
        loop {
            match attempt().await {
                Ok(value) => return value,
                Err(seen) if Instant::now() >= deadline => {
                    panic!("{caller}: not so after {limit:?}: {seen}")
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_condition_that_holds_returns_its_value() {
        let mut tries = 0;
        let got = eventually(Duration::from_secs(10), || {
            tries += 1;
            let t = tries;
            async move {
                if t >= 3 {
                    Ok(t)
                } else {
                    Err(format!("try {t}"))
                }
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "not so after 50ms: still 7")]
    async fn a_condition_that_never_holds_fails_with_what_was_seen() {
        eventually(Duration::from_millis(50), || async {
            Err::<(), _>("still 7".to_owned())
        })
        .await;
    }
}
