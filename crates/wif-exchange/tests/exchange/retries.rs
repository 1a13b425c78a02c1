//! Retries: `Retry-After` in seconds, fractions and HTTP dates, capped and bounded; never on 400.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_integer_seconds_is_honoured() {
    let server = TestServer::start(|n, _| {
        if n == 1 {
            Reply::entra(429, "temporarily_unavailable", 90055, "throttled").header("retry-after", "1")
        } else {
            Reply::token("after-429", 3600, None)
        }
    })
    .await;
    let start = Instant::now();
    let token = server.credential().get_token(&[SCOPE], &opts()).await.unwrap();
    assert_eq!(token.token().expose_secret(), "after-429");
    assert_eq!(server.count(), 2);
    let reqs = server.requests();
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_secs(1), "waited only {gap:?}");
    assert!(gap < Duration::from_millis(1500), "waited {gap:?}");
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_fractional_seconds_is_honoured() {
    let server = TestServer::start(|n, _| {
        if n <= 2 {
            Reply::raw(503, "text/plain", "busy").header("retry-after", "0.4")
        } else {
            Reply::token("ok", 3600, None)
        }
    })
    .await;
    server.credential().get_token(&[SCOPE], &opts()).await.unwrap();
    assert_eq!(server.count(), 3);
    let reqs = server.requests();
    for w in reqs.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(400), "{gap:?}");
        assert!(gap < Duration::from_millis(900), "{gap:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_http_date_is_honoured() {
    let server = TestServer::start(|n, _| {
        if n == 1 {
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
            let date = jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&at)
                .unwrap();
            Reply::raw(429, "text/plain", "slow down").header("retry-after", &date)
        } else {
            Reply::token("ok", 3600, None)
        }
    })
    .await;
    server.credential().get_token(&[SCOPE], &opts()).await.unwrap();
    let reqs = server.requests();
    // The date has one-second resolution: at least 1 s, at most 2 s (+ slack).
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1000) && gap < Duration::from_millis(2600),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_capped_by_max_delay() {
    let server = TestServer::start(|n, _| {
        if n == 1 {
            Reply::raw(429, "text/plain", "x").header("retry-after", "3600")
        } else {
            Reply::token("ok", 3600, None)
        }
    })
    .await;
    let cred = server
        .builder()
        .retry_policy(fast_retries(1).with_max_delay(Duration::from_millis(300)))
        .build()
        .unwrap();
    let start = Instant::now();
    cred.get_token(&[SCOPE], &opts()).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(server.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded() {
    let server = TestServer::start(|_, _| Reply::entra(503, "temporarily_unavailable", 90033, "down")).await;
    let cred = server.builder().retry_policy(fast_retries(2)).build().unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert_eq!(server.count(), 3);
    let Error::Entra(e) = &err else { panic!("{err:?}") };
    assert_eq!(e.attempts, 3);
    assert!(err.to_string().contains("after 3 attempts"), "{err}");

    // No retries at all.
    let cred = server
        .builder()
        .retry_policy(wif_exchange::RetryPolicy::none())
        .build()
        .unwrap();
    let before = server.count();
    cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert_eq!(server.count() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_on_400_even_with_retry_after() {
    let server = TestServer::start(|_, _| {
        Reply::entra(400, "invalid_request", 700213, "subject").header("retry-after", "0")
    })
    .await;
    server
        .credential()
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert_eq!(server.count(), 1);
}
