//! Over a real TLS socket: a certificate change is served without dropping connections, and
//! shutdown drains in-flight requests.

use super::*;

async fn mutate_over(send: &mut Conn) -> StatusCode {
    let req = Request::post("/mutate-v1-pod")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            REVIEW.as_bytes(),
        )))
        .unwrap();
    send.send_request(req).await.unwrap().status()
}

#[tokio::test]
async fn certificate_change_is_served_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let first = pki.leaf("first.example");
    write_pair(dir.path(), &first);
    let stop = CancellationToken::new();
    let (addr, task) = start(dir.path(), stop.clone()).await;

    let (mut old_conn, leaf1) = connect(addr, &pki).await;
    assert_eq!(mutate_over(&mut old_conn).await, StatusCode::OK);

    let second = pki.leaf("second.example");
    write_pair(dir.path(), &second);
    let mut leaf2 = leaf1.clone();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        leaf2 = connect(addr, &pki).await.1;
        if leaf2 != leaf1 {
            break;
        }
    }
    assert_ne!(leaf1, leaf2, "the new certificate is served to new connections");
    let want = rustls::pki_types::CertificateDer::from_pem_slice(second.cert_pem.as_bytes()).unwrap();
    assert_eq!(leaf2, want.to_vec());
    // The connection opened before the change still works.
    assert_eq!(mutate_over(&mut old_conn).await, StatusCode::OK);

    // A broken pair keeps the current certificate.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connect(addr, &pki).await.1, leaf2);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_in_flight_requests() {
    use futures::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    write_pair(dir.path(), &pki.leaf("x.example"));
    let stop = CancellationToken::new();
    let (addr, task) = start(dir.path(), stop.clone()).await;

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client()
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::StreamBody<_>>(
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (mut tx, rx) =
        futures::channel::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>(4);
    let req = Request::post("/mutate-v1-pod")
        .header("host", "localhost")
        .header("content-length", REVIEW.len())
        .body(http_body_util::StreamBody::new(rx))
        .unwrap();
    let response = tokio::spawn(async move { send.send_request(req).await.map(|r| r.status()) });
    let (head, tail) = REVIEW.as_bytes().split_at(REVIEW.len() / 2);
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(head))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Shutdown starts while the request body is still arriving.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections once stopping"
    );
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(tail))))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(
        response.await.unwrap().unwrap(),
        StatusCode::OK,
        "the in-flight request is answered"
    );
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("drained in time")
        .unwrap();
}
