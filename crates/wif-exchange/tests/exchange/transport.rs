//! Dead, slow, refusing, truncating and untrusted endpoints: each a typed error, retried only
//! when a retry may help.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_times_out_with_a_typed_error() {
    let (authority, connections) = dead_server().await;
    let pki = Pki::new();
    let cred = builder_for(&authority)
        .add_root_certificates_pem(pki.ca_pem.as_bytes())
        .timeout(Duration::from_millis(300))
        .retry_policy(fast_retries(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert_eq!(transport(&err), (TransportErrorKind::Timeout, 2));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert!(err.hint().is_some());
    assert!(!format!("{err} {err:?}").contains(ASSERTION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoint_times_out() {
    let server =
        TestServer::start(|_, _| Reply::token("late", 3600, None).delay(Duration::from_secs(3))).await;
    let cred = server
        .builder()
        .timeout(Duration::from_millis(300))
        .retry_policy(fast_retries(0))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(transport(&err).0, TransportErrorKind::Timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_retried_then_typed() {
    // Bound but never listening: connections are refused, and no other process can take the
    // port while the socket is held.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port();
    let cred = builder_for(format!("https://127.0.0.1:{port}"))
        .retry_policy(fast_retries(2))
        .build()
        .unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert_eq!(transport(&err), (TransportErrorKind::Connect, 3));
}

/// The kind and attempts of a transport error (any other error fails the test).
fn transport(err: &Error) -> (TransportErrorKind, u32) {
    let Error::Transport { kind, attempts, .. } = err else {
        panic!("{err:?}")
    };
    (*kind, *attempts)
}

/// What a credential trusting `pki`, retrying `retries` times, gets from a server that answers
/// `response` on every connection, and how many connections it made.
async fn answered(pki: &Pki, response: &'static [u8], retries: u32) -> (Error, usize) {
    let (authority, count) = raw_server(pki, response).await;
    let err = builder_for(&authority)
        .add_root_certificates_pem(pki.ca_pem.as_bytes())
        .retry_policy(fast_retries(retries))
        .build()
        .unwrap()
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    (err, count.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_malformed_answers_are_typed() {
    let pki = Pki::new();

    // Content-Length promises 500 bytes; the connection closes after 16.
    let (err, count) = answered(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"access_token\":",
        1,
    )
    .await;
    assert_eq!(transport(&err), (TransportErrorKind::Body, 2));
    assert_eq!(count, 2, "a cut-off answer is retried");

    // A complete 200 that is not a token response: not retried, body not quoted.
    let (err, count) = answered(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 26\r\nConnection: close\r\n\r\n<html>captive portal</html",
        3,
    )
    .await;
    assert!(
        matches!(err, Error::InvalidResponse { status: 200, .. }),
        "{err:?}"
    );
    assert_eq!(count, 1);

    // Not HTTP at all: a transport error, of whatever kind.
    let (err, _) = answered(&pki, b"SSH-2.0-OpenSSH_9.6\r\n", 0).await;
    transport(&err);

    // 200 with a JSON error and no token.
    let (err, _) = answered(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 25\r\nConnection: close\r\n\r\n{\"error\":\"invalid_grant\"}",
        0,
    )
    .await;
    assert!(
        err.to_string()
            .contains("access_token is missing (error \"invalid_grant\")"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_a_tls_error_and_not_retried() {
    let server = TestServer::issuing().await;
    let cred = builder_for(&server.authority)
        .retry_policy(fast_retries(3))
        .build()
        .unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert_eq!(transport(&err), (TransportErrorKind::Tls, 1));
    assert!(err.hint().is_some_and(|h| h.contains("SSL_CERT_FILE")));
    assert_eq!(server.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_authority_is_refused() {
    let err = builder_for("http://127.0.0.1:8080/").build().unwrap_err();
    assert!(matches!(err, Error::InsecureAuthority { .. }), "{err:?}");
}
