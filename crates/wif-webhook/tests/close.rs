//! How the admission server closes connections: what a client wrote just before it learned of
//! the close is read and dropped, never answered with a TCP reset (which the API server reports
//! as "write: broken pipe" and fails the admission instead of retrying elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use wif_api::{Cloud, MutationConfig};
use wif_webhook::{
    admission::AdmissionState,
    metrics::Metrics,
    selfcert::{PemPair, generate_ca, issue_cert},
    server::{self, Limits},
    service_accounts::static_cache,
    tls::CertStore,
};

/// Serves the admission router on 127.0.0.1:0 with a certificate from a fresh CA; returns the
/// address, the client's TLS connector trusting that CA and the server task.
async fn serve(
    limits: Limits,
    stop: CancellationToken,
) -> (
    SocketAddr,
    tokio_rustls::TlsConnector,
    tokio::task::JoinHandle<()>,
) {
    let now = time::OffsetDateTime::now_utc();
    let ca: PemPair = generate_ca("test-ca", now, Duration::from_secs(3600)).unwrap();
    let leaf = issue_cert(
        &ca.cert_pem,
        &ca.key_pem,
        &["localhost".to_owned()],
        &[],
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    let store = CertStore::new();
    store
        .set_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), "test")
        .unwrap();
    let state = AdmissionState {
        config: Arc::new(MutationConfig::new("tenant", Cloud::Public)),
        service_accounts: static_cache(Vec::new()),
        metrics: Arc::new(Metrics::new(&mut prometheus_client::registry::Registry::default())),
    };
    let router = server::admission_router(state, &limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(server::serve_tls(listener, store, router, limits, stop));

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (addr, tokio_rustls::TlsConnector::from(Arc::new(cfg)), task)
}

/// Opens a TLS connection, waits until the server ends it (`close` makes it), then writes to the
/// socket twice as a client that has not yet seen the end would. A closed socket answers the
/// first write with a reset, so the second fails; a lingering one reads and drops both.
async fn write_after_close(addr: SocketAddr, tls: &tokio_rustls::TlsConnector, close: impl AsyncFnOnce()) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = tls.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    close().await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the server ends the connection")
        .expect("a clean end (TLS close_notify), not a reset");
    let (mut tcp, _) = stream.into_inner();
    for attempt in 0..2 {
        tcp.write_all(b"POST /mutate-v1-pod HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("write {attempt} after the server's close: {e}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_connection_closed_on_shutdown_reads_what_the_client_still_sends() {
    let stop = CancellationToken::new();
    let (addr, tls, task) = serve(Limits::default(), stop.clone()).await;
    write_after_close(addr, &tls, async || stop.cancel()).await;
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the drain ends once the linger has")
        .unwrap();
}

#[tokio::test]
async fn a_connection_closed_when_idle_reads_what_the_client_still_sends() {
    let stop = CancellationToken::new();
    let limits = Limits {
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (addr, tls, _task) = serve(limits, stop.clone()).await;
    write_after_close(addr, &tls, async || {}).await;
    stop.cancel();
}

#[tokio::test]
async fn after_stop_an_http1_connection_answers_its_next_request_with_connection_close() {
    let stop = CancellationToken::new();
    let (addr, tls, task) = serve(Limits::default(), stop.clone()).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tls.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let request = || {
        axum::http::Request::post("/mutate-v1-pod")
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    let before = send.send_request(request()).await.unwrap();
    assert!(before.headers().get("connection").is_none(), "{before:?}");

    // The API server may be writing its next review on this kept-alive connection right now:
    // stopping must not close it under that request.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = send
        .send_request(request())
        .await
        .expect("a kept-alive connection still answers after stop");
    assert_eq!(after.headers().get("connection").unwrap(), "close", "{after:?}");
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection ends after the response that said close")
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("drained")
        .unwrap();
}
