//! Bounded retries with jittered exponential backoff.

use std::time::Duration;

use rand::Rng;

/// How failed token requests are retried.
///
/// Retried: HTTP 408, 429 and 5xx (except 501/505), connection failures, timeouts and cut-off
/// responses. Never retried: other 4xx (400, 401: a bad assertion or configuration does not fix
/// itself). The delay before retry *n* (0-based) is drawn from
/// `[d/2, d]` with `d = min(max_delay, initial_delay · 2ⁿ)`; a `Retry-After` (or
/// `retry-after-ms`) from the server raises it to at least that value, capped at `max_delay`.
///
/// ```
/// use std::time::Duration;
/// use wif_exchange::RetryPolicy;
/// let policy = RetryPolicy::default().with_max_retries(5).with_max_delay(Duration::from_secs(10));
/// assert_eq!(policy.max_retries, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt (so at most `max_retries + 1` requests). Default 3.
    pub max_retries: u32,
    /// Base of the exponential backoff. Default 500 ms.
    pub initial_delay: Duration,
    /// Cap of any single delay, `Retry-After` included. Default 30 s.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// Sets the number of retries.
    #[must_use]
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets the base delay.
    #[must_use]
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the cap of a single delay.
    #[must_use]
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The delay before retry `retry` (0-based), given the server's `Retry-After`.
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial_delay
            .saturating_mul(2u32.saturating_pow(retry.min(31)))
            .min(self.max_delay);
        let half = exp / 2;
        let jittered = half + rand::rng().random_range(Duration::ZERO..=exp - half);
        jittered
            .max(retry_after.unwrap_or(Duration::ZERO))
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_exponential_jittered_and_capped() {
        let p = RetryPolicy::default()
            .with_initial_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1));
        for _ in 0..200 {
            let d0 = p.delay(0, None);
            assert!(
                (Duration::from_millis(50)..=Duration::from_millis(100)).contains(&d0),
                "{d0:?}"
            );
            let d2 = p.delay(2, None);
            assert!(
                (Duration::from_millis(200)..=Duration::from_millis(400)).contains(&d2),
                "{d2:?}"
            );
            assert!(p.delay(40, None) <= Duration::from_secs(1));
        }
        // jitter actually varies
        let samples: std::collections::HashSet<_> = (0..50).map(|_| p.delay(3, None)).collect();
        assert!(samples.len() > 1);
    }

    #[test]
    fn retry_after_raises_the_delay_but_is_capped() {
        let p = RetryPolicy::default()
            .with_initial_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_secs(5));
        assert_eq!(
            p.delay(0, Some(Duration::from_millis(1500))),
            Duration::from_millis(1500)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(5)
        );
    }
}
