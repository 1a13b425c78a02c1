//! Bounded retries with jittered exponential backoff.

use std::time::{Duration, SystemTime};

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
/// use std::time::{Duration, SystemTime};
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
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
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

/// The wait an answer asks for: `retry-after-ms` / `x-ms-retry-after-ms` (milliseconds) or
/// `Retry-After` (integer or fractional seconds, as Graph sends them, or an HTTP-date). Entra's
/// token endpoint, Graph and ARM all answer this way; wif's clients read it here only.
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        let ms = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        if let Some(d) = ms.and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok()) {
            return Some(d);
        }
    }
    parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?, now)
}

/// One `Retry-After` value: seconds (`120`, `0.5`) or an HTTP-date (a date in the past is 0).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let now = jiff::Timestamp::try_from(now).ok()?;
    let secs = when.as_second() - now.as_second();
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0.25 ", now), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:40:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "3".parse().expect("header"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "1500".parse().expect("header"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
    }

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
