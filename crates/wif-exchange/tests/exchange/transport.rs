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
    let Error::Transport { kind, attempts, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((*kind, *attempts), (TransportErrorKind::Timeout, 2));
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
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
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
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::Connect,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_malformed_answers_are_typed() {
    let pki = Pki::new();
    let build = |authority: &str, retries| {
        builder_for(authority)
            .add_root_certificates_pem(pki.ca_pem.as_bytes())
            .retry_policy(fast_retries(retries))
            .build()
            .unwrap()
    };

    // Content-Length promises 500 bytes; the connection closes after 16.
    let (authority, count) = raw_server(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"access_token\":",
    )
    .await;
    let err = build(&authority, 1)
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::Body,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2, "a cut-off answer is retried");

    // A complete 200 that is not a token response: not retried, body not quoted.
    let (authority, count) = raw_server(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 26\r\nConnection: close\r\n\r\n<html>captive portal</html",
    )
    .await;
    let err = build(&authority, 3)
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidResponse { status: 200, .. }),
        "{err:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // Not HTTP at all.
    let (authority, _) = raw_server(&pki, b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let err = build(&authority, 0)
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");

    // 200 with a JSON error and no token.
    let (authority, _) = raw_server(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 25\r\nConnection: close\r\n\r\n{\"error\":\"invalid_grant\"}",
    )
    .await;
    let err = build(&authority, 0)
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
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
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::Tls,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.hint().is_some_and(|h| h.contains("SSL_CERT_FILE")));
    assert_eq!(server.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_authority_is_refused() {
    let err = builder_for("http://127.0.0.1:8080/").build().unwrap_err();
    assert!(matches!(err, Error::InsecureAuthority { .. }), "{err:?}");
}
